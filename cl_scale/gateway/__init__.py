"""HTTP gateway for non-Python workers (``/cl-scale/v1``): same path as the SDK, no Chainlit import."""

from cl_scale.gateway.app import PREFIX, build_app  # noqa: F401
