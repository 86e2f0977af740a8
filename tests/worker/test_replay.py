"""A captured, validly signed entry appended again is a replay: refused from the id inside the
verified body on every path (the wake-up fast path included), whatever id the appender passed."""

from __future__ import annotations

import time

from cl_scale.ops.client import ChainlitClient
from cl_scale.wire import messages as p
from cl_scale.worker import Publisher
from tests.worker.helpers import dlq_until, outbox_settled, raw_publish, started

K1 = b"secret-one"


def signed_update(session_id: str, mid: str, text: str) -> dict:
    body = p.Body(eid=f"{mid}:u:{p.new_id()}", mid=mid, kind="update", session=session_id,
                  target=p.Target(session=session_id), ts=time.time(), content=text)
    raw = p.canonical(body)
    return {"kid": "k1", "body": raw, "sig": p.sign(K1, raw)}


def updates(client: ChainlitClient, mid: str) -> list[str]:
    return [d["output"] for _, e, d in client.events if e == "update_message" and d.get("id") == mid]


async def test_replayed_update_after_a_move_is_a_dead_lettered_duplicate(cluster, worker_env):
    a, b = cluster.start(2, env=worker_env).instances
    client = await started(ChainlitClient(a.url, reconnection=False))
    sid = client.session_id
    async with Publisher(cluster.redis.url, key_id="k1", key=K1) as pub:
        mid = await pub.send(sid, "w-v1")
        captured = signed_update(sid, mid, "w-old")
        await raw_publish(cluster.redis.url, sid, captured)  # delivered once, legitimately
        await client.wait_for(lambda: updates(client, mid) == ["w-old"], 15)
        await pub.update(sid, mid, "w-new")
        await client.wait_for(lambda: updates(client, mid) == ["w-old", "w-new"], 15)
    await outbox_settled(cluster.redis.url, sid)  # rendered *and* settled: nothing left for b to render again
    await client.close()

    moved = ChainlitClient(b.url, session_id=sid)
    await moved.connect()
    try:
        await moved.ask("after the move", contains="count=")
        # The attacker appends the captured entry again, passing a fresh id to the publish script.
        await raw_publish(cluster.redis.url, sid, captured)
        async with Publisher(cluster.redis.url, key_id="k1", key=K1) as pub:
            await pub.send(sid, "w-marker")  # delivered after the replay: by then the replay was handled
        await moved.wait_for(lambda: any(m.get("output") == "w-marker" for m in moved.messages()), 15)
        assert updates(moved, mid) == [], "the replayed update was rendered"
        letters = await dlq_until(cluster.redis.url, 1)
        assert len(letters) == 1 and "duplicate" in letters[0]["reason"], letters
        history = await moved.ask("history", contains="count=")
        assert history  # the session still works
    finally:
        await moved.close()
