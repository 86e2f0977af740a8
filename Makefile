# The two commands of the README:
#   make demo   a 3-instance cluster (Redis + 3 Chainlit instances + nginx) on this machine
#   make test   every test, against real redis-server, nginx, Chainlit instances and chromium
# Both install what they need first (scripts/bootstrap.sh: apt packages when root, the venv, pip deps).

VENV ?= .venv
PY := $(VENV)/bin/python
# Two workers (2 cores): tests wait on real processes much of the time; the heavy ones (marked
# slow) stay on one worker (tests/conftest.py), so two of them never run at once.
PYTEST_ARGS ?= -n 2 --dist loadgroup
REPLICAS ?= 3
PORT ?= 8000

.PHONY: demo test bench install clean

demo:
	@scripts/bootstrap.sh
	$(VENV)/bin/cl-scale up --replicas $(REPLICAS) --port $(PORT)

test:
	@scripts/bootstrap.sh test
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench:
	@scripts/bootstrap.sh test
	$(VENV)/bin/cl-scale bench

install:
	@scripts/bootstrap.sh test

clean:
	rm -rf $(VENV) test-artifacts bench/out .pytest_cache
