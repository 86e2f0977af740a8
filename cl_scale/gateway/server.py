"""``cl-scale gateway``: the worker HTTP gateway alone (no Chainlit), served by uvicorn."""

from __future__ import annotations

import asyncio

from cl_scale.listen import bind


def serve(app, *, host: str, port: int, announce=lambda url: None) -> None:
    """Serve ``app`` until SIGINT/SIGTERM. The socket is bound first: a taken port is a UserError."""
    import uvicorn

    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    announce(f"http://{shown}:{port}")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=75))
    asyncio.run(server.serve(sockets=[sock]))
