"""Bad gRPC calls: each answered with its status code and a clear message, and the gateway keeps
serving; health checking and reflection for standard tools; TLS and mTLS on the gRPC port."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cl_scale.ops.certs import make_certificates
from cl_scale.ops.client import ChainlitClient
from tests.grpc.conftest import BEARER, ENV, SCOPED, final_texts, stubs
from tests.worker.helpers import started

pytestmark = pytest.mark.slow
C = grpc.StatusCode


def cases(pb, sid: str) -> list:
    """(name, rpc, request or chunks, metadata, timeout, code, words in the message)."""
    big = "x" * (70 * 1024)

    def chunks(*items):
        async def gen():
            for item in items:
                yield item
        return gen

    return [
        ("no token", "Send", pb.SendRequest(session_id=sid, text="w"), [], None, C.UNAUTHENTICATED, "missing bearer"),
        ("wrong token", "Send", pb.SendRequest(session_id=sid, text="w"), [("authorization", "Bearer nope")], None,
         C.UNAUTHENTICATED, "unknown token"),
        ("out-of-scope session", "Send", pb.SendRequest(session_id=sid, text="w"), SCOPED, None,
         C.PERMISSION_DENIED, "may not reach this session"),
        ("out-of-scope user", "Send", pb.SendRequest(user="mallory", text="w"), SCOPED, None,
         C.PERMISSION_DENIED, "may not reach this user"),
        ("expired deadline", "Send", pb.SendRequest(session_id=sid, text="w"), BEARER, 0.000001,
         C.DEADLINE_EXCEEDED, ""),
        ("oversized text", "Send", pb.SendRequest(session_id=sid, text=big), BEARER, None, C.INVALID_ARGUMENT, "text"),
        ("oversized on the wire", "Send", pb.SendRequest(session_id=sid, text="x" * 2_000_000), BEARER, None,
         C.RESOURCE_EXHAUSTED, "larger than max"),
        ("malformed session id", "Send", pb.SendRequest(session_id="bad id!", text="w"), BEARER, None,
         C.INVALID_ARGUMENT, "session_id"),
        ("malformed message id", "Send", pb.SendRequest(session_id=sid, text="w", id="has space"), BEARER, None,
         C.INVALID_ARGUMENT, "id"),
        ("unknown session", "Send", pb.SendRequest(session_id="no-such-session-0001", text="w"), BEARER, None,
         C.NOT_FOUND, "no session 'no-such-session-0001'"),
        ("no target", "Send", pb.SendRequest(text="w"), BEARER, None, C.INVALID_ARGUMENT, "exactly one target"),
        ("user without live session", "Send", pb.SendRequest(user="nobody", text="w"), BEARER, None,
         C.NOT_FOUND, "no live session for user 'nobody'"),
        ("bad item in a batch", "SendBatch", pb.SendBatchRequest(messages=[
            pb.SendRequest(session_id=sid, text="w-ok"), pb.SendRequest(session_id=sid, text="w", id="a b")]),
         BEARER, None, C.INVALID_ARGUMENT, "messages[1]"),
        ("batch too large", "SendBatch", pb.SendBatchRequest(messages=[pb.SendRequest(session_id=sid, text="w")] * 1001),
         BEARER, None, C.INVALID_ARGUMENT, "at most 1000"),
        ("update without text", "Update", pb.UpdateRequest(session_id=sid, id="m-1"), BEARER, None,
         C.INVALID_ARGUMENT, "text"),
        ("remove in an unknown session", "Remove", pb.RemoveRequest(session_id="no-such-session-0002", id="m-1"),
         BEARER, None, C.NOT_FOUND, "no session"),
        ("stream switching session", "StreamReply", chunks(pb.StreamChunk(session_id=sid, id="s-x", tokens=["w-a"]),
                                                           pb.StreamChunk(session_id="other-session-0001", tokens=["b"])),
         BEARER, None, C.INVALID_ARGUMENT, "may not change"),
        ("stream without chunks", "StreamReply", chunks(), BEARER, None, C.INVALID_ARGUMENT, "no chunk"),
        ("subscribe with a bad cursor", "Subscribe", pb.SubscribeRequest(after="yesterday"), BEARER, None,
         C.INVALID_ARGUMENT, "cursor"),
        ("subscribe to another user", "Subscribe", pb.SubscribeRequest(users=["bob"]), SCOPED, None,
         C.PERMISSION_DENIED, "may not follow"),
    ]


async def call(stub, rpc: str, request, metadata, timeout):
    method = getattr(stub, rpc)
    if rpc == "StreamReply":
        return await method(request(), metadata=metadata, timeout=timeout)
    if rpc == "Subscribe":
        async for item in method(request, metadata=metadata, timeout=timeout or 5):
            return item
        return None
    return await method(request, metadata=metadata, timeout=timeout)


async def test_bad_calls_get_their_status_and_the_gateway_keeps_serving(cluster, gateway):
    (inst,) = cluster.start(1, env=ENV).instances
    gw = gateway()
    pb, services = stubs()
    client = await started(ChainlitClient(inst.url, reconnection=False))
    sid = client.session_id
    table = cases(pb, sid)
    assert len(table) >= 12
    async with grpc.aio.insecure_channel(gw.target) as channel:
        stub = services.GatewayStub(channel)
        try:
            for name, rpc, request, metadata, timeout, code, words in table:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(stub, rpc, request, metadata, timeout)
                assert err.value.code() == code, (name, err.value.code(), err.value.details())
                assert words in (err.value.details() or ""), (name, err.value.details())
                assert "Traceback" not in (err.value.details() or "")
            # still serving; the interrupted stream of "stream switching session" is finished, not hanging
            await stub.Send(pb.SendRequest(session_id=sid, text="w-after", id="after"), metadata=BEARER)
            await client.wait_for(lambda: final_texts(client).get("after") == "w-after", 15)
            await client.wait_for(lambda: final_texts(client).get("s-x", "").endswith("(reply interrupted)*"), 15)
        finally:
            await client.close()
    assert "Traceback" not in gw.proc.log()


async def test_a_worker_that_goes_away_mid_stream_leaves_a_finished_message(cluster, gateway):
    (inst,) = cluster.start(1, env=ENV).instances
    gw = gateway()
    pb, services = stubs()
    client = await started(ChainlitClient(inst.url, reconnection=False))
    sid = client.session_id
    try:
        channel = grpc.aio.insecure_channel(gw.target)
        stub = services.GatewayStub(channel)
        gate = asyncio.Event()

        async def chunks():
            yield pb.StreamChunk(session_id=sid, id="gone-1", tokens=["w-half", " a reply"])
            await gate.wait()  # never set: the worker dies here

        call_ = stub.StreamReply(chunks(), metadata=BEARER)
        await client.wait_for(lambda: "w-half a reply" in final_texts(client).get("gone-1", ""), 15)
        call_.cancel()  # the worker goes away (its process would close the connection the same way)
        await channel.close()
        await client.wait_for(lambda: final_texts(client).get("gone-1") == "w-half a reply\n\n*(reply interrupted)*", 15)
    finally:
        await client.close()


async def test_health_checking_and_reflection(cluster, gateway):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    cluster.start(1, env=ENV)
    gw = gateway()
    async with grpc.aio.insecure_channel(gw.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "clscale.v1.Gateway"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for answer in reflection.ServerReflectionInfo(ask(), timeout=5):
            names = {s.name for s in answer.list_services_response.service}
            assert {"clscale.v1.Gateway", "grpc.health.v1.Health"} <= names
            break


async def test_tls_and_mtls_on_the_grpc_port(cluster, gateway, tmp_path):
    (inst,) = cluster.start(1, env=ENV).instances
    certs = make_certificates(tmp_path / "certs", clients=("worker",))
    gw = gateway("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
                 "--tls-client-ca", str(certs / "ca.pem"))
    pb, services = stubs()
    ca = (certs / "ca.pem").read_bytes()
    client = await started(ChainlitClient(inst.url, reconnection=False))
    sid = client.session_id
    try:
        with_cert = grpc.ssl_channel_credentials(ca, (certs / "worker.key").read_bytes(),
                                                 (certs / "worker.pem").read_bytes())
        async with grpc.aio.secure_channel(gw.target, with_cert) as channel:
            reply = await services.GatewayStub(channel).Send(pb.SendRequest(session_id=sid, text="w-tls", id="t-1"),
                                                             metadata=BEARER, timeout=10)
            assert reply.outcome == pb.ACCEPTED
        await client.wait_for(lambda: final_texts(client).get("t-1") == "w-tls", 15)
        import ssl

        import aiohttp

        https = ssl.create_default_context(cafile=str(certs / "ca.pem"))  # the HTTP gateway, same TLS
        https.load_cert_chain(str(certs / "worker.pem"), str(certs / "worker.key"))
        async with aiohttp.ClientSession(headers={"authorization": BEARER[0][1]}) as http:
            async with http.post(f"https://127.0.0.1:{gw.port}/cl-scale/v1/sessions/{sid}/messages",
                                 json={"text": "w-https", "id": "h-1"}, ssl=https) as resp:
                assert resp.status == 202, await resp.text()
            with pytest.raises(aiohttp.ClientError):  # plaintext to the TLS port
                async with http.post(f"http://127.0.0.1:{gw.port}/cl-scale/v1/sessions/{sid}/messages",
                                     json={"text": "w"}) as resp:
                    await resp.read()
        await client.wait_for(lambda: final_texts(client).get("h-1") == "w-https", 15)
        refused = [("TLS without a client certificate", grpc.ssl_channel_credentials(ca)),
                   ("plaintext to the TLS port", None)]
        for name, creds in refused:
            channel = grpc.aio.secure_channel(gw.target, creds) if creds else grpc.aio.insecure_channel(gw.target)
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await services.GatewayStub(channel).Send(pb.SendRequest(session_id=sid, text="w"),
                                                             metadata=BEARER, timeout=5)
                assert err.value.code() == C.UNAVAILABLE, (name, err.value.code(), err.value.details())
    finally:
        await client.close()
