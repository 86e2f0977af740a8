"""One settings object every runtime part reads (uvicorn's ``Config`` pattern).

Values come from ``cl-scale run`` flags, falling back to ``CL_SCALE_*`` environment variables, so the
same container image works under Kubernetes (env from ConfigMap/Secret) and locally (flags).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlparse

from cl_scale.contract import REDIS_SCHEMES
from cl_scale.redis_url import redacted, with_password  # noqa: F401 (re-exported)

SUPPORTED_SCHEMES = REDIS_SCHEMES  # kept for importers


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass
class RuntimeSettings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    host: str = "127.0.0.1"
    port: int = 8000
    #: Unique per process start: rooms and sessions are registered under it in Redis.
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    #: How peers reach this instance directly (session-bound HTTP forwarding).
    advertise_url: str | None = None
    #: Redis keys and channels start with this, so several apps can share one Redis.
    prefix: str = "clscale"
    #: Seconds a disconnected session stays restorable (Chainlit's ``session_timeout``).
    session_timeout: int = 3600
    drain_seconds: int = 30
    #: Serve the probes ``cl-scale doctor`` uses (/cl-scale/doctor/*); CL_SCALE_DOCTOR=0 turns them off.
    doctor: bool = True
    #: Per-Redis-command timeout: a stalled Redis must never stall a chat.
    redis_timeout: float = 2.0
    #: How often the listener proves itself alive (readiness) and registrations are refreshed.
    heartbeat_seconds: float = 1.0
    files_dir: str | None = None
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

    @classmethod
    def from_env(cls, **overrides) -> "RuntimeSettings":
        url = overrides.pop("redis_url", None) or _env("CL_SCALE_REDIS_URL") or _env("REDIS_URL") or cls.redis_url
        values = dict(
            redis_url=with_password(url, _env("REDIS_PASSWORD")),
            session_timeout=int(_env("CL_SCALE_SESSION_TIMEOUT", "3600")),
            drain_seconds=int(_env("CL_SCALE_DRAIN_SECONDS", "30")),
            doctor=_env("CL_SCALE_DOCTOR", "1").lower() not in ("0", "false", "no", "off"),
            prefix=_env("CL_SCALE_PREFIX", "clscale"),
            advertise_url=_env("CL_SCALE_ADVERTISE_URL"),
            files_dir=_env("CL_SCALE_FILES_DIR"),
            worker_keys=_env("CL_SCALE_WORKER_KEYS"),
            gateway_tokens=_env("CL_SCALE_GATEWAY_TOKENS"),
            worker_outbox_max=int(_env("CL_SCALE_WORKER_OUTBOX_MAX", "1000")),
            worker_outbox_ttl=float(_env("CL_SCALE_WORKER_OUTBOX_TTL", "3600")),
            worker_max_age=float(_env("CL_SCALE_WORKER_MAX_AGE")) if _env("CL_SCALE_WORKER_MAX_AGE") else None,
            worker_max_attempts=int(_env("CL_SCALE_WORKER_MAX_ATTEMPTS", "5")),
        )
        if _env("CL_SCALE_INSTANCE_ID"):
            values["instance_id"] = _env("CL_SCALE_INSTANCE_ID")
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        if not settings.advertise_url:
            host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
            settings.advertise_url = f"http://{host}:{settings.port}"
        return settings

    def validate(self) -> None:
        from cl_scale.errors import ConfigError

        scheme = urlparse(self.redis_url).scheme
        if scheme not in SUPPORTED_SCHEMES:
            raise ConfigError("redis-url", redacted(self.redis_url), f"scheme must be one of {', '.join(SUPPORTED_SCHEMES)}")
        if not 1 <= self.port <= 65535:
            raise ConfigError("port", self.port, "must be between 1 and 65535")
        if self.session_timeout < 1:
            raise ConfigError("CL_SCALE_SESSION_TIMEOUT", self.session_timeout, "must be a positive number of seconds")
