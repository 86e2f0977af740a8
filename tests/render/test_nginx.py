"""nginx target: structure (parsed, not grepped), `nginx -t` for every mode, injection, and a real
nginx routing real Socket.IO traffic (polling, then websocket) to three real backends."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import pytest

from cl_scale.config.loader import load_values
from cl_scale.errors import UserError
from cl_scale.render import nginx as nginx_render
from tests.render.conftest import SUPPORT, nginx_test, write_tree
from tests.support.nginx_tokens import Directive, parse

MODES = ["ip_hash", "cookie", "header"]


def render(*sets: str, **kw) -> dict[str, str]:
    return nginx_render.render(load_values([], list(sets)), **kw)


def directives(*sets: str, **kw) -> list[Directive]:
    return parse(render(*sets, **kw)["conf.d/chainlit.conf"])


def find(ds: list[Directive], name: str, block: tuple[str, ...] | None = None) -> list[Directive]:
    return [d for d in ds if d.name == name and (block is None or d.block == block)]


def test_outputs_and_main_conf_runs_unprivileged():
    files = render()
    assert set(files) == {"nginx.conf", "conf.d/chainlit.conf", "run/.gitignore", "logs/.gitignore"}
    main = {d.name: d.args for d in parse(files["nginx.conf"])}
    assert main["daemon"] == ("off",) and main["pid"] == ("run/nginx.pid",)
    assert main["worker_processes"] == ("auto",)
    assert main["include"] == ("conf.d/chainlit.conf",)
    for temp in ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path", "uwsgi_temp_path", "scgi_temp_path"):
        assert not main[temp][0].startswith("/"), temp
    assert not main["error_log"][0].startswith("/") and not main["access_log"][0].startswith("/")


def test_upstream_proxy_and_websocket_directives():
    ds = directives("replicas=4", "app.port=9000", "nginx.maxFails=5", "nginx.failTimeout=3s",
                    "nginx.readTimeout=120s", "nginx.clientMaxBodySize=50m")
    up = [d for d in ds if d.block == ("upstream",)]
    assert [d.args for d in up if d.name == "server"] == [
        (f"127.0.0.1:{9000 + i}", "max_fails=5", "fail_timeout=3s") for i in range(4)]
    assert [d.name for d in up] == ["ip_hash", "server", "server", "server", "server", "keepalive",
                                    "keepalive_timeout"]
    # Shorter than the instances' idle keep-alive, so nginx never reuses a connection being closed.
    from cl_scale.runtime.launcher import KEEP_ALIVE_SECONDS

    timeout = next(d.args[0] for d in up if d.name == "keepalive_timeout")
    assert timeout.endswith("s") and int(timeout[:-1]) < KEEP_ALIVE_SECONDS
    loc = {d.name: d.args for d in ds if d.block == ("server", "location") and d.name != "proxy_set_header"}
    headers = {d.args[0]: d.args[1] for d in find(ds, "proxy_set_header")}
    assert headers["Host"] == "$http_host"  # not $host: Engine.IO 403s the websocket without the port
    assert headers["Upgrade"] == "$http_upgrade" and headers["Connection"] == "$clscale_connection_upgrade"
    assert {"X-Real-IP", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"} <= set(headers)
    assert loc["proxy_http_version"] == ("1.1",)
    assert loc["proxy_read_timeout"] == loc["proxy_send_timeout"] == ("120s",)
    assert loc["proxy_buffering"] == ("off",)
    assert find(ds, "client_max_body_size")[0].args == ("50m",)
    upgrade = [d for d in ds if d.block == ("map",)]
    assert ("default", ("upgrade",)) in [(d.name, d.args) for d in upgrade]


def _pcre_to_python(rx: str) -> re.Pattern:
    assert rx.startswith("~*")
    return re.compile(rx[2:].replace("(?<", "(?P<"), re.I)


def test_cookie_mode_hashes_the_chainlit_session_cookie():
    ds = directives("sticky.mode=cookie")
    maps = [d for d in ds if d.block == ("map",)]
    assert ("$http_cookie", "$clscale_affinity") in [d.args for d in find(ds, "map")]
    rx = _pcre_to_python(maps[2].name)  # map entries: upgrade default/"" then the cookie regex
    assert maps[2].args == ("$sid",)
    assert rx.search("a=1; X-Chainlit-Session-id=abc-123; b=2").group("sid") == "abc-123"
    assert rx.search("X-Chainlit-Session-id=xyz").group("sid") == "xyz"
    assert rx.search("NotX-Chainlit-Session-id=xyz") is None
    assert find(ds, "hash")[0].args == ("$clscale_affinity", "consistent")
    assert not find(ds, "ip_hash")


def test_cookie_name_is_regex_escaped():
    ds = directives("sticky.mode=cookie", "sticky.cookieName=my.sid")
    rx = _pcre_to_python([d for d in ds if d.block == ("map",)][2].name)
    assert rx.search("my.sid=1") and not rx.search("myXsid=1")


def test_header_mode_falls_back_to_the_client_address():
    ds = directives("sticky.mode=header", "sticky.headerName=X-Chat-User")
    assert ("$http_x_chat_user", "$clscale_affinity") in [d.args for d in find(ds, "map")]
    entries = [(d.name, d.args) for d in ds if d.block == ("map",)]
    assert entries[-2:] == [("", ("$remote_addr",)), ("default", ("$http_x_chat_user",))]
    assert find(ds, "hash")[0].args == ("$clscale_affinity", "consistent")


def test_tls_redirects_plain_http():
    ds = directives("nginx.tls.enabled=true", "nginx.tls.listen=443", "nginx.serverName=chat.example.com")
    servers = find(ds, "server", ())
    assert len(servers) == 2
    listens = [d.args for d in find(ds, "listen")]
    assert listens == [("8080",), ("443", "ssl")]
    assert find(ds, "return")[0].args == ("301", "https://$host$request_uri")
    assert find(ds, "ssl_certificate")[0].args == ("/etc/nginx/tls/tls.crt",)
    assert len(find(ds, "proxy_pass")) == 1  # only the HTTPS server proxies


def test_real_ip():
    ds = directives("nginx.realIp.enabled=true", "nginx.realIp.from[0]=10.0.0.0/8", "nginx.realIp.from[1]=fd00::/8")
    assert [d.args for d in find(ds, "set_real_ip_from")] == [("10.0.0.0/8",), ("fd00::/8",)]
    assert find(ds, "real_ip_header")[0].args == ("X-Forwarded-For",)
    assert find(ds, "real_ip_recursive")[0].args == ("on",)
    assert not find(directives(), "set_real_ip_from")


@pytest.mark.parametrize("tls", [False, True])
def test_real_ip_proxy_protocol_listens_with_proxy_protocol(tmp_path, tls):
    sets = ["nginx.realIp.enabled=true", "nginx.realIp.from[0]=10.0.0.0/8", "nginx.realIp.header=proxy_protocol",
            f"nginx.tls.enabled={str(tls).lower()}"]
    files = render(*sets)
    ds = parse(files["conf.d/chainlit.conf"])
    assert find(ds, "real_ip_header")[0].args == ("proxy_protocol",)
    assert all("proxy_protocol" in d.args for d in find(ds, "listen")), find(ds, "listen")
    if not tls:  # nginx -t needs the certificate files for TLS
        result = nginx_test(write_tree(tmp_path, files))
        assert result.returncode == 0, result.stderr
    assert all("proxy_protocol" not in d.args for d in find(directives(), "listen"))


def test_explicit_upstreams_and_listen_host():
    ds = directives(upstreams=["10.0.0.5:7001", "[::1]:7002", "app-3:8000"], listen_host="127.0.0.1")
    assert [d.args[0] for d in find(ds, "server", ("upstream",))] == ["10.0.0.5:7001", "[::1]:7002", "app-3:8000"]
    assert find(ds, "listen")[0].args == ("127.0.0.1:8080",)


@pytest.mark.parametrize("upstreams", [[], ["a:0"], ["a"], ["a:1; evil"], ["a:1\n"], ["[zz]:1"]])
def test_bad_upstreams_are_user_errors(upstreams):
    with pytest.raises(UserError):
        render(upstreams=upstreams)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tls", [False, True])
def test_nginx_accepts_the_config(tmp_path, tls_cert, mode, tls):
    cert, key = tls_cert
    files = render(f"sticky.mode={mode}", f"nginx.tls.enabled={str(tls).lower()}",
                   f"nginx.tls.certificate={cert}", f"nginx.tls.certificateKey={key}",
                   "nginx.realIp.enabled=true", "nginx.realIp.from[0]=10.0.0.0/8")
    result = nginx_test(write_tree(tmp_path, files))
    assert result.returncode == 0, result.stderr


def test_snippet_fits_an_existing_nginx(tmp_path):
    """conf.d/chainlit.conf goes inside someone else's http {} block, next to their servers."""
    snippet = render("sticky.mode=cookie")["conf.d/chainlit.conf"]
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "chainlit.conf").write_text(snippet)
    (tmp_path / "nginx.conf").write_text(
        "pid nginx.pid; error_log error.log;\nevents {}\n"
        "http { access_log off; client_body_temp_path cb; proxy_temp_path px; fastcgi_temp_path fc;"
        " uwsgi_temp_path uw; scgi_temp_path sc;\n"
        "  server { listen 127.0.0.1:9999; location / { return 204; } }\n"
        "  include conf.d/*.conf;\n}\n")
    result = nginx_test(tmp_path)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- injection: the second wall

NASTY = ['x";\n}\nserver { listen 1; }\n#', "a; include /etc/passwd;", "a}b{c", "a'b\"c\\", "a #b"]


def _shape(text: str) -> Counter:
    """Directive names per block; map entries (whose "name" is a value) count as entries."""
    return Counter((d.block, "<entry>" if d.block[-1:] == ("map",) else d.name) for d in parse(text))


@pytest.mark.parametrize("nasty", NASTY)
def test_valid_values_cannot_add_directives(nasty):
    """tls.certificate accepts quotes, ';', braces: it must stay one argument of one directive."""
    base = load_values([], ["nginx.tls.enabled=true"])
    evil = load_values([], ["nginx.tls.enabled=true", f"nginx.tls.certificate=/etc/{nasty.replace(chr(10), '')}"])
    text = nginx_render.render(evil)["conf.d/chainlit.conf"]
    assert _shape(text) == _shape(nginx_render.render(base)["conf.d/chainlit.conf"])
    assert find(parse(text), "ssl_certificate")[0].args == (evil.nginx.tls.certificate,)


def _bypass(values, section: str, **update):
    """Values that skipped validation (model_copy does not validate): the renderer must still
    quote or refuse them."""
    sub = getattr(values, section).model_copy(update=update)
    return values.model_copy(update={section: sub})


@pytest.mark.parametrize("field, section", [
    ("serverName", "nginx"), ("clientMaxBodySize", "nginx"), ("failTimeout", "nginx"), ("readTimeout", "nginx"),
    ("cookieName", "sticky"), ("headerName", "sticky"), ("host", "app"),
])
@pytest.mark.parametrize("nasty", NASTY + ["$host", "a\x00b"])
def test_unvalidated_values_are_quoted_or_refused(field, section, nasty):
    mode = {"cookieName": "cookie", "headerName": "header"}.get(field, "ip_hash")
    base = load_values([], [f"sticky.mode={mode}"])
    evil = _bypass(base, section, **{field: nasty})
    try:
        text = nginx_render.render(evil)["conf.d/chainlit.conf"]
    except UserError:
        return  # refused: fine
    assert _shape(text) == _shape(nginx_render.render(base)["conf.d/chainlit.conf"])


def test_quote_filter():
    assert nginx_render.nginx_quote('a"b\\c;') == '"a\\"b\\\\c;"'
    assert nginx_render.nginx_quote(8080) == "8080"
    for refused in ("$x", "a\nb", None, True):
        with pytest.raises(ValueError):
            nginx_render.nginx_quote(refused)


# ---------------------------------------------------------------- live: real nginx, real Socket.IO


def clients(url: str, specs: list[dict]) -> list[dict]:
    out = subprocess.run([sys.executable, str(SUPPORT / "sio_client.py"), url, json.dumps(specs)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def _check_sticky(results: list[dict]) -> list[str]:
    owners = []
    for r in results:
        assert len(set(r["backends"])) == 1, r  # one backend across polling and websocket
        assert r["transports"][-1] == "websocket", r
        owners.append(r["backends"][0])
    return owners


def test_ip_hash_sticks_and_spreads_distinct_clients(run_nginx, sio_backends):
    url = run_nginx(["sticky.mode=ip_hash"], sio_backends)
    specs = [{"source": f"127.0.{n}.1", "calls": 3} for n in range(2, 14)]
    first = _check_sticky(clients(url, specs))
    assert set(first) == {"b1", "b2", "b3"}
    assert _check_sticky(clients(url, specs)) == first  # a reconnecting client comes back to its backend


def test_cookie_mode_sticks_per_session_cookie(run_nginx, sio_backends):
    url = run_nginx(["sticky.mode=cookie"], sio_backends)
    # 64 keys, as in header mode: consistent hashing over ephemeral ports.
    specs = [{"headers": {"Cookie": f"theme=dark; X-Chainlit-Session-id=session-{n}; other=1"}, "calls": 3}
             for n in range(64)]
    first = _check_sticky(clients(url, specs))
    assert set(first) == {"b1", "b2", "b3"}  # same source address, different cookies: spread
    assert _check_sticky(clients(url, specs)) == first


def test_header_mode_sticks_per_header(run_nginx, sio_backends):
    url = run_nginx(["sticky.mode=header"], sio_backends)
    # 64 keys: consistent hashing over ephemeral ports must not leave a backend without one by chance
    # (12 keys did, ~2 % of runs).
    specs = [{"headers": {"X-Session-Affinity": f"user-{n}"}, "calls": 3} for n in range(64)]
    first = _check_sticky(clients(url, specs))
    assert set(first) == {"b1", "b2", "b3"}
    assert _check_sticky(clients(url, specs)) == first
