"""The Lua scripts of the wire contract, run against a real redis-server (no Chainlit, no instance)."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from cl_scale.wire import scripts
from cl_scale.wire.keyspace import GROUP, Keyspace
from cl_scale.wire.records import SessionRecord, context_entry

KS = Keyspace()
SID = "sess-0000-0001"


@pytest.fixture
async def r(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def _append(r, body: bytes, *, eid: str = "e1", outbox_max: int = 10):
    keys, args = scripts.outbox_append(KS, SID, eid, "k1", body, "sig", outbox_max=outbox_max, ttl=100)
    return await r.register_script(scripts.OUTBOX_APPEND)(keys=keys, args=args)


async def test_outbox_append_queues_indexes_and_wakes_the_owner_with_the_entry(r):
    await r.hset(KS.session(SID), mapping={"owner": "inst-a"})
    pubsub = r.pubsub()
    await pubsub.subscribe(KS.wake_channel("inst-a"))
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    assert await _append(r, b'{"x":1}') == 1
    wake = await pubsub.get_message(timeout=2)
    sid, entry_id, kid, sig, body = wake["data"].split(b"\n", 4)
    assert (sid.decode(), kid, sig, body) == (SID, b"k1", b"sig", b'{"x":1}')  # the fast path: the entry itself
    assert await _append(r, b'{"x":2}', eid="e2") == 1
    assert (await pubsub.get_message(timeout=2))["data"] == SID.encode()  # one ahead: the session id only
    assert await _append(r, b'{"x":3}', eid="e3") == 1
    assert await pubsub.get_message(timeout=0.3) is None  # more ahead: a reader is already busy
    await pubsub.aclose()
    assert await r.xlen(KS.outbox(SID)) == 3 and 0 < await r.ttl(KS.outbox(SID)) <= 260
    assert await r.zscore(KS.outbox_index, SID) is not None
    groups = await r.xinfo_groups(KS.outbox(SID))
    assert groups[0]["name"].decode() == GROUP


async def test_outbox_append_refuses_seen_ids_and_dead_letters_over_the_bound(r):
    await r.set(KS.seen(SID, "done"), 1)
    assert await _append(r, b"{}", eid="done") == 2
    assert await r.exists(KS.outbox(SID)) == 0
    for i in range(2):
        assert await _append(r, b"{}", eid=f"e{i}", outbox_max=2) == 1
    assert await _append(r, b'{"late":1}', eid="e9", outbox_max=2) == 0
    (_, letter), = await r.xrange(KS.dead_letters)
    assert letter[b"code"] == b"outbox_full" and letter[b"body"] == b'{"late":1}' and letter[b"session"] == SID.encode()


async def test_settle_acks_marks_dead_letters_and_unindexes(r):
    await _append(r, b"a", eid="a")
    await _append(r, b"b", eid="b")
    read = await r.xreadgroup(GROUP, "owner", {KS.outbox(SID): ">"})
    (ida, fa), (idb, fb) = read[0][1]
    keys, args = scripts.settle(KS, SID, [ida, idb], [KS.seen(SID, "a")], [(fb, "malformed", "malformed: x")],
                                dedupe_ttl=50)
    await r.register_script(scripts.SETTLE)(keys=keys, args=args)
    assert await r.xlen(KS.outbox(SID)) == 0 and await r.zscore(KS.outbox_index, SID) is None
    assert await r.exists(KS.seen(SID, "a")) and 0 < await r.ttl(KS.seen(SID, "a")) <= 50
    (_, letter), = await r.xrange(KS.dead_letters)
    assert letter[b"code"] == b"malformed" and letter[b"body"] == b"b"
    assert (await r.xpending(KS.outbox(SID), GROUP))["pending"] == 0


def _record(owner: str, text: str = "v", run: str = "") -> SessionRecord:
    return SessionRecord(owner=owner, run=run, socket="s1", connected=True, user="alice", thread="t1",
                         snapshot={"id": SID, "thread_id": "t1", "user_session": {"k": text}})


async def _save(r, record, *, claim=False, upserts=None, removed=(), reset=False, expected=None, bump=True):
    keys, args = scripts.session_save(KS, SID, record, ttl=60, claim=claim, reset_context=reset,
                                      upserts=upserts or {}, removed=removed, expected=expected, bump=bump)
    return await r.register_script(scripts.SESSION_SAVE)(keys=keys, args=args)


async def _load(r):
    return SessionRecord.from_redis(await r.hgetall(KS.session(SID)), await r.hgetall(KS.context(SID)))


async def test_a_claim_wins_only_on_the_state_it_loaded(r):
    """Seen in the rolling-restart test (a counter back to 1): ``inst3`` restarted under its old name
    claimed its sessions back, while a handshake on ``inst2`` that had loaded a record of the *old*
    ``inst3`` claimed it too — owners were compared by name, so both won, and the first write threw
    the other's in-flight state away. And a restore that loaded the record before the owner's last
    write overwrote that write. A claim is now a compare-and-set on the version it loaded."""
    assert await _save(r, _record("inst3", "old", run="r-old"), reset=True) == 1
    loaded = await _load(r)
    assert await _save(r, _record("inst3", "new", run="r-new"), claim=True, expected=loaded) == 1
    # the stale handshake on inst2 loaded the old inst3's record before the new inst3 claimed
    assert await _save(r, _record("inst2", "stale", run="r2"), claim=True, expected=loaded) == 0
    assert await _save(r, _record("inst3", "dead", run="r-old")) == 0  # nor may the old process write
    before_write = await _load(r)
    assert await _save(r, _record("inst3", "next", run="r-new")) == 1  # the owner writes on
    assert await _save(r, _record("inst2", "older", run="r2"), claim=True, expected=before_write) == 0
    stored = await _load(r)
    assert (stored.owner, stored.run, stored.snapshot["user_session"]) == ("inst3", "r-new", {"k": "next"})
    # a bare disconnect mark does not change the version: a peer the client reconnects to still claims
    assert await _save(r, _record("inst3", "next", run="r-new"), bump=False) == 1
    assert await _save(r, _record("inst2", "moved", run="r2"), claim=True, expected=stored) == 1
    # records written before versions and runs existed are claimed as before
    await r.hdel(KS.session(SID), "v", "run")
    assert await _save(r, _record("inst1", "upgrade", run="r1"), claim=True, expected=_record("inst2")) == 1


async def test_session_save_checks_ownership_writes_incrementally_and_expires(r):
    m = {"id": "m1", "output": "hi"}
    assert await _save(r, _record("a"), upserts={"m1": context_entry(m, 0)}, reset=True) == 1
    assert await _save(r, _record("b", "stolen")) == 0  # a peer may not overwrite the owner's record
    assert await _save(r, _record("a"), upserts={"m2": context_entry({"id": "m2"}, 1)}) == 1
    assert await r.hlen(KS.context(SID)) == 2  # incremental: m1 kept, m2 added
    assert await _save(r, _record("a"), removed=["m1"]) == 1
    assert await r.hkeys(KS.context(SID)) == [b"m2"]
    # A claim is a compare-and-set on the version the claimer loaded: a stale one loses.
    loaded = await _load(r)
    stale = SessionRecord(owner="a", version=loaded.version - 1)
    assert await _save(r, _record("c", "late"), claim=True, reset=True, expected=stale) == 0
    assert await _save(r, _record("c", "late"), claim=True, reset=True, expected=None) == 0
    assert await _save(r, _record("b", "moved"), claim=True, reset=True, expected=loaded) == 1  # a failover claims it
    assert await _save(r, _record("c", "late"), claim=True, reset=True, expected=loaded) == 0  # b won already
    stored = SessionRecord.from_redis(await r.hgetall(KS.session(SID)), await r.hgetall(KS.context(SID)))
    assert (stored.owner, stored.user, stored.thread, stored.snapshot["user_session"]) == ("b", "alice", "t1",
                                                                                          {"k": "moved"})
    assert stored.chat_context == [] and 0 < await r.ttl(KS.session(SID)) <= 60
    keys, args = scripts.session_delete(KS, SID, "a")
    assert await r.register_script(scripts.SESSION_DELETE)(keys=keys, args=args) == 0  # not a's any more
    keys, args = scripts.session_delete(KS, SID, "b")
    assert await r.register_script(scripts.SESSION_DELETE)(keys=keys, args=args) >= 1
    assert not await r.exists(KS.session(SID))


async def test_records_written_before_the_user_and_thread_fields_still_read(r):
    from cl_scale.wire.records import read_identity

    await r.hset(KS.session(SID), mapping={"owner": "a", "data": json.dumps(
        {"user": {"identifier": "bob"}, "thread_id": "t9"})})
    assert await read_identity(r, KS.session(SID)) == (True, "bob", "t9")
    assert await read_identity(r, KS.session("nobody-0000")) == (False, None, None)
