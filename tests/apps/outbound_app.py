"""Test app: every user message goes out to $CL_SCALE_OUTBOUND_URL (Kafka or RabbitMQ)."""

import os

import chainlit as cl

import cl_scale.outbound

INSTANCE = os.environ.get("CL_SCALE_INSTANCE_ID", "?")


@cl.on_chat_start
async def start():
    await cl.Message(content=f"started on {INSTANCE}").send()


@cl.on_message
async def on_message(message: cl.Message):
    await cl_scale.outbound.publish(message)
