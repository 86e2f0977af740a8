"""Kafka source (``aiokafka``): a consumer group on one topic, offsets committed after forwarding.

Bridge replicas share the topic's partitions through the group; a producer keys a session's messages
by session id, so they sit in one partition, in order, and one replica forwards them in order. A
batch's offsets are committed only after ``Bridge.forward`` returned (every message appended or
dead-lettered): a bridge killed in between re-reads the batch, and the instances' seen marks drop
what was already delivered. A new group starts at the earliest offset, so nothing published before
the first bridge started is skipped.
"""

from __future__ import annotations

import asyncio
import logging

from cl_scale.bridge.core import Incoming, Refused
from cl_scale.bridge.settings import BrokerSettings

log = logging.getLogger("cl_scale.bridge")


class KafkaSource:
    kind = "kafka"

    def __init__(self, settings: BrokerSettings, *, client_id: str):
        self.s, self.client_id = settings, client_id
        self.consumer = None
        self.producer = None  # broker dead-letter copies (``dead_letters=TOPIC``)

    async def connect(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        kwargs = self.s.kafka_kwargs()
        kwargs.setdefault("client_id", self.client_id)
        if self.s.fetch_max_wait_ms:
            kwargs["fetch_max_wait_ms"] = self.s.fetch_max_wait_ms
        consumer = AIOKafkaConsumer(self.s.name, group_id=self.s.group, enable_auto_commit=False,
                                    auto_offset_reset="earliest", request_timeout_ms=10_000, **kwargs)
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        self.consumer = consumer
        if self.s.dead_letters:
            producer = AIOKafkaProducer(acks="all", **kwargs)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                await self.close()
                raise
            self.producer = producer

    async def batch(self, max_items: int, max_seconds: float) -> list[Incoming]:
        records = await self.consumer.getmany(timeout_ms=int(max_seconds * 1000), max_records=max_items)
        out = []
        for tp, items in records.items():
            for r in items:
                headers = {k.lower(): v for k, v in (r.headers or ())}
                ctype = headers.get("content-type")
                out.append(Incoming(payload=r.value or b"", headers=headers,
                                    content_type=ctype.decode(errors="replace") if isinstance(ctype, bytes) else None,
                                    broker_id=f"kafka.{tp.topic}.{tp.partition}.{r.offset}", ref=(tp, r.offset)))
        return out

    async def ack(self, batch: list[Incoming]) -> None:
        from aiokafka.structs import OffsetAndMetadata

        offsets: dict = {}
        for item in batch:
            tp, offset = item.ref
            offsets[tp] = max(offsets.get(tp, -1), offset)
        if offsets:
            await self.consumer.commit({tp: OffsetAndMetadata(o + 1, "") for tp, o in offsets.items()})

    async def copy_refused(self, refused: list[Refused]) -> None:
        if self.producer is None or not refused:
            return
        sends = [await self.producer.send(self.s.dead_letters, r.incoming.payload,
                                          key=(r.session or None) and r.session.encode(),
                                          headers=[("cl-scale-code", r.code.encode()),
                                                   ("cl-scale-reason", r.reason.encode()[:1000])])
                 for r in refused]
        await asyncio.gather(*sends)

    async def lag(self) -> int | None:
        """Messages in the assigned partitions not yet committed by this consumer."""
        total = 0
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            committed = await self.consumer.committed(tp)
            total += max(0, high - (committed or 0))
        return total

    async def ping(self) -> bool:
        """A remote metadata call: False when no broker answers."""
        try:
            async with asyncio.timeout(3):
                await self.consumer._client.fetch_all_metadata()  # public topics() may answer from cache
            return True
        except Exception:
            return False

    async def close(self) -> None:
        for client in (self.consumer, self.producer):
            if client is not None:
                try:
                    await client.stop()
                except Exception as exc:
                    log.debug("kafka: stop failed: %s", exc.__class__.__name__)
        self.consumer = self.producer = None
