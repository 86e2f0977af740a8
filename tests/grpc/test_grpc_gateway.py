"""The gRPC gateway end to end: a Python worker through stubs compiled from the shipped ``.proto``."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cl_scale.ops.client import ChainlitClient
from tests.grpc.conftest import BEARER, ENV, final_texts, stubs
from tests.worker.helpers import started

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
