"""Stock Chainlit with python-socketio's stock AsyncRedisManager: the baseline users build by hand.

Usage: python -m cl_scale.bench.stock_redis APP.py   (REDIS_URL, CHAINLIT_PORT in the environment)
"""

import os
import sys

import chainlit.server as server  # noqa: E402
import socketio

manager = socketio.AsyncRedisManager(os.environ["REDIS_URL"])
server.sio.manager = manager
manager.set_server(server.sio)

from chainlit.cli import run_chainlit  # noqa: E402

run_chainlit(sys.argv[1])
