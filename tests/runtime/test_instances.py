"""Real redis-server + real `cl-scale run` instances + a client speaking Chainlit's protocol."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import socketio

from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.processes import http_status
from cl_scale.runtime.api import RedisEmitter


async def started(client: ChainlitClient) -> ChainlitClient:
    await client.connect()
    await client.wait_for(lambda: any("started on" in str(m.get("output")) for m in client.messages()), 15)
    return client


def field(reply: dict, name: str) -> str:
    return dict(p.split("=", 1) for p in reply["output"].split() if "=" in p)[name]


async def test_emit_from_instance_b_and_from_external_process_reaches_client_on_a(cluster):
    a, b = cluster.start(2).instances
    alice = await started(ChainlitClient(a.url))
    bob = await started(ChainlitClient(b.url))
    try:
        await bob.ask(f"relay {alice.session_id} hello-from-b", contains="relayed")
        got = await alice.wait_for(lambda: [d for _, e, d in alice.events if e == "cl-scale"], 10)
        assert got[0] == {"text": "hello-from-b", "from": "inst2"}

        emitter = RedisEmitter(cluster.redis.url)
        try:
            assert await emitter.emit_to_session(alice.session_id, "cl-scale", {"text": "external"}) == 1
        finally:
            await emitter.aclose()
        await alice.wait_for(lambda: len([e for _, e, _ in alice.events if e == "cl-scale"]) == 2, 10)
        assert [d["text"] for _, e, d in alice.events if e == "cl-scale"] == ["hello-from-b", "external"]
        assert not [e for _, e, _ in bob.events if e == "cl-scale"], "emit leaked to another session"
    finally:
        await alice.close()
        await bob.close()


async def test_session_moves_to_another_instance_with_its_state(cluster):
    a, b = cluster.start(2).instances
    client = await started(ChainlitClient(a.url, reconnection=False))
    for i in range(3):
        reply = await client.ask(f"m{i}", contains="count=")
    thread = field(reply, "thread")
    await client.close()
    a.kill()

    moved = ChainlitClient(b.url, session_id=client.session_id, reconnection=False)
    await moved.connect()
    try:
        reply = await moved.ask("after", contains="count=")
        assert field(reply, "instance") == "inst2"
        assert field(reply, "count") == "4"  # user_session value came back
        assert field(reply, "thread") == thread  # same thread id
        assert field(reply, "history") == "8"  # chat context came back (7 messages before + this one)
        assert field(reply, "restores") == "1"  # the restore hook ran (and rebuilt the client object)
        assert field(reply, "client") == "True"
        assert not [m for m in moved.messages() if "started on" in str(m.get("output"))], "on_chat_start re-ran"
    finally:
        await moved.close()
    assert "not JSON-serialisable" in b.proc.log()


async def test_ask_user_message_round_trip(cluster):
    (a,) = cluster.start(1).instances
    client = await started(ChainlitClient(a.url))
    client.ask_answer = lambda payload: {"id": str(uuid.uuid4()), "output": "ada", "name": "User",
                                         "type": "user_message", "createdAt": "2026-01-01T00:00:00Z"}
    try:
        reply = await client.ask("ask", contains="answer=", timeout=20)
        assert "answer=ada" in reply["output"]
    finally:
        await client.close()


async def test_file_uploaded_through_another_instance_is_readable_by_the_owner(cluster):
    a, b = cluster.start(2).instances
    client = await started(ChainlitClient(a.url))
    try:
        uploaded = await client.upload("note.txt", b"payload-42", base_url=b.url)  # lands on B, forwarded to A
        await client.send_with_files("file", [{"id": uploaded["id"]}])
        reply = await client.wait_for(lambda: next((m for m in client.messages() if "file=" in str(m["output"])),
                                                   None), 10)
        assert "file=payload-42" in reply["output"]
    finally:
        await client.close()
    assert 'clscale_http_forwarded_total{outcome="ok"} 1.0' in _metrics(b.url)


def _metrics(url: str) -> str:
    import urllib.request

    return urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()


@pytest.mark.parametrize("auth", [
    None, "garbage", {"sessionId": 5, "clientType": "webapp"}, {"sessionId": "../../etc/passwd", "clientType": "webapp"},
    {"sessionId": "a" * 36, "clientType": "hacker"}, {"sessionId": "b" * 36, "clientType": "webapp", "userEnv": "{not json"},
    {"sessionId": "c" * 36, "clientType": "webapp", "threadId": {"$ne": 1}},
    {"sessionId": "d" * 36 + "\n", "clientType": "webapp"},  # "$" used to accept a trailing newline
])
async def test_garbage_handshakes_are_refused_and_instance_keeps_serving(cluster, auth):
    (a,) = cluster.start(1).instances
    raw = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await raw.connect(a.url, socketio_path="/ws/socket.io", transports=["websocket"], auth=auth, wait_timeout=5)
    await raw.disconnect()
    assert http_status(f"{a.url}/readyz") == 200
    client = await started(ChainlitClient(a.url))
    assert "count=1" in (await client.ask("still fine", contains="count="))["output"]
    await client.close()


async def test_forged_session_id_cannot_take_over_another_users_session(cluster):
    a, b = cluster.start(2, app="auth_app.py").instances
    alice = ChainlitClient(a.url)
    await alice.login_with_header({"X-User": "alice"})
    await alice.connect()
    await alice.wait_for(lambda: alice.messages(), 10)
    assert "owner=alice" in (await alice.ask("hi", contains="owner="))["output"]

    for target in (a, b):  # same instance (stock check) and another instance (restore path)
        mallory = ChainlitClient(target.url, session_id=alice.session_id, reconnection=False)
        await mallory.login_with_header({"X-User": "mallory"})
        with pytest.raises(socketio.exceptions.ConnectionError):
            await mallory.connect(timeout=5)
        await mallory.close()

    assert "owner=alice echo=still-mine" in (await alice.ask("still-mine", contains="owner="))["output"]
    await alice.close()


async def test_redis_restart_mid_chat_instances_survive_and_delivery_resumes(cluster):
    a, b = cluster.start(2).instances
    alice = await started(ChainlitClient(a.url))
    bob = await started(ChainlitClient(b.url))
    try:
        cluster.redis.stop()
        # Local chat keeps working while Redis is down, and readiness says not-ready.
        assert "count=1" in (await alice.ask("during outage", contains="count=", timeout=15))["output"]
        await _eventually(lambda: http_status(f"{a.url}/readyz") == 503, 10)

        cluster.redis.start()  # same port, empty data: registrations must be re-sent by the instances
        await _eventually(lambda: http_status(f"{a.url}/readyz") == 200 and http_status(f"{b.url}/readyz") == 200, 10)
        await bob.ask(f"relay {alice.session_id} after-outage", contains="relayed")
        got = await alice.wait_for(lambda: [d for _, e, d in alice.events if e == "cl-scale"], 10)
        assert got[0]["text"] == "after-outage"
        assert a.proc.alive() and b.proc.alive()
    finally:
        await alice.close()
        await bob.close()


async def _eventually(predicate, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.2)


async def test_stalled_redis_never_blocks_local_chat_or_local_emits(cluster):
    """SIGSTOP Redis (connections stay open, nothing answers): local work must not wait on it."""
    import os
    import signal

    a, b = cluster.start(2).instances
    alice = await started(ChainlitClient(a.url))
    carol = await started(ChainlitClient(a.url))  # same instance as alice: a relay is a local emit
    bob = await started(ChainlitClient(b.url))
    os.kill(cluster.redis.proc.pid, signal.SIGSTOP)
    try:
        for i in range(3):
            assert f"count={i + 1}" in (await alice.ask(f"stalled {i}", contains="count=", timeout=15))["output"]
        await carol.ask(f"relay {alice.session_id} local-during-stall", contains="relayed", timeout=15)
        got = await alice.wait_for(lambda: [d for _, e, d in alice.events if e == "cl-scale"], 10)
        assert got[0]["text"] == "local-during-stall"
        await _eventually(lambda: http_status(f"{a.url}/readyz") == 503, 15)
    finally:
        os.kill(cluster.redis.proc.pid, signal.SIGCONT)
    try:
        await _eventually(lambda: http_status(f"{a.url}/readyz") == 200 and http_status(f"{b.url}/readyz") == 200, 15)
        await bob.ask(f"relay {alice.session_id} cross-after-stall", contains="relayed")
        await alice.wait_for(lambda: len([e for _, e, _ in alice.events if e == "cl-scale"]) == 2, 10)
        assert a.proc.alive() and b.proc.alive()
    finally:
        for c in (alice, carol, bob):
            await c.close()


async def test_instance_started_before_redis_waits_not_ready_then_serves(app_dir, tmp_path):
    """Redis unreachable at start: the process stays up and not-ready, and serves once Redis comes."""
    from cl_scale.ops.processes import InstanceProcess, RedisServer, free_port

    redis = RedisServer(tmp_path / "late-redis", port=free_port())
    (tmp_path / "late-redis").mkdir()
    inst = InstanceProcess(app_dir, redis.url, "early", env={"CHAINLIT_AUTH_SECRET": "x" * 40}).start()
    try:
        inst.wait_ready(path="/healthz")
        await _eventually(lambda: http_status(f"{inst.url}/readyz") == 503, 10)
        assert inst.proc.alive()
        redis.start()
        inst.wait_ready(timeout=20)
        client = await started(ChainlitClient(inst.url))
        try:
            emitter = RedisEmitter(redis.url)
            try:
                assert await emitter.emit_to_session(client.session_id, "cl-scale", {"text": "late"}) == 1
            finally:
                await emitter.aclose()
            await client.wait_for(lambda: [e for _, e, _ in client.events if e == "cl-scale"], 10)
        finally:
            await client.close()
    finally:
        inst.kill()
        redis.stop()
