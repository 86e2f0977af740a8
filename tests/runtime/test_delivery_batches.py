"""Delivery batching against a real redis-server and the real SDK, with a recording renderer in
place of Chainlit: order, one settle per batch, seen marks, duplicates and forgeries dead-lettered,
bounded retries, and an instance that is not the owner reads nothing."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from cl_scale.runtime.delivery import BATCH, Delivery
from cl_scale.runtime.session_store import SessionStore
from cl_scale.runtime.session_sync import SessionSync
from cl_scale.runtime.settings import RuntimeSettings
from cl_scale.wire import messages as m
from cl_scale.wire import scripts
from cl_scale.wire.keyspace import Keyspace
from cl_scale.worker import Publisher
from tests.runtime.test_session_sync import Session, State

KS = Keyspace()
SID = "delivery-session-1"


class Renderer:
    """Records what Delivery renders; ``fail`` holds message ids whose render raises."""

    def __init__(self, state: State):
        self.state, self.rendered, self.fail = state, [], set()

    def session(self, sid):
        return self.state.session(sid)

    def session_ids(self):
        return list(self.state.sessions)

    def connected(self, session):
        return True

    def identity(self, session):
        return None, session.thread_id

    def enter(self, session):
        pass

    def context_ids(self, sid):
        return {msg.id for msg in self.state.messages(sid)}

    def drop_from_context(self, sid, mid):
        pass

    async def render(self, session, body):
        if body.mid in self.fail:
            self.rendered.append((session.id, "failed", body.content))
            raise RuntimeError("render failed")
        self.rendered.append((session.id, body.kind, body.content))


@pytest.fixture
async def world(redis_server):
    r = aioredis.Redis.from_url(redis_server.url)
    settings = RuntimeSettings(redis_url=redis_server.url, instance_id="inst-a", session_timeout=60,
                               worker_keys="k1:secret-one", worker_max_attempts=2)
    state = State()
    state.sessions[SID] = Session(SID)
    store = SessionStore(r, KS, instance_id="inst-a", ttl=60)
    sync = SessionSync(store, state)
    await sync.save(state.sessions[SID])  # inst-a owns the session
    renderer = Renderer(state)
    delivery = Delivery(r, KS, renderer, sync, settings)
    pub = Publisher(redis_server.url, "k1", "secret-one", outbox_max=10_000)
    yield r, delivery, renderer, pub
    await pub.aclose()
    await r.aclose()


async def deliver(delivery: Delivery, sid: str = SID) -> None:
    delivery.kick(sid)
    for _ in range(500):
        if sid not in delivery._reading:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("delivery never finished")


async def evalsha_calls(r) -> int:
    """Successful EVALSHA calls (a first call of a script fails NOSCRIPT and is retried)."""
    stats = (await r.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))


async def test_a_backlog_is_rendered_in_order_with_one_settle_per_batch(world):
    r, delivery, renderer, pub = world
    n = 2 * BATCH + 50
    mids = []
    for k in range(0, n, 100):
        mids += await pub.send_many([{"session_id": SID, "text": f"w{i}"} for i in range(k, min(n, k + 100))])
    before = await evalsha_calls(r)
    await deliver(delivery)
    assert [c for _, _, c in renderer.rendered] == [f"w{i}" for i in range(n)]
    assert await evalsha_calls(r) - before == 3 + 3  # per batch: one SETTLE and one SESSION_SAVE
    assert await r.xlen(KS.outbox(SID)) == 0 and await r.zscore(KS.outbox_index, SID) is None
    pipe = r.pipeline(transaction=False)
    for mid in mids:
        pipe.exists(KS.seen(SID, mid))
    assert all(await pipe.execute())


async def test_replays_duplicates_and_forgeries_are_dead_lettered_never_rendered(world):
    r, delivery, renderer, pub = world
    body = m.Body(eid="e1", mid="e1", kind="message", session=SID, target=m.Target(session=SID), ts=time.time(),
                  content="once")
    raw = m.canonical(body)
    append = r.register_script(scripts.OUTBOX_APPEND)
    for entry_id, sig in (("e1", m.sign(b"secret-one", raw)), ("other-id", m.sign(b"secret-one", raw)),
                          ("e2", "0" * 64)):
        keys, args = scripts.outbox_append(KS, SID, entry_id, "k1", raw, sig, outbox_max=100, ttl=60)
        await append(keys=keys, args=args)
    await deliver(delivery)
    assert [c for _, _, c in renderer.rendered] == ["once"]
    letters = [f for _, f in await r.xrange(KS.dead_letters)]
    assert sorted(f[b"code"] for f in letters) == [b"bad_signature", b"duplicate"]


async def test_a_failing_render_is_retried_in_order_then_dead_lettered(world):
    r, delivery, renderer, pub = world
    bad = await pub.send(SID, "breaks")
    await pub.send(SID, "after")
    renderer.fail.add(bad)
    await deliver(delivery)  # retried with backoff; nothing after it goes first
    assert [(kind, c) for _, kind, c in renderer.rendered] == [("failed", "breaks"), ("failed", "breaks"),
                                                              ("message", "after")]
    (_, letter), = await r.xrange(KS.dead_letters)
    assert letter[b"code"] == b"delivery_failed"


async def test_an_instance_that_is_not_the_owner_reads_nothing(world):
    r, delivery, renderer, pub = world
    await r.hset(KS.session(SID), "owner", "inst-b")  # a peer took the session over
    await pub.send(SID, "for b")
    await deliver(delivery)
    assert renderer.rendered == []
    assert await r.xlen(KS.outbox(SID)) == 1  # stays for the owner
