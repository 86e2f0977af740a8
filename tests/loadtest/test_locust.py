"""A short locust run against a real 3-instance cluster behind nginx: every scenario, no failures."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cl_scale.loadtest import REQUEST_NAMES

APP = Path(__file__).resolve().parents[2] / "cl_scale" / "bench" / "apps" / "echo.py"

CL_SCALE = str(Path(sys.executable).parent / "cl-scale")
KEY = "k1:load-secret"


def _cli(*args, env=None, timeout=120):
    import os

    return subprocess.run([CL_SCALE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_every_scenario_against_three_instances(cluster, tmp_path):
    shutil.copy(APP, cluster.app_dir / "loadtest_app.py")
    cluster.start(3, app="loadtest_app.py", nginx=True, env={"CL_SCALE_WORKER_KEYS": KEY})
    out = tmp_path / "report"
    result = _cli("loadtest", cluster.nginx.url, "--users", "6", "--spawn-rate", "6", "--run-time", "20s",
                  "--scenario", "all", "--spread", "3", "--storm-period", "5", "--stream-tokens", "100",
                  "--redis-url", cluster.redis.url, "--out", str(out),
                  env={"CL_SCALE_WORKER_KEY": KEY})
    log = (out / "locust.log").read_text() if (out / "locust.log").exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log[-3000:]
    with open(out / "locust_stats.csv", newline="") as fh:
        rows = {r["Name"]: r for r in csv.DictReader(fh)}
    for name in REQUEST_NAMES["all"]:
        assert name in rows, f"{name} missing from {sorted(rows)}"
        assert int(rows[name]["Request Count"]) > 0, name
        assert int(rows[name]["Failure Count"]) == 0, name
    assert (out / "report.html").stat().st_size > 1000
    assert "Aggregated" in result.stdout


def test_failures_exit_non_zero(tmp_path):
    """Nothing listens: every connect fails, the command says so and exits 1."""
    from cl_scale.ops.processes import free_port

    result = _cli("loadtest", f"http://127.0.0.1:{free_port()}", "--users", "2", "--spawn-rate", "2",
                  "--run-time", "3s", "--out", str(tmp_path / "r"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed" in result.stderr


@pytest.mark.parametrize("args, needle", [
    (["not-a-url"], "URL"),
    (["http://127.0.0.1:1", "--scenario", "bogus"], "--scenario"),
    (["http://127.0.0.1:1", "--run-time", "soon"], "--run-time"),
    (["http://127.0.0.1:1", "--users", "0"], "--users"),
    (["http://127.0.0.1:1", "--scenario", "push"], "--redis-url"),
])
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    result = _cli("loadtest", *args, "--out", str(tmp_path / "r"), env={"CL_SCALE_WORKER_KEY": ""})
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_help_has_examples():
    result = _cli("loadtest", "--help")
    assert result.returncode == 0 and "Examples" in result.stdout and "--scenario" in result.stdout
