"""``cl-scale gateway``: the worker gateway alone (no Chainlit): HTTP (uvicorn) and, with a gRPC
port, ``clscale.v1.Gateway`` in the same process and event loop, sharing tokens, key and publisher."""

from __future__ import annotations

import asyncio

from cl_scale.listen import bind


def health_app(gateway):
    """``/healthz`` (the process answers) and ``/readyz`` (Redis answers a PING within 2 s): plain HTTP on
    a port of its own, because a kubelet probe can present no client certificate to an mTLS port."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def healthz(request):
        return JSONResponse({"status": "ok"})

    async def readyz(request):
        try:
            await asyncio.wait_for(gateway.pub.redis.ping(), 2)
        except Exception as exc:  # noqa: BLE001 - any failure is "not ready", named by its class only
            return JSONResponse({"ready": False, "redis": type(exc).__name__}, status_code=503)
        return JSONResponse({"ready": True})

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz)])


def serve(app, *, host: str, port: int, announce=lambda url: None, grpc_port: int | None = None,
          tls=None, health_port: int | None = None) -> None:
    """Serve ``app`` (and gRPC on ``grpc_port``; TLS on both with ``tls``, ``grpc_gateway.TlsFiles``;
    plain ``/healthz``/``/readyz`` on ``health_port``) until SIGINT/SIGTERM. The sockets are bound
    first: a taken port is a UserError."""
    import ssl

    import uvicorn

    sock = bind(host, port)
    health_sock = bind(host, health_port) if health_port is not None else None
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
        health = None
        if health_sock is not None:
            health = uvicorn.Server(uvicorn.Config(health_app(app.state.gateway), log_level="warning"))
            health.install_signal_handlers = lambda: None  # the main server owns SIGINT/SIGTERM
            health_task = asyncio.create_task(health.serve(sockets=[health_sock]))
            announce(f"http://{shown}:{health_port}/readyz (health)")
        try:
            await server.serve(sockets=[sock])
        finally:
            if health is not None:
                health.should_exit = True
                await health_task
            if grpc_server is not None:
                await grpc_server.stop(grace=5)

    asyncio.run(main())
