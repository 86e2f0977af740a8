"""Socket.IO client runs for balancer tests, one JSON line on stdout.

Every outgoing TCP connection of this process is bound to the source address of the current
client (``127.0.N.1``), so nginx sees distinct client addresses. Clients run one after another:
connect (polling, then upgrade to websocket), ask ``whoami`` several times, disconnect.

  python sio_client.py URL SPEC_JSON
  SPEC_JSON = [{"source": "127.0.2.1", "headers": {"Cookie": "..."}, "calls": 4}, ...]
"""

import json
import socket
import sys
import time

import socketio

_source = {"addr": None}
_connect = socket.socket.connect


def _bound_connect(self, address):
    if _source["addr"] and self.family == socket.AF_INET and self.getsockname()[1] == 0:
        self.bind((_source["addr"], 0))
    return _connect(self, address)


socket.socket.connect = _bound_connect


def run_one(url: str, spec: dict) -> dict:
    _source["addr"] = spec.get("source")
    client = socketio.Client(reconnection=False)
    seen, transports = [], []
    client.connect(url, headers=spec.get("headers", {}), transports=["polling", "websocket"],
                   socketio_path="/ws/socket.io", wait_timeout=10)
    try:
        deadline = time.monotonic() + 5
        while client.transport() != "websocket" and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(int(spec.get("calls", 3))):
            seen.append(client.call("whoami", {}, timeout=10)["backend"])
            transports.append(client.transport())
    finally:
        client.disconnect()
    return {"source": spec.get("source"), "backends": seen, "transports": transports}


def main() -> None:
    url, specs = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps([run_one(url, spec) for spec in specs]))


if __name__ == "__main__":
    main()
