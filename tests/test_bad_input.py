"""Every bad input a user can give the CLI, refused the same way (issue 13's sweep, as a table).

Each case runs the real ``cl-scale`` in a scratch folder against this module's own password-protected
redis-server and checks the contract: exit code 2, exactly one line on stderr, the offending input
named in it, no traceback, and never a secret (the Redis password, a worker key, the auth secret).
Servers' bad input (gateway status codes, instances) is tabled in ``tests/gateway`` and
``tests/runtime``; the README counts both tables (``tests/test_readme.py``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field

import pytest

from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.processes import InstanceProcess, RedisServer, free_port, init_chainlit_files

PASSWORD = "pw-Sup3rSecret-redis"
KEY = "k1:key-Sup3rSecret-worker-0123456789"
AUTH = "auth-Sup3rSecret-chainlit-0123456789abcdef"
SECRETS = (PASSWORD, KEY.split(":")[1], AUTH)
SID = "3f2c1a9e-4b7d-4c1e-9a55-0d6c2b1e8f70"
APP = "import chainlit as cl\n\n@cl.on_message\nasync def m(msg):\n    await cl.Message(msg.content).send()\n"


@dataclass
class Case:
    """``argv`` after ``cl-scale``; ``needles`` must all be in the one error line. ``{redis}`` is this
    module's Redis URL (with its password), ``{taken}`` a port something listens on."""

    name: str
    argv: list[str]
    needles: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes | str] = field(default_factory=dict)


#: A sitecustomize that makes the modules named in $HIDE_MODULES uninstalled, as far as imports can tell.
HIDE = """import os, sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in os.environ["HIDE_MODULES"].split(","):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
"""


def deep_yaml(depth: int) -> str:
    return "a:\n" + "".join("  " * i + "b:\n" for i in range(1, depth)) + "  " * depth + "c: 1\n"


RUN = ["run", "app.py", "--port", "{free}"]
SEND = ["send", "--redis-url", "{redis}", "--session", "{session}"]  # a live session
WORKER_ENV = {"CL_SCALE_WORKER_KEY": KEY}

CASES = [
    # -- ports and hosts -------------------------------------------------------------------------
    Case("run on a taken port", ["run", "app.py", "--port", "{taken}"], ("{taken}", "in use")),
    Case("run --port abc", ["run", "app.py", "--port", "abc"], ("--port='abc'",)),
    Case("run --port 70000", ["run", "app.py", "--port", "70000"], ("--port", "70000")),
    Case("run --host with junk", ["run", "app.py", "--host", "not a host;"], ("--host", "not a host;")),
    Case("gateway on a taken port", ["gateway", "--redis-url", "{redis}", "--port", "{taken}"], ("{taken}", "in use"),
         env={**WORKER_ENV, "CL_SCALE_GATEWAY_TOKENS": "ci:tok-0123456789abcdef0123"}),
    Case("gateway with no tokens", ["gateway", "--redis-url", "{redis}", "--port", "{free}"],
         ("CL_SCALE_GATEWAY_TOKENS",), env=WORKER_ENV),
    Case("up --replicas 0", ["up", "app.py", "--replicas", "0"], ("--replicas", "0")),
    # -- values: --set and YAML ----------------------------------------------------------------
    Case("--set 1000 segments", ["render", "nginx", "--out", "-", "--set", ".".join(["a"] * 1000) + "=1"],
         ("--set",)),
    Case("--set unknown key", ["render", "nginx", "--out", "-", "--set", "bogus=1"], ("bogus", "unknown key")),
    Case("--set replicas=abc", ["render", "nginx", "--out", "-", "--set", "replicas=abc"], ("replicas", "abc")),
    Case("--set redis.url with a password", ["render", "k8s", "--out", "-", "--set", "redis.enabled=false",
                                             "--set", f"redis.url=redis://:{PASSWORD}@r:6379/0"],
         ("redis.url", "password")),
    Case("YAML 500 deep", ["render", "nginx", "-f", "v.yaml", "--out", "-"], ("v.yaml",),
         files={"v.yaml": deep_yaml(500)}),
    Case("YAML 3000 deep", ["render", "nginx", "-f", "v.yaml", "--out", "-"], ("v.yaml",),
         files={"v.yaml": deep_yaml(3000)}),
    Case("YAML complex key", ["render", "nginx", "-f", "v.yaml", "--out", "-"], ("v.yaml:1",),
         files={"v.yaml": "? [a, b]\n: 1\n"}),
    Case("YAML null key", ["render", "nginx", "-f", "v.yaml", "--out", "-"], ("v.yaml:2",),
         files={"v.yaml": "replicas: 2\nnull: 3\n"}),
    Case("YAML integer key", ["render", "nginx", "-f", "v.yaml", "--out", "-"], ("v.yaml:1",),
         files={"v.yaml": "1: 3\n"}),
    Case("YAML alias bomb", ["render", "nginx", "-f", "v.yaml", "--out", "-"], ("v.yaml",),
         files={"v.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
             f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))}),
    Case("YAML not a mapping", ["render", "nginx", "-f", "v.yaml", "--out", "-"], ("v.yaml",),
         files={"v.yaml": "- a\n- b\n"}),
    Case("YAML syntax error", ["render", "nginx", "-f", "v.yaml", "--out", "-"], ("v.yaml:2",),
         files={"v.yaml": "replicas: 2\n  bad: [\n"}),
    Case("YAML not UTF-8", ["render", "nginx", "-f", "v.yaml", "--out", "-"], ("v.yaml",),
         files={"v.yaml": b"name: \xff\xfe\n"}),
    Case("values file of 50 MB", ["render", "nginx", "-f", "v.yaml", "--out", "-"], ("v.yaml", "over"),
         files={"v.yaml": "# " + "x" * (50 * 1024 * 1024) + "\n"}),
    Case("values file missing", ["render", "nginx", "-f", "missing.yaml", "--out", "-"], ("missing.yaml",)),
    Case("ConfigMap over 1 MiB", ["render", "k8s", "--out", "-", "-f", "a.yaml", "-f", "b.yaml"],
         ("ConfigMap", "1 MiB"), files={"a.yaml": "app:\n  env:\n    A: " + "x" * 600_000 + "\n",
                                        "b.yaml": "app:\n  env:\n    B: " + "x" * 600_000 + "\n"}),
    Case("k8s header stickiness", ["render", "k8s", "--out", "-", "--set", "sticky.mode=header"],
         ("sticky.mode", "header", "never sends it")),
    Case("k8s gateway without its proxy namespace", ["render", "k8s", "--out", "-", "--set", "ingress.kind=gateway"],
         ("networkPolicy.ingressNamespace",)),
    Case("k8s unknown ingress class", ["render", "k8s", "--out", "-", "--set", "ingress.className=haproxy"],
         ("ingress.controller", "haproxy")),
    Case("k8s no stickiness with long-polling", ["render", "k8s", "--out", "-", "--set", "ingress.controller=none"],
         ("ingress.controller", "websocketOnly")),
    Case("k8s Chainlit config without [meta]", ["render", "k8s", "--out", "-", "-f", "v.yaml"],
         ("app.chainlitConfig", "generated_by"), files={"v.yaml": "app:\n  chainlitConfig: |\n    [project]\n"}),
    Case("render unknown target", ["render", "helm", "--out", "-"], ("helm",)),
    Case("init --replicas 0", ["init", "d", "--replicas", "0"], ("replicas", "0")),
    # -- the environment instances read ----------------------------------------------------------
    Case("CL_SCALE_SESSION_TIMEOUT=abc", RUN, ("CL_SCALE_SESSION_TIMEOUT", "abc"),
         env={"CL_SCALE_SESSION_TIMEOUT": "abc"}),
    Case("CL_SCALE_DRAIN_SECONDS=-1", RUN, ("CL_SCALE_DRAIN_SECONDS", "-1"), env={"CL_SCALE_DRAIN_SECONDS": "-1"}),
    Case("CL_SCALE_WORKER_MAX_ATTEMPTS=x", RUN, ("CL_SCALE_WORKER_MAX_ATTEMPTS", "x"),
         env={"CL_SCALE_WORKER_MAX_ATTEMPTS": "x"}),
    Case("CL_SCALE_WORKER_OUTBOX_MAX=-3", RUN, ("CL_SCALE_WORKER_OUTBOX_MAX", "-3"),
         env={"CL_SCALE_WORKER_OUTBOX_MAX": "-3"}),
    Case("CL_SCALE_WORKER_OUTBOX_TTL=nan", RUN, ("CL_SCALE_WORKER_OUTBOX_TTL", "nan"),
         env={"CL_SCALE_WORKER_OUTBOX_TTL": "nan"}),
    Case("CL_SCALE_PREFIX with braces", RUN, ("CL_SCALE_PREFIX", "a}{b"), env={"CL_SCALE_PREFIX": "a}{b"}),
    Case("CL_SCALE_ADVERTISE_URL javascript:", RUN, ("CL_SCALE_ADVERTISE_URL",),
         env={"CL_SCALE_ADVERTISE_URL": "javascript:alert(1)"}),
    Case("CL_SCALE_ADMIN_PORT = the port", ["run", "app.py", "--port", "8123"], ("CL_SCALE_ADMIN_PORT", "8123"),
         env={"CL_SCALE_ADMIN_PORT": "8123"}),
    Case("run --admin-port 0", ["run", "app.py", "--admin-port", "0"], ("--admin-port", "0")),
    Case("CL_SCALE_WEBSOCKET_ONLY=maybe", RUN, ("CL_SCALE_WEBSOCKET_ONLY", "maybe"),
         env={"CL_SCALE_WEBSOCKET_ONLY": "maybe"}),
    Case("CL_SCALE_ADVERTISE_HOST junk", RUN, ("CL_SCALE_ADVERTISE_HOST",), env={"CL_SCALE_ADVERTISE_HOST": "a b;c"}),
    Case("CL_SCALE_WORKER_KEYS malformed", RUN, ("CL_SCALE_WORKER_KEYS",), env={"CL_SCALE_WORKER_KEYS": "nocolon"}),
    Case("CL_SCALE_REDIS_URL port not a number", RUN, ("CL_SCALE_REDIS_URL", "port"),
         env={"CL_SCALE_REDIS_URL": "redis://h:notaport/0"}),
    Case("CL_SCALE_REDIS_URL db not a number", RUN, ("CL_SCALE_REDIS_URL", "abc"),
         env={"CL_SCALE_REDIS_URL": "redis://127.0.0.1:6379/abc"}),
    Case("--redis-url of 100 KB", ["run", "app.py", "--redis-url", "redis://" + "h" * 100_000 + ":1/0"],
         ("--redis-url",)),
    Case("--redis-url unix:// without a path", ["run", "app.py", "--redis-url", "unix://"], ("--redis-url", "path")),
    Case("--redis-url http://", ["run", "app.py", "--redis-url", f"http://:{PASSWORD}@h/0"], ("--redis-url", "scheme")),
    # -- the app ---------------------------------------------------------------------------------
    Case("app missing", ["run", "nope.py"], ("nope.py",)),
    # -- worker commands ---------------------------------------------------------------------------
    Case("send --session of 100 KB", ["send", "--redis-url", "{redis}", "--session", "s" * 100_000, "x"],
         ("--session",), env=WORKER_ENV),
    Case("send --session with a newline", ["send", "--redis-url", "{redis}", "--session", "abc\ndefgh", "x"],
         ("--session",), env=WORKER_ENV),
    Case("send --session with braces", ["send", "--redis-url", "{redis}", "--session", "{abcdefgh}", "x"],
         ("--session",), env=WORKER_ENV),
    Case("send --session with an emoji", ["send", "--redis-url", "{redis}", "--session", "abcdefgh\U0001f600", "x"],
         ("--session",), env=WORKER_ENV),
    Case("send --session not UTF-8", ["send", "--redis-url", "{redis}", "--session", b"abcdefgh\xff".decode(
        "utf-8", "surrogateescape"), "x"], ("--session",), env=WORKER_ENV),
    Case("send --author of 5000", [*SEND, "--author", "a" * 5000, "x"], ("--author",), env=WORKER_ENV),
    Case("send --id empty", [*SEND, "--id", "", "x"], ("--id",), env=WORKER_ENV),
    Case("send --id with NUL-like junk", [*SEND, "--id", "a b\tc", "x"], ("--id",), env=WORKER_ENV),
    Case("send TEXT not UTF-8", [*SEND, b"hi \xff".decode("utf-8", "surrogateescape")], ("TEXT",), env=WORKER_ENV),
    Case("send to a session that does not exist", ["send", "--redis-url", "{redis}", "--session", SID, "x"], (SID, "no such session"), env=WORKER_ENV),
    Case("send with no target", ["send", "--redis-url", "{redis}", "x"], ("give --session",), env=WORKER_ENV),
    Case("send with two targets", ["send", "--redis-url", "{redis}", "--user", "u", "--thread", "t", "x"],
         ("two targets",), env=WORKER_ENV),
    Case("send TEXT blank", [*SEND, "  "], ("TEXT", "must not be empty"), env=WORKER_ENV),
    Case("send --session of another user", [*SEND, "--user", "bob", "x"], ("not a session of user",),
         env=WORKER_ENV),
    Case("send --session in another thread", [*SEND, "--thread", "t-other", "x"], ("not in thread",),
         env=WORKER_ENV),
    Case("send CL_SCALE_WORKER_KEYS malformed", [*SEND, "x"], ("CL_SCALE_WORKER_KEYS",),
         env={"CL_SCALE_WORKER_KEYS": "oops"}),
    Case("send with no key", [*SEND, "x"], ("CL_SCALE_WORKER_KEY",)),
    Case("send --key-id nope", [*SEND, "--key-id", "nope", "x"], ("nope", "no such key"),
         env={"CL_SCALE_WORKER_KEYS": KEY}),
    Case("send --key-id other than the key's", [*SEND, "--key-id", "nope", "x"], ("nope", "k1"), env=WORKER_ENV),
    Case("send with a key no instance accepts", [*SEND, "x"], ("k9", "no live instance accepts"),
         env={"CL_SCALE_WORKER_KEY": "k9:another-key-0123456789abcdef"}),
    Case("send Redis port > 65535", ["send", "--redis-url", "redis://127.0.0.1:70000/0", "--session", SID, "x"],
         ("--redis-url", "70000"), env=WORKER_ENV),
    Case("send Redis port not a number", ["send", "--redis-url", "redis://127.0.0.1:http/0", "--session", SID, "x"],
         ("--redis-url", "port"), env=WORKER_ENV),
    Case("send Redis unreachable", ["send", "--redis-url", f"redis://:{PASSWORD}@127.0.0.1:1/0", "--session", SID,
                                    "x"], ("unreachable",), env=WORKER_ENV),
    Case("send wrong Redis password", ["send", "--redis-url", "redis://:wrong-password@127.0.0.1:{redis_port}/0",
                                       "--session", SID, "x"], ("--redis-url", "authentication"), env=WORKER_ENV),
    Case("dlq list --limit 0", ["dlq", "list", "--redis-url", "{redis}", "--limit", "0"], ("--limit='0'",)),
    Case("dlq replay id 123-", ["dlq", "replay", "--redis-url", "{redis}", "123-"], ("123-",), env=WORKER_ENV),
    Case("dlq replay 26-digit id", ["dlq", "replay", "--redis-url", "{redis}", "1" * 26 + "-0"], ("1" * 26,),
         env=WORKER_ENV),
    Case("dlq purge id 123-", ["dlq", "purge", "--redis-url", "{redis}", "123-"], ("123-", "not a stream id")),
    Case("dlq purge not an id", ["dlq", "purge", "--redis-url", "{redis}", "not-an-id"], ("not-an-id",)),
    Case("dlq replay with no id", ["dlq", "replay", "--redis-url", "{redis}"], ("--all",), env=WORKER_ENV),
    Case("dlq replay ids and --all", ["dlq", "replay", "--redis-url", "{redis}", "1-1", "--all"], ("not both",),
         env=WORKER_ENV),
    Case("dlq purge with no id", ["dlq", "purge", "--redis-url", "{redis}"], ("--all",)),
    # -- broker bridges --------------------------------------------------------------------------
    Case("bridge http URL", ["bridge", "http://h/x", "--redis-url", "{redis}"], ("URL=", "expected kafka://"),
         env=WORKER_ENV),
    Case("bridge kafka without group", ["bridge", f"kafka://u:{PASSWORD}@127.0.0.1:9092/t"], ("URL=", "group=NAME"),
         env=WORKER_ENV),
    Case("bridge kafka bad port", ["bridge", "kafka://127.0.0.1:99999/t?group=g"], ("URL=", "host:port"),
         env=WORKER_ENV),
    Case("bridge kafka SASL without password", ["bridge", "kafka://h:9092/t?group=g&sasl_username=u&"
                                                "security_protocol=SASL_SSL"], ("sasl_username and a password",),
         env=WORKER_ENV),
    Case("bridge unknown URL parameter", ["bridge", f"amqp://u:{PASSWORD}@h/v?queue=q&colour=red"],
         ("unknown parameter", "colour"), env=WORKER_ENV),
    Case("bridge amqp without queue", ["bridge", f"amqp://u:{PASSWORD}@h/v"], ("queue=NAME",), env=WORKER_ENV),
    Case("bridge amqp prefetch 0", ["bridge", "amqp://h/v?queue=q&prefetch=0"], ("prefetch",), env=WORKER_ENV),
    Case("bridge amqps CA file missing", ["bridge", "amqps://h/v?queue=q&ssl_cafile=/nonexistent/ca.pem"],
         ("ssl_cafile", "/nonexistent/ca.pem", "not a readable file"), env=WORKER_ENV),
    Case("bridge --batch-size 0", ["bridge", "amqp://h/v?queue=q", "--batch-size", "0"], ("--batch-size", "0"),
         env=WORKER_ENV),
    Case("bridge without any key", ["bridge", "amqp://h/v?queue=q", "--redis-url", "{redis}"],
         ("CL_SCALE_WORKER_KEY",)),
    Case("bridge --require-signature without keys", ["bridge", "amqp://h/v?queue=q", "--redis-url", "{redis}",
                                                     "--require-signature"], ("CL_SCALE_WORKER_KEYS",),
         env=WORKER_ENV),
    # -- AutoGen ----------------------------------------------------------------------------------
    Case("autogen host address without port", ["autogen", "--host-address", "agents"], ("--host-address", "host:port"),
         env=WORKER_ENV),
    Case("autogen topic with a space", ["autogen", "--host-address", "h:1", "--ui-topic", "my topic"],
         ("--ui-topic", "my topic"), env=WORKER_ENV),
    Case("autogen without any key", ["autogen", "--host-address", "h:1", "--redis-url", "{redis}"],
         ("CL_SCALE_WORKER_KEY",)),
    Case("autogen without the extra", ["autogen", "--host-address", "h:1"], ("autogen", "cl-scale[autogen]"),
         env={"PYTHONPATH": "hide", "HIDE_MODULES": "autogen_ext", **WORKER_ENV}, files={"hide/sitecustomize.py": HIDE}),
    Case("autogen-host on a taken port", ["autogen-host", "--address", "127.0.0.1:{taken}"], ("{taken}", "in use")),
    Case("autogen-host --address junk", ["autogen-host", "--address", "x;y"], ("--address", "x;y")),
    Case("redis-acl unknown role", ["redis-acl", "admin"], ("admin",)),
    Case("doctor on a URL that is not http", ["doctor", "ftp://x"], ("ftp://x",)),
    Case("bench without matplotlib", ["bench", "--quick", "--out", "b"], ("matplotlib", "cl-scale[loadtest]"),
         env={"PYTHONPATH": "hide", "HIDE_MODULES": "matplotlib"}, files={"hide/sitecustomize.py": HIDE}),
    Case("loadtest without locust", ["loadtest", "http://127.0.0.1:1"], ("locust", "cl-scale[loadtest]"),
         env={"PYTHONPATH": "hide", "HIDE_MODULES": "locust"}, files={"hide/sitecustomize.py": HIDE}),
    Case("loadtest --users 0", ["loadtest", "http://127.0.0.1:1", "--users", "0"], ("--users", "0")),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A password-protected Redis, one instance accepting ``KEY`` with one live session, a taken port."""
    tmp = tmp_path_factory.mktemp("bad-input")
    redis = RedisServer(tmp, password=PASSWORD).start()
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0"
    (tmp / "app.py").write_text(APP)
    init_chainlit_files(tmp)
    instance = InstanceProcess(tmp, url, "inst1", env={"CL_SCALE_WORKER_KEYS": KEY, "CHAINLIT_AUTH_SECRET": AUTH})
    taken = socket.socket()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        instance.start().wait_ready()
        client = ChainlitClient(instance.url)  # stays connected on its own loop: a live session
        asyncio.run_coroutine_threadsafe(client.connect(), loop).result(30)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield {"redis": url, "redis_port": str(redis.port), "taken": str(taken.getsockname()[1]),
               "session": client.session_id}
    finally:
        taken.close()
        if "client" in locals():
            asyncio.run_coroutine_threadsafe(client.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        instance.stop()
        redis.stop()


def fill(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_in_one_clear_line(case, env, tmp_path):
    (tmp_path / "app.py").write_text(APP)
    for name, content in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CL_SCALE_", "REDIS_", "CHAINLIT_"))}
    environ.update({"CHAINLIT_AUTH_SECRET": AUTH, **case.env})
    argv = [fill(a, {**env, "free": str(free_port())}) for a in case.argv]
    result = subprocess.run([sys.executable, "-m", "cl_scale", *argv], cwd=tmp_path, env=environ,
                            capture_output=True, timeout=60)
    out, err = (result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace"))
    assert result.returncode == 2, (result.returncode, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err, err[-3000:]
    lines = err.splitlines()
    assert len(lines) == 1, err[-3000:]
    assert len(lines[0]) < 400, lines[0]
    for needle in case.needles:
        assert fill(needle, env) in lines[0], lines[0]
    for secret in SECRETS:
        assert secret not in out + err
    assert not list(tmp_path.glob(".files/*")), "a refused run left Chainlit's upload folder behind"
