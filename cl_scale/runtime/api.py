"""Public runtime API: reach a session, a user or a thread from any instance or any process.

Inside a ``cl-scale run`` instance, the emit functions go through the local-first manager (local
members directly, other instances through one targeted publish). From another process, use
:class:`RedisEmitter`, which publishes the same messages without running a Socket.IO server.
These are raw UI events; to put a message into the chat (persisted, in chat context) use the
worker SDK (``cl_scale.worker``).
"""

from __future__ import annotations

import json

from cl_scale.runtime.manager import LocalFirstRedisManager


def _sio():
    from cl_scale.runtime.instance import current

    return current().sio


async def emit_to_session(session_id: str, event: str, data) -> None:
    await _sio().emit(event, data, room=f"session:{session_id}")


async def emit_to_user(identifier: str, event: str, data) -> None:
    await _sio().emit(event, data, room=f"user:{identifier}")


async def emit_to_thread(thread_id: str, event: str, data) -> None:
    await _sio().emit(event, data, room=f"thread:{thread_id}")


def on_session_restore(func):
    """Register ``async def f()`` to run, inside the session's context, when a session moved here.

    Use it to rebuild what cannot be stored in Redis (LLM clients, agents, open files)::

        @cl_scale.on_session_restore
        async def rebuild():
            cl.user_session.set("agent", make_agent(cl.user_session.get("agent_config")))
    """
    from cl_scale.runtime import instance

    _RESTORE_CALLBACKS.append(func)
    if instance._current is not None:
        instance._current.hooks.restore_callbacks = _RESTORE_CALLBACKS
    return func


_RESTORE_CALLBACKS: list = []


class RedisEmitter:
    """Emit Socket.IO events to cl-scale rooms from a process that is not an instance."""

    def __init__(self, redis_url: str, *, prefix: str = "clscale", timeout: float = 2.0):
        from cl_scale.runtime.redis_conn import connect

        self.redis = connect(redis_url, timeout=timeout)
        self.prefix = prefix

    async def emit(self, room: str, event: str, data, namespace: str = "/") -> int:
        """Returns the number of instances the event was published to."""
        holders = await self.redis.smembers(f"{self.prefix}:room:{namespace}:{room}")
        message = json.dumps({"method": "emit", "event": event, "data": [data], "binary": False,
                              "namespace": namespace, "room": room, "skip_sid": None, "callback": None,
                              "host_id": "external"})
        reached = 0
        for holder in holders:
            channel = LocalFirstRedisManager.instance_channel(self.prefix, holder.decode())
            reached += 1 if await self.redis.publish(channel, message) else 0
        return reached

    async def emit_to_session(self, session_id: str, event: str, data) -> int:
        return await self.emit(f"session:{session_id}", event, data)

    async def emit_to_user(self, identifier: str, event: str, data) -> int:
        return await self.emit(f"user:{identifier}", event, data)

    async def aclose(self) -> None:
        await self.redis.aclose()
