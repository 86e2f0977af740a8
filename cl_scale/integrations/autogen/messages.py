"""The messages of a cl-scale group chat on an AutoGen runtime, and the topics they travel on.

One group chat per Chainlit session: every message is published with the **session id as the topic
source**, so AutoGen's ``TypeSubscription`` gives each session its own manager, agent and sink instances
(``AgentId(type, key=session id)``) and nothing is ever shared through a global. Agents are stateless:
``RequestToSpeak`` carries the transcript, so an agent process that restarts answers the next request
as if nothing happened.

Flow: the relay publishes ``UserTurn`` on the group topic → the manager asks the next speaker
(``RequestToSpeak`` on that agent's topic) → the agent streams ``UiEvent`` chunks on the UI topic (the
sink writes them into the session), beats ``Speaking`` while it works, and ends with ``UiEvent(end)`` +
``AgentTurn`` on the group topic → the manager picks the next speaker or ends the chat.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

#: Default topic types.
GROUP_TOPIC = "group_chat"
UI_TOPIC = "chainlit"
#: Registered agent types of the cl-scale side.
MANAGER_TYPE = "group_chat_manager"
SINK_TYPE = "chainlit_sink"


class Line(BaseModel):
    """One line of the transcript."""

    author: str
    text: str


class UserTurn(BaseModel):
    """A user's message, as the instance holding the session recorded it (identity from the session)."""

    session_id: str
    message_id: str
    text: str
    author: str = "User"
    user: str | None = None
    thread: str | None = None


class RequestToSpeak(BaseModel):
    """The manager asks one agent for turn ``turn`` of chat ``chat``; ``attempt`` > 1 after a timeout."""

    chat: str
    turn: int
    attempt: int = 1
    history: list[Line] = Field(default_factory=list)


class Speaking(BaseModel):
    """An agent's heartbeat while it generates (the manager's watchdog waits for these)."""

    chat: str
    turn: int
    attempt: int


class AgentTurn(BaseModel):
    """An agent's finished turn."""

    chat: str
    turn: int
    attempt: int
    author: str
    text: str


class UiEvent(BaseModel):
    """What the sink writes into the session (topic source).

    ``chunk``: text ``index`` (0-based) of the streamed message of (chat, turn, attempt); ``end``: that
    message is complete after ``index`` chunks, ``text`` is all of it; ``interrupted``: that message stops
    where it is, marked as interrupted; ``notice``: a plain message (``author``, ``text``); ``step``: a
    tool call shown as a Chainlit step (``name``, ``text`` = its arguments, ``output`` = its result;
    ``index`` counts the agent's calls in that turn); ``accepted``: the manager has the user message
    ``text`` (its id) — without it in time, the relay tells the user nobody answered.
    """

    kind: Literal["chunk", "end", "interrupted", "notice", "step", "accepted"]
    chat: str = ""
    turn: int = 0
    attempt: int = 1
    index: int = 0
    author: str = ""
    name: str = ""
    text: str = ""
    output: str = ""

    @property
    def message_id(self) -> str:
        return f"ag-{self.chat}-{self.turn}-{self.attempt}"


ALL = (Line, UserTurn, RequestToSpeak, Speaking, AgentTurn, UiEvent)


def serializers() -> list:
    """The AutoGen serializers of every message here (JSON), for ``runtime.add_message_serializer``."""
    from autogen_core import try_get_known_serializers_for_type

    out = []
    for cls in ALL:
        out.extend(try_get_known_serializers_for_type(cls))
    return out
