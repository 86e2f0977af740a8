"""Everything, locally, with one command: a scaled Chainlit (``cl-scale up``: Redis, 3 instances, nginx),
the AutoGen host, the manager, the writer and the editor, and ``cl-scale autogen`` between them.

    python examples/autogen_group_chat/run.py            # then open http://127.0.0.1:8000

Ctrl-C (or SIGTERM) stops all of it, ``cl-scale down`` included. Extra options after ``--`` go to the
agents (e.g. ``-- --model openai``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CL_SCALE = str(Path(sys.executable).with_name("cl-scale"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--port", type=int, default=8000, help="nginx (the chat's URL)")
    parser.add_argument("--autogen-port", type=int, default=50060, help="the AutoGen host")
    parser.add_argument("--state-dir", default=".cl-scale")
    parser.add_argument("agent_args", nargs="*", help="after --: options for agents.py")
    args = parser.parse_args()
    state = ["--state-dir", args.state_dir]
    env = {**os.environ, "CL_SCALE_PUBLISH_REQUESTS": "1"}  # instances record users' messages for the relay
    up = subprocess.run([CL_SCALE, "up", str(HERE / "app.py"), "--replicas", str(args.replicas), "--port",
                         str(args.port), "--detach", *state], env=env)
    if up.returncode != 0:
        return up.returncode
    address = f"127.0.0.1:{args.autogen_port}"
    children: list[subprocess.Popen] = []
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        children.append(subprocess.Popen([CL_SCALE, "autogen-host", "--address", address]))
        time.sleep(1.0)  # the host listens before the others dial it (they would retry anyway)
        for role in ("manager", "writer", "editor"):
            children.append(subprocess.Popen([sys.executable, str(HERE / "agents.py"), role, "--host", address,
                                              *args.agent_args]))
        children.append(subprocess.Popen([CL_SCALE, "autogen", "--host-address", address, *state]))
        print(f"\nopen http://127.0.0.1:{args.port}  (Ctrl-C stops everything)\n", file=sys.stderr, flush=True)
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        subprocess.run([CL_SCALE, "down", *state])
    return 0


if __name__ == "__main__":
    sys.exit(main())
