"""Session store and save coalescing against a real redis-server, with a stand-in for Chainlit's
session state (plain objects): ownership, TTL, incremental context, "Redis failed" is not "no
session", coalesced writes, handler delay, commit-before-reply, batch scope, release."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from cl_scale.runtime.session_store import NotOwner, SessionStore, StoreUnavailable
from cl_scale.runtime.session_sync import IN_HANDLER_SAVE_DELAY, SessionSync
from cl_scale.wire.keyspace import Keyspace
from cl_scale.wire.records import SessionRecord

KS = Keyspace()


@dataclass
class Message:
    id: str
    text: str = ""

    def to_dict(self) -> dict:
        return {"id": self.id, "output": self.text}


@dataclass
class Session:
    id: str
    socket_id: str = "sock-1"
    thread_id: str = "t1"


@dataclass
class State:
    """What SessionSync reads of Chainlit, as plain data."""

    sessions: dict = field(default_factory=dict)
    contexts: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    lost: list = field(default_factory=list)

    def session(self, sid):
        return self.sessions.get(sid)

    def messages(self, sid):
        return self.contexts.setdefault(sid, [])

    def snapshot(self, session):
        return {"id": session.id, "thread_id": session.thread_id, "user_session": dict(self.values.get(session.id, {}))}

    def connected(self, session):
        return True

    def identity(self, session):
        return None, session.thread_id


class CountingStore(SessionStore):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.writes = 0

    async def save(self, *a, **kw):
        self.writes += 1
        return await super().save(*a, **kw)


@pytest.fixture
async def r(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def make(r, owner="inst-a", ttl=60):
    state = State()
    store = CountingStore(r, KS, instance_id=owner, ttl=ttl)
    sync = SessionSync(store, state, on_lost=state.lost.append)
    return state, store, sync


async def _settled(sync):
    for _ in range(200):
        if not sync._pending and not sync._flushing and not sync._tasks:
            return
        await asyncio.sleep(0.01)


async def test_a_burst_of_changes_is_coalesced_into_few_writes_with_everything_in_them(r):
    state, store, sync = make(r)
    session = state.sessions["s1"] = Session("s1")
    for i in range(100):
        state.messages("s1").append(Message(f"m{i}", f"text {i}"))
        sync.changed("s1", "add", f"m{i}")
    await _settled(sync)
    assert 1 <= store.writes <= 2, store.writes
    record = await store.load("s1")
    assert [m["id"] for m in record.chat_context] == [f"m{i}" for i in range(100)]
    assert record.owner == "inst-a" and record.thread == "t1" and 0 < await r.ttl(KS.session("s1")) <= 60
    await sync.save(session)
    state.messages("s1").append(Message("m100"))
    sync.changed("s1", "add", "m100")
    await _settled(sync)
    assert await r.hlen(KS.context("s1")) == 101  # incremental: one entry more, the rest untouched


async def test_changes_inside_a_handler_wait_and_the_handler_end_writes_them(r):
    state, store, sync = make(r)
    state.sessions["s1"] = Session("s1")
    with sync.handler("s1"):
        state.values["s1"] = {"counter": 1}
        sync.changed("s1", "set")
        await asyncio.sleep(IN_HANDLER_SAVE_DELAY / 5)
        assert store.writes == 0, "a change inside a handler was written at once"
        assert sync.busy() == {"s1"}
    await _settled(sync)
    assert store.writes == 1 and (await store.load("s1")).snapshot["user_session"] == {"counter": 1}


async def test_commit_puts_the_pending_write_on_the_wire_before_the_reply(r):
    state, store, sync = make(r)
    session = state.sessions["s1"] = Session("s1")
    with sync.handler("s1"):
        state.values["s1"] = {"answer": 42}
        sync.changed("s1", "set")
        await sync.commit(session)  # what the reply hook does before the reply leaves
        for _ in range(100):
            if store.writes:
                break
            await asyncio.sleep(0.005)
        assert store.writes == 1
    await _settled(sync)
    assert (await store.load("s1")).snapshot["user_session"] == {"answer": 42}


async def test_a_batch_scope_writes_nothing_until_its_owner_saves(r):
    state, store, sync = make(r)
    session = state.sessions["s1"] = Session("s1")
    with sync.batch("s1"):
        for i in range(20):
            state.messages("s1").append(Message(f"w{i}"))
            sync.changed("s1", "add", f"w{i}")
        await asyncio.sleep(0.05)
        assert store.writes == 0
        await sync.commit(session)  # a reply inside the batch does not write either
        assert store.writes == 0
        await sync.save(session)
    assert store.writes == 1 and await r.hlen(KS.context("s1")) == 20


async def test_a_peer_claim_makes_the_local_copy_lost_and_release_forgets_everything(r):
    state, store, sync = make(r)
    session = state.sessions["s1"] = Session("s1")
    await sync.save(session)
    peer_state, peer_store, peer = make(r, owner="inst-b")
    peer_state.sessions["s1"] = Session("s1", socket_id="sock-2")
    loaded = await peer_store.load("s1")
    stale = SessionRecord(owner="inst-a", version=loaded.version - 1)
    assert await peer.save(peer_state.sessions["s1"], claim=True, expected=stale) == "lost"  # stale view
    assert await peer.save(peer_state.sessions["s1"], claim=True, expected=loaded) == "saved"
    state.values["s1"] = {"stale": True}
    sync.changed("s1", "set")
    await _settled(sync)
    assert state.lost == [session]
    assert (await store.load("s1")).owner == "inst-b"
    with pytest.raises(NotOwner):
        await store.save("s1", SessionRecord(owner="inst-a", snapshot={}))
    sync.release("s1")
    assert all(v == 0 for v in sync.tracked().values()), sync.tracked()


async def test_a_stalled_redis_is_store_unavailable_never_no_session(r):
    state, store, sync = make(r)
    store.timeout = 0.3
    await sync.save(state.sessions.setdefault("s1", Session("s1")))
    await r.execute_command("CLIENT", "PAUSE", 800, "ALL")
    with pytest.raises(StoreUnavailable):
        await store.load("s1")
    await asyncio.sleep(0.9)
    assert (await store.load("s1")).owner == "inst-a"
    assert await store.load("never-existed") is None


async def test_a_late_write_of_a_disconnected_session_never_brings_its_deleted_record_back(r):
    """A session removed from Redis (expired, or cleared) while its last scheduled write was still to
    come: that write, of a socket that is gone, must not recreate the record — workers would then
    queue messages for a session that no longer exists instead of refusing them as unknown. (A live
    socket's write does recreate it: Redis lost data, the owner still holds the session.)"""
    state, store, sync = make(r)
    session = state.sessions["s1"] = Session("s1")
    assert await sync.save(session, connected=True) == "saved"
    state.connected = lambda _session: False  # the client left
    assert await sync.save(session) == "saved"
    assert await r.hget(KS.session("s1"), "connected") == b"0"
    await r.delete(KS.session("s1"), KS.context("s1"))  # expired / cleared
    state.messages("s1").append(Message("m1"))
    sync.changed("s1", "add", "m1")  # a change still being written after the disconnect
    await sync.save(session, connected=False)
    await _settled(sync)
    assert not await r.exists(KS.session("s1")) and not await r.exists(KS.context("s1"))
    assert await sync.save(session, connected=True) == "saved"  # the socket is live here: written
    assert await r.hget(KS.session("s1"), "connected") == b"1"
