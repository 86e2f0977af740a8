"""The ASGI app an instance serves: health/metrics, session-bound HTTP forwarding, then Chainlit."""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import parse_qs

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cl_scale.runtime import metrics

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
            if path.startswith(DOCTOR_PREFIX) and self.instance.settings.doctor:
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
        session through Redis, and read where a session lives. Nothing else is exposed."""
        from cl_scale.runtime.api import emit_to_session
        from cl_scale.runtime.chainlit_hooks import _SESSION_ID

        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        session_id, nonce = query.get("session_id", ""), query.get("nonce", "")
        me = self.instance.settings.instance_id
        if not _SESSION_ID.match(session_id):
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
            body = {"from": me, "owner": record["owner"], "connected": record["connected"],
                    "thread_id": record["snapshot"].get("thread_id")}
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
    async def _maybe_forward(self, scope, receive, send):
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        session_id = _session_id(scope, body)
        if session_id and not self.instance.is_local(session_id):
            owner = await self.instance.store.owner(session_id)
            if owner and owner != self.instance.settings.instance_id:
                url = await self.instance.peer_url(owner)
                if url:
                    return await self._forward(scope, body, url, send)
            metrics.FORWARDED.labels("no_live_owner").inc()

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _forward(self, scope, body: bytes, base_url: str, send):
        query = scope.get("query_string", b"").decode()
        url = f"{base_url}{scope['path']}" + (f"?{query}" if query else "")
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.decode().lower() not in _HOP_BY_HOP]
        headers.append((FORWARDED_HEADER.decode(), "1"))
        try:
            resp = await self.http.request(scope["method"], url, headers=headers, content=body)
        except httpx.HTTPError as exc:
            metrics.FORWARDED.labels("error").inc()
            log.warning("forwarding %s to %s failed: %s", scope["path"], base_url, exc)
            return await _respond(send, 502, json.dumps({"detail": "session owner unreachable"}).encode())
        metrics.FORWARDED.labels("ok").inc()
        out_headers = [(k.encode(), v.encode()) for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP]
        out_headers.append((b"content-length", str(len(resp.content)).encode()))
        await send({"type": "http.response.start", "status": resp.status_code, "headers": out_headers})
        await send({"type": "http.response.body", "body": resp.content})


def _session_id(scope, body: bytes) -> str | None:
    query = parse_qs(scope.get("query_string", b"").decode())
    if query.get("session_id"):
        return query["session_id"][0]
    if body[:1] == b"{":
        try:
            data = json.loads(body)
        except ValueError:
            return None
        if isinstance(data, dict):
            value = data.get("sessionId") or data.get("session_id")
            return value if isinstance(value, str) else None
    return None
