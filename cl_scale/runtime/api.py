"""Public runtime API: reach a session, a user or a thread from any instance or any process.

Inside a ``cl-scale run`` instance, the emit functions go through the local-first manager (local
members directly, other instances through one targeted publish). From another process, use
:class:`RedisEmitter`, which publishes the same messages without running a Socket.IO server.
These are raw UI events; to put a message into the chat (persisted, in chat context) use the
worker SDK (``cl_scale.worker``).
"""

from __future__ import annotations

import uuid

from cl_scale.contract import DEFAULT_PREFIX
from cl_scale.runtime.manager import LocalFirstRedisManager
from cl_scale.wire.keyspace import Keyspace, room_name

_RESTORE_CALLBACKS: list = []
_server = None  # Chainlit's socketio.AsyncServer, bound by the launcher (``bind``)


def bind(sio) -> None:
    """Called once by ``cl-scale run`` with the server the emit functions use."""
    global _server
    _server = sio


def _sio():
    if _server is None:
        raise RuntimeError("cl-scale runtime is not running in this process (start the app with `cl-scale run`)")
    return _server


async def emit_to_session(session_id: str, event: str, data) -> None:
    await _sio().emit(event, data, room=room_name("session", session_id))


async def emit_to_user(identifier: str, event: str, data) -> None:
    await _sio().emit(event, data, room=room_name("user", identifier))


async def emit_to_thread(thread_id: str, event: str, data) -> None:
    await _sio().emit(event, data, room=room_name("thread", thread_id))


def on_session_restore(func):
    """Register ``async def f()`` to run, inside the session's context, when a session moved here.

    Use it to rebuild what cannot be stored in Redis (LLM clients, agents, open files)::

        @cl_scale.on_session_restore
        async def rebuild():
            cl.user_session.set("agent", make_agent(cl.user_session.get("agent_config")))
    """
    _RESTORE_CALLBACKS.append(func)
    return func


_INTERRUPTED_CALLBACKS: list = []


def on_reply_interrupted(func):
    """Register ``async def f(message: dict)`` to run, inside the session's context, on the instance
    that restored a session whose previous owner died while answering ``message`` (the user's message
    as Chainlit received it: ``id``, ``output``...). The chat already shows the notice
    (``cl_scale.interrupted_notice``); with ``cl_scale.rerun_interrupted = True`` the handler is run
    again instead (once), and this is called only if that run is interrupted too."""
    _INTERRUPTED_CALLBACKS.append(func)
    return func


def interrupted_callbacks() -> list:
    return _INTERRUPTED_CALLBACKS


def restore_callbacks() -> list:
    """The registry the instance's hooks read (the app module registers before the instance exists)."""
    return _RESTORE_CALLBACKS


class RedisEmitter:
    """Emit Socket.IO events to cl-scale rooms from a process that is not an instance: a write-only
    local-first manager (python-socketio builds the message; it is routed to the room's holders)."""

    def __init__(self, redis_url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = 2.0):
        self._manager = LocalFirstRedisManager(redis_url, keyspace=Keyspace(prefix),
                                               instance_id=f"emitter-{uuid.uuid4().hex[:12]}",
                                               redis_timeout=timeout, write_only=True)

    async def emit(self, room: str, event: str, data, namespace: str = "/") -> int:
        """Returns the number of instances the event was published to."""
        await self._manager.emit(event, data, namespace=namespace, room=room)
        return self._manager.last_reached

    async def emit_to_session(self, session_id: str, event: str, data) -> int:
        return await self.emit(room_name("session", session_id), event, data)

    async def emit_to_user(self, identifier: str, event: str, data) -> int:
        return await self.emit(room_name("user", identifier), event, data)

    async def aclose(self) -> None:
        await self._manager.redis.aclose()
