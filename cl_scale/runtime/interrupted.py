"""What the instance that restores a session does with the messages its previous owner left unfinished
(``runtime.journal``): run the ones never started, and for a reply cut short by the owner's death,
either re-run the handler once (``cl_scale.rerun_interrupted = True``: the partial reply is removed and
the user simply gets their answer, a little late) or finish it visibly — a notice in the chat
(``cl_scale.interrupted_notice`` to reword or translate it) and ``@cl_scale.on_reply_interrupted``
callbacks for the app.
"""

from __future__ import annotations

import asyncio
import logging

from cl_scale.runtime import metrics
from cl_scale.runtime.journal import MAX_ATTEMPTS, Entry

log = logging.getLogger("cl_scale.journal")

NOTICE = ("*(The reply to your last message was interrupted: the server preparing it stopped. "
          "Please send your message again.)*")


def _settings(message: dict) -> tuple[bool, str]:
    """(re-run?, notice): ``cl_scale.rerun_interrupted`` is a bool, or ``(message: dict) -> bool`` to decide
    per message (e.g. re-run questions, not requests that had side effects)."""
    import cl_scale

    rerun = getattr(cl_scale, "rerun_interrupted", False)
    if callable(rerun):
        try:
            rerun = rerun(message)
        except Exception:  # noqa: BLE001 - the app's predicate failed: the safe answer is the notice
            log.exception("cl_scale.rerun_interrupted raised: not re-running")
            rerun = False
    return bool(rerun), getattr(cl_scale, "interrupted_notice", None) or NOTICE


async def resume(hooks, session, entry: Entry) -> None:
    rerun, notice = _settings(dict((entry.payload or {}).get("message") or {})) if entry.state == "running" \
        else (False, "")
    if entry.state == "pending" or (rerun and entry.attempts < MAX_ATTEMPTS):
        hooks.state.enter(session)
        if entry.reply and entry.state == "running":
            await _remove(entry.reply)
        what = "not started by the previous owner" if entry.state == "pending" else f"interrupted, run #{entry.attempts + 1}"
        log.info("session %s: running message %s (%s)", session.id, entry.message_id[:80], what)
        metrics.RESUMED.labels("pending" if entry.state == "pending" else "rerun").inc()
        task = asyncio.get_running_loop().create_task(
            hooks.process_message(session, entry.payload, attempts=entry.attempts))
        session.current_task = task  # Chainlit's marker of a running reply: a drain waits for it
        return
    hooks.state.enter(session)
    log.info("session %s: reply to %s interrupted (attempt %d): notice sent", session.id, entry.message_id[:80],
             entry.attempts)
    metrics.RESUMED.labels("interrupted").inc()
    from cl_scale.runtime.api import interrupted_callbacks
    from cl_scale.runtime.chainlit.compat import new_message

    try:
        await new_message(content=notice, author="System", id=f"interrupted-{entry.message_id}"[:200]).send()
        for callback in interrupted_callbacks():
            try:
                await callback(dict((entry.payload or {}).get("message") or {}))
            except Exception:
                log.exception("on_reply_interrupted callback failed for session %s", session.id)
    finally:
        await hooks._journal(hooks.journal.done, session.id, entry.message_id)


async def _remove(message_id: str) -> None:
    """Take the partial reply off the user's screen before the re-run answers."""
    from cl_scale.runtime.chainlit.compat import new_message

    try:
        await new_message(content="", id=message_id).remove()
    except Exception as exc:  # noqa: BLE001 - a partial reply left visible is not worth failing the re-run
        log.warning("partial reply %s not removed (%s)", message_id[:80], exc.__class__.__name__)
