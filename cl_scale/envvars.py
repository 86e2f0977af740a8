"""Reading ``CL_SCALE_*`` environment variables: one way to turn text into a checked value.

Used by the two settings objects (``runtime.settings.RuntimeSettings`` for an instance,
``worker.settings.WorkerSettings`` for worker-side processes), which are the only readers of the
environment. A bad value is one ``ConfigError`` naming the variable.
"""

from __future__ import annotations

import math
import os

from cl_scale.errors import ConfigError

DAY = 86400


def env(name: str, default: str | None = None) -> str | None:
    """The variable's value; unset and empty both mean ``default``."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def number(name: str, text: str | None, kind: type, lo: float, hi: float):
    """``text`` as an int/float in [lo, hi] (None stays None); nan and inf are refused."""
    if text is None:
        return None
    try:
        value = kind(text.strip())
    except ValueError:
        raise ConfigError(name, text, f"must be {'a whole number' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise ConfigError(name, text, "must be a finite number")
    if not lo <= value <= hi:
        raise ConfigError(name, text, f"must be between {lo:g} and {hi:g}")
    return value
