"""`cl-scale bridge URL`: Kafka or RabbitMQ messages into users' chats (``cl_scale.bridge``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cl_scale.cli import app
from cl_scale.cli.worker_cmds import _PREFIX_HELP, _REDIS_HELP, _STATE_HELP, _settings
from cl_scale.errors import UserError


@app.command("bridge", help=(
    "Forward messages from a Kafka topic or a RabbitMQ queue into users' chats, through the same "
    "signed, owner-routed outboxes as `cl-scale send`. A message is a JSON object: exactly one of "
    "session_id / user / thread, and text (docs/worker.md, \"Message format\"). Refused messages go to "
    "the dead-letter stream (`cl-scale dlq list`) and are acknowledged. Broker passwords come from "
    "$CL_SCALE_KAFKA_PASSWORD / $CL_SCALE_AMQP_PASSWORD (or the URL), and are never printed.\n\n"
    "Examples:\n\n"
    "  cl-scale bridge 'kafka://127.0.0.1:9092/chat-replies?group=cl-scale'\n\n"
    "  cl-scale bridge 'amqp://bridge@rabbitmq:5672/%2F?queue=chat-replies' --health-port 9100\n\n"
    "  cl-scale bridge 'kafka://k1:9093/replies?group=g&security_protocol=SASL_SSL&sasl_username=u' "
    "--require-signature"))
def bridge_cmd(
    url: str = typer.Argument(..., metavar="URL", help="kafka://host:port/TOPIC?group=NAME or "
                              "amqp(s)://user@host:port/VHOST?queue=NAME[&exchange=X&routing_key=K]"),
    redis_url: Optional[str] = typer.Option(None, "--redis-url", help=_REDIS_HELP),
    key_id: Optional[str] = typer.Option(None, "--key-id", help="Which worker key signs unsigned messages."),
    require_signature: bool = typer.Option(False, "--require-signature", help="Refuse messages without a valid "
                                           "cl-scale-kid/cl-scale-sig header (HMAC of the payload with a key of "
                                           "$CL_SCALE_WORKER_KEYS); that key's scope applies."),
    batch_size: int = typer.Option(200, help="At most this many messages per batch (one Redis round trip)."),
    health_port: int = typer.Option(0, help="Serve /healthz, /readyz and /metrics on this port (0: off)."),
    health_host: str = typer.Option("127.0.0.1", help="Address of the health port (0.0.0.0 in a pod)."),
    name: Optional[str] = typer.Option(None, help="This bridge in `cl-scale status` (default: kind-hostname)."),
    prefix: Optional[str] = typer.Option(None, help=_PREFIX_HELP),
    state_dir: Path = typer.Option(Path(".cl-scale"), help=_STATE_HELP),
) -> None:
    import asyncio
    import logging
    import re
    import signal

    from cl_scale.bridge.settings import BrokerSettings

    if not 1 <= batch_size <= 10_000:
        raise UserError(f"--batch-size {batch_size}: must be between 1 and 10000")
    if not 0 <= health_port <= 65535:
        raise UserError(f"--health-port {health_port}: must be between 0 and 65535")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name):
        raise UserError("--name: must be 1-100 of [A-Za-z0-9._-]")
    broker = BrokerSettings.parse(url)
    broker.ssl_context()  # a missing CA/certificate file is a usage error, not a reconnect loop
    settings = _settings(redis_url, prefix, key_id, state_dir=state_dir)
    settings.check_tls()
    key = settings.signing_key()
    if require_signature and not settings.known_keys:
        raise UserError("--require-signature: CL_SCALE_WORKER_KEYS is empty: no signature could verify")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        from cl_scale.bridge.core import Bridge
        from cl_scale.bridge.runner import Runner, serve_health
        from cl_scale.worker.publisher import Publisher

        pub = Publisher(settings.redis_url, key.kid, key.secret, prefix=settings.prefix, author="Worker",
                        outbox_max=settings.outbox_max, outbox_ttl=settings.outbox_ttl, announce=None)
        bridge = Bridge(pub, key, known_keys=settings.known_keys, require_signature=require_signature,
                        kind=broker.kind)
        runner = Runner(bridge, broker, batch_size=batch_size, name=name)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.stopping.set)
        web = await serve_health(runner, health_host, health_port) if health_port else None
        typer.echo(f"cl-scale bridge {runner.name}: {broker.shown} -> Redis {settings.keys.prefix}:* "
                   f"(signing key {key.kid!r}{', signatures required' if require_signature else ''})", err=True)
        try:
            await runner.run()
        finally:
            if web is not None:
                await web.cleanup()
            await pub.redis.aclose()

    asyncio.run(main())


@app.command("autogen", help=(
    "The cl-scale side of distributed AutoGen group chats: users' messages (the instances' requests "
    "stream, CL_SCALE_PUBLISH_REQUESTS=1) published to the AutoGen host as UserTurn on the group topic, and "
    "the agents' UiEvents written into each user's chat (topic source = Chainlit session id) through the "
    "signed worker path. Reconnects to the host by itself. Needs `pip install 'cl-scale[autogen]'`; see "
    "docs/autogen.md.\n\n"
    "Examples:\n\n"
    "  cl-scale autogen --host-address 127.0.0.1:50060\n\n"
    "  cl-scale autogen --host-address autogen-host:50060 --health-port 9102 --health-host 0.0.0.0"))
def autogen_cmd(
    host_address: str = typer.Option(..., "--host-address", help="The AutoGen GrpcWorkerAgentRuntimeHost, host:port."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url", help=_REDIS_HELP),
    key_id: Optional[str] = typer.Option(None, "--key-id", help="Which worker key signs."),
    ui_topic: str = typer.Option("chainlit", help="Topic type the agents publish UiEvents on."),
    group_topic: str = typer.Option("group_chat", help="Topic type the group chat manager listens on."),
    consumer_group: str = typer.Option("autogen", help="Redis consumer group on the requests stream."),
    unanswered_seconds: float = typer.Option(10.0, help="A user message no group chat manager accepted within "
                                             "this many seconds gets a notice in its chat."),
    health_port: int = typer.Option(0, help="Serve /healthz and /readyz on this port (0: off)."),
    health_host: str = typer.Option("127.0.0.1", help="Address of the health port (0.0.0.0 in a pod)."),
    name: Optional[str] = typer.Option(None, help="This process in `cl-scale status` and in the consumer group."),
    prefix: Optional[str] = typer.Option(None, help=_PREFIX_HELP),
    state_dir: Path = typer.Option(Path(".cl-scale"), help=_STATE_HELP),
) -> None:
    import asyncio
    import logging
    import re

    if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]{1,250}:[0-9]{1,5}", host_address):
        raise UserError(f"--host-address {host_address[:80]!r}: must be host:port")
    for option, value in (("--ui-topic", ui_topic), ("--group-topic", group_topic), ("--consumer-group", consumer_group),
                          *((("--name", name),) if name is not None else ())):
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", value):
            raise UserError(f"{option} {value[:80]!r}: must be 1-100 of [A-Za-z0-9._-]")
    if not 0 <= health_port <= 65535:
        raise UserError(f"--health-port {health_port}: must be between 0 and 65535")
    if not 0.5 <= unanswered_seconds <= 3600:
        raise UserError(f"--unanswered-seconds {unanswered_seconds}: must be between 0.5 and 3600")
    _autogen_check()
    settings = _settings(redis_url, prefix, key_id, state_dir=state_dir)
    settings.check_tls()
    settings.signing_key()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("autogen_core", "autogen_ext", "autogen_core.events"):  # they log every message at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from cl_scale.integrations.autogen.process import serve

    typer.echo(f"cl-scale autogen: AutoGen host {host_address} <-> Redis {settings.keys.prefix}:* "
               f"(topics {group_topic!r} in, {ui_topic!r} out)", err=True)
    asyncio.run(serve(settings, host_address, ui_topic=ui_topic, group_topic=group_topic,
                      consumer_group=consumer_group, name=name, health_port=health_port or None,
                      health_host=health_host, accept_seconds=unanswered_seconds))


@app.command("autogen-host", help=(
    "Run AutoGen's gRPC runtime host (GrpcWorkerAgentRuntimeHost), the hub the agent processes and "
    "`cl-scale autogen` connect to. It keeps registrations in memory; after a restart they register "
    "again by themselves (cl_scale.integrations.autogen.stay_connected).\n\n"
    "Examples:\n\n"
    "  cl-scale autogen-host --address 127.0.0.1:50060\n\n"
    "  cl-scale autogen-host --address 0.0.0.0:50060"))
def autogen_host_cmd(address: str = typer.Option("127.0.0.1:50060", "--address", help="host:port to listen on.")) -> None:
    import asyncio
    import re

    from cl_scale.listen import bind

    m = re.fullmatch(r"([A-Za-z0-9.\-\[\]:]{1,250}):([0-9]{1,5})", address)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise UserError(f"--address {address[:80]!r}: must be host:port")
    _autogen_check()
    bind(m.group(1).strip("[]"), int(m.group(2)), option=f"--address {address}").close()  # a taken port is one line, not a gRPC traceback
    from cl_scale.integrations.autogen.process import serve_host

    typer.echo(f"cl-scale autogen-host: listening on {address}", err=True)
    asyncio.run(serve_host(address))


def _autogen_check() -> None:
    try:
        from cl_scale.integrations.autogen import compat  # checks the installed AutoGen on import

        compat.check()
    except ImportError as exc:  # a module missing, or compat.AutoGenMissing with its reason
        raise UserError(str(exc) if exc.name is None else
                        f"AutoGen is not installed ({exc.name}): pip install 'cl-scale[autogen]'") from None
