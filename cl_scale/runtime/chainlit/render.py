"""Worker messages rendered through Chainlit's own path (``Message.send()``, ``stream_token()``,
``update()``, ``remove()``), inside the target session's context: persisted by a configured data
layer and added to the chat context, exactly like a reply of the app."""

from __future__ import annotations

import collections
import logging

from cl_scale.runtime.chainlit.codec import ChainlitState
from cl_scale.runtime.chainlit.compat import new_message
from cl_scale.wire.messages import Body

log = logging.getLogger("cl_scale.delivery")

MAX_OPEN_STREAMS = 10_000  # worker streams open at once on one instance (oldest dropped past it)


class ChainlitRenderer:
    """What ``Delivery`` needs of Chainlit: the local sessions and a way to show a message in one.

    :param state: the ``ChainlitState`` adapter.
    """

    def __init__(self, state: ChainlitState):
        self.state = state
        # (session, mid) -> Message being streamed, oldest first. Freed at stream_end, when the session
        # leaves this process, or (a worker that never ends its stream) past MAX_OPEN_STREAMS.
        self._streams: collections.OrderedDict[tuple[str, str], object] = collections.OrderedDict()

    # -- sessions -------------------------------------------------------------------------------------
    def session(self, session_id: str):
        return self.state.session(session_id)

    def session_ids(self) -> list[str]:
        return [s.id for s in self.state.sessions() if self.state.connected(s)]

    def connected(self, session) -> bool:
        return self.state.connected(session)

    def identity(self, session) -> tuple[str | None, str | None]:
        return self.state.identity(session)

    def enter(self, session) -> None:
        self.state.enter(session)

    def context_ids(self, session_id: str) -> set[str]:
        return {m.id for m in self.state.messages(session_id)}

    def drop_from_context(self, session_id: str, message_id: str) -> None:
        """Before re-rendering a message a dead owner emitted but never marked seen: the UI upserts
        by id (shows once); keep one copy in the chat context too."""
        self.state.drop_message(session_id, message_id)

    # -- rendering ------------------------------------------------------------------------------------
    @staticmethod
    def _message(body: Body, content: str | None = None):
        from chainlit.element import Image, Text

        elements = [Text(name=e.name, content=e.content or "", display=e.display) if e.type == "text"
                    else Image(name=e.name, url=e.url, display=e.display) for e in body.elements]
        return new_message(content=body.content if content is None else content, author=body.author, id=body.mid,
                           elements=elements)

    async def render(self, session, body: Body) -> None:
        handle = (session.id, body.mid)
        if body.kind == "message":
            await self._message(body).send()
        elif body.kind == "token":
            msg = self._streams.get(handle)
            if msg is None:
                msg = self._streams[handle] = self._message(body, content="")
                while len(self._streams) > MAX_OPEN_STREAMS:
                    (old_sid, old_mid), _ = self._streams.popitem(last=False)
                    log.warning("session %s: stream %s never ended; its partial message stays as shown",
                                old_sid, old_mid[:80])
            else:
                self._streams.move_to_end(handle)
            await msg.stream_token(body.content)
        elif body.kind == "stream_end":
            msg = self._streams.pop(handle, None) or self._message(body)
            msg.content = body.content
            await msg.send()
        elif body.kind == "step":  # a tool call: Chainlit's collapsible step, input and output
            from chainlit.step import Step

            step = Step(name=body.author, type="tool", id=body.mid)
            step.input, step.output = body.input or "", body.content
            await step.send()
        elif body.kind in ("update", "remove"):
            # Chainlit's chat context matches messages by identity: act on the one it holds.
            msg = self.state.message(session.id, body.mid) or self._message(body, content="")
            if body.kind == "update":
                msg.content = body.content
                await msg.update()
            else:
                await msg.remove()

    def release(self, session_id: str) -> None:
        """The session left this process: drop its open streams."""
        for handle in [h for h in self._streams if h[0] == session_id]:
            del self._streams[handle]

    def tracked(self) -> dict[str, int]:
        return {"delivery_streams": len(self._streams)}
