"""The ASGI app an instance serves: health/metrics, session-bound HTTP forwarding, then Chainlit."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from urllib.parse import parse_qs

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cl_scale.runtime import metrics
from cl_scale.runtime.chainlit_hooks import SESSION_ID as _SESSION_ID

log = logging.getLogger("cl_scale.asgi")

# Chainlit endpoints that only work on the instance holding the session.
SESSION_BOUND = ("/project/file", "/project/action", "/project/element", "/mcp")
FORWARDED_HEADER = b"x-cl-scale-forwarded"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length"}


async def _respond(send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


INSTANCE_HEADER = b"x-cl-scale-instance"


DOCTOR_PREFIX = "/cl-scale/doctor/"


def _new_engineio_handshake(scope) -> bool:
    """An Engine.IO request that would open a new connection here (no ``sid`` yet)."""
    return scope["path"].startswith("/ws/socket.io") and b"sid=" not in scope.get("query_string", b"")


class InstanceApp:
    def __init__(self, instance, chainlit_app):
        self.instance = instance
        self.app = chainlit_app
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0))
        self._gateway = None  # worker HTTP gateway (/cl-scale/v1), built on first use

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, self._lifespan_receive(receive), send)
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/healthz":
                return await _respond(send, 200, b'{"status":"alive"}')
            if path == "/readyz":
                ready, checks = self.instance.readiness()
                return await _respond(send, 200 if ready else 503, json.dumps({"ready": ready, **checks}).encode())
            if path == "/metrics":
                self.instance.update_gauges()
                self.instance.readiness()
                return await _respond(send, 200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST.encode())
            if path.startswith(DOCTOR_PREFIX) and self.instance.settings.doctor and self.instance.settings.doctor_token:
                return await self._doctor(scope, send)
            if path.startswith(SESSION_BOUND) and FORWARDED_HEADER not in dict(scope["headers"]):
                return await self._maybe_forward(scope, receive, send)
            if path.startswith("/cl-scale/v1/"):
                if self._gateway is None:
                    from cl_scale.gateway.app import from_settings

                    self._gateway = from_settings(self.instance.settings)
                return await self._gateway(scope, receive, send)
            if self.instance.draining and _new_engineio_handshake(scope):
                # nginx (proxy_next_upstream http_503) retries the handshake on a peer.
                return await _respond(send, 503, b'{"error":"instance draining"}')
            return await self.app(scope, receive, self._tag(send))
        if scope["type"] == "websocket" and self.instance.draining and _new_engineio_handshake(scope):
            return await send({"type": "websocket.close", "code": 1013})  # try again later (elsewhere)
        return await self.app(scope, receive, send)

    async def _doctor(self, scope, send):
        """Probes for ``cl-scale doctor``, which only has the balancer's URL: emit a nonce into a
        session through Redis, and read where a session lives. Served only to callers holding the
        doctor token (``CL_SCALE_DOCTOR_TOKEN``); the thread id is shown only as a digest (doctor
        compares it, nothing more)."""
        from cl_scale.runtime.api import emit_to_session

        given = dict(scope["headers"]).get(b"authorization", b"")
        expected = b"Bearer " + self.instance.settings.doctor_token.encode()
        if not hmac.compare_digest(given, expected):
            return await _respond(send, 401, b'{"error":"doctor probes need the doctor token (Bearer)"}')
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        session_id, nonce = query.get("session_id", ""), query.get("nonce", "")
        me = self.instance.settings.instance_id
        if not _SESSION_ID.fullmatch(session_id):
            return await _respond(send, 422, b'{"error":"session_id missing or malformed"}')
        if scope["path"] == DOCTOR_PREFIX + "emit" and scope["method"] == "POST":
            if not re.fullmatch(r"[a-z0-9]{1,32}", nonce):
                return await _respond(send, 422, b'{"error":"nonce must be 1-32 of [a-z0-9]"}')
            await emit_to_session(session_id, "cl-scale:doctor", {"nonce": nonce, "from": me})
            return await _respond(send, 202, json.dumps({"from": me}).encode())
        if scope["path"] == DOCTOR_PREFIX + "session" and scope["method"] == "GET":
            from cl_scale.runtime.session_store import StoreUnavailable

            try:
                record = await self.instance.store.load(session_id)
            except StoreUnavailable:
                return await _respond(send, 503, json.dumps({"from": me, "error": "redis unavailable"}).encode())
            if record is None:
                return await _respond(send, 404, json.dumps({"from": me, "error": "unknown session"}).encode())
            thread = str(record["snapshot"].get("thread_id") or "")
            body = {"from": me, "owner": record["owner"], "connected": record["connected"],
                    "thread": hashlib.sha256(thread.encode()).hexdigest()[:16] if thread else None}
            return await _respond(send, 200, json.dumps(body).encode())
        return await _respond(send, 404, b'{"error":"not found"}')

    def _tag(self, send):
        """Name the instance on every HTTP response (doctor's stickiness check, debugging)."""
        header = (INSTANCE_HEADER, self.instance.settings.instance_id.encode())

        async def tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        return tagged

    def _lifespan_receive(self, receive):
        """Run cl-scale's start-up/shutdown around Chainlit's lifespan (which ends in ``os._exit``)."""

        async def wrapped():
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.instance.start()
            elif message["type"] == "lifespan.shutdown":
                await self.instance.stop()
            return message

        return wrapped

    # -- forwarding -------------------------------------------------------------------------------
    def upload_limit(self) -> int:
        """Largest upload body: ``CL_SCALE_MAX_UPLOAD_MB``, else Chainlit's own
        ``features.spontaneous_file_upload.max_size_mb``, else 500 MB; plus room for the multipart
        framing. Enforced here because direct pod traffic skips nginx's ``client_max_body_size``."""
        if self.instance.settings.max_upload_bytes:
            return self.instance.settings.max_upload_bytes + MULTIPART_SLACK
        import chainlit.config as cl_config

        upload = cl_config.config.features.spontaneous_file_upload
        mb = (upload.max_size_mb if upload is not None else None) or DEFAULT_UPLOAD_MB
        return mb * 1024 * 1024 + MULTIPART_SLACK

    async def _maybe_forward(self, scope, receive, send):
        """Session-bound request: stream it to the session's owner, or to Chainlit here.

        The body is never held whole: an upload streams through chunk by chunk (the session id is
        in its query string); other session-bound requests are small JSON, buffered up to
        ``BUFFERED_LIMIT`` to find their session id. Over the limit: 413, before or while reading."""
        upload = scope["path"].startswith("/project/file") and scope["method"] == "POST"
        limit = self.upload_limit() if upload else BUFFERED_LIMIT
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            metrics.FORWARDED.labels("too_large").inc()
            return await _respond(send, 413, json.dumps({"detail": f"request body over {limit} bytes"}).encode())
        body = _LimitedBody(receive, limit)
        session_id = _query_session_id(scope)
        if session_id is None and not upload:
            session_id = _body_session_id(await body.peek_all())
        if body.too_large:
            return await _respond(send, 413, json.dumps({"detail": f"request body over {limit} bytes"}).encode())
        if session_id and not self.instance.is_local(session_id):
            owner = await self.instance.store.owner(session_id)
            if owner and owner != self.instance.settings.instance_id:
                url = await self.instance.peer_url(owner)
                if url:
                    return await self._forward(scope, body, url, send)
            metrics.FORWARDED.labels("no_live_owner").inc()
        return await self._to_chainlit(scope, body, send)

    async def _to_chainlit(self, scope, body: "_LimitedBody", send):
        """Chainlit reads the (limited) body; if it runs over the limit Chainlit sees a disconnect and
        whatever it would answer is replaced by a 413."""
        started = False

        async def guarded(message):
            nonlocal started
            if body.too_large:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, body.receive, self._tag(guarded))
        except Exception:
            if not body.too_large:
                raise
        if body.too_large and not started:
            metrics.FORWARDED.labels("too_large").inc()
            await _respond(send, 413, json.dumps({"detail": f"request body over {body.limit} bytes"}).encode())

    async def _forward(self, scope, body: "_LimitedBody", base_url: str, send):
        query = scope.get("query_string", b"").decode()
        url = f"{base_url}{scope['path']}" + (f"?{query}" if query else "")
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.decode().lower() not in _HOP_BY_HOP]
        headers.append((FORWARDED_HEADER.decode(), "1"))
        declared = _content_length(scope)
        if declared is not None:
            headers.append(("content-length", str(declared)))
        request = self.http.build_request(scope["method"], url, headers=headers, content=body.chunks())
        try:
            resp = await self.http.send(request, stream=True)
        except _TooLarge:
            metrics.FORWARDED.labels("too_large").inc()
            return await _respond(send, 413, json.dumps({"detail": f"request body over {body.limit} bytes"}).encode())
        except _ClientGone:
            return None
        except httpx.HTTPError as exc:
            metrics.FORWARDED.labels("error").inc()
            log.warning("forwarding %s to %s failed: %s", scope["path"], base_url, exc.__class__.__name__)
            return await _respond(send, 502, json.dumps({"detail": "session owner unreachable"}).encode())
        try:
            metrics.FORWARDED.labels("ok").inc()
            out_headers = [(k.encode(), v.encode()) for k, v in resp.headers.items()
                           if k.lower() not in _HOP_BY_HOP_RESPONSE]
            await send({"type": "http.response.start", "status": resp.status_code, "headers": out_headers})
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await resp.aclose()


# Session-bound requests other than uploads carry small JSON; an upload streams.
BUFFERED_LIMIT = 1024 * 1024
DEFAULT_UPLOAD_MB = 500  # Chainlit's default features.spontaneous_file_upload.max_size_mb
MULTIPART_SLACK = 64 * 1024
_HOP_BY_HOP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "upgrade"}


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class _LimitedBody:
    """An ASGI request body read through a byte limit. ``peek_all`` buffers it (small bodies only);
    ``receive`` (for an ASGI app) and ``chunks`` (for httpx) then replay that and read on."""

    def __init__(self, receive, limit: int):
        self._receive, self.limit = receive, limit
        self.seen = 0
        self.too_large = False
        self._buffered: list[dict] = []
        self._done = False

    async def _next(self) -> dict:
        if self._buffered:
            return self._buffered.pop(0)
        if self._done:
            return {"type": "http.request", "body": b"", "more_body": False}
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.too_large = True
                return {"type": "http.disconnect"}
            self._done = not message.get("more_body", False)
        return message

    async def peek_all(self) -> bytes:
        parts, messages = [], []
        while not self._done and not self.too_large:
            message = await self._next()
            messages.append(message)
            if message["type"] != "http.request":
                break
            parts.append(message.get("body", b""))
        self._buffered = messages
        return b"".join(parts)

    async def receive(self) -> dict:
        return await self._next()

    async def chunks(self):
        while True:
            message = await self._next()
            if message["type"] != "http.request":
                raise _TooLarge() if self.too_large else _ClientGone()
            if message.get("body"):
                yield message["body"]
            if not message.get("more_body", False):
                return


def _content_length(scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            return int(value) if value.isdigit() and len(value) < 19 else None
    return None


def _query_session_id(scope) -> str | None:
    query = parse_qs(scope.get("query_string", b"").decode(errors="replace"))
    value = query.get("session_id", [None])[0]
    return value if value and _SESSION_ID.fullmatch(value) else None


def _body_session_id(body: bytes) -> str | None:
    if body[:1] != b"{":
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        value = data.get("sessionId") or data.get("session_id")
        return value if isinstance(value, str) and _SESSION_ID.fullmatch(value) else None
    return None


