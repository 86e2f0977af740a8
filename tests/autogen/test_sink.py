"""The sink and relay on their own: bad AutoGen messages are refused into the dead-letter stream with
their reason and the sink keeps serving; and the same manager/agents/sink/relay on AutoGen's
single-process runtime (``SingleThreadedAgentRuntime``)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from cl_scale.ops.client import ChainlitClient
from cl_scale.wire import messages as wire
from tests.autogen.conftest import EXAMPLE, INSTANCE_ENV, KEYS
from tests.autogen.test_group_chat import expected, same, turns
from tests.worker.helpers import dlq

pytestmark = pytest.mark.slow


async def test_bad_events_are_dead_lettered_and_the_sink_keeps_going(cluster, autogen, autogen_app):
    from autogen_core import TopicId
    from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime

    from cl_scale.integrations.autogen import UI_TOPIC, UiEvent, UserTurn, serializers

    (inst,) = cluster.start(1, app=autogen_app, env=INSTANCE_ENV).instances
    side = autogen().start("host", "bridge")
    side.wait_attached("bridge")
    c = ChainlitClient(inst.url, reconnection=False)
    await c.connect()
    rt = GrpcWorkerAgentRuntime(host_address=side.address)  # this test is an AutoGen worker
    rt.add_message_serializer(serializers())
    await rt.start()
    try:
        bad = [("unknown-session-0001", UiEvent(kind="notice", chat="c", author="Bot", text="to nobody"), "unknown_session"),
               ("bad id!", UiEvent(kind="notice", chat="c", author="Bot", text="x"), "malformed"),
               (c.session_id, UiEvent(kind="notice", chat="big", author="Bot", text="x" * (wire.MAX_BYTES + 1)), "oversized"),
               (c.session_id, UiEvent(kind="chunk", chat="c", author="\x07bell", text="x"), "malformed")]
        for source, event, _ in bad:
            await rt.publish_message(event, TopicId(UI_TOPIC, source))
        await rt.publish_message(UserTurn(session_id=c.session_id, message_id="m", text="wrong type"),
                                 TopicId(UI_TOPIC, c.session_id))  # a type the sink does not handle
        await rt.publish_message(UiEvent(kind="notice", chat="ok", author="Bot", text="still here"),
                                 TopicId(UI_TOPIC, c.session_id))
        await c.wait_for(lambda: "still here" in [m.get("output") for m in c.messages()], 20)
        for _ in range(50):  # bounded: the letters are written before the good event, in their own tasks
            letters = await dlq(cluster.redis.url)
            if len(letters) >= len(bad):
                break
            await asyncio.sleep(0.1)
        assert sorted(letter["code"] for letter in letters) == sorted(code for _, _, code in bad), letters
        unknown = next(letter for letter in letters if letter["code"] == "unknown_session")
        assert unknown["session"] == "unknown-session-0001" and "no such session" in unknown["reason"]
        assert "to nobody" in unknown["body"]  # the event itself, for inspection
        assert side.procs["bridge"].alive()
    finally:
        await rt.stop()
        await c.close()


def example_agents():
    spec = importlib.util.spec_from_file_location("autogen_example_agents", EXAMPLE / "agents.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_same_chat_on_the_single_process_runtime(cluster, autogen_app):
    from autogen_core import SingleThreadedAgentRuntime, TypeSubscription

    from cl_scale.integrations.autogen import (
        GROUP_TOPIC,
        MANAGER_TYPE,
        UI_TOPIC,
        GroupChatAgent,
        GroupChatManager,
        Relay,
        setup_sink,
    )
    from cl_scale.worker.publisher import Publisher

    ex = example_agents()
    (inst,) = cluster.start(1, app=autogen_app, env=INSTANCE_ENV).instances
    kid, secret = KEYS.split(":")
    pub = Publisher(cluster.redis_url, kid, secret, announce=None)
    rt = SingleThreadedAgentRuntime()
    await GroupChatManager.register(rt, MANAGER_TYPE, lambda: GroupChatManager(["writer", "editor"], rounds=3))
    await rt.add_subscription(TypeSubscription(topic_type=GROUP_TOPIC, agent_type=MANAGER_TYPE))
    for role, (name, system) in ex.AGENTS.items():
        factory = (lambda role=role: ex.PacedReplay([ex.LINES[role].format(k=k) for k in range(1, 20)], delay=0.01))
        await GroupChatAgent.register(rt, role, lambda name=name, system=system, factory=factory:
                                      GroupChatAgent(name, system, factory))
        await rt.add_subscription(TypeSubscription(topic_type=role, agent_type=role))
    await setup_sink(pub, ui_topic=UI_TOPIC)(rt)
    stopping = asyncio.Event()
    relay = Relay(pub.redis, pub.keys, lambda: rt.publish_message, consumer="single")
    rt.start()
    task = asyncio.ensure_future(relay.run(stopping))
    c = ChainlitClient(inst.url, reconnection=False)
    await c.connect()
    try:
        await c.send("a story please")
        await c.wait_for(lambda: same(turns(c), expected(3)) and turns(c)[-1][3].endswith("pumpkin."), 30)
        assert relay.relayed == 1
    finally:
        stopping.set()
        await task
        await rt.stop()
        await pub.aclose()
        await c.close()


async def test_tool_calls_show_as_chainlit_steps(cluster, autogen_app):
    """An agent whose model calls a tool: the call runs, shows in the chat as a Chainlit step (arguments
    in, result out), and the model's answer after it is the turn."""
    from autogen_core import FunctionCall, SingleThreadedAgentRuntime, TypeSubscription
    from autogen_core.models import CreateResult, RequestUsage
    from autogen_core.tools import FunctionTool
    from autogen_ext.models.replay import ReplayChatCompletionClient

    from cl_scale.integrations.autogen import (
        GROUP_TOPIC,
        MANAGER_TYPE,
        GroupChatAgent,
        GroupChatManager,
        Relay,
        setup_sink,
    )
    from cl_scale.worker.publisher import Publisher

    def word_count(text: str) -> int:
        """Count the words of a text."""
        return len(text.split())

    call = CreateResult(content=[FunctionCall(id="c1", name="word_count", arguments='{"text": "one two three"}')],
                        finish_reason="function_calls", usage=RequestUsage(prompt_tokens=0, completion_tokens=0),
                        cached=False)
    (inst,) = cluster.start(1, app=autogen_app, env=INSTANCE_ENV).instances
    kid, secret = KEYS.split(":")
    pub = Publisher(cluster.redis_url, kid, secret, announce=None)
    rt = SingleThreadedAgentRuntime()
    await GroupChatManager.register(rt, MANAGER_TYPE, lambda: GroupChatManager(["counter"], rounds=1))
    await rt.add_subscription(TypeSubscription(topic_type=GROUP_TOPIC, agent_type=MANAGER_TYPE))
    await GroupChatAgent.register(rt, "counter", lambda: GroupChatAgent(
        "Counter", "Count words.", lambda: ReplayChatCompletionClient([call, "The text has 3 words."]),
        tools=[FunctionTool(word_count, description="Count the words of a text.")]))
    await rt.add_subscription(TypeSubscription(topic_type="counter", agent_type="counter"))
    await setup_sink(pub)(rt)
    stopping = asyncio.Event()
    relay = Relay(pub.redis, pub.keys, lambda: rt.publish_message, consumer="single")
    rt.start()
    task = asyncio.ensure_future(relay.run(stopping))
    c = ChainlitClient(inst.url, reconnection=False)
    await c.connect()
    try:
        await c.send("count please")
        await c.wait_for(lambda: any(t[3] == "The text has 3 words." for t in turns(c)), 30)
        steps = [d for _, e, d in c.events if e == "new_message" and isinstance(d, dict) and d.get("type") == "tool"]
        assert len(steps) == 1, steps
        assert steps[0]["name"] == "word_count" and steps[0]["output"] == "3"
        assert steps[0]["input"] == '{"text": "one two three"}'
        assert [t[2:] for t in turns(c)] == [("Counter", "The text has 3 words.")]
    finally:
        stopping.set()
        await task
        await rt.stop()
        await pub.aclose()
        await c.close()
