"""A tiny Socket.IO backend for balancer tests: answers ``whoami`` (event ack) and GET /whoami
with its id. Run: ``python sio_backend.py PORT ID``."""

import sys

import socketio
import uvicorn

BACKEND_ID = sys.argv[2] if len(sys.argv) > 2 else "backend"
sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")


@sio.event
async def whoami(sid, data=None):
    return {"backend": BACKEND_ID, "sid": sid}


async def http_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = BACKEND_ID.encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


app = socketio.ASGIApp(sio, other_asgi_app=http_app, socketio_path="/ws/socket.io")

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
