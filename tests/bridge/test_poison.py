"""A message that makes the bridge itself fail (a bug, not a refusal) is isolated and dead-lettered as
``bridge_error``, and the batch is acknowledged: it is never redelivered forever and the messages
around it still go through. Real Redis; the source is a list (the broker loop is what is under test,
the brokers themselves are exercised in ``test_bridges``)."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis

from cl_scale.bridge.core import Bridge, Incoming
from cl_scale.bridge.runner import Runner
from cl_scale.bridge.settings import BrokerSettings
from cl_scale.wire import messages as m
from cl_scale.wire.keyspace import Keyspace
from cl_scale.worker.publisher import Publisher

KEYS = Keyspace()


class ListSource:
    """Hands out the given batches once each; records what was acknowledged."""

    kind = "amqp"

    def __init__(self, batches: list[list[Incoming]], runner_stop: asyncio.Event):
        self.batches, self.acked, self.stop, self.delivered = list(batches), [], runner_stop, 0

    async def connect(self) -> None:
        pass

    async def batch(self, max_items: int, max_seconds: float) -> list[Incoming]:
        if self.delivered >= 20:  # bounded: a batch redelivered forever would stop here
            self.stop.set()
            return []
        if not self.batches:
            self.stop.set()
            return []
        self.delivered += 1
        return self.batches[0]

    async def ack(self, batch: list[Incoming]) -> None:
        self.acked.append([i.payload for i in batch])
        self.batches.pop(0)

    async def copy_refused(self, refused) -> None:
        pass

    async def lag(self):
        return 0

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        pass


class BuggyBridge(Bridge):
    """A bridge with a bug that only one message triggers."""

    def _parse(self, item: Incoming):
        if b"boom" in item.payload:
            raise KeyError("a bug")
        return super()._parse(item)


async def test_a_message_that_breaks_the_bridge_is_dead_lettered_and_acknowledged(redis_server):
    r = aioredis.Redis.from_url(redis_server.url)
    sid = "sess-poison-1"
    await r.hset(KEYS.session(sid), mapping={"owner": "inst-x", "connected": "0", "user": "", "thread": "t1",
                                             "data": "{}"})
    key = m.WorkerKey(kid="k1", secret=b"secret-one")
    pub = Publisher(redis_server.url, key.kid, key.secret)
    bridge = BuggyBridge(pub, key, known_keys={}, kind="amqp")
    runner = Runner(bridge, BrokerSettings.parse("amqp://h/v?queue=q"))
    items = [Incoming(payload=json.dumps({"session_id": sid, "text": t, "id": f"id-{t}"}).encode())
             for t in ("before", "boom", "after")]
    runner.source = ListSource([items], runner.stopping)
    try:
        await asyncio.wait_for(runner.run(), 60)
        assert runner.source.acked == [[i.payload for i in items]], f"delivered {runner.source.delivered} times"
        letters = await r.xrange(KEYS.dead_letters)
        assert [(f[b"code"], json.loads(f[b"body"])["text"]) for _, f in letters] == [(b"bridge_error", "boom")]
        assert b"KeyError" in letters[0][1][b"reason"]
        texts = [json.loads(f[b"body"])["content"] for _, f in await r.xrange(KEYS.outbox(sid))]
        assert texts == ["before", "after"]
    finally:
        await pub.aclose()
        await r.aclose()
