"""The hook points cl-scale needs in Chainlit, python-socketio and python-engineio, checked at start.

Everything in ``runtime/chainlit/`` may touch these internals; nothing outside it does. A moved hook
point fails the start with one line naming the Chainlit version, never a runtime AttributeError.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import time
from datetime import datetime, timedelta, timezone
from importlib.metadata import version as dist_version

from cl_scale.errors import UserError

log = logging.getLogger("cl_scale.chainlit")

TESTED_CHAINLIT = (">=2.12.0", "<2.13")

# (module, attribute) pairs cl-scale patches or reads.
REQUIRED = [
    ("chainlit.server", "sio"),
    ("chainlit.server", "app"),
    ("chainlit.socket", "process_message"),
    ("chainlit.socket", "restore_existing_session"),
    ("chainlit.session", "WebsocketSession"),
    ("chainlit.session", "ws_sessions_id"),
    ("chainlit.session", "ws_sessions_sid"),
    ("chainlit.user_session", "user_sessions"),
    ("chainlit.user_session", "UserSession"),
    ("chainlit.chat_context", "chat_contexts"),
    ("chainlit.chat_context", "ChatContext"),
    ("chainlit.emitter", "ChainlitEmitter"),
    ("chainlit.context", "init_ws_context"),
    ("chainlit.config", "FILES_DIRECTORY"),
    ("chainlit.config", "load_module"),
    ("chainlit.message", "Message"),
    ("engineio.async_socket", "AsyncSocket"),
]
REQUIRED_HANDLERS = ("connect", "connection_successful", "disconnect", "client_message")


class ChainlitIncompatible(UserError):
    pass


def check_chainlit() -> str:
    """Fail fast, naming the Chainlit version, if a hook point moved."""
    installed = dist_version("chainlit")
    problems = []
    for module_name, attr in REQUIRED:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            problems.append(f"{module_name} ({exc.__class__.__name__})")
            continue
        if not hasattr(module, attr):
            problems.append(f"{module_name}.{attr}")
    if not problems:
        handlers = importlib.import_module("chainlit.server").sio.handlers.get("/", {})
        problems += [f"socket handler '{h}'" for h in REQUIRED_HANDLERS if h not in handlers]
    if problems:
        raise ChainlitIncompatible(
            f"Chainlit {installed} lacks what cl-scale hooks ({', '.join(problems)}); "
            f"cl-scale is tested with chainlit{','.join(TESTED_CHAINLIT)}")
    major_minor = tuple(int(x) for x in installed.split(".")[:2])
    if major_minor != (2, 12):
        log.warning("Chainlit %s is outside the tested range %s", installed, ",".join(TESTED_CHAINLIT))
    return installed


# -- Engine.IO transports ----------------------------------------------------------------------------
def transport_open(sio, sid: str) -> bool:
    """The Engine.IO transport under a Socket.IO sid (connected or still handshaking) is open."""
    eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
    sock = sio.eio.sockets.get(eio_sid) if eio_sid else None
    return sock is not None and not sock.closed


async def drop_transport(sio, sid: str) -> None:
    """Close a socket's Engine.IO transport without a Socket.IO verdict (no CONNECT_ERROR, no
    DISCONNECT): to the browser this is a lost connection, so it reconnects by itself with
    backoff — what a handshake that cannot be decided yet needs."""
    eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
    sock = sio.eio.sockets.get(eio_sid) if eio_sid else None
    if sock is not None and not sock.closed:
        await sock.close(wait=False, abort=True)
        await sock.queue.put(None)  # ends the websocket writer, which closes the websocket


def socket_connected(sio, sid: str | None) -> bool:
    """A Socket.IO socket is connected to this instance right now (not closed or closing)."""
    return bool(sid) and sio is not None and bool(sio.manager.is_connected(sid, "/"))


# -- messages without the 1 ms sleep -------------------------------------------------------------------
# Chainlit 2.12's ``Message.__init__`` sleeps 1 ms (``time.sleep``) so that consecutive messages get
# distinct ``created_at`` stamps. That blocks the event loop once per message: worker delivery stamps
# ``created_at`` itself (strictly increasing) and skips the sleep through this flag.
_SKIP_MESSAGE_SLEEP: contextvars.ContextVar[bool] = contextvars.ContextVar("clscale_skip_sleep", default=False)


class _MessageClock:
    """``chainlit.message``'s view of the ``time`` module: the same, except a skippable ``sleep``."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if not _SKIP_MESSAGE_SLEEP.get():
            time.sleep(seconds)


def install_message_clock() -> None:
    cm = importlib.import_module("chainlit.message")
    if getattr(cm, "time", None) is time:  # optional: a Chainlit without the sleep needs nothing
        cm.time = _MessageClock()


_last_stamp = datetime.min


def _unique_utc_now() -> str:
    """Chainlit's ``utc_now()`` format, strictly increasing within this process."""
    global _last_stamp
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    _last_stamp = now if now > _last_stamp else _last_stamp + timedelta(microseconds=1)
    return _last_stamp.isoformat() + "Z"


def new_message(**kwargs):
    """A ``chainlit.Message`` built without blocking the event loop (see ``_SKIP_MESSAGE_SLEEP``)."""
    from chainlit.message import Message

    token = _SKIP_MESSAGE_SLEEP.set(True)
    try:
        return Message(created_at=kwargs.pop("created_at", None) or _unique_utc_now(), **kwargs)
    finally:
        _SKIP_MESSAGE_SLEEP.reset(token)
