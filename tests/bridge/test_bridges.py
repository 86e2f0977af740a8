"""Kafka (tansu) and RabbitMQ bridges against real brokers, real instances and a real bridge process.

Every test runs once per broker (the ``broker`` fixture). Sessions live on 3 instances; messages are
published to the broker as a worker would, keyed by session id.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest
import redis.asyncio as aioredis

from cl_scale.bridge.core import signature_headers
from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.processes import CL_SCALE
from cl_scale.wire.keyspace import Keyspace
from tests.bridge.conftest import WORKER_ENV
from tests.worker.helpers import dlq, offline, shown, started, worker_texts

pytestmark = pytest.mark.slow
KEYS = Keyspace()


def message(payload: dict, key: str | None = None, headers: dict | None = None, ctype: str | None = None):
    return (json.dumps(payload).encode(), key, headers or {}, ctype)


def batch_for(clients, n: int, start: int = 0) -> list:
    """``n`` messages per session, interleaved across sessions, ids = session + index."""
    return [message({"session_id": c.session_id, "text": f"w{i:03d}", "id": f"{c.session_id}-{i}"}, c.session_id)
            for i in range(start, start + n) for c in clients]


async def wait_texts(clients, n: int, timeout: float = 40.0, strict: bool = True) -> None:
    count = (lambda c: len(worker_texts(c))) if strict else (lambda c: len(shown([c])))
    for c in clients:
        try:
            await c.wait_for(lambda c=c: count(c) >= n, timeout)
        except TimeoutError:
            raise AssertionError(f"session {c.session_id}: {count(c)}/{n} shown") from None


async def one_session_per_instance(cluster, n: int) -> list[ChainlitClient]:
    """Clients through nginx (ip_hash), from distinct loopback addresses, until each of the ``n``
    instances owns one session (the owner read from Redis); the other clients are closed."""
    r = aioredis.Redis.from_url(cluster.redis.url)
    chosen: dict[str, ChainlitClient] = {}
    try:
        for k in range(1, 40):  # bounded: 39 addresses spread over 3 instances by ip_hash
            c = await started(ChainlitClient(cluster.nginx.url, reconnection=False, source_address=f"127.0.{k}.1"))
            owner = (await r.hget(KEYS.session(c.session_id), "owner") or b"").decode()
            if owner and owner not in chosen:
                chosen[owner] = c
            else:
                await c.close()
            if len(chosen) == n:
                return list(chosen.values())
    finally:
        await r.aclose()
    for c in chosen.values():
        await c.close()
    raise AssertionError(f"ip_hash placed 39 clients on {len(chosen)} of {n} instances")


async def test_300_messages_reach_their_sessions_in_order_once(cluster, broker, bridges):
    cluster.start(3, env=WORKER_ENV, nginx=True)
    clients = await one_session_per_instance(cluster, 3)
    try:
        bridge = bridges(await broker.new_source(), cluster.redis.url).start()
        await broker.publish(batch_for(clients, 100))
        await wait_texts(clients, 100)
        await asyncio.sleep(0.5)  # anything extra would show now
        for c in clients:
            assert worker_texts(c) == [f"w{i:03d}" for i in range(100)]
        bridge.stop()
        assert await broker.pending() == 0  # everything acknowledged / committed
        assert await dlq(cluster.redis.url) == []
    finally:
        for c in clients:
            await c.close()


async def test_amqps_with_a_private_ca(cluster, rabbit, bridges, tmp_path):
    """amqps:// is passed through: a bridge verifying the node's certificate with ``ssl_cafile``
    forwards; one without that CA never gets ready (the certificate is not trusted) and says why
    without the password; a missing CA file is a usage error (exit 2)."""
    from cl_scale.ops.processes import http_status
    from tests.bridge.brokers import AmqpFace

    (a,) = cluster.start(1, env=WORKER_ENV).instances
    client = await started(ChainlitClient(a.url, reconnection=False))
    face = AmqpFace(rabbit)
    plain = await face.new_source()
    query = plain.split("?", 1)[1]
    secure = f"amqps://guest@localhost:{rabbit.tls_port}/?{query}"
    env = {"CL_SCALE_AMQP_PASSWORD": "guest"}
    try:
        untrusted = bridges(secure, cluster.redis.url, env=env).start(wait_ready=False)
        bridge = bridges(f"{secure}&ssl_cafile={rabbit.ca_file}", cluster.redis.url, env=env).start()
        await face.publish([message({"session_id": client.session_id, "text": "w-over-tls"}, client.session_id)])
        await wait_texts([client], 1)
        assert worker_texts(client) == ["w-over-tls"]
        ready = f"http://127.0.0.1:{untrusted.health}/readyz"
        for _ in range(100):  # bounded: until its health port answers (it may still be starting)
            if http_status(ready):
                break
            await asyncio.sleep(0.2)
        assert http_status(ready) == 503
        for _ in range(100):  # bounded: until its first failed attempt is logged
            if "cannot reach amqps://guest@localhost" in untrusted.proc.log():
                break
            await asyncio.sleep(0.2)
        log = untrusted.proc.log()
        assert "cannot reach amqps://guest@localhost" in log and "SSL" in log and "guest:guest" not in log
        bridge.stop()
        missing = subprocess.run([CL_SCALE, "bridge", f"{secure}&ssl_cafile={tmp_path}/nope.pem",
                                  "--redis-url", cluster.redis.url], capture_output=True, text=True, timeout=60,
                                 env={**os.environ, **WORKER_ENV, **env})
        assert missing.returncode == 2, missing.stderr
        (line,) = missing.stderr.strip().splitlines()
        assert line.startswith("error: bridge URL='amqps://guest@localhost")
        assert line.endswith(f"ssl_cafile '{tmp_path}/nope.pem': not a readable file")
    finally:
        await client.close()


async def test_bridge_sigkilled_and_restarted_mid_stream_still_once_in_order(cluster, broker, bridges):
    insts = cluster.start(2, env=WORKER_ENV).instances
    clients = [await started(ChainlitClient(i.url, reconnection=False)) for i in insts]
    try:
        bridge = bridges(await broker.new_source(), cluster.redis.url).start()
        await broker.publish(batch_for(clients, 300))
        await clients[0].wait_for(lambda: len(worker_texts(clients[0])) >= 30, 30)
        bridge.kill()  # SIGKILL mid-stream: some batches forwarded but not acknowledged
        before = [len(worker_texts(c)) for c in clients]
        bridge.start()
        await wait_texts(clients, 300, timeout=60)
        await asyncio.sleep(0.5)
        for c in clients:
            assert worker_texts(c) == [f"w{i:03d}" for i in range(300)], f"{before} shown before the kill"
    finally:
        for c in clients:
            await c.close()


async def test_owner_sigkilled_mid_stream_session_gets_every_message_once(cluster, broker, bridges):
    a, b = cluster.start(2, env=WORKER_ENV).instances
    first = await started(ChainlitClient(a.url, reconnection=False))
    bridges(await broker.new_source(), cluster.redis.url).start()
    await broker.publish(batch_for([first], 200))
    await first.wait_for(lambda: len(worker_texts(first)) >= 20, 30)
    a.kill()
    await first.close()
    second = ChainlitClient(b.url, session_id=first.session_id, reconnection=False)
    await second.connect()
    try:
        await second.wait_for(lambda: len(shown([first, second])) >= 200, 40)
        await asyncio.sleep(0.5)
        assert shown([first, second]) == [f"w{i:03d}" for i in range(200)]
    finally:
        await second.close()


async def test_user_message_out_and_worker_answer_back(cluster, broker, bridges):
    """Outbound: the app publishes each user message; a worker reads it from the broker and answers
    through the bridge into the same session (request/response round trip)."""
    requests = f"requests-{broker.kind}-{id(broker) % 10000}"
    env = {**WORKER_ENV, "CL_SCALE_OUTBOUND_URL": await broker.outbound_url(requests)}
    a, b = cluster.start(2, app="outbound_app.py", env=env).instances
    clients = [await started(ChainlitClient(a.url, reconnection=False)),
               await started(ChainlitClient(b.url, reconnection=False))]
    try:
        bridges(await broker.new_source(), cluster.redis.url).start()
        sent = {c.session_id: await c.send(f"question from {c.session_id[:6]}") for c in clients}
        got = await broker.read(requests, 2)
        by_session = {r["session_id"]: r for r in got}
        assert set(by_session) == set(sent)
        for sid, req in by_session.items():
            assert req["message_id"] == sent[sid] and req["text"] == f"question from {sid[:6]}"
            assert req["thread"] and req["user"] is None and req["author"]
        # the worker answers each request through the broker
        await broker.publish([message({"session_id": r["session_id"], "text": f"w-answer to {r['message_id']}"},
                                      r["session_id"]) for r in got])
        await wait_texts(clients, 1)
        for c in clients:
            assert worker_texts(c) == [f"w-answer to {sent[c.session_id]}"]
    finally:
        for c in clients:
            await c.close()


async def test_bad_messages_are_dead_lettered_acknowledged_and_the_bridge_keeps_going(cluster, broker, bridges):
    (a,) = cluster.start(1, env=WORKER_ENV).instances
    client = await started(ChainlitClient(a.url, reconnection=False))
    gone = await started(ChainlitClient(a.url, reconnection=False))
    await offline(cluster.redis.url, gone)  # the instance has written its last word on this session
    r = aioredis.Redis.from_url(cluster.redis.url)
    await r.delete(KEYS.session(gone.session_id))  # what Redis's TTL does to an expired session
    await r.aclose()
    sid = client.session_id
    ok = {"session_id": sid, "text": "w-ok"}
    signed = json.dumps({"session_id": sid, "text": "w-signed"}).encode()
    cases = bad_messages(sid, gone.session_id)
    try:
        bridge = bridges(await broker.new_source(), cluster.redis.url).start()
        good = [message(ok, sid), (signed, sid, signature_headers("k1", "secret-one", signed), None)]
        await broker.publish(list(cases.values()) + good)
        await client.wait_for(lambda: len(worker_texts(client)) >= 2, 30)
        letters = await _letters(cluster.redis.url, len(cases))
        codes = sorted(x["code"] for x in letters)
        assert codes == sorted(k.split(":")[0] for k in cases), [(x["code"], x["reason"]) for x in letters]
        assert all(x["reason"].startswith(f"{broker.kind}: ") for x in letters)
        assert worker_texts(client) == ["w-ok", "w-signed"]
        copies = await broker.dead_copies(len(cases))
        assert len(copies) == len(cases), f"{len(copies)} broker dead-letter copies"
        await asyncio.sleep(0.5)
        bridge.stop()
        pending = await broker.pending()
        assert pending == 0, f"{pending} left unacknowledged: {bridge.proc.log()[-2000:]}"  # never redelivered
        assert bridge.proc.popen.returncode == 0, bridge.proc.log()[-2000:]
    finally:
        await client.close()


async def test_require_signature_refuses_unsigned_and_applies_the_senders_scope(cluster, broker, bridges):
    (a,) = cluster.start(1, env=WORKER_ENV).instances
    client = await started(ChainlitClient(a.url, reconnection=False))
    sid = client.session_id
    unsigned = json.dumps({"session_id": sid, "text": "w-unsigned"}).encode()
    signed = json.dumps({"session_id": sid, "text": "w-signed"}).encode()
    try:
        bridges(await broker.new_source(), cluster.redis.url, "--require-signature").start()
        await broker.publish([(unsigned, sid, {}, None),
                              (unsigned, sid, {"cl-scale-kid": "k1"}, None),
                              (signed, sid, signature_headers("k2", "secret-two", signed), None),
                              (signed, sid, signature_headers("k1", "secret-one", signed), None)])
        await client.wait_for(lambda: len(worker_texts(client)) >= 1, 30)
        letters = await _letters(cluster.redis.url, 3)
        assert sorted(x["code"] for x in letters) == ["out_of_scope", "unsigned", "unsigned"]
        assert worker_texts(client) == ["w-signed"]
        # who sent each: nobody for the unsigned ones, the sender's key for the one out of its scope
        assert sorted((x["code"], x["kid"]) for x in letters) == [("out_of_scope", "k2"), ("unsigned", ""),
                                                                  ("unsigned", "")]
    finally:
        await client.close()


def bad_messages(sid: str, gone: str) -> dict:
    """Expected dead-letter code (before any ``:``) -> broker message, for a live session ``sid`` and an
    expired one ``gone``. (Counted in the README's bad-input block.)"""
    ok = {"session_id": sid, "text": "w-ok"}
    signed = json.dumps({"session_id": sid, "text": "w-signed"}).encode()
    alice_only = json.dumps({"session_id": sid, "text": "w-no"}).encode()
    return {
        "malformed:json": (b"{not json", sid, {}, None),
        "malformed:utf8": (b"\xff\xfe", sid, {}, None),
        "malformed:array": (b"[1, 2]", sid, {}, None),
        "malformed:no target": message({"text": "w-x"}),
        "malformed:two targets": message({"session_id": sid, "user": "bob", "text": "w-x"}),
        "malformed:no text": message({"session_id": sid}),
        "malformed:unknown field": message({**ok, "colour": "red"}),
        "malformed:bad session id": message({"session_id": "x\ny", "text": "w-x"}),
        "content_type": message(ok, ctype="application/xml"),
        "oversized": message({"session_id": sid, "text": "w" + "x" * 70_000}),
        "unknown_session:never": message({"session_id": "doesnotexist-123", "text": "w-x"}),
        "unknown_session:expired": message({"session_id": gone, "text": "w-x"}),
        "no_live_session": message({"user": "nobody", "text": "w-x"}),
        "out_of_scope": (alice_only, sid, signature_headers("k2", "secret-two", alice_only), None),
        "bad_signature": (signed, sid, {"cl-scale-kid": "k1", "cl-scale-sig": "0" * 64}, None),
        "unknown_key": (signed, sid, {"cl-scale-kid": "k9", "cl-scale-sig": "0" * 64}, None),
    }


async def _letters(redis_url: str, n: int, timeout: float = 20.0) -> list[dict]:
    for _ in range(int(timeout / 0.1)):  # bounded
        letters = await dlq(redis_url)
        if len(letters) >= n:
            return letters
        await asyncio.sleep(0.1)
    return await dlq(redis_url)


async def test_a_backlog_waits_on_the_broker_instead_of_filling_a_connected_sessions_outbox(cluster, broker, bridges):
    """A bridge reads a backlog faster than the owner renders it: with an outbox bound of 20, 400 messages
    for one connected session all arrive, in order, and none is dead-lettered as outbox_full."""
    (a,) = cluster.start(1, env=WORKER_ENV).instances
    client = await started(ChainlitClient(a.url, reconnection=False))
    try:
        source = await broker.new_source()
        await broker.publish(batch_for([client], 400))  # the backlog is there before the bridge starts
        bridge = bridges(source, cluster.redis.url, env={"CL_SCALE_WORKER_OUTBOX_MAX": "20"}).start()
        try:
            await wait_texts([client], 400, timeout=90)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; dead letters {len(await dlq(cluster.redis.url))}; bridge log: "
                                 f"{bridge.proc.log()[-1500:]}") from None
        assert worker_texts(client) == [f"w{i:03d}" for i in range(400)]
        assert await dlq(cluster.redis.url) == []
    finally:
        await client.close()


async def test_two_kafka_bridge_replicas_share_the_partitions_each_session_once_in_order(cluster, tansu, bridges):
    """Bridge replicas in one consumer group split the topic's partitions; sessions keyed to different
    partitions are forwarded by different replicas, each session's messages still once, in order."""
    from tests.bridge.brokers import KafkaFace

    broker = KafkaFace(tansu)
    insts = cluster.start(2, env=WORKER_ENV).instances
    clients = [await started(ChainlitClient(insts[i % 2].url, reconnection=False)) for i in range(4)]
    try:
        source = await broker.new_source()
        first = bridges(source, cluster.redis.url, "--name", "kafka-a").start()
        second = bridges(source, cluster.redis.url, "--name", "kafka-b").start()
        await asyncio.sleep(3)  # the group rebalances onto both members
        await broker.publish(batch_for(clients, 100))
        await wait_texts(clients, 100, timeout=60)
        await asyncio.sleep(0.5)
        for c in clients:
            assert worker_texts(c) == [f"w{i:03d}" for i in range(100)]
        import re
        import urllib.request

        counts = []
        for b in (first, second):
            text = urllib.request.urlopen(f"http://127.0.0.1:{b.health}/metrics", timeout=5).read().decode()
            counts.append(float(re.search(r"^clscale_bridge_forwarded_total (\S+)$", text, re.M).group(1)))
        assert sum(counts) == 400, counts  # nothing forwarded twice
        for b in (first, second):  # both replicas hold partitions (which sessions they carry: the key hash)
            assigned = re.findall(r"Setting newly assigned partitions (\{.*\}|set\(\))", b.proc.log())
            assert assigned and assigned[-1] != "set()", b.proc.log()[-2000:]
    finally:
        for c in clients:
            await c.close()
