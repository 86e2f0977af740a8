"""`cl-scale` commands: up, status, down, doctor (local cluster and checks)."""

from __future__ import annotations

from cl_scale.cli import app  # noqa: F401
