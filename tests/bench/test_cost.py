"""``cl-scale bench --cost --quick``: CPU per chat message like for like, every side measured in one run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cl_scale.bench import cost

pytestmark = pytest.mark.slow


def test_quick_cost_bench_measures_every_side_and_writes_json_png(tmp_path):
    out = subprocess.run([str(Path(sys.executable).parent / "cl-scale"), "bench", "--cost", "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "cost.json").read_text())
    assert (tmp_path / "plots" / "cost.png").stat().st_size > 10_000
    p = results["params"]
    for mode, messages in (("one", p["rounds"] * p["echoes"]),
                           ("concurrent", p["rounds"] * p["concurrent"] * p["concurrent_echoes"])):
        for side in cost.SIDES:  # every echo answered (ask waits for it), on every side
            assert results[mode][side]["messages"] == messages
            assert results[mode][side]["cpu_ms_per_msg"] > 0, (mode, side)
    assert results["round_trip_cpu_ms"] > 0
    assert cost.readme_section(results) in out.stdout
