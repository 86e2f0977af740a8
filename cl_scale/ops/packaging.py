"""cl-scale itself in a Docker build context: ``cl-scale init`` puts the wheel of the running
cl-scale next to the Dockerfile, so the image installs exactly this version without an index."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cl_scale
from cl_scale.errors import UserError


def source_tree() -> Path | None:
    """The source checkout cl-scale runs from (editable install), or None when installed as a wheel."""
    root = Path(cl_scale.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "cl-scale"' in pyproject.read_text():
        return root
    return None


def ship_wheel(dest: Path) -> Path | None:
    """Build the wheel of this cl-scale into ``dest``; None when cl-scale is installed from an index
    (then the Dockerfile installs ``cl-scale==<version>`` from it)."""
    root = source_tree()
    if root is None:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--wheel-dir", str(dest),
                             str(root)], capture_output=True, text=True, timeout=300)
    wheels = sorted(dest.glob(f"cl_scale-{cl_scale.__version__}-*.whl"))
    if result.returncode != 0 or not wheels:
        why = (result.stderr.strip().splitlines() or ["no wheel produced"])[-1][:200]
        raise UserError(f"could not build the cl-scale wheel for the image ({why})")
    return wheels[-1]
