"""examples/group_chat runs: one instance, three agent processes, three streamed turns in the chat."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.processes import Proc
from tests.worker.conftest import WORKER_ENV

EXAMPLE = Path(__file__).parents[2] / "examples" / "group_chat"


async def test_group_chat_example(cluster, worker_env, tmp_path):
    shutil.copy(EXAMPLE / "app.py", cluster.app_dir / "group_app.py")
    (a,) = cluster.start(1, app="group_app.py", env={**worker_env, "CL_SCALE_REDIS_URL": cluster.redis.url}).instances
    agents = Proc([sys.executable, str(EXAMPLE / "agents.py"), "--all", "--redis-url", cluster.redis.url,
                   "--delay", "0"], env=WORKER_ENV, log_path=tmp_path / "agents.log").start()
    client = ChainlitClient(a.url)
    try:
        await client.connect()
        await client.wait_for(lambda: client.messages(), 15)
        import asyncio
        log = tmp_path / "agents.log"
        for _ in range(200):  # agents create their consumer groups (at "$") when they start: wait for all three
            if log.exists() and log.read_text().count("listening") == 3:
                break
            await asyncio.sleep(0.1)
        await client.send("how do we scale chainlit?")
        await client.wait_for(lambda: len([m for m in client.messages() if m.get("name") in
                                           ("Planner", "Critic", "Writer")]) >= 3, 30)
        turns = [m for m in client.messages() if m.get("name") in ("Planner", "Critic", "Writer")]
        assert [m["name"] for m in turns] == ["Planner", "Critic", "Writer"]
        assert turns[0]["output"].startswith("Plan for 'how do we scale chainlit?'")
        assert client.counts.get("stream_start") == 3
    finally:
        await client.close()
        agents.stop()
    assert "Traceback" not in (tmp_path / "agents.log").read_text()
