"""HTTP gateway on an instance and standalone (no Chainlit): auth, scope, schema, delivery."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.processes import CL_SCALE, Proc, free_port, wait_port
from tests.worker.conftest import WORKER_ENV
from tests.worker.helpers import started, worker_texts

AUTH = {"Authorization": "Bearer token-one"}


async def test_gateway_on_instance_delivers_and_refuses_with_json(cluster, worker_env):
    a, b = cluster.start(2, env=worker_env).instances
    client = await started(ChainlitClient(a.url))
    base = f"{b.url}/cl-scale/v1"  # lands on B, the session lives on A
    sid = client.session_id
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(f"{base}/sessions/{sid}/messages", headers=AUTH,
                                json={"text": "w-http", "id": "mid-1", "author": "Bot",
                                      "elements": [{"type": "text", "name": "note", "content": "hi"},
                                                   {"type": "image", "name": "pic", "url": "https://example.com/a.png"}]})
            assert (r.status_code, r.json()) == (202, {"id": "mid-1", "status": "accepted"})
            r = await http.post(f"{base}/sessions/{sid}/messages", headers=AUTH, json={"text": "w-http", "id": "mid-1"})
            assert r.status_code == 202  # same id again: idempotent, rendered once
            r = await http.post(f"{base}/sessions/{sid}/stream", headers=AUTH,
                                json={"tokens": ["w-", "stre", "am"], "id": "s-1"})
            assert r.status_code == 202
            r = await http.patch(f"{base}/sessions/{sid}/messages/mid-1", headers=AUTH, json={"text": "w-edited"})
            assert r.status_code == 202
            await client.wait_for(lambda: client.counts.get("update_message", 0) >= 2, 15)
            assert worker_texts(client) == ["w-http", "w-stream"]
            assert [d["output"] for _, e, d in client.events if e == "update_message"][-1] == "w-edited"
            await client.wait_for(lambda: client.counts.get("element", 0) >= 2, 10)  # text + image elements
            assert {d["type"] for _, e, d in client.events if e == "element"} == {"text", "image"}

            checks = [
                (http.post(f"{base}/sessions/{sid}/messages", json={"text": "x"}), 401),
                (http.post(f"{base}/sessions/{sid}/messages", json={"text": "x"},
                           headers={"Authorization": "Bearer nope"}), 401),
                (http.post(f"{base}/sessions/{sid}/messages", json={"text": "x"},
                           headers={"Authorization": "Bearer token-two"}), 403),  # t2: only session only-this
                (http.post(f"{base}/sessions/{sid}/messages", headers=AUTH, json={"text": 5}), 422),
                (http.post(f"{base}/sessions/{sid}/messages", headers=AUTH, json={"txt": "x"}), 422),
                (http.post(f"{base}/sessions/{sid}/messages", headers={**AUTH, "content-type": "application/json"},
                           content=b"x" * 200_000), 413),
                (http.post(f"{base}/planets/{sid}/messages", headers=AUTH, json={"text": "x"}), 404),
            ]
            for coro, status in checks:
                resp = await coro
                assert resp.status_code == status, (status, resp.text)
                assert resp.json()["error"]
            spec = (await http.get(f"{base}/openapi.json")).json()
            assert spec["openapi"].startswith("3.") and "/cl-scale/v1/sessions/{ident}/messages" in spec["paths"]
        assert worker_texts(client) == ["w-http", "w-stream"]
    finally:
        await client.close()


async def test_standalone_gateway_without_chainlit(cluster, worker_env, tmp_path):
    (a,) = cluster.start(1, env=worker_env).instances
    client = await started(ChainlitClient(a.url))
    port = free_port()
    gw = Proc([CL_SCALE, "gateway", "--redis-url", cluster.redis.url, "--port", str(port)],
              env={**WORKER_ENV}, log_path=tmp_path / "gateway.log").start()
    try:
        wait_port(port, 20)
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(f"http://127.0.0.1:{port}/cl-scale/v1/sessions/{client.session_id}/messages",
                                headers=AUTH, json={"text": "w-standalone"})
            assert r.status_code == 202, r.text
        await client.wait_for(lambda: "w-standalone" in worker_texts(client), 15)
    finally:
        gw.stop()
        await client.close()
    probe = subprocess.run([sys.executable, "-c", "import sys, cl_scale.cli.worker_cmds, cl_scale.gateway.app, "
                            "cl_scale.worker; print('chainlit' in sys.modules)"], capture_output=True, text=True,
                           env=os.environ, timeout=60)
    assert probe.stdout.strip() == "False"
