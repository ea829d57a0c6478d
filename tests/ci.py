"""What CI must run: a test whose tool, server or download is missing here is skipped, except
under CI (``CI=true``), where that is a failure: CI must run every such test.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def on_ci() -> bool:
    """Whether the tests run under CI (``CI`` set to 1, true or yes, as CI services set it)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(why: str) -> NoReturn:
    """Skip the running test because ``why``; under CI, fail it instead."""
    if on_ci():
        pytest.fail(f"{why} (CI must run this test)")
    pytest.skip(why)
