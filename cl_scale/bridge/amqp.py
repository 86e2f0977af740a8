"""RabbitMQ source (``aio-pika``): one queue, optionally bound to an exchange, manual acks.

The queue is declared durable (and bound to ``exchange``/``routing_key`` when given); ``prefetch``
bounds what the broker hands over unacknowledged. Messages are acknowledged only after
``Bridge.forward`` returned; if the connection drops first, the broker requeues them and the
instances' seen marks drop what was already delivered. One consumer per queue keeps a session's
messages in order (RabbitMQ delivers a queue in order to one consumer; several consumers would
interleave it): scale a RabbitMQ bridge by queues, not replicas.
"""

from __future__ import annotations

import asyncio
import logging

from cl_scale.bridge.core import Incoming, Refused
from cl_scale.bridge.settings import BrokerSettings

log = logging.getLogger("cl_scale.bridge")
#: How long a batch already being filled waits for the next message of a burst.
LINGER = 0.005


class AmqpSource:
    kind = "amqp"

    def __init__(self, settings: BrokerSettings, *, client_id: str):
        self.s, self.client_id = settings, client_id
        self.connection = self.channel = self.queue = None
        self._inbox: asyncio.Queue | None = None
        self._raw = None  # the aiormq channel under aio-pika's: consumes and acks

    async def connect(self) -> None:
        import aio_pika

        self.connection = await aio_pika.connect(self.s.amqp_url, ssl_context=self.s.ssl_context(),
                                                 client_properties={"connection_name": self.client_id},
                                                 timeout=10)
        try:
            self.channel = await self.connection.channel()
            await self.channel.set_qos(prefetch_count=self.s.prefetch)
            self.queue = await self.channel.declare_queue(self.s.name, durable=True)
            if self.s.exchange:
                exchange = await self.channel.declare_exchange(self.s.exchange, self.s.exchange_type, durable=True)
                await self.queue.bind(exchange, routing_key=self.s.routing_key or "#")
            if self.s.dead_letters:
                await self.channel.declare_queue(self.s.dead_letters, durable=True)
            self._inbox = asyncio.Queue()
            # consume on the aiormq channel under aio-pika's: aio-pika wraps every delivery in an
            # IncomingMessage and one more task (AMQP is decoded message by message in Python, the
            # bridge's main CPU cost); here a delivery is only queued, its fields read in ``batch``
            self._raw = await self.channel.get_underlay_channel()
            await self._raw.basic_consume(self.queue.name, self._deliver)
        except BaseException:
            await self.close()
            raise

    async def batch(self, max_items: int, max_seconds: float) -> list[Incoming]:
        """Up to ``max_items`` messages: waits ``max_seconds`` for the first. A lone message goes at once
        (latency); when more are already waiting (a burst), it lingers up to ``LINGER`` seconds for
        the burst to arrive, so a burst costs few Redis round trips instead of one each."""
        if self.connection is None or self.connection.is_closed:
            raise ConnectionError("RabbitMQ connection closed")
        try:
            first = await asyncio.wait_for(self._inbox.get(), max_seconds)
        except TimeoutError:
            return []
        got = [first]
        while len(got) < max_items:
            if not self._inbox.empty():
                got.append(self._inbox.get_nowait())
                continue
            if len(got) == 1:
                break
            try:
                got.append(await asyncio.wait_for(self._inbox.get(), LINGER))
            except TimeoutError:
                break
        return [self._incoming(msg) for msg in got]

    async def _deliver(self, msg) -> None:
        self._inbox.put_nowait(msg)

    @staticmethod
    def _incoming(msg) -> Incoming:
        """An ``Incoming`` from aiormq's ``DeliveredMessage`` (``ref``: its delivery tag)."""
        props = msg.header.properties
        headers = {str(k).lower(): v for k, v in (props.headers or {}).items()}
        return Incoming(payload=msg.body or b"", headers=headers, content_type=props.content_type,
                        broker_id=f"amqp.{props.message_id}" if props.message_id else None,
                        ref=msg.delivery.delivery_tag)

    async def ack(self, batch: list[Incoming]) -> None:
        if batch:  # in order on one channel: acknowledging the last acknowledges the batch
            await self._raw.basic_ack(batch[-1].ref, multiple=True)

    async def copy_refused(self, refused: list[Refused]) -> None:
        if not self.s.dead_letters or not refused:
            return
        import aio_pika

        for r in refused:
            await self.channel.default_exchange.publish(
                aio_pika.Message(r.incoming.payload, content_type=r.incoming.content_type,
                                 headers={"cl-scale-code": r.code, "cl-scale-reason": r.reason[:1000]},
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=self.s.dead_letters)

    async def lag(self) -> int | None:
        """Messages ready in the queue (not counting those handed to this bridge)."""
        declared = await self.channel.declare_queue(self.s.name, passive=True)
        return declared.declaration_result.message_count

    async def ping(self) -> bool:
        return self.connection is not None and not self.connection.is_closed

    async def close(self) -> None:
        if self.connection is not None:
            try:
                await self.connection.close()
            except Exception as exc:
                log.debug("amqp: close failed: %s", exc.__class__.__name__)
        self.connection = self.channel = self.queue = self._raw = None
