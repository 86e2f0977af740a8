"""Session-bound HTTP requests (uploads, actions, elements, MCP) on whichever instance they land.

Chainlit serves them only on the instance holding the session; a request for a session owned by a
peer is streamed to the owner (its advertised URL from the instance registry), its response streamed
back. Bodies are never held whole: an upload streams through chunk by chunk (its session id is in
the query string); other session-bound requests are small JSON, buffered up to ``BUFFERED_LIMIT`` to
find their session id. Over the limit: 413, before or while reading.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs

import httpx

from cl_scale.runtime import metrics
from cl_scale.wire.keyspace import valid_session_id

log = logging.getLogger("cl_scale.forwarding")

# Chainlit endpoints that only work on the instance holding the session.
SESSION_BOUND = ("/project/file", "/project/action", "/project/element", "/mcp")
FORWARDED_HEADER = b"x-cl-scale-forwarded"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length"}
BUFFERED_LIMIT = 1024 * 1024
DEFAULT_UPLOAD_MB = 500  # Chainlit's default features.spontaneous_file_upload.max_size_mb
MULTIPART_SLACK = 64 * 1024
_HOP_BY_HOP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "upgrade"}


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class LimitedBody:
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
            # The body is over: what follows is the server's own news (a disconnect), so wait for it.
            # Answering an empty request again at once would let Starlette's disconnect listener
            # (FileResponse: downloads) spin without ever yielding, and the response never go out.
            return await self._receive()
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
    return value if value and valid_session_id(value) else None


def _body_session_id(body: bytes) -> str | None:
    if body[:1] != b"{":
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        value = data.get("sessionId") or data.get("session_id")
        return value if isinstance(value, str) and valid_session_id(value) else None
    return None




async def respond(send, status: int, body: bytes, content_type: bytes = b"application/json", headers=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def too_large(limit: int) -> bytes:
    return json.dumps({"detail": f"request body over {limit} bytes"}).encode()


class Forwarder:
    """:param instance: the running instance (is a session local, who owns it, where is the owner).
    :param chainlit: Chainlit's ASGI app (local sessions).
    :param upload_limit: bytes an upload body may have (multipart framing included).
    :param tag: wraps ``send`` to name the instance on responses.
    """

    def __init__(self, instance, chainlit, *, upload_limit: int, tag):
        self.instance, self.app, self.upload_limit, self._tag = instance, chainlit, upload_limit, tag
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __call__(self, scope, receive, send):
        """Stream a session-bound request to the session's owner, or to Chainlit here."""
        upload = scope["path"].startswith("/project/file") and scope["method"] == "POST"
        limit = self.upload_limit if upload else BUFFERED_LIMIT
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            metrics.FORWARDED.labels("too_large").inc()
            return await respond(send, 413, too_large(limit))
        body = LimitedBody(receive, limit)
        session_id = _query_session_id(scope)
        if session_id is None and not upload:
            session_id = _body_session_id(await body.peek_all())
        if body.too_large:
            return await respond(send, 413, too_large(limit))
        if session_id and not self.instance.is_local(session_id):
            owner = await self.instance.store.owner(session_id)
            if owner and owner != self.instance.settings.instance_id:
                url = await self.instance.peer_url(owner)
                if url:
                    return await self._forward(scope, body, url, send)
            metrics.FORWARDED.labels("no_live_owner").inc()
        return await self._to_chainlit(scope, body, send)

    async def _to_chainlit(self, scope, body: "LimitedBody", send):
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
            await respond(send, 413, too_large(body.limit))

    async def _forward(self, scope, body: "LimitedBody", base_url: str, send):
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
            return await respond(send, 413, too_large(body.limit))
        except _ClientGone:
            return None
        except httpx.HTTPError as exc:
            metrics.FORWARDED.labels("error").inc()
            log.warning("forwarding %s to %s failed: %s", scope["path"], base_url, exc.__class__.__name__)
            return await respond(send, 502, json.dumps({"detail": "session owner unreachable"}).encode())
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


