import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def objectives_module(tmp_path, monkeypatch):
    """A module of test objectives importable by trial subprocesses (cwd is on their sys.path)."""
    (tmp_path / "testobj.py").write_text(
        '''
import math, os, time

def quad(p):
    return sum((float(v) - 1.0) ** 2 for v in p.values())

def boom(p):
    if p["x"] > 0:
        raise ValueError("x must not be positive")
    return quad(p)

def nan_when_positive(p):
    return float("nan") if p["x"] > 0 else quad(p)

def sleepy(p):
    if p["x"] > 0:
        time.sleep(60)
    return quad(p)

def crash(p):
    if p["x"] > 0:
        os._exit(3)
    return quad(p)

def metrics(p):
    return {"loss": quad(p), "size": 3.0}

def two_curves(p, report):
    for step in (1, 2):
        report(step, quad(p) + 1.0 / step)
    return {"loss": quad(p), "size": abs(float(p["x"]))}
'''
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "testobj"


@pytest.fixture(scope="session")
def postgres_url():
    """URL of a PostgreSQL server started for this test session (see servers.py)."""
    from servers import postgres

    with postgres() as url:
        yield url


@pytest.fixture(scope="session")
def ray_address():
    """Address of a local Ray cluster started for this test session (see servers.py)."""
    from servers import ray_cluster

    with ray_cluster() as address:
        yield address
