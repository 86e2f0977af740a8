"""Nothing grows without bound: after 1,000 sessions come and go (some abandoned mid-stream, one
instance SIGKILLed), the instance's bookkeeping is back to baseline and every cl-scale key in Redis
expires by itself, except the documented few."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest
import redis.asyncio as aioredis

from cl_scale.ops.client import ChainlitClient
from cl_scale.wire.keyspace import Keyspace
from cl_scale.worker import Publisher

pytestmark = pytest.mark.slow
SESSIONS = 1000
BATCH = 50
#: Keys that live as long as the deployment (documented in docs/keyspace.md).
PERMANENT = Keyspace().permanent()


def tracked(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'^clscale_tracked_entries\{map="([^"]+)"\} (\S+)$',
                                                                text, re.M)}


async def one_session(url: str, i: int, pub: Publisher) -> None:
    client = ChainlitClient(url, reconnection=False)
    try:
        await client.connect(timeout=30)
        await client.wait_for(lambda: any("started on" in str(m.get("output")) for m in client.messages()), 30)
        if i % 3 == 0:
            await client.ask(f"hi {i}", contains="count=", timeout=30)
        if i % 5 == 0:  # a worker starts a streamed reply and never ends it
            stream = pub.stream(client.session_id, author="Abandoned")
            await stream.token("half a ")
            await client.wait_for(lambda: client.counts.get("stream_start") or client.counts.get("stream_token"), 30)
    finally:
        await client.close()


async def test_a_thousand_sessions_come_and_go_and_leave_nothing_behind(cluster):
    env = {"CL_SCALE_SESSION_TIMEOUT": "3", "CL_SCALE_WORKER_KEYS": "k1:secret-one"}
    a, b = cluster.start(2, env=env).instances
    baseline = tracked(a.url)
    assert baseline and all(v == 0 for v in baseline.values()), baseline
    async with Publisher(cluster.redis.url, key_id="k1", key="secret-one") as pub:
        for start in range(0, SESSIONS, BATCH):
            if start == SESSIONS // 2:  # SIGKILL b while 20 sessions are connected to it: their
                held = [ChainlitClient(b.url, reconnection=False) for _ in range(20)]  # rooms, records and
                await asyncio.gather(*(c.connect(timeout=30) for c in held))  # b's registration stay behind
                b.kill()
                await asyncio.gather(*(c.close() for c in held), return_exceptions=True)
            live = [t for t in (a, b) if t.proc.alive()]
            await asyncio.gather(*(one_session(live[i % len(live)].url, i, pub) for i in range(start, start + BATCH)))

    for _ in range(150):  # bounded: Chainlit clears a disconnected session after its timeout (3 s)
        now = tracked(a.url)
        if now == baseline:
            break
        await asyncio.sleep(0.2)
    assert now == baseline, {k: v for k, v in now.items() if v != baseline.get(k)}

    r = aioredis.Redis.from_url(cluster.redis.url)
    try:
        forever = []
        async for key in r.scan_iter(match=f"{Keyspace().prefix}:*", count=1000):
            if key.decode() not in PERMANENT and await r.ttl(key) == -1:
                forever.append(key.decode())
        assert forever == [], f"{len(forever)} keys never expire, e.g. {forever[:5]}"
    finally:
        await r.aclose()
