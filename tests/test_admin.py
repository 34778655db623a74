"""The admin page at /admin: its guard, its namespace, and the page in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT, running

# The browser fixtures of test_browser.py (module-scoped Chromium, pages that fail on errors).
from test_browser import browser, new_page  # noqa: F401
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect
from wire import Wire

from plainsocket import SocketServer, join_room
from plainsocket.admin import FailureThrottle

TOKEN = "correct horse battery staple"
HOSTILE_ROOM = "<img src=x onerror=window.pwned=1>"
SCREENSHOT = ROOT / "docs" / "admin.png"


def test_throttle_counts_failures_per_address_in_a_window() -> None:
    throttle = FailureThrottle(limit=3, window=60)
    for _ in range(3):
        assert throttle.blocked("10.0.0.1", 100.0) == 0
        throttle.failed("10.0.0.1", 100.0)
    assert throttle.blocked("10.0.0.1", 130.0) == pytest.approx(30.0)
    assert throttle.blocked("10.0.0.2", 130.0) == 0  # another address is not affected
    assert throttle.blocked("10.0.0.1", 160.0) == 0  # the window is over


async def test_admin_is_off_without_a_token() -> None:
    """No token: no /admin namespace and no page."""
    socketio = SocketServer()
    async with running(socketio) as url:
        client = await Wire.open(url)
        await client.send("connect", {"token": ""}, "/admin")
        refused = await client.expect("connect_error", "/admin")
        assert refused["data"]["message"] == "unknown namespace"
        await client.ws.close()


async def test_wrong_tokens_are_refused_then_throttled() -> None:
    """A wrong token is refused with a message; after 5 failures even the right one is, for a while."""
    socketio = SocketServer(admin_token=TOKEN)
    async with running(socketio) as url:
        client = await Wire.open(url)
        for attempt in ("wrong", None, 42, {"nested": TOKEN}, TOKEN[:-1]):
            await client.send("connect", {"token": attempt}, "/admin")
            refused = await client.expect("connect_error", "/admin")
            assert refused["data"]["message"] == "invalid admin token"
        await client.send("connect", {"token": TOKEN}, "/admin")
        refused = await client.expect("connect_error", "/admin")
        assert refused["data"]["message"].startswith("too many failed attempts")
        socketio._admin.throttle.succeeded("127.0.0.1")  # type: ignore[union-attr] (the window's end)
        await client.join("/admin", {"token": TOKEN})
        view = await client.expect("cluster", "/admin")
        assert view["data"]["backplane"] == "off"
        assert view["data"]["write"] is False
        await client.ws.close()


async def test_read_only_has_no_write_event_and_rooms_are_data() -> None:
    """Read-only: disconnect_sid is unknown; rooms come as plain strings, bounded in number."""
    socketio = SocketServer(admin_token=TOKEN, heartbeat_interval=0.2)

    @socketio.on("join", namespace="/chat")
    def join(room: str) -> None:
        join_room(room)

    async with running(socketio) as url:
        user = await Wire.open(url)
        await user.join("/chat")
        for n in range(8):
            await user.call("join", f"room-{n}", "/chat", id=n + 1)
        await user.call("join", HOSTILE_ROOM, "/chat", id=99)
        admin = await Wire.open(url)
        await admin.join("/admin", {"token": TOKEN})
        view = (await admin.expect("cluster", "/admin"))["data"]
        (node,) = view["nodes"]
        assert node["connections"] == 1  # the admin page is not counted as a client
        rooms = node["rooms"]["/chat"]
        assert rooms["total"] == 9
        assert len(rooms["largest"]) == 5
        crafted = await admin.call("disconnect_sid", {"sid": user.sid}, "/admin", id=7)
        assert crafted["event"] == "error" and crafted["data"]["code"] == "unknown_event"
        assert await user.call("join", "still-here", "/chat", id=100)
        details = (await admin.call("inspect_sid", {"sid": user.sid}, "/admin", id=8))["data"]
        assert details["found"] and HOSTILE_ROOM in details["namespaces"]["/chat"]["rooms"]
        page = (await admin.call("inspect_room", {"namespace": "/chat", "room": HOSTILE_ROOM}, "/admin", id=9))["data"]
        assert page["sids"] == [user.sid] and page["total"] == 1
        bad = (await admin.call("inspect_room", {"namespace": "/nope", "room": "x"}, "/admin", id=10))["data"]
        assert "error" in bad
        await admin.ws.close()
        await user.ws.close()


# -- The page in Chromium, against two workers and Redis ---------------------------------------


class User:
    """A client of the demo's /test namespace, over the sync websockets client."""

    def __init__(self, url: str) -> None:
        self.exit_stack = contextlib.ExitStack()
        self.ws: ClientConnection = self.exit_stack.enter_context(ws_connect(url))
        self.sid = json.loads(self.ws.recv(5))["data"]["sid"]
        self.send("connect", None)
        self.wait_for("connect")
        self.wait_for("my response")  # the demo's "Connected"

    def send(self, event: str, data: Any) -> None:
        self.ws.send(json.dumps({"event": event, "namespace": "/test", "data": data}))

    def wait_for(self, event: str) -> dict[str, Any]:
        while True:
            frame = json.loads(self.ws.recv(5))
            if frame["event"] == event and frame["namespace"] == "/test":
                return frame

    def close_code(self) -> int | None:
        """Wait for the server to close this socket; return its close code."""
        try:
            while True:
                self.ws.recv(10)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


@pytest.fixture
def users() -> Iterator[list[User]]:
    opened: list[User] = []
    yield opened
    for user in opened:
        user.exit_stack.close()


def log_in(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/admin")
    page.fill("#token", token)
    page.click("#login button[type=submit]")


def test_admin_page_two_workers(
    redis_server: Any, server_process: Any, new_page: Any, users: list[User]  # noqa: F811
) -> None:
    """Wrong token refused; 2 nodes; 5 clients; a hostile room as text; read-only; Redis down."""
    from playwright.sync_api import expect

    server = server_process(
        "--workers", "2", "--redis", redis_server.url, "--heartbeat-interval", "0.5", "--admin-token", TOKEN
    )
    base = f"http://127.0.0.1:{server.port}"
    page = new_page()
    response = page.goto(f"{base}/admin")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp

    log_in(page, base, "not the token")
    expect(page.locator("#login-error")).to_have_text(re.compile("Refused: .*invalid admin token"))
    assert page.locator("#dashboard").is_hidden()

    log_in(page, base, TOKEN)
    expect(page.locator("#nodes tbody tr")).to_have_count(2, timeout=5000)
    expect(page.locator("#nodes-up")).to_have_text("2")
    expect(page.locator("#mode")).to_have_text("read-only")

    for _ in range(5):
        users.append(User(server.url))
    expect(page.locator("#connections")).to_have_text("5", timeout=5000)
    users[0].send("join", {"room": HOSTILE_ROOM})
    users[0].wait_for("my response")
    room = page.locator("#rooms td.room", has_text=HOSTILE_ROOM)
    expect(room).to_have_text(HOSTILE_ROOM, timeout=5000)
    assert page.locator("#rooms img").count() == 0
    assert page.evaluate("window.pwned") is None

    page.fill("#sid", users[0].sid)
    page.click("#inspect-sid button")
    expect(page.locator("#sid-result dd").first).to_have_text(users[0].sid)
    assert page.locator("#disconnect-sid").count() == 0  # read-only: no write control at all
    page.locator("#room-namespace").select_option("/test")
    page.fill("#room", HOSTILE_ROOM)
    page.click("#inspect-room button")
    expect(page.locator("#room-result li")).to_have_text([users[0].sid])
    if not SCREENSHOT.exists() or os.environ.get("UPDATE_SCREENSHOT"):  # as the demo page's screenshot
        page.screenshot(path=str(SCREENSHOT), full_page=True)

    redis_server.stop()
    expect(page.locator("#banner")).to_have_text(re.compile("backplane is down"), timeout=10_000)
    expect(page.locator("#nodes tbody tr")).to_have_count(1)
    expect(page.locator("#connections")).not_to_have_text("-")


def test_admin_write_disconnects_a_client(
    redis_server: Any, server_process: Any, new_page: Any, users: list[User]  # noqa: F811
) -> None:
    """With --admin-write, Disconnect closes that client with 4001, and the action is logged."""
    from playwright.sync_api import expect

    server = server_process(
        "--workers", "2", "--redis", redis_server.url, "--heartbeat-interval", "0.5",
        "--admin-token", TOKEN, "--admin-write",
    )
    base = f"http://127.0.0.1:{server.port}"
    page = new_page()
    log_in(page, base, TOKEN)
    expect(page.locator("#mode")).to_have_text("read-write", timeout=5000)
    for _ in range(3):
        users.append(User(server.url))
    target = users[1]
    page.fill("#sid", target.sid)
    page.click("#inspect-sid button")
    page.click("#disconnect-sid")
    expect(page.locator("#sid-result")).to_have_text(f"disconnected {target.sid}")
    assert target.close_code() == 4001
    users[0].send("my event", {"data": "alive"})
    assert users[0].wait_for("my response")["data"]["data"] == "alive"
    _, _, err = server.stop()
    assert re.search(rf"admin sid=\S+ address=127\.0\.0\.1 disconnected sid={re.escape(target.sid)}", err), err[-3000:]
