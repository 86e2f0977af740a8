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
        assert sum(results["connect_ack_via"][side].values()) == 3 * len(pageload.KINDS)
    # cl-scale served its bundle precompressed and cacheable; stock Chainlit compressed it on the fly
    assert results["bundle"]["cl-scale"]["encoding"] == "br" and "immutable" in results["bundle"]["cl-scale"]["cache_control"]
    assert results["bundle"]["stock"]["encoding"] == "gzip"
    assert pageload.readme_section(results) in out.stdout


def test_a_connect_ack_in_a_polling_payload_is_found():
    """Chainlit's client starts on long-polling: the ack may come in a poll, among other packets."""
    assert pageload._acks_connect('40{"sid":"abc"}')
    assert pageload._acks_connect('42["task_start",{}]\x1e40{"sid":"abc"}')
    assert not pageload._acks_connect('0{"sid":"x","upgrades":["websocket"]}\x1e42["x"]\x1e2')


def test_page_ready_is_measured_when_the_connect_ack_comes_by_polling(tmp_path):
    """CI: a load whose ack came in a poll, before the websocket upgrade, was never seen as ready (only
    websocket frames were watched). Here the websocket is refused, so the ack can only come by polling."""
    from collections import Counter

    from playwright.sync_api import sync_playwright

    from cl_scale.bench import setups
    from cl_scale.ops.processes import RedisServer

    redis = RedisServer(tmp_path).start()
    cluster = None
    try:
        cluster = setups.start("stock", tmp_path, redis, nginx=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=pageload.CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                context = browser.new_context()
                context.route("**/*", pageload._loopback_only)
                context.route_web_socket("**/*", lambda ws: ws.close())
                via = Counter()
                assert 0 < pageload._ready_after(context.new_page(), setups.entry_url(cluster), via) < 60
                assert via == {"polling": 1}
            finally:
                browser.close()
    finally:
        if cluster is not None:
            cluster.stop()
        redis.stop()
