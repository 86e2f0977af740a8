"""Worker tests: instances that accept key k1 (anywhere) and k2 (only user 'alice')."""

from __future__ import annotations

import pytest

KEYS = "k1:secret-one,k2:secret-two;users=alice"
WORKER_ENV = {"CL_SCALE_WORKER_KEYS": KEYS, "CL_SCALE_GATEWAY_TOKENS": "t1:token-one,t2:token-two;sessions=only-this"}


@pytest.fixture
def worker_env():
    return dict(WORKER_ENV)
