"""Encryption to Redis, exercised: a real ``redis-server`` listening for TLS only (a private CA made by
the test), used through ``rediss://`` by the instances, the SDK and the gateway: chat, failover and
worker delivery work; a wrong CA is a clear start-up error, not a hang."""

from __future__ import annotations

import os
import subprocess

import pytest

from cl_scale.ops.certs import NoOpenSSL, make_certificates
from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.cluster import ProcessCluster
from cl_scale.ops.processes import CL_SCALE, RedisServer, free_port
from cl_scale.worker import Publisher
from tests.worker.helpers import started, worker_texts

pytestmark = pytest.mark.slow
WORKER_ENV = {"CL_SCALE_WORKER_KEYS": "k1:secret-one", "CL_SCALE_GATEWAY_TOKENS": "t1:token-one-0123456789"}


@pytest.fixture
def tls_redis(tmp_path):
    try:
        certs = make_certificates(tmp_path / "certs", clients=())
    except NoOpenSSL as exc:
        pytest.skip(str(exc))
    server = RedisServer(tmp_path, tls=certs).start()
    yield server
    server.stop()


async def test_chat_failover_and_worker_delivery_over_rediss(app_dir, tmp_path, tls_redis):
    assert tls_redis.url.startswith("rediss://")
    cluster = ProcessCluster(app_dir, tmp_path / "run", redis_url=tls_redis.url, env=WORKER_ENV)
    try:
        a, b = cluster.start(2).instances
        client = await started(ChainlitClient(a.url, reconnection=False))
        reply = await client.ask("one", contains="echo=one")
        assert "count=1" in reply["output"]
        async with Publisher(tls_redis.url, "k1", "secret-one") as pub:  # the SDK over TLS
            await pub.send(client.session_id, "w-over-tls")
        await client.wait_for(lambda: worker_texts(client) == ["w-over-tls"], 15)
        import aiohttp

        async with aiohttp.ClientSession() as http:  # the instance's HTTP gateway over TLS Redis
            async with http.post(f"{a.url}/cl-scale/v1/sessions/{client.session_id}/messages",
                                 json={"text": "w-gateway"},
                                 headers={"authorization": "Bearer token-one-0123456789"}) as resp:
                assert resp.status == 202, await resp.text()
        await client.wait_for(lambda: worker_texts(client) == ["w-over-tls", "w-gateway"], 15)
        a.kill()  # failover: the session restores on b from the TLS Redis
        await client.close()
        moved = ChainlitClient(b.url, session_id=client.session_id, thread_id=client.thread_id, reconnection=False)
        await moved.connect()
        try:
            reply = await moved.ask("two", contains="echo=two")
            assert "count=2" in reply["output"], reply["output"]
        finally:
            await moved.close()
    finally:
        cluster.stop()


def test_a_wrong_ca_is_a_clear_start_up_error(app_dir, tmp_path, tls_redis):
    other = make_certificates(tmp_path / "other-ca", clients=())
    url = tls_redis.url.split("?")[0] + f"?ssl_ca_certs={other / 'ca.pem'}"
    for cmd in ([CL_SCALE, "send", "--session", "some-session-0001", "hi"], [CL_SCALE, "workers"],
                [CL_SCALE, "gateway", "--port", str(free_port())], [CL_SCALE, "bridge", "amqp://h/v?queue=q"]):
        out = subprocess.run(cmd + ["--redis-url", url], capture_output=True, text=True, timeout=60,
                             env={**os.environ, **WORKER_ENV}, cwd=app_dir)
        assert out.returncode == 2, (cmd, out.stdout, out.stderr)
        (line,) = out.stderr.strip().splitlines()
        assert "rediss://127.0.0.1" in line and "certificate" in line.lower(), line
    run = subprocess.run([CL_SCALE, "run", "app.py", "--port", str(free_port()), "--redis-url", url], capture_output=True,
                         text=True, timeout=90, env={**os.environ, **WORKER_ENV}, cwd=app_dir)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "certificate" in run.stderr.lower() and "Traceback" not in run.stderr, run.stderr[-2000:]
