"""Optional dependencies: a command checks, before it starts, that the extra it needs is installed.

A missing package is then one line naming the extra to install (``lorahpo: error: matplotlib is
not installed; pip install 'lorahpo[report]'``), not a traceback from halfway through the work.
"""

from __future__ import annotations

import importlib.util
import sys

from lorahpo.errors import UserError

#: The top-level modules of each extra of pyproject.toml that lorahpo imports.
EXTRAS: dict[str, tuple[str, ...]] = {
    "lora": ("torch", "transformers", "peft"),
    "gp": ("torch", "scipy"),
    "cmaes": ("cmaes",),
    "web": ("starlette", "uvicorn", "jinja2", "itsdangerous"),
    "eval": ("lm_eval",),
    "report": ("matplotlib",),
    "quant": ("bitsandbytes",),
    "cluster": ("ray", "psycopg2"),
    "dataframe": ("pandas",),
    "tracking": ("mlflow", "wandb", "tensorboard"),
    "dashboard": ("optuna_dashboard",),
}


class MissingExtra(UserError):
    """An optional package that a command needs is not installed."""


def require(extra: str, *modules: str) -> None:
    """Check that ``modules`` of ``extra`` (default: all of them) are installed, without importing them.

    Raises:
        MissingExtra: One is not installed; the message names the extra to install.
    """
    for module in modules or EXTRAS[extra]:
        if not _installed(module):
            raise MissingExtra(f"{module} is not installed; pip install 'lorahpo[{extra}]'")


def _installed(module: str) -> bool:
    if module in sys.modules:  # imported already, or blocked (None)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None
