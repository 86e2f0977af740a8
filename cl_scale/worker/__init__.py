"""Worker delivery SDK: send messages, streamed tokens and updates into users' chats from any process.

    from cl_scale.worker import Publisher
    async with Publisher("redis://localhost:6379/0", key_id="k1", key="secret") as pub:
        await pub.send(session_id, "hello", author="Agent")
        async with pub.stream(session_id, author="Agent") as s:
            await s.token("hel"); await s.token("lo")

No Chainlit import here, and nothing from the server side (``runtime``): workers stay small.
"""

from cl_scale.wire.messages import WorkerKey, parse_keys  # noqa: F401
from cl_scale.worker.publisher import (  # noqa: F401
    BufferFull,
    DeliveryError,
    MessageTooLarge,
    OutboxFull,
    Publisher,
    Stream,
    SyncPublisher,
)
