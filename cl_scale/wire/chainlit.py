"""Chainlit's client protocol over Socket.IO, as its browser client speaks it — one copy.

The instance side reads it too (``runtime.asgi`` checks ``/set-session-cookie``).
``ops.client.ChainlitClient`` (asyncio, on python-socketio: doctor, tests, the benchmark) and the
locust user (gevent, raw Engine.IO framing on ``websocket-client``) both build their handshake and
messages here::

    POST /set-session-cookie {"session_id": ...}    sets the cookie Chainlit checks on connect
    ws   /ws/socket.io/?EIO=4&transport=websocket   Engine.IO v4 (open: "0{...}", ping "2", pong "3")
    ->   40{clientType, sessionId, threadId, userEnv, chatProfile}   Socket.IO connect with auth
    <-   40{"sid": ...}   (or 44{...}: refused)
    ->   42["connection_successful"]                runs on_chat_start / on_chat_resume
    ->   42["client_message", {"message": {...}, "fileReferences": []}]
    <-   42["task_start"], 42["new_message", {...}], 42["stream_start"|"stream_token", {...}], 42["task_end"]
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

SESSION_COOKIE = "X-Chainlit-Session-id"
SET_COOKIE_PATH = "/set-session-cookie"
SOCKETIO_PATH = "/ws/socket.io"
WEBSOCKET_PATH = SOCKETIO_PATH + "/?EIO=4&transport=websocket"

#: Events that open a step in the chat; ``task_end`` closes every handler Chainlit runs as a task.
STEP_EVENTS = ("new_message", "stream_start")
#: Chainlit wraps every ``on_message`` handler in a step of this type, whether it answers or not.
HANDLER_STEP = "run"


def is_reply(event: str, data: object) -> bool:
    """Whether ``event`` shows the user something: a message or a step opened by the app, except the
    ``run`` step Chainlit opens around each ``on_message`` (sent even when the handler says nothing)."""
    return event in STEP_EVENTS and isinstance(data, dict) and data.get("type") != HANDLER_STEP


def auth(session_id: str, *, thread_id: str | None = None, client_type: str = "webapp", user_env: str = "{}",
         chat_profile: str | None = None) -> dict:
    """The Socket.IO connect payload Chainlit's ``connect`` handler reads."""
    return {"clientType": client_type, "sessionId": session_id, "threadId": thread_id, "userEnv": user_env,
            "chatProfile": chat_profile}


def user_message(text: str, *, thread_id: str | None = None, files: list[dict] | None = None) -> tuple[str, dict]:
    """(message id, ``client_message`` payload) — what the browser sends when the user hits Enter."""
    message_id = str(uuid.uuid4())
    return message_id, {"message": {"id": message_id, "threadId": thread_id or "", "output": text, "name": "User",
                                    "type": "user_message", "createdAt": datetime.now(timezone.utc).isoformat()},
                        "fileReferences": list(files or [])}


def set_cookie_body(session_id: str) -> bytes:
    return json.dumps({"session_id": session_id}).encode()


# -- raw Engine.IO v4 / Socket.IO v5 text framing (clients without python-socketio) -----------------
PING, PONG = "2", "3"


def encode_connect(payload: dict) -> str:
    return "40" + json.dumps(payload)


def encode_event(event: str, *args) -> str:
    return "42" + json.dumps([event, *args])


def decode(packet: str) -> tuple[str, str | None, object]:
    """``("ping"|"open"|"close"|"connected"|"refused"|"disconnected"|"event"|"other", event name, data)``."""
    if packet == PING:
        return "ping", None, None
    if packet.startswith("0"):
        return "open", None, json.loads(packet[1:] or "{}")
    if packet == "1":
        return "close", None, None
    if packet.startswith("40"):
        return "connected", None, json.loads(packet[2:] or "{}")
    if packet.startswith("44"):
        return "refused", None, packet[2:]
    if packet.startswith("41"):
        return "disconnected", None, None
    if packet.startswith("42"):
        name, *data = json.loads(packet[2:])
        return "event", name, data[0] if data else None
    return "other", None, packet
