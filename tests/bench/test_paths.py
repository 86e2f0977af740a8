"""``cl-scale bench --paths --quick``: the four worker paths measured in one run, JSON + PNG, nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cl_scale.bench import paths
from cl_scale.bench.brokers import RabbitNode, Tansu, Unavailable

pytestmark = pytest.mark.slow


def test_quick_paths_bench_writes_json_png_and_loses_nothing(tmp_path):
    try:
        Tansu.binary(), RabbitNode.binary()
    except Unavailable as exc:
        pytest.skip(str(exc))
    out = subprocess.run([str(Path(sys.executable).parent / "cl-scale"), "bench", "--paths", "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "paths.json").read_text())
    assert (tmp_path / "plots" / "paths.png").stat().st_size > 10_000
    for path in paths.PATHS:
        assert results["latency"][path]["lost"] == 0 and results["latency"][path]["n"] == 20
        s = results["sustained"][path]
        assert (s["messages"], s["received"], s["lost"]) == (300, 300, 0), (path, s)
    assert set(results["codec"]) == {"message", "token"}  # JSON vs protobuf outbox entries, measured
    for floor in paths.FLOORS:  # the brokers alone, measured in the same rounds
        assert results["latency"][floor]["n"] == 20, results["latency"][floor]
    for bridge in ("kafka", "amqp"):  # bursts travel in batches, not one round trip per message
        counts = results["sustained"][bridge]["bridge"]
        assert counts["batches"] < counts["forwarded"] / 2, counts
    assert paths.readme_section(results) in out.stdout
