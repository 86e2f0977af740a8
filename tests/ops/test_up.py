"""`cl-scale up / status / down` as a user runs them: real processes, checked by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cl_scale.ops.local import _pid_alive
from cl_scale.ops.processes import free_port, http_status

CL_SCALE = str(Path(sys.executable).with_name("cl-scale"))
pytestmark = pytest.mark.slow


def cli(*args, cwd, timeout=180, env=None):
    return subprocess.run([CL_SCALE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def pids_of(info: dict) -> list[int]:
    return [info["nginx"]["pid"], info["redis"]["pid"], *[i["pid"] for i in info["instances"]]]


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _pid_alive(p)]


def test_up_detach_status_down_leaves_no_process(tmp_path):
    port = free_port()
    started = cli("up", "--replicas", "3", "--port", str(port), "--detach", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert f"http://127.0.0.1:{port}" in started.stdout
    pids = []
    try:
        status = cli("status", "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        info = json.loads(status.stdout)
        pids = pids_of(info)
        assert [i["name"] for i in info["instances"]] == ["inst1", "inst2", "inst3"]
        assert all(i["alive"] and i["ready"] and i["sessions"] == 0 for i in info["instances"])
        assert len({i["port"] for i in info["instances"]}) == 3
        assert info["nginx"]["alive"] and info["nginx"]["port"] == port and info["redis"]["alive"]
        assert info["healthy"] is True
        assert http_status(f"http://127.0.0.1:{port}/") == 200  # Chainlit's UI through nginx
        assert cli("up", "--port", str(free_port()), "--detach", cwd=tmp_path).returncode == 2  # already up

        # One instance dies: status says so (exit 1).
        os.kill(info["instances"][1]["pid"], signal.SIGKILL)
        assert wait_gone([info["instances"][1]["pid"]]) == []
        degraded = cli("status", "--json", cwd=tmp_path)
        assert degraded.returncode == 1
        assert [i["alive"] for i in json.loads(degraded.stdout)["instances"]] == [True, False, True]
    finally:
        stopped = cli("down", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_gone(pids) == []
    assert not (tmp_path / ".cl-scale" / "cluster.json").exists()
    gone = cli("status", cwd=tmp_path)
    assert gone.returncode == 2 and "no cluster recorded" in gone.stderr


def test_up_foreground_stops_everything_on_ctrl_c(tmp_path):
    port = free_port()
    proc = subprocess.Popen([CL_SCALE, "up", "--replicas", "2", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        state_file = tmp_path / ".cl-scale" / "cluster.json"
        deadline = time.monotonic() + 120
        while not state_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert state_file.exists(), proc.stderr.read() if proc.poll() is not None else "not started"
        state = json.loads(state_file.read_text())
        pids = pids_of({**state, "redis": state["redis"]})
        assert all(_pid_alive(p) for p in pids)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert wait_gone(pids) == []


@pytest.mark.parametrize("args, env, needle", [
    (["--replicas", "0"], {}, "--replicas 0"),
    (["missing.py"], {}, "missing.py"),
    ([], {"CL_SCALE_NGINX": "/nonexistent/nginx"}, "apt-get install nginx"),
    (["--sticky", "round_robin"], {}, "--sticky"),
])
def test_up_bad_input_is_one_clear_line(tmp_path, args, env, needle):
    result = cli("up", "--port", str(free_port()), "--detach", *args, cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
