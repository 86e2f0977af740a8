"""The real CLI in a subprocess: render/init behaviour, one-line errors (exit 2, no traceback),
help examples, and no Chainlit import on the render path."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.nginx_tokens import parse

ROOT = Path(__file__).resolve().parents[2]
HAS_K8S = importlib.util.find_spec("cl_scale.render.k8s") is not None


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cl_scale", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


BAD_SETS = [
    (["--set", "replicas=0"], "replicas=0: must be between 1 and 100"),
    (["--set", "replicas=-1"], "replicas=-1: must be between 1 and 100"),
    (["--set", "replicas=abc"], "replicas='abc': must be an integer"),
    (["--set", "replicas=10000"], "replicas=10000: must be between 1 and 100"),
    (["--set", "app.port=0"], "app.port=0: must be between 1 and 65535"),
    (["--set", "app.port=70000"], "app.port=70000: must be between 1 and 65535"),
    (["--set", "name=Bad_Name"], "name='Bad_Name': must be a DNS-1123 label"),
    (["--set", "ingress.host=chat example.com"], "ingress.host="),
    (["--set", "ingress.host=chat.example.com\nevil"], "ingress.host="),
    (["--set", "ingress.host=chat.example.com;"], "ingress.host="),
    (["--set", "app.image=repo/app:1\nRUN evil"], "app.image="),
    (["--set", "bogus=1"], "bogus=1: unknown key"),
    (["--set", "=x"], "missing key"),
    (["--set", "a..b=1"], "malformed key"),
    (["--set", "a[x]=1"], "list index"),
    (["--set", "replicas"], "expected key=value"),
    (["--set", "sticky.mode=sticky"], "must be one of ip_hash, cookie or header"),
    (["--set", "redis.enabled=false"], "requires redis.url"),
    (["--set", "nginx.readTimeout=30s"], "must exceed 45s"),
    (["--set", "redis.enabled=false", "--set", "redis.url=http://r"], "scheme"),
    (["-f", "missing.yaml"], "missing.yaml: values file not found"),
]


@pytest.mark.parametrize("target", ["nginx", "compose"])
@pytest.mark.parametrize("args, needle", BAD_SETS, ids=[" ".join(a) for a, _ in BAD_SETS])
def test_bad_input_is_one_line_exit_2(tmp_path, target, args, needle):
    result = cli("render", target, *args, "--out", "out", cwd=tmp_path)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    (tmp_path / "v.yaml").write_text("replicas: 3\napp:\n  port: 8000\n  env: {A: 1\nname: x\n")
    assert_one_line_error(cli("render", "nginx", "-f", "v.yaml", cwd=tmp_path), "v.yaml:5: YAML syntax error")


def test_type_error_in_yaml_names_file_and_line(tmp_path):
    (tmp_path / "v.yaml").write_text("replicas: 3\napp:\n  module: app.py\n  port: '8000'\n")
    assert_one_line_error(cli("render", "nginx", "-f", "v.yaml", cwd=tmp_path),
                          "v.yaml:4: app.port='8000': must be an integer")


def test_unknown_key_in_yaml_names_file_and_line(tmp_path):
    (tmp_path / "v.yaml").write_text("nginx:\n  listen: 8080\n  listn: 80\n")
    assert_one_line_error(cli("render", "compose", "-f", "v.yaml", cwd=tmp_path), "v.yaml:3: nginx.listn=80: unknown key")


def test_out_pointing_at_a_file(tmp_path):
    (tmp_path / "afile").write_text("keep")
    assert_one_line_error(cli("render", "nginx", "--out", "afile", cwd=tmp_path), "not a directory")
    assert (tmp_path / "afile").read_text() == "keep"


def test_unknown_target(tmp_path):
    assert_one_line_error(cli("render", "swarm", cwd=tmp_path), "must be one of nginx, k8s, compose")


def test_init_bad_replicas(tmp_path):
    assert_one_line_error(cli("init", "d", "--replicas", "0", cwd=tmp_path), "replicas=0")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", [["render"], ["render-k8s"], ["init"], []])
def test_help_has_examples(tmp_path, command):
    result = cli(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "Examples:" in result.stdout


def test_render_nginx_default_out_dir(tmp_path):
    result = cli("render", "nginx", "--set", "replicas=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    conf = (tmp_path / "nginx" / "conf.d" / "chainlit.conf").read_text()
    assert len([d for d in parse(conf) if d.name == "server" and d.block == ("upstream",)]) == 2
    assert (tmp_path / "nginx" / "nginx.conf").exists() and (tmp_path / "nginx" / "run").is_dir()


def test_render_stdout(tmp_path):
    result = cli("render", "nginx", "--out", "-", "--set", "sticky.mode=cookie", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert any(d.name == "hash" for d in parse(result.stdout))
    result = cli("render", "compose", "--out", "-", cwd=tmp_path)
    assert result.returncode == 0 and "app-3" in yaml.safe_load(result.stdout)["services"]
    assert list(tmp_path.iterdir()) == []


def test_values_files_merge_then_set(tmp_path):
    (tmp_path / "a.yaml").write_text("replicas: 2\napp:\n  port: 9000\n")
    (tmp_path / "b.yaml").write_text("replicas: 4\n")
    result = cli("render", "compose", "-f", "a.yaml", "--values", "b.yaml", "--set", "replicas=5", "-o", "c", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load((tmp_path / "c" / "compose.yaml").read_text())["services"]
    assert "app-5" in services and services["app-1"]["command"][-1] == "9000"
    assert (tmp_path / "c" / "nginx" / "nginx.conf").exists() and (tmp_path / "c" / ".env.example").exists()


def test_init_writes_everything_and_keeps_the_app(tmp_path):
    result = cli("init", "proj", "--app", "app.py", "--replicas", "2", "--set", "ingress.host=chat.acme.io", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    proj = tmp_path / "proj"
    for rel in ("cl-scale.yaml", "Dockerfile", ".dockerignore", ".env.example", "loadtest/README.md", "app.py",
                "nginx/nginx.conf", "nginx/conf.d/chainlit.conf", "compose/compose.yaml"):
        assert (proj / rel).is_file(), rel
    if HAS_K8S:
        assert (proj / "k8s" / "kustomization.yaml").is_file()
        # the k8s README says how to regenerate from the file init wrote, not a placeholder
        assert "`cl-scale render k8s -f cl-scale.yaml --out k8s`" in (proj / "k8s" / "README.md").read_text()
    values = yaml.safe_load((proj / "cl-scale.yaml").read_text())
    assert values["replicas"] == 2 and values["ingress"]["host"] == "chat.acme.io"
    assert "# Number of app instances." in (proj / "cl-scale.yaml").read_text()
    dockerfile = (proj / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "USER 10001" in dockerfile
    assert 'ENTRYPOINT ["cl-scale", "run"]' in dockerfile
    assert 'CMD ["app.py", "--host", "0.0.0.0", "--port", "8000"]' in dockerfile
    env = (proj / ".env.example").read_text()
    assert "CHAINLIT_AUTH_SECRET=\n" in env and "REDIS_PASSWORD=\n" in env
    compile((proj / "app.py").read_text(), "app.py", "exec")

    # rendering again from the written values gives the same nginx files
    again = cli("render", "nginx", "-f", "proj/cl-scale.yaml", "--out", "again", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again/conf.d/chainlit.conf").read_text() == (proj / "nginx/conf.d/chainlit.conf").read_text()

    # non-empty: refused without --force; --force never touches the user's app
    (proj / "app.py").write_text("# my app\n")
    assert_one_line_error(cli("init", "proj", cwd=tmp_path), "not empty", "--force")
    result = cli("init", "proj", "--force", "--replicas", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (proj / "app.py").read_text() == "# my app\n"
    assert yaml.safe_load((proj / "cl-scale.yaml").read_text())["replicas"] == 3


def test_init_in_a_dir_holding_only_the_app(tmp_path):
    (tmp_path / "chat.py").write_text("# mine\n")
    result = cli("init", ".", "--app", "chat.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "chat.py").read_text() == "# mine\n" and not (tmp_path / "app.py").exists()
    assert yaml.safe_load((tmp_path / "cl-scale.yaml").read_text())["app"]["module"] == "chat.py"
    assert "chat.py" in (tmp_path / "Dockerfile").read_text()


def test_init_refuses_a_file_as_dir(tmp_path):
    (tmp_path / "f").write_text("x")
    assert_one_line_error(cli("init", "f", cwd=tmp_path), "not a directory")


PROBE = """
import sys
from cl_scale.cli import main
sys.argv = ["cl-scale", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
loaded = sorted(m for m in sys.modules if m == "chainlit" or m.startswith(("chainlit.", "socketio", "redis")))
sys.stderr.write("LOADED=" + ",".join(loaded) + "\\n")
"""


@pytest.mark.parametrize("args", [["render", "nginx", "--out", "n"], ["render", "compose", "--out", "-"],
                                  ["init", "proj", "--replicas", "2"]])
def test_render_commands_do_not_import_chainlit(tmp_path, args):
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "LOADED=\n" in result.stderr, result.stderr
