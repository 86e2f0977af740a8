"""``cl-scale run``: start an unmodified Chainlit app as one single-worker instance wired to Redis.

Chainlit is prepared as ``chainlit run`` would (``runtime.chainlit.boot``), then the instance's parts
are built and installed (``runtime.instance``) and uvicorn serves the instance ASGI wrapper. Redis does
not have to be up at start: the instance serves, reports not-ready, and connects as soon as Redis
answers.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from cl_scale.runtime.settings import RuntimeSettings

log = logging.getLogger("cl_scale.run")


def run(target: str, settings: RuntimeSettings, *, headless: bool = True, debug: bool = False,
        root_path: str = "") -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s [" + settings.instance_id + "] %(message)s")
    # A taken port is one line (exit 2), before anything loads; so is a TLS mistake towards Redis
    # (Redis merely down is not: the instance serves not-ready until it answers).
    from cl_scale.errors import UserError
    from cl_scale.listen import bind, raise_open_file_limit
    from cl_scale.runtime import api
    from cl_scale.runtime.asgi import InstanceApp
    from cl_scale.runtime.chainlit import boot
    from cl_scale.runtime.instance import Instance
    from cl_scale.wire.connect import tls_problem
    from cl_scale.wire.redis_url import redacted

    problem = asyncio.run(tls_problem(settings.redis_url))
    if problem:
        raise UserError(f"--redis-url / CL_SCALE_REDIS_URL={redacted(settings.redis_url)}: {problem}")
    sockets = [bind(settings.host, settings.port)]
    if (files := raise_open_file_limit()) < 8192:  # one per websocket client
        logging.getLogger("cl_scale.instance").warning(
            "open-file limit is %d (hard limit): this instance refuses clients beyond ~%d; raise `ulimit -n` "
            "(compose: ulimits.nofile; systemd: LimitNOFILE)", files, max(0, files - 200))
    if settings.grpc_port is not None:  # free now (gRPC binds it at start), and the extra installed
        bind(settings.host, settings.grpc_port).close()
        import importlib.util

        if importlib.util.find_spec("grpc_tools") is None:
            raise UserError("CL_SCALE_GRPC_PORT: the gRPC gateway needs pip install 'cl-scale[grpc]'")
    if settings.admin_port is not None:
        sockets.append(bind(settings.host, settings.admin_port))
    chainlit_app = boot.load(target, settings, headless=headless, debug=debug, root_path=root_path)
    instance = Instance(settings, chainlit_app.sio, api.restore_callbacks())
    instance.install()
    api.bind(chainlit_app.sio)
    asgi_app = InstanceApp(instance, chainlit_app.asgi, upload_limit_mb=boot.upload_limit_mb())

    import uvicorn

    async def serve():
        server = _server_class()(uvicorn.Config(
            asgi_app, host=settings.host, port=settings.port, ws=settings.ws_protocol,
            log_level="debug" if debug else "warning", ws_per_message_deflate=settings.ws_per_message_deflate,
            ssl_keyfile=settings.ssl_keyfile, ssl_certfile=settings.ssl_certfile,
            timeout_keep_alive=KEEP_ALIVE_SECONDS, timeout_graceful_shutdown=SHUTDOWN_AFTER_DRAIN_SECONDS), instance)
        await server.serve(sockets=sockets)

    asyncio.run(serve())


# After the drain has handed every client over, uvicorn only closes what is left.
SHUTDOWN_AFTER_DRAIN_SECONDS = 5
# Idle keep-alive of balancer -> instance connections. It must outlast the balancer's own (nginx
# upstream keepalive_timeout 60s, ingress-nginx 60s, cloud LBs 60s): with uvicorn's default 5 s the
# instance closes a connection just as nginx reuses it, and that POST fails with a 502 (measured in
# the reconnect-storm load test), since nginx never retries a non-idempotent request.
KEEP_ALIVE_SECONDS = 75


def _server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, but the first SIGTERM/SIGINT drains the instance before shutting down;
        a second one exits at once (uvicorn's own behaviour)."""

        def __init__(self, config, instance):
            super().__init__(config)
            self.instance = instance
            self._drain: asyncio.Task | None = None
            self._loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets=None):
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig, frame):
            if self._drain is None and self._loop is not None and not self.should_exit:
                self._loop.call_soon_threadsafe(self._start_drain)
                return
            super().handle_exit(sig, frame)

        def _start_drain(self):
            if self._drain is None:
                self._drain = asyncio.ensure_future(self._drain_then_exit())

        async def _drain_then_exit(self):
            try:
                await self.instance.drain(self.instance.settings.drain_seconds)
            except Exception:
                logging.getLogger("cl_scale.instance").exception("drain failed; shutting down anyway")
            finally:
                self.should_exit = True

    return DrainingServer

