"""The gRPC gateway end to end: a Python worker through stubs compiled from the shipped ``.proto``."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cl_scale.ops.client import ChainlitClient
from tests.grpc.conftest import BEARER, ENV, final_texts, stubs
from tests.worker.helpers import started, worker_texts

pytestmark = pytest.mark.slow


async def test_send_stream_update_remove_and_subscribe(cluster, gateway):
    (inst,) = cluster.start(1, env=ENV).instances
    gw = gateway()
    pb, services = stubs()
    client = await started(ChainlitClient(inst.url, reconnection=False))
    sid = client.session_id
    async with grpc.aio.insecure_channel(gw.target) as channel:
        stub = services.GatewayStub(channel)
        try:
            # Subscribe first: the user's message reaches the worker with its ids
            calls = stub.Subscribe(pb.SubscribeRequest(session_ids=[sid]), metadata=BEARER, timeout=30)
            reader = asyncio.ensure_future(calls.read())
            await asyncio.sleep(0.5)
            typed = await client.send("question one")
            request = await asyncio.wait_for(reader, 20)
            assert (request.session_id, request.message_id, request.text) == (sid, typed, "question one")
            assert request.thread and request.cursor
            calls.cancel()

            reply = await stub.Send(pb.SendRequest(session_id=sid, text="w-hello", id="m-1"), metadata=BEARER)
            assert (reply.id, reply.outcome, reply.sessions) == ("m-1", pb.ACCEPTED, 1)
            again = await stub.Send(pb.SendRequest(session_id=sid, text="w-hello", id="m-1"), metadata=BEARER)
            assert again.outcome in (pb.ACCEPTED, pb.DUPLICATE)  # seen marks drop it at the owner either way
            await client.wait_for(lambda: final_texts(client).get("m-1") == "w-hello", 15)

            async def chunks():
                yield pb.StreamChunk(session_id=sid, id="s-1", tokens=["w-", "str"])
                for t in ("ea", "med"):
                    yield pb.StreamChunk(tokens=[t])
                yield pb.StreamChunk(end=True)

            result = await stub.StreamReply(chunks(), metadata=BEARER)
            assert (result.id, result.tokens, result.interrupted) == ("s-1", 4, False)
            await client.wait_for(lambda: final_texts(client).get("s-1") == "w-streamed", 15)

            await stub.Update(pb.UpdateRequest(session_id=sid, id="m-1", text="w-edited"), metadata=BEARER)
            await client.wait_for(lambda: final_texts(client).get("m-1") == "w-edited", 15)
            await stub.Remove(pb.RemoveRequest(session_id=sid, id="s-1"), metadata=BEARER)
            await client.wait_for(lambda: "s-1" not in final_texts(client), 15)
        finally:
            await client.close()


async def test_a_node_worker_answers_a_user_token_by_token(cluster, gateway, node_worker):
    """The Node.js worker loads the shipped .proto, gets the user's message from Subscribe and
    streams its answer; the chat shows the streamed tokens and the final message."""
    from cl_scale.gateway.grpc_gateway import PROTO_ROOT

    (inst,) = cluster.start(1, env=ENV).instances
    gw = gateway()
    client = await started(ChainlitClient(inst.url, reconnection=False))
    sid = client.session_id
    worker = await asyncio.create_subprocess_exec(*node_worker, str(PROTO_ROOT), gw.target, BEARER[0][1].split()[1],
                                                  sid, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert (await asyncio.wait_for(worker.stdout.readline(), 30)).strip() == b"subscribed"
        await asyncio.sleep(0.5)
        typed = await client.send("how are you")
        out, err = await asyncio.wait_for(worker.communicate(), 40)
        assert worker.returncode == 0, err.decode()
        assert f'"answered":"{typed}"' in out.decode()
        mid = f"node-{typed}"
        await client.wait_for(lambda: final_texts(client).get(mid) == "w-node answers: how are you", 15)
        assert client.counts.get("stream_token", 0) >= 4  # streamed, not sent whole
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        await client.close()


async def test_send_batch_of_500_across_3_sessions_on_3_instances(cluster, gateway):
    insts = cluster.start(3, env=ENV).instances
    gw = gateway()
    pb, services = stubs()
    clients = [await started(ChainlitClient(i.url, reconnection=False)) for i in insts]
    try:
        messages = [pb.SendRequest(session_id=c.session_id, text=f"w{i:03d}", id=f"{c.session_id[:8]}-{i}")
                    for i in range(167) for c in clients][:500]
        async with grpc.aio.insecure_channel(gw.target) as channel:
            reply = await services.GatewayStub(channel).SendBatch(pb.SendBatchRequest(messages=messages),
                                                                   metadata=BEARER, timeout=30)
        assert [r.outcome for r in reply.results] == [pb.ACCEPTED] * 500
        assert [r.id for r in reply.results] == [m.id for m in messages]
        for c in clients:
            mine = [m.text for m in messages if m.session_id == c.session_id]
            await c.wait_for(lambda c=c, n=len(mine): len(worker_texts(c)) >= n, 40)
        await asyncio.sleep(0.5)  # anything extra would show now
        for c in clients:
            assert worker_texts(c) == [m.text for m in messages if m.session_id == c.session_id]
    finally:
        for c in clients:
            await c.close()


async def test_owner_sigkilled_during_stream_reply_the_reply_completes_on_the_new_owner(cluster, gateway):
    """The stream's parts wait in the session's outbox: after the owner dies and the user reconnects
    to another instance, the new owner renders the rest and the final message (nothing interrupted)."""
    a, b = cluster.start(2, env=ENV).instances
    gw = gateway()
    pb, services = stubs()
    first = await started(ChainlitClient(a.url, reconnection=False))
    sid = first.session_id
    words = [f"w{i} " for i in range(40)]
    half = asyncio.Event()

    async def chunks():
        yield pb.StreamChunk(session_id=sid, id="long-1", tokens=words[:10])
        await half.wait()
        for k in range(10, 40, 5):
            yield pb.StreamChunk(tokens=words[k:k + 5])
        yield pb.StreamChunk(end=True)

    second = None
    async with grpc.aio.insecure_channel(gw.target) as channel:
        call = services.GatewayStub(channel).StreamReply(chunks(), metadata=BEARER, timeout=60)
        try:
            await first.wait_for(lambda: final_texts(first).get("long-1", "").startswith("w0 w1"), 15)
            a.kill()
            await first.close()
            second = ChainlitClient(b.url, session_id=sid, reconnection=False)
            await second.connect()
            half.set()
            result = await call
            assert (result.tokens, result.interrupted) == (40, False)
            await second.wait_for(lambda: final_texts(second).get("long-1") == "".join(words), 30)
        finally:
            if second is not None:
                await second.close()


async def test_the_grpc_gateway_on_every_instance(cluster):
    """``CL_SCALE_GRPC_PORT`` on an instance: the same service with the instance's tokens and key."""
    from cl_scale.ops.processes import free_port

    port = free_port()
    (inst,) = cluster.start(1, env={**ENV, "CL_SCALE_GRPC_PORT": str(port)}).instances
    pb, services = stubs()
    client = await started(ChainlitClient(inst.url, reconnection=False))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await services.GatewayStub(channel).Send(
                pb.SendRequest(session_id=client.session_id, text="w-from-instance", id="i-1"), metadata=BEARER,
                timeout=10)
        assert reply.outcome == pb.ACCEPTED
        await client.wait_for(lambda: final_texts(client).get("i-1") == "w-from-instance", 15)
    finally:
        await client.close()
