"""Distributed AutoGen group chats in a scaled Chainlit: every session its own chat, streamed, in order,
once; surviving the loss of the instance holding it, and of an agent process."""

from __future__ import annotations

import asyncio
import re

import pytest
import redis.asyncio as aioredis

from cl_scale.ops.client import ChainlitClient
from cl_scale.wire.keyspace import Keyspace
from tests.autogen.conftest import INSTANCE_ENV, LINES
from tests.worker.helpers import dlq, final_texts

pytestmark = pytest.mark.slow
KEYS = Keyspace()
TURN_ID = re.compile(r"^ag-([0-9a-f]{12})-(\d+)-(\d+)$")
ORDER = ["Writer", "Editor"]


def turns(*clients) -> list[tuple[int, int, str, str]]:
    """(turn, attempt, author, text) of the group chat's messages the clients saw, by message id."""
    out: dict[str, tuple] = {}
    for c in clients:
        authors = {d.get("id"): d.get("name") for _, e, d in c.events if isinstance(d, dict) and d.get("name")}
        for mid, text in final_texts(c).items():
            if m := TURN_ID.match(mid or ""):
                out[mid] = (int(m.group(2)), int(m.group(3)), authors.get(mid), text, m.group(1))
    return [v[:4] for v in sorted(out.values())]


def chats(client) -> set[str]:
    return {m.group(1) for mid in final_texts(client) if (m := TURN_ID.match(mid or ""))}


def expected(rounds: int) -> list[tuple[int, int, str, str]]:
    """Round-robin Writer, Editor, ...; each agent's replay model says line k at its k-th turn."""
    return [(t, 1, ORDER[(t - 1) % 2], LINES[ORDER[(t - 1) % 2]].format(k=(t + 1) // 2)) for t in range(1, rounds + 1)]


def same(got, want) -> bool:
    return [g[:3] for g in got] == [w[:3] for w in want] and all(g[3].startswith(w[3]) for g, w in zip(got, want))


async def spread_sessions(cluster, n: int) -> list[ChainlitClient]:
    """``n`` clients through nginx (ip_hash) from distinct addresses, covering every instance: a client
    on an instance that already has one is kept only while enough places are left for the others."""
    r = aioredis.Redis.from_url(cluster.redis.url)
    clients, owners = [], set()
    try:
        for k in range(1, 60):  # bounded
            c = ChainlitClient(cluster.nginx.url, reconnection=False, source_address=f"127.0.{k}.1")
            await c.connect()
            await c.wait_for(lambda c=c: any("short story" in str(m.get("output")) for m in c.messages()), 15)
            owner = (await r.hget(KEYS.session(c.session_id), "owner") or b"").decode()
            missing = len(cluster.instances) - len(owners | {owner})
            if owner not in owners or n - len(clients) > missing:
                clients.append(c)
                owners.add(owner)
            else:
                await c.close()
            if len(clients) == n:
                return clients
    finally:
        await r.aclose()
    raise AssertionError(f"could not spread {n} sessions over {len(cluster.instances)} instances")


async def test_ten_sessions_each_get_their_own_streamed_chat(cluster, autogen, autogen_app):
    cluster.start(3, app=autogen_app, env=INSTANCE_ENV, nginx=True)
    side = autogen(rounds=3).start()
    side.wait_attached("manager", "writer", "editor", "bridge")
    clients = await spread_sessions(cluster, 10)
    try:
        for i, c in enumerate(clients):
            await c.send(f"a story please ({i})")
        want = expected(3)
        for c in clients:
            try:
                await c.wait_for(lambda c=c: same(turns(c), want) and len(final_texts(c)) >= 4, 60)
            except TimeoutError:
                raise AssertionError(f"{c.session_id}: {turns(c)}\n{side.logs()}") from None
        await asyncio.sleep(0.5)  # anything extra would show now
        ids = []
        for c in clients:
            assert same(turns(c), want), turns(c)  # its own chat, in order, once, right authors
            (chat,) = chats(c)
            ids.append(chat)
            streamed = {d.get("id") for _, e, d in c.events if e == "stream_start" and isinstance(d, dict)}
            tokens = [d for _, e, d in c.events if e == "stream_token" and isinstance(d, dict)]
            assert {f"ag-{chat}-{t}-1" for t in (1, 2, 3)} <= streamed  # shown as streamed messages
            assert len(tokens) >= 3 * 10
        assert len(set(ids)) == 10  # ten distinct chats
        assert await dlq(cluster.redis.url) == []
    finally:
        for c in clients:
            await c.close()



async def test_sessions_of_a_killed_instance_get_their_remaining_turns(cluster, autogen, autogen_app):
    """SIGKILL the instance holding some sessions after each chat's first turn: reconnected elsewhere,
    each of them receives the remaining turns — none lost, none twice."""
    cluster.start(3, app=autogen_app, env=INSTANCE_ENV, nginx=True)
    rounds = 5
    side = autogen(rounds=rounds, delay=0.06).start()
    side.wait_attached("manager", "writer", "editor", "bridge")
    clients = await spread_sessions(cluster, 6)
    r = aioredis.Redis.from_url(cluster.redis.url)
    moved = []
    try:
        for c in clients:
            await c.send("a story please")
        for c in clients:  # every chat has finished its first turn and is mid-way
            await c.wait_for(lambda c=c: any(t[0] >= 2 for t in turns(c)), 30)
        owner = (await r.hget(KEYS.session(clients[0].session_id), "owner")).decode()
        victim = cluster.by_name(owner)
        doomed = [c for c in clients if (await r.hget(KEYS.session(c.session_id), "owner")).decode() == owner]
        seen_before = {c.session_id: len(turns(c)) for c in doomed}
        victim.kill()
        survivor = next(i for i in cluster.instances if i is not victim)
        for c in doomed:
            await c.close()
            again = ChainlitClient(survivor.url, session_id=c.session_id, thread_id=c.thread_id, reconnection=False)
            await again.connect()
            moved.append((c, again))
        want = expected(rounds)
        for old, new in moved:
            try:
                await new.wait_for(lambda old=old, new=new: same(turns(old, new), want), 60)
            except TimeoutError:
                raise AssertionError(f"{old.session_id}: {turns(old, new)}\n{side.logs()}") from None
        others = [c for c in clients if c not in doomed]
        for c in others:
            await c.wait_for(lambda c=c: same(turns(c), want), 60)
        await asyncio.sleep(0.5)
        for old, new in moved:
            assert same(turns(old, new), want)
            before = {mid for mid in final_texts(old) if TURN_ID.match(mid or "")}
            finished_after = [d.get("id") for _, e, d in new.events if e == "new_message" and isinstance(d, dict)
                              and TURN_ID.match(d.get("id") or "")]
            assert len(finished_after) == len(set(finished_after)), finished_after  # none twice
            assert 1 <= seen_before[old.session_id] < rounds and before
        assert await dlq(cluster.redis.url) == []
    finally:
        await r.aclose()
        for c in clients:
            await c.close()
        for _, new in moved:
            await new.close()


async def test_an_agent_killed_mid_turn_and_restarted_resumes_the_chat(cluster, autogen, autogen_app):
    """The writer's process dies while it streams turn 1 and comes back: the manager hears no beat, marks
    that reply interrupted in the chat, asks again, and the restarted writer answers; the chat goes on."""
    (inst,) = cluster.start(1, app=autogen_app, env=INSTANCE_ENV).instances
    side = autogen(rounds=3, delay=0.1, silence=3.0).start()
    side.wait_attached("manager", "writer", "editor", "bridge")
    c = ChainlitClient(inst.url, reconnection=False)
    await c.connect()
    try:
        await c.send("a story please")
        await c.wait_for(lambda: any(len(t[3]) > 10 for t in turns(c)), 20)  # the writer is mid-stream
        side.procs["writer"].kill()
        side.start("writer")
        want = [(1, 1, "Writer", "Draft 1"), (1, 2, "Writer", "Draft 1: on Halloween night"),
                (2, 1, "Editor", "Edit 1"), (3, 1, "Writer", "Draft 2")]
        try:
            await c.wait_for(lambda: same(turns(c), want) and turns(c)[-1][3].endswith("pumpkin."), 60)
        except TimeoutError:
            raise AssertionError(f"{turns(c)}\n{side.logs()}") from None
        interrupted = turns(c)[0][3]
        assert interrupted.endswith("*(reply interrupted)*") and not interrupted.startswith(want[1][3] + " the gingerbread")
    finally:
        await c.close()


async def test_an_agent_that_never_comes_back_stops_the_chat_visibly(cluster, autogen, autogen_app):
    (inst,) = cluster.start(1, app=autogen_app, env=INSTANCE_ENV).instances
    side = autogen(rounds=3, delay=0.01, silence=2.0).start("host", "manager", "writer", "bridge")  # no editor
    side.wait_attached("manager", "writer", "bridge")
    c = ChainlitClient(inst.url, reconnection=False)
    await c.connect()
    try:
        await c.send("a story please")
        notice = "Editor did not answer: the group chat stopped. Send a message to try again."
        try:
            await c.wait_for(lambda: notice in [m.get("output") for m in c.messages()], 30)
        except TimeoutError:
            raise AssertionError(f"{turns(c)}\n{side.logs()}") from None
        await asyncio.sleep(0.5)
        got = turns(c)  # the editor never started: no half message of it, only the notice
        assert [t[:3] for t in got] == [(1, 1, "Writer")], got
    finally:
        await c.close()


async def test_a_message_no_manager_takes_gets_a_notice(cluster, autogen, autogen_app):
    """The manager is not running (AutoGen's host drops a message nobody subscribes to, silently): the
    user is told after ``--unanswered-seconds``, once."""
    (inst,) = cluster.start(1, app=autogen_app, env=INSTANCE_ENV).instances
    side = autogen().start("host", "writer", "editor", "bridge")
    side.wait_attached("writer", "editor", "bridge")
    c = ChainlitClient(inst.url, reconnection=False)
    await c.connect()
    try:
        await c.send("anyone there?")
        await c.wait_for(lambda: any("No group chat answered" in str(m.get("output")) for m in c.messages()), 20)
        side.start("manager")  # back: the next message gets its chat, and no notice
        side.wait_attached("manager")
        await c.send("a story please")
        await c.wait_for(lambda: same(turns(c), expected(3)), 30)
        await asyncio.sleep(3.5)
        notices = [m for m in c.messages() if "No group chat answered" in str(m.get("output"))]
        assert len(notices) == 1, notices
    finally:
        await c.close()
