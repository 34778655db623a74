"""The examples in examples/, each run for real as its own program.

Every example runs as ``python -m plainsocket run app:socketio --app-dir examples/NAME --port 0``
(the seed app also as ``python examples/flask_socketio_seed/app.py``), is reached over real
sockets with tests/wire.py (exact frames), and is stopped by its PID at the end. The seed app's
and the chat's own pages also run in headless Chromium, the system one (a browser is never
downloaded). Tests wait for frames, log lines or page conditions, never on the clock (what must
not arrive is shown by what arrives after it, in order); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from wire import Wire

from plainsocket.client import Client, ConnectRefusedError

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # checked (skip, or fail on CI) by the `browser` fixture
    sync_playwright = None  # type: ignore[assignment]

EXAMPLES = ROOT / "examples"
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
STARTUP_TIMEOUT = 15.0  # seconds for an example to log that it listens
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# The seed app's background task emits every BACKGROUND_INTERVAL seconds (10 upstream). Tests
# that assert exact frames push it out of their way; the one about the task shortens it.
QUIET = {"BACKGROUND_INTERVAL": "3600"}


class Example:
    """One example program in a subprocess; its stdout and stderr are collected by threads."""

    def __init__(self, command: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
        environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.changed = threading.Condition()
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self.readers:
            reader.start()
        try:
            found = LISTENING.search(self.wait_for_log("plainsocket: listening on", timeout=STARTUP_TIMEOUT))
            assert found is not None
        except BaseException:
            self.kill()  # never listed by the fixture: it must not outlive the test
            raise
        self.port = int(found.group(1))
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{self.port}"

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self.changed:
                lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()  # exited: wake the waiters up

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """Return the first stderr line containing ``text``; fail if none comes within ``timeout``."""

        def found() -> str | None:
            return next((line for line in self.err if text in line), None)

        with self.changed:
            self.changed.wait_for(lambda: found() is not None or self.proc.poll() is not None, timeout)
            line = found()
        if line is None:
            pytest.fail(f"no log line with {text!r} (exit code {self.proc.poll()}):\n{''.join(self.err)}")
        return line

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM by PID; return the exit code, stdout and stderr."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        for reader in self.readers:
            reader.join(timeout=5)
        return code, "".join(self.out), "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def start() -> Iterator[Callable[..., Example]]:
    """Start examples; each is killed by its PID after the test."""
    started: list[Example] = []

    def run(name: str, *, script: bool = False, **options: Any) -> Example:
        """``plainsocket run`` on a free port, or with ``script``, ``python examples/NAME/app.py`` (set PORT)."""
        folder = EXAMPLES / name
        if script:
            command = [sys.executable, str(folder / "app.py")]
        else:
            command = [
                sys.executable,
                "-m",
                "plainsocket",
                "run",
                "app:socketio",
                "--app-dir",
                str(folder),
                "--port",
                "0",
            ]
        example = Example(command, **options)
        started.append(example)
        return example

    yield run
    for example in started:
        example.kill()


def frame(event: str, namespace: str, data: Any = None, id: int | None = None) -> dict[str, Any]:
    """A frame as the server sends it (recovery is off in the examples: no offsets)."""
    sent: dict[str, Any] = {"event": event, "namespace": namespace, "data": data}
    if id is not None:
        sent["id"] = id
    return sent


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def stopped(example: Example) -> str:
    """Stop the example; assert it exited with 0 and no traceback; return its stdout."""
    code, out, err = example.stop()
    assert code == 0, err
    assert "Traceback" not in err, err
    return out


async def stopped_cleanly(example: Example) -> str:
    """:func:`stopped`, in a thread: the test's own clients answer the server's closing handshakes meanwhile."""
    return await asyncio.to_thread(stopped, example)


# -- examples/flask_socketio_seed: Flask-SocketIO's own example app ------------------------------

SEED = "/test"


def seed(data: Any, count: int) -> dict[str, Any]:
    return frame("my_response", SEED, {"data": data, "count": count})


async def open_seed(url: str) -> Wire:
    """A client in /test, past the app's greeting."""
    client = await Wire.open(url)
    await client.join(SEED)
    assert await client.recv() == seed("Connected", 0)
    return client


async def test_seed_echo_broadcast_and_ping(start: Callable[..., Example]) -> None:
    """my_event echoes to the sender only, my_broadcast_event reaches all, counts are per client, my_ping pongs."""
    app = start("flask_socketio_seed", env=QUIET)
    a, b = await open_seed(app.url), await open_seed(app.url)
    await a.send("my_event", {"data": "hello"}, SEED)
    assert await a.recv() == seed("hello", 1)
    await a.send("my_broadcast_event", {"data": "everyone"}, SEED)
    assert await a.recv() == seed("everyone", 2)
    assert await b.recv() == seed("everyone", 2)  # a's count; and no echo of "hello" before it
    await b.send("my_event", {"data": "mine"}, SEED)
    assert await b.recv() == seed("mine", 1)
    await a.send("my_ping", None, SEED)
    assert await a.recv() == frame("my_pong", SEED)
    await a.send("my_broadcast_event", {"data": "barrier"}, SEED)
    assert await a.recv() == seed("barrier", 3)
    assert await b.recv() == seed("barrier", 3)  # in order after a's ping: the pong went to a only
    await stopped_cleanly(app)


async def test_seed_rooms(start: Callable[..., Example]) -> None:
    """join, my_room_event (members only), leave and close_room answer as upstream's handlers do."""
    app = start("flask_socketio_seed", env=QUIET)
    a, b = await open_seed(app.url), await open_seed(app.url)
    await a.send("join", {"room": "r1"}, SEED)
    assert await a.recv() == seed(f"In rooms: {a.sid}, r1", 1)
    await b.send("my_room_event", {"room": "r1", "data": "to r1"}, SEED)
    assert await a.recv() == seed("to r1", 1)  # b's count
    await a.send("leave", {"room": "r1"}, SEED)
    assert await a.recv() == seed(f"In rooms: {a.sid}", 2)

    await a.send("join", {"room": "r2"}, SEED)
    assert await a.recv() == seed(f"In rooms: {a.sid}, r2", 3)
    await b.send("close_room", {"room": "r2"}, SEED)
    assert await a.recv() == seed("Room r2 is closing.", 2)
    await b.send("my_room_event", {"room": "r2", "data": "nobody is here"}, SEED)
    await b.send("my_event", {"data": "barrier"}, SEED)
    assert await b.recv() == seed("barrier", 4)  # b sent to r2 before: it reached no one
    await a.send("my_event", {"data": "still here"}, SEED)
    assert await a.recv() == seed("still here", 4)
    await stopped_cleanly(app)


async def test_seed_disconnect_request_waits_for_the_ack(start: Callable[..., Example]) -> None:
    """disconnect_request asks for an ack (upstream's callback=) and disconnects only once it comes."""
    app = start("flask_socketio_seed", env=QUIET)
    a = await open_seed(app.url)
    await a.send("disconnect_request", None, SEED)
    asked = await a.recv()
    assert asked == {**seed("Disconnected!", 1), "id": asked["id"]}
    assert isinstance(asked["id"], int)
    await a.send("my_event", {"data": "still connected"}, SEED)
    assert await a.recv() == seed("still connected", 2)
    await a.send("ack", None, SEED, asked["id"])
    assert await a.recv() == frame("disconnect", SEED)
    out = await stopped_cleanly(app)
    assert f"Client disconnected {a.sid}\n" in out


async def test_seed_background_task(start: Callable[..., Example]) -> None:
    """The first connect starts one background task; it emits a counted my_response to every /test client."""
    app = start("flask_socketio_seed", env={"BACKGROUND_INTERVAL": "0.3"})
    a = await open_seed(app.url)
    assert await a.recv(timeout=5) == seed("Server generated event", 1)
    b = await open_seed(app.url)
    ticks = [await a.recv(timeout=5) for _ in range(3)]
    first = ticks[0]["data"]["count"]
    # One task: the count goes on, no second one starts from 1.
    assert ticks == [seed("Server generated event", count) for count in range(first, first + 3)] and first >= 2
    assert await b.recv(timeout=5) in ticks[:2]  # b gets the same events from its join on
    await stopped_cleanly(app)


async def test_seed_serves_its_own_page_from_any_directory(start: Callable[..., Example], tmp_path: Path) -> None:
    """python examples/flask_socketio_seed/app.py, started elsewhere, serves its index.html and client.js."""
    app = start("flask_socketio_seed", script=True, cwd=tmp_path, env={**QUIET, "PORT": "0"})
    status, page = await asyncio.to_thread(get, app.http + "/")
    assert status == 200
    assert page == (EXAMPLES / "flask_socketio_seed" / "index.html").read_text()
    assert 'import { connect } from "/client.js";' in page and "<script src=" not in page  # no CDN
    status, library = await asyncio.to_thread(get, app.http + "/client.js")
    assert status == 200 and "export function connect" in library
    a = await open_seed(app.url)
    await a.send("my_event", {"data": "from the script"}, SEED)
    assert await a.recv() == seed("from the script", 1)
    await stopped_cleanly(app)


# -- examples/chat: nicknames and rooms -----------------------------------------------------------

CHAT = "/chat"


def announcement(room: str | None, text: str) -> dict[str, Any]:
    return frame("announcement", CHAT, {"room": room, "text": text})


def said(room: str, nick: str, text: str) -> dict[str, Any]:
    return frame("said", CHAT, {"room": room, "nick": nick, "text": text})


async def open_chat(url: str, nick: str | None) -> Wire:
    """A client in /chat (with ``nick`` in its connect auth), past the welcome."""
    client = await Wire.open(url)
    await client.join(CHAT, None if nick is None else {"nick": nick})
    welcome = await client.recv()
    assert welcome == announcement(None, f"Welcome, {nick or 'guest-' + client.sid[:6]}")
    return client


async def test_chat_two_nicknames_in_a_room(start: Callable[..., Example]) -> None:
    """Two nicknamed clients in one room see each other's messages with nicknames; who lists both; a leave is told."""
    app = start("chat")
    ann, bob = await open_chat(app.url, "ann"), await open_chat(app.url, "bob")
    await ann.send("join", {"room": "lobby"}, CHAT, id=1)
    assert await ann.recv() == announcement("lobby", "ann joined lobby")
    assert await ann.recv() == frame("ack", CHAT, {"ok": True, "room": "lobby"}, 1)
    await bob.send("join", {"room": "lobby"}, CHAT, id=1)
    assert await ann.recv() == announcement("lobby", "bob joined lobby")
    assert await bob.recv() == announcement("lobby", "bob joined lobby")
    assert await bob.recv() == frame("ack", CHAT, {"ok": True, "room": "lobby"}, 1)

    await ann.send("say", {"text": "hi bob"}, CHAT, id=2)
    assert await bob.recv() == said("lobby", "ann", "hi bob")
    assert await ann.recv() == said("lobby", "ann", "hi bob")
    assert await ann.recv() == frame("ack", CHAT, {"ok": True}, 2)
    await bob.send("say", {"text": "hello ann"}, CHAT)
    assert await ann.recv() == said("lobby", "bob", "hello ann")
    assert await bob.recv() == said("lobby", "bob", "hello ann")

    await bob.send("who", None, CHAT, id=3)
    assert await bob.recv() == frame("ack", CHAT, {"ok": True, "room": "lobby", "nicks": ["ann", "bob"]}, 3)

    await bob.send("leave", None, CHAT, id=4)
    assert await ann.recv() == announcement("lobby", "bob left lobby")
    assert await bob.recv() == frame("ack", CHAT, {"ok": True, "room": "lobby"}, 4)  # out before it was said
    await ann.send("who", {"room": "lobby"}, CHAT, id=5)
    assert await ann.recv() == frame("ack", CHAT, {"ok": True, "room": "lobby", "nicks": ["ann"]}, 5)
    await bob.send("join", {"room": "kitchen"}, CHAT, id=5)
    assert await bob.recv() == announcement("kitchen", "bob joined kitchen")
    assert await bob.recv() == frame("ack", CHAT, {"ok": True, "room": "kitchen"}, 5)
    await ann.send("say", {"text": "alone"}, CHAT)
    assert await ann.recv() == said("lobby", "ann", "alone")
    await ann.send("join", {"room": "kitchen"}, CHAT)  # leaving lobby is told to nobody: it is empty
    assert await ann.recv() == announcement("kitchen", "ann joined kitchen")
    assert await bob.recv() == announcement("kitchen", "ann joined kitchen")  # and "alone" never came
    await stopped_cleanly(app)


async def test_chat_nick_event_guests_and_refusals(start: Callable[..., Example]) -> None:
    """Without auth a client is a guest until its nick event (a rename is announced); bad input is refused."""
    app = start("chat")
    refused = await Wire.open(app.url)
    await refused.send("connect", {"nick": "   "}, CHAT)
    assert await refused.recv() == frame("connect_error", CHAT, {"message": "nick must be a non-empty string"})

    guest, ann = await open_chat(app.url, None), await open_chat(app.url, "ann")
    await guest.send("say", {"text": "anyone?"}, CHAT, id=1)
    assert await guest.recv() == frame("ack", CHAT, {"ok": False, "error": "join a room first"}, 1)
    for client in (ann, guest):
        await client.send("join", {"room": "lobby"}, CHAT, id=2)
        while (await client.recv())["event"] != "ack":
            pass
    assert await ann.recv() == announcement("lobby", f"guest-{guest.sid[:6]} joined lobby")

    await guest.send("nick", {"nick": "carol"}, CHAT, id=3)
    rename = announcement("lobby", f"guest-{guest.sid[:6]} is now known as carol")
    assert await ann.recv() == rename
    assert await guest.recv() == rename
    assert await guest.recv() == frame("ack", CHAT, {"ok": True, "nick": "carol"}, 3)
    await guest.send("nick", {"nick": "x" * 33}, CHAT, id=4)
    assert await guest.recv() == frame("ack", CHAT, {"ok": False, "error": "nick is longer than 32 characters"}, 4)
    await guest.send("join", {"room": ann.sid}, CHAT, id=5)  # someone's own room: their private messages
    assert await guest.recv() == frame("ack", CHAT, {"ok": False, "error": "that name is taken"}, 5)
    await guest.send("who", None, CHAT, id=6)
    assert await guest.recv() == frame("ack", CHAT, {"ok": True, "room": "lobby", "nicks": ["ann", "carol"]}, 6)
    await stopped_cleanly(app)


async def test_chat_disconnect_is_announced(start: Callable[..., Example]) -> None:
    """A client whose socket closes, or who leaves /chat, is announced to its room and leaves who."""
    app = start("chat")
    ann, bob, eve = [await open_chat(app.url, nick) for nick in ("ann", "bob", "eve")]
    for client in (ann, bob, eve):
        await client.send("join", {"room": "lobby"}, CHAT, id=1)
        while (await client.recv())["event"] != "ack":
            pass
    assert await ann.recv() == announcement("lobby", "bob joined lobby")
    assert await ann.recv() == announcement("lobby", "eve joined lobby")
    assert await bob.recv() == announcement("lobby", "eve joined lobby")

    await bob.close()
    assert await ann.recv() == announcement("lobby", "bob disconnected")
    assert await eve.recv() == announcement("lobby", "bob disconnected")
    await eve.send("disconnect", None, CHAT)  # leaves the namespace, keeps the socket
    assert await ann.recv() == announcement("lobby", "eve disconnected")
    await ann.send("who", None, CHAT, id=2)
    assert await ann.recv() == frame("ack", CHAT, {"ok": True, "room": "lobby", "nicks": ["ann"]}, 2)
    await eve.join(CHAT, {"nick": "eve"})  # nothing came to eve in between: not even her own departure
    assert await eve.recv() == announcement(None, "Welcome, eve")
    await stopped_cleanly(app)


# -- examples/token_auth: a token checked on connect ---------------------------------------------

REFUSED = frame("connect_error", "/", {"message": "invalid token"})


async def test_token_auth_good_token(start: Callable[..., Example]) -> None:
    """A good token connects after the greeting's refusal, and whoami answers its user."""
    app = start("token_auth")
    client = await Wire.open(app.url)
    assert client.hello == REFUSED  # the server joins `/` on open, before any token came
    await client.send("connect", {"token": "alice-7f3c9d2e1b"})
    welcome = await client.recv()
    assert welcome == frame("connect", "/", {"sid": welcome["data"]["sid"], "protocol": 1})
    await client.send("whoami", None, "/", id=1)
    assert await client.recv() == frame("ack", "/", {"user": "alice", "sid": welcome["data"]["sid"]}, 1)
    await client.close()
    app.wait_for_log(f"alice disconnected (sid={welcome['data']['sid']}): client disconnect")

    async with Client(app.url, auth={"token": "bob-4a8e6c0f5d"}, reconnect=False) as bob:
        assert await bob.root.call("whoami", timeout=5) == {"user": "bob", "sid": bob.sid}
    err = "".join(app.err)
    assert "alice connected" in err and "bob connected" in err
    await stopped_cleanly(app)


async def test_token_auth_bad_or_missing_token(start: Callable[..., Example]) -> None:
    """A wrong, partial, non-string, non-ASCII or missing token gets connect_error, and events stay refused."""
    app = start("token_auth")
    client = await Wire.open(app.url)
    assert client.hello == REFUSED
    for auth in ({"token": "wrong"}, {"token": "alice-7f3c"}, {"token": 42}, {"token": "ü"}, {}, None, "alice"):
        await client.send("connect", auth)
        assert await client.recv() == REFUSED, auth
    await client.send("whoami", None, "/", id=1)
    message = "not connected to namespace '/'"
    assert await client.recv() == frame("error", "/", {"code": "not_connected", "message": message}, 1)

    with pytest.raises(ConnectRefusedError, match="invalid token"):
        async with Client(app.url, auth={"token": "wrong"}, reconnect=False):
            pass
    await stopped_cleanly(app)


# -- The pages in headless Chromium ----------------------------------------------------------------


@pytest.fixture(scope="class")
def browser() -> Iterator[Browser]:
    missing = []
    if sync_playwright is None:
        missing.append("the playwright Python package")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(CHROMIUM)
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing {' and '.join(missing)}: apt-get install -y chromium")
        pytest.skip("install chromium: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[[], Page]]:
    """Open pages in one browser context; fail the test on any uncaught error in a page."""
    context = browser.new_context()
    errors: list[str] = []

    def make() -> Page:
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        return page

    yield make
    context.close()
    assert errors == []


def received(page: Page, *lines: str) -> None:
    """Wait until the page's log holds exactly ``lines``, as upstream's page writes them."""
    expect(page.locator("#log")).to_have_text("".join(lines))


def submit(page: Page, form: str, **fields: str) -> None:
    """Fill a form's fields and press its submit button, as a person would."""
    page.bring_to_front()  # only the front page gets the animation frames a click waits for
    for field, value in fields.items():
        page.fill(f"#{field}", value)
    page.locator(f"form#{form} input[type=submit]").click()


class TestPages:
    """The examples' pages. Playwright's sync API keeps an event loop of its own while it runs, and no
    async test can run meanwhile: class scope ends the browser as soon as the run leaves these tests."""

    def test_seed_page_in_a_browser(self, new_page: Callable[[], Page], start: Callable[..., Example]) -> None:
        """The seed's own index.html connects, echoes, broadcasts to a second page, shows the latency, disconnects."""
        app = start("flask_socketio_seed", env=QUIET)
        a = new_page()
        a.goto(app.http + "/")
        expect(a).to_have_title("Flask-SocketIO Test")  # the example's page, not the demo's client.html
        expect(a.locator("#status")).to_have_count(0)
        received(a, "Received #0: Connected", "Received #1: I'm connected!")

        submit(a, "emit", emit_data="echo me")
        received(a, "Received #0: Connected", "Received #1: I'm connected!", "Received #2: echo me")

        b = new_page()
        b.goto(app.http + "/")
        received(b, "Received #0: Connected", "Received #1: I'm connected!")
        submit(a, "broadcast", broadcast_data="hello, everyone")
        expect(a.locator("#log")).to_contain_text("Received #3: hello, everyone")
        received(b, "Received #0: Connected", "Received #1: I'm connected!", "Received #3: hello, everyone")

        expect(a.locator("#transport")).to_have_text("websocket")
        expect(a.locator("#ping-pong")).to_have_text(re.compile(r"^\d+(\.\d+)?$"))

        submit(b, "disconnect")
        expect(b.locator("#log")).to_contain_text("Received #2: Disconnected!")
        b.wait_for_function("() => window.socket.connected === false", timeout=10_000)  # after its ack
        out = stopped(app)
        assert out.count("Client disconnected") == 2  # b's disconnect_request, then a at shutdown

    def test_chat_page_in_a_browser(self, new_page: Callable[[], Page], start: Callable[..., Example]) -> None:
        """The chat's page: nicknames from ?nick=, a room joined, a message seen with its nickname, who, leave."""
        app = start("chat")
        ann, bob = new_page(), new_page()
        for page, nick in ((ann, "ann"), (bob, "bob")):
            page.goto(f"{app.http}/?nick={nick}")
            expect(page.locator("#nick")).to_have_text(nick)
            expect(page.locator("#status")).to_have_text("connected")
            page.bring_to_front()
            page.locator("#join_form button[type=submit]").click()  # the room field says "lobby"
            expect(page.locator("#room")).to_have_text("lobby")
        expect(ann.locator("#log li.announcement")).to_have_text(
            ["Welcome, ann", "ann joined lobby", "bob joined lobby"]
        )

        ann.bring_to_front()
        ann.fill("#say_input", "hi bob")
        ann.locator("#say_form button[type=submit]").click()
        expect(bob.locator("#log li.said .nick")).to_have_text(["ann"])
        expect(bob.locator("#log li.said")).to_have_text(["annhi bob"])
        expect(ann.locator("#say_input")).to_have_value("")

        bob.bring_to_front()
        bob.locator("#who_button").click()
        expect(bob.locator("#log li.info")).to_have_text(["In lobby: ann, bob"])
        bob.locator("#leave_button").click()
        expect(bob.locator("#room")).to_have_text("none")
        expect(ann.locator("#log li.announcement").last).to_have_text("bob left lobby")
        stopped(app)
