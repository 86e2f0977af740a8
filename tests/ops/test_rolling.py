"""Rolling restart of every instance (SIGTERM, one at a time, graceful drain) while 20 clients chat
through nginx: no session reset, no message lost or answered twice, no client error."""

from __future__ import annotations

import asyncio

import pytest
import socketio

from cl_scale.ops.client import ChainlitClient
from tests.runtime.test_failover import fields, open_clients, starts

pytestmark = pytest.mark.slow


class Chatter:
    """One user who keeps chatting; re-sends a message only if it was never answered."""

    def __init__(self, client: ChainlitClient):
        self.client = client
        self.replies: list[dict] = []
        self.resends = 0

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            text = f"m{n}."
            for _attempt in range(6):
                try:
                    await self.client.wait_for(lambda: self.client.sio.connected, 30)
                    reply = await self.client.ask(text, contains=f"echo={text}", timeout=8)
                    break
                except (TimeoutError, socketio.exceptions.SocketIOError):
                    self.resends += 1  # sent into a closing socket, or while reconnecting
            else:
                raise AssertionError(f"{text} never answered")
            self.replies.append(fields(reply))
            await asyncio.sleep(0.05)


async def test_rolling_restart_while_20_clients_chat(cluster):
    cluster.start(3, nginx=True, env={"CL_SCALE_DRAIN_SECONDS": "10"})
    clients = await open_clients(cluster.nginx.url)
    chatters = [Chatter(c) for c in clients]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(ch.run(stop)) for ch in chatters]
    try:
        await asyncio.sleep(1.5)
        for inst in list(cluster.instances):
            await asyncio.to_thread(cluster.restart, inst)  # SIGTERM → drain → exit → start again
            await asyncio.sleep(1.5)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    moved = 0
    for ch in chatters:
        counts = [int(r["count"]) for r in ch.replies]
        assert counts == list(range(1, len(counts) + 1)), f"lost or double-processed: {counts}"
        assert len({r["thread"] for r in ch.replies}) == 1, "thread changed"
        assert len(starts(ch.client)) == 1, "on_chat_start ran again (session reset)"
        assert int(ch.replies[-1]["history"]) == 2 * len(counts)  # greeting, n questions, n-1 answers
        moved += int(ch.replies[-1]["restores"]) >= 1
    # Every instance was replaced once, so every session was restored in another process at least once.
    assert moved == len(chatters)
    print(f"replies per client: {[len(ch.replies) for ch in chatters]}, "
          f"resends: {sum(ch.resends for ch in chatters)}")
