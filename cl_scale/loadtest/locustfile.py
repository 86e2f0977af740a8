"""Locust user for Chainlit: Socket.IO over a raw websocket, Chainlit's handshake, four scenarios.

Locust runs on gevent, which cannot host asyncio clients, so this user speaks Engine.IO v4 /
Socket.IO v5 framing itself on ``websocket-client``; the handshake, the messages and the framing
come from ``cl_scale.wire.chainlit`` (the one description of Chainlit's protocol).

Scenarios (``--scenario`` or ``$CL_SCALE_SCENARIO``):

``chat``       send a message, wait for the app's reply, whatever it says: a round trip ends with
               Chainlit's ``task_end``, and must have brought at least one message (else it fails:
               "no reply")                                           -> ``chat: round trip``
``stream``     ``stream N``; time to first and to last token         -> ``stream: first token``, ``stream: last token``
``push``       a worker publishes a timestamped message through the cl-scale worker SDK into this
               user's session; latency = receive time - timestamp -> ``push: publish``, ``push: delivery``
``reconnect``  every user drops its socket at the same wall-clock instant (every
               ``$CL_SCALE_STORM_PERIOD`` s) and comes back with the same session -> ``reconnect: storm``,
               ``reconnect: first reply``
``all``        each user cycles through the four

Every user also reports ``connect`` (cookie + websocket + Socket.IO connect acknowledged) and, when
the app has an ``on_chat_start``, ``connect: on_chat_start`` (until Chainlit's ``task_end`` for it).

Options (flags or environment): ``--stream-tokens``/``$CL_SCALE_STREAM_TOKENS`` (default 200);
``--spread N``/``$CL_SCALE_SPREAD`` binds user *i* to source address ``127.0.(i % N + 1).1`` so nginx
``ip_hash`` spreads loopback clients over instances; ``--redis-url``/``$CL_SCALE_REDIS_URL`` and
``--worker-key KID:SECRET``/``$CL_SCALE_WORKER_KEY`` for ``push`` (the instances must accept that key in
``CL_SCALE_WORKER_KEYS``). ``stream`` needs an app that answers ``stream N`` with N streamed tokens (``cl_scale/bench/apps/echo.py`` does);
``chat``, ``push`` and ``reconnect`` work against any app.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
import uuid
from urllib.parse import urlsplit

import gevent
import gevent.lock
import websocket
from gevent.queue import Empty, Queue
from locust import User, between, events, task
from locust.exception import StopUser

from cl_scale.loadtest import REQUEST_NAMES, SCENARIOS  # noqa: F401 - no locust import there
from cl_scale.wire import chainlit as protocol

TIMEOUT = float(os.environ.get("CL_SCALE_REPLY_TIMEOUT", "30"))
#: How long a new session may take to start ``on_chat_start`` (not measured; see ``_settle``).
GREETING_WINDOW = 2.0
_user_numbers = itertools.count()


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--scenario", choices=SCENARIOS, env_var="CL_SCALE_SCENARIO", default="chat",
                        help="chat | stream | push | reconnect | all")
    parser.add_argument("--stream-tokens", type=int, env_var="CL_SCALE_STREAM_TOKENS", default=200)
    parser.add_argument("--spread", type=int, env_var="CL_SCALE_SPREAD", default=0,
                        help="bind users to 127.0.N.1 for N in 1..spread (nginx ip_hash on loopback)")
    parser.add_argument("--redis-url", env_var="CL_SCALE_REDIS_URL", default="")
    parser.add_argument("--worker-key", env_var="CL_SCALE_WORKER_KEY", default="", help="KID:SECRET")
    parser.add_argument("--storm-period", type=float, env_var="CL_SCALE_STORM_PERIOD", default=10.0)


# -- worker publishing (push scenario) ------------------------------------------------------------
class GeventPublisher:
    """The worker SDK's ``SyncPublisher`` (public API). Under locust's monkey-patching its event-loop
    thread is a greenlet and its waits are cooperative, so many users can publish at once."""

    def __init__(self, redis_url: str, worker_key: str):
        from cl_scale.worker import SyncPublisher

        kid, _, secret = worker_key.partition(":")
        if not redis_url or not kid or not secret:
            raise ValueError("the push scenario needs --redis-url and --worker-key KID:SECRET")
        self._pub = SyncPublisher(redis_url, kid, secret)

    def send(self, session_id: str, text: str) -> bool:
        self._pub.send(session_id, text, author="Load test")
        return True


_publisher: GeventPublisher | None = None
_publisher_lock = gevent.lock.Semaphore()


def publisher(environment) -> GeventPublisher:
    """One publisher per locust process, shared by every user."""
    global _publisher
    with _publisher_lock:
        if _publisher is None:
            opts = environment.parsed_options
            _publisher = GeventPublisher(opts.redis_url if opts else os.environ.get("CL_SCALE_REDIS_URL", ""),
                                         opts.worker_key if opts else os.environ.get("CL_SCALE_WORKER_KEY", ""))
    return _publisher


# -- the Chainlit connection ------------------------------------------------------------------------
class ChainlitSocket:
    """One Chainlit session over Engine.IO/Socket.IO framing; a reader greenlet answers pings and
    queues ``(receive_time, event, data)``."""

    def __init__(self, base_url: str, session_id: str, source_address: str | None):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        self.secure = parts.scheme == "https"
        self.session_id, self.source_address = session_id, source_address
        self.events: Queue = Queue()
        self.ws: websocket.WebSocket | None = None
        self.reader = None
        self.sid = None

    def _sock(self) -> socket.socket:
        src = (self.source_address, 0) if self.source_address else None
        sock = socket.create_connection((self.host, self.port), timeout=TIMEOUT, source_address=src)
        if self.secure:
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        return sock

    def _set_cookie(self) -> None:
        body = protocol.set_cookie_body(self.session_id)
        sock = self._sock()
        try:
            sock.sendall((f"POST {protocol.SET_COOKIE_PATH} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                          f"Connection: close\r\n\r\n").encode() + body)
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            if " 200 " not in status + " ":
                raise ConnectionError(f"set-session-cookie: {status or 'no response'}")
        finally:
            sock.close()

    def connect(self) -> None:
        self._set_cookie()
        scheme = "wss" if self.secure else "ws"
        url = f"{scheme}://{self.host}:{self.port}{protocol.WEBSOCKET_PATH}"
        self.ws = websocket.create_connection(url, socket=self._sock(), timeout=TIMEOUT,
                                              cookie=f"{protocol.SESSION_COOKIE}={self.session_id}",
                                              host=f"{self.host}:{self.port}")
        kind, _, _ = protocol.decode(self.ws.recv())
        if kind != "open":
            raise ConnectionError("unexpected Engine.IO open")
        self.ws.send(protocol.encode_connect(protocol.auth(self.session_id)))
        while True:
            kind, _, data = protocol.decode(self.ws.recv())
            if kind == "ping":
                self.ws.send(protocol.PONG)
            elif kind == "connected":
                self.sid = data.get("sid")
                break
            elif kind == "refused":
                raise ConnectionError(f"Socket.IO connect refused: {str(data)[:200]}")
        self.ws.send(protocol.encode_event("connection_successful"))
        self.ws.settimeout(None)
        self.reader = gevent.spawn(self._read, self.ws)

    def _read(self, ws) -> None:
        try:
            while True:
                packet = ws.recv()
                now = time.time()
                if not packet:
                    break
                kind, event, data = protocol.decode(packet)
                if kind == "ping":
                    ws.send(protocol.PONG)
                elif kind == "event":
                    self.events.put((now, event, data))
                elif kind in ("disconnected", "close"):
                    break
        except Exception:  # closed (by us or the server)
            pass
        self.events.put((time.time(), "__closed__", ws))

    def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            try:
                ws.send("41")
            except Exception:
                pass
            ws.close(timeout=1)
        if self.reader is not None:
            self.reader.join(timeout=2)
            self.reader.kill(block=False)
            self.reader = None

    def drop(self) -> None:
        """Abrupt drop (no Socket.IO disconnect): what a network blip or a killed tab looks like."""
        ws, self.ws = self.ws, None
        if ws is not None:
            ws.sock and ws.sock.close()
        if self.reader is not None:
            self.reader.join(timeout=2)
            self.reader.kill(block=False)
            self.reader = None

    def send_message(self, text: str) -> str:
        mid, payload = protocol.user_message(text)
        self.ws.send(protocol.encode_event("client_message", payload))
        return mid

    def wait(self, predicate, timeout: float = TIMEOUT):
        """Next queued event for which ``predicate(event, data)`` is true: returns (time, event, data)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching event within {timeout}s")
            try:
                at, event, data = self.events.get(timeout=remaining)
            except Empty:
                continue
            if event == "__closed__":
                if data is self.ws:
                    raise ConnectionError("socket closed by the server")
                continue
            if predicate(event, data):
                return at, event, data

    def drain(self) -> None:
        while not self.events.empty():
            self.events.get_nowait()


def _output(data) -> str:
    return str(data.get("output", "")) if isinstance(data, dict) else ""


class ChainlitUser(User):
    """A Chainlit chat user; the scenario decides what it does in a loop."""

    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.scenario = getattr(opts, "scenario", None) or os.environ.get("CL_SCALE_SCENARIO", "chat")
        self.tokens = getattr(opts, "stream_tokens", 200)
        self.storm_period = getattr(opts, "storm_period", 10.0)
        spread = getattr(opts, "spread", 0)
        number = next(_user_numbers)
        source = f"127.0.{number % spread + 1}.1" if spread else None
        self.cycle = itertools.cycle(("chat", "stream", "push", "reconnect"))
        self.conn = ChainlitSocket(self.host, str(uuid.uuid4()), source)
        self.seq = 0
        self._measure("connect", self.conn.connect)  # a failed connect stops this user
        self._settle()

    def on_stop(self) -> None:
        self.conn.close()

    def _fire(self, name: str, started: float, ms: float, exc: Exception | None = None, length: int = 0) -> None:
        self.environment.events.request.fire(request_type="SIO", name=name, response_time=ms,
                                             response_length=length, exception=exc, context={},
                                             start_time=started, url=self.host)

    def _measure(self, name: str, fn):
        started = time.time()
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - every failure is reported to locust
            self._fire(name, started, (time.perf_counter() - t0) * 1000, exc)
            if name in ("connect", "reconnect: storm"):
                raise StopUser() from exc
            return None
        self._fire(name, started, (time.perf_counter() - t0) * 1000)
        return result

    def _settle(self) -> None:
        """Let ``on_chat_start`` finish before the first message, so its ``task_end`` is not taken for
        the reply's. Chainlit opens it with ``task_start`` as soon as the connect is acknowledged; an
        app without ``on_chat_start`` sends nothing, which the short window accepts."""
        try:
            self.conn.wait(lambda e, d: e == "task_start", timeout=GREETING_WINDOW)
        except TimeoutError:
            return
        self._measure("connect: on_chat_start", lambda: self.conn.wait(lambda e, d: e == "task_end"))

    def _tag(self) -> str:
        self.seq += 1
        return f"{self.conn.session_id[:8]}-{self.seq}"

    # -- scenarios --------------------------------------------------------------------------------
    @task
    def scenario_step(self) -> None:
        scenario = next(self.cycle) if self.scenario == "all" else self.scenario
        getattr(self, f"do_{scenario}")()

    def _reply(self, text: str) -> None:
        """Send ``text`` and wait for the app's whole reply: Chainlit opens it with ``task_start`` and
        closes it with ``task_end`` (a ``task_end`` before that belongs to the connect). A reply
        without any message is a failure: the app answered nothing."""
        self.conn.drain()
        self.conn.send_message(text)
        self.conn.wait(lambda e, d: e == "task_start")
        replies = 0
        while True:
            _, event, _ = self.conn.wait(lambda e, d: e == "task_end" or protocol.is_reply(e, d))
            if event != "task_end":
                replies += 1
            elif replies:
                return
            else:
                raise ValueError("no reply: the app's handler ended without sending a message")

    def do_chat(self) -> None:
        tag = self._tag()
        self._measure("chat: round trip", lambda: self._reply(tag))

    def do_stream(self) -> None:
        self.conn.drain()
        started, t0 = time.time(), time.perf_counter()
        self.conn.send_message(f"stream {self.tokens}")
        try:
            at, _, first = self.conn.wait(lambda e, d: e == "stream_start")
        except Exception as exc:  # noqa: BLE001
            return self._fire("stream: first token", started, (time.perf_counter() - t0) * 1000, exc)
        self._fire("stream: first token", started, (at - started) * 1000)
        stream_id = first.get("id") if isinstance(first, dict) else None
        try:
            # Chainlit ends a stream with new_message for the same step id (the full text).
            at, _, last = self.conn.wait(lambda e, d: e == "new_message" and isinstance(d, dict)
                                         and d.get("id") == stream_id)
            if not _output(last).rstrip().endswith(f"t{self.tokens - 1}"):
                raise ValueError(f"stream incomplete: ends with {_output(last)[-30:]!r}")
        except Exception as exc:  # noqa: BLE001
            return self._fire("stream: last token", started, (time.perf_counter() - t0) * 1000, exc)
        self._fire("stream: last token", started, (at - started) * 1000, length=len(_output(last)))

    def do_push(self) -> None:
        self.conn.drain()
        tag = self._tag()
        started = time.time()
        text = f"push {tag} {started:.6f}"
        if not self._measure("push: publish", lambda: publisher(self.environment).send(self.conn.session_id, text)):
            return
        try:
            at, _, data = self.conn.wait(lambda e, d: e == "new_message" and _output(d).startswith(f"push {tag} "))
            sent = float(_output(data).split()[2])
        except Exception as exc:  # noqa: BLE001
            return self._fire("push: delivery", started, (time.time() - started) * 1000, exc)
        self._fire("push: delivery", started, (at - sent) * 1000)

    def do_reconnect(self) -> None:
        # Everyone sleeps to the same wall-clock boundary, so all users drop and return together.
        now = time.time()
        gevent.sleep((now // self.storm_period + 1) * self.storm_period - now)
        self.conn.drop()

        def come_back():
            self.conn.connect()

        self._measure("reconnect: storm", come_back)
        tag = self._tag()
        self._measure("reconnect: first reply", lambda: self._reply(tag))
