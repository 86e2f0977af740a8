"""Render targets (nginx, k8s, compose, scaffold) from one validated values object.

Renderers are pure functions ``render(values) -> dict[relative_path, text]``: no Chainlit import,
no I/O; writing files is the CLI's job.
"""

from __future__ import annotations

from pathlib import Path


def templates_dir() -> Path:
    """Templates ship inside the wheel as ``cl_scale/templates``; in a source checkout they are
    the top-level ``templates/`` folder."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "templates"
    return packaged if packaged.is_dir() else here.parent / "templates"
