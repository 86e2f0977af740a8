"""A bridge needs no more than the least-privilege ``clscale-worker`` Redis user (real redis-server ACLs):
it reads the sessions it is given, appends, dead-letters and writes its heartbeat under that user."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from cl_scale.bridge.core import Bridge, Incoming
from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.cluster import ProcessCluster
from cl_scale.ops.processes import RedisServer
from cl_scale.wire import messages as m
from cl_scale.wire.keyspace import Keyspace, acl_rules
from cl_scale.worker import Publisher
from tests.worker.helpers import started, worker_texts

pytestmark = pytest.mark.slow


async def test_a_bridge_runs_as_the_worker_acl_user(app_dir, tmp_path):
    server = RedisServer(tmp_path, password="admin-pw").start()
    admin = aioredis.Redis.from_url(server.url)
    try:
        await admin.execute_command("ACL", "SETUSER", "clscale-worker", "on", ">work-pw", *acl_rules("clscale", "worker"))
        worker_url = f"redis://clscale-worker:work-pw@127.0.0.1:{server.port}/0"
        cluster = ProcessCluster(app_dir, tmp_path, redis_url=server.url)
        try:
            (a,) = cluster.start(1, env={"CL_SCALE_WORKER_KEYS": "k1:secret-one"}).instances
            client = await started(ChainlitClient(a.url, reconnection=False))
            key = m.parse_keys("k1:secret-one")["k1"]
            pub = Publisher(worker_url, key_id="k1", key="secret-one")
            bridge = Bridge(pub, key, known_keys={"k1": key}, kind="kafka")
            try:
                out = await bridge.forward([
                    Incoming(json.dumps({"session_id": client.session_id, "text": "w-acl"}).encode()),
                    Incoming(json.dumps({"user": "nobody", "text": "w-x"}).encode()),
                    Incoming(b"not json"),
                ])
                assert out.forwarded == 1 and sorted(r.code for r in out.refused) == ["malformed", "no_live_session"]
                await client.wait_for(lambda: worker_texts(client) == ["w-acl"], 15)
                await pub.redis.hset(Keyspace().workers, "kafka-test", json.dumps({"at": 1}))  # the heartbeat
                await pub.redis.hdel(Keyspace().workers, "kafka-test")
                assert await admin.xlen(Keyspace().dead_letters) == 2
            finally:
                await pub.aclose()
                await client.close()
        finally:
            cluster.stop()
    finally:
        await admin.aclose()
        server.stop()
