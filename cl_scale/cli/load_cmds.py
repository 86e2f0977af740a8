"""`cl-scale` commands: loadtest, bench (locust and the benchmark harness)."""

from __future__ import annotations

from cl_scale.cli import app  # noqa: F401
