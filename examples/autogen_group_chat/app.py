"""The Chainlit side of the AutoGen group chat: a plain Chainlit app with no AutoGen code at all.

Each user message is recorded by the instance holding the session (``CL_SCALE_PUBLISH_REQUESTS=1``);
``cl-scale autogen`` relays it to the AutoGen runtime as that session's next group-chat turn, and
writes the agents' streamed answers back into this session — on whichever instance holds it then.
"""

import chainlit as cl


@cl.on_chat_start
async def start():
    await cl.Message(content="Ask for a short story: a writer and an editor will work on it together.",
                     author="System").send()


@cl.on_message
async def on_message(message: cl.Message):
    pass  # answered by the group chat (agents.py), streamed in through cl-scale's worker path
