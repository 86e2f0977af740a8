"""Unsigned, forged, wrong-key, too-old, out-of-scope and garbage entries: dead-lettered with a reason."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.processes import http_status
from cl_scale.wire import messages as p
from cl_scale.worker import Publisher
from tests.worker.helpers import dlq_until, raw_publish, signed, started, worker_texts

K1 = b"secret-one"


async def test_bad_entries_are_dead_lettered_never_delivered(cluster, worker_env):
    (a,) = cluster.start(1, env=worker_env).instances
    client = await started(ChainlitClient(a.url))
    sid = client.session_id
    try:
        cases = {
            # First into the empty outbox: the wake-up would carry it, but a newline in a field
            # before the body must not shift the fields (the owner reads it from the stream instead).
            "unknown key id 'k1\\nx'": signed(sid, K1, kid="k1\nx", text="w-newline-kid"),
            "unsigned": {"body": signed(sid, K1, text="w-unsigned")["body"]},
            "bad signature": {**signed(sid, K1, text="w-forged"), "sig": "0" * 64},
            "unknown key id": signed(sid, b"whatever", kid="k9", text="w-k9"),
            "bad signature (key 'k2')": signed(sid, K1, kid="k2", text="w-wrong-key"),
            "too old": signed(sid, K1, text="w-old", ts=time.time() - 7200),
            "session mismatch": signed("another-session-123", K1, text="w-moved"),
            "not allowed": signed(sid, b"secret-two", kid="k2", text="w-scope"),  # k2 reaches only alice
            "malformed": {"kid": "k1", "body": b"{nope", "sig": p.sign(K1, b"{nope")},
            "oversized": {"kid": "k1", "body": b"x" * (p.MAX_BYTES + 5000), "sig": "00"},
        }
        for fields in cases.values():
            await raw_publish(cluster.redis.url, sid, fields)
        async with Publisher(cluster.redis.url, key_id="k1", key=K1) as pub:
            await pub.send(sid, "w-good")
        await client.wait_for(lambda: "w-good" in worker_texts(client), 15)
        assert worker_texts(client) == ["w-good"]
        reasons = [d["reason"] for d in await dlq_until(cluster.redis.url, len(cases))]
        assert len(reasons) == len(cases), reasons
        for expected, reason in zip(cases, reasons):
            assert expected in reason, (expected, reason)
        assert "secret-one" not in a.proc.log() and "secret-two" not in a.proc.log()
    finally:
        await client.close()


_garbage = st.one_of(
    st.fixed_dictionaries({"kid": st.sampled_from(["k1", "k2", "", "zz"]), "body": st.binary(max_size=300),
                           "sig": st.text(max_size=70)}),
    st.builds(lambda d: {"kid": "k1", "body": json.dumps(d).encode(), "sig": p.sign(K1, json.dumps(d).encode())},
              st.dictionaries(st.sampled_from(["eid", "mid", "kind", "session", "ts", "content", "v", "x"]),
                              st.one_of(st.none(), st.integers(), st.text(max_size=20), st.floats(allow_nan=False)),
                              max_size=8)),
    st.builds(lambda n: {"kid": "k1", "body": b'{"pad":"' + b"a" * n + b'"}', "sig": "ab"},
              st.integers(min_value=p.MAX_BYTES + 4097, max_value=p.MAX_BYTES * 2)),
)


def _collect(strategy, n: int) -> list:
    out = []

    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def gather(value):
        out.append(value)

    gather()
    return out


async def test_property_garbage_in_the_transport_is_rejected_with_a_reason(cluster, worker_env):
    (a,) = cluster.start(1, env=worker_env).instances
    client = await started(ChainlitClient(a.url))
    payloads = _collect(_garbage, 60)
    try:
        for fields in payloads:
            await raw_publish(cluster.redis.url, client.session_id, fields)
        async with Publisher(cluster.redis.url, key_id="k1", key=K1) as pub:
            await pub.send(client.session_id, "w-still-serving")
        await client.wait_for(lambda: "w-still-serving" in worker_texts(client), 20)
        letters = await dlq_until(cluster.redis.url, len(payloads))
        assert len(letters) == len(payloads)
        assert all(d["reason"] for d in letters)
        assert worker_texts(client) == ["w-still-serving"]
        assert http_status(f"{a.url}/readyz") == 200
    finally:
        await client.close()


_json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=30)),
                            lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                    st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                            max_leaves=12)
_requests = st.one_of(
    st.builds(lambda v: ("json", v), _json_values),
    st.builds(lambda d: ("json", d), st.fixed_dictionaries({"text": st.integers() | st.none()},
                                                           optional={"id": st.text(max_size=300), "bogus": st.text()})),
    st.builds(lambda b: ("raw", b), st.binary(max_size=200)),
    st.builds(lambda n: ("json", {"text": "a" * n}), st.integers(min_value=p.MAX_BYTES + 1, max_value=p.MAX_BYTES + 9000)),
    st.builds(lambda t: ("token", t), st.text(st.characters(min_codepoint=0x21, max_codepoint=0xff), max_size=40)),
)


async def test_property_gateway_answers_garbage_with_4xx_json(cluster, worker_env):
    (a,) = cluster.start(1, env=worker_env).instances
    client = await started(ChainlitClient(a.url))
    url = f"{a.url}/cl-scale/v1/sessions/{client.session_id}/messages"
    requests = _collect(_requests, 60)

    def hit():
        results = []
        with httpx.Client(timeout=10) as http:
            for kind, value in requests:
                headers = {"Authorization": "Bearer token-one"}
                if kind == "token":
                    headers["Authorization"] = b"Bearer " + value.encode() + b"x"
                    resp = http.post(url, json={"text": "w-never"}, headers=headers)
                elif kind == "raw":
                    resp = http.post(url, content=value, headers={**headers, "content-type": "application/json"})
                else:
                    resp = http.post(url, json=value, headers=headers)
                results.append((kind, value, resp.status_code, resp.json()))
        return results

    try:
        results = await asyncio.to_thread(hit)
        for kind, value, status, body in results:
            valid = isinstance(value, dict) and set(value) <= {"text", "id", "author", "elements"} \
                and isinstance(value.get("text"), str) and len(value["text"]) <= p.MAX_BYTES \
                and (value.get("id") is None or re.fullmatch(p.MESSAGE_ID_PATTERN, value["id"]) is not None)
            if kind == "token":
                assert status == 401 and "error" in body
            elif valid:
                assert status == 202 and body["id"]
            else:
                assert status in (413, 415, 422) and body["error"], (value, status, body)
        assert http_status(f"{a.url}/readyz") == 200
        ok = httpx.post(url, json={"text": "w-after-garbage"}, headers={"Authorization": "Bearer token-one"})
        assert ok.status_code == 202
        await client.wait_for(lambda: "w-after-garbage" in worker_texts(client), 15)
    finally:
        await client.close()
