"""Group chat front end: an unmodified-style Chainlit app that hands each question to the agents.

The agents are separate processes (agents.py, no Chainlit); they answer by streaming into this
session through cl-scale's worker path, so their turns land in the chat wherever the user is connected.
With ``CL_SCALE_OUTBOUND_URL`` set (the Kafka variant), questions go to that topic instead of Redis,
and the agents answer through ``cl-scale bridge``.
"""

import os

import chainlit as cl
import redis.asyncio as aioredis

REDIS_URL = os.environ.get("CL_SCALE_REDIS_URL", "redis://127.0.0.1:6379/0")
TURNS = "groupchat:turns"
_redis = None


def redis():
    global _redis
    if _redis is None:
        _redis = aioredis.Redis.from_url(REDIS_URL)
    return _redis


@cl.on_chat_start
async def start():
    await cl.Message(content="Ask anything: a planner, a critic and a writer will discuss it.").send()


@cl.on_message
async def on_message(message: cl.Message):
    if os.environ.get("CL_SCALE_OUTBOUND_URL"):  # the Kafka variant
        import cl_scale.outbound

        await cl_scale.outbound.publish(message)
        return
    await redis().xadd(TURNS, {"session": cl.context.session.id, "to": "planner", "question": message.content,
                               "transcript": ""}, maxlen=10_000, approximate=True)
