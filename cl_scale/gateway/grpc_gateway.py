"""The worker gateway over gRPC: ``clscale.v1.Gateway`` (``proto/clscale/v1/gateway.proto``).

The same front door as the HTTP gateway (``gateway.app.Gateway`` does the tokens, the signing key and
the ``Publisher``), for workers in any language that speak gRPC: ``Send`` / ``SendBatch`` (one Redis
round trip for the whole batch), ``StreamReply`` (client streaming, token by token), ``Update`` /
``Remove``, and ``Subscribe`` (server streaming: the users' messages the instances append to the
requests stream, filtered by the token's scope, so a worker needs no Redis access). Requests become
the JSON contract's ``Envelope`` first, so every field means what it means on the HTTP gateway and
the broker bridges; scopes are checked against what Redis holds for a session.

The ``.proto`` ships in the package and is compiled when first used (``grpc.protos_and_services``,
from ``grpcio-tools``): no generated code to drift from the installed ``protobuf`` runtime.
Standard tools work: ``grpc.health.v1`` health checking and server reflection are served too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sys
from pathlib import Path

import redis.exceptions
from pydantic import ValidationError

from cl_scale.gateway.app import ApiError, Gateway
from cl_scale.wire import messages as m
from cl_scale.wire.records import IDENTITY_FIELDS, identity_from
from cl_scale.worker.publisher import BufferFull, MessageTooLarge, OutboxFull
from cl_scale.worker.requests import Envelope, why_invalid

log = logging.getLogger("cl_scale.gateway")

PROTO_ROOT = Path(__file__).with_name("proto")
PROTO = "clscale/v1/gateway.proto"
SERVICE = "clscale.v1.Gateway"
#: What a finished-because-interrupted streamed reply ends with (visible in the chat).
INTERRUPTED = "\n\n*(reply interrupted)*"
#: SendBatch: at most this many messages per call.
MAX_BATCH = 1000
_CURSOR = re.compile(r"\d{1,20}-\d{1,20}")
_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, TimeoutError)


@functools.cache
def stubs():
    """``(messages, services)`` modules of the shipped ``.proto``, compiled once per process."""
    import grpc

    if str(PROTO_ROOT) not in sys.path:
        sys.path.append(str(PROTO_ROOT))
    return grpc.protos_and_services(PROTO)


class Refusal(Exception):
    """A request answered with a gRPC status code and a message."""

    def __init__(self, code, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _status(exc: BaseException):
    """The gRPC status code and message for an error raised while serving a call."""
    import grpc

    C = grpc.StatusCode
    if isinstance(exc, Refusal):
        return exc.code, exc.message
    if isinstance(exc, ApiError):
        code = {401: C.UNAUTHENTICATED, 403: C.PERMISSION_DENIED, 404: C.NOT_FOUND, 413: C.INVALID_ARGUMENT,
                422: C.INVALID_ARGUMENT, 429: C.RESOURCE_EXHAUSTED}.get(exc.status, C.UNAVAILABLE)
        return code, exc.error
    if isinstance(exc, ValidationError):
        return C.INVALID_ARGUMENT, why_invalid(exc)
    if isinstance(exc, OutboxFull):
        return C.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, (MessageTooLarge, ValueError)):
        return C.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, BufferFull):
        return C.UNAVAILABLE, str(exc)
    if isinstance(exc, _REDIS_ERRORS):
        return C.UNAVAILABLE, "Redis unreachable: retry later"
    log.error("gRPC gateway: a call failed (%s)", exc.__class__.__name__, exc_info=exc)
    return C.INTERNAL, "internal error"


def _unary(method):
    """Unary and client-streaming calls: an error becomes its status code, never a traceback."""

    @functools.wraps(method)
    async def call(self, request, context):
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code, message = _status(exc)
        await context.abort(code, message)

    return call


def _streaming(method):
    """Server-streaming calls, likewise."""

    @functools.wraps(method)
    async def call(self, request, context):
        try:
            async for item in method(self, request, context):
                yield item
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code, message = _status(exc)
        await context.abort(code, message)

    return call


def _text(value: str) -> str | None:
    return value or None


class GrpcGateway:
    """``clscale.v1.Gateway`` over the HTTP gateway's tokens, key and publisher.

    :param gateway: the ``Gateway`` (tokens, signing key, ``Publisher``) this front door shares.
    """

    def __init__(self, gateway: Gateway):
        self.g = gateway
        self.pb = stubs()[0]
        self._finishing: set[asyncio.Task] = set()

    # -- plumbing ----------------------------------------------------------------------------------
    def _token(self, context) -> m.WorkerKey:
        header = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), "")
        return self.g.token_for(header if isinstance(header, str) else "")

    def _envelope(self, kind: str, where: str = "", **fields) -> Envelope:
        data = {"kind": kind, **{k: v for k, v in fields.items() if v is not None}}
        try:
            return Envelope.model_validate(data)
        except ValidationError as exc:
            import grpc

            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"{where}{why_invalid(exc)}") from None

    def _send_envelope(self, req, where: str = "") -> Envelope:
        target = req.WhichOneof("target")
        if target is None:
            import grpc

            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"{where}give exactly one target: session_id, user or thread")
        elements = [{k: v for k, v in (("type", e.type), ("name", e.name), ("url", _text(e.url)),
                                       ("content", _text(e.content)), ("display", _text(e.display))) if v is not None}
                    for e in req.elements]
        return self._envelope("message", where, **{target: getattr(req, target)}, text=req.text, id=_text(req.id),
                              author=_text(req.author), elements=elements or None)

    async def _identities(self, session_ids: list[str]) -> dict:
        """(exists, user, thread) of each session as Redis holds it: one round trip."""
        unique = list(dict.fromkeys(session_ids))
        if not unique:
            return {}
        pub = self.g.pub
        pipe = pub.redis.pipeline(transaction=False)
        for sid in unique:
            pipe.hmget(pub.keys.session(sid), *IDENTITY_FIELDS)
        rows = await pipe.execute()
        return {sid: identity_from(row) or await pub.session_identity(sid) for sid, row in zip(unique, rows)}

    async def _sessions(self, envs: list[Envelope], token: m.WorkerKey, batch: bool = False,
                        read: bool = True) -> list[list[str]]:
        """The sessions each request reaches, checked against Redis (existence, the token's scope).
        ``read=False`` (one request, unscoped token): a session target is not read first; the append
        checks that the session exists in its own round trip (``require_session``)."""
        import grpc

        if not read and not token.scoped and all(e.session_id for e in envs):
            return [[e.session_id] for e in envs]
        identities = await self._identities([e.session_id for e in envs if e.session_id])
        out = []
        for i, env in enumerate(envs):
            where = f"messages[{i}]: " if batch else ""
            if env.session_id:
                exists, user, thread = identities[env.session_id]
                if not exists:
                    raise Refusal(grpc.StatusCode.NOT_FOUND,
                                  f"{where}no session {env.session_id!r} (never created, or expired)")
                if not token.allows(env.session_id, user, thread):
                    raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"{where}token {token.kid!r} may not reach this session")
                out.append([env.session_id])
                continue
            if token.scoped and not (env.user in token.users if env.user else env.thread in token.threads):
                raise Refusal(grpc.StatusCode.PERMISSION_DENIED,
                              f"{where}token {token.kid!r} may not reach this {'user' if env.user else 'thread'}")
            live = await self.g.pub.live_sessions(env.target)
            if not live:
                what = f"user {env.user!r}" if env.user else f"thread {env.thread!r}"
                raise Refusal(grpc.StatusCode.NOT_FOUND, f"{where}no live session for {what}")
            out.append(live)
        return out

    async def _publish(self, envs: list[Envelope], token: m.WorkerKey, batch: bool = False) -> list:
        """Check every request, then append all their entries in one round trip; a reply each. A
        batch is read first (one bad message refuses it before anything is appended); a single
        request from an unscoped token is checked by the append itself (one round trip, not two)."""
        import grpc

        reached = await self._sessions(envs, token, batch, read=batch)
        pub, pb = self.g.pub, self.pb
        bodies, owners = [], []
        for i, (env, sessions) in enumerate(zip(envs, reached)):
            made = pub.bodies(env, sessions)
            bodies += made
            owners += [i] * len(made)
        results = await pub.append(bodies, self.g.key, require_session=True)
        replies = []
        for i, env in enumerate(envs):
            mine = [r for r, o in zip(results, owners) if o == i]
            mid = bodies[owners.index(i)].mid if i in owners else (env.id or "")
            if 3 in mine:  # not held by Redis (a single request, checked by the append)
                raise Refusal(grpc.StatusCode.NOT_FOUND,
                              f"no session {env.session_id!r} (never created, or expired)")
            if 0 in mine:
                outcome, reason = pb.DEAD_LETTERED, "outbox_full: the session's outbox was at its bound"
            elif mine and all(r == 2 for r in mine):
                outcome, reason = pb.DUPLICATE, "this id was accepted before"
            else:
                outcome, reason = pb.ACCEPTED, ""
            replies.append(pb.SendReply(id=mid, outcome=outcome, reason=reason, sessions=len(reached[i])))
        return replies

    def _one(self, reply):
        """A single request whose outbox was full is RESOURCE_EXHAUSTED (it is dead-lettered)."""
        import grpc

        if reply.outcome == self.pb.DEAD_LETTERED:
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, f"message {reply.id!r}: {reply.reason} (dead-lettered)")
        return reply

    # -- the service ---------------------------------------------------------------------------------
    @_unary
    async def Send(self, request, context):
        token = self._token(context)
        return self._one((await self._publish([self._send_envelope(request)], token))[0])

    @_unary
    async def SendBatch(self, request, context):
        import grpc

        token = self._token(context)
        if len(request.messages) > MAX_BATCH:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"{len(request.messages)} messages: at most {MAX_BATCH} per batch")
        envs = [self._send_envelope(req, f"messages[{i}]: ") for i, req in enumerate(request.messages)]
        return self.pb.SendBatchReply(results=await self._publish(envs, token, batch=True))

    @_unary
    async def Update(self, request, context):
        token = self._token(context)
        env = self._envelope("update", session_id=request.session_id, id=request.id, text=_text(request.text),
                             author=_text(request.author))
        return self._one((await self._publish([env], token))[0])

    @_unary
    async def Remove(self, request, context):
        token = self._token(context)
        env = self._envelope("remove", session_id=request.session_id, id=request.id)
        return self._one((await self._publish([env], token))[0])

    @_unary
    async def StreamReply(self, request_iterator, context):
        """Tokens into one message as they come (one round trip per chunk). ``end`` finishes it;
        ``cancel``, a call that ends without ``end`` or a worker that goes away finishes it as
        interrupted (``INTERRUPTED`` appended): a reply is never left half-streamed."""
        import grpc

        token = self._token(context)
        pub = self.g.pub
        state = {"sid": None, "mid": None, "author": None, "parts": [], "size": 0, "done": False}
        try:
            async for chunk in request_iterator:
                if state["sid"] is None:
                    env = self._envelope("stream", session_id=chunk.session_id, id=chunk.id or m.new_id(),
                                         author=_text(chunk.author))
                    await self._sessions([env], token)
                    state.update(sid=env.session_id, mid=env.id, author=env.author)
                elif (chunk.session_id and chunk.session_id != state["sid"]) or (chunk.id and chunk.id != state["mid"]):
                    raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "one StreamReply call streams one message: "
                                                                     "session_id and id may not change")
                tokens = [t for t in chunk.tokens if t]
                state["size"] += sum(len(t.encode()) for t in tokens)
                if state["size"] > self.g.max_bytes:
                    raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"the reply is over {self.g.max_bytes} bytes")
                if chunk.cancel:
                    return await self._finish(state, interrupted=True)
                if tokens:
                    await pub.stream_part(state["sid"], state["mid"], tokens, offset=len(state["parts"]),
                                          author=state["author"])
                    state["parts"] += tokens
                if chunk.end:
                    return await self._finish(state, interrupted=False)
            if state["sid"] is None:
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "no chunk: the first names session_id (and id)")
            return await self._finish(state, interrupted=True)  # the call ended without end or cancel
        except asyncio.CancelledError:  # the worker went away, or its deadline passed
            if state["sid"] and not state["done"]:
                task = asyncio.get_running_loop().create_task(self._finish(state, interrupted=True))
                self._finishing.add(task)
                task.add_done_callback(self._finishing.discard)
            raise
        except Exception:
            if state["sid"] and not state["done"]:
                try:
                    await self._finish(state, interrupted=True)
                except Exception as exc:  # the original error is what the caller needs to hear
                    log.warning("gRPC gateway: could not finish an interrupted reply (%s)", exc.__class__.__name__)
            raise

    async def _finish(self, state: dict, *, interrupted: bool):
        state["done"] = True
        text = "".join(state["parts"]) + (INTERRUPTED if interrupted else "")
        await self.g.pub.stream_part(state["sid"], state["mid"], [], offset=len(state["parts"]), end=True, text=text,
                                     author=state["author"])
        return self.pb.StreamReplyResult(id=state["mid"], tokens=len(state["parts"]), interrupted=interrupted)

    @_streaming
    async def Subscribe(self, request, context):
        """Users' messages from the requests stream, as they arrive, within the token's scope (and the
        request's filters). Needs ``CL_SCALE_PUBLISH_REQUESTS`` on the instances."""
        import grpc

        token = self._token(context)
        try:
            wanted = [m.Target(session=s) for s in request.session_ids] + [m.Target(user=u) for u in request.users] \
                + [m.Target(thread=t) for t in request.threads]
        except ValidationError as exc:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, why_invalid(exc)) from None
        sessions, users, threads = set(request.session_ids), set(request.users), set(request.threads)
        if token.scoped:
            if (users - set(token.users)) or (threads - set(token.threads)):
                raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"token {token.kid!r} may not follow these users/threads")
            identities = await self._identities(list(sessions))
            if any(not token.allows(s, *identities[s][1:]) for s in sessions):
                raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"token {token.kid!r} may not follow these sessions")
        if request.after and not _CURSOR.fullmatch(request.after):
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "after: a cursor from UserMessage.cursor (digits-digits)")
        pub = self.g.pub
        stream = pub.keys.requests
        last = request.after
        if not last:  # new messages only: from the newest entry now (no gap between reads)
            newest = await pub.redis.xrevrange(stream, count=1)
            last = newest[0][0].decode() if newest else "0-0"
        while True:
            got = await pub.redis.xread({stream: last}, count=100, block=5000)
            for _, entries in got or ():
                for eid, raw in entries:
                    last = eid.decode()
                    f = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
                    sid, user, thread = f.get("session", ""), f.get("user") or None, f.get("thread") or None
                    if wanted and not (sid in sessions or user in users or thread in threads):
                        continue
                    if token.scoped and not token.allows(sid, user, thread):
                        continue
                    yield self.pb.UserMessage(session_id=sid, thread=thread or "", user=user or "",
                                              message_id=f.get("message_id", ""), text=f.get("text", ""),
                                              author=f.get("author", ""), at=float(f.get("at") or 0), cursor=last)


    @_unary
    async def Announce(self, request, context):
        from cl_scale.worker import registry

        token = self._token(context)
        info = registry.Announcement(version=request.version, interval=request.interval_seconds or registry.INTERVAL,
                                     sent=request.sent, errors=request.errors)
        stored = await registry.announce(self.g.pub.redis, self.g.pub.keys, token.kid, request.id, "grpc-client", info)
        return self.pb.AnnounceReply(id=stored)


class TlsFiles:
    """Server TLS: certificate and key (PEM files); with ``client_ca``, clients must present a
    certificate it signed (mTLS)."""

    def __init__(self, cert: str, key: str, client_ca: str | None = None):
        self.cert, self.key, self.client_ca = cert, key, client_ca

    def credentials(self):
        import grpc

        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        ca = read(self.client_ca) if self.client_ca else None
        return grpc.ssl_server_credentials([(read(self.key), read(self.cert))], root_certificates=ca,
                                           require_client_auth=ca is not None)


async def start_server(gateway: Gateway, host: str, port: int, tls: TlsFiles | None = None):
    """A started ``grpc.aio`` server: the gateway service, health checking (``SERVING`` for the
    service and overall) and reflection. Messages over the gateway's size limit (plus framing) are
    refused by gRPC itself (``RESOURCE_EXHAUSTED``)."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    pb, services = stubs()
    limit = (gateway.max_bytes + m.FRAMING_BYTES) * 4  # a whole batch may carry several full messages
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit)])
    services.add_GatewayServicer_to_server(GrpcGateway(gateway), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    names = (pb.DESCRIPTOR.services_by_name["Gateway"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    if not bound:
        from cl_scale.errors import UserError

        raise UserError(f"--grpc-port {port}: cannot listen on {host}:{port} (in use?)")
    await server.start()
    for name in ("", SERVICE):
        await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server
