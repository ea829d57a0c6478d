"""Each trial's files as Optuna artifacts, read back through Optuna's artifact API; and
``lorahpo dashboard`` serving them to a real browser (headless Debian Chromium)."""

from __future__ import annotations

import importlib.util
import io
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import optuna
import pytest
from ci import unavailable
from optuna.artifacts import download_artifact, get_all_artifact_meta
from servers import free_port, wait_for_port

import lorahpo
from lorahpo.artifacts import artifact_store

CHROMIUM = Path("/usr/bin/chromium")
# Where the test keeps a picture of the dashboard's trial page.
SCREENSHOT = os.environ.get("LORAHPO_DASHBOARD_SCREENSHOT")
#: The value of each trial by number (minimised); with keep_adapters 1, trials 0 (the start point),
#: 1 and 3 are the best so far when they end, trial 2 is not.
VALUES = [5.0, 3.0, 4.0, 1.0]
KEPT = {0, 1, 3}
OBJECTIVE = f'''
import sys
from pathlib import Path

def scored(p):
    """Writes a small "adapter" into its trial folder (the worker's argument), as a LoRA trial does."""
    trial_dir = Path(sys.argv[1])
    adapter = trial_dir / "adapter"
    (adapter / "sub").mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{{"r": %d}}' % p["n"])
    (adapter / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 4)
    print("trial says hello", trial_dir.name)
    return {VALUES!r}[int(trial_dir.name)]
'''


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    """A finished study of four trials of a python objective that writes an adapter."""
    root = tmp_path_factory.mktemp("dashboard")
    (root / "scoredobj.py").write_text(OBJECTIVE)
    cwd, path = os.getcwd(), list(sys.path)
    os.chdir(root)  # trial processes import the objective from their working folder
    sys.path.insert(0, str(root))
    try:
        lorahpo.tune(
            {
                "name": "dash",
                "optimizer": "random",
                "budget": len(VALUES),
                "keep_adapters": 1,
                "space": {"params": {"n": {"type": "int", "low": 0, "high": 1000, "x0": 7}}},
                "objective": {"python": "scoredobj:scored"},
            },
            study_dir=root / "study",
        )
    finally:
        os.chdir(cwd)
        sys.path[:] = path
    return root / "study"


def _artifacts(study_dir: Path) -> dict[int, dict[str, bytes]]:
    """Each trial's artifacts by file name, downloaded through Optuna's artifact API."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'study.db'}")
    study = optuna.load_study(study_name="dash", storage=storage)
    store = artifact_store(study_dir)
    out: dict[int, dict[str, bytes]] = {}
    for trial in study.get_trials():
        files = out.setdefault(trial.number, {})
        for meta in get_all_artifact_meta(trial, storage=storage):
            target = study_dir.parent / "download" / meta.artifact_id
            target.parent.mkdir(exist_ok=True)
            download_artifact(artifact_store=store, artifact_id=meta.artifact_id, file_path=str(target))
            assert meta.filename not in files
            files[meta.filename] = target.read_bytes()
    return out


def test_each_trial_stores_its_logs_and_result_and_a_kept_adapter_as_artifacts(study_dir):
    artifacts = _artifacts(study_dir)
    assert sorted(artifacts) == [0, 1, 2, 3]
    for number, files in artifacts.items():
        trial_dir = study_dir / "trials" / str(number)
        logs = {"stdout.log", "stderr.log", "result.json"}
        assert set(files) == (logs | {"adapter.zip"} if number in KEPT else logs), number
        for name in logs:
            assert files[name] == (trial_dir / name).read_bytes()
        assert f"trial says hello {number}".encode() in files["stdout.log"]
        if number in KEPT:
            with zipfile.ZipFile(io.BytesIO(files["adapter.zip"])) as zf:
                assert sorted(zf.namelist()) == ["adapter_config.json", "sub/weights.bin"]
                assert zf.read("sub/weights.bin") == (trial_dir / "adapter" / "sub" / "weights.bin").read_bytes()
                assert zf.read("adapter_config.json") == (trial_dir / "adapter" / "adapter_config.json").read_bytes()
    assert lorahpo.load(study_dir).best.number == 3


def test_a_failing_artifact_store_is_one_warning_and_the_study_finishes(tmp_path, objectives_module, capsys):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "artifacts").write_text("a file where the artifact folder goes")
    study = lorahpo.tune(
        {
            "name": "broken",
            "optimizer": "random",
            "budget": 3,
            "space": {"params": {"x": {"type": "real", "low": -1, "high": 1}}},
            "objective": {"python": f"{objectives_module}:quad"},
        },
        study_dir=tmp_path / "study",
    )
    assert [t.status for t in study.trials] == ["complete"] * 3
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("lorahpo: warning: could not store the files of trial 0")


def test_dashboard_without_its_package_names_the_extra(study_dir, monkeypatch, capsys):
    from lorahpo.cli import main

    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)
    assert main(["dashboard", str(study_dir)]) == 2
    assert capsys.readouterr().err == (
        "lorahpo: error: optuna_dashboard is not installed; pip install 'lorahpo[dashboard]'\n"
    )


@pytest.fixture
def dashboard(study_dir):
    """The URL ``lorahpo dashboard`` prints; stopped with Ctrl-C (SIGINT) afterwards."""
    if not CHROMIUM.exists():
        unavailable(f"needs Debian's chromium at {CHROMIUM}")
    if importlib.util.find_spec("optuna_dashboard") is None:
        unavailable("optuna-dashboard is not installed (pip install 'lorahpo[dashboard]')")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from lorahpo.cli import main; sys.exit(main())",
         "dashboard", str(study_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first = proc.stdout.readline()
    url = f"http://127.0.0.1:{port}/dashboard/"
    assert first.split()[:2] == ["optuna-dashboard:", url], first
    wait_for_port(proc, port, "dashboard")
    yield url
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output


def test_the_dashboard_shows_the_trials_of_a_finished_study_and_links_their_artifacts(dashboard, study_dir):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        args = ["--headless", "--no-sandbox", "--disable-gpu"]
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(20_000)
        page.goto(dashboard + "studies/1/trials")
        page.wait_for_selector("text=adapter.zip")
        listing = page.inner_text("body")
        assert "4 Trials" in listing and "dash" in page.inner_text("header")
        for number in range(len(VALUES)):
            assert f"Trial {number}" in listing

        def open_trial(number: int) -> dict[str, str]:
            """Show a trial; its artifacts' names and download links."""
            page.get_by_text(f"Trial {number}", exact=True).first.click()
            page.wait_for_selector(f"text=Trial {number} (trial_id={number + 1})")
            page.wait_for_selector("text=stdout.log")
            links = page.locator("a[href*='/artifacts/']")
            return {link.get_attribute("download"): link.get_attribute("href") for link in links.all()}

        best = open_trial(3)
        if SCREENSHOT:
            page.screenshot(path=SCREENSHOT, full_page=True)
        assert "Best Trial" in page.inner_text("body")
        assert 'metrics {"value": 1.0}' in page.inner_text("body")
        assert sorted(best) == ["adapter.zip", "result.json", "stderr.log", "stdout.log"], best
        trial_dir = study_dir / "trials" / "3"
        for name in ("stdout.log", "result.json"):
            response = page.request.get(dashboard.removesuffix("/dashboard/") + best[name])
            assert response.ok and response.body() == (trial_dir / name).read_bytes(), name
        zipped = page.request.get(dashboard.removesuffix("/dashboard/") + best["adapter.zip"]).body()
        with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
            assert zf.read("sub/weights.bin") == (trial_dir / "adapter" / "sub" / "weights.bin").read_bytes()
        assert sorted(open_trial(2)) == ["result.json", "stderr.log", "stdout.log"]  # not kept: no adapter
        browser.close()
