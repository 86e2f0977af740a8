"""A small Starlette app that turns authenticated HTTP requests into signed worker messages.

Mounted on every instance under ``/cl-scale/v1`` and runnable alone (``cl-scale gateway``). Bearer
tokens come from ``CL_SCALE_GATEWAY_TOKENS`` (``id:token[;users=a|b][;sessions=s1|s2]``) and are
checked here; messages are signed with a worker key the instances accept. Errors are JSON:
401 (no/unknown token), 403 (token scope), 413 (too large), 422 (schema), 429 (outbox full),
503 (Redis unreachable and retry buffer full); acceptance is 202 with the message id.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re

import redis.exceptions
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cl_scale.contract import DEFAULT_PREFIX
from cl_scale.wire import messages as p
from cl_scale.worker.publisher import BufferFull, MessageTooLarge, OutboxFull, Publisher
from cl_scale.worker.requests import MessageIn, StreamIn, UpdateIn

log = logging.getLogger("cl_scale.gateway")
PREFIX = "/cl-scale/v1"


BODY_SECONDS = 30  # a request body must arrive within this (a body that never ends is a 408)


class Accepted(BaseModel):
    id: str
    status: str = "accepted"


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail=None):
        self.status, self.error, self.detail = status, error, detail


class Gateway:
    """Requests in, signed entries out (through the SDK's ``Publisher``).

    :param tokens: accepted bearer tokens (``CL_SCALE_GATEWAY_TOKENS``, parsed).
    :param key: the worker key entries are signed with (None: every request answers 503).
    :param body_seconds: a request body must arrive within this, else 408 (a slow or stalled caller
        would otherwise hold its connection and buffer forever).
    """

    def __init__(self, redis_url: str, *, tokens: dict[str, p.WorkerKey], key: p.WorkerKey | None,
                 prefix: str = DEFAULT_PREFIX, max_bytes: int = p.MAX_BYTES, outbox_max: int = 1000,
                 outbox_ttl: float = 3600, body_seconds: float = BODY_SECONDS):
        self.redis_url, self.prefix, self.max_bytes = redis_url, prefix, max_bytes
        self.body_seconds = body_seconds
        self.tokens, self.key = tokens, key
        self.outbox_max, self.outbox_ttl = outbox_max, outbox_ttl
        self._pub: Publisher | None = None

    @property
    def pub(self) -> Publisher:
        if self._pub is None:
            if self.key is None:
                raise ApiError(503, "gateway has no worker key to sign with (CL_SCALE_WORKER_KEYS)")
            self._pub = Publisher(self.redis_url, self.key.kid, self.key.secret, prefix=self.prefix,
                                  author="Worker", max_bytes=self.max_bytes, outbox_max=self.outbox_max,
                                  outbox_ttl=self.outbox_ttl, announce="gateway")
        return self._pub

    async def aclose(self) -> None:
        if self._pub is not None:
            await self._pub.aclose(timeout=5)

    # -- request plumbing ----------------------------------------------------------------------------
    def auth(self, request: Request) -> p.WorkerKey:
        return self.token_for(request.headers.get("authorization", ""))

    def token_for(self, header: str) -> p.WorkerKey:
        """The token an ``authorization: Bearer <token>`` header (or gRPC metadata) names."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing bearer token")
        for entry in self.tokens.values():
            if hmac.compare_digest(entry.secret, token.encode()):
                return entry
        raise ApiError(401, "unknown token")

    async def body(self, request: Request, model: type[BaseModel]):
        """The JSON body, bounded in size and time: 415 (not JSON), 413, 408, 422 (schema)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "the body must be application/json")
        declared = request.headers.get("content-length")
        limit = self.max_bytes + p.FRAMING_BYTES
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body over {limit} bytes")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.body_seconds):
                async for chunk in request.stream():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"request body over {limit} bytes")
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {self.body_seconds:g}s") from None
        try:
            return model.model_validate_json(b"".join(chunks) or b"null")
        except ValidationError as exc:
            raise ApiError(422, "invalid request body",
                           [{"loc": list(e["loc"]), "msg": p.reason(e)} for e in exc.errors()][:20]) from None

    @staticmethod
    def target(kind: str, ident: str) -> p.Target:
        """The URL's target, checked (ids reach Redis keys: a strict alphabet, 404 for unknown kinds)."""
        field = {"sessions": "session", "users": "user", "threads": "thread"}.get(kind)
        if field is None:
            raise ApiError(404, "not found")
        try:
            return p.Target(**{field: ident})
        except ValidationError as exc:
            raise ApiError(422, f"invalid {field} in the URL: {p.reason(exc.errors()[0])}") from None

    @staticmethod
    def message_id(mid: str) -> str:
        if not re.fullmatch(p.MESSAGE_ID_PATTERN, mid):
            raise ApiError(422, "invalid message id in the URL: must be 1-200 of letters, digits and ._:@-")
        return mid

    async def check_scope(self, token: p.WorkerKey, target: p.Target) -> None:
        """A scoped token reaches a session whose *stored* id, user or thread it names, a user it
        names, or a thread it names: never what the request says about the session."""
        if not token.scoped:
            return
        if target.session:
            _, user, thread = await self.pub.session_identity(target.session)
            allowed = token.allows(target.session, user, thread)
        elif target.user:
            allowed = target.user in token.users
        else:
            allowed = target.thread in token.threads
        if not allowed:
            raise ApiError(403, f"token {token.kid!r} may not reach this {'session' if target.session else 'target'}")

    # -- endpoints -------------------------------------------------------------------------------------
    async def post_message(self, request: Request):
        token = self.auth(request)
        kind, ident = request.path_params["kind"], request.path_params["ident"]
        target = self.target(kind, ident)
        await self.check_scope(token, target)
        msg = await self.body(request, MessageIn)
        elements = [e.model_dump() for e in msg.elements]
        if target.session:
            mid = await self.pub.send(ident, msg.text, message_id=msg.id, author=msg.author, elements=elements)
        elif target.user:
            mid = await self.pub.send_to_user(ident, msg.text, message_id=msg.id, author=msg.author, elements=elements)
        else:
            mid = await self.pub.send_to_thread(ident, msg.text, message_id=msg.id, author=msg.author,
                                                elements=elements)
        return JSONResponse(Accepted(id=mid).model_dump(), status_code=202)

    async def post_stream(self, request: Request):
        token = self.auth(request)
        sid = request.path_params["ident"]
        await self.check_scope(token, self.target("sessions", sid))
        req = await self.body(request, StreamIn)
        mid = await self.pub.stream_part(sid, req.id or p.new_id(), req.tokens, offset=req.offset, end=req.end,
                                         text=req.text, author=req.author)
        return JSONResponse(Accepted(id=mid).model_dump(), status_code=202)

    async def patch_message(self, request: Request):
        token = self.auth(request)
        sid, mid = request.path_params["ident"], self.message_id(request.path_params["mid"])
        await self.check_scope(token, self.target("sessions", sid))
        req = await self.body(request, UpdateIn)
        await self.pub.update(sid, mid, req.text, author=req.author)
        return JSONResponse(Accepted(id=mid).model_dump(), status_code=202)

    async def delete_message(self, request: Request):
        token = self.auth(request)
        sid, mid = request.path_params["ident"], self.message_id(request.path_params["mid"])
        await self.check_scope(token, self.target("sessions", sid))
        await self.pub.remove(sid, mid)
        return JSONResponse(Accepted(id=mid).model_dump(), status_code=202)

    async def post_worker(self, request: Request):
        """A worker behind this gateway says it is alive (``worker.registry``)."""
        from cl_scale.worker import registry

        token = self.auth(request)
        info = await self.body(request, registry.Announcement)
        stored = await registry.announce(self.pub.redis, self.pub.keys, token.kid, request.path_params["wid"],
                                         "http-client", info)
        return JSONResponse(Accepted(id=stored).model_dump(), status_code=202)

    async def openapi(self, request: Request):
        return JSONResponse(openapi_spec())


def _wrap(handler):
    async def endpoint(request: Request):
        try:
            return await handler(request)
        except ApiError as exc:
            body = {"error": exc.error}
            if exc.detail is not None:
                body["detail"] = exc.detail
            return JSONResponse(body, status_code=exc.status)
        except OutboxFull as exc:
            return JSONResponse({"error": str(exc)}, status_code=429)
        except BufferFull as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        except MessageTooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        except ValueError as exc:  # bad ids
            return JSONResponse({"error": str(exc)}, status_code=422)
        except ClientDisconnect:  # the caller went away mid-body: nothing to answer, nothing to log
            return Response(status_code=400)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, TimeoutError):
            return JSONResponse({"error": "Redis unreachable: retry later"}, status_code=503)
        except Exception:  # never a plain-text 500 (nor a traceback) to a caller
            log.exception("gateway: %s %s failed", request.method, request.url.path)
            return JSONResponse({"error": "internal error"}, status_code=500)
    return endpoint


def build_app(gateway: Gateway) -> Starlette:
    g = gateway
    routes = [
        Route(f"{PREFIX}/openapi.json", _wrap(g.openapi), methods=["GET"]),
        Route(f"{PREFIX}/workers/{{wid:str}}", _wrap(g.post_worker), methods=["POST"]),
        Route(f"{PREFIX}/{{kind:str}}/{{ident:str}}/messages", _wrap(g.post_message), methods=["POST"]),
        Route(f"{PREFIX}/sessions/{{ident:str}}/stream", _wrap(g.post_stream), methods=["POST"]),
        Route(f"{PREFIX}/sessions/{{ident:str}}/messages/{{mid:str}}", _wrap(g.patch_message), methods=["PATCH"]),
        Route(f"{PREFIX}/sessions/{{ident:str}}/messages/{{mid:str}}", _wrap(g.delete_message), methods=["DELETE"]),
    ]

    async def not_found(request, exc):
        return JSONResponse({"error": "not found"}, status_code=404)

    async def bad_method(request, exc):
        return JSONResponse({"error": "method not allowed"}, status_code=405)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})
    app.state.gateway = g
    return app


def _schema(model) -> dict:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


def openapi_spec() -> dict:
    from cl_scale.worker.registry import Announcement

    schemas = {}
    for model in (MessageIn, UpdateIn, StreamIn, Accepted, Announcement):
        s = _schema(model)
        schemas.update(s.pop("$defs", {}))
        schemas[model.__name__] = s
    schemas["Error"] = {"type": "object", "properties": {"error": {"type": "string"}, "detail": {}},
                        "required": ["error"]}
    errors = {str(c): {"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
              for c, d in ((401, "missing or unknown token"), (403, "token not allowed for this target"),
                           (408, "the body did not arrive in time"), (413, "too large"),
                           (415, "the body is not application/json"), (422, "invalid body or ids"),
                           (429, "outbox full (dead-lettered)"), (503, "Redis unreachable"))}
    accepted = {"202": {"description": "accepted", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Accepted"}}}}, **errors}

    def op(summary, model=None, params=("ident",)):
        out = {"summary": summary, "security": [{"bearer": []}], "responses": accepted,
               "parameters": [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in params]}
        if model:
            out["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        return out

    paths = {f"{PREFIX}/{kind}/{{ident}}/messages": {"post": op(f"Send a message to a {kind[:-1]}", MessageIn)}
             for kind in ("sessions", "users", "threads")}
    paths[f"{PREFIX}/sessions/{{ident}}/stream"] = {"post": op("Stream tokens into one message", StreamIn)}
    paths[f"{PREFIX}/sessions/{{ident}}/messages/{{mid}}"] = {
        "patch": op("Update a message", UpdateIn, ("ident", "mid")),
        "delete": op("Remove a message", None, ("ident", "mid"))}
    paths[f"{PREFIX}/workers/{{wid}}"] = {"post": op("Announce a worker behind this gateway (a heartbeat)",
                                                     Announcement, ("wid",))}
    return {"openapi": "3.1.0", "info": {"title": "cl-scale worker gateway", "version": "1"},
            "paths": paths, "components": {"schemas": schemas,
                                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}


def from_settings(settings) -> Starlette:
    """The gateway an instance mounts under ``/cl-scale/v1`` (``RuntimeSettings``): it signs with the
    first of the instance's own ``CL_SCALE_WORKER_KEYS``."""
    keys = p.parse_keys(settings.worker_keys)
    return build_app(Gateway(settings.redis_url, tokens=p.parse_keys(settings.gateway_tokens, "CL_SCALE_GATEWAY_TOKENS"),
                             key=next(iter(keys.values()), None), prefix=settings.prefix,
                             max_bytes=settings.worker_max_bytes, outbox_max=settings.worker_outbox_max,
                             outbox_ttl=settings.worker_outbox_ttl))


def from_worker_settings(settings) -> Starlette:
    """The standalone gateway (``WorkerSettings``): refuses to start without tokens or a key."""
    from cl_scale.errors import UserError

    tokens = p.parse_keys(settings.gateway_tokens, "CL_SCALE_GATEWAY_TOKENS")
    if not tokens:
        raise UserError("CL_SCALE_GATEWAY_TOKENS: no tokens set: every request would be refused")
    return build_app(Gateway(settings.redis_url, tokens=tokens, key=settings.signing_key(), prefix=settings.prefix,
                             outbox_max=settings.outbox_max, outbox_ttl=settings.outbox_ttl))
