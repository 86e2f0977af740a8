"""The broker message format (``worker.requests.Envelope``) and bridge URLs, without brokers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cl_scale.bridge.settings import BrokerSettings
from cl_scale.errors import ConfigError
from cl_scale.worker.requests import Envelope

SID = "3f2c9a1e-0000-4000-8000-000000000001"


@pytest.mark.parametrize("body", [
    {"session_id": SID, "text": "hello"},
    {"user": "alice@example.com", "text": "deploy done", "id": "d-42", "author": "CI"},
    {"thread": "t1", "text": "x", "elements": [{"type": "text", "name": "n", "content": "c"}]},
    {"kind": "stream", "session_id": SID, "id": "r7", "tokens": ["He", "llo"], "end": False},
    {"kind": "stream", "session_id": SID, "id": "r7", "tokens": [], "offset": 2, "text": "Hello"},
    {"kind": "update", "session_id": SID, "id": "r7", "text": "Hello!"},
    {"kind": "remove", "session_id": SID, "id": "r7"},
])
def test_accepted_envelopes(body):
    Envelope.model_validate(body)


@pytest.mark.parametrize("body, why", [
    ({"text": "x"}, "exactly one target"),
    ({"session_id": SID, "user": "a", "text": "x"}, "exactly one target"),
    ({"session_id": SID}, "text is required"),
    ({"kind": "update", "user": "a", "id": "m", "text": "x"}, "use session_id"),
    ({"kind": "remove", "session_id": SID}, "needs id"),
    ({"kind": "stream", "session_id": SID, "tokens": ["a"]}, "needs id"),
    ({"kind": "remove", "session_id": SID, "id": "m", "text": "x"}, "takes no text"),
    ({"session_id": SID, "text": "x", "tokens": ["a"]}, "takes no tokens"),
    ({"kind": "explode", "session_id": SID, "text": "x"}, "kind"),
    ({"session_id": SID, "text": "x", "id": "a b"}, "id"),
])
def test_refused_envelopes_say_why(body, why):
    with pytest.raises(ValidationError) as exc:
        Envelope.model_validate(body)
    assert why in str(exc.value)


def test_kafka_url():
    s = BrokerSettings.parse("kafka://a:9092,b:9093/replies?group=g&dead_letters=replies-dlq")
    assert (s.kind, s.servers, s.name, s.group, s.dead_letters) == ("kafka", ["a:9092", "b:9093"], "replies", "g",
                                                                    "replies-dlq")
    assert s.kafka_kwargs()["security_protocol"] == "PLAINTEXT"


def test_kafka_sasl_password_from_env_never_shown(monkeypatch):
    monkeypatch.setenv("CL_SCALE_KAFKA_PASSWORD", "hunter2")
    s = BrokerSettings.parse("kafka://a:9092/t?group=g&sasl_username=u&security_protocol=SASL_PLAINTEXT"
                             "&sasl_mechanism=SCRAM-SHA-512")
    assert s.kafka_kwargs()["sasl_plain_password"] == "hunter2" and "hunter2" not in repr(s) + s.shown


def test_amqp_url_password_in_url_redacted():
    s = BrokerSettings.parse("amqps://bridge:s3cret@mq:5671/prod?queue=q&exchange=x&routing_key=k&prefetch=50")
    assert (s.kind, s.name, s.exchange, s.routing_key, s.prefetch) == ("amqp", "q", "x", "k", 50)
    assert s.amqp_url == "amqps://bridge:s3cret@mq:5671/prod" and "s3cret" not in s.shown + repr(s)


@pytest.mark.parametrize("url, why", [
    ("http://h/x", "expected kafka://"),
    ("kafka://h:9092/t", "group=NAME is required"),
    ("kafka://h/t?group=g", "expected host:port"),
    ("kafka://h:9092/?group=g", "the path must be the topic"),
    ("kafka://h:9092/t?group=g&colour=red", "unknown parameter"),
    ("kafka://h:9092/t?group=g&group=h", "given twice"),
    ("kafka://h:9092/t?group=g&security_protocol=SASL_SSL", "needs sasl_username"),
    ("kafka://h:9092/t?group=g&security_protocol=TLS", "security_protocol"),
    ("kafka://h:9092/t?group=g%0A", "letters, digits"),
    ("amqp://u:pw@h:5672/v", "queue=NAME is required"),
    ("amqp://u:pw@h:5672/v?queue=q&prefetch=0", "prefetch"),
    ("amqp://u:pw@h:5672/v?queue=q&exchange_type=weird", "exchange_type"),
    ("amqp://u:pw@h:5672/v?queue=q&ssl_cafile=/ca.pem", "ssl_cafile needs amqps://"),
])
def test_bad_urls_name_the_problem_without_the_password(url, why):
    with pytest.raises(ConfigError) as exc:
        BrokerSettings.parse(url)
    assert why in str(exc.value) and "pw" not in str(exc.value)
