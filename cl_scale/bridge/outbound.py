"""Users' messages out to the broker, so a worker fleet consumes requests where it already listens.

The app calls one helper in its handler; the request carries everything a worker needs to answer
through a bridge (the session id is the answer's target)::

    import cl_scale.outbound

    @cl.on_message
    async def on_message(message: cl.Message):
        await cl_scale.outbound.publish(message)      # to $CL_SCALE_OUTBOUND_URL

``CL_SCALE_OUTBOUND_URL`` names a Kafka topic (``kafka://host:9092/requests``; keyed by session id,
so one session's requests stay in order) or a RabbitMQ exchange or queue
(``amqp://user@host/vhost?exchange=requests&routing_key=chat`` / ``?queue=requests``). The request
(UTF-8 JSON)::

    {"session_id": "...", "thread": "...", "user": "alice" | null, "message_id": "...",
     "text": "...", "author": "User", "at": 1764750000.0}

One connection per process, opened on first use; a publish waits for the broker's acknowledgement
and raises when the broker is unreachable, so the app can tell its user.
"""

from __future__ import annotations

import asyncio
import json
import time

from cl_scale.bridge.settings import BrokerSettings


def request_of(message) -> dict:
    """The outbound request of a Chainlit ``cl.Message`` typed by the user, inside its handler."""
    from chainlit.context import context

    session = context.session
    user = getattr(session, "user", None)
    return {"session_id": session.id, "thread": getattr(session, "thread_id", None),
            "user": getattr(user, "identifier", None) if user else None, "message_id": message.id,
            "text": message.content, "author": message.author, "at": time.time()}


class Outbound:
    """Publishes JSON requests to one broker destination.

    :param url: as ``cl-scale bridge`` takes it, naming where to publish (``BrokerSettings``).
    """

    def __init__(self, url: str):
        self.s = BrokerSettings.parse(url, what="CL_SCALE_OUTBOUND_URL", inbound=False)
        self._client = None
        self._exchange = None
        self._lock = asyncio.Lock()

    async def _connect(self):
        if self.s.kind == "kafka":
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(acks="all", **self.s.kafka_kwargs())
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._client = producer
            return
        import aio_pika

        connection = await aio_pika.connect_robust(self.s.amqp_url, timeout=10, ssl_context=self.s.ssl_context())
        channel = await connection.channel(publisher_confirms=True)
        if self.s.exchange:
            self._exchange = await channel.declare_exchange(self.s.exchange, self.s.exchange_type, durable=True)
        else:
            await channel.declare_queue(self.s.name, durable=True)
            self._exchange = channel.default_exchange
        self._client = connection

    async def send(self, request: dict) -> None:
        """Publish one request (keyed by its ``session_id``); returns once the broker has it."""
        async with self._lock:
            if self._client is None:
                await self._connect()
        payload = json.dumps(request, separators=(",", ":"), default=str).encode()
        key = str(request.get("session_id") or "")
        if self.s.kind == "kafka":
            await self._client.send_and_wait(self.s.name, payload, key=key.encode() or None,
                                             headers=[("content-type", b"application/json")])
            return
        import aio_pika

        routing = (self.s.routing_key or "") if self.s.exchange else self.s.name
        await self._exchange.publish(aio_pika.Message(payload, content_type="application/json",
                                                      message_id=str(request.get("message_id") or "") or None,
                                                      delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                     routing_key=routing)

    async def publish(self, message) -> dict:
        """Publish a user's ``cl.Message`` (inside its handler); returns the request sent."""
        request = request_of(message)
        await self.send(request)
        return request

    async def aclose(self) -> None:
        if self._client is not None:
            if self.s.kind == "kafka":
                await self._client.stop()
            else:
                await self._client.close()
            self._client = None
