"""The benchmark harness in --quick mode: three real setups, a results.json with the right shape and
sane values (no timing assertions), plots, and the README section generated from the JSON."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cl_scale.bench.report import MARK_END, MARK_START, readme_section, update_readme
from cl_scale.bench.setups import SETUPS

CL_SCALE = str(Path(sys.executable).parent / "cl-scale")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_bench_writes_results_plots_and_the_readme_section(tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run([CL_SCALE, "bench", "--quick", "--clients", "12", "--out", str(out)],
                            capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    p = report["params"]
    assert p["quick"] is True and p["clients"] == 12
    assert list(report["setups"]) == list(SETUPS)
    assert report["setups"]["stock"]["instances"] == 1
    assert report["setups"]["stock-redis"]["instances"] == report["setups"]["cl-scale"]["instances"] == 3
    for name, s in report["setups"].items():
        for key in ("echo_p50_ms", "echo_p99_ms", "stream_s", "cpu_ms_per_msg_gross"):
            assert _positive(s[key]), (name, key, s[key])
        assert s["echo_p99_ms"] >= s["echo_p50_ms"]
        assert s["echo_samples"] == p["echoes"] and s["stream_samples"] == p["streams"]
        assert s["clients_attempted"] == 12 and s["clients_held"] == 12 and s["client_failures"] == 0, s
        assert s["cpu_message_errors"] == 0 and s["cpu_messages"] > 0
        assert isinstance(s["mem_per_conn_kb"], (int, float)) and s["rss_after_mb"] > 0
        assert isinstance(s["idle_cpu_pct"], (int, float)) and s["idle_cpu_pct"] >= 0
        assert 0 <= s["cpu_ms_per_msg"] <= s["cpu_ms_per_msg_gross"]
    w = report["worker"]
    for path in ("worker", "raw_emit"):
        assert _positive(w["latency"][path]["p50_ms"]) and w["latency"][path]["n"] == p["push_rounds"]
        for batch in (1, 100):
            row = w["throughput"][f"{path}_batch{batch}"]
            assert row["messages"] == p["push_messages"] and row["lost"] == 0, row
            assert _positive(row["publish_msgs_per_s"]) and _positive(row["delivery_msgs_per_s"])
    assert set(report["render"]["median_s"]) == {"k8s", "nginx", "compose"}
    for png in ("echo", "stream", "clients", "memory", "cpu", "worker", "summary"):
        assert (out / "plots" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{MARK_START}\nold table\n{MARK_END}\nafter\n")
    update_readme(readme, out / "results.json")
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n") and text.endswith(f"{MARK_END}\nafter\n")
    assert "| echo round trip p50 |" in text and "12/12 (0 failed)" in text
    assert readme_section(report) in text


def _report(failures: int = 0) -> dict:
    setup = {"instances": 3, "echo_p50_ms": 5.0, "echo_p99_ms": 9.0, "stream_s": 0.4, "clients_held": 10 - failures,
             "clients_attempted": 10, "client_failures": failures, "mem_per_conn_kb": 80.0, "cpu_ms_per_msg": 1.0,
             "redis_cpu_ms_per_msg": 0.1}
    return {"generated": "now", "machine": {"cpus": 2, "python": "3.11"}, "labels": {"cl-scale": "(c)"},
            "params": {"echoes": 1, "streams": 1, "tokens": 2000, "clients": 10, "hold_s": 2, "quick": True,
                       "push_messages": 10},
            "setups": {"cl-scale": setup, "stock": {**setup, "cpu_ms_per_msg": 0.5, "stream_s": 0.2}}}


def test_readme_section_shows_measured_failures_and_computed_ratios(tmp_path):
    text = readme_section(_report(failures=3))
    assert "7/10 (3 failed)" in text
    assert "stream 2.00" in text and "CPU per chat message 2.00" in text  # 0.4/0.2 and 1.0/0.5, computed
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_report()))
    readme = tmp_path / "README.md"
    readme.write_text(f"{MARK_START}{MARK_END}\n")
    update_readme(readme, results)
    first = readme.read_text()
    update_readme(readme, results)  # twice gives the same file (the markers survive)
    assert readme.read_text() == first


def test_readme_without_markers_and_unknown_setups_are_one_line_exit_2(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_report()))
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    run = subprocess.run([CL_SCALE, "bench", "--readme", str(readme), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "bench:start" in run.stderr
    run = subprocess.run([CL_SCALE, "bench", "--only", "nginx-plus"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--only" in run.stderr and len(run.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_bench_stopped_by_sigterm_leaves_no_process(tmp_path):
    """SIGTERM (and SIGHUP) stop the bench like Ctrl-C: every process it started is gone."""
    bench = subprocess.Popen([CL_SCALE, "bench", "--quick", "--clients", "4", "--out", str(tmp_path / "b")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    me = psutil.Process(bench.pid)
    children: set[int] = set()
    for _ in range(300):  # bounded: until the three setups are up (10 processes), or 60 s
        children |= {c.pid for c in me.children(recursive=True)}
        if len(children) >= 8:
            break
        time.sleep(0.2)
    assert len(children) >= 8, "the bench never started its setups"
    bench.send_signal(signal.SIGTERM)
    bench.wait(timeout=60)
    for _ in range(100):  # bounded: children exit within a few seconds of the SIGKILLs
        alive = [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, [psutil.Process(pid).cmdline()[:3] for pid in alive]
