"""cl-scale's view of Chainlit's in-process session state (``runtime.chainlit.codec.ChainlitState``), on
Chainlit's real module-level maps.

Why: a session can leave an instance and come back to it (a client that retried a slow handshake
elsewhere, then here again). The old copy may still be referenced by a write or a reply that was in
flight; dropping *it* late must not drop the new copy, whose ``user_session`` and chat context live
under the same session id (the app would see an empty ``user_session``: a counter back to 1)."""

from __future__ import annotations

import pytest

from cl_scale.runtime.chainlit.codec import ChainlitState

pytest.importorskip("chainlit")


def snap(session_id: str, counter: int) -> dict:
    return {"id": session_id, "thread_id": "t-1", "user_session": {"counter": counter}, "chat_started": True}


async def test_dropping_a_stale_copy_leaves_the_session_that_replaced_it():
    from chainlit.chat_context import chat_contexts
    from chainlit.session import ws_sessions_id
    from chainlit.user_session import user_sessions

    old = ChainlitState.rehydrate(snap("s-1", 5), "sock-old", {}, [])
    ChainlitState.forget(old)  # the handshake that brought the session back dropped the stale copy
    new = ChainlitState.rehydrate(snap("s-1", 7), "sock-new", {}, [{"id": "m1", "output": "hi", "type": "user_message",
                                                                   "createdAt": "2026-12-03T00:00:00Z"}])
    try:
        ChainlitState.forget(old)  # ...and a write still in flight for the old copy drops it again
        assert ws_sessions_id.get("s-1") is new
        assert user_sessions.get("s-1") == {"counter": 7}
        assert [m.id for m in chat_contexts.get("s-1", [])] == ["m1"]
        assert ChainlitState.session_by_sid("sock-new") is new
    finally:
        ChainlitState.forget(new)
    assert "s-1" not in user_sessions and "s-1" not in ws_sessions_id and "s-1" not in chat_contexts
