"""The way in: users' messages from the requests stream (``Keyspace.requests``, written by the
instance holding each session when ``CL_SCALE_PUBLISH_REQUESTS`` is on) published to the AutoGen
runtime as ``UserTurn`` on the group topic, topic source = the session id.

Why a Redis consumer group: several relays share the stream (each message handled by one), and a
relay that dies before acknowledging has its messages read again at its next start (pending entries
first). The identity in each ``UserTurn`` is the one the instance wrote from the session itself,
never something a client sent; the manager ignores a message id it has seen, so a redelivery after a
crash does not start a second turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

import redis.exceptions
from autogen_core import TopicId

from cl_scale.integrations.autogen.messages import GROUP_TOPIC, UserTurn
from cl_scale.wire.keyspace import Keyspace

log = logging.getLogger("cl_scale.autogen")

Publish = Callable[[object, TopicId], Awaitable[None]]
_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, TimeoutError)


UNANSWERED = "No group chat answered this message (the agents may be down). Please try again in a moment."


class Unanswered:
    """User messages the relay published that no manager has accepted yet. AutoGen's host drops a
    message nobody subscribes to without telling the publisher: when the manager is not running, the
    user would wait forever. Past ``seconds``, the chat says so instead (one notice per message).

    :param publisher: the worker path (the notice is an ordinary signed message, id derived from the
        user message's, so a redelivery shows it once).
    """

    def __init__(self, publisher, seconds: float = 10.0, notice: str = UNANSWERED):
        self.pub, self.seconds, self.notice = publisher, seconds, notice
        self._waiting: dict[tuple[str, str], float] = {}
        self.notified = 0

    def published(self, session: str, message_id: str) -> None:
        self._waiting.setdefault((session, message_id), time.monotonic() + self.seconds)

    def accepted(self, session: str, message_id: str) -> None:
        self._waiting.pop((session, message_id), None)

    async def run(self, stopping: asyncio.Event, poll: float = 0.5) -> None:
        while not stopping.is_set():
            now = time.monotonic()
            for key in [k for k, deadline in self._waiting.items() if deadline <= now]:
                session, message_id = key
                try:
                    await self.pub.send(session, self.notice, message_id=f"ag-unanswered-{message_id}"[:200],
                                        author="System")
                    self.notified += 1
                except Exception as exc:  # noqa: BLE001 - an expired session, Redis down: logged, never fatal
                    log.warning("session %s: unanswered notice not sent (%s)", session, exc.__class__.__name__)
                self._waiting.pop(key, None)
            try:
                await asyncio.wait_for(stopping.wait(), poll)
            except asyncio.TimeoutError:
                pass


class Relay:
    """Requests stream → AutoGen.

    :param redis: an asyncio Redis client (the worker role's rights suffice: XREADGROUP/XACK).
    :param publish: ``runtime.publish_message`` of the current AutoGen runtime (it may be replaced
        after a reconnect, hence a callable looked up per message).
    :param group: the consumer group (one per AutoGen deployment reading the stream).
    :param consumer: this relay's name in the group.
    :param unanswered: tracks published messages until a manager accepts them.
    """

    def __init__(self, redis, keys: Keyspace, publish: Callable[[], Publish], *, group: str = "autogen",
                 consumer: str = "relay", group_topic: str = GROUP_TOPIC, block_ms: int = 1000,
                 unanswered: Unanswered | None = None):
        self.redis, self.keys, self.publish, self.unanswered = redis, keys, publish, unanswered
        self.group, self.consumer, self.group_topic, self.block_ms = group, consumer, group_topic, block_ms
        self.relayed = 0
        self.skipped = 0

    async def ensure_group(self) -> None:
        """Create the group at the stream's end (new messages only) unless it exists."""
        try:
            await self.redis.xgroup_create(self.keys.requests, self.group, id="$", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stopping: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Relay until ``stopping`` is set, reading only while ``ready`` is set (connected to the host: a
        standby leaves the stream to the relay that can publish); Redis outages are waited out (nothing
        is acknowledged unsent)."""
        delay = 0.2
        pending = True  # first our own unacknowledged entries (a crash mid-batch), then new ones
        while not stopping.is_set():
            if ready is not None and not ready.is_set():
                await _either(ready, stopping)
                continue
            try:
                await self.ensure_group()
                got = await self.redis.xreadgroup(self.group, self.consumer, {self.keys.requests: "0" if pending else ">"},
                                                  count=100, block=None if pending else self.block_ms)
                entries = [e for _, batch in got or () for e in batch]
                if pending and not entries:
                    pending = False
                    continue
                for eid, raw in entries:
                    await self._relay(eid, raw)
                delay = 0.2
            except _TRANSIENT as exc:
                log.warning("relay: Redis unreachable (%s); retrying in %.1fs", exc.__class__.__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                pending = True

    async def _relay(self, eid: bytes, raw: dict | None) -> None:
        f = {k.decode(): v.decode(errors="replace") for k, v in (raw or {}).items()}
        sid = f.get("session", "")
        if not sid or not f.get("message_id"):
            self.skipped += 1
            log.info("relay: entry %s has no session or message id; skipped", eid.decode())
        else:
            turn = UserTurn(session_id=sid, message_id=f["message_id"], text=f.get("text", ""),
                            author=f.get("author") or "User", user=f.get("user") or None, thread=f.get("thread") or None)
            await self.publish()(turn, TopicId(self.group_topic, sid))
            if self.unanswered is not None:
                self.unanswered.published(sid, turn.message_id)
            self.relayed += 1
        await self.redis.xack(self.keys.requests, self.group, eid)


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
