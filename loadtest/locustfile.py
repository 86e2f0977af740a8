"""User-facing locustfile: the Chainlit user shipped in ``cl_scale/loadtest/locustfile.py``.

    locust -f loadtest/locustfile.py --host http://localhost:8000 --scenario chat
    cl-scale loadtest http://localhost:8000 --users 200 --spawn-rate 20 --run-time 5m

Copy the package file here instead of importing it to customise the user.
"""

from cl_scale.loadtest.locustfile import *  # noqa: F401,F403
from cl_scale.loadtest.locustfile import ChainlitUser  # noqa: F401
