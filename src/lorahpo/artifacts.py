"""Each trial's files as Optuna artifacts, which optuna-dashboard lists and downloads.

The artifact store is ``artifacts/`` in the study folder (an
:class:`optuna.artifacts.FileSystemArtifactStore`); each artifact is recorded in the trial's
system attributes of the Optuna store. The study process uploads a trial's files when the
trial ends, after its status, metrics and reason are recorded and just before its values are
told (Optuna refuses new artifacts of a finished trial):

- its logs and result, always: ``stdout.log``, ``stderr.log``, ``train_log.jsonl``,
  ``result.json`` (those that exist; small);
- its LoRA adapter, as one ``adapter.zip`` (files stored uncompressed: the weights do not
  compress), only when the trial is kept (among the ``keep_adapters`` best so far, or the
  start point). An adapter that later drops out of the best keeps its zip: the store holds one
  zip per improvement of the best trials, about ``keep_adapters`` + the number of
  improvements times the adapter's size.

An upload that fails never fails the trial or the study: one warning, and no more uploads in
this run.
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from optuna.trial import Trial

if TYPE_CHECKING:
    from optuna.artifacts import FileSystemArtifactStore

#: The artifact folder in a study folder.
ARTIFACT_DIR = "artifacts"
#: The files of a trial folder uploaded for every trial (those that exist).
LOG_FILES = ("stdout.log", "stderr.log", "train_log.jsonl", "result.json")
ADAPTER_ZIP = "adapter.zip"


def artifact_store(study_dir: Path) -> FileSystemArtifactStore:
    """The study's artifact store (its folder is created)."""
    from optuna.artifacts import FileSystemArtifactStore

    folder = study_dir / ARTIFACT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


class TrialUploader:
    """Uploads the files of the trials of one run of a study; after one failure, warns and stops."""

    def __init__(self, study_dir: Path) -> None:
        self.study_dir = study_dir
        self.failed = False

    def upload(self, trial: Trial, trial_dir: Path, *, adapter: bool) -> None:
        """Upload ``trial``'s logs and result, and its ``adapter/`` folder as a zip when ``adapter``."""
        if self.failed:
            return
        from optuna.artifacts import upload_artifact

        try:
            store = artifact_store(self.study_dir)
            for name in LOG_FILES:
                path = trial_dir / name
                if path.is_file():
                    upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
            folder = trial_dir / "adapter"
            if adapter and folder.is_dir():
                with tempfile.TemporaryDirectory() as tmp:
                    archive = Path(tmp) / ADAPTER_ZIP
                    zip_folder(folder, archive)
                    upload_artifact(
                        artifact_store=store, file_path=str(archive), study_or_trial=trial, mimetype="application/zip"
                    )
        except Exception as exc:  # an artifact is a convenience: the trial's outcome stands without it
            self.failed = True
            print(
                f"lorahpo: warning: could not store the files of trial {trial.number} as Optuna artifacts "
                f"({type(exc).__name__}: {exc}); no more are stored in this run",
                file=sys.stderr,
            )


def zip_folder(folder: Path, archive: Path) -> None:
    """Write the files under ``folder`` into ``archive``, by their path relative to ``folder``."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
