"""The Chainlit client (asyncio): speaks Chainlit's protocol (``wire.chainlit``) as the browser does.

Handshake: POST ``/set-session-cookie``, connect to ``/ws/socket.io`` with Chainlit's ``auth``,
emit ``connection_successful`` after every (re)connect; reconnects by itself with backoff. Used by
``cl-scale doctor``, the benchmark and the tests. ``source_address`` binds the client to a loopback
address so ``ip_hash`` spreads clients over instances; ``http`` shares one aiohttp session among
many clients (thousands of idle sockets in the capacity benchmark).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import socketio

from cl_scale.wire import chainlit as protocol


class ChainlitClient:
    def __init__(self, url: str, session_id: str | None = None, *, thread_id: str | None = None,
                 source_address: str | None = None, transports=("websocket",), cookies: dict | None = None,
                 reconnection: bool = True, client_type: str = "webapp", trace_configs: list | None = None,
                 headers: dict | None = None, http: aiohttp.ClientSession | None = None):
        self.url = url.rstrip("/")
        self.trace_configs = trace_configs  # aiohttp request tracing (doctor reads response headers)
        self.headers = dict(headers or {})  # sent on every request (e.g. the header a balancer hashes)
        self.session_id = session_id or str(uuid.uuid4())
        self.thread_id = thread_id
        self.source_address = source_address
        self.transports = list(transports)
        self.cookies = dict(cookies or {})
        self.client_type = client_type
        self.events: list[tuple[float, str, object]] = []
        self.counts: dict[str, int] = {}  # per event name, for O(1) wait predicates on hot streams
        self.connects = 0
        self._changed = asyncio.Event()
        self._http: aiohttp.ClientSession | None = http
        self._own_http = http is None
        self.sio = socketio.AsyncClient(reconnection=reconnection, reconnection_delay=0.2,
                                        reconnection_delay_max=1.0, randomization_factor=0.2)
        self.sio.on("connect", self._on_connect)
        self.sio.on("*", self._on_any)
        self.ask_answer = None  # callable(ask_payload) -> answer dict for AskUserMessage
        #: Called with (event, data) for every event, as it arrives (benchmarks time arrivals here).
        self.listeners: list = []

    # -- connection -------------------------------------------------------------------------------
    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            connector = aiohttp.TCPConnector(local_addr=(self.source_address, 0) if self.source_address else None,
                                             force_close=True)
            # engine.io moves an explicit Cookie header into this jar: it must be a real one.
            self._http = aiohttp.ClientSession(connector=connector, trace_configs=self.trace_configs,
                                               headers=self.headers,
                                               cookie_jar=aiohttp.CookieJar(unsafe=True, quote_cookie=False))
        return self._http

    async def connect(self, timeout: float = 10.0) -> None:
        http = self._session()
        async with http.post(f"{self.url}{protocol.SET_COOKIE_PATH}", json={"session_id": self.session_id},
                             cookies=self.cookies) as resp:
            resp.raise_for_status()
        self.sio.eio.http = http
        self.sio.eio.external_http = True
        cookie = "; ".join(f"{k}={v}" for k, v in {**self.cookies, protocol.SESSION_COOKIE: self.session_id}.items())
        await self.sio.connect(self.url, socketio_path=protocol.SOCKETIO_PATH, transports=self.transports,
                               headers={"Cookie": cookie}, auth=self.auth, wait_timeout=timeout)
        await self.wait_for(lambda: self.connects >= 1, timeout)

    async def login_with_header(self, headers: dict) -> None:
        """Header authentication (``@cl.header_auth_callback``): keep the access token cookie."""
        async with self._session().post(f"{self.url}/auth/header", headers=headers) as resp:
            resp.raise_for_status()
            for name, morsel in resp.cookies.items():
                self.cookies[name] = morsel.value

    @property
    def auth(self) -> dict:
        return protocol.auth(self.session_id, thread_id=self.thread_id, client_type=self.client_type)

    async def _on_connect(self):
        self.connects += 1
        self._notify()
        await self.sio.emit("connection_successful")

    async def _on_any(self, event, data=None):
        for listener in self.listeners:
            listener(event, data)
        self.events.append((time.monotonic(), event, data))
        self.counts[event] = self.counts.get(event, 0) + 1
        self._notify()
        if event == "ask" and self.ask_answer is not None:
            return self.ask_answer(data)
        return None

    def _notify(self):
        self._changed.set()
        self._changed = asyncio.Event()

    async def close(self) -> None:
        try:
            await self.sio.disconnect()
        finally:
            if self._http is not None and self._own_http:
                await self._http.close()

    # -- chat -------------------------------------------------------------------------------------
    async def send(self, text: str) -> str:
        message_id, payload = protocol.user_message(text, thread_id=self.thread_id)
        await self.sio.emit("client_message", payload)
        return message_id

    async def send_with_files(self, text: str, file_refs: list[dict]) -> str:
        message_id, payload = protocol.user_message(text, thread_id=self.thread_id, files=file_refs)
        await self.sio.emit("client_message", payload)
        return message_id

    def messages(self, since: int = 0) -> list[dict]:
        """Assistant messages (new_message payloads) received, in order."""
        return [d for _, e, d in self.events[since:] if e == "new_message" and isinstance(d, dict)
                and d.get("type") != "user_message"]

    async def wait_for(self, predicate, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout}s; last events: "
                                   f"{[e for _, e, _ in self.events[-8:]]}")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass

    async def ask(self, text: str, timeout: float = 10.0, contains: str | None = None) -> dict:
        """Send a message and return the next assistant message (optionally one containing ``contains``)."""
        start = len(self.events)
        await self.send(text)
        return await self.wait_for(lambda: next((m for m in self.messages(start)
                                                 if contains is None or contains in str(m.get("output"))), None),
                                   timeout)

    async def upload(self, filename: str, content: bytes, content_type: str = "text/plain",
                     base_url: str | None = None) -> dict:
        data = aiohttp.FormData()
        data.add_field("file", content, filename=filename, content_type=content_type)
        async with self._session().post(f"{(base_url or self.url).rstrip('/')}/project/file",
                                        params={"session_id": self.session_id}, data=data) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"upload failed: {resp.status} {body}")
            return json.loads(body)
