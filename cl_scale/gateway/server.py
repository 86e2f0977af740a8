"""``cl-scale gateway``: the worker gateway alone (no Chainlit): HTTP (uvicorn) and, with a gRPC
port, ``clscale.v1.Gateway`` in the same process and event loop, sharing tokens, key and publisher."""

from __future__ import annotations

import asyncio

from cl_scale.listen import bind


def serve(app, *, host: str, port: int, announce=lambda url: None, grpc_port: int | None = None,
          tls=None) -> None:
    """Serve ``app`` (and gRPC on ``grpc_port``; TLS on both with ``tls``, ``grpc_gateway.TlsFiles``)
    until SIGINT/SIGTERM. The sockets are bound first: a taken port is a UserError."""
    import uvicorn

    import ssl

    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    https = {} if tls is None else {"ssl_certfile": tls.cert, "ssl_keyfile": tls.key, "ssl_ca_certs": tls.client_ca,
                                    "ssl_cert_reqs": ssl.CERT_REQUIRED if tls.client_ca else ssl.CERT_NONE}
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=75, **https))

    async def main() -> None:
        grpc_server = None
        if grpc_port is not None:
            from cl_scale.gateway.grpc_gateway import start_server

            grpc_server = await start_server(app.state.gateway, host, grpc_port, tls)
            announce(f"grpc{'s' if tls else ''}://{shown}:{grpc_port} (clscale.v1.Gateway)")
        announce(f"http{'s' if tls else ''}://{shown}:{port}/cl-scale/v1")
        try:
            await server.serve(sockets=[sock])
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=5)

    asyncio.run(main())
