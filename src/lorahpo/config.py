"""The study configuration: typed, validated, YAML in and YAML out.

Every mistake becomes a :class:`ConfigError` whose message is one line naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from optuna.samplers import BaseSampler
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lorahpo.errors import UserError
from lorahpo.extras import require
from lorahpo.finetune.config import TUNABLE
from lorahpo.objectives import ObjectiveSpec
from lorahpo.result import VIOLATED
from lorahpo.space import SpaceSpec

#: Fields that may change between runs of one study without making it a different study.
RUN_FIELDS = (
    "budget", "parallel", "gpus_per_trial", "trial_timeout", "executor", "ray", "keep_adapters", "tracking"
)


class ConfigError(UserError, ValueError):
    """A configuration mistake, described in one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayOptions(_Strict):
    """How trials run on a Ray cluster (``executor: ray``); see docs/parallel.md."""

    address: str | None = Field(
        None,
        description="Cluster to join: `auto`, HOST:PORT or ray://HOST:PORT (default: a Ray started on this machine).",
    )
    num_cpus: float = Field(1, gt=0, description="CPU cores each trial holds (also its torch threads on a CPU).")
    num_gpus: float = Field(0, ge=0, description="GPUs each trial holds; a fraction shares a GPU between trials.")
    max_retries: int = Field(
        0, ge=0, description="Times a trial lost with its Ray worker or node runs again before it counts as failed."
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime environment of the trials, e.g. `{working_dir: .}` to ship your objective's code.",
    )


class MlflowTracking(_Strict):
    """An MLflow experiment: the study a parent run, each trial a child run (docs/tracking.md)."""

    tracking_uri: str = Field(
        description="MLflow tracking URI: `sqlite:///mlflow.db` (a local file), `http://host:5000` (a server)..."
    )
    experiment: str | None = Field(None, description="Experiment name (default: the study name).")


class WandbTracking(_Strict):
    """A Weights & Biases project: each trial a run, grouped by study (docs/tracking.md)."""

    project: str = Field(description="W&B project.")
    mode: Literal["online", "offline", "disabled"] = Field(
        "online", description="online: upload as it runs; offline: write run folders for `wandb sync` later."
    )
    dir: str | None = Field(None, description="Folder of W&B's run files (default: W&B's own, ./wandb).")


class TensorboardTracking(_Strict):
    """TensorBoard event files: one run per trial, `<dir>/<study name>/trial-<N>` (docs/tracking.md)."""

    dir: str = Field(description="Log folder, as given to `tensorboard --logdir`.")


class TrackingConfig(_Strict):
    """Experiment trackers each trial is logged to; none by default (docs/tracking.md)."""

    mlflow: MlflowTracking | None = Field(None, description="Log to MLflow.")
    wandb: WandbTracking | None = Field(None, description="Log to Weights & Biases.")
    tensorboard: TensorboardTracking | None = Field(None, description="Log TensorBoard event files.")


class StudyConfig(_Strict):
    """A whole study: what to search, with which optimizer, and how to run the trials."""

    name: str = Field("lorahpo", description="Study name inside the storage.")
    storage: str | None = Field(None, description="Optuna storage URL (default: SQLite file in the study folder).")
    optimizer: str = Field(
        "nomad", description="nomad, tpe, gp, cmaes, nsga2, random, grid, or an Optuna sampler import path."
    )
    optimizer_options: dict[str, Any] = Field(default_factory=dict, description="Keyword options of the optimizer.")
    seed: int = Field(0, description="Seed of the optimizer.")
    pruner: str = Field(
        "none",
        description="Early stopping on intermediate values: none, median, asha, hyperband or curve (docs/pruning.md).",
    )
    pruner_options: dict[str, Any] = Field(default_factory=dict, description="Keyword options of the pruner.")
    budget: int = Field(20, ge=1, description="Finished evaluations in the study, across all runs.")
    parallel: int = Field(1, ge=1, description="Trials run at once.")
    gpus_per_trial: int = Field(
        1,
        ge=1,
        description=(
            "GPUs each trial gets on the local executor; a `lora` objective trains data-parallel over them "
            "(`training.processes`), a `command` objective can spread a trial over them (torchrun, accelerate)."
        ),
    )
    trial_timeout: float | None = Field(None, gt=0, description="Seconds before a trial is killed (timeout).")
    executor: Literal["local", "ray"] = Field(
        "local",
        description="Where trials run: `local` subprocesses, or `ray` tasks on a Ray cluster (docs/parallel.md).",
    )
    ray: RayOptions = Field(default_factory=RayOptions, description="Options of the `ray` executor.")
    keep_adapters: int = Field(
        3, ge=0, description="LoRA studies keep the adapters of this many best trials (and of the start point)."
    )
    space: SpaceSpec = Field(description="The search space.")
    objective: ObjectiveSpec = Field(description="The blackbox.")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="Experiment trackers each trial is logged to: mlflow, wandb, tensorboard (docs/tracking.md).",
    )
    warm_start: list[str] = Field(
        default_factory=list,
        description=(
            "Earlier studies (folders, or storage URLs as `URL#study_name`) whose best points this study "
            "evaluates first (docs/warm_start.md)."
        ),
    )
    warm_start_points: int = Field(5, ge=1, description="Best points taken from each `warm_start` study.")
    constraints: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Upper bounds on metrics, e.g. `{peak_memory_mb: 8000}`; "
            "a trial over one is infeasible (docs/multiobjective.md)."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        try:  # build it once, so a bad optimizer is refused before anything is written
            self.make_sampler()
        except (ValueError, TypeError) as e:
            raise ValueError(f"optimizer: {e}") from None
        if self.warm_start and self.optimizer == "grid":
            raise ValueError("warm_start: grid search evaluates every point of its grid anyway; use another optimizer")
        if self.objective.secondary and self.pruner != "none":
            raise ValueError(
                "pruner: early stopping needs a single objective (Optuna prunes single-objective studies only)"
            )
        from lorahpo.pruners import make_pruner

        try:
            make_pruner(self.pruner, self.pruner_options)
        except ValueError as e:
            raise ValueError(f"pruner: {e}") from None
        if self.objective.lora is not None:
            training = self.objective.lora.training
            if self.executor == "local" and self.gpus_per_trial > 1 and training.processes == 1:
                training.processes = self.gpus_per_trial  # one data-parallel process per GPU of the trial
            unknown = sorted(set(self.space.resolved()) - set(TUNABLE))
            if unknown:
                raise ValueError(f"space: {unknown} are not LoRA trial hyperparameters; choose from {sorted(TUNABLE)}")
            measured = self.objective.lora.metric_names()
            named = [("objective", m) for m in self.objective.metric_names]
            named += [("constraints", c) for c in self.constraints]
            for where, name in named:
                if name not in measured:
                    raise ValueError(
                        f"{where}: a LoRA trial does not measure {name!r}; it measures {', '.join(measured)}"
                    )
        if self.objective.tabular is not None:
            self._check_table(self.objective.tabular.table)
        if self.storage is not None and self.storage.startswith(("postgresql://", "postgresql+psycopg2://")):
            # Every command opens the store; MissingExtra is no ValueError, so pydantic lets it through.
            require("cluster", "psycopg2")
        return self

    def _check_table(self, path: str) -> None:
        """A tabular objective: the table loads, the space has its grid's parameters and it
        measured the metrics named; its trials are answered in this process."""
        from lorahpo.tabular import load_table

        table = load_table(path)
        if set(self.space.resolved()) != set(table.grid):
            raise ValueError(f"space: the table {path} answers {sorted(table.grid)}, "
                             f"not {sorted(self.space.resolved())}")
        measured = table.metric_names()
        named = [("objective", m) for m in self.objective.metric_names] + [("constraints", c) for c in self.constraints]
        for where, name in named:
            if name not in measured:
                raise ValueError(f"{where}: the table {path} does not hold {name!r}; it holds {', '.join(measured)}")
        if self.executor != "local":
            raise ValueError("executor: a tabular objective is answered in the study's process; use `local`")

    def make_sampler(self, starts: list[dict[str, Any]] | None = None) -> BaseSampler:
        """A new instance of the study's optimizer, told the objectives and constraints.

        ``starts``: a warm start's points, best first (NOMAD starts from them).
        """
        from lorahpo.samplers import make_sampler

        return make_sampler(
            self.optimizer,
            self.space.distributions(),
            x0=self.space.x0(),
            seed=self.seed,
            parallel=self.parallel,
            options=self.optimizer_options,
            n_objectives=len(self.objective.metric_names),
            constraints=list(self.constraints),
            shared=self.storage is not None,
            starts=starts or (),
        )

    @property
    def evaluators(self) -> list[str]:
        """Names of the downstream metrics each LoRA trial measures (``objective.lora.evaluate``)."""
        lora = self.objective.lora
        return [spec.name for spec in lora.evaluate] if lora is not None else []

    def constraint_values(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each constraint as Optuna takes it: ``metric - bound``, met when <= 0 (a missing metric: violated)."""
        return {name: float(metrics.get(name, VIOLATED)) - bound for name, bound in self.constraints.items()}

    def feasible(self, metrics: dict[str, float]) -> bool:
        """Whether measured ``metrics`` meet every constraint."""
        return all(v <= 0 for v in self.constraint_values(metrics).values())

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same study (everything but run settings)."""
        return self.model_dump(mode="json", exclude=set(RUN_FIELDS))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def parse(data: Any, source: str = "config") -> StudyConfig:
    """Validate a mapping into a :class:`StudyConfig`, or raise a one-line :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = "".join(f"{p}: " for p in [".".join(str(p) for p in err["loc"])] if p)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise ConfigError(f"{source}: {where}{msg}{more}") from None


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read a YAML file, apply command-line ``overrides`` and validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    return parse(with_overrides(data, overrides), str(path))


def with_overrides(data: Any, overrides: dict[str, Any] | None) -> Any:
    """``data`` with ``overrides`` set: a None override is left out, a mapping updates a mapping."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for k, v in (overrides or {}).items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        elif v is not None:
            data[k] = v
    return data
