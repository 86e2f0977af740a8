"""Junk sent to an instance's own endpoints: refused with a 4xx before Chainlit sees it (stock Chainlit
answers some of these with a 500, or sets the junk as a cookie), and the instance keeps serving."""

from __future__ import annotations

import httpx

from cl_scale.wire.chainlit import SESSION_COOKIE, SET_COOKIE_PATH, SOCKETIO_PATH

GOOD = "3f2c1a9e-4b7d-4c1e-9a55-0d6c2b1e8f70"

#: (what, request kwargs, expected status)
COOKIE_CASES = [
    ("not JSON", {"content": b"session_id=abc"}, 422),
    ("not UTF-8", {"content": b'{"session_id": "\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8"}'}, 422),
    ("a list", {"json": [GOOD]}, 422),
    ("a number id", {"json": {"session_id": 12345678}}, 422),
    ("a null id", {"json": {"session_id": None}}, 422),
    ("a 500-char id", {"json": {"session_id": "s" * 500}}, 422),
    ("a 5000-char id", {"json": {"session_id": "s" * 5000}}, 413),
    ("an id with a newline", {"json": {"session_id": "abcd\nSet-Cookie: x=1"}}, 422),
    ("an id with a semicolon", {"json": {"session_id": "abcdefgh; Path=/"}}, 422),
    ("an empty body", {"content": b""}, 422),
    ("a 10 KB body", {"json": {"session_id": GOOD, "pad": "x" * 10_000}}, 413),
]

ENGINEIO_JUNK = ["EIO=4&transport=polling&sid=nope", "EIO=9&transport=polling", "transport=carrier-pigeon"]


def test_set_session_cookie_refuses_junk_and_keeps_good_ids(cluster):
    (inst,) = cluster.start(1).instances
    with httpx.Client(base_url=inst.url, timeout=10) as http:
        for what, kwargs, status in COOKIE_CASES:
            resp = http.post(SET_COOKIE_PATH, **kwargs)
            assert resp.status_code == status, (what, resp.status_code, resp.text)
            assert SESSION_COOKIE not in resp.headers.get("set-cookie", ""), what
        good = http.post(SET_COOKIE_PATH, json={"session_id": GOOD})
        assert good.status_code == 200 and f"{SESSION_COOKIE}={GOOD}" in good.headers["set-cookie"]
        # Engine.IO junk is python-socketio's to refuse: a 400, never a 500, and the instance lives on
        for query in ENGINEIO_JUNK:
            assert http.post(f"{SOCKETIO_PATH}/?{query}", content=b"4\xff\xfe").status_code == 400, query
        assert http.get("/readyz").status_code == 200
