"""A bridge started before its broker: not ready, reconnects by itself, then reports lag and counts."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request

import pytest
import redis.asyncio as aioredis

from cl_scale.bench.brokers import Tansu, Unavailable
from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.processes import free_port, http_status
from cl_scale.wire.keyspace import Keyspace
from tests.bridge.brokers import KafkaFace
from tests.bridge.conftest import WORKER_ENV
from tests.worker.helpers import started, worker_texts

pytestmark = pytest.mark.slow


async def _until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.2)


async def test_bridge_waits_for_its_broker_then_reports_health(cluster, bridges, tmp_path):
    try:
        Tansu.binary()
    except Unavailable as exc:
        pytest.skip(str(exc))
    (a,) = cluster.start(1, env=WORKER_ENV).instances
    client = await started(ChainlitClient(a.url, reconnection=False))
    port = free_port()
    bridge = bridges(f"kafka://127.0.0.1:{port}/replies?group=g", cluster.redis.url, "--name", "b1").start(
        wait_ready=False)
    broker = None
    try:
        ready = f"http://127.0.0.1:{bridge.health}/readyz"
        await _until(lambda: http_status(f"http://127.0.0.1:{bridge.health}/healthz") == 200, 20)
        assert http_status(ready) == 503  # no broker yet
        await asyncio.sleep(1.5)
        assert bridge.proc.alive() and "cannot reach kafka://127.0.0.1" in bridge.proc.log()
        broker = Tansu(tmp_path, port=port).start()
        await broker.create_topic("replies", 3)
        face = KafkaFace(broker)
        face.topic = "replies"
        await _until(lambda: http_status(ready) == 200, 40)
        await face.publish([(json.dumps({"session_id": client.session_id, "text": "w-late"}).encode(),
                             client.session_id, {}, None), (b"nope", None, {}, None)])
        await client.wait_for(lambda: worker_texts(client) == ["w-late"], 30)
        metrics = ""
        for _ in range(50):  # bounded: the refusal is counted once its batch is settled
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{bridge.health}/metrics", timeout=5).read().decode()
            if 'clscale_bridge_refused_total{code="malformed"} 1.0' in metrics:
                break
            await asyncio.sleep(0.1)
        assert "clscale_bridge_forwarded_total 1.0" in metrics
        assert 'clscale_bridge_refused_total{code="malformed"} 1.0' in metrics
        assert "clscale_bridge_broker_connected 1.0" in metrics
        r = aioredis.Redis.from_url(cluster.redis.url)
        try:
            beat = None
            for _ in range(80):  # bounded: heartbeats every 5 s
                raw = await r.hget(Keyspace().workers, "b1")
                beat = json.loads(raw) if raw else None
                if beat and beat["forwarded"] == 1:
                    break
                await asyncio.sleep(0.1)
            assert (beat["kind"], beat["broker"]) == ("bridge", "kafka") and beat["connected"] and beat["refused"] == 1
            assert beat["lag"] == 0 and beat["last_seen"]
            bridge.stop()
            assert await r.hget(Keyspace().workers, "b1") is None  # a clean stop removes its heartbeat
        finally:
            await r.aclose()
    finally:
        await client.close()
        if broker:
            broker.stop()


def test_status_shows_bridges_and_stale_ones_are_unhealthy(redis_server, monkeypatch, tmp_path):
    import redis

    from cl_scale.cli.cluster_cmds import _rows
    from cl_scale.ops.local import describe, worker_heartbeats

    r = redis.Redis.from_url(redis_server.url)
    now = time.time()
    r.hset(Keyspace().workers, "kafka-a", json.dumps({"kind": "bridge", "broker": "kafka", "connected": True, "lag": 3,
                                                      "forwarded": 12, "refused": 1, "pid": 42, "at": now,
                                                      "interval": 5}))
    monkeypatch.setenv("CL_SCALE_REDIS_URL", redis_server.url)
    state = {"url": "http://127.0.0.1:1", "instances": [], "nginx": {"pid": 2**22 + 1, "port": 1},
             "redis": {"managed": False}}
    rows = _rows(describe(state, worker_heartbeats(tmp_path)))
    assert ["bridge kafka-a", "42", "-", "up, lag 3, 12 forwarded, 1 refused", ""] in rows
    r.hset(Keyspace().workers, "amqp-b", json.dumps({"kind": "bridge", "connected": True, "at": now - 300,
                                                     "interval": 5}))
    info = describe({**state, "nginx": {"pid": os.getpid(), "port": 1}}, worker_heartbeats(tmp_path))
    assert [w["id"] for w in info["workers"] if w["state"] == "stale"] == ["amqp-b"] and not info["healthy"]
    assert any(row[3].startswith("STALE") for row in _rows(info))
    r.close()
