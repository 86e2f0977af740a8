"""The HTTP gateway in process (Starlette's TestClient) against a real redis-server."""

from __future__ import annotations

from starlette.testclient import TestClient

from cl_scale.gateway.app import Gateway, build_app
from cl_scale.wire.messages import parse_keys

TOKEN = {"Authorization": "Bearer token-two"}


def test_redis_failure_during_a_scoped_check_is_a_json_503(redis_server):
    gateway = Gateway(redis_server.url, tokens=parse_keys("t2:token-two;sessions=s-12345678"),
                      key=parse_keys("k1:secret-one")["k1"])
    with TestClient(build_app(gateway), raise_server_exceptions=False) as http:
        ok = http.post("/cl-scale/v1/sessions/s-12345678/messages", headers=TOKEN, json={"text": "queued"})
        assert ok.status_code == 202, ok.text
        redis_server.stop()
        for path in ("/cl-scale/v1/sessions/s-12345678/messages", "/cl-scale/v1/sessions/other-session/messages"):
            r = http.post(path, headers=TOKEN, json={"text": "x"})
            assert r.status_code == 503, (r.status_code, r.text)
            assert r.headers["content-type"] == "application/json" and "Redis" in r.json()["error"]
