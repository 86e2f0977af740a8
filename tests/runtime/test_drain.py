"""Graceful drain on SIGTERM: readiness off at once, in-flight replies finish, clients move to a peer."""

from __future__ import annotations

import asyncio
import time

import pytest

from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.processes import http_status
from tests.runtime.test_failover import fields, starts

pytestmark = pytest.mark.slow


async def _eventually(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


async def test_sigterm_drains_in_flight_reply_then_hands_clients_over(cluster):
    cluster.start(2, nginx=True, env={"CL_SCALE_DRAIN_SECONDS": "20"})
    client = ChainlitClient(cluster.nginx.url, source_address="127.0.7.1")
    await client.connect()
    try:
        await client.wait_for(lambda: starts(client), 20)
        first = fields(await client.ask("hello", contains="count="))
        owner = cluster.by_name(first["instance"])
        peer = next(i for i in cluster.instances if i is not owner)

        await client.send("slow 2")
        await asyncio.sleep(0.3)  # the reply is being generated on `owner`
        owner.proc.popen.send_signal(15)
        await _eventually(lambda: http_status(f"{owner.url}/readyz") == 503, 5)  # readiness off first
        assert http_status(f"{owner.url}/healthz") == 200  # still alive, still serving its clients

        # The in-flight reply finishes on the draining instance ...
        await client.wait_for(lambda: any("echo=slow-done" in str(m.get("output")) for m in client.messages()), 15)
        # ... then the socket is closed and the client reconnects, through nginx, to the peer.
        await client.wait_for(lambda: client.connects >= 2, 30)
        owner.proc.popen.wait(timeout=30)  # the drained instance exits by itself

        after = fields(await client.ask("after-drain", contains="count=", timeout=20))
        assert after["instance"] == peer.name
        assert after["thread"] == first["thread"]
        assert int(after["count"]) == 3  # hello, slow, after-drain: nothing lost, nothing reset
        assert int(after["restores"]) == 1
        assert len(starts(client)) == 1, "on_chat_start ran again"
        assert "drained: 1 sockets handed over" in owner.proc.log()
    finally:
        await client.close()
