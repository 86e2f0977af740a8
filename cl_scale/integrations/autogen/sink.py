"""The sink: AutoGen ``UiEvent`` s into the Chainlit session named by their topic source, through
cl-scale's worker path (signed outbox entries, delivered by whichever instance holds the session,
kept across failover).

Why it reorders: AutoGen's gRPC worker runs every incoming event in its own task, so two chunks of one
reply can reach the handler out of order. Each chunk carries its index; the sink appends a message's
chunks in index order (holding early ones back) and ends it only once every chunk before the end is
written. Entry ids are ``<message id>:<index>``, so an event delivered twice is written once.

Refused, never lost silently: an event for a session Redis does not hold goes to the dead-letter
stream as ``unknown_session``; an invalid or oversized one as ``malformed``/``oversized``. The sink
keeps going either way.
"""

from __future__ import annotations

import asyncio
import logging

import redis.exceptions
from autogen_core import MessageContext, RoutedAgent, message_handler

from cl_scale.integrations.autogen.messages import UiEvent
from cl_scale.wire import dead_letters
from cl_scale.wire import messages as m
from cl_scale.worker.publisher import MessageTooLarge, Publisher

log = logging.getLogger("cl_scale.autogen")

#: Appended to a reply whose agent went silent (the manager's watchdog decided).
INTERRUPTED = "\n\n*(reply interrupted)*"
_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, TimeoutError)
MAX_REPLIES = 64  # per session: replies remembered (late chunks of older ones would start a new message)


class _Reply:
    """One streamed message being written: the next chunk index due and the ones that came early."""

    __slots__ = ("next", "early", "end", "closed", "parts", "author")

    def __init__(self, author: str):
        self.next, self.early, self.end, self.closed, self.parts, self.author = 0, {}, None, False, [], author


class ChainlitSink(RoutedAgent):
    """Subscribed to the UI topic; one instance per session (``id.key`` = the session id).

    :param publisher: the worker path into the sessions (its key signs every entry).
    :param interrupted: text appended to a reply the manager gave up on.
    :param retry_seconds: how long a transient Redis error is retried before the event is logged as lost.
    :param unanswered: the relay's ``Unanswered`` (same process), told of each accepted user message.
    """

    def __init__(self, publisher: Publisher, *, interrupted: str = INTERRUPTED, retry_seconds: float = 60.0,
                 unanswered=None):
        super().__init__("writes group chat messages into a Chainlit session")
        self.pub, self.interrupted, self.retry_seconds = publisher, interrupted, retry_seconds
        self.unanswered = unanswered  # relay.Unanswered: told when the manager accepted a user message
        self._replies: dict[str, _Reply] = {}
        self._lock = asyncio.Lock()
        self.refused = 0

    @property
    def session_id(self) -> str:
        return self.id.key

    @message_handler
    async def on_event(self, message: UiEvent, ctx: MessageContext) -> None:
        event = message
        if event.kind == "accepted":
            if self.unanswered is not None:
                self.unanswered.accepted(self.session_id, event.text)
            return
        async with self._lock:  # one session's writes in order
            try:
                bodies = self._bodies(event)
            except (ValueError, MessageTooLarge) as exc:
                await self._refuse(event, "oversized" if isinstance(exc, MessageTooLarge) else "malformed", str(exc))
                return
            if bodies:
                await self._write(event, bodies)

    # -- what to write -------------------------------------------------------------------------------
    def _bodies(self, event: UiEvent) -> list[m.Body]:
        sid, mid = self.session_id, event.message_id
        if event.kind == "notice":
            return [self.pub.body(sid, "message", f"{mid}:notice", f"{mid}-notice", event.text, event.author or None)]
        if event.kind == "step":
            return [self.pub.body(sid, "step", f"{mid}:step:{event.index}", f"{mid}-step-{event.index}", event.output,
                                  f"{event.name or 'tool'}", input=event.text)]
        reply = self._replies.get(mid)
        if reply is None:
            if event.kind == "interrupted":
                return []  # nothing of it was ever shown: nothing to finish
            reply = self._replies[mid] = _Reply(event.author or "Agent")
            while len(self._replies) > MAX_REPLIES:  # finished ones are only kept to drop late chunks
                self._replies.pop(next(iter(self._replies)))
        if reply.closed:
            return []  # a chunk after the end or after the manager gave up: the message is final
        if event.kind == "chunk":
            if event.index >= reply.next:
                reply.early[event.index] = event.text
        elif event.kind == "end":
            reply.end = (event.index, event.text)
        bodies: list[m.Body] = []
        first = reply.next
        while reply.next in reply.early:
            reply.parts.append(reply.early.pop(reply.next))
            reply.next += 1
        if reply.next > first:
            bodies += self.pub.stream_bodies(sid, mid, reply.parts[first:], offset=first, end=False, text=None,
                                             author=reply.author)
        if event.kind == "interrupted" or (reply.end is not None and reply.next >= reply.end[0]):
            text = reply.end[1] if reply.end is not None else "".join(reply.parts) + self.interrupted
            bodies += self.pub.stream_bodies(sid, mid, [], offset=reply.next, end=True, text=text, author=reply.author)
            reply.closed = True
            reply.early.clear()
            reply.parts = []
        return bodies

    # -- writing -------------------------------------------------------------------------------------
    async def _write(self, event: UiEvent, bodies: list[m.Body]) -> None:
        delay = 0.2
        waited = 0.0
        while True:
            try:
                results = await self.pub.append(bodies, require_session=True)
                break
            except _TRANSIENT as exc:
                if waited >= self.retry_seconds:
                    log.error("session %s: Redis unreachable for %.0fs (%s): %d entries of %s lost",
                              self.session_id, waited, exc.__class__.__name__, len(bodies), event.message_id)
                    return
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)
        if any(r == 3 for r in results):
            await self._refuse(event, "unknown_session", "autogen: no such session (never created, or expired)")

    async def _refuse(self, event: UiEvent, code: str, reason: str) -> None:
        self.refused += 1
        body = event.model_dump_json().encode()[: self.pub.max_bytes]
        log.info("session %s: AutoGen %s event refused (%s): %s", self.session_id[:128], event.kind, code, reason)
        try:
            await dead_letters.add(self.pub.redis, self.pub.keys.dead_letters, kid=self.pub.kid, body=body, sig="",
                                   code=code, reason=reason[:500], session=self.session_id[:128])
        except _TRANSIENT as exc:
            log.error("dead letter not written (%s)", exc.__class__.__name__)
