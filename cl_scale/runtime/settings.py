"""One settings object every runtime part reads (uvicorn's ``Config`` pattern).

Values come from ``cl-scale run`` flags, falling back to ``CL_SCALE_*`` environment variables, so the
same container image works under Kubernetes (env from ConfigMap/Secret) and locally (flags).
``from_env`` is the only reader of the environment for the runtime; every value is checked here
(finite, in range, a safe alphabet for names that reach Redis keys and log lines), and a bad one is
one :class:`ConfigError` line naming the variable — never its secret.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cl_scale.contract import DEFAULT_PREFIX, REDIS_SCHEMES
from cl_scale.envvars import DAY
from cl_scale.envvars import env as _env
from cl_scale.envvars import number as _number
from cl_scale.errors import ConfigError
from cl_scale.wire.keyspace import SAFE_PREFIX
from cl_scale.wire.redis_url import check as check_redis_url
from cl_scale.wire.redis_url import redacted, with_password

#: Instance ids end up in Redis keys, channel names and every log line.
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HOST = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(name, raw, "must be true or false")


def _default_instance_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:100] or "instance"
    return f"{host}-{uuid.uuid4().hex[:8]}"


@dataclass
class RuntimeSettings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    host: str = "127.0.0.1"
    port: int = 8000
    #: Unique per process start: rooms and sessions are registered under it in Redis.
    instance_id: str = field(default_factory=_default_instance_id)
    #: How peers reach this instance directly (session-bound HTTP forwarding).
    advertise_url: str | None = None
    #: Or just the host peers reach it at (Kubernetes: the pod IP from the downward API); the URL is
    #: built from it and ``port``, with an IPv6 address bracketed.
    advertise_host: str | None = None
    #: A second listener for what only the cluster may reach: ``/metrics`` and the worker gateway
    #: (``/cl-scale/v1``). When set, ``port`` no longer serves them (404), so a balancer that routes
    #: everything under ``/`` to ``port`` cannot expose them. None: one listener serves everything.
    admin_port: int | None = None
    #: Also serve the gRPC worker gateway (``clscale.v1.Gateway``, the ``grpc`` extra) on this port,
    #: with the instance's own tokens and key, as the HTTP gateway under ``/cl-scale/v1``. None: off.
    grpc_port: int | None = None
    #: Clients use websockets only (Chainlit's ``[project] transports``), no long-polling: a balancer
    #: then needs no stickiness, only websocket support.
    websocket_only: bool = False
    #: Redis keys and channels start with this, so several apps can share one Redis.
    prefix: str = DEFAULT_PREFIX
    #: Seconds a disconnected session stays restorable; None = Chainlit's own ``session_timeout``.
    session_timeout: int | None = None
    drain_seconds: int = 30
    #: Serve the probes ``cl-scale doctor`` uses (/cl-scale/doctor/*): only with a token
    #: (``CL_SCALE_DOCTOR_TOKEN``, a secret), which callers send as a bearer; CL_SCALE_DOCTOR=0 turns them off.
    doctor: bool = True
    doctor_token: str | None = field(default=None, repr=False)
    #: Per-Redis-command timeout: a stalled Redis must never stall a chat.
    redis_timeout: float = 2.0
    #: How often the listener proves itself alive (readiness) and registrations are refreshed.
    heartbeat_seconds: float = 1.0
    files_dir: str | None = None
    #: Largest request body accepted on the upload endpoint (bytes); None = Chainlit's
    #: ``features.spontaneous_file_upload.max_size_mb`` (500 MB if unset). Over it: 413.
    max_upload_bytes: int | None = None
    #: Worker delivery (cl_scale.worker): accepted signing keys ``id:secret[;users=a|b][;sessions=s]``,
    #: comma separated, and gateway bearer tokens in the same syntax. Secrets: never in repr or logs.
    worker_keys: str | None = field(default=None, repr=False)
    gateway_tokens: str | None = field(default=None, repr=False)
    #: Bound and lifetime of a session's outbox; overflow and expiry go to the dead-letter stream.
    worker_outbox_max: int = 1000
    worker_outbox_ttl: float = 3600
    #: Oldest signed timestamp accepted (replay window); defaults to the outbox TTL.
    worker_max_age: float | None = None
    worker_max_attempts: int = 5
    worker_max_bytes: int = 64 * 1024
    #: Append every user message to the requests stream (``Keyspace.requests``), where the gRPC
    #: gateway's ``Subscribe`` hands them to workers that have no Redis access. Off: no extra write.
    publish_requests: bool = False
    #: Journal unfinished user messages (``runtime.journal``): one Redis write per message buys "nothing
    #: the user sent is lost" across a shutdown or a crash. Off: stock behaviour.
    journal: bool = True
    #: Serve Chainlit's frontend assets precompressed (brotli, gzip) with long-lived caching
    #: (``runtime.assets``); off: Chainlit compresses them on every request.
    precompress: bool = True
    #: Where the compressed assets are kept between starts; None: a temp directory per Chainlit version.
    assets_cache: str | None = None
    #: Where uploads live so another instance can serve them after the owner dies (``runtime.uploads``):
    #: ``local`` (the owner's disk; lost with it), ``shared`` (``uploads_dir``, a directory every
    #: instance mounts, e.g. a ReadWriteMany volume) or ``redis`` (bounded per session by ``uploads_max_mb``).
    uploads: str = "local"
    uploads_dir: str | None = None
    uploads_max_mb: int = 20
    #: uvicorn/Chainlit settings Chainlit itself reads from the environment (``chainlit run``).
    ws_protocol: str = "auto"
    ws_per_message_deflate: bool = True
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None

    @classmethod
    def from_env(cls, **overrides) -> "RuntimeSettings":
        url = overrides.pop("redis_url", None) or _env("CL_SCALE_REDIS_URL") or _env("REDIS_URL") or cls.redis_url
        where = "--redis-url / CL_SCALE_REDIS_URL"
        try:
            check_redis_url(url, allow_password=True)
        except ValueError as exc:
            raise ConfigError(where, redacted(url), str(exc)) from None
        values = dict(
            redis_url=with_password(url, _env("REDIS_PASSWORD")),
            session_timeout=_number("CL_SCALE_SESSION_TIMEOUT", _env("CL_SCALE_SESSION_TIMEOUT"), int, 1, 30 * DAY),
            drain_seconds=_number("CL_SCALE_DRAIN_SECONDS", _env("CL_SCALE_DRAIN_SECONDS", "30"), int, 0, 3600),
            doctor=_env("CL_SCALE_DOCTOR", "1").lower() not in ("0", "false", "no", "off"),
            doctor_token=_env("CL_SCALE_DOCTOR_TOKEN"),
            prefix=_env("CL_SCALE_PREFIX", DEFAULT_PREFIX),
            advertise_url=_env("CL_SCALE_ADVERTISE_URL"),
            advertise_host=_env("CL_SCALE_ADVERTISE_HOST"),
            admin_port=_number("CL_SCALE_ADMIN_PORT", _env("CL_SCALE_ADMIN_PORT"), int, 1, 65535),
            grpc_port=_number("CL_SCALE_GRPC_PORT", _env("CL_SCALE_GRPC_PORT"), int, 1, 65535),
            websocket_only=_flag("CL_SCALE_WEBSOCKET_ONLY", _env("CL_SCALE_WEBSOCKET_ONLY", "false")),
            publish_requests=_flag("CL_SCALE_PUBLISH_REQUESTS", _env("CL_SCALE_PUBLISH_REQUESTS", "false")),
            files_dir=_env("CL_SCALE_FILES_DIR"),
            journal=_flag("CL_SCALE_JOURNAL", _env("CL_SCALE_JOURNAL", "true")),
            precompress=_flag("CL_SCALE_PRECOMPRESS", _env("CL_SCALE_PRECOMPRESS", "true")),
            assets_cache=_env("CL_SCALE_ASSETS_CACHE"),
            uploads=_env("CL_SCALE_UPLOADS", "local"),
            uploads_dir=_env("CL_SCALE_UPLOADS_DIR"),
            uploads_max_mb=_number("CL_SCALE_UPLOADS_MAX_MB", _env("CL_SCALE_UPLOADS_MAX_MB", "20"), int, 1, 1024),
            max_upload_bytes=(_number("CL_SCALE_MAX_UPLOAD_MB", _env("CL_SCALE_MAX_UPLOAD_MB"), int, 1, 100_000)
                              or 0) * 1024 * 1024 or None,
            worker_keys=_env("CL_SCALE_WORKER_KEYS"),
            gateway_tokens=_env("CL_SCALE_GATEWAY_TOKENS"),
            worker_outbox_max=_number("CL_SCALE_WORKER_OUTBOX_MAX", _env("CL_SCALE_WORKER_OUTBOX_MAX", "1000"),
                                      int, 1, 1_000_000),
            worker_outbox_ttl=_number("CL_SCALE_WORKER_OUTBOX_TTL", _env("CL_SCALE_WORKER_OUTBOX_TTL", "3600"),
                                      float, 1, 30 * DAY),
            worker_max_age=_number("CL_SCALE_WORKER_MAX_AGE", _env("CL_SCALE_WORKER_MAX_AGE"), float, 1, 30 * DAY),
            worker_max_attempts=_number("CL_SCALE_WORKER_MAX_ATTEMPTS", _env("CL_SCALE_WORKER_MAX_ATTEMPTS", "5"),
                                        int, 1, 100),
            ws_protocol=_env("UVICORN_WS_PROTOCOL", "auto"),
            ws_per_message_deflate=_env("UVICORN_WS_PER_MESSAGE_DEFLATE", "true").lower() in ("true", "1", "yes"),
            ssl_keyfile=_env("CHAINLIT_SSL_KEY"),
            ssl_certfile=_env("CHAINLIT_SSL_CERT"),
        )
        if _env("CL_SCALE_INSTANCE_ID"):
            values["instance_id"] = _env("CL_SCALE_INSTANCE_ID")
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        if not settings.advertise_url:
            host = settings.advertise_host or ("127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host)
            host = f"[{host}]" if ":" in host else host
            settings.advertise_url = f"http://{host}:{settings.port}"
        return settings

    def validate(self) -> None:
        if urlsplit(self.redis_url).scheme not in REDIS_SCHEMES:
            raise ConfigError("--redis-url / CL_SCALE_REDIS_URL", redacted(self.redis_url),
                              f"scheme must be one of {', '.join(REDIS_SCHEMES)}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ConfigError("--port", self.port, "must be between 1 and 65535")
        if not _HOST.match(self.host or ""):
            raise ConfigError("--host", self.host, "must be an IP address or a host name")
        if not SAFE_NAME.fullmatch(self.instance_id or ""):
            raise ConfigError("instance-id / CL_SCALE_INSTANCE_ID", self.instance_id,
                              "must be 1-128 of [A-Za-z0-9._-] (it names Redis keys and prefixes log lines)")
        if not SAFE_PREFIX.fullmatch(self.prefix or ""):
            raise ConfigError("CL_SCALE_PREFIX", self.prefix, "must be 1-64 of [A-Za-z0-9._-]")
        if self.uploads not in ("local", "shared", "redis"):
            raise ConfigError("CL_SCALE_UPLOADS", self.uploads, "must be local, shared or redis")
        if self.uploads == "shared" and not self.uploads_dir:
            raise ConfigError("CL_SCALE_UPLOADS_DIR", None, "CL_SCALE_UPLOADS=shared needs the shared directory "
                              "every instance mounts")
        if self.uploads == "shared" and not os.path.isdir(self.uploads_dir):
            raise ConfigError("CL_SCALE_UPLOADS_DIR", self.uploads_dir, "is not a directory")
        if self.advertise_url is not None:
            parts = urlsplit(self.advertise_url) if not re.search(r"[\s\x00-\x1f\x7f]", self.advertise_url) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or len(self.advertise_url) > 512:
                raise ConfigError("advertise-url / CL_SCALE_ADVERTISE_URL", self.advertise_url,
                                  "must be an http:// or https:// URL peers can reach this instance at")
        if self.advertise_host is not None and not _HOST.match(self.advertise_host):
            raise ConfigError("CL_SCALE_ADVERTISE_HOST", self.advertise_host, "must be an IP address or a host name")
        if self.admin_port is not None:
            if isinstance(self.admin_port, bool) or not 1 <= self.admin_port <= 65535:
                raise ConfigError("--admin-port / CL_SCALE_ADMIN_PORT", self.admin_port, "must be between 1 and 65535")
            if self.admin_port == self.port:
                raise ConfigError("--admin-port / CL_SCALE_ADMIN_PORT", self.admin_port, "must differ from --port")
        if self.session_timeout is not None and not 1 <= self.session_timeout <= 30 * DAY:
            raise ConfigError("CL_SCALE_SESSION_TIMEOUT", self.session_timeout, "must be a positive number of seconds")
        from cl_scale.wire.messages import parse_keys

        parse_keys(self.worker_keys, "CL_SCALE_WORKER_KEYS")
        parse_keys(self.gateway_tokens, "CL_SCALE_GATEWAY_TOKENS")
