"""load_values: YAML files with line tracking, Helm-style merge and --set, one-line errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from cl_scale.config.loader import documented_yaml, load_values, parse_set, typed_value
from cl_scale.config.values import Values
from cl_scale.errors import ConfigError, UserError


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def error(files=(), sets=()) -> UserError:
    with pytest.raises(UserError) as info:
        load_values(list(files), list(sets))
    assert "\n" not in str(info.value)
    return info.value


def test_defaults_without_input():
    assert load_values([], []) == Values()


def test_files_merge_left_to_right_then_set(tmp_path):
    a = write(tmp_path / "a.yaml", """
        replicas: 2
        app:
          port: 9000
          env: {A: "1", B: "2"}
        nginx:
          realIp: {enabled: true, from: [10.0.0.0/8, 192.168.0.0/16]}
    """)
    b = write(tmp_path / "b.yaml", """
        app:
          env: {B: "3"}
        nginx:
          realIp: {from: [172.16.0.0/12]}
    """)
    v = load_values([a, b], ["replicas=5"])
    assert v.replicas == 5
    assert v.app.port == 9000  # kept from a (mappings merge)
    assert v.app.env == {"A": "1", "B": "3"}
    assert v.nginx.realIp.from_ == ["172.16.0.0/12"]  # lists replace (helm)


@pytest.mark.parametrize("text, expected", [
    ("3", 3), ("-3", -3), ("1.5", 1.5), ("true", True), ("False", False), ("null", None),
    ('"3"', "3"), ("'true'", "true"), ("007", "007"), ("", ""), ("a b", "a b"), ("x=y", "x=y"),
])
def test_set_values_are_typed_like_helm(text, expected):
    assert typed_value(text) == expected
    assert type(typed_value(text)) is type(expected)


def test_set_paths_lists_and_escaped_dots():
    assert parse_set("a.b[0].c=1") == (("a", "b", 0, "c"), 1)
    assert parse_set(r"resources.limits.nvidia\.com/gpu=1") == (("resources", "limits", "nvidia.com/gpu"), 1)
    v = load_values([], ["nginx.realIp.enabled=true", "nginx.realIp.from[0]=10.0.0.0/8",
                         "nginx.realIp.from[1]=::1", r"resources.limits.nvidia\.com/gpu=1",
                         'app.env.PORT="8080"'])
    assert v.nginx.realIp.from_ == ["10.0.0.0/8", "::1"]
    assert v.resources.limits["nvidia.com/gpu"] == "1"
    assert v.app.env == {"PORT": "8080"}


@pytest.mark.parametrize("raw", ["=x", "a..b=1", "a[x]=1", "noequals", ".a=1", "a.=1", "a[-1]=1",
                                 "a[99999]=1", "a b=1", "a]=1"])
def test_malformed_set_is_rejected(raw):
    assert "--set" in str(error(sets=[raw]))


def test_set_error_names_the_set(tmp_path):
    e = error(sets=["replicas=abc"])
    assert isinstance(e, ConfigError) and e.key == "replicas" and e.where == "--set replicas"
    assert "must be an integer" in str(e)


def test_type_error_in_yaml_names_file_and_line(tmp_path):
    f = write(tmp_path / "v.yaml", """
        replicas: 3
        app:
          module: app.py
          port: eighty
    """)
    e = error([f])
    assert str(e).startswith(f"{f}:4: app.port='eighty': ")


def test_later_file_gets_the_blame(tmp_path):
    a = write(tmp_path / "a.yaml", "replicas: 3\n")
    b = write(tmp_path / "b.yaml", "# b\n# overrides\nreplicas: 1000\n")
    assert str(error([a, b])).startswith(f"{b}:3: replicas=1000: must be between 1 and 100")


def test_unknown_key_lists_the_allowed_ones(tmp_path):
    f = write(tmp_path / "v.yaml", "app:\n  prot: 80\n")
    msg = str(error([f]))
    assert msg.startswith(f"{f}:2: app.prot=80: unknown key")
    assert "port" in msg


def test_cross_field_error_points_at_the_key(tmp_path):
    f = write(tmp_path / "v.yaml", "redis:\n  image: redis:7\n  enabled: false\n")
    assert str(error([f])).startswith(f"{f}:3: redis.enabled=False: redis.enabled=false requires redis.url")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    f = write(tmp_path / "v.yaml", "replicas: 3\napp:\n  port: [1, 2\nname: x\n")
    msg = str(error([f]))
    assert msg.startswith(f"{f}:4: YAML syntax error")


def test_duplicate_keys_are_errors(tmp_path):
    f = write(tmp_path / "v.yaml", "replicas: 3\nreplicas: 4\n")
    assert str(error([f])).startswith(f"{f}:2: replicas=")


def test_missing_and_non_mapping_files(tmp_path):
    assert "not found" in str(error([tmp_path / "nope.yaml"]))
    assert "not a regular file" in str(error([tmp_path]))
    f = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    assert "must be a mapping" in str(error([f]))


def test_empty_file_is_defaults(tmp_path):
    f = write(tmp_path / "empty.yaml", "# nothing\n")
    assert load_values([f], []) == Values()


def test_secret_values_are_not_echoed():
    msg = str(error(sets=["app.env.CHAINLIT_AUTH_SECRET=supersecret"]))
    assert "supersecret" not in msg.split(": ", 2)[-1] and "<hidden>" in msg


def test_documented_yaml_round_trips(tmp_path):
    v = load_values([], ["replicas=7", "app.env.FOO=a: b # c", "app.env.BAR='1'",
                         "nginx.serverName=a.example.com b.example.com",
                         "nginx.realIp.enabled=true", "nginx.realIp.from[0]=10.0.0.0/8"])
    f = tmp_path / "cl-scale.yaml"
    f.write_text(documented_yaml(v))
    assert load_values([f], []) == v
    assert yaml.safe_load(f.read_text())["nginx"]["realIp"]["from"] == ["10.0.0.0/8"]


def _expected(model, indent=0):
    for name, field in type(model).model_fields.items():
        key = field.alias or name
        yield indent, key, field.description
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _expected(value, indent + 2)


def test_documented_yaml_has_every_key_with_its_description_above():
    v = Values()
    lines = documented_yaml(v).splitlines()
    pos = 0
    for indent, key, description in _expected(v):
        prefix = " " * indent + key + ":"
        while not lines[pos].startswith(prefix):  # bounded by len(lines): IndexError = missing key
            pos += 1
        assert lines[pos - 1] == " " * indent + "# " + description.splitlines()[-1], key
        pos += 1


def test_yaml_anchors_and_merge_keys(tmp_path):
    f = write(tmp_path / "v.yaml", """
        resources:
          requests: &req {cpu: 500m, memory: 1Gi}
          limits:
            <<: *req
            memory: 2Gi
        app:
          port: 8100
    """)
    v = load_values([f], [])
    assert v.resources.limits == {"cpu": "500m", "memory": "2Gi"}
    assert v.app.port == 8100


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
app:
  env:
    BOMB: *i
"""


@pytest.mark.timeout(20)
@pytest.mark.parametrize("text, where, needle", [
    (BILLION_LAUGHS, "bomb.yaml:12", "app.env.BOMB"),
    ("replicas: 3\n" + "x:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(40)), "bomb.yaml:", "nested deeper"),
    ("[" * 3000 + "]" * 3000 + "\n", "bomb.yaml", "nested too deeply"),
    ("? [a, b]\n: 1\n", "bomb.yaml:1", "keys must be plain names"),
    ("null: 3\n", "bomb.yaml:1", "keys must be plain names"),
    ("app:\n  1: x\n", "bomb.yaml:2", "keys must be plain names"),
])
def test_hostile_yaml_is_refused_fast_with_file_line(tmp_path, text, where, needle):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        load_values([path], [])
    message = str(exc.value)
    assert where in message and needle in message and len(message) < 400, message


def test_oversized_values_file_and_long_set_keys_are_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * 200_000)
    with pytest.raises(UserError, match="over 1024 KB"):
        load_values([path], [])
    with pytest.raises(UserError, match="segments"):
        load_values([], [".".join(["a"] * 1000) + "=1"])
