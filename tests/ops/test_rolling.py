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
    """One user who keeps chatting; re-sends a message only if it never reached an instance (lost in
    transport as its socket closed: absent from the requests stream). One that reached a closing
    instance is answered by the next owner (the journal), so it is waited for, never sent twice."""

    def __init__(self, client: ChainlitClient, redis_url: str):
        self.client, self.redis_url = client, redis_url
        self.replies: list[dict] = []
        self.resends = 0

    async def run(self, stop: asyncio.Event) -> None:
        from tests.runtime.test_journal import reached

        n = 0
        while not stop.is_set():
            n += 1
            text = f"m{n}."
            for _attempt in range(6):
                try:
                    await self.client.wait_for(lambda: self.client.sio.connected, 30)
                    since = len(self.client.events)
                    message_id = await self.client.send(text)
                    reply = await self._reply(text, since, 8)
                    if reply is None and await reached(self.redis_url, message_id):
                        reply = await self._reply(text, since, 50)
                    if reply is not None:
                        break
                except socketio.exceptions.SocketIOError:
                    pass  # not connected after all
                self.resends += 1  # never reached an instance: sent again
            else:
                raise AssertionError(f"{text} never answered")
            self.replies.append(fields(reply))
            await asyncio.sleep(0.05)

    async def _reply(self, text: str, since: int, timeout: float) -> dict | None:
        def found():
            return next((m for m in self.client.messages(since) if f"echo={text}" in str(m.get("output"))), None)

        try:
            await self.client.wait_for(lambda: found() is not None, timeout)
        except TimeoutError:
            return None
        return found()


async def test_rolling_restart_while_20_clients_chat(cluster):
    cluster.start(3, nginx=True, env={"CL_SCALE_DRAIN_SECONDS": "10", "CL_SCALE_PUBLISH_REQUESTS": "1"})
    clients = await open_clients(cluster.nginx.url)
    chatters = [Chatter(c, cluster.redis_url) for c in clients]
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
