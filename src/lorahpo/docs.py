"""The config reference (docs/config.md), generated from the config classes themselves.

``python -m lorahpo.docs > docs/config.md`` rewrites it; a test keeps the two equal.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

_INTRO = """# Config reference

A study is one YAML file. Every field has a default unless marked *required*; unknown keys are
errors. This page is generated from the code (`python -m lorahpo.docs > docs/config.md`).
"""


def _default(field: Any) -> str:
    if field.is_required():
        return "*required*"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{json.dumps(value)}`"


def _type(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    for noise in ("typing.", "lorahpo.finetune.config.", "lorahpo.space.", "lorahpo.objectives."):
        text = text.replace(noise, "")
    return text.replace("Optional[", "optional[").replace("|", "or")


def section(title: str, model: type[BaseModel], skip_sections: bool = False) -> str:
    lines = [f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if skip_sections and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            continue
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {description} |")
    return "\n".join(lines) + "\n"


def reference() -> str:
    from lorahpo.config import MlflowTracking, RayOptions, StudyConfig, TensorboardTracking, WandbTracking
    from lorahpo.finetune import config as ft
    from lorahpo.objectives import ObjectiveSpec, TabularObjective
    from lorahpo.space import ParamSpec, SpaceSpec

    parts = [
        _INTRO,
        section("Study (top level)", StudyConfig),
        section("ray", RayOptions),
        section("tracking.mlflow", MlflowTracking),
        section("tracking.wandb", WandbTracking),
        section("tracking.tensorboard", TensorboardTracking),
        section("space", SpaceSpec),
        section("space.params.NAME", ParamSpec),
        section("objective", ObjectiveSpec),
        section("objective.lora.model", ft.ModelConfig),
        section("objective.lora.data", ft.DataConfig),
        section("objective.lora.data.sources[]", ft.DataSource),
        section("objective.lora.lora", ft.LoraConfig),
        section("objective.lora.training", ft.TrainingConfig),
        section("objective.lora (other keys)", ft.LoraTrialConfig, skip_sections=True),
        section("objective.lora.evaluate[] (or a name: retention, in_domain, an lm-eval task)", ft.EvaluatorSpec),
        section("objective.tabular", TabularObjective),
        "## Tunable LoRA hyperparameters\n\nWith `objective: {lora: ...}` the search space may name any of: "
        + ", ".join(f"`{n}`" for n in sorted(ft.TUNABLE))
        + ".\n",
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    print(reference(), end="")
