"""Prepare Chainlit the way ``chainlit run`` does (chainlit/cli/__init__.py), step by step, adding
a private files directory (Chainlit deletes its whole ``.files`` on shutdown, so instances sharing
one would delete each other's uploads), one session timeout for Chainlit and Redis, and websocket-only
clients when the deployment asks for them (``CL_SCALE_WEBSOCKET_ONLY``: no stickiness needed)."""

from __future__ import annotations

import os
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path

from cl_scale.errors import UserError
from cl_scale.runtime.chainlit.compat import check_chainlit


@dataclass
class ChainlitApp:
    """What the launcher needs from a loaded Chainlit app."""

    asgi: object  # Chainlit's FastAPI app
    sio: object  # Chainlit's socketio.AsyncServer


def load(target: str, settings, *, headless: bool, debug: bool, root_path: str) -> ChainlitApp:
    """Load the user's app into Chainlit; ``settings.session_timeout`` is resolved here (None means
    Chainlit's ``config.toml`` value). Errors of the app itself become one short UserError."""
    if not Path(target).is_file():
        raise UserError(f"app file not found: {target}")
    os.environ["CHAINLIT_HOST"] = settings.host
    os.environ["CHAINLIT_PORT"] = str(settings.port)
    if root_path:
        os.environ["CHAINLIT_ROOT_PATH"] = root_path

    import nest_asyncio

    nest_asyncio.apply()  # as chainlit run does: Chainlit re-enters the loop for chat profiles
    check_chainlit()

    import chainlit.config as cl_config
    import chainlit.server as cl_server
    from chainlit.auth import ensure_jwt_secret
    from chainlit.cache import init_lc_cache
    from chainlit.markdown import init_markdown

    files_dir = Path(settings.files_dir or Path(cl_config.APP_ROOT) / ".files" / settings.instance_id)
    created = not files_dir.exists()
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
    if settings.websocket_only:  # served to the browser, which then never long-polls
        config.project.transports = ["websocket"]
    try:
        cl_config.load_module(target)
    except BaseException as exc:  # the app's own error: show it as the user's, briefly
        if created:
            shutil.rmtree(files_dir, ignore_errors=True)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise UserError(app_error(target, exc)) from None
    ensure_jwt_secret()
    if not (config.code.on_chat_start or config.code.on_message or config.code.on_audio_chunk):
        if created:
            shutil.rmtree(files_dir, ignore_errors=True)
        raise UserError(f"{target}: define at least one of on_chat_start, on_message or on_audio_chunk")
    init_markdown(config.root)
    init_lc_cache()
    return ChainlitApp(asgi=cl_server.app, sio=cl_server.sio)


def app_error(target: str, exc: BaseException) -> str:
    """``app.py:12: NameError: name 'x' is not defined`` — the app's innermost frame in its own file."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{target}:{exc.lineno}: SyntaxError: {exc.msg} (the app failed to load)"
    where = target
    app = str(Path(target).resolve())
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == app:
            where = f"{target}:{frame.lineno}"
    message = " ".join(str(exc).split())[:300]
    return f"{where}: {exc.__class__.__name__}: {message} (the app failed to load)"


def upload_limit_mb() -> int | None:
    """Chainlit's own ``features.spontaneous_file_upload.max_size_mb`` (None if unset)."""
    import chainlit.config as cl_config

    upload = cl_config.config.features.spontaneous_file_upload
    return upload.max_size_mb if upload is not None else None
