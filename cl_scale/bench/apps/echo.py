"""Benchmark and load-test app: an unmodified Chainlit app that echoes and streams (it runs under
stock ``chainlit run`` as well as ``cl-scale run``: no cl-scale import).

``echo`` any text -> ``echo=<text> instance=<id>``; ``stream N`` -> N streamed tokens ``t0 t1 ...``.
Worker pushes (``cl-scale send``, the SDK) need nothing here: cl-scale delivers them.

    cl-scale up $(python -c "import cl_scale.bench.apps.echo as m; print(m.__file__)")
"""

import os

import chainlit as cl

INSTANCE = os.environ.get("CL_SCALE_INSTANCE_ID", "?")


@cl.on_chat_start
async def start():
    await cl.Message(content=f"started on {INSTANCE}").send()


@cl.on_message
async def on_message(message: cl.Message):
    text = message.content
    if text.startswith("stream"):
        parts = text.split()
        n = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 50
        msg = cl.Message(content="")
        for i in range(n):
            await msg.stream_token(f"t{i} ")
        await msg.send()
        return
    await cl.Message(content=f"echo={text} instance={INSTANCE}").send()
