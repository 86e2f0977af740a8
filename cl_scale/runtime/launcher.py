"""``cl-scale run``: start an unmodified Chainlit app as one single-worker instance wired to Redis.

Mirrors ``chainlit run`` (chainlit/cli/__init__.py) step by step, adding: the hook check, a private
files directory (Chainlit deletes its whole ``.files`` on shutdown), the local-first Socket.IO manager,
session hooks, and the instance ASGI wrapper. Redis does not have to be up at start: the instance
serves, reports not-ready, and connects as soon as Redis answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from cl_scale.errors import UserError
from cl_scale.runtime.settings import RuntimeSettings

log = logging.getLogger("cl_scale.run")


def run(target: str, settings: RuntimeSettings, *, headless: bool = True, debug: bool = False,
        root_path: str = "") -> None:
    if not Path(target).is_file():
        raise UserError(f"app file not found: {target}")
    os.environ["CHAINLIT_HOST"] = settings.host
    os.environ["CHAINLIT_PORT"] = str(settings.port)
    if root_path:
        os.environ["CHAINLIT_ROOT_PATH"] = root_path
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s [" + settings.instance_id + "] %(message)s")

    import nest_asyncio

    nest_asyncio.apply()  # as chainlit run does: Chainlit re-enters the loop for chat profiles

    from cl_scale.runtime.chainlit_hooks import check_chainlit

    check_chainlit()

    import chainlit.config as cl_config
    import chainlit.server as cl_server
    from chainlit.auth import ensure_jwt_secret
    from chainlit.cache import init_lc_cache
    from chainlit.markdown import init_markdown

    files_dir = Path(settings.files_dir or Path(cl_config.APP_ROOT) / ".files" / settings.instance_id)
    files_dir.mkdir(parents=True, exist_ok=True)
    cl_config.FILES_DIRECTORY = files_dir
    cl_server.FILES_DIRECTORY = files_dir

    config = cl_config.config
    config.run.host, config.run.port = settings.host, settings.port
    config.run.headless, config.run.debug = headless, debug
    config.run.root_path = root_path
    config.run.module_name = target
    # One session timeout for both: how long Chainlit keeps a disconnected session in memory and how
    # long Redis keeps it restorable. CL_SCALE_SESSION_TIMEOUT (settings) wins over config.toml.
    if settings.session_timeout is None:
        settings.session_timeout = int(config.project.session_timeout)
    config.project.session_timeout = settings.session_timeout
    cl_config.load_module(target)
    ensure_jwt_secret()
    if not (config.code.on_chat_start or config.code.on_message or config.code.on_audio_chunk):
        raise UserError(f"{target}: define at least one of on_chat_start, on_message or on_audio_chunk")
    init_markdown(config.root)
    init_lc_cache()

    from cl_scale.runtime import api
    from cl_scale.runtime.asgi import InstanceApp
    from cl_scale.runtime.instance import Instance

    instance = Instance(settings)
    instance.install()
    instance.hooks.restore_callbacks = api._RESTORE_CALLBACKS
    asgi_app = InstanceApp(instance, cl_server.app)

    import uvicorn

    async def serve():
        server = _server_class()(uvicorn.Config(
            asgi_app, host=settings.host, port=settings.port, ws=settings.ws_protocol,
            log_level="debug" if debug else "warning", ws_per_message_deflate=settings.ws_per_message_deflate,
            ssl_keyfile=settings.ssl_keyfile, ssl_certfile=settings.ssl_certfile,
            timeout_keep_alive=KEEP_ALIVE_SECONDS, timeout_graceful_shutdown=SHUTDOWN_AFTER_DRAIN_SECONDS), instance)
        await server.serve()

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

