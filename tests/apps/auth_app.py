"""Test app with header authentication: the user is whoever the X-User header names."""

import chainlit as cl


@cl.header_auth_callback
def auth(headers):
    user = headers.get("x-user")
    return cl.User(identifier=user) if user else None


@cl.on_chat_start
async def start():
    cl.user_session.set("owner", cl.context.session.user.identifier)
    await cl.Message(content="started").send()


@cl.on_message
async def on_message(message: cl.Message):
    await cl.Message(content=f"owner={cl.user_session.get('owner')} echo={message.content}").send()
