"""``await cl_scale.outbound.publish(message)``: a user's message to ``$CL_SCALE_OUTBOUND_URL``.

The helper an app calls in ``@cl.on_message`` to hand each request to a worker fleet on Kafka or
RabbitMQ (``cl_scale.bridge.outbound`` has the format); the workers answer through ``cl-scale
bridge``. One connection per process, opened on first use.
"""

from __future__ import annotations

from cl_scale.bridge.outbound import Outbound, request_of

__all__ = ["publish", "request_of", "Outbound"]

_outbound: Outbound | None = None


async def publish(message) -> dict:
    """Publish the user's ``cl.Message`` with its session id, thread id, user and message id."""
    global _outbound
    if _outbound is None:
        from cl_scale.envvars import env
        from cl_scale.errors import UserError

        url = env("CL_SCALE_OUTBOUND_URL")
        if not url:
            raise UserError("CL_SCALE_OUTBOUND_URL is not set: name the topic (kafka://host:9092/TOPIC) or "
                            "exchange (amqp://user@host/vhost?exchange=NAME) user messages go to")
        _outbound = Outbound(url)
    return await _outbound.publish(message)
