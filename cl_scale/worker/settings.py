"""What a worker-side process (``cl-scale send``/``dlq``/``gateway``, bridges) needs, read once.

The worker-side twin of ``runtime.settings.RuntimeSettings``: flags win, then the environment
(the same ``CL_SCALE_*`` names the instances read), then the local cluster that ``cl-scale up``
recorded in its state directory, then defaults. Secrets never appear in ``repr`` or errors.

One key story: instances accept ``CL_SCALE_WORKER_KEYS`` (a list, ``id:secret,...``); a worker signs
with one key, ``CL_SCALE_WORKER_KEY=id:secret`` (or ``CL_SCALE_WORKER_KEY_ID`` + ``CL_SCALE_WORKER_KEY``),
else the first (or ``--key-id``-named) key of ``CL_SCALE_WORKER_KEYS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cl_scale.contract import DEFAULT_PREFIX
from cl_scale.envvars import DAY, env, number
from cl_scale.errors import ConfigError, UserError
from cl_scale.wire import messages as m
from cl_scale.wire.keyspace import SAFE_PREFIX, Keyspace
from cl_scale.wire.redis_url import check, redacted, with_password

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_STATE = Path(".cl-scale")


@dataclass
class WorkerSettings:
    redis_url: str = DEFAULT_REDIS
    prefix: str = DEFAULT_PREFIX
    #: The signing key (None: not configured; ``signing_key()`` explains what to set).
    key: m.WorkerKey | None = field(default=None, repr=False)
    #: Every key known here (``CL_SCALE_WORKER_KEYS``): what ``dlq replay --resign`` verifies with.
    known_keys: dict[str, m.WorkerKey] = field(default_factory=dict, repr=False)
    gateway_tokens: str | None = field(default=None, repr=False)
    outbox_max: int = 1000
    outbox_ttl: float = 3600

    @property
    def keys(self) -> Keyspace:
        return Keyspace(self.prefix)

    @classmethod
    def from_env(cls, *, redis_url: str | None = None, prefix: str | None = None, key_id: str | None = None,
                 key: str | None = None, state_dir: Path | None = None) -> "WorkerSettings":
        local = local_secrets(state_dir or LOCAL_STATE)
        url = redis_url or env("CL_SCALE_REDIS_URL") or env("REDIS_URL") or local.get("CL_SCALE_REDIS_URL") \
            or DEFAULT_REDIS
        try:
            check(url, allow_password=True)
        except ValueError as exc:
            raise ConfigError("--redis-url", redacted(url), str(exc)) from None
        prefix = prefix or env("CL_SCALE_PREFIX") or DEFAULT_PREFIX
        if not SAFE_PREFIX.fullmatch(prefix):
            raise ConfigError("prefix / CL_SCALE_PREFIX", prefix, "must be 1-64 of [A-Za-z0-9._-]")
        known = m.parse_keys(env("CL_SCALE_WORKER_KEYS") or local.get("CL_SCALE_WORKER_KEYS"), "CL_SCALE_WORKER_KEYS")
        signing = _signing_key(key_id or env("CL_SCALE_WORKER_KEY_ID"), key or env("CL_SCALE_WORKER_KEY"), known)
        return cls(redis_url=with_password(url, env("REDIS_PASSWORD")), prefix=prefix, key=signing, known_keys=known,
                   gateway_tokens=env("CL_SCALE_GATEWAY_TOKENS"),
                   outbox_max=number("CL_SCALE_WORKER_OUTBOX_MAX", env("CL_SCALE_WORKER_OUTBOX_MAX", "1000"),
                                     int, 1, 1_000_000),
                   outbox_ttl=number("CL_SCALE_WORKER_OUTBOX_TTL", env("CL_SCALE_WORKER_OUTBOX_TTL", "3600"),
                                     float, 1, 30 * DAY))

    def check_tls(self) -> None:
        """A long-running process (gateway, bridge) refuses to start on a TLS mistake towards Redis
        (``wire.connect.tls_problem``): one line naming the URL (redacted), exit 2."""
        import asyncio

        from cl_scale.errors import UserError
        from cl_scale.wire.connect import tls_problem
        from cl_scale.wire.redis_url import redacted

        problem = asyncio.run(tls_problem(self.redis_url))
        if problem:
            raise UserError(f"--redis-url={redacted(self.redis_url)}: {problem}")

    def signing_key(self) -> m.WorkerKey:
        if self.key is None:
            raise UserError("worker key: set CL_SCALE_WORKER_KEY=id:secret (one of the instances' "
                            "CL_SCALE_WORKER_KEYS), or pass --key-id and --key")
        return self.key


def _signing_key(key_id: str | None, key: str | None, known: dict[str, m.WorkerKey]) -> m.WorkerKey | None:
    if key:
        named = key.partition(":")[0]
        if ":" in key and SAFE_PREFIX.fullmatch(named) and key_id not in (None, named):
            shown = key_id if SAFE_PREFIX.fullmatch(key_id) else "(unprintable)"
            raise UserError(f"--key-id {shown!r}: the key given (CL_SCALE_WORKER_KEY or --key) is key {named!r} "
                            "(id:secret); drop one of them")
        if ":" in key and (key_id is None or key_id == named):  # CL_SCALE_WORKER_KEY=id:secret
            parsed = m.parse_keys(key, "CL_SCALE_WORKER_KEY")
            return next(iter(parsed.values()))
        if not key_id:
            raise UserError("CL_SCALE_WORKER_KEY: give it as id:secret, or set CL_SCALE_WORKER_KEY_ID too")
        return next(iter(m.parse_keys(f"{key_id}:{key}", "CL_SCALE_WORKER_KEY").values()))
    if key_id:
        if key_id not in known:
            shown = key_id if SAFE_PREFIX.fullmatch(key_id) else "(unprintable)"
            raise UserError(f"--key-id {shown!r}: no such key in CL_SCALE_WORKER_KEYS"
                            + (f" (known: {', '.join(sorted(known))})" if known else " (none set)"))
        return known[key_id]
    return next(iter(known.values()), None)


def local_secrets(state_dir: Path) -> dict[str, str]:
    """``KEY=value`` lines ``cl-scale up`` wrote for the commands run next to its cluster."""
    try:
        lines = (Path(state_dir) / "secrets.env").read_text().splitlines()
    except OSError:
        return {}
    return {k: v for k, _, v in (line.partition("=") for line in lines) if k and v}
