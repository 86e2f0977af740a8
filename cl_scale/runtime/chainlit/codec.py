"""Chainlit's in-memory session state, as cl-scale reads, stores and rebuilds it.

Chainlit keeps each session in process memory: ``ws_sessions_id``/``ws_sessions_sid`` (the session
objects), ``user_sessions`` (``cl.user_session`` values) and ``chat_contexts`` (the messages the app
sees as history). :class:`ChainlitState` is the one adapter to them: what ``SessionSync`` saves, what
``Delivery`` renders into, what a restore rebuilds.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging

from cl_scale.runtime import metrics, uploads
from cl_scale.runtime.chainlit import compat

log = logging.getLogger("cl_scale.chainlit")

# Keys Chainlit copies into user_session on every get(): rebuilt from the session, never stored.
_DERIVED_KEYS = {"id", "env", "chat_settings", "user", "chat_profile", "client_type"}
_MAX_WARNED = 1000


@functools.cache
def _modules():
    # ``chainlit.user_session`` / ``chainlit.chat_context`` are shadowed by instances on the package:
    # fetch the modules themselves (once: some of these run on every save).
    return (importlib.import_module("chainlit.session"), importlib.import_module("chainlit.user_session"),
            importlib.import_module("chainlit.chat_context"))


class ChainlitState:
    """Read and rebuild Chainlit's per-session state.

    :param sio: Chainlit's ``socketio.AsyncServer`` (whether a session's socket is connected here).
    """

    def __init__(self, sio):
        self.sio = sio
        self._warned_keys: set[str] = set()

    # -- lookup ---------------------------------------------------------------------------------------
    @staticmethod
    def session(session_id: str):
        return _modules()[0].WebsocketSession.get_by_id(session_id)

    @staticmethod
    def session_by_sid(sid: str):
        return _modules()[0].WebsocketSession.get(sid)

    @staticmethod
    def sessions() -> list:
        return list(_modules()[0].ws_sessions_id.values())

    @staticmethod
    def current():
        """The session of the running Chainlit context, or None."""
        from chainlit.context import context

        try:
            session = context.session
        except Exception:
            return None
        return session if session is not None and hasattr(session, "socket_id") else None

    @staticmethod
    def enter(session) -> None:
        """Make ``session`` the Chainlit context of the running task (``cl.Message`` etc. target it)."""
        from chainlit.context import init_ws_context

        init_ws_context(session)

    def connected(self, session) -> bool:
        return compat.socket_connected(self.sio, getattr(session, "socket_id", None))

    @staticmethod
    def messages(session_id: str) -> list:
        return _modules()[2].chat_contexts.get(session_id, [])

    @staticmethod
    def drop_message(session_id: str, message_id: str) -> None:
        contexts = _modules()[2].chat_contexts
        contexts[session_id] = [m for m in contexts.get(session_id, []) if m.id != message_id]

    @staticmethod
    def message(session_id: str, message_id: str):
        """The Message object the chat context holds (Chainlit matches by identity)."""
        return next((m for m in _modules()[2].chat_contexts.get(session_id, []) if m.id == message_id), None)

    @staticmethod
    def identity(session) -> tuple[str | None, str | None]:
        """(user identifier, thread id): what scopes and fan-out indexes key on."""
        user = session.user.identifier if getattr(session, "user", None) is not None else None
        return user, getattr(session, "thread_id", None)

    # -- snapshot / rebuild ---------------------------------------------------------------------------
    def snapshot(self, session) -> dict:
        """The JSON-serialisable part of a session. Values that are not serialisable are skipped with
        one warning per key (rebuild them in ``@cl_scale.on_session_restore``)."""
        values = {}
        for key, value in _modules()[1].user_sessions.get(session.id, {}).items():
            if key in _DERIVED_KEYS:
                continue
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                metrics.SNAPSHOT_SKIPPED.inc()
                if key not in self._warned_keys and len(self._warned_keys) < _MAX_WARNED:
                    self._warned_keys.add(key)
                    log.warning("user_session[%r] (%s) is not JSON-serialisable: not shared across "
                                "instances; rebuild it in an @on_session_restore hook",
                                key, type(value).__name__)
                continue
            values[key] = value
        user = session.user
        return {
            "id": session.id,
            "thread_id": session.thread_id,
            "user": user.to_dict() if user is not None else None,
            "client_type": session.client_type,
            "chat_profile": session.chat_profile,
            "chat_settings": session.chat_settings,
            "user_env": session.user_env,
            "chat_started": session.chat_started,
            "has_first_interaction": session.has_first_interaction,
            "user_session": values,
            "files": uploads.metadata(session),
        }

    @staticmethod
    def rehydrate(snap: dict, sid: str, environ: dict, messages: list[dict]):
        """Rebuild Chainlit's in-memory session from a snapshot, as if it had never left."""
        from chainlit.message import Message
        from chainlit.user import PersistedUser, User

        session_mod, user_mod, context_mod = _modules()
        user = None
        if snap.get("user"):
            data = dict(snap["user"])
            user = PersistedUser(**data) if "id" in data and "createdAt" in data else User(
                identifier=data["identifier"], display_name=data.get("display_name"),
                metadata=data.get("metadata") or {})

        async def not_connected(*_a, **_k):  # replaced by Chainlit's restore path right after
            return None

        session = session_mod.WebsocketSession(
            id=snap["id"], socket_id=sid, emit=not_connected, emit_call=not_connected,
            user_env=snap.get("user_env") or {}, client_type=snap.get("client_type") or "webapp",
            environ=environ, user=user, chat_profile=snap.get("chat_profile"))
        session.thread_id = snap["thread_id"]
        session.chat_settings = snap.get("chat_settings") or {}
        session.chat_started = bool(snap.get("chat_started"))
        session.has_first_interaction = bool(snap.get("has_first_interaction"))
        user_mod.user_sessions[session.id] = dict(snap.get("user_session") or {})
        ChainlitState.enter(session)
        context_mod.chat_contexts[session.id] = [Message.from_dict(m) for m in messages or []]
        return session

    @staticmethod
    def forget(session) -> None:
        """Drop a session from this process without running app callbacks (it lives elsewhere).

        A stale copy (one that a newer copy of the same session replaced here) drops only itself:
        ``user_session`` and the chat context are keyed by the session id, so they are the newer copy's."""
        session_mod, user_mod, context_mod = _modules()
        if session_mod.ws_sessions_sid.get(session.socket_id) is session:
            session_mod.ws_sessions_sid.pop(session.socket_id, None)
        current = session_mod.ws_sessions_id.get(session.id)
        if current is not None and current is not session:
            return
        session_mod.ws_sessions_id.pop(session.id, None)
        user_mod.user_sessions.pop(session.id, None)
        context_mod.chat_contexts.pop(session.id, None)

    @staticmethod
    def drop_context(session_id: str) -> None:
        _modules()[2].chat_contexts.pop(session_id, None)

    @staticmethod
    def tracked() -> dict[str, int]:
        session_mod, user_mod, context_mod = _modules()
        return {"chainlit_sessions": len(session_mod.ws_sessions_id), "chainlit_sockets": len(session_mod.ws_sessions_sid),
                "chainlit_user_sessions": len(user_mod.user_sessions),
                "chainlit_chat_contexts": len(context_mod.chat_contexts)}
