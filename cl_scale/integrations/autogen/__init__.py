"""Distributed AutoGen group chats in a scaled Chainlit, one per user session (``cl-scale[autogen]``).

- ``GroupChatManager`` / ``GroupChatAgent`` (``chat``): per-session turn-taking and streaming agents
  on any AutoGen runtime (``GrpcWorkerAgentRuntime`` processes or ``SingleThreadedAgentRuntime``).
- ``ChainlitSink`` (``sink``): AutoGen output into the session named by the topic source, through
  cl-scale's worker path (whichever instance holds the session; kept across failover).
- ``Relay`` (``relay``): users' messages (the requests stream) into the runtime.
- ``cl-scale autogen`` (``process.serve``) runs sink + relay; ``process.stay_connected`` keeps any
  agent process attached to the host across host restarts.

Messages and topics: ``messages``. See docs/autogen.md.
"""

from cl_scale.integrations.autogen.compat import check

check()

from cl_scale.integrations.autogen.chat import GroupChatAgent, GroupChatManager  # noqa: E402
from cl_scale.integrations.autogen.messages import (  # noqa: E402
    GROUP_TOPIC,
    MANAGER_TYPE,
    SINK_TYPE,
    UI_TOPIC,
    AgentTurn,
    RequestToSpeak,
    UiEvent,
    UserTurn,
    serializers,
)
from cl_scale.integrations.autogen.process import Connection, setup_sink, stay_connected  # noqa: E402
from cl_scale.integrations.autogen.relay import Relay  # noqa: E402
from cl_scale.integrations.autogen.sink import ChainlitSink  # noqa: E402

__all__ = ["GroupChatAgent", "GroupChatManager", "ChainlitSink", "Relay", "Connection", "stay_connected",
           "setup_sink", "serializers", "UserTurn", "RequestToSpeak", "AgentTurn", "UiEvent", "GROUP_TOPIC",
           "UI_TOPIC", "MANAGER_TYPE", "SINK_TYPE"]
