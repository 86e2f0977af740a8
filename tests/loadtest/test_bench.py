"""The benchmark harness in --quick mode: three real setups, a results.json with the right shape and
sane values (no timing assertions), plots, and the README table generator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cl_scale.loadtest.bench import MARK_END, MARK_START, SETUPS, markdown_table, update_readme

CL_SCALE = str(Path(sys.executable).parent / "cl-scale")
ROOT = Path(__file__).resolve().parents[2]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_bench_writes_results_and_plots(tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run([CL_SCALE, "bench", "--quick", "--clients", "12", "--out", str(out)],
                            capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert report["params"]["quick"] is True and report["params"]["clients"] == 12
    assert list(report["setups"]) == list(SETUPS)
    assert report["setups"]["stock"]["instances"] == 1
    assert report["setups"]["stock-redis"]["instances"] == report["setups"]["cl-scale"]["instances"] == 3
    for name, s in report["setups"].items():
        for key in ("echo_p50_ms", "echo_p99_ms", "stream_s", "cpu_ms_per_msg"):
            assert _positive(s[key]), (name, key, s[key])
        assert s["echo_p99_ms"] >= s["echo_p50_ms"]
        assert s["echo_samples"] == report["params"]["echoes"]
        assert s["stream_samples"] == report["params"]["streams"]
        assert s["clients_attempted"] == 12 and s["clients_held"] == 12 and s["client_failures"] == 0, s
        assert s["cpu_message_errors"] == 0 and s["cpu_messages"] > 0
        assert isinstance(s["mem_per_conn_kb"], (int, float))
        assert s["rss_after_mb"] > 0 and s["redis_cpu_ms_per_msg"] >= 0
    assert report["setups"]["stock"]["push_p50_ms"] is None  # no outside path into stock Chainlit
    for name in ("stock-redis", "cl-scale"):
        s = report["setups"][name]
        assert _positive(s["push_p50_ms"]) and s["push_p99_ms"] >= s["push_p50_ms"]
        assert s["push_samples"] == report["params"]["pushes"]
    assert "Publisher" in report["setups"]["cl-scale"]["push_path"]
    for png in ("echo", "stream", "push", "clients", "memory", "cpu", "summary"):
        assert (out / "plots" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    # The README table comes from the JSON.
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{MARK_START}\nold table\n{MARK_END}\nafter\n")
    update_readme(readme, out / "results.json")
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n") and text.endswith(f"{MARK_END}\nafter\n")
    assert "| echo round trip p50 |" in text and "12/12" in text and "n/a" in text


def _report() -> dict:
    setup = {"instances": 3, "echo_p50_ms": 5.0, "echo_p99_ms": 9.0, "stream_s": 0.4, "push_p50_ms": None,
             "push_p99_ms": None, "clients_held": 10, "clients_attempted": 10, "client_failures": 0,
             "mem_per_conn_kb": 80.0, "cpu_ms_per_msg": 1.0, "redis_cpu_ms_per_msg": 0.1}
    return {"generated": "now", "machine": {"cpus": 2, "python": "3.11"}, "labels": {"cl-scale": "(c)"},
            "params": {"echoes": 1, "streams": 1, "pushes": 1, "clients": 10, "quick": True},
            "setups": {"cl-scale": setup}}


def test_readme_table_script(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_report()))
    readme = tmp_path / "README.md"
    readme.write_text(f"{MARK_START}{MARK_END}\n")
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "readme_table.py"), str(readme), str(results)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert markdown_table(_report()) in readme.read_text()
    # Twice gives the same file (the markers survive).
    first = readme.read_text()
    update_readme(readme, results)
    assert readme.read_text() == first


def test_readme_without_markers_is_one_line_exit_2(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_report()))
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    run = subprocess.run([CL_SCALE, "bench", "--readme", str(readme), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "bench:start" in run.stderr
    run = subprocess.run([CL_SCALE, "bench", "--only", "nginx-plus"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--only" in run.stderr and len(run.stderr.strip().splitlines()) == 1
