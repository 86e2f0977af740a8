"""cl-scale: run one Chainlit app as N single-worker instances sharing sessions through Redis.

Importing this package stays light (no Chainlit, no Redis): the render commands must start fast.
The runtime API is loaded lazily on first attribute access.
"""

__version__ = "0.1.0"

_LAZY = {
    "emit_to_session": "cl_scale.runtime.api",
    "emit_to_user": "cl_scale.runtime.api",
    "emit_to_thread": "cl_scale.runtime.api",
    "on_session_restore": "cl_scale.runtime.api",
    "on_reply_interrupted": "cl_scale.runtime.api",
}

#: A reply cut short because its instance died: run the handler again on the instance that restores
#: the session (once), instead of finishing the reply with ``interrupted_notice``. Set it in the app: a
#: bool, or ``(message: dict) -> bool`` deciding per user message (Chainlit's dict: ``id``, ``output``...).
rerun_interrupted = False
#: The chat's notice for an interrupted reply (None: cl-scale's English one); set it to translate.
interrupted_notice = None

__all__ = ["__version__", "rerun_interrupted", "interrupted_notice", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
