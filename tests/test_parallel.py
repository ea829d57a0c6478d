"""Trials in parallel: workers sharing a store, NOMAD and TPE through Ray, faults and resume.

Every study here evaluates ``toys.timed_sphere`` (a sleep, then a sum of squares) and checks
the store afterwards: exactly ``budget`` evaluations, none of a point twice, none lost (each
has its result file in a trial folder).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from lorahpo import config as cfg
from lorahpo.study import Study

SPACE = {"params": {"x": {"type": "real", "low": -2, "high": 2, "x0": 1.0},
                    "y": {"type": "int", "low": -3, "high": 3, "x0": 2}}}


def study_yaml(path: Path, **kw) -> Path:
    data = {"name": path.stem, "optimizer": "tpe", "budget": 12, "space": SPACE,
            "objective": {"python": "lorahpo.toys:timed_sphere"}, **kw}
    path.write_text(yaml.safe_dump(data))
    return path


def check_store(study: Study, budget: int, folders: list[Path]) -> list:
    """Budget reached, no point twice, every evaluation's result on disk; returns the evaluations."""
    done = [r for r in study.records() if r.status != "interrupted"]
    assert len(done) == budget, [(r.number, r.status) for r in study.records()]
    assert all(r.status == "complete" for r in done), [(r.number, r.status, r.reason) for r in done]
    points = [tuple(sorted(r.params.items())) for r in done]
    assert len(set(points)) == len(points), "a point was evaluated twice"
    for r in done:  # 0 lost: its result is in some worker's folder, and it is the stored value
        found = [f / "trials" / str(r.number) / "result.json" for f in folders]
        found = [p for p in found if p.exists()]
        assert len(found) == 1, f"trial {r.number}: result files {found}"
        assert json.loads(found[0].read_text())["metrics"]["value"] == pytest.approx(r.value)
    if study.records()[0].status != "interrupted":  # x0, once (a shared store does not repeat it)
        assert done[0].number == 0 and done[0].params == {"x": 1.0, "y": 2}
    return done


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lorahpo.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


# Over 20 s each; a shared SQLite store also serves the killed-worker test below.
@pytest.mark.parametrize("store", [pytest.param("sqlite", marks=pytest.mark.slow), "postgresql"])
def test_four_workers_share_one_study(tmp_path, monkeypatch, store, request):
    url = (f"sqlite:///{tmp_path / 'shared.db'}" if store == "sqlite"
           else request.getfixturevalue("postgres_url"))
    name = f"workers-{store}-{os.getpid()}-{time.monotonic_ns()}"
    conf = study_yaml(tmp_path / f"{name}.yaml", storage=url, budget=12)
    monkeypatch.setenv("LORAHPO_TOY_SLEEP_S", "0.5")
    procs = [cli("worker", str(conf), "--study-dir", str(tmp_path / f"w{i}"), cwd=tmp_path) for i in range(4)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    study = Study.load(tmp_path / "w0")
    check_store(study, 12, [tmp_path / f"w{i}" for i in range(4)])
    assert sum(bool(list((tmp_path / f"w{i}" / "trials").glob("*"))) for i in range(4)) >= 2  # shared out


def test_a_worker_refuses_nomad_and_a_private_store(tmp_path):
    conf = study_yaml(tmp_path / "s.yaml", optimizer="nomad", storage=f"sqlite:///{tmp_path / 's.db'}")
    p = cli("worker", str(conf), cwd=tmp_path)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 2 and "nomad keeps its state in one process" in out and len(out.splitlines()) == 1
    conf = study_yaml(tmp_path / "t.yaml")
    p = cli("worker", str(conf), cwd=tmp_path)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 2 and "needs a shared store" in out
    assert not (tmp_path / "runs").exists()


def ray_config(tmp_path: Path, optimizer: str, address: str, **kw) -> cfg.StudyConfig:
    data = yaml.safe_load(study_yaml(tmp_path / f"{optimizer}.yaml").read_text())
    data.update(optimizer=optimizer, parallel=4, executor="ray",
                ray={"address": address, "num_cpus": 1,
                     "runtime_env": {"env_vars": {"LORAHPO_TOY_SLEEP_S": "0.5"}}})
    data.update(kw)
    return cfg.parse(data)


def kill_a_running_trial(killed: list[int], after: float) -> None:
    """SIGKILL the first Ray worker seen running a trial, ``after`` seconds into it (within 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            if any("lorahpo_trial" in part for part in proc.info["cmdline"] or []):
                time.sleep(after)  # mid-trial
                proc.send_signal(signal.SIGKILL)
                killed.append(proc.pid)
                return
        time.sleep(0.1)


@pytest.mark.parametrize("optimizer", ["nomad", "tpe"])
def test_four_ray_workers_run_a_study(tmp_path, ray_address, optimizer):
    conf = ray_config(tmp_path, optimizer, ray_address)
    conf.ray.runtime_env["env_vars"]["LORAHPO_TOY_SLEEP_S"] = "2"  # long enough to overlap under load
    study = Study.open(tmp_path / optimizer, conf)
    summary = study.run()
    assert summary.stopped == "budget"
    done = check_store(study, 12, [study.directory])
    # 4 at once: the trials' time spans overlap
    spans = sorted((r.start, r.end) for r in done)
    assert max(sum(s <= t0 < e for s, e in spans) for t0, _ in spans) >= 3
    assert all((r.directory / "stdout.log").exists() for r in done)  # the folder came back from the node


def test_a_ray_worker_killed_mid_trial_fails_that_trial_and_the_study_goes_on(tmp_path, ray_address):
    conf = ray_config(tmp_path, "random", ray_address, budget=8)
    conf.ray.runtime_env["env_vars"]["LORAHPO_TOY_SLEEP_S"] = "2"
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_running_trial, args=(killed, 0.5))
    killer.start()
    study = Study.open(tmp_path / "s", conf)
    summary = study.run()
    killer.join()
    assert killed, "no running trial was found to kill"
    records = study.records()
    failed = [r for r in records if r.status == "failed"]
    assert len(failed) == 1 and "lost on Ray" in failed[0].reason, [(r.status, r.reason) for r in records]
    assert summary.finished == 8 and sum(r.status == "complete" for r in records) == 7


def test_a_lost_trial_is_retried_when_configured(tmp_path, ray_address):
    conf = ray_config(tmp_path, "random", ray_address, budget=3, parallel=1)
    conf.ray.max_retries = 1
    conf.ray.runtime_env["env_vars"]["LORAHPO_TOY_SLEEP_S"] = "1.5"
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_running_trial, args=(killed, 0.3), daemon=True)
    killer.start()
    study = Study.open(tmp_path / "s", conf)
    study.run()
    assert killed
    assert [r.status for r in study.records()] == ["complete"] * 3


def test_early_stopping_on_ray_stops_trials_on_their_node(tmp_path, ray_address):
    steps = 8  # of toys.timed_learning_curve, 0.5 s each
    conf = ray_config(tmp_path, "random", ray_address, budget=8, parallel=2, pruner="median",
                      pruner_options={"n_startup_trials": 2},
                      objective={"python": "lorahpo.toys:timed_learning_curve"})
    conf.ray.runtime_env["env_vars"]["LORAHPO_TOY_SLEEP_S"] = str(0.5 * steps)
    study = Study.open(tmp_path / "s", conf)
    assert study.run().finished == 8
    trials = {t.number: t for t in study.optuna_study.get_trials(deepcopy=False)}
    records = study.records()
    pruned = [r for r in records if r.status == "pruned"]
    complete = [r for r in records if r.status == "complete"]
    assert pruned and complete, [(r.number, r.status, r.reason) for r in records]
    for r in complete:  # every report came from the node
        assert sorted(trials[r.number].intermediate_values) == list(range(1, steps + 1))
    for r in pruned:  # recorded with its last value, and its task ended early
        t = trials[r.number]
        assert 1 <= t.last_step < steps and t.value == t.intermediate_values[t.last_step]
        assert r.reason == "stopped early by the pruner"
        assert r.duration_s < min(c.duration_s for c in complete)
        assert (r.directory / "stdout.log").exists()  # the folder came back from the node


# Over 20 s each; NOMAD, whose state is replayed on resume, runs by default.
@pytest.mark.parametrize("optimizer", ["nomad", pytest.param("tpe", marks=pytest.mark.slow)])
def test_driver_killed_with_sigkill_resumes_from_the_store(tmp_path, optimizer):
    conf = study_yaml(tmp_path / "s.yaml", optimizer=optimizer, budget=6, parallel=2)
    env = {**os.environ, "LORAHPO_TOY_SLEEP_S": "3"}
    folder = tmp_path / "run"
    driver = cli("tune", str(conf), "--study-dir", str(folder), cwd=tmp_path, env=env)
    def running() -> list[Path]:
        return [p for p in folder.glob("trials/*/trial.json") if not (p.parent / "result.json").exists()]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (len(list(folder.glob("trials/*/result.json"))) < 2 or not running()):
        time.sleep(0.05)
    time.sleep(0.3)  # mid-trial
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)

    def orphans() -> list:
        return [p for p in psutil.process_iter(["cmdline"]) if str(folder) in " ".join(p.info["cmdline"] or [])]

    deadline = time.monotonic() + 10  # the running trials notice their parent is gone and end
    while orphans() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not orphans(), "trials outlived their killed driver"
    interrupted = [json.loads(p.read_text())["number"] for p in folder.glob("trials/*/trial.json")
                   if not (p.parent / "result.json").exists()]
    assert interrupted, "the driver was killed between trials; nothing was interrupted"
    resumed = cli("tune", str(conf), "--study-dir", str(folder), cwd=tmp_path, env=env)
    out = resumed.communicate(timeout=240)[0]
    assert resumed.returncode == 0, out
    study = Study.load(folder)
    check_store(study, 6, [folder])
    statuses = {r.number: r.status for r in study.records()}
    assert all(statuses[n] == "interrupted" for n in interrupted)


def test_a_killed_worker_leaves_its_trials_to_the_others(tmp_path, monkeypatch):
    from lorahpo import store

    conf = study_yaml(tmp_path / "s.yaml", storage=f"sqlite:///{tmp_path / 'shared.db'}", budget=6, parallel=2)
    env = {**os.environ, "LORAHPO_TOY_SLEEP_S": "3"}
    first = tmp_path / "w0"
    worker = cli("worker", str(conf), "--study-dir", str(first), cwd=tmp_path, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(first.glob("trials/*/trial.json"))) < 2:
        time.sleep(0.05)
    time.sleep(1.0)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    # The survivor takes trials unmarked for 2 s as dead (30 s outside this test).
    monkeypatch.setattr(store, "GRACE_S", 2)
    monkeypatch.setattr(store, "HEARTBEAT_S", 1)
    monkeypatch.setenv("LORAHPO_TOY_SLEEP_S", "0.2")
    survivor = Study.open(tmp_path / "w1", cfg.load(conf))
    summary = survivor.run()
    assert summary.finished == 6
    records = survivor.records()
    lost = [r for r in records if r.status == "interrupted"]
    assert len(lost) == 2 and all(not (first / "trials" / str(r.number) / "result.json").exists() for r in lost)
    check_store(survivor, 6, [first, tmp_path / "w1"])


def test_a_trial_can_hold_several_gpus_on_the_local_executor(tmp_path):
    from lorahpo.executors import LocalExecutor, TrialTask

    show = ("import os, json; g = os.environ['CUDA_VISIBLE_DEVICES'].split(','); "
            "print(json.dumps({'value': len(g), 'first': int(g[0])}))")
    executor = LocalExecutor(2, gpus=["0", "1", "2", "3"], gpus_per_trial=2)
    futures = [executor.submit(TrialTask(i, {}, {"command": f'{sys.executable} -c "{show}"'}, tmp_path / str(i)))
               for i in range(2)]
    results = [f.result() for f in futures]
    executor.shutdown()
    assert [r.metrics["value"] for r in results] == [2, 2]
    assert sorted(r.metrics["first"] for r in results) == [0, 2]  # GPUs 0,1 and 2,3
    with pytest.raises(ValueError, match="only 1 GPU"):
        LocalExecutor(1, gpus=["0"], gpus_per_trial=2)
