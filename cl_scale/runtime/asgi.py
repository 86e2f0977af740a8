"""The ASGI app an instance serves: health, metrics, doctor probes, session-bound forwarding, the
worker gateway, then Chainlit."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from pathlib import Path
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cl_scale.runtime import metrics
from cl_scale.runtime.assets import PREFIX as ASSETS_PREFIX
from cl_scale.runtime.assets import Assets, cache_headers
from cl_scale.runtime.forwarding import (
    DEFAULT_UPLOAD_MB,
    FORWARDED_HEADER,
    MULTIPART_SLACK,
    SESSION_BOUND,
    Forwarder,
    LimitedBody,
    respond,
)
from cl_scale.wire.chainlit import SET_COOKIE_PATH
from cl_scale.wire.keyspace import room_name, valid_session_id

log = logging.getLogger("cl_scale.asgi")

INSTANCE_HEADER = b"x-cl-scale-instance"
DOCTOR_PREFIX = "/cl-scale/doctor/"
GATEWAY_PREFIX = "/cl-scale/v1/"


def _new_engineio_handshake(scope) -> bool:
    """An Engine.IO request that would open a new connection here (no ``sid`` yet)."""
    return scope["path"].startswith("/ws/socket.io") and b"sid=" not in scope.get("query_string", b"")


class InstanceApp:
    """:param instance: the running instance.
    :param chainlit_app: Chainlit's ASGI app.
    :param upload_limit_mb: Chainlit's own upload limit (``CL_SCALE_MAX_UPLOAD_MB`` wins), None if unset.
    """

    def __init__(self, instance, chainlit_app, *, upload_limit_mb: int | None = None):
        self.instance = instance
        self.app = chainlit_app
        settings = instance.settings
        limit = settings.max_upload_bytes or (upload_limit_mb or DEFAULT_UPLOAD_MB) * 1024 * 1024
        self.forwarder = Forwarder(instance, chainlit_app, upload_limit=limit + MULTIPART_SLACK, tag=self._tag)
        self.admin_port = settings.admin_port
        self.assets = None
        if settings.precompress:
            import chainlit
            from chainlit.server import build_dir

            self.assets = Assets(Path(build_dir), settings.assets_cache and Path(settings.assets_cache),
                                 version=getattr(chainlit, "__version__", ""))
        self._building = None

    def _listener_refuses(self, scope) -> bool:
        """With an admin port, ``/metrics`` and the gateway are served there only, and the admin port
        serves nothing else but the health checks: what a public balancer routes to the app port
        can never reach them."""
        if self.admin_port is None:
            return False
        server = scope.get("server")
        on_admin = bool(server) and server[1] == self.admin_port
        path = scope["path"]
        admin_path = path == "/metrics" or path.startswith(GATEWAY_PREFIX)
        if on_admin:
            return scope["type"] != "http" or not (admin_path or path in ("/healthz", "/readyz"))
        return admin_path

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, self._lifespan_receive(receive), send)
        if self._listener_refuses(scope):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await respond(send, 404, b'{"error":"not found"}')
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/healthz":
                return await respond(send, 200, b'{"status":"alive"}')
            if path == "/readyz":
                ready, checks = self.instance.readiness()
                return await respond(send, 200 if ready else 503, json.dumps({"ready": ready, **checks}).encode())
            if path == "/metrics":
                self.instance.update_gauges()
                self.instance.readiness()
                return await respond(send, 200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST.encode())
            if path.startswith(DOCTOR_PREFIX) and self.instance.settings.doctor and self.instance.settings.doctor_token:
                return await self._doctor(scope, send)
            if path == SET_COOKIE_PATH and scope["method"] == "POST":
                return await self._set_session_cookie(scope, receive, send)
            if path.startswith(SESSION_BOUND) and FORWARDED_HEADER not in dict(scope["headers"]):
                return await self.forwarder(scope, receive, send)
            if path.startswith(GATEWAY_PREFIX):
                return await self.instance.gateway_app()(scope, receive, send)
            if self.instance.draining and _new_engineio_handshake(scope):
                # nginx (proxy_next_upstream http_503) retries the handshake on a peer.
                return await respond(send, 503, b'{"error":"instance draining"}')
            if self.assets is not None and path.startswith(ASSETS_PREFIX) and await self.assets.serve(scope, send):
                return None
            return await self.app(scope, receive, self._tag(send, path))
        if scope["type"] == "websocket" and self.instance.draining and _new_engineio_handshake(scope):
            return await send({"type": "websocket.close", "code": 1013})  # try again later (elsewhere)
        return await self.app(scope, receive, send)

    async def _doctor(self, scope, send):
        """Probes for ``cl-scale doctor``, which only has the balancer's URL: emit a nonce into a
        session through Redis, and read where a session lives. Served only to callers holding the
        doctor token (``CL_SCALE_DOCTOR_TOKEN``); the thread id is shown only as a digest (doctor
        compares it, nothing more)."""
        given = dict(scope["headers"]).get(b"authorization", b"")
        expected = b"Bearer " + self.instance.settings.doctor_token.encode()
        if not hmac.compare_digest(given, expected):
            return await respond(send, 401, b'{"error":"doctor probes need the doctor token (Bearer)"}')
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode(errors="replace")).items()}
        session_id, nonce = query.get("session_id", ""), query.get("nonce", "")
        me = self.instance.settings.instance_id
        if not valid_session_id(session_id):
            return await respond(send, 422, b'{"error":"session_id missing or malformed"}')
        if scope["path"] == DOCTOR_PREFIX + "emit" and scope["method"] == "POST":
            if not re.fullmatch(r"[a-z0-9]{1,32}", nonce):
                return await respond(send, 422, b'{"error":"nonce must be 1-32 of [a-z0-9]"}')
            await self.instance.sio.emit("cl-scale:doctor", {"nonce": nonce, "from": me},
                                         room=room_name("session", session_id))
            return await respond(send, 202, json.dumps({"from": me}).encode())
        if scope["path"] == DOCTOR_PREFIX + "session" and scope["method"] == "GET":
            from cl_scale.runtime.session_store import StoreUnavailable

            try:
                record = await self.instance.store.load(session_id)
            except StoreUnavailable:
                return await respond(send, 503, json.dumps({"from": me, "error": "redis unavailable"}).encode())
            if record is None:
                return await respond(send, 404, json.dumps({"from": me, "error": "unknown session"}).encode())
            thread = record.thread or ""
            body = {"from": me, "owner": record.owner, "connected": record.connected,
                    "thread": hashlib.sha256(thread.encode()).hexdigest()[:16] if thread else None}
            return await respond(send, 200, json.dumps(body).encode())
        return await respond(send, 404, b'{"error":"not found"}')

    async def _set_session_cookie(self, scope, receive, send):
        """Chainlit sets whatever ``session_id`` it is given as a cookie (and answers junk with a 500):
        accept only a JSON object with a valid session id, small, before Chainlit sees it."""
        body = LimitedBody(receive, 4096)
        raw = await body.peek_all()
        if body.too_large:
            return await respond(send, 413, b'{"detail":"request body over 4096 bytes"}')
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not valid_session_id(data.get("session_id")):
            return await respond(send, 422, b'{"detail":"session_id: must be a session id (8-128 of letters, '
                                            b'digits, _ and -)"}')
        return await self.app(scope, body.receive, self._tag(send))

    def _tag(self, send, path: str = ""):
        """Name the instance on every HTTP response (doctor's stickiness check, debugging); and say
        how long what Chainlit serves at ``path`` may be cached (``runtime.assets``)."""
        header = (INSTANCE_HEADER, self.instance.settings.instance_id.encode())

        async def tagged(message):
            if message["type"] == "http.response.start":
                headers = cache_headers(path, message.get("status", 200), list(message.get("headers", [])))
                message = {**message, "headers": [*headers, header]}
            await send(message)

        return tagged

    def _lifespan_receive(self, receive):
        """Run cl-scale's start-up/shutdown around Chainlit's lifespan (which ends in ``os._exit``)."""

        async def wrapped():
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.instance.start()
                if self.assets is not None:  # in the background: until built, Chainlit serves them
                    self._building = asyncio.get_running_loop().create_task(self.assets.build())
            elif message["type"] == "lifespan.shutdown":
                await self.instance.stop()
            return message

        return wrapped
