"""What a worker asks for, as JSON: the one public message format of the HTTP gateway and every
broker bridge (``docs/worker.md``, "Message format").

The HTTP gateway takes the target from its URL and the rest from these bodies (``MessageIn``,
``StreamIn``, ``UpdateIn``). A broker message has no URL, so ``Envelope`` is the same body plus its
target and what to do (``kind``)::

    {"session_id": "4f1c...", "text": "hello"}                       # a message (kind defaults)
    {"user": "alice@example.com", "text": "deploy done", "id": "d-42"}  # every live session of a user
    {"kind": "stream", "session_id": "...", "id": "r-7", "tokens": ["He", "llo"], "end": false}
    {"kind": "update", "session_id": "...", "id": "r-7", "text": "Hello!"}
    {"kind": "remove", "session_id": "...", "id": "r-7"}

``Publisher.bodies`` turns an ``Envelope`` into the signed entries of the owner-routed outbox, so the
SDK, the gateway and the bridges share one meaning for every field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cl_scale.wire import messages as m


class MessageIn(BaseModel):
    """``POST .../messages``: one message."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=m.MAX_BYTES)
    id: m.MessageId | None = Field(default=None, description="idempotency key / message id")
    author: m.Author | None = None
    elements: list[m.Element] = Field(default_factory=list, max_length=20)


class UpdateIn(BaseModel):
    """``PATCH .../messages/{id}``: replace an earlier message's text."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=m.MAX_BYTES)
    author: m.Author | None = None


class StreamIn(BaseModel):
    """Tokens of one message. Several calls may extend one stream: pass the same ``id`` and the index of
    the first token (``offset``); the last call sets ``end`` (and ``text``, the full text, if earlier
    calls carried tokens)."""

    model_config = ConfigDict(extra="forbid")
    tokens: list[str] = Field(min_length=0, max_length=10_000)
    id: m.MessageId | None = None
    offset: int = Field(default=0, ge=0, le=1_000_000)
    end: bool = True
    text: str | None = Field(default=None, max_length=m.MAX_BYTES)
    author: m.Author | None = None


#: Which fields each kind may carry (besides its target, ``kind`` and ``author``).
_FIELDS = {
    "message": {"text", "id", "elements"},
    "stream": {"tokens", "id", "offset", "end", "text"},
    "update": {"text", "id"},
    "remove": {"id"},
}
_REQUIRED = {"message": {"text"}, "stream": {"id"}, "update": {"id", "text"}, "remove": {"id"}}


class Envelope(BaseModel):
    """One broker message: the gateway's body plus exactly one target (``session_id``, ``user`` or
    ``thread``) and a ``kind`` (default ``message``). Streams, updates and removals address one
    session and name the message ``id`` (a stream's parts share it). A message without ``id`` gets
    the broker's own id (Kafka: topic/partition/offset; RabbitMQ: the ``message_id`` property), so a
    redelivery is recognised as the same message."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["message", "stream", "update", "remove"] = "message"
    session_id: m.SessionId | None = None
    user: m.Name | None = None
    thread: m.Name | None = None
    text: str | None = Field(default=None, max_length=m.MAX_BYTES)
    id: m.MessageId | None = None
    author: m.Author | None = None
    elements: list[m.Element] = Field(default_factory=list, max_length=20)
    tokens: list[str] = Field(default_factory=list, max_length=10_000)
    offset: int = Field(default=0, ge=0, le=1_000_000)
    end: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> "Envelope":
        targets = [n for n in ("session_id", "user", "thread") if getattr(self, n) is not None]
        if len(targets) != 1:
            raise ValueError("give exactly one target: session_id, user or thread")
        if self.kind != "message" and targets[0] != "session_id":
            raise ValueError(f"kind {self.kind!r} addresses one session: use session_id")
        given = {n for n in self.model_fields_set if n not in ("kind", "session_id", "user", "thread", "author")}
        extra = given - _FIELDS[self.kind]
        if extra:
            raise ValueError(f"kind {self.kind!r} takes no {', '.join(sorted(extra))}")
        missing = {n for n in _REQUIRED[self.kind] if getattr(self, n) is None}
        if self.kind == "message" and "text" in missing:
            raise ValueError("text is required")
        if missing:
            raise ValueError(f"kind {self.kind!r} needs {', '.join(sorted(missing))}")
        return self

    @property
    def target(self) -> m.Target:
        return m.Target(session=self.session_id, user=self.user, thread=self.thread)


def why_invalid(exc: ValidationError) -> str:
    """A request's validation error as one line: our own model checks say it all; otherwise
    ``field: why``."""
    err = exc.errors()[0]
    if err["type"] == "value_error":
        return str(err.get("ctx", {}).get("error", err["msg"]))
    return m.first_error(exc)
