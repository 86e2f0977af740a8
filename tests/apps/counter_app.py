"""Test app: a per-session counter in user_session, chat history length, ask and file handling."""

import os

import chainlit as cl

import cl_scale

INSTANCE = os.environ.get("CL_SCALE_INSTANCE_ID", "?")
# re-run interrupted replies, except for messages that say so (a per-message decision)
cl_scale.rerun_interrupted = ((lambda message: "norerun" not in message.get("output", ""))
                              if os.environ.get("TEST_RERUN_INTERRUPTED") == "1" else False)


@cl.on_chat_start
async def start():
    cl.user_session.set("counter", 0)
    cl.user_session.set("client", object())  # not serialisable: must be skipped with a warning
    await cl.Message(content=f"started on {INSTANCE}").send()


@cl_scale.on_session_restore
async def restored():
    cl.user_session.set("client", object())
    cl.user_session.set("restores", (cl.user_session.get("restores") or 0) + 1)


@cl.on_message
async def on_message(message: cl.Message):
    counter = (cl.user_session.get("counter") or 0) + 1
    cl.user_session.set("counter", counter)
    text = message.content
    if text == "ask":
        answer = await cl.AskUserMessage(content="your name?", timeout=20).send()
        text = f"answer={answer['output'] if answer else None}"
    elif text == "file":
        files = [e for e in message.elements if getattr(e, "path", None)]
        text = "file=" + "|".join(open(f.path).read() for f in files)
    elif text == "filehash":
        import hashlib

        files = [e for e in message.elements if getattr(e, "path", None)]
        text = "filehash=" + "|".join(hashlib.sha256(open(f.path, "rb").read()).hexdigest() for f in files)
    elif text.startswith("relay "):  # emit into another session, wherever it is connected
        _, target, payload = text.split(" ", 2)
        await cl_scale.emit_to_session(target, "cl-scale", {"text": payload, "from": INSTANCE})
        text = "relayed"
    elif text.startswith("slow "):  # an in-flight reply that a graceful drain must let finish
        import asyncio

        await asyncio.sleep(float(text.split()[1]))
        text = "slow-done"
    elif text.startswith("slowstream "):  # a reply long enough to kill its instance in the middle
        import asyncio

        _, n, pause = text.split()[:3]
        if os.environ.get("TEST_RUN_LOG"):  # every run of this handler, for tests that count them
            with open(os.environ["TEST_RUN_LOG"], "a") as runs:
                runs.write(f"{message.id} {INSTANCE}\n")
        msg = cl.Message(content="")
        for i in range(int(n)):
            await msg.stream_token(f"s{i} ")
            await asyncio.sleep(float(pause))
        await msg.send()
        if os.environ.get("TEST_RUN_LOG"):  # and every run that finished (its side effects all done)
            with open(os.environ["TEST_RUN_LOG"], "a") as runs:
                runs.write(f"{message.id} {INSTANCE} finished\n")
        return
    elif text == "die":  # a handler that takes its instance down, every time
        os._exit(1)
    elif text.startswith("stream"):
        n = int(text.split()[1]) if " " in text else 50
        msg = cl.Message(content="")
        for i in range(n):
            await msg.stream_token(f"t{i} ")
        await msg.send()
        return
    history = len(cl.chat_context.get())
    has_client = cl.user_session.get("client") is not None
    await cl.Message(content=(f"count={counter} instance={INSTANCE} thread={cl.context.session.thread_id} "
                              f"history={history} client={has_client} restores={cl.user_session.get('restores') or 0} "
                              f"echo={text}")).send()
