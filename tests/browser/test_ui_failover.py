"""A real browser (Playwright + Debian's Chromium) on Chainlit's own UI, through nginx, on 3 instances:
SIGKILL the instance serving the page; the page reconnects by itself, keeps the history, and the next
message is answered by another instance with the same session state (the counter goes on).

Every wait is for a concrete signal (a reply, a new websocket), never a fixed sleep. Screenshots go to
test-artifacts/browser/ (gitignored).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import sync_playwright  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
REPLY = '[data-step-type="assistant_message"]'
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]


def _loopback_only(route):
    """No request may leave the machine (Google Fonts, KaTeX CDN): a hanging DNS must not stall us."""
    host = urlsplit(route.request.url).hostname
    if host in ("127.0.0.1", "localhost", "::1"):
        route.continue_()
    else:
        route.abort()


def _fields(text: str) -> dict:
    return dict(re.findall(r"(\w+)=(\S+)", text))


def _ask(page, text: str, timeout_ms: int = 30_000) -> dict:
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")
    reply = page.locator(REPLY, has_text=f"echo={text}").first
    reply.wait_for(timeout=timeout_ms)
    return _fields(reply.inner_text())


def test_browser_page_survives_sigkill_of_its_instance(cluster):
    cluster.start(3, nginx=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sockets = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 800})
            context.route("**/*", _loopback_only)
            page = context.new_page()
            connected: set[int] = set()  # sockets whose Socket.IO connect was acknowledged ("40{...}")

            def on_socket(ws):
                if "/ws/socket.io" in ws.url:
                    sockets.append(ws)
                    ws.on("framereceived", lambda frame, ws=ws: connected.add(id(ws))
                          if isinstance(frame, str) and frame.startswith("40") else None)

            page.on("websocket", on_socket)
            page.goto(cluster.nginx.url, timeout=60_000)
            page.locator(REPLY, has_text="started on").first.wait_for(timeout=60_000)

            first = _ask(page, "hello")
            assert first["count"] == "1"
            page.screenshot(path=str(ARTIFACTS / "1-before-kill.png"), full_page=True)

            victim = cluster.by_name(first["instance"])
            opened = len(sockets)
            killed_at = time.monotonic()
            victim.kill()  # SIGKILL: no drain, no goodbye

            # The page opens a new socket through nginx to a surviving instance, by itself; the next
            # message is typed once that socket's Socket.IO connect is acknowledged (a message typed in
            # the dead window before it is lost: stock Chainlit behaviour).
            deadline = time.monotonic() + 60
            while not (len(sockets) > opened and not sockets[-1].is_closed() and id(sockets[-1]) in connected):
                assert time.monotonic() < deadline, "the page never reconnected"
                page.wait_for_timeout(100)
            reconnected_s = time.monotonic() - killed_at

            after = _ask(page, "after-kill")
            answered_s = time.monotonic() - killed_at
            page.screenshot(path=str(ARTIFACTS / "2-after-kill.png"), full_page=True)

            assert after["instance"] != victim.name
            assert after["count"] == "2", "the session state was lost (counter reset)"
            assert after["thread"] == first["thread"], "a new thread was started"
            assert after["restores"] == "1"
            # The history is still on the page: greeting, first question and its answer.
            assert page.locator('[data-step-type="user_message"]', has_text="hello").count() == 1
            assert page.locator(REPLY, has_text="echo=hello").count() == 1
            assert page.locator(REPLY, has_text="started on").count() == 1, "on_chat_start ran again"
            # Chainlit scrolls the newest question to the top: scroll back to show the older history.
            greeting = page.locator(REPLY, has_text="started on").first
            greeting.scroll_into_view_if_needed()
            assert greeting.is_visible()
            page.screenshot(path=str(ARTIFACTS / "3-history-kept.png"))
            print(f"reconnected {reconnected_s:.2f}s after SIGKILL; next reply {answered_s:.2f}s after it "
                  f"({victim.name} -> {after['instance']})")
        finally:
            browser.close()


def test_browser_shows_the_interrupted_notice_after_a_sigkill_mid_reply(cluster):
    """Chainlit's own UI: a streamed reply is cut by SIGKILL of its instance; after the page reconnects by
    itself, the chat shows the partial reply and, after it, the interrupted notice — once."""
    cluster.start(3, nginx=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 800})
            context.route("**/*", _loopback_only)
            page = context.new_page()
            page.goto(cluster.nginx.url, timeout=60_000)
            page.locator(REPLY, has_text="started on").first.wait_for(timeout=60_000)
            first = _ask(page, "hello")
            page.fill("#chat-input", "slowstream 80 0.1")
            page.press("#chat-input", "Enter")
            page.locator(REPLY, has_text="s5 ").first.wait_for(timeout=30_000)  # streaming, mid-reply
            killed_at = time.monotonic()
            cluster.by_name(first["instance"]).kill()
            notice = page.locator(REPLY, has_text="was interrupted")
            notice.first.wait_for(timeout=60_000)
            shown_s = time.monotonic() - killed_at
            page.screenshot(path=str(ARTIFACTS / "4-interrupted-notice.png"), full_page=True)
            page.wait_for_timeout(1000)
            assert notice.count() == 1
            assert page.locator(REPLY, has_text="s5 ").count() == 1  # the partial reply is still there
            after = _ask(page, "after")
            assert after["instance"] != first["instance"] and after["thread"] == first["thread"]
            print(f"interrupted notice shown {shown_s:.2f}s after SIGKILL")
        finally:
            browser.close()
