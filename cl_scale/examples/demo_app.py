"""cl-scale demo: a Chainlit app that shows which instance answers and that the session survives.

Kill the instance named in a reply (`cl-scale status` lists PIDs): the page reconnects to another
instance, the counter goes on and the history stays.
"""

import os

import chainlit as cl

import cl_scale

INSTANCE = os.environ.get("CL_SCALE_INSTANCE_ID", "?")


@cl.on_chat_start
async def start():
    cl.user_session.set("counter", 0)
    await cl.Message(content=f"Hello! You are connected to **{INSTANCE}**. Say anything.").send()


@cl_scale.on_session_restore
async def restored():
    cl.user_session.set("moves", (cl.user_session.get("moves") or 0) + 1)


@cl.on_message
async def on_message(message: cl.Message):
    counter = (cl.user_session.get("counter") or 0) + 1
    cl.user_session.set("counter", counter)
    if message.content.strip().lower().startswith("stream"):
        reply = cl.Message(content="")
        for word in f"Streaming from {INSTANCE}, token by token, message {counter}.".split():
            await reply.stream_token(word + " ")
        await reply.send()
        return
    await cl.Message(content=(f"#{counter} from **{INSTANCE}** (session moved "
                              f"{cl.user_session.get('moves') or 0}x, {len(cl.chat_context.get())} messages "
                              f"in context): {message.content}")).send()
