"""One face for both brokers in the bridge tests: publish like a worker would, read what the app sent."""

from __future__ import annotations

import asyncio
import json
import uuid

from cl_scale.bench.brokers import RabbitNode, Tansu


class KafkaFace:
    kind = "kafka"

    def __init__(self, broker: Tansu):
        self.broker = broker

    async def new_source(self) -> str:
        """A fresh topic (3 partitions); the bridge URL that consumes it."""
        self.topic = f"replies-{uuid.uuid4().hex[:8]}"
        await self.broker.create_topic(self.topic, 3)
        return f"kafka://{self.broker.bootstrap}/{self.topic}?group=bridge-{self.topic}&dead_letters={self.topic}-dlq"

    async def outbound_url(self, name: str) -> str:
        await self.broker.create_topic(name, 3)
        return f"kafka://{self.broker.bootstrap}/{name}"

    async def publish(self, items: list[tuple[bytes, str | None, dict, str | None]]) -> None:
        """(payload, key, headers, content type) each, in order."""
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all")
        await producer.start()
        try:
            for payload, key, headers, ctype in items:
                hdrs = [(k, v.encode()) for k, v in headers.items()]
                if ctype:
                    hdrs.append(("content-type", ctype.encode()))
                await producer.send(self.topic, payload, key=key.encode() if key else None, headers=hdrs)
            await producer.flush()
        finally:
            await producer.stop()

    async def read(self, name: str, n: int, timeout: float = 20.0, raw: bool = False) -> list:
        """The first ``n`` JSON messages of topic ``name`` (an outbound destination)."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(name, bootstrap_servers=self.broker.bootstrap, auto_offset_reset="earliest",
                                    group_id=f"reader-{uuid.uuid4().hex[:6]}")
        await consumer.start()
        out = []
        try:
            async with asyncio.timeout(timeout):
                while len(out) < n:
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        out += [r.value if raw else json.loads(r.value) for r in records]
        finally:
            await consumer.stop()
        return out

    async def dead_copies(self, n: int) -> list[dict]:
        return await self.read(f"{self.topic}-dlq", n, timeout=10, raw=True)

    async def pending(self) -> int:
        """What a new member of the bridge's group would be handed (after the bridge stopped): the
        messages not committed. (Read rather than computed: tansu's end offsets can be one short.)"""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.broker.bootstrap,
                                    group_id=f"bridge-{self.topic}", enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            total = 0
            for _ in range(6):  # bounded: ~3 s, time for the group to assign the partitions
                got = await consumer.getmany(timeout_ms=500)
                total += sum(len(v) for v in got.values())
            return total
        finally:
            await consumer.stop()


class AmqpFace:
    kind = "amqp"

    def __init__(self, node: RabbitNode):
        self.node = node

    async def new_source(self) -> str:
        """A fresh queue, declared and bound (as an operator would) so messages published before the
        bridge starts are kept; the bridge URL that consumes it."""
        import aio_pika

        self.queue = f"replies-{uuid.uuid4().hex[:8]}"
        connection = await aio_pika.connect(self.node.url)
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange("replies", "topic", durable=True)
            queue = await channel.declare_queue(self.queue, durable=True)
            await queue.bind(exchange, routing_key=self.queue)
        finally:
            await connection.close()
        return (f"amqp://guest@127.0.0.1:{self.node.port}/?queue={self.queue}&exchange=replies&routing_key={self.queue}"
                f"&dead_letters={self.queue}-dlq")

    async def outbound_url(self, name: str) -> str:
        return f"amqp://guest@127.0.0.1:{self.node.port}/?queue={name}"

    async def publish(self, items) -> None:
        import aio_pika

        connection = await aio_pika.connect(self.node.url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange("replies", "topic", durable=True)
            for payload, _key, headers, ctype in items:
                await exchange.publish(aio_pika.Message(payload, headers=headers or None, content_type=ctype),
                                       routing_key=self.queue)
        finally:
            await connection.close()

    async def _take(self, queue: str, n: int, timeout: float, raw: bool = False) -> list:
        import aio_pika

        connection = await aio_pika.connect(self.node.url)
        out = []
        try:
            channel = await connection.channel()
            q = await channel.declare_queue(queue, durable=True)
            async with asyncio.timeout(timeout):
                while len(out) < n:
                    msg = await q.get(fail=False)
                    if msg is None:
                        await asyncio.sleep(0.05)
                        continue
                    await msg.ack()
                    out.append(msg.body if raw else json.loads(msg.body))
        finally:
            await connection.close()
        return out

    async def read(self, name: str, n: int, timeout: float = 20.0) -> list[dict]:
        return await self._take(name, n, timeout)

    async def dead_copies(self, n: int) -> list[dict]:
        return await self._take(f"{self.queue}-dlq", n, 10, raw=True)

    async def pending(self) -> int:
        import aio_pika

        connection = await aio_pika.connect(self.node.url)
        try:
            channel = await connection.channel()
            q = await channel.declare_queue(self.queue, durable=True, passive=True)
            return q.declaration_result.message_count
        finally:
            await connection.close()
