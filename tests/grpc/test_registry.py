"""The worker registry end to end: an SDK publisher (its own process), a gRPC client and an HTTP client
announcing through the gateway; the SDK one is SIGKILLed: ``cl-scale workers --json`` shows it stale
within its interval's grace, the others healthy; the instances export them on ``/metrics``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import aiohttp
import grpc
import pytest

from cl_scale.ops.processes import CL_SCALE, Proc
from tests.grpc.conftest import BEARER, ENV, stubs

pytestmark = pytest.mark.slow

SDK_WORKER = """
import asyncio, sys
from cl_scale.worker import Publisher
async def main():
    pub = Publisher(sys.argv[1], "k1", "secret-one", worker_id="sdk-worker-1", heartbeat=1.0)
    await pub.send("no-such-session-0001", "w-hello")  # the first message starts its heartbeat
    print("sent", flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


def workers(redis_url: str) -> dict:
    out = subprocess.run([CL_SCALE, "workers", "--json", "--redis-url", redis_url], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode in (0, 1), out.stderr
    return {e["id"]: e for e in json.loads(out.stdout)}


async def test_three_kinds_of_workers_one_killed_shows_stale(cluster, gateway, tmp_path):
    (inst,) = cluster.start(1, env=ENV).instances
    gw = gateway()
    pb, services = stubs()
    sdk = Proc([sys.executable, "-c", SDK_WORKER, cluster.redis.url], log_path=tmp_path / "sdk.log").start()
    stop = asyncio.Event()

    async def grpc_client():
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = services.GatewayStub(channel)
            sent = 0
            while not stop.is_set():
                sent += 3
                await stub.Announce(pb.WorkerInfo(id="node-7", version="1.2.3", interval_seconds=1, sent=sent),
                                    metadata=BEARER)
                await asyncio.sleep(1)

    async def http_client():
        async with aiohttp.ClientSession(headers={"authorization": BEARER[0][1]}) as http:
            while not stop.is_set():
                async with http.post(f"http://127.0.0.1:{gw.port}/cl-scale/v1/workers/go-worker",
                                     json={"version": "0.9", "interval": 1, "sent": 5, "errors": 1}) as resp:
                    assert resp.status == 202, await resp.text()
                await asyncio.sleep(1)

    clients = [asyncio.create_task(grpc_client()), asyncio.create_task(http_client())]
    try:
        ids = {"sdk-worker-1", "t1/node-7", "t1/go-worker"}
        deadline = time.monotonic() + 30
        while not ids <= set(seen := await asyncio.to_thread(workers, cluster.redis.url)):
            assert time.monotonic() < deadline, f"{sdk.log()} {seen}"
            await asyncio.sleep(0.5)
        assert {i: seen[i]["kind"] for i in ids} == {"sdk-worker-1": "sdk", "t1/node-7": "grpc-client",
                                                     "t1/go-worker": "http-client"}
        assert all(seen[i]["state"] == "healthy" for i in ids)
        assert seen["t1/node-7"]["version"] == "1.2.3" and seen["t1/go-worker"]["errors"] == 1

        sdk.kill()
        killed_at = time.monotonic()
        while (seen := await asyncio.to_thread(workers, cluster.redis.url))["sdk-worker-1"]["state"] != "stale":
            assert time.monotonic() - killed_at < 10, seen["sdk-worker-1"]
            await asyncio.sleep(0.5)
        assert seen["t1/node-7"]["state"] == seen["t1/go-worker"]["state"] == "healthy"
        assert seen["t1/node-7"]["rate"] is not None  # 3 per second, from its successive totals

        metrics = ""
        for _ in range(40):  # bounded: the instance refreshes the export every 5 s
            metrics = urllib.request.urlopen(f"{inst.url}/metrics", timeout=5).read().decode()
            if 'clscale_worker_up{kind="sdk",worker="sdk-worker-1"} 0.0' in metrics:
                break
            await asyncio.sleep(0.5)
        assert 'clscale_worker_up{kind="sdk",worker="sdk-worker-1"} 0.0' in metrics
        assert 'clscale_worker_up{kind="grpc-client",worker="t1/node-7"} 1.0' in metrics
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
        sdk.kill()
