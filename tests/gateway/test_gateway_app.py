"""The HTTP gateway in process (Starlette's TestClient) against a real redis-server: auth, scopes
checked against the stored session, schema, limits, what lands in the outbox, errors as JSON."""

from __future__ import annotations

import pytest
import redis
from starlette.testclient import TestClient

from cl_scale.gateway.app import Gateway, build_app
from cl_scale.wire import messages as m
from cl_scale.wire.keyspace import Keyspace
from cl_scale.wire.records import SessionRecord

KS = Keyspace()
ALICE, BOB = "alice-session-01", "bob-session-0001"
TOKENS = "t1:token-one,ta:token-alice;users=alice,tt:token-thread;threads=thread-b"
AUTH = {"Authorization": "Bearer token-one"}


@pytest.fixture
def gateway(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    for sid, user, thread in ((ALICE, "alice", "thread-a"), (BOB, "bob", "thread-b")):
        r.hset(KS.session(sid), mapping=SessionRecord(owner="inst-a", user=user, thread=thread, snapshot={}).fields())
    app = build_app(Gateway(redis_server.url, tokens=m.parse_keys(TOKENS), key=m.parse_keys("k1:secret-one")["k1"]))
    with TestClient(app, raise_server_exceptions=False) as http:
        yield http, r, redis_server
    r.close()


def bodies(r, sid) -> list[m.Body]:
    return [m.Body.model_validate_json(f[b"body"]) for _, f in r.xrange(KS.outbox(sid))]


def test_messages_streams_updates_and_removals_become_signed_outbox_entries(gateway):
    http, r, _ = gateway
    base = f"/cl-scale/v1/sessions/{BOB}"
    assert http.post(f"{base}/messages", headers=AUTH, json={"text": "hi", "id": "m1", "author": "Bot"}).json() == \
        {"id": "m1", "status": "accepted"}
    assert http.post(f"{base}/stream", headers=AUTH, json={"tokens": ["a", "b"], "id": "s1", "end": False}).status_code == 202
    assert http.post(f"{base}/stream", headers=AUTH, json={"tokens": ["c"], "id": "s1", "offset": 2}).status_code == 202
    assert http.patch(f"{base}/messages/m1", headers=AUTH, json={"text": "edited"}).status_code == 202
    assert http.delete(f"{base}/messages/m1", headers=AUTH).status_code == 202
    got = bodies(r, BOB)
    assert [(b.kind, b.eid, b.content) for b in got[:5]] == [
        ("message", "m1", "hi"), ("token", "s1:1", "a"), ("token", "s1:2", "b"), ("token", "s1:3", "c"),
        ("stream_end", "s1:end", "c")]
    assert [b.kind for b in got[5:]] == ["update", "remove"] and got[0].author == "Bot"
    for _, fields in r.xrange(KS.outbox(BOB)):
        assert m.signature_ok(b"secret-one", fields[b"body"], fields[b"sig"].decode())
    spec = http.get("/cl-scale/v1/openapi.json").json()
    assert "/cl-scale/v1/sessions/{ident}/messages" in spec["paths"]


def test_scoped_tokens_are_checked_against_what_redis_holds(gateway):
    http, r, _ = gateway
    alice_token = {"Authorization": "Bearer token-alice"}
    assert http.post(f"/cl-scale/v1/sessions/{ALICE}/messages", headers=alice_token, json={"text": "ok"}).status_code == 202
    assert http.post(f"/cl-scale/v1/sessions/{BOB}/messages", headers=alice_token, json={"text": "no"}).status_code == 403
    assert http.post("/cl-scale/v1/users/bob/messages", headers=alice_token, json={"text": "no"}).status_code == 403
    thread_token = {"Authorization": "Bearer token-thread"}
    assert http.post(f"/cl-scale/v1/sessions/{BOB}/messages", headers=thread_token, json={"text": "ok"}).status_code == 202
    assert http.post(f"/cl-scale/v1/sessions/{ALICE}/messages", headers=thread_token, json={"text": "no"}).status_code == 403
    assert [b.content for b in bodies(r, BOB)] == ["ok"] and [b.content for b in bodies(r, ALICE)] == ["ok"]


BAD_REQUESTS = [
    ({}, f"/cl-scale/v1/sessions/{BOB}/messages", {"json": {"text": "x"}}, 401),
    ({"Authorization": "Bearer nope"}, f"/cl-scale/v1/sessions/{BOB}/messages", {"json": {"text": "x"}}, 401),
    (AUTH, f"/cl-scale/v1/sessions/{BOB}/messages", {"json": {"text": 5}}, 422),
    (AUTH, f"/cl-scale/v1/sessions/{BOB}/messages", {"json": {"txt": "x"}}, 422),
    ({**AUTH, "content-type": "application/json"}, f"/cl-scale/v1/sessions/{BOB}/messages",
     {"content": b"x" * 200_000}, 413),
    (AUTH, f"/cl-scale/v1/sessions/{BOB}/messages", {"content": b'{"text": "x"}'}, 415),  # not declared as JSON
    (AUTH, "/cl-scale/v1/sessions/bad%0Aid-1234/messages", {"json": {"text": "x"}}, 422),
    (AUTH, "/cl-scale/v1/sessions/a%7Bb%7D-12345678/messages", {"json": {"text": "x"}}, 422),
    (AUTH, f"/cl-scale/v1/sessions/{'s' * 5000}/messages", {"json": {"text": "x"}}, 422),
    (AUTH, f"/cl-scale/v1/sessions/{BOB}/messages", {"json": {"text": "x", "id": "a\nb"}}, 422),
    (AUTH, f"/cl-scale/v1/sessions/{BOB}/stream", {"json": {"tokens": ["a"], "offset": 10 ** 29}}, 422),
    (AUTH, "/cl-scale/v1/users/eve%7Bx%7D/messages", {"json": {"text": "x"}}, 422),
    (AUTH, f"/cl-scale/v1/planets/{BOB}/messages", {"json": {"text": "x"}}, 404),
]


@pytest.mark.parametrize("headers, path, kwargs, status", BAD_REQUESTS)
def test_bad_requests_are_refused_as_json(gateway, headers, path, kwargs, status):
    http, r, _ = gateway
    resp = http.post(path, headers=headers, **kwargs)
    assert resp.status_code == status and resp.json()["error"], resp.text
    assert bodies(r, BOB) == []


def test_redis_failure_during_a_scoped_check_is_a_json_503(gateway):
    http, r, server = gateway
    token = {"Authorization": "Bearer token-alice"}
    server.stop()
    for path in (f"/cl-scale/v1/sessions/{ALICE}/messages", f"/cl-scale/v1/sessions/{BOB}/messages"):
        resp = http.post(path, headers=token, json={"text": "x"})
        assert resp.status_code == 503, (resp.status_code, resp.text)
        assert resp.headers["content-type"] == "application/json" and "Redis" in resp.json()["error"]

