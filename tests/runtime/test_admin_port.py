"""An instance with an admin port (what Kubernetes renders): /metrics and the worker gateway only there,
the app only on the public port; websocket-only clients when the deployment asks for them; the
advertised address of a pod with an IPv6 IP."""

from __future__ import annotations

import httpx

from cl_scale.ops.processes import free_port
from cl_scale.runtime.settings import RuntimeSettings


def test_admin_endpoints_are_served_on_the_admin_port_only(cluster):
    admin = free_port()
    (inst,) = cluster.start(1, env={"CL_SCALE_ADMIN_PORT": str(admin), "CL_SCALE_WEBSOCKET_ONLY": "true",
                                    "CL_SCALE_GATEWAY_TOKENS": "t1:token-0123456789abcdef"}).instances
    public, private = inst.url, f"http://127.0.0.1:{admin}"
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{public}/metrics").status_code == 404
        assert "clscale_" in http.get(f"{private}/metrics").text
        gateway = "/cl-scale/v1/sessions/abcdefgh-1234/messages"
        assert http.post(f"{public}{gateway}", json={"text": "x"}).status_code == 404
        assert http.post(f"{private}{gateway}", json={"text": "x"}).status_code == 401  # there, and asks a token
        assert http.get(f"{private}/").status_code == 404  # the app is not on the admin port
        assert http.get(f"{private}/readyz").status_code == 200 and http.get(f"{public}/readyz").status_code == 200
        page = http.get(f"{public}/")
        assert page.status_code == 200 and 'window.transports = ["websocket"]' in page.text


def test_an_ipv6_pod_address_is_bracketed(monkeypatch):
    monkeypatch.setenv("CL_SCALE_ADVERTISE_HOST", "fd00:10:244::17")
    assert RuntimeSettings.from_env(port=8000).advertise_url == "http://[fd00:10:244::17]:8000"
    monkeypatch.setenv("CL_SCALE_ADVERTISE_HOST", "10.244.1.7")
    assert RuntimeSettings.from_env(port=8000).advertise_url == "http://10.244.1.7:8000"
