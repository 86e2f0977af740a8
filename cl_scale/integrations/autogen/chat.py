"""The group chat itself: a manager that takes turns among agents for each session, and a base agent
that streams its turn from any AutoGen ``ChatCompletionClient``.

Why a manager of our own rather than AutoGen's sample one: the sample keeps one conversation per
process (its agents' key is ``default``), picks speakers with an LLM call and, when an agent's process
dies, waits forever. Here every session has its own manager instance (the topic source is the session
id), speakers take turns round-robin for ``rounds`` turns per user message, and a watchdog that hears
nothing from the speaker (no ``Speaking`` beat) for ``silence_seconds`` marks that turn interrupted in
the chat and asks again — a restarted agent answers the retry — up to ``attempts`` times, then says in
the chat that the group chat stopped. A chat never stalls silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Callable, Sequence

from autogen_core import FunctionCall, MessageContext, RoutedAgent, TopicId, message_handler
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool

from cl_scale.integrations.autogen.messages import (
    GROUP_TOPIC,
    UI_TOPIC,
    AgentTurn,
    Line,
    RequestToSpeak,
    Speaking,
    UiEvent,
    UserTurn,
)

log = logging.getLogger("cl_scale.autogen")

STOPPED = "{speaker} did not answer: the group chat stopped. Send a message to try again."


class GroupChatManager(RoutedAgent):
    """Turn-taking for one session's group chat (one instance per session: its ``id.key``).

    :param participants: agent topic types, in speaking order (each agent subscribes to its own).
    :param names: how the chat names each participant in notices (default: its topic type).
    :param rounds: turns per user message.
    :param silence_seconds: a speaker silent this long (no ``Speaking`` beat, no turn) is given up on.
    :param attempts: requests per turn before the chat is stopped with a notice.
    :param stopped_notice: the chat's notice when a speaker never answers (``{speaker}`` is replaced).
    """

    def __init__(self, participants: Sequence[str], *, names: dict[str, str] | None = None, rounds: int = 3,
                 silence_seconds: float = 10.0,
                 attempts: int = 2, group_topic: str = GROUP_TOPIC, ui_topic: str = UI_TOPIC,
                 stopped_notice: str = STOPPED, description: str = "cl-scale group chat manager"):
        super().__init__(description)
        if not participants:
            raise ValueError("a group chat needs at least one participant")
        self.participants, self.rounds = list(participants), rounds
        self.names = {p: (names or {}).get(p, p) for p in self.participants}
        self.silence_seconds, self.attempts = silence_seconds, attempts
        self.group_topic, self.ui_topic, self.stopped_notice = group_topic, ui_topic, stopped_notice
        self.history: list[Line] = []
        self._seen: set[str] = set()
        self.chat: str | None = None
        self.turn = self.attempt = self.left = 0
        self._watchdog: asyncio.Task | None = None

    @property
    def session_id(self) -> str:
        return self.id.key

    @property
    def speaker(self) -> str:
        return self.participants[(self.turn - 1) % len(self.participants)]

    @message_handler
    async def on_user_turn(self, message: UserTurn, ctx: MessageContext) -> None:
        await self.publish_message(UiEvent(kind="accepted", text=message.message_id),
                                   TopicId(self.ui_topic, self.session_id))
        if message.message_id in self._seen:  # the relay redelivered it after a crash
            return
        self._seen.add(message.message_id)
        self.history.append(Line(author=message.author, text=message.text))
        if self.chat is None:
            self.chat, self.left = uuid.uuid4().hex[:12], self.rounds
            await self._next()
        else:  # a chat is running: later speakers read it in the transcript
            self.left = max(self.left, 1)

    @message_handler
    async def on_speaking(self, message: Speaking, ctx: MessageContext) -> None:
        if self._current(message):
            self._arm()

    @message_handler
    async def on_agent_turn(self, message: AgentTurn, ctx: MessageContext) -> None:
        if not self._current(message):
            return  # a late answer to an attempt already given up on
        self._disarm()
        self.history.append(Line(author=message.author, text=message.text))
        self.left -= 1
        await self._next()

    def _current(self, message) -> bool:
        return (message.chat, message.turn, message.attempt) == (self.chat, self.turn, self.attempt)

    async def _next(self) -> None:
        if self.left <= 0:
            self.chat = None
            return
        self.turn += 1
        self.attempt = 1
        await self._request()

    async def _request(self) -> None:
        request = RequestToSpeak(chat=self.chat, turn=self.turn, attempt=self.attempt, history=list(self.history))
        await self.publish_message(request, TopicId(self.speaker, self.session_id))
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._watchdog = asyncio.get_running_loop().create_task(self._expire(self.chat, self.turn, self.attempt))

    def _disarm(self) -> None:
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        self._watchdog = None

    async def _expire(self, chat: str, turn: int, attempt: int) -> None:
        await asyncio.sleep(self.silence_seconds)
        if (chat, turn, attempt) != (self.chat, self.turn, self.attempt):
            return
        ui = TopicId(self.ui_topic, self.session_id)
        await self.publish_message(UiEvent(kind="interrupted", chat=chat, turn=turn, attempt=attempt,
                                           author=self.names[self.speaker]), ui)
        if attempt < self.attempts:
            log.warning("session %s: %s silent for %.0fs (turn %d, attempt %d): asking again", self.session_id,
                        self.speaker, self.silence_seconds, turn, attempt)
            self.attempt += 1
            await self._request()
            return
        log.warning("session %s: %s never answered turn %d: chat stopped", self.session_id, self.speaker, turn)
        await self.publish_message(UiEvent(kind="notice", chat=chat, turn=turn, attempt=attempt, author="System",
                                           text=self.stopped_notice.format(speaker=self.names[self.speaker])), ui)
        self.chat, self.left = None, 0


class GroupChatAgent(RoutedAgent):
    """One participant: answers ``RequestToSpeak`` by streaming its model's reply into the session.

    Stateless: the transcript comes with the request, so any process running this agent type can answer
    any session, and a restarted one answers the manager's retry.

    :param name: the author name shown in the chat (and its topic type, by convention).
    :param system_message: the agent's instructions.
    :param model_client: any AutoGen ``ChatCompletionClient`` (``create_stream``), or a factory called
        once per session (``ReplayChatCompletionClient`` keeps a position: one per session).
    :param beat_seconds: ``Speaking`` heartbeat interval while generating (keep it below the manager's
        ``silence_seconds``).
    :param tools: AutoGen tools (``FunctionTool`` ...) the model may call; each call is run here and shown
        in the chat as a Chainlit step (arguments in, result out), then the model continues.
    :param max_tool_rounds: model calls per turn at most (a model that keeps calling tools is cut off).
    """

    def __init__(self, name: str, system_message: str,
                 model_client: ChatCompletionClient | Callable[[], ChatCompletionClient], *,
                 tools: Sequence[Tool] = (), max_tool_rounds: int = 5, beat_seconds: float = 2.0,
                 group_topic: str = GROUP_TOPIC, ui_topic: str = UI_TOPIC, description: str | None = None):
        super().__init__(description or f"group chat participant {name}")
        self.name, self.system_message = name, system_message
        self.model_client = model_client if isinstance(model_client, ChatCompletionClient) else model_client()
        self.tools, self.max_tool_rounds = {t.name: t for t in tools}, max_tool_rounds
        self.beat_seconds, self.group_topic, self.ui_topic = beat_seconds, group_topic, ui_topic

    def prompt(self, history: list[Line]) -> list[LLMMessage]:
        """The model's input: the instructions, then the transcript (its own lines as the assistant's)."""
        out: list[LLMMessage] = [SystemMessage(content=self.system_message)]
        for line in history:
            out.append(AssistantMessage(content=line.text, source=self.name) if line.author == self.name
                       else UserMessage(content=line.text, source=line.author))
        return out

    @message_handler
    async def on_request(self, message: RequestToSpeak, ctx: MessageContext) -> None:
        session = self.id.key
        ui, group = TopicId(self.ui_topic, session), TopicId(self.group_topic, session)
        which = dict(chat=message.chat, turn=message.turn, attempt=message.attempt)
        beat = asyncio.get_running_loop().create_task(self._beat(Speaking(**which), group))
        prompt = self.prompt(message.history)
        parts: list[str] = []
        steps = 0
        try:
            for _ in range(self.max_tool_rounds):
                result: CreateResult | None = None
                async for item in self.model_client.create_stream(prompt, tools=list(self.tools.values()),
                                                                  cancellation_token=ctx.cancellation_token):
                    if isinstance(item, str):
                        if item:
                            await self.publish_message(UiEvent(kind="chunk", index=len(parts), author=self.name,
                                                               text=item, **which), ui)
                            parts.append(item)
                    else:
                        result = item
                if result is None or isinstance(result.content, str) or not result.content:
                    break
                calls = [c for c in result.content if isinstance(c, FunctionCall)]
                outputs = []
                for call in calls:
                    output, is_error = await self._call(call, ctx)
                    await self.publish_message(UiEvent(kind="step", index=steps, author=self.name, name=call.name,
                                                       text=call.arguments, output=output, **which), ui)
                    steps += 1
                    outputs.append(FunctionExecutionResult(content=output, call_id=call.id, name=call.name,
                                                           is_error=is_error))
                prompt += [AssistantMessage(content=calls, source=self.name),
                           FunctionExecutionResultMessage(content=outputs)]
            text = result.content if result is not None and isinstance(result.content, str) else "".join(parts)
        finally:
            beat.cancel()
        await self.publish_message(UiEvent(kind="end", index=len(parts), author=self.name, text=text, **which), ui)
        await self.publish_message(AgentTurn(author=self.name, text=text, **which), group)

    async def _call(self, call: FunctionCall, ctx: MessageContext) -> tuple[str, bool]:
        """Run one tool call: (its result as text, whether it failed). A failure is the model's to
        handle (it sees the error), never the chat's end."""
        tool = self.tools.get(call.name)
        if tool is None:
            return f"unknown tool {call.name!r}", True
        try:
            args = json.loads(call.arguments or "{}")
            return tool.return_value_as_string(await tool.run_json(args, ctx.cancellation_token)), False
        except Exception as exc:  # noqa: BLE001 - reported to the model and shown in the step
            return f"{exc.__class__.__name__}: {exc}", True

    async def _beat(self, beat: Speaking, topic: TopicId) -> None:
        while True:
            await self.publish_message(beat, topic)
            await asyncio.sleep(self.beat_seconds)
