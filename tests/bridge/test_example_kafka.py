"""examples/group_chat, Kafka variant: app -> Kafka -> three agent processes -> Kafka -> bridge -> chat."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.processes import Proc
from tests.bridge.conftest import WORKER_ENV

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).parents[2] / "examples" / "group_chat"


async def test_group_chat_over_kafka_end_to_end(cluster, tansu, bridges, tmp_path):
    for topic in ("groupchat-requests", "groupchat-turns", "groupchat-replies"):
        await tansu.create_topic(topic, 3)
    shutil.copy(EXAMPLE / "app.py", cluster.app_dir / "group_app.py")
    env = {**WORKER_ENV, "CL_SCALE_OUTBOUND_URL": f"kafka://{tansu.bootstrap}/groupchat-requests"}
    a, b = cluster.start(2, app="group_app.py", env=env).instances
    bridges(f"kafka://{tansu.bootstrap}/groupchat-replies?group=cl-scale&fetch_max_wait_ms=50",
            cluster.redis.url).start()
    log = tmp_path / "agents.log"
    agents = Proc([sys.executable, str(EXAMPLE / "agents.py"), "--all", "--kafka", tansu.bootstrap, "--delay", "0"],
                  log_path=log).start()
    clients = [ChainlitClient(a.url), ChainlitClient(b.url)]
    try:
        for _ in range(200):  # bounded: the agents have joined their groups
            if log.exists() and log.read_text().count("listening") == 3:
                break
            await asyncio.sleep(0.1)
        for c, question in zip(clients, ("how do we scale chainlit?", "what about kafka?")):
            await c.connect()
            await c.wait_for(lambda c=c: c.messages(), 15)
            await c.send(question)
        for c, question in zip(clients, ("how do we scale chainlit?", "what about kafka?")):
            await c.wait_for(lambda c=c: len([m for m in c.messages() if m.get("name") in
                                              ("Planner", "Critic", "Writer")]) >= 3, 60)
            turns = [m for m in c.messages() if m.get("name") in ("Planner", "Critic", "Writer")]
            assert [m["name"] for m in turns] == ["Planner", "Critic", "Writer"]  # each user gets their own chat
            assert turns[0]["output"].startswith(f"Plan for {question!r}")
            assert c.counts.get("stream_start") == 3
    finally:
        for c in clients:
            await c.close()
        agents.stop()
    assert "Traceback" not in log.read_text()
