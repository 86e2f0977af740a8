"""compose target: Redis + N app instances + sticky nginx on one host.

Why Python dicts dumped with ``yaml.safe_dump``: a value can never add a key or a service, whatever
it contains. Compose additionally *interpolates* ``$VAR`` in every string, so user strings have
``$`` doubled (``$$``) and only the renderer's own ``${REDIS_PASSWORD:?...}`` is interpolated.
Secrets come from ``.env`` (copy ``.env.example``), never from values.
"""

from __future__ import annotations

import posixpath
from typing import Any

import yaml

from cl_scale.config.values import Values
from cl_scale.contract import APP_UID as CONTRACT_UID
from cl_scale.render import nginx as nginx_render
from cl_scale.render.certs import gateway_mounts, redis_mounts, with_redis_tls
from cl_scale.render.scaffold import env_example

NGINX_IMAGE = "nginx:1.27-alpine"
APP_UID = f"{CONTRACT_UID}:{CONTRACT_UID}"
_PASSWORD = "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env (copy .env.example)}"
_CONF_DIR = "/etc/cl-scale/nginx"
_PREFIX = "/tmp/nginx"
UPLOADS_DIR = "/uploads"  # uploads.storage shared (the k8s mount path too)


def _lit(text: str) -> str:
    """A user string compose must not interpolate."""
    return str(text).replace("$", "$$")


def service_names(values: Values) -> list[str]:
    return [f"app-{i}" for i in range(1, values.replicas + 1)]


def _redis_url(values: Values) -> str:
    return "redis://redis:6379/0" if values.redis.enabled else _lit(with_redis_tls(values.redis.url or "", values))


def _secrets(mounts) -> list[dict[str, str]]:
    """A service's compose secrets: each certificate file at the path the k8s Secret volume would use."""
    return [{"source": source.replace(".", "-"), "target": m.path(key)} for m in mounts for key, source in m.files]


def _secret_files(values: Values) -> dict[str, dict[str, str]]:
    """Top-level ``secrets:``: the certificate files the user puts in ``./certs/``."""
    return {source.replace(".", "-"): {"file": f"./certs/{source}"}
            for m in [*redis_mounts(values), *(gateway_mounts(values) if values.grpcGateway.enabled else [])]
            for key, source in m.files}


def _redis_service(values: Values) -> dict[str, Any]:
    r = values.redis
    from cl_scale.render.k8s_redis import key_prefix, start_args

    return {
        "image": _lit(r.image),
        # The k8s start script: passwords from .env (REDIS_PASSWORD, optional REDIS_WORKER_PASSWORD),
        # never interpolated into this file; compose must not interpolate the script's own "$".
        "entrypoint": [_lit(a) for a in start_args(r.maxmemory, 6379, "/data", key_prefix(values))[:3]],
        "command": [_lit(a) for a in start_args(r.maxmemory, 6379, "/data", key_prefix(values))[3:]],
        "env_file": [".env"],
        # redis-cli reads REDISCLI_AUTH: the healthcheck needs no password on its command line.
        "environment": {"REDISCLI_AUTH": _PASSWORD},
        "volumes": ["redis-data:/data"],
        "healthcheck": {"test": ["CMD", "redis-cli", "ping"], "interval": "5s", "timeout": "3s",
                        "retries": 10},
        "restart": "unless-stopped",
    }


def _app_service(values: Values, name: str) -> dict[str, Any]:
    a = values.app
    port = str(a.port)
    env = {_lit(k): _lit(v) for k, v in a.env.items()}
    env.update({
        "CHAINLIT_APP_ROOT": "/app",
        "CL_SCALE_INSTANCE_ID": name,
        "CL_SCALE_ADVERTISE_URL": f"http://{name}:{port}",
        "CL_SCALE_REDIS_URL": _redis_url(values),
        "CL_SCALE_SESSION_TIMEOUT": str(a.sessionTimeout),
        "CL_SCALE_DRAIN_SECONDS": str(values.drain.seconds),
        "CL_SCALE_WEBSOCKET_ONLY": "true" if values.websocketOnly else "false",
        **({"CL_SCALE_PUBLISH_REQUESTS": "true"} if values.autogen.enabled else {}),
        **({"CL_SCALE_UPLOADS": values.uploads.storage} if values.uploads.storage != "local" else {}),
        **({"CL_SCALE_UPLOADS_MAX_MB": str(values.uploads.maxMB)} if values.uploads.storage == "redis" else {}),
        **({"CL_SCALE_UPLOADS_DIR": UPLOADS_DIR} if values.uploads.storage == "shared" else {}),
    })
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=3)"
    service: dict[str, Any] = {
        "image": _lit(a.image),
        "entrypoint": ["cl-scale", "run"],
        "command": [_lit(a.module), "--host", "0.0.0.0", "--port", port],
        "user": APP_UID,
        "read_only": True,
        # Chainlit writes these at start and deletes .files on stop: per-instance scratch space.
        "tmpfs": ["/app/.files:mode=1777", "/app/.chainlit:mode=1777", "/tmp:mode=1777"],
        "env_file": [".env"],  # CHAINLIT_AUTH_SECRET, REDIS_PASSWORD, CL_SCALE_WORKER_KEYS
        "environment": env,
        "expose": [port],
        "healthcheck": {"test": ["CMD", "python", "-c", probe], "interval": "10s", "timeout": "5s",
                        "retries": 3, "start_period": "30s"},
        "stop_grace_period": f"{values.drain.seconds + 15}s",
        "ulimits": _nofile(values),  # one descriptor per websocket client
        "restart": "unless-stopped",
    }
    if redis_mounts(values):
        service["secrets"] = _secrets(redis_mounts(values))
    if values.uploads.storage == "shared":  # one named volume, mounted by every instance
        service["volumes"] = [f"uploads:{UPLOADS_DIR}"]
    if values.redis.enabled:
        service["depends_on"] = {"redis": {"condition": "service_healthy"}}
    return service


def _nginx_service(values: Values) -> dict[str, Any]:
    n = values.nginx
    ports = [f"{n.listen}:{n.listen}"]
    volumes = [f"./nginx:{_CONF_DIR}:ro"]
    if n.tls.enabled:
        ports.append(f"{n.tls.listen}:{n.tls.listen}")
        for d in sorted({posixpath.dirname(n.tls.certificate), posixpath.dirname(n.tls.certificateKey)}):
            volumes.append(f"./tls:{_lit(d)}:ro")
            break  # one ./tls folder holds both files (mounted at the certificate's folder)
    start = f"mkdir -p {_PREFIX}/run {_PREFIX}/logs && exec nginx -p {_PREFIX}/ -c {_CONF_DIR}/nginx.conf"
    return {
        "image": NGINX_IMAGE,
        "command": ["sh", "-c", start],
        "read_only": True,
        "tmpfs": [_PREFIX, "/var/cache/nginx", "/var/run"],
        "volumes": volumes,
        "ports": ports,
        "depends_on": {name: {"condition": "service_started"} for name in service_names(values)},
        "ulimits": _nofile(values),  # two descriptors per websocket client
        "restart": "unless-stopped",
    }


def _nofile(values: Values) -> dict[str, Any]:
    """The open-file limit of the app and nginx containers: room for every client nginx admits (Docker's
    default soft limit is 1024 on some hosts)."""
    n = max(65536, values.nginx.workerConnections * 2)
    return {"nofile": {"soft": n, "hard": n}}


def _bridge_service(values: Values, bridge) -> dict[str, Any]:
    """``cl-scale bridge URL`` from the app image; keys and broker password from ``.env``."""
    port = str(bridge.healthPort)
    command = [_lit(bridge.url), "--health-host", "0.0.0.0", "--health-port", port, "--batch-size",
               str(bridge.batchSize), "--name", f"bridge-{bridge.name}"]
    if bridge.requireSignature:
        command.append("--require-signature")
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=3)"
    service: dict[str, Any] = {
        "image": _lit(values.app.image),
        "entrypoint": ["cl-scale", "bridge"],
        "command": command,
        "user": APP_UID,
        "read_only": True,
        "tmpfs": ["/tmp:mode=1777"],
        # REDIS_PASSWORD, CL_SCALE_WORKER_KEYS (the first key signs), CL_SCALE_KAFKA_PASSWORD / _AMQP_PASSWORD
        "env_file": [".env"],
        "environment": {"CL_SCALE_REDIS_URL": _redis_url(values), "HOME": "/tmp"},
        "healthcheck": {"test": ["CMD", "python", "-c", probe], "interval": "10s", "timeout": "5s",
                        "retries": 3, "start_period": "20s"},
        "restart": "unless-stopped",
    }
    if bridge.replicas > 1:
        service["deploy"] = {"replicas": bridge.replicas}
    if redis_mounts(values):
        service["secrets"] = _secrets(redis_mounts(values))
    if values.redis.enabled:
        service["depends_on"] = {"redis": {"condition": "service_healthy"}}
    return service


def _gateway_service(values: Values) -> dict[str, Any]:
    """``cl-scale gateway`` from the app image, its gRPC and HTTP ports published on the host (one
    container: ``grpcGateway.replicas`` is for k8s); tokens and key from ``.env``, certificates from
    ``./certs/`` (compose secrets)."""
    from cl_scale.render.k8s_gateway import args

    g = values.grpcGateway
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{g.healthPort}/readyz', timeout=3)"
    service: dict[str, Any] = {
        "image": _lit(values.app.image),
        "entrypoint": ["cl-scale"],
        "command": args(values),
        "user": APP_UID,
        "read_only": True,
        "tmpfs": ["/tmp:mode=1777"],
        "env_file": [".env"],  # CL_SCALE_GATEWAY_TOKENS, CL_SCALE_WORKER_KEYS, REDIS_PASSWORD
        "environment": {"CL_SCALE_REDIS_URL": _redis_url(values), "HOME": "/tmp"},
        "ports": [f"{g.grpcPort}:{g.grpcPort}", f"{g.httpPort}:{g.httpPort}"],
        "healthcheck": {"test": ["CMD", "python", "-c", probe], "interval": "10s", "timeout": "5s",
                        "retries": 3, "start_period": "20s"},
        "restart": "unless-stopped",
    }
    mounts = [*redis_mounts(values), *gateway_mounts(values)]
    if mounts:
        service["secrets"] = _secrets(mounts)
    if values.redis.enabled:
        service["depends_on"] = {"redis": {"condition": "service_healthy"}}
    return service


def _autogen_services(values: Values) -> dict[str, dict[str, Any]]:
    """The AutoGen host, ``cl-scale autogen`` and each agent, from their images; the host is reached at
    ``autogen-host:<hostPort>`` on the compose network (never published on the host)."""
    a = values.autogen
    address = f"autogen-host:{a.hostPort}"
    def base() -> dict[str, Any]:
        return {"user": APP_UID, "read_only": True, "tmpfs": ["/tmp:mode=1777"], "restart": "unless-stopped"}

    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{a.healthPort}/readyz', timeout=3)"
    services: dict[str, dict[str, Any]] = {
        "autogen-host": {"image": _lit(values.app.image), "entrypoint": ["cl-scale"],
                         "command": ["autogen-host", "--address", f"0.0.0.0:{a.hostPort}"],
                         "environment": {"HOME": "/tmp"}, "expose": [str(a.hostPort)], **base()},
        "autogen": {"image": _lit(values.app.image), "entrypoint": ["cl-scale"],
                    "command": ["autogen", "--host-address", address, "--health-host", "0.0.0.0",
                                "--health-port", str(a.healthPort), "--name", "autogen"],
                    "env_file": [".env"],  # REDIS_PASSWORD, CL_SCALE_WORKER_KEYS (the first key signs)
                    "environment": {"CL_SCALE_REDIS_URL": _redis_url(values), "HOME": "/tmp"},
                    "healthcheck": {"test": ["CMD", "python", "-c", probe], "interval": "10s", "timeout": "5s",
                                    "retries": 3, "start_period": "20s"},
                    "depends_on": {"autogen-host": {"condition": "service_started"},
                                   **({"redis": {"condition": "service_healthy"}} if values.redis.enabled else {})},
                    **base()},
    }
    if redis_mounts(values):
        services["autogen"]["secrets"] = _secrets(redis_mounts(values))
    for agent in a.agents:
        env = {_lit(k): _lit(v) for k, v in agent.env.items()}
        services[f"autogen-{agent.name}"] = {
            "image": _lit(agent.image or values.app.image), "entrypoint": [_lit(c) for c in agent.command],
            "env_file": [".env"],  # the agents' model keys live in .env too
            "environment": {**env, "CL_SCALE_AUTOGEN_HOST": address, "HOME": "/tmp"},
            "depends_on": {"autogen-host": {"condition": "service_started"}},
            **({"deploy": {"replicas": agent.replicas}} if agent.replicas > 1 else {}), **base()}
    return services


def compose_dict(values: Values) -> dict[str, Any]:
    services: dict[str, Any] = {}
    if values.redis.enabled:
        services["redis"] = _redis_service(values)
    for name in service_names(values):
        services[name] = _app_service(values, name)
    services["nginx"] = _nginx_service(values)
    for bridge in values.bridges:
        services[f"bridge-{bridge.name}"] = _bridge_service(values, bridge)
    if values.grpcGateway.enabled:
        services["gateway"] = _gateway_service(values)
    if values.autogen.enabled:
        services.update(_autogen_services(values))
    doc: dict[str, Any] = {"name": values.name, "services": services}
    volumes = {**({"redis-data": {}} if values.redis.enabled else {}),
               **({"uploads": {}} if values.uploads.storage == "shared" else {})}
    if volumes:
        doc["volumes"] = volumes
    if secret_files := _secret_files(values):
        doc["secrets"] = secret_files
    return doc


HEADER = """\
# Generated by cl-scale (compose target). Start:  cp .env.example .env  (fill it), then
#   docker compose up -d
# Build the app image first from the generated Dockerfile (tag = app.image in cl-scale.yaml).
"""


def render(values: Values) -> dict[str, str]:
    """``compose.yaml`` + the nginx config it mounts (upstreams ``app-i:port``) + ``.env.example``."""
    text = HEADER + yaml.safe_dump(compose_dict(values), sort_keys=False, default_flow_style=False,
                                   width=10_000, allow_unicode=True)
    upstreams = [f"{name}:{values.app.port}" for name in service_names(values)]
    files = {"compose.yaml": text, ".env.example": env_example(values)}
    for path, body in nginx_render.render(values, upstreams, stdio_logs=True).items():
        if path.endswith(".gitignore"):
            continue  # the container prefix is a tmpfs; run/ and logs/ are made at start
        files[f"nginx/{path}"] = body
    return files
