"""Failover and rolling restart: 20 sessions on 3 real instances behind a real nginx (ip_hash).

Clients bind distinct loopback sources (127.0.N.1) so ip_hash spreads them. Assertions are about
state, never about time: every session keeps its id, thread, user_session values and history, and
``on_chat_start`` runs exactly once per session in total.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from cl_scale.ops.client import ChainlitClient

N_CLIENTS = 20
pytestmark = pytest.mark.slow


def fields(message: dict) -> dict:
    return dict(p.split("=", 1) for p in str(message["output"]).split() if "=" in p)


def starts(client: ChainlitClient) -> list[str]:
    return [m["output"] for m in client.messages() if str(m.get("output")).startswith("started on")]


async def open_clients(url: str) -> list[ChainlitClient]:
    clients = [ChainlitClient(url, source_address=f"127.0.{n + 1}.1") for n in range(N_CLIENTS)]
    await asyncio.gather(*(c.connect(timeout=20) for c in clients))
    await asyncio.gather(*(c.wait_for(lambda c=c: starts(c), 20) for c in clients))
    return clients


async def chat_round(clients: list[ChainlitClient], text: str) -> list[dict]:
    replies = await asyncio.gather(*(c.ask(text, contains=f"echo={text}", timeout=30) for c in clients))
    return [fields(r) for r in replies]


async def test_sigkill_one_instance_sessions_survive_through_nginx(cluster):
    cluster.start(3, nginx=True)
    clients = await open_clients(cluster.nginx.url)
    try:
        await chat_round(clients, "one")
        before = await chat_round(clients, "two")
        placement = Counter(r["instance"] for r in before)
        assert len(placement) >= 2, f"ip_hash did not spread clients: {placement}"
        victim_name, _ = placement.most_common(1)[0]
        victims = [c for c, r in zip(clients, before) if r["instance"] == victim_name]
        cluster.by_name(victim_name).kill()

        # Every client on the dead instance reconnects through nginx by itself.
        await asyncio.gather(*(c.wait_for(lambda c=c: c.connects >= 2, 30) for c in victims))
        after = await chat_round(clients, "three")
        for client, b, a in zip(clients, before, after):
            assert a["thread"] == b["thread"]
            assert int(a["count"]) == int(b["count"]) + 1 == 3, (client in victims, b, a)
            assert int(a["history"]) == int(b["history"]) + 2
            assert len(starts(client)) == 1, "on_chat_start ran again"
        assert all(a["instance"] != victim_name for a in after)
        assert {int(a["restores"]) for c, a in zip(clients, after) if c in victims} == {1}
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def test_rolling_restart_sigterm_one_at_a_time(cluster):
    cluster.start(3, nginx=True)
    clients = await open_clients(cluster.nginx.url)
    try:
        previous = await chat_round(clients, "r0")
        for step, inst in enumerate(list(cluster.instances), start=1):
            held = [c for c, r in zip(clients, previous) if r["instance"] == inst.name]
            connects = {id(c): c.connects for c in held}
            cluster.restart(inst)  # SIGTERM, wait for exit, start again on the same port, wait ready
            await asyncio.gather(*(c.wait_for(lambda c=c, connects=connects: c.connects > connects[id(c)], 30) for c in held))
            current = await chat_round(clients, f"r{step}")
            for _client, b, a in zip(clients, previous, current):
                assert a["thread"] == b["thread"]
                assert int(a["count"]) == int(b["count"]) + 1
                assert int(a["history"]) == int(b["history"]) + 2
            previous = current
        assert all(int(r["count"]) == 4 for r in previous)
        assert all(len(starts(c)) == 1 for c in clients), "on_chat_start ran again"
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
