"""The HTTP gateway behind a real uvicorn socket, for what an in-process client cannot do: bodies that
stall, callers that hang up mid-body, bytes that are not UTF-8. Each refused with a status, nothing
logged as an error, and the server keeps answering."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

import pytest
import redis
import uvicorn

from cl_scale.gateway.app import Gateway, build_app
from cl_scale.listen import bind
from cl_scale.wire import messages as m
from cl_scale.wire.keyspace import Keyspace
from cl_scale.wire.records import SessionRecord

SID = "bob-session-0001"
TOKEN = "token-one-0123456789"
PATH = f"/cl-scale/v1/sessions/{SID}/messages"


@pytest.fixture
def port(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    r.hset(Keyspace().session(SID), mapping=SessionRecord(owner="inst-a", user="bob", thread="t", snapshot={}).fields())
    app = build_app(Gateway(redis_server.url, tokens=m.parse_keys(f"t1:{TOKEN}"),
                            key=m.parse_keys("k1:secret-one")["k1"], body_seconds=1))
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="info"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)
    sock.close()
    r.close()


def request(port: int, body: bytes, *, length: int | None = None, ctype: str = "application/json",
            hang_up: bool = False) -> tuple[int, dict] | None:
    """One raw HTTP/1.1 POST: ``length`` may promise more than ``body`` (a stalled body); with
    ``hang_up`` the caller closes right after sending."""
    head = (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(head + body)
        if hang_up:
            return None
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1] or b"{}")


def test_a_stalled_body_is_a_408_and_frees_the_connection(port):
    status, body = request(port, b'{"text": "he', length=200)
    assert status == 408 and "did not arrive within 1s" in body["error"]
    assert request(port, b'{"text": "after"}')[0] == 202


def test_callers_hanging_up_mid_body_are_not_errors(port, caplog):
    caplog.set_level(logging.INFO)
    for _ in range(30):
        request(port, b'{"text": "half', length=5000, hang_up=True)
    assert request(port, b'{"text": "after"}')[0] == 202
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy][:3]


BAD_BODIES = [
    (b'{"text": "\xff\xfe"}', 422),             # not UTF-8
    (b'{"text": "x", "id": "a\\u0000b"}', 422),  # NUL in a message id
    (b'{"text": "x", "id": "\xf0\x9f\x98\x80"}', 422),  # emoji id
    (b'[1, 2]', 422),
    (b'', 422),
    (b'{"text": "x"' + b" " * 70_000 + b"}", 413),
]
#: Not a table, but bad input all the same: a body that stalls, a caller that hangs up mid-body.
SLOW_OR_GONE = 2


@pytest.mark.parametrize("body, status", BAD_BODIES)
def test_bytes_that_are_not_a_message_are_refused(port, body, status):
    got, answer = request(port, body)
    assert got == status and answer["error"], answer
