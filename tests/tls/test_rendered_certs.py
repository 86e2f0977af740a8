"""The rendered gateway really runs with the certificates its manifests mount: the k8s Deployment's
args/env and the compose service's command/environment are executed as rendered (only the mount root
and the listen address moved into the test's directory), against a real ``redis-server`` that speaks
TLS only and demands client certificates, and called over mTLS gRPC and HTTPS."""

from __future__ import annotations

import shutil
import ssl
import time
import urllib.request

import pytest
import yaml

from cl_scale.config.values import Values
from cl_scale.ops.certs import NoOpenSSL, make_certificates
from cl_scale.ops.processes import CL_SCALE, Proc, RedisServer, free_port, wait_port
from cl_scale.render import compose, k8s
from cl_scale.render.certs import ROOT

pytestmark = pytest.mark.slow
SECRETS = {"CL_SCALE_WORKER_KEYS": "k1:secret-one", "CL_SCALE_GATEWAY_TOKENS": "t1:token-one-0123456789"}
#: Secret name -> key -> file made by make_certificates (k8s); compose reads ./certs/<name> instead.
SECRET_FILES = {"redis-ca": {"ca.crt": "ca.pem"}, "redis-client": {"tls.crt": "redis.pem", "tls.key": "redis.key"},
                "gateway-tls": {"tls.crt": "server.pem", "tls.key": "server.key"},
                "workers-ca": {"ca.crt": "ca.pem"}}
COMPOSE_FILES = {"redis-ca.crt": "ca.pem", "redis-client.crt": "redis.pem", "redis-client.key": "redis.key",
                 "gateway.crt": "server.pem", "gateway.key": "server.key", "gateway-client-ca.crt": "ca.pem"}


@pytest.fixture
def certs(tmp_path):
    try:
        return make_certificates(tmp_path / "certs", clients=("redis", "worker"))
    except NoOpenSSL as exc:
        pytest.skip(str(exc))


def values(redis_port: int) -> Values:
    return Values.model_validate({
        "redis": {"enabled": False, "url": f"rediss://127.0.0.1:{redis_port}/0",
                  "tls": {"caSecret": "redis-ca", "clientCertSecret": "redis-client"}},
        "grpcGateway": {"enabled": True, "grpcPort": free_port(), "httpPort": free_port(), "healthPort": free_port(),
                        "tls": {"secretName": "gateway-tls", "clientCaSecret": "workers-ca"}},
    })


def k8s_gateway(v: Values, certs, root) -> tuple[list[str], str]:
    """Lay out the Deployment's Secret volumes under ``root`` (as the kubelet would under /) and
    return its container's args and Redis URL."""
    (dep,) = [d for d in yaml.safe_load_all(k8s.render(v)["grpc-gateway.yaml"]) if d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    volumes = {vol["name"]: vol for vol in pod["volumes"]}
    for m in c["volumeMounts"]:
        secret = volumes[m["name"]].get("secret")
        if secret:
            for item in secret["items"]:
                target = root / m["mountPath"].lstrip("/") / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(certs / SECRET_FILES[secret["secretName"]][item["key"]], target)
    url = next(e["value"] for e in c["env"] if e["name"] == "CL_SCALE_REDIS_URL")
    return c["args"], url


def compose_gateway(v: Values, certs, root) -> tuple[list[str], str]:
    """Lay out the compose secrets under ``root`` and return the gateway's command and Redis URL."""
    doc = yaml.safe_load(compose.render(v)["compose.yaml"])
    svc = doc["services"]["gateway"]
    for s in svc["secrets"]:
        source = doc["secrets"][s["source"]]["file"].removeprefix("./certs/")
        target = root / s["target"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(certs / COMPOSE_FILES[source], target)
    assert svc["entrypoint"] == ["cl-scale"]
    return svc["command"], svc["environment"]["CL_SCALE_REDIS_URL"]


@pytest.mark.parametrize("target", ["k8s", "compose"])
def test_the_rendered_gateway_runs_with_its_mounted_certificates(target, tmp_path, certs):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from cl_scale.gateway.grpc_gateway import stubs

    redis = RedisServer(tmp_path, tls=certs, client_auth=True).start()
    proc = None
    try:
        v = values(redis.port)
        root = tmp_path / "mounts"
        args, url = (k8s_gateway if target == "k8s" else compose_gateway)(v, certs, root)
        assert url.startswith("rediss://") and f"ssl_ca_certs={ROOT}/" in url and "ssl_certfile=" in url
        moved = [a.replace(ROOT, str(root / ROOT.lstrip("/"))).replace("0.0.0.0", "127.0.0.1") for a in args]
        env = {**SECRETS, "CL_SCALE_REDIS_URL": url.replace(ROOT, str(root / ROOT.lstrip("/")))}
        proc = Proc([CL_SCALE, *moved], env=env, log_path=tmp_path / "gateway.log").start()
        g = v.grpcGateway
        try:
            wait_port(g.healthPort, 30)
        except TimeoutError:
            raise AssertionError(proc.log()[-3000:]) from None
        ready = None
        for _ in range(50):  # bounded: Redis answers over TLS with the client certificate
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{g.healthPort}/readyz", timeout=3) as resp:
                    ready = resp.status
                    break
            except OSError:
                time.sleep(0.2)
        assert ready == 200, proc.log()[-3000:]
        ca = (certs / "ca.pem").read_bytes()
        creds = grpc.ssl_channel_credentials(ca, (certs / "worker.key").read_bytes(),
                                             (certs / "worker.pem").read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{g.grpcPort}", creds) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            pb, services = stubs()
            with pytest.raises(grpc.RpcError) as err:  # reaches Redis over TLS: the session is unknown there
                services.GatewayStub(channel).Send(pb.SendRequest(session_id="no-such-session-01", text="x"),
                                                   metadata=[("authorization", "Bearer token-one-0123456789")],
                                                   timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
        https = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        https.load_cert_chain(str(certs / "worker.pem"), str(certs / "worker.key"))
        with urllib.request.urlopen(f"https://127.0.0.1:{g.httpPort}/cl-scale/v1/openapi.json", context=https,
                                    timeout=10) as resp:
            assert resp.status == 200
    finally:
        if proc is not None:
            proc.stop()
        redis.stop()


def test_without_the_client_certificate_redis_refuses_and_readyz_says_so(tmp_path, certs):
    """The same server without ``ssl_certfile``: the gateway starts, is not ready, and says why."""
    redis = RedisServer(tmp_path, tls=certs, client_auth=True).start()
    try:
        health = free_port()
        url = f"rediss://127.0.0.1:{redis.port}/0?ssl_ca_certs={certs / 'ca.pem'}"
        proc = Proc([CL_SCALE, "gateway", "--port", str(free_port()), "--health-port", str(health)],
                    env={**SECRETS, "CL_SCALE_REDIS_URL": url}, log_path=tmp_path / "gateway.log").start()
        try:
            wait_port(health, 30)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=10)
            assert err.value.code == 503
        finally:
            proc.stop()
    finally:
        redis.stop()
