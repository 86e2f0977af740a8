"""`cl-scale run` refuses to start, with one line naming the Chainlit version, when a hook moved."""

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

CL_SCALE = str(Path(sys.executable).with_name("cl-scale"))


def _run(app_dir: Path, sitecustomize: str, timeout: float = 60) -> subprocess.CompletedProcess:
    site = app_dir / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(sitecustomize)
    return subprocess.run(
        [CL_SCALE, "run", "app.py", "--port", "1", "--redis-url", "redis://127.0.0.1:1/0"],
        cwd=app_dir, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(app_dir)},
        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("breakage, missing", [
    ("import chainlit.socket\ndel chainlit.socket.process_message\n", "chainlit.socket.process_message"),
    ("import chainlit.server, chainlit.socket\n"
     "chainlit.server.sio.handlers['/'].pop('connection_successful')\n", "socket handler 'connection_successful'"),
])
def test_missing_hook_fails_fast_with_one_line(app_dir, breakage, missing):
    result = _run(app_dir, breakage)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    error_lines = [line for line in lines if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert f"Chainlit {version('chainlit')}" in error_lines[0]
    assert missing in error_lines[0]


def test_missing_app_file_is_a_clear_error(app_dir):
    result = subprocess.run([CL_SCALE, "run", "nope.py"], cwd=app_dir, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "nope.py" in result.stderr and "Traceback" not in result.stderr
