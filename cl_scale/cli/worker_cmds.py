"""`cl-scale` commands: send, dlq (worker delivery path)."""

from __future__ import annotations

from cl_scale.cli import app  # noqa: F401
