"""Redis restarted while a worker publishes: bounded buffer, clear error when full, nothing accepted lost."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from cl_scale.ops.processes import Proc, find_redis_server, free_port, wait_port
from cl_scale.wire import messages as p
from cl_scale.wire.keyspace import Keyspace
from cl_scale.worker import BufferFull, Publisher


def durable_redis(tmp, port):
    cmd = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
           "--appendfsync", "always", "--dir", str(tmp)]
    proc = Proc(cmd, log_path=tmp / "redis.log").start()
    wait_port(port, 10)
    return proc


async def test_publisher_buffers_while_redis_restarts(tmp_path):
    port = free_port()
    server = durable_redis(tmp_path, port)
    url = f"redis://127.0.0.1:{port}/0"
    pub = Publisher(url, key_id="k1", key="secret-one", max_buffer=50, timeout=0.5)
    accepted = []
    try:
        for i in range(20):
            accepted.append(await pub.send("sess-restart-1", f"w{i}", message_id=f"m{i}"))
        server.stop()  # SIGTERM: AOF is fsynced
        with pytest.raises(BufferFull, match="retry buffer is full"):
            for i in range(20, 200):
                accepted.append(await pub.send("sess-restart-1", f"w{i}", message_id=f"m{i}"))
        assert pub.buffered == 50 and len(accepted) == 70
        server = durable_redis(tmp_path, port)
        await pub.flush(timeout=30)
        r = aioredis.Redis.from_url(url)
        entries = await r.xrange(Keyspace().outbox("sess-restart-1"))
        await r.aclose()
        mids = [p.Body.model_validate_json(f[b"body"]).mid for _, f in entries]
        first_seen = list(dict.fromkeys(mids))  # a retried write may land twice; delivery dedupes by id
        assert first_seen == accepted
    finally:
        await pub.aclose(timeout=2) if pub.buffered == 0 else None
        server.stop()
