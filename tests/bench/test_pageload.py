"""``cl-scale bench --page-load --quick``: the harness runs in Debian's Chromium and writes what the
README quotes (no timing is asserted: only that every load was measured and the figures are there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cl_scale.bench import pageload

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(pageload.CHROMIUM).exists(), reason="needs /usr/bin/chromium")]


def test_quick_page_load_bench_writes_json_png_and_the_readme_block(tmp_path):
    out = subprocess.run([str(Path(sys.executable).parent / "cl-scale"), "bench", "--page-load", "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "pageload.json").read_text())
    assert (tmp_path / "plots" / "pageload.png").stat().st_size > 10_000
    for side in pageload.SIDES:
        assert all(len(results["loads"][side][k]) == 3 for k in pageload.KINDS)
        assert len(results["cpu_per_load_ms"][side]) == 3
    # cl-scale served its bundle precompressed and cacheable; stock Chainlit compressed it on the fly
    assert results["bundle"]["cl-scale"]["encoding"] == "br" and "immutable" in results["bundle"]["cl-scale"]["cache_control"]
    assert results["bundle"]["stock"]["encoding"] == "gzip"
    assert pageload.readme_section(results) in out.stdout
