"""`cl-scale doctor` against real nginx + instances: passes on a good setup, fails clearly on bad ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cl_scale.ops.processes import http_status
from tests.conftest import DOCTOR_TOKEN

CL_SCALE = str(Path(sys.executable).with_name("cl-scale"))
pytestmark = pytest.mark.slow


def doctor(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CL_SCALE, "doctor", url, "--token", DOCTOR_TOKEN, *args], capture_output=True, text=True,
                          timeout=180)


def test_doctor_passes_on_a_good_cluster_with_the_real_ping_interval(cluster):
    cluster.start(3, nginx=True)
    result = doctor(cluster.nginx.url)  # timeouts check idles for Socket.IO's ping interval + 5 s
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(":")[0] for line in lines] == [
        "PASS stickiness", "PASS websocket upgrade", "PASS cross-instance delivery", "PASS session restore",
        "PASS timeouts"]


def _round_robin(files: dict) -> dict:
    conf = files["conf.d/chainlit.conf"]
    assert "    ip_hash;\n" in conf
    return {**files, "conf.d/chainlit.conf": conf.replace("    ip_hash;\n", "")}


def _short_timeouts(files: dict) -> dict:
    """What a hand-written config often has (values validation refuses it: must exceed 45 s)."""
    import re

    conf = re.sub(r"proxy_(read|send)_timeout [^;]+;", r"proxy_\1_timeout 4s;", files["conf.d/chainlit.conf"])
    return {**files, "conf.d/chainlit.conf": conf}


def test_doctor_fails_clearly_without_stickiness_and_with_short_timeouts(cluster, tmp_path):
    cluster.start(3)
    rr = cluster.start_nginx(edit=_round_robin, name="rr")
    short = cluster.start_nginx(edit=_short_timeouts, name="short")
    try:
        result = doctor(rr.url, "--idle-seconds", "1")
        assert result.returncode == 1
        first = result.stdout.splitlines()[0]
        assert first.startswith("FAIL stickiness:") and "not sticky" in first
        assert "Traceback" not in result.stdout + result.stderr

        result = doctor(short.url, "--idle-seconds", "8")  # nginx cuts idle sockets after 4 s
        lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
        assert result.returncode == 1
        assert "PASS stickiness" in lines and "FAIL timeouts" in lines
        assert "read/send timeouts" in lines["FAIL timeouts"]
    finally:
        rr.stop()
        short.stop()


def test_doctor_bad_url_is_one_line(tmp_path):
    result = doctor("ftp://nowhere")
    assert result.returncode == 2 and "ftp://nowhere" in result.stderr and "Traceback" not in result.stderr


async def test_probes_and_metrics_are_not_public(cluster):
    """Through the rendered nginx: /metrics is not served; the doctor probes answer only to the
    doctor token and show no thread id (a digest only)."""
    import json
    import urllib.request

    from cl_scale.ops.client import ChainlitClient

    cluster.start(2, nginx=True)
    url = cluster.nginx.url
    assert http_status(f"{url}/metrics") == 404
    assert http_status(f"{cluster.instances[0].url}/metrics") == 200  # where Prometheus scrapes
    client = ChainlitClient(url)
    await client.connect()
    try:
        probe = f"{url}/cl-scale/doctor/session?session_id={client.session_id}"
        assert http_status(probe) == 401
        request = urllib.request.Request(probe, headers={"Authorization": "Bearer wrong"})
        try:
            urllib.request.urlopen(request, timeout=5)
            raise AssertionError("a wrong doctor token was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        for _ in range(50):  # bounded: the session record is written just after the handshake
            request = urllib.request.Request(probe, headers={"Authorization": f"Bearer {DOCTOR_TOKEN}"})
            try:
                body = json.loads(urllib.request.urlopen(request, timeout=5).read())
                break
            except urllib.error.HTTPError:
                import time

                time.sleep(0.1)
        assert body["owner"] and "thread_id" not in body and len(body["thread"]) == 16
    finally:
        await client.close()
