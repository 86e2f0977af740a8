"""Operating cl-scale processes: the local process cluster (``cl-scale up``, benchmarks, tests), the one
Chainlit wire client, and ``cl-scale doctor``."""
