"""The Values model against docs/values-schema.md: defaults, descriptions, validators."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from cl_scale.config.values import Values

DOC = Path(__file__).resolve().parents[2] / "docs" / "values-schema.md"


def schema_doc_defaults() -> dict:
    text = DOC.read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    return yaml.safe_load(block)


def test_defaults_match_the_documented_schema():
    assert Values().dump() == schema_doc_defaults()


def _models(model: type[BaseModel]):
    yield model
    for field in model.model_fields.values():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _models(ann)


def test_every_field_has_a_description():
    missing = [f"{m.__name__}.{n}" for m in _models(Values) for n, f in m.model_fields.items()
               if not (f.description or "").strip()]
    assert missing == []


def test_every_model_forbids_unknown_keys():
    assert all(m.model_config.get("extra") == "forbid" for m in _models(Values))


def bad(data: dict) -> str:
    with pytest.raises(ValidationError) as info:
        Values.model_validate(data)
    return str(info.value)


@pytest.mark.parametrize("data, needle", [
    ({"replicas": 0}, "between 1 and 100"),
    ({"replicas": 10000}, "between 1 and 100"),
    ({"replicas": "3"}, "valid integer"),
    ({"replicas": True}, "valid integer"),
    ({"replicas": 2.5}, "valid integer"),
    ({"name": "Chainlit"}, "DNS-1123"),
    ({"name": "-x"}, "DNS-1123"),
    ({"name": "a" * 41}, "at most 40"),
    ({"namespace": "a_b"}, "DNS-1123"),
    ({"app": {"port": 0}}, "between 1 and 65535"),
    ({"app": {"port": 70000}}, "between 1 and 65535"),
    ({"app": {"port": 65535}, "replicas": 2}, "exceeds 65535"),
    ({"app": {"image": "repo/app:1\nEVIL"}}, "whitespace"),
    ({"app": {"image": "repo/app;rm"}}, "OCI image reference"),
    ({"app": {"image": ""}}, "image reference"),
    ({"app": {"module": " app.py"}}, "leading/trailing"),
    ({"app": {"module": "app\n.py"}}, "control"),
    ({"app": {"host": "a b"}}, "RFC 1123"),
    ({"app": {"env": {"1BAD": "x"}}}, "env var names"),
    ({"app": {"env": {"A-B": "x"}}}, "env var names"),
    ({"app": {"env": {"CHAINLIT_AUTH_SECRET": "x"}}}, "secret"),
    ({"app": {"imagePullPolicy": "Sometimes"}}, "Always"),
    ({"ingress": {"host": "chat example.com"}}, "RFC 1123"),
    ({"ingress": {"host": "chat.example.com\nx"}}, "RFC 1123"),
    ({"ingress": {"host": "chat.example.com;"}}, "RFC 1123"),
    ({"ingress": {"host": 'chat"x'}}, "RFC 1123"),
    ({"ingress": {"host": "Chat.Example.com"}}, "lowercase"),
    ({"ingress": {"kind": "route"}}, "ingress"),
    ({"redis": {"enabled": False}}, "requires redis.url"),
    ({"redis": {"enabled": False, "url": "http://x"}}, "scheme"),
    ({"redis": {"enabled": False, "url": "redis://"}}, "needs host[:port]"),
    ({"redis": {"enabled": False, "url": "redis://x:99999"}}, "port must be between 1 and 65535"),
    ({"redis": {"url": "redis://x"}}, "redis.enabled=true"),
    ({"redis": {"maxmemory": "lots"}}, "Redis memory"),
    ({"redis": {"storage": "1GB"}}, "quantity"),
    ({"sticky": {"mode": "round_robin"}}, "ip_hash"),
    ({"sticky": {"cookieName": "a;b"}}, "cookie name"),
    ({"sticky": {"headerName": "X_Under"}}, "header name"),
    ({"sticky": {"headerName": "X-A$b"}}, "header name"),
    ({"nginx": {"clientMaxBodySize": "20 MB"}}, "nginx size"),
    ({"nginx": {"failTimeout": "2 seconds"}}, "nginx time"),
    ({"nginx": {"readTimeout": "45s"}}, "exceed 45s"),
    ({"nginx": {"readTimeout": "30000ms"}}, "exceed 45s"),
    ({"nginx": {"readTimeout": "1d"}}, "nginx time"),
    ({"nginx": {"serverName": "a;b"}}, "DNS name"),
    ({"nginx": {"serverName": "a  b"}}, "single spaces"),
    ({"nginx": {"listen": 0}}, "between 1 and 65535"),
    ({"nginx": {"tls": {"enabled": True, "listen": 8080}}}, "differ"),
    ({"nginx": {"tls": {"certificate": "/etc/$host.crt"}}}, "'$'"),
    ({"nginx": {"realIp": {"enabled": True}}}, "at least one CIDR"),
    ({"nginx": {"realIp": {"from": ["10.0.0.0/33"]}}}, "CIDR"),
    ({"nginx": {"realIp": {"header": "X Forwarded"}}}, "header name"),
    ({"resources": {"limits": {"memory": "1 GB"}}}, "quantity"),
    ({"resources": {"limits": {"Memory!": "1Gi"}}}, "resource name"),
    ({"hpa": {"minReplicas": 5, "maxReplicas": 2}}, "maxReplicas"),
    ({"pdb": {"maxUnavailable": 0}}, ">= 1"),
    ({"pdb": {"maxUnavailable": "150%"}}, "percentage"),
    ({"drain": {"seconds": -1}}, "between 0 and 3600"),
    ({"websocketOnly": "yes"}, "valid boolean"),
    ({"unknown": 1}, "Extra inputs"),
    ({"app": {"unknown": 1}}, "Extra inputs"),
])
def test_rejects(data, needle):
    assert needle in bad(data)


@pytest.mark.parametrize("data", [
    {"redis": {"enabled": False, "url": "redis://redis.example.com:6379/0"}},
    {"redis": {"enabled": False, "url": "rediss://app@redis.example.com:6380/1"}},
    {"redis": {"enabled": False, "url": "unix:///run/redis.sock"}},
    {"redis": {"enabled": False, "url": "redis+sentinel://s1:26379,s2:26379/mymaster/0"}},
    {"ingress": {"host": "*.chat.example.com"}},
    {"app": {"host": "::1"}},
    {"app": {"host": "app.internal"}},
    {"app": {"image": "registry:5000/team/app@sha256:" + "a" * 64}},
    {"app": {"env": {"FOO": 1, "BAR": True, "BAZ": "x y; z"}}},
    {"nginx": {"clientMaxBodySize": 100, "readTimeout": "1h", "serverName": "a.example.com *.b.example.com"}},
    {"nginx": {"realIp": {"enabled": True, "from": ["10.0.0.0/8", "::1"], "header": "proxy_protocol"}}},
    {"pdb": {"maxUnavailable": "25%"}},
    {"resources": {"limits": {"cpu": 2, "nvidia.com/gpu": "1"}}},
    {"replicas": 100, "app": {"port": 65436}},
])
def test_accepts(data):
    Values.model_validate(data)


def test_env_numbers_become_strings():
    v = Values.model_validate({"app": {"env": {"FOO": 1, "BAR": True}}})
    assert v.app.env == {"FOO": "1", "BAR": "true"}


def test_real_ip_from_keeps_its_yaml_name():
    v = Values.model_validate({"nginx": {"realIp": {"enabled": True, "from": ["10.0.0.0/8"]}}})
    assert v.nginx.realIp.from_ == ["10.0.0.0/8"]
    assert v.dump()["nginx"]["realIp"]["from"] == ["10.0.0.0/8"]


def test_assignment_is_validated():
    v = Values()
    with pytest.raises(ValidationError):
        v.replicas = 0
