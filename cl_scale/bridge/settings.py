"""A bridge's broker, from one URL (the only place bridge URLs and broker passwords are read).

::

    kafka://host:9092[,host2:9092]/TOPIC?group=NAME[&security_protocol=SASL_SSL&sasl_mechanism=PLAIN
            &sasl_username=USER&ssl_cafile=/path/ca.pem][&dead_letters=TOPIC][&fetch_max_wait_ms=500]
    amqp://user@host:5672/VHOST?queue=NAME[&exchange=X&routing_key=K&exchange_type=topic]
            [&prefetch=200][&dead_letters=QUEUE]
    amqps://...                 TLS, likewise [&ssl_cafile=/path/ca.pem&ssl_certfile=...&ssl_keyfile=...]

Passwords come from the environment (``CL_SCALE_KAFKA_PASSWORD``, ``CL_SCALE_AMQP_PASSWORD``) or the
URL's userinfo; either way only ``shown`` (redacted) ever reaches a log, a status line or an error.
The same URLs name where the outbound publisher (``bridge.outbound``) sends users' messages.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from cl_scale.envvars import env
from cl_scale.errors import ConfigError
from cl_scale.wire.redis_url import redacted

SCHEMES = {"kafka": "kafka", "amqp": "amqp", "amqps": "amqp"}
PASSWORD_ENV = {"kafka": "CL_SCALE_KAFKA_PASSWORD", "amqp": "CL_SCALE_AMQP_PASSWORD"}
_NAME = re.compile(r"[A-Za-z0-9._:/-]{1,249}")  # topic, group, queue, exchange and routing-key names
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$")
_KAFKA_PARAMS = {"group", "security_protocol", "sasl_mechanism", "sasl_username", "ssl_cafile", "ssl_certfile",
                 "ssl_keyfile", "dead_letters", "client_id", "fetch_max_wait_ms"}
_SSL_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
_AMQP_PARAMS = {"queue", "exchange", "routing_key", "exchange_type", "prefetch", "dead_letters", *_SSL_FILES}
_PROTOCOLS = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
_MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}
_EXCHANGE_TYPES = {"direct", "topic", "fanout", "headers"}


@dataclass
class BrokerSettings:
    """One broker endpoint.

    :param kind: ``kafka`` or ``amqp``.
    :param shown: the URL with secrets replaced (logs, status, errors).
    :param name: Kafka topic, or RabbitMQ queue (inbound) / exchange or queue (outbound).
    """

    kind: str
    shown: str
    name: str
    servers: list[str] = field(default_factory=list)  # kafka
    group: str | None = None  # kafka consumer group
    kafka_options: dict = field(default_factory=dict, repr=False)  # security settings for aiokafka
    ssl_files: dict | None = None  # TLS: ssl_cafile/ssl_certfile/ssl_keyfile given (None: no TLS)
    amqp_url: str = field(default="", repr=False)  # connection URL for aio-pika (with the password)
    exchange: str | None = None
    routing_key: str | None = None
    exchange_type: str = "topic"
    prefetch: int = 200
    dead_letters: str | None = None
    #: Kafka: how long a fetch may wait for data (aiokafka's default, 500, when None). A broker wakes a
    #: waiting fetch when data arrives; tansu does not, so its latency is about half this.
    fetch_max_wait_ms: int | None = None

    @classmethod
    def parse(cls, url: str, *, what: str = "URL", inbound: bool = True, password_here: bool = True) -> "BrokerSettings":
        """Check ``url``; every error is a ``ConfigError`` naming ``what`` with the redacted URL.

        :param password_here: the password must be available now (False: checking values, whose
            passwords live in a Secret the pod reads)."""
        shown = redacted(url) if isinstance(url, str) else "?"
        try:
            parts = urlsplit(url)  # ports are checked per host below (a Kafka URL may list several)
        except ValueError as exc:
            raise ConfigError(what, shown, f"not a URL ({exc})") from None
        kind = SCHEMES.get(parts.scheme)
        if kind is None:
            raise ConfigError(what, shown, "expected kafka://host:port/TOPIC?group=NAME or "
                                           "amqp(s)://user@host:port/vhost?queue=NAME")
        params: dict[str, str] = {}
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k in params:
                raise ConfigError(what, shown, f"parameter {k!r} given twice")
            params[k] = v
        allowed = _KAFKA_PARAMS if kind == "kafka" else _AMQP_PARAMS
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ConfigError(what, shown, f"unknown parameter {unknown[0][:40]!r} (known: {', '.join(sorted(allowed))})")
        for k, v in params.items():
            if k not in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "prefetch", "fetch_max_wait_ms") \
                    and not _NAME.fullmatch(v):
                raise ConfigError(what, shown, f"{k}: must be 1-249 of letters, digits and ._:/-")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        password = unquote(password) or env(PASSWORD_ENV[kind]) or ""
        if not hosts:
            raise ConfigError(what, shown, "no host")
        if kind == "kafka":
            return cls._kafka(shown, what, hosts, unquote(user), password, parts.path, params, inbound, password_here)
        return cls._amqp(shown, what, parts, hosts, unquote(user), password, params, inbound)

    @classmethod
    def _kafka(cls, shown, what, hosts, user, password, path, params, inbound, password_here) -> "BrokerSettings":
        servers = [h.strip() for h in hosts.split(",") if h.strip()]
        for h in servers:
            m = _HOSTPORT.match(h)
            if not m or not 1 <= int(m.group(2)) <= 65535:
                raise ConfigError(what, shown, f"broker {h[:80]!r}: expected host:port")
        topic = path.strip("/")
        if not _NAME.fullmatch(topic) or "/" in topic:
            raise ConfigError(what, shown, "the path must be the topic: kafka://host:port/TOPIC")
        group = params.get("group")
        if inbound and not group:
            raise ConfigError(what, shown, "group=NAME is required (bridge replicas share the topic's "
                                           "partitions through the consumer group)")
        user = params.get("sasl_username") or user
        protocol = params.get("security_protocol") or ("SASL_PLAINTEXT" if user else "PLAINTEXT")
        if protocol not in _PROTOCOLS:
            raise ConfigError(what, shown, f"security_protocol {protocol!r}: one of {', '.join(sorted(_PROTOCOLS))}")
        options: dict = {"security_protocol": protocol}
        if protocol.startswith("SASL"):
            mechanism = params.get("sasl_mechanism", "PLAIN")
            if mechanism not in _MECHANISMS:
                raise ConfigError(what, shown, f"sasl_mechanism {mechanism!r}: one of {', '.join(sorted(_MECHANISMS))}")
            if not user or (password_here and not password):
                raise ConfigError(what, shown, f"{protocol} needs sasl_username and a password "
                                               f"(${PASSWORD_ENV['kafka']})")
            options.update(sasl_mechanism=mechanism, sasl_plain_username=user, sasl_plain_password=password)
        if protocol.endswith("SSL"):
            options["ssl_files"] = {k: params[k] for k in _SSL_FILES if k in params}
        if params.get("client_id"):
            options["client_id"] = params["client_id"]
        wait = params.get("fetch_max_wait_ms")
        if wait is not None and (not wait.isdigit() or not 1 <= int(wait) <= 10_000):
            raise ConfigError(what, shown, "fetch_max_wait_ms: a whole number between 1 and 10000")
        return cls(kind="kafka", shown=shown, name=topic, servers=servers, group=group, kafka_options=options,
                   dead_letters=params.get("dead_letters"), fetch_max_wait_ms=int(wait) if wait else None)

    @classmethod
    def _amqp(cls, shown, what, parts, hosts, user, password, params, inbound) -> "BrokerSettings":
        m = _HOSTPORT.match(hosts)
        if not (m and 1 <= int(m.group(2)) <= 65535) and not re.fullmatch(r"[A-Za-z0-9._-]+", hosts):
            raise ConfigError(what, shown, f"host {hosts[:80]!r}: expected host[:port]")
        queue, exchange = params.get("queue"), params.get("exchange")
        if inbound and not queue:
            raise ConfigError(what, shown, "queue=NAME is required")
        if not inbound and not (queue or exchange):
            raise ConfigError(what, shown, "name where to publish: exchange=NAME (with routing_key) or queue=NAME")
        etype = params.get("exchange_type", "topic")
        if etype not in _EXCHANGE_TYPES:
            raise ConfigError(what, shown, f"exchange_type {etype!r}: one of {', '.join(sorted(_EXCHANGE_TYPES))}")
        prefetch = params.get("prefetch", "200")
        if not prefetch.isdigit() or not 1 <= int(prefetch) <= 65535:
            raise ConfigError(what, shown, "prefetch: a whole number between 1 and 65535")
        netloc = hosts
        if user:
            netloc = quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@" + hosts
        connect_url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        files = {k: params[k] for k in _SSL_FILES if k in params}
        if files and parts.scheme != "amqps":
            raise ConfigError(what, shown, f"{next(iter(files))} needs amqps:// (TLS)")
        return cls(kind="amqp", ssl_files=files if parts.scheme == "amqps" else None, shown=shown, name=queue or exchange, amqp_url=connect_url, exchange=exchange,
                   routing_key=params.get("routing_key"), exchange_type=etype, prefetch=int(prefetch),
                   dead_letters=params.get("dead_letters"))

    def ssl_context(self):
        """The TLS context from the ``ssl_*`` files (None without TLS): the system's CAs unless
        ``ssl_cafile`` names a private one; a client certificate when ``ssl_certfile`` is given."""
        files = self.kafka_options.get("ssl_files") if self.kind == "kafka" else self.ssl_files
        if files is None:
            return None
        import ssl

        try:
            ctx = ssl.create_default_context(cafile=files.get("ssl_cafile"))
            if files.get("ssl_certfile"):
                ctx.load_cert_chain(files["ssl_certfile"], files.get("ssl_keyfile"))
        except (OSError, ssl.SSLError) as exc:
            name = next((k for k in _SSL_FILES if k in files and not os.access(files[k], os.R_OK)), None)
            why = f"{name} {files[name]!r}: not a readable file" if name else f"ssl files: {exc.__class__.__name__}"
            raise ConfigError("bridge URL", self.shown, why) from None
        return ctx

    def kafka_kwargs(self) -> dict:
        """Keyword arguments shared by aiokafka's consumer and producer."""
        opts = {k: v for k, v in self.kafka_options.items() if k != "ssl_files"}
        ctx = self.ssl_context()
        if ctx is not None:
            opts["ssl_context"] = ctx
        return {"bootstrap_servers": self.servers, **opts}
