"""Redis failover with Sentinel, real processes: a primary, a replica and three ``redis-sentinel`` s on
loopback ports; instances and a worker use the ``redis+sentinel://`` URL. The primary is SIGKILLed
mid-chat with worker traffic flowing: instances follow the promoted replica, readiness recovers, chat
and worker delivery resume. What Redis accepted before the failover is delivered, or — with
``Publisher(replicas=1)`` — the publisher is told it was not replicated."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.processes import SentinelGroup, http_status
from cl_scale.worker import Publisher
from cl_scale.worker.publisher import NotReplicated
from tests.runtime.test_failover import fields, starts
from tests.worker.helpers import shown, worker_texts

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-sentinel") is None, reason="apt-get install redis-sentinel")]
ENV = {"CL_SCALE_WORKER_KEYS": "k1:secret-one"}


@pytest.fixture
def sentinels(tmp_path):
    group = SentinelGroup(tmp_path / "redis").start()
    yield group
    group.stop()


async def _publish(pub: Publisher, sessions: list[str], stop: asyncio.Event, log: dict) -> None:
    """A worker sending into every session every 20 ms; what it was told per message id."""
    n = 0
    while not stop.is_set():
        n += 1
        for sid in sessions:
            mid = f"w{n:04d}-{sid[:8]}"
            try:
                await pub.send(sid, f"w{n:04d}", message_id=mid)
                log[mid] = "accepted"
            except NotReplicated:
                log[mid] = "not replicated"
            except Exception as exc:  # noqa: BLE001 - refused: recorded, the worker goes on
                log[mid] = f"refused: {exc.__class__.__name__}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("replicas", [0, 1], ids=["default", "wait-for-replica"])
async def test_primary_killed_mid_chat_with_workers_flowing(cluster, sentinels, replicas):
    cluster._redis_url, cluster.redis = sentinels.url, None
    a, b = cluster.start(2, env=ENV).instances
    clients = [ChainlitClient(inst.url) for inst in (a, a, b, b)]
    await asyncio.gather(*(c.connect(timeout=20) for c in clients))
    await asyncio.gather(*(c.wait_for(lambda c=c: starts(c), 20) for c in clients))
    pub = Publisher(sentinels.url, "k1", "secret-one", replicas=replicas, replica_timeout_ms=200)
    told: dict[str, str] = {}
    stop = asyncio.Event()
    worker = asyncio.create_task(_publish(pub, [c.session_id for c in clients], stop, told))
    try:
        for c in clients:
            await c.ask("before", contains="echo=before")
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        sentinels.kill_primary()
        promoted = ready = None
        for _ in range(300):  # bounded: 60 s
            if promoted is None and sentinels.primary_port() == sentinels.replica.port:
                promoted = time.monotonic() - killed
            if promoted is not None and all(http_status(i.url + "/readyz") == 200 for i in (a, b)):
                ready = time.monotonic() - killed
                break
            await asyncio.sleep(0.2)
        assert promoted is not None and ready is not None, (promoted, ready)
        restarted = time.monotonic()  # it rejoins as the new primary's replica: writes can be replicated again
        await asyncio.to_thread(sentinels.restart_old_primary)  # (in a thread: the clients keep answering pings)
        rejoined = time.monotonic() - restarted
        for c in clients:  # chat goes on, on the same sessions
            reply = fields(await c.ask("after", contains="echo=after", timeout=30))
            assert reply["count"] == "2" and len(starts(c)) == 1
        await asyncio.sleep(1.0)
        stop.set()
        await worker
        await pub.flush(30)
        accepted = {mid for mid, what in told.items() if what == "accepted"}
        for c in clients:  # everything accepted reaches its session: delivered after the failover
            want = sorted(mid.split("-")[0] for mid in accepted if mid.endswith(c.session_id[:8]))
            try:
                await c.wait_for(lambda c=c, want=want: set(want) <= set(worker_texts(c)), 30)
            except TimeoutError:
                missing = set(want) - set(worker_texts(c))
                raise AssertionError(f"{len(missing)} accepted messages never delivered: {sorted(missing)[:10]}") \
                    from None
            assert len(shown([c])) == len(set(shown([c])))  # once each (the UI upserts a message by id)
        others = {what for what in told.values() if what != "accepted"}
        print(f"replicas={replicas}: promoted after {promoted:.2f} s, all instances ready after {ready:.2f} s, old primary a replica {rejoined:.1f} s after its restart; "
              f"{len(accepted)} worker messages accepted and delivered; told otherwise: "
              f"{ {w: sum(1 for v in told.values() if v == w) for w in others} }")
    finally:
        stop.set()
        await asyncio.gather(worker, return_exceptions=True)
        await pub.aclose()
        for c in clients:
            await c.close()


async def test_primary_killed_with_no_replica_is_not_ready_then_recovers(cluster, tmp_path):
    """No replica to promote: instances say not-ready (with the reason) while the primary is gone, and
    serve again, same sessions, once it is back."""
    group = SentinelGroup(tmp_path / "solo", replica=False).start()
    try:
        cluster._redis_url, cluster.redis = group.url, None
        a, b = cluster.start(2).instances
        client = ChainlitClient(a.url)
        await client.connect()
        await client.wait_for(lambda: starts(client), 20)
        await client.ask("before", contains="echo=before")
        group.kill_primary()
        for _ in range(150):  # bounded: until both report not-ready
            if all(http_status(i.url + "/readyz") == 503 for i in (a, b)):
                break
            await asyncio.sleep(0.2)
        assert all(http_status(i.url + "/readyz") == 503 for i in (a, b))
        import json
        import urllib.request

        try:
            urllib.request.urlopen(a.url + "/readyz", timeout=3)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())  # the reason, not just a 503: Redis, or the listener proven through it
            assert body["ready"] is False and not (body["redis"] and body["listener"]), body
        group.restart_old_primary()
        for _ in range(150):  # bounded: until both are ready again
            if all(http_status(i.url + "/readyz") == 200 for i in (a, b)):
                break
            await asyncio.sleep(0.2)
        assert all(http_status(i.url + "/readyz") == 200 for i in (a, b))
        reply = fields(await client.ask("after", contains="echo=after", timeout=30))
        assert reply["count"] == "2" and len(starts(client)) == 1
        await client.close()
    finally:
        group.stop()
