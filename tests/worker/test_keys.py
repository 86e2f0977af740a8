"""Key/token parsing: scopes, rotation, and secrets never shown."""

from __future__ import annotations

import pytest

from cl_scale.errors import UserError
from cl_scale.runtime.settings import RuntimeSettings
from cl_scale.worker import parse_keys
from cl_scale.worker import protocol as p


def test_keys_scopes_and_redaction(monkeypatch):
    keys = parse_keys("k1:s3cret-one,k2:s3cret-two;users=alice|bob;sessions=s1")
    assert set(keys) == {"k1", "k2"} and keys["k1"].secret == b"s3cret-one"
    assert keys["k2"].allows(p.Target(user="alice")) and not keys["k2"].allows(p.Target(user="eve"))
    assert keys["k2"].allows(p.Target(session="s1"), "s1") and not keys["k2"].allows(p.Target(session="s2"), "s2")
    assert keys["k2"].allows(p.Target(session="s9"), "s9", session_user="bob")
    assert "s3cret" not in repr(keys) + str(keys["k2"])
    monkeypatch.setenv("CL_SCALE_WORKER_KEYS", "k1:s3cret-one")
    monkeypatch.setenv("CL_SCALE_GATEWAY_TOKENS", "t1:t0ken-value")
    settings = RuntimeSettings.from_env(redis_url="redis://127.0.0.1:6379/0")
    assert settings.worker_keys == "k1:s3cret-one" and "s3cret" not in repr(settings) and "t0ken" not in repr(settings)


@pytest.mark.parametrize("spec", ["oops", "k1:", ":secret", "k1:s;colour=red"])
def test_bad_key_specs_name_the_key_not_the_secret(spec):
    with pytest.raises(UserError) as exc:
        parse_keys(spec)
    assert "CL_SCALE_WORKER_KEYS" in str(exc.value) and "secret" not in str(exc.value).replace("id:secret", "")
