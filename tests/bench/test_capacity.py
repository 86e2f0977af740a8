"""The capacity scenario at CI scale: 200 websocket clients over 3 ``cl-scale run`` instances through the
rendered nginx, held across the idle period, then a burst of chat from some of them. Correctness only:
every client held, none failed, nothing in nginx's error log; the figures exist (the full 5,000-client
run is ``cl-scale bench``, whose numbers the README quotes)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.bench.test_bench import CL_SCALE, _positive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_200_clients_held_through_nginx_over_3_instances(tmp_path):
    out = tmp_path / "bench"
    run = subprocess.run([CL_SCALE, "bench", "--quick", "--only", "cl-scale", "--clients", "200", "--out", str(out)],
                         capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    s = json.loads((out / "results.json").read_text())["setups"]["cl-scale"]
    assert s["instances"] == 3
    assert (s["clients_attempted"], s["clients_held"], s["client_failures"]) == (200, 200, 0), s["client_errors"]
    assert s["nginx_errors"] == {}
    assert s["cpu_message_errors"] == 0 and 0 <= s["cpu_ms_per_msg"] <= s["cpu_ms_per_msg_gross"]
    assert s["idle_cpu_pct"] >= 0 and _positive(s["mem_per_conn_kb"])
