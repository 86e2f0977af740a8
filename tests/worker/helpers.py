from __future__ import annotations

import asyncio

from cl_scale.ops.client import ChainlitClient
from cl_scale.wire.keyspace import Keyspace

KEYS = Keyspace()


async def started(client: ChainlitClient) -> ChainlitClient:
    await client.connect()
    await client.wait_for(lambda: any("started on" in str(m.get("output")) for m in client.messages()), 15)
    return client


def worker_texts(client: ChainlitClient, prefix: str = "w") -> list[str]:
    return [m["output"] for m in client.messages() if str(m.get("output", "")).startswith(prefix)]


async def offline(redis_url: str, client: ChainlitClient, timeout: float = 10.0) -> None:
    """Close the client and wait until its instance has recorded the disconnect in Redis: only then
    is the session offline (a message published a moment earlier may still be rendered to it)."""
    import redis.asyncio as aioredis

    await client.close()
    r = aioredis.Redis.from_url(redis_url)
    try:
        for _ in range(int(timeout / 0.05)):  # bounded
            if await r.hget(KEYS.session(client.session_id), "connected") == b"0":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"session {client.session_id} still recorded as connected after {timeout}s")
    finally:
        await r.aclose()


async def dlq(redis_url: str) -> list[dict]:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    try:
        return [{k.decode(): v.decode(errors="replace") for k, v in f.items()}
                for _, f in await r.xrange(KEYS.dead_letters)]
    finally:
        await r.aclose()


async def dlq_until(redis_url: str, count: int, timeout: float = 10.0) -> list[dict]:
    """The dead letters once there are at least ``count`` (bounded; then whatever is there): an instance
    writes a batch's letters when it settles the batch, *after* rendering its good entries, so a
    message seen on screen does not mean the letters of entries read with it are in Redis yet."""
    for _ in range(int(timeout / 0.05)):
        letters = await dlq(redis_url)
        if len(letters) >= count:
            return letters
        await asyncio.sleep(0.05)
    return await dlq(redis_url)


async def outbox_settled(redis_url: str, session_id: str, timeout: float = 10.0) -> None:
    """Until the session's outbox is empty (bounded): the instance settles (deletes) entries after
    rendering them, so a client that closes the moment it sees a message may leave them behind."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    try:
        for _ in range(int(timeout / 0.05)):
            if await r.xlen(KEYS.outbox(session_id)) == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"outbox of {session_id} not settled after {timeout}s")
    finally:
        await r.aclose()


def shown(clients: list[ChainlitClient], prefix: str = "w") -> list[str]:
    """What Chainlit's UI renders: ``new_message`` upserts by id (frontend ``addMessage``), so a
    re-emitted id replaces its earlier copy instead of showing twice. First appearance keeps order."""
    seen, out = set(), []
    for client in clients:
        for m in client.messages():
            text = str(m.get("output", ""))
            if text.startswith(prefix) and m["id"] not in seen:
                seen.add(m["id"])
                out.append(text)
    return out


async def raw_publish(redis_url: str, session_id: str, fields: dict) -> None:
    """Write an entry straight into a session's outbox (what a buggy or hostile writer could do)."""
    import redis.asyncio as aioredis

    from cl_scale.wire import scripts
    from cl_scale.wire.keyspace import Keyspace

    r = aioredis.Redis.from_url(redis_url)
    try:
        keys, args = scripts.outbox_append(Keyspace(), session_id, "", fields.get("kid", ""), fields.get("body", b""),
                                           fields.get("sig", ""), outbox_max=100000, ttl=3600)
        await r.register_script(scripts.OUTBOX_APPEND)(keys=keys, args=args)
    finally:
        await r.aclose()


def signed(session_id: str, secret: bytes, *, kid: str = "k1", text: str = "w", ts: float | None = None,
           mid: str | None = None, **extra) -> dict:
    import time

    from cl_scale.wire import messages as p

    mid = mid or p.new_id()
    body = p.Body(eid=mid, mid=mid, kind="message", session=session_id, target=p.Target(session=session_id),
                  ts=ts if ts is not None else time.time(), content=text, **extra)
    raw = p.canonical(body)
    return {"kid": kid, "body": raw, "sig": p.sign(secret, raw)}


def final_texts(client) -> dict[str, str]:
    """What the chat shows per message id after every event (new, streamed, updated, removed)."""
    shown: dict[str, str] = {}
    for _, event, data in client.events:
        if not isinstance(data, dict):
            continue
        mid = data.get("id")
        if event in ("new_message", "stream_start", "update_message"):
            shown[mid] = data.get("output", "")
        elif event == "stream_token" and mid in shown:
            shown[mid] = data.get("token", "") if data.get("isSequence") else shown[mid] + data.get("token", "")
        elif event == "delete_message":
            shown.pop(mid, None)
    return shown
