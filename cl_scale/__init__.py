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
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
