"""Key/token parsing: scopes, rotation, and secrets never shown."""

from __future__ import annotations

import pytest

from cl_scale.errors import UserError
from cl_scale.runtime.settings import RuntimeSettings
from cl_scale.worker import parse_keys


def test_keys_scopes_and_redaction(monkeypatch):
    keys = parse_keys("k1:s3cret-one,k2:s3cret-two;users=alice|bob;sessions=s1,k3:x;threads=t1")
    assert set(keys) == {"k1", "k2", "k3"} and keys["k1"].secret == b"s3cret-one"
    # allows(stored session id, stored user, stored thread)
    assert keys["k1"].allows("any", None, None)
    assert keys["k2"].allows("s9", "alice", None) and not keys["k2"].allows("s9", "eve", "t1")
    assert keys["k2"].allows("s1", None, None) and not keys["k2"].allows("s2", None, None)
    assert keys["k3"].allows("s9", None, "t1") and not keys["k3"].allows("t1", "t1", "t2")
    assert "s3cret" not in repr(keys) + str(keys["k2"])
    monkeypatch.setenv("CL_SCALE_WORKER_KEYS", "k1:s3cret-one")
    monkeypatch.setenv("CL_SCALE_GATEWAY_TOKENS", "t1:t0ken-value")
    settings = RuntimeSettings.from_env(redis_url="redis://127.0.0.1:6379/0")
    assert settings.worker_keys == "k1:s3cret-one" and "s3cret" not in repr(settings) and "t0ken" not in repr(settings)


@pytest.mark.parametrize("spec", ["oops", "k1:", ":secret", "k1:s;colour=red", "Zq9-secret-Zq9",
                                  "k1:Zq9-secret-Zq9;users", "k1:Zq9-secret-Zq9;users=", "t1:Zq9-secret-Zq9;sessions",
                                  "k1:Zq9-secret-Zq9;threads=|", "k1:a,k1:b", "k\n1:Zq9-secret-Zq9"])
def test_bad_key_specs_name_the_key_not_the_secret(spec):
    """Empty scopes are refused (they used to parse as unscoped: full access); no part of the spec
    beyond a well-formed key id is ever echoed (an entry without ':' may be the secret itself)."""
    with pytest.raises(UserError) as exc:
        parse_keys(spec.replace("\\n", "\n"))
    message = str(exc.value)
    assert "CL_SCALE_WORKER_KEYS" in message and "\n" not in message
    for secret in ("Zq9-secret-Zq9", "oops", "secret"):
        assert secret not in message.replace("id:secret", ""), message
