"""Worker delivery, like for like: the worker path against a raw python-socketio emit into the
same cl-scale cluster, with the same batching on both sides.

(a) ``worker``: ``Publisher.send`` -> session outbox stream -> owner -> ``Message.send()`` (persisted,
    in the chat context, ordered, survives a move, dead-lettered when refused);
(b) ``raw_emit``: ``AsyncRedisManager(write_only=True).emit("new_message", room="session:<id>")`` on
    the broadcast channel (UI only: not persisted, lost while a listener is down).
Latency: one message at a time, alternating (a)/(b), publish -> received by the Socket.IO client.
Throughput: N messages into the session on one instance, unbatched (each awaited) and in batches of
100 (worker: ``send_many``, one pipeline; raw: 100 emits in flight at once); both the publish rate
and the delivery rate (first send -> last arrival) are reported, and every lost message.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import socketio

from cl_scale.bench.measure import summary
from cl_scale.bench.setups import WORKER_KEY
from cl_scale.ops.client import ChainlitClient
from cl_scale.wire.keyspace import Keyspace, room_name
from cl_scale.worker import Publisher

BATCHES = (1, 100)


class Arrivals:
    """When each ``new_message`` id first reached a client (perf_counter)."""

    def __init__(self, client: ChainlitClient):
        self.at: dict[str, float] = {}
        client.listeners.append(self.on_event)

    def on_event(self, event, data) -> None:
        if event == "new_message" and isinstance(data, dict):
            self.at.setdefault(data.get("id"), time.perf_counter())


async def _until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.002)
    return predicate()


def _raw_message(mid: str, text: str) -> dict:
    return {"id": mid, "output": text, "type": "assistant_message", "name": "raw"}


async def _latency(pub, raw, client, arrivals: Arrivals, rounds: int) -> dict:
    samples = {"worker": [], "raw_emit": []}
    room = room_name("session", client.session_id)
    for i in range(rounds):
        for path in (("worker", "raw_emit") if i % 2 == 0 else ("raw_emit", "worker")):
            mid = str(uuid.uuid4())
            t0 = time.perf_counter()
            if path == "worker":
                await pub.send(client.session_id, f"lat {i}", message_id=mid)
            else:
                await raw.emit("new_message", _raw_message(mid, f"lat {i}"), room=room)
            if await _until(lambda mid=mid: mid in arrivals.at, 10):
                samples[path].append((arrivals.at[mid] - t0) * 1000)
    return {path: {**summary(v), "lost": rounds - len(v)} for path, v in samples.items()}


async def _throughput(pub, raw, client, arrivals: Arrivals, total: int, path: str, batch: int) -> dict:
    sid, room = client.session_id, room_name("session", client.session_id)
    ids = [str(uuid.uuid4()) for _ in range(total)]
    t0 = time.perf_counter()
    for k in range(0, total, batch):
        chunk = ids[k:k + batch]
        if path == "worker":
            if batch == 1:
                await pub.send(sid, f"tp {k}", message_id=chunk[0])
            else:
                await pub.send_many([{"session_id": sid, "text": f"tp {k + j}", "message_id": mid}
                                     for j, mid in enumerate(chunk)])
        elif batch == 1:
            await raw.emit("new_message", _raw_message(chunk[0], f"tp {k}"), room=room)
        else:
            await asyncio.gather(*(raw.emit("new_message", _raw_message(mid, f"tp {k + j}"), room=room)
                                   for j, mid in enumerate(chunk)))
    published = time.perf_counter() - t0
    await _until(lambda: all(i in arrivals.at for i in ids), 120 if path == "worker" else 20)
    got = [arrivals.at[i] for i in ids if i in arrivals.at]
    elapsed = (max(got) - t0) if got else 0.0
    return {"messages": total, "received": len(got), "lost": total - len(got), "batch": batch,
            "publish_msgs_per_s": round(total / published, 1) if published else None,
            "delivery_msgs_per_s": round(len(got) / elapsed, 1) if elapsed else None,
            "elapsed_s": round(elapsed, 3)}


async def measure(instance_urls: list[str], redis_url: str, p: dict) -> dict:
    """Against a running cl-scale setup (``instance_urls``: its instances, clients connect directly)."""
    client = ChainlitClient(instance_urls[0])
    arrivals = Arrivals(client)
    await client.connect(timeout=30)
    await client.wait_for(lambda: client.messages(), 30)
    pub = Publisher(redis_url, key_id=WORKER_KEY[0], key=WORKER_KEY[1], outbox_max=1_000_000)
    raw = socketio.AsyncRedisManager(redis_url, channel=Keyspace().sio_broadcast, write_only=True)
    try:
        await pub.send(client.session_id, "warm-up")
        await raw.emit("new_message", _raw_message(str(uuid.uuid4()), "warm-up"), room=room_name("session", client.session_id))
        await asyncio.sleep(1.0)
        result = {"latency": await _latency(pub, raw, client, arrivals, p["push_rounds"]), "throughput": {}}
        for batch in BATCHES:
            for path in ("worker", "raw_emit"):
                result["throughput"][f"{path}_batch{batch}"] = await _throughput(
                    pub, raw, client, arrivals, p["push_messages"], path, batch)
                await asyncio.sleep(1.0)
        return result
    finally:
        await pub.aclose()
        if getattr(raw, "redis", None) is not None:
            await raw.redis.aclose()
        await client.close()
