"""The AutoGen side: a host, two agents and a group chat manager, each its own process.

    python agents.py host    --address 127.0.0.1:50060
    python agents.py writer  --host 127.0.0.1:50060
    python agents.py editor  --host 127.0.0.1:50060
    python agents.py manager --host 127.0.0.1:50060
    python agents.py all     --host 127.0.0.1:50060     # the four above as child processes

Every agent process stays attached to the host (``stay_connected``): restart the host and they
register again. The model is deterministic by default (``ReplayChatCompletionClient``, one per
session, no API key); ``--model openai`` uses ``OpenAIChatCompletionClient`` (``pip install
'autogen-ext[openai]'``, ``OPENAI_API_KEY``, ``--openai-model``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys

from autogen_core import TypeSubscription
from autogen_ext.models.replay import ReplayChatCompletionClient

from cl_scale.integrations.autogen import GROUP_TOPIC, MANAGER_TYPE, GroupChatAgent, GroupChatManager, stay_connected

AGENTS = {
    "writer": ("Writer", "You are a writer. Write or revise a short story from the conversation so far."),
    "editor": ("Editor", "You are an editor. Give the writer concrete, short feedback on the latest draft."),
}
LINES = {
    "writer": "Draft {k}: on Halloween night the gingerbread man climbed out of the jar, "
              "lit a candle and walked into the dark kitchen to find the pumpkin.",
    "editor": "Edit {k}: good start; make the pumpkin speak first, cut the candle, "
              "and end the story with the gingerbread man laughing.",
}


class PacedReplay(ReplayChatCompletionClient):
    """The replay client, streaming at a human pace (``delay`` seconds per token)."""

    def __init__(self, responses, delay: float = 0.0):
        super().__init__(responses)
        self.delay = delay

    async def create_stream(self, *args, **kwargs):
        async for item in super().create_stream(*args, **kwargs):
            if isinstance(item, str) and self.delay:
                await asyncio.sleep(self.delay)
            yield item


def model_factory(role: str, args):
    if args.model == "openai":
        from autogen_ext.models.openai import OpenAIChatCompletionClient

        shared = OpenAIChatCompletionClient(model=args.openai_model)
        return lambda: shared
    return lambda: PacedReplay([LINES[role].format(k=k) for k in range(1, 201)], delay=args.delay)


async def run_host(address: str) -> None:
    from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntimeHost

    host = GrpcWorkerAgentRuntimeHost(address=address)
    host.start()
    print(f"AutoGen host on {address}", file=sys.stderr, flush=True)
    await host.stop_when_signal(grace=1)


async def run_worker(role: str, args) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    if role == "manager":
        async def setup(runtime) -> None:
            await GroupChatManager.register(runtime, MANAGER_TYPE, lambda: GroupChatManager(
                list(AGENTS), names={role: name for role, (name, _) in AGENTS.items()}, rounds=args.rounds,
                silence_seconds=args.silence))
            await runtime.add_subscription(TypeSubscription(topic_type=GROUP_TOPIC, agent_type=MANAGER_TYPE))
    else:
        name, system = AGENTS[role]
        factory = model_factory(role, args)

        async def setup(runtime) -> None:
            await GroupChatAgent.register(runtime, role, lambda: GroupChatAgent(name, system, factory,
                                                                                beat_seconds=args.beat))
            await runtime.add_subscription(TypeSubscription(topic_type=role, agent_type=role))

    async def attach(runtime) -> None:
        await setup(runtime)
        print(f"{role}: attached to {args.host}", file=sys.stderr, flush=True)

    await stay_connected(args.host, attach, stopping)


def run_all(args) -> None:
    """Host, agents and manager as child processes; Ctrl-C stops them all."""
    me = [sys.executable, os.path.abspath(__file__)]
    common = ["--rounds", str(args.rounds), "--silence", str(args.silence), "--delay", str(args.delay),
              "--model", args.model, "--openai-model", args.openai_model]
    children = [subprocess.Popen(me + ["host", "--address", args.host])]
    children += [subprocess.Popen(me + [role, "--host", args.host, *common]) for role in ("manager", *AGENTS)]
    try:
        children[0].wait()
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["host", "manager", *AGENTS, "all"])
    parser.add_argument("--address", default="127.0.0.1:50060", help="host: where to listen")
    parser.add_argument("--host", default=os.environ.get("CL_SCALE_AUTOGEN_HOST", "127.0.0.1:50060"),
                        help="agents: the host's address (default: $CL_SCALE_AUTOGEN_HOST, as rendered)")
    parser.add_argument("--rounds", type=int, default=3, help="manager: turns per user message")
    parser.add_argument("--silence", type=float, default=10.0, help="manager: seconds before a silent turn is retried")
    parser.add_argument("--beat", type=float, default=1.0, help="agents: seconds between 'still speaking' beats")
    parser.add_argument("--delay", type=float, default=0.05, help="replay model: seconds per streamed token")
    parser.add_argument("--model", choices=["replay", "openai"], default="replay")
    parser.add_argument("--openai-model", default="gpt-4o-mini")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.role == "all":
        run_all(args)
    elif args.role == "host":
        asyncio.run(run_host(args.address))
    else:
        asyncio.run(run_worker(args.role, args))


if __name__ == "__main__":
    main()
