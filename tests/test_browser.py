"""Browser tests: client.html and client.js in headless Chromium against a real server.

server.py runs as a subprocess on a free port (and is killed and restarted on the same port
where a test needs an outage). Where a test needs the network to fail while the server lives
on, the page reaches the server through a TCP relay the test can cut. Chromium is the system
one (``apt-get install -y chromium``); a browser is never downloaded. Tests wait on
conditions (in the page, in the server's log), never on the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import ServerConnection, serve

try:
    from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
except ImportError:  # checked (skip, or fail on CI) by the `browser` fixture
    sync_playwright = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT = ROOT / "docs" / "screenshot.png"

LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
STARTUP_TIMEOUT = 15.0  # seconds for server.py to log that it listens
# The page reconnects with client.js's defaults: 1 s doubling to a 5 s cap, +-50 % jitter.
RECONNECT_TIMEOUT = 15_000  # ms
# Options for sockets created inside tests: reconnect fast, so outages cost little time.
FAST = "{reconnectDelay: 50, reconnectDelayMax: 200}"


class ServerProcess:
    """``python server.py`` as a subprocess, restartable on the port it got the first time."""

    def __init__(self, *args: str) -> None:
        self.args = args  # extra command-line options
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self.logged = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> None:
        """Start the server and wait until it logs the port it listens on."""
        self.proc = subprocess.Popen(
            [sys.executable, "server.py", "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        ports: queue.Queue[int | None] = queue.Queue()
        threading.Thread(target=self._read_stderr, args=(self.proc, ports), daemon=True).start()
        try:
            port = ports.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            port = None
        if port is None:
            self.stop()
            pytest.fail("server.py did not start:\n" + "".join(self.log))
        self.port = port

    def _read_stderr(self, proc: subprocess.Popen[str], ports: queue.Queue[int | None]) -> None:
        """Report the port once, and keep draining so a chatty server never blocks on a full pipe."""
        assert proc.stderr is not None
        for line in proc.stderr:
            with self.logged:
                self.log.append(line)
                self.logged.notify_all()
            match = LISTENING.search(line)
            if match:
                ports.put(int(match.group(1)))
        ports.put(None)  # exited (read only if it exited before listening)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Wait until the server logged a line containing ``text``."""
        with self.logged:
            if not self.logged.wait_for(lambda: any(text in line for line in self.log), timeout):
                pytest.fail(f"server.py did not log {text!r}:\n" + "".join(self.log))

    def kill(self) -> None:
        """SIGKILL: the way a crash or a pulled plug looks to clients."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a paused server can not handle SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Relay:
    """A TCP relay in front of a server, run by its own event loop in a thread.

    The page talks to ``url`` and the relay forwards every byte both ways, so the test can
    break the network while both ends live on: ``cut()`` resets every connection (TCP RST, no
    closing handshake), which is how a lost link looks. While ``hold()`` is in force, new
    connections wait, unanswered, until ``release()``; ``swallow()`` drops the bytes sent one
    way on the current connections instead of forwarding them, as a link that dies does.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.changed = threading.Condition()
        self.waiting = 0  # connections held back by hold()
        self.swallowed = {"up": 0, "down": 0}  # bytes dropped by swallow(), per direction
        self.swallowing: dict[str, set[asyncio.StreamWriter]] = {"up": set(), "down": set()}
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def __enter__(self) -> Relay:
        self.thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def cut(self, *, hold: bool = False) -> None:
        """Reset every connection through the relay; with ``hold``, hold the next ones back."""
        self._call(self._cut(hold))

    def release(self) -> None:
        """Let held and new connections through again."""
        self._call(self._release())

    def swallow(self, direction: str) -> None:
        """Drop what the current connections send ``up`` (to the server) or ``down`` (to the page)."""
        self._call(self._swallow(direction))

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        """Wait until ``condition()`` holds for the relay's counters."""
        with self.changed:
            if not self.changed.wait_for(condition, timeout):
                pytest.fail(f"relay: no {what} within {timeout} s")

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def _changed(self, update: Callable[[], None]) -> None:
        with self.changed:
            update()
            self.changed.notify_all()

    async def _start(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self.server.close()
        await self._cut(hold=False)
        self.open.set()  # held connections see they were cut, and end
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)

    async def _cut(self, hold: bool) -> None:
        if hold:
            self.open.clear()
        for writer in list(self.writers):
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.fileno() != -1:
                # Linger 0: closing sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self.writers.clear()

    async def _release(self) -> None:
        self.open.set()

    async def _swallow(self, direction: str) -> None:
        self.swallowing[direction] = set(self.writers)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            if not self.open.is_set():
                self._changed(lambda: setattr(self, "waiting", self.waiting + 1))
                try:
                    await self.open.wait()
                finally:
                    self._changed(lambda: setattr(self, "waiting", self.waiting - 1))
            if writer not in self.writers:  # cut while held
                return
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
            self.writers.add(upstream)
            await asyncio.gather(self._pipe(reader, upstream, "up"), self._pipe(up_reader, writer, "down"))
        except OSError:
            pass
        finally:
            for end in (writer, upstream):
                if end is not None:
                    self.writers.discard(end)
                    end.close()
            self.tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        try:
            while data := await reader.read(65536):
                if writer in self.swallowing[direction]:
                    self._changed(lambda: self.swallowed.update({direction: self.swallowed[direction] + len(data)}))
                    continue
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            writer.transport.abort()


class Broadcaster:
    """Another client of ``/test`` that broadcasts ``n 1``, ``n 2``, ... until stopped.

    It goes straight to the server (not through a relay), and sends each number once the
    previous one came back to it: the server has then sent it to every member of ``/test``.
    """

    PACE = 0.02  # seconds between numbers, well under the server's rate limit

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.exit_stack = contextlib.ExitStack()
        self.sent = 0
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Broadcaster:
        self.ws: ClientConnection = self.exit_stack.enter_context(ws_connect(self.ws_url))
        self.expect("connect", "/")
        self.send("connect", None)
        self.expect("connect", "/test")
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            self.exit_stack.close()

    def send(self, event: str, data: Any) -> None:
        self.ws.send(json.dumps({"event": event, "namespace": "/test", "data": data}))

    def expect(self, event: str, namespace: str, data: Any = None) -> None:
        """Read frames until one with this event, namespace (and data, if given) arrives."""
        while True:
            frame = json.loads(self.ws.recv(timeout=10))
            if frame["event"] == event and frame["namespace"] == namespace and data in (None, frame.get("data")):
                return

    def _run(self) -> None:
        try:
            while not self.stopping.wait(self.PACE):
                number = f"n {self.sent + 1}"
                self.send("my broadcast event", {"data": number})
                self.expect("my response", "/test", {"data": number})
                with self.changed:
                    self.sent += 1
                    self.changed.notify_all()
        except BaseException as exc:  # reported by wait_sent and stop
            self.failure = exc
            with self.changed:
                self.changed.notify_all()

    def wait_sent(self, count: int, timeout: float = 15.0) -> None:
        """Wait until ``count`` numbers have been broadcast."""
        with self.changed:
            self.changed.wait_for(lambda: self.sent >= count or self.failure is not None, timeout)
        if self.failure is not None:
            raise self.failure
        assert self.sent >= count, f"only {self.sent} numbers broadcast, waiting for {count}"

    def stop(self) -> int:
        """Stop broadcasting; return how many numbers went out."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        if self.failure is not None:
            raise self.failure
        return self.sent


HELLO = {"event": "connect", "namespace": "/", "data": {"sid": "fake", "protocol": 1}}


class FakeServer:
    """A WebSocket server that misbehaves on purpose, in a thread.

    ``frames`` are sent on open; then incoming frames are recorded (in ``received``) and
    never answered, so the client's heartbeats go unanswered. ``close_code`` closes right
    after sending ``frames`` instead.
    """

    def __init__(self, *frames: dict[str, Any], close_code: int | None = None) -> None:
        self.frames = [json.dumps(frame) for frame in frames]
        self.close_code = close_code
        self.connections = 0
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.close_codes: queue.Queue[int | None] = queue.Queue()
        self.server = serve(self._handle, "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}/"

    def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        for frame in self.frames:
            ws.send(frame)
        if self.close_code is not None:
            ws.close(self.close_code)
            return
        try:
            for message in ws:
                self.received.put(json.loads(message))
        except ConnectionClosed:
            pass
        self.close_codes.put(ws.close_code)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
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
def server() -> Iterator[ServerProcess]:
    process = ServerProcess()
    process.start()
    yield process
    process.stop()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Start ``python server.py`` with extra options; stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        process = ServerProcess(*args)
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[[], Page]]:
    """Open pages in one browser context; fail the test on any uncaught error in a page."""
    context = browser.new_context(viewport={"width": 1100, "height": 860})
    errors: list[str] = []

    def make() -> Page:
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        return page

    yield make
    context.close()
    assert errors == []


def messages(page: Page) -> Locator:
    """The `my response` texts in the page's log."""
    return page.locator("#log li.message .text")


def logged(page: Page, text: str) -> Locator:
    """The log lines that say exactly `text`."""
    return messages(page).filter(has_text=re.compile(f"^{re.escape(text)}$"))


def noted(page: Page, text: str) -> Locator:
    """The lifecycle lines of the page's log (disconnected, reconnected, ...) that say `text`."""
    return page.locator("#log li.event .text").filter(has_text=re.compile(f"^{re.escape(text)}$"))


def open_demo(new_page: Callable[[], Page], server: ServerProcess | Relay) -> Page:
    """Open client.html and wait until /test greeted it."""
    page = new_page()
    page.goto(server.url + "/")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    expect(messages(page)).to_have_text(["Connected"])
    return page


def submit(page: Page, form: str, **fields: str) -> None:
    """Fill a demo form's fields and press its button, as a person would."""
    # Only the front page gets animation frames, which Playwright's click waits for.
    page.bring_to_front()
    for field, value in fields.items():
        page.fill(f"#{field}", value)
    page.locator(f"#{form} button[type=submit]").click()


def open_blank(new_page: Callable[[], Page], server: ServerProcess | Relay) -> Page:
    """A page of the server's origin that opens no socket by itself, to import client.js."""
    page = new_page()
    page.goto(server.url + "/client.js")
    page.evaluate(
        """async () => {
            window.client = await import('/client.js');
            // The code of the next `warning` (a dropped emit), or 'none' within 2 s: an emit
            // that is silently kept would otherwise hang the test.
            window.nextWarning = (ns) => Promise.race([
                new Promise((resolve) => ns.once('warning', (e) => resolve(e.code))),
                new Promise((resolve) => setTimeout(() => resolve('none'), 2000)),
            ]);
        }"""
    )
    return page


# The demo page


def test_page_shows_sid_and_latency(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """The status line shows the sid and a measured `my ping` round trip."""
    page = open_demo(new_page, server)
    expect(page.locator("#sid")).to_have_text(re.compile(r"^[\w-]{8,}$"))
    expect(page.locator("#latency")).to_have_text(re.compile(r"^\d+(\.\d+)? ms$"))


def test_emit_reaches_only_the_sender(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """Emit is echoed to the page that sent it and to no other."""
    a = open_demo(new_page, server)
    b = open_demo(new_page, server)
    submit(a, "emit", emit_data="only for a")
    expect(logged(a, "only for a")).to_have_count(1)
    # The server handles a's frames in order and writes to b in order: once b has a's later
    # broadcast, the echo would have been there too.
    submit(a, "broadcast", broadcast_data="barrier")
    expect(logged(b, "barrier")).to_have_count(1)
    expect(messages(b)).to_have_text(["Connected", "barrier"])


def test_broadcast_reaches_every_page(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """Broadcast shows up in both logs (and the moment is kept as docs/screenshot.png)."""
    a = open_demo(new_page, server)
    b = open_demo(new_page, server)
    submit(a, "emit", emit_data="just for me")
    submit(a, "broadcast", broadcast_data="hello, everyone")
    expect(logged(a, "hello, everyone")).to_have_count(1)
    expect(logged(b, "hello, everyone")).to_have_count(1)
    expect(a.locator("#latency")).to_have_text(re.compile(r" ms$"))
    if not SCREENSHOT.exists() or os.environ.get("UPDATE_SCREENSHOT"):
        a.screenshot(path=SCREENSHOT, full_page=True)


def test_rooms(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """Join, send to a room (members only), leave, close a room."""
    a = open_demo(new_page, server)
    b = open_demo(new_page, server)

    submit(a, "join", join_room="lobby")
    expect(messages(a).last).to_have_text(re.compile(r"^In rooms: .*\blobby\b"))
    submit(a, "send_room", room_name="lobby", room_data="for the lobby 1")
    expect(logged(a, "for the lobby 1")).to_have_count(1)
    submit(a, "broadcast", broadcast_data="barrier 1")
    expect(logged(b, "barrier 1")).to_have_count(1)
    expect(logged(b, "for the lobby 1")).to_have_count(0)

    submit(b, "join", join_room="lobby")
    expect(messages(b).last).to_have_text(re.compile(r"^In rooms: .*\blobby\b"))
    submit(a, "send_room", room_name="lobby", room_data="for the lobby 2")
    expect(logged(a, "for the lobby 2")).to_have_count(1)
    expect(logged(b, "for the lobby 2")).to_have_count(1)

    submit(a, "leave", leave_room="lobby")
    expect(messages(a).last).to_have_text(re.compile(r"^In rooms: (?!.*\blobby\b)"))
    submit(a, "send_room", room_name="lobby", room_data="for the lobby 3")
    expect(logged(b, "for the lobby 3")).to_have_count(1)
    submit(a, "emit", emit_data="barrier 2")  # a's own frames are answered in order
    expect(logged(a, "barrier 2")).to_have_count(1)
    expect(logged(a, "for the lobby 3")).to_have_count(0)

    submit(a, "close", close_room="lobby")
    expect(logged(b, "Room lobby is closing.")).to_have_count(1)
    submit(a, "send_room", room_name="lobby", room_data="for the lobby 4")
    submit(a, "broadcast", broadcast_data="barrier 3")
    expect(logged(b, "barrier 3")).to_have_count(1)
    expect(logged(b, "for the lobby 4")).to_have_count(0)


def test_disconnect_button(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """Disconnect: the server says goodbye and leaves the page out of /test until it rejoins."""
    page = open_demo(new_page, server)
    page.locator("#disconnect_button").click()
    expect(logged(page, "Disconnected!")).to_have_count(1)
    expect(page.locator("#status")).to_have_attribute("data-state", "disconnected")
    expect(page.locator("#status")).to_contain_text("io server disconnect")
    submit(page, "emit", emit_data="sent while out")  # nothing would send it: the page is told
    expect(page.locator("#log li", has_text="/test is not connected")).to_have_count(1)
    page.locator("#connect_button").click()
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    submit(page, "emit", emit_data="sent after rejoining")
    expect(logged(page, "sent after rejoining")).to_have_count(1)
    expect(logged(page, "sent while out")).to_have_count(0)


def test_closing_the_tab_is_noticed_within_a_second(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """The demo as shipped (recovery on): a closed tab is a disconnect at once, with 'transport close'."""
    page = open_demo(new_page, server)
    sid = page.locator("#sid").text_content()
    assert sid and sid != "-"
    page.close()
    server.wait_for_log(f"disconnect sid={sid} address=127.0.0.1 reason=transport close", timeout=1.0)


def test_page_reconnects_after_server_restart(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """Kill the server, start it again on the same port: both pages reconnect and work."""
    a = open_demo(new_page, server)
    b = open_demo(new_page, server)
    old_sid = a.locator("#sid").text_content()
    server.kill()
    expect(a.locator("#status")).not_to_have_attribute("data-state", "connected")
    expect(b.locator("#status")).not_to_have_attribute("data-state", "connected")
    server.start()
    for page in (a, b):
        expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=RECONNECT_TIMEOUT)
    expect(a.locator("#sid")).not_to_have_text(old_sid or "")
    submit(a, "emit", emit_data="after the restart")
    expect(logged(a, "after the restart")).to_have_count(1)
    submit(b, "broadcast", broadcast_data="everyone is back")
    expect(logged(a, "everyone is back")).to_have_count(1)
    expect(logged(b, "everyone is back")).to_have_count(1)


# Connection state recovery (docs/protocol.md, "Extension: connection state recovery")

NUMBERED = re.compile(r"^n \d+$")


def test_page_recovers_its_session_after_a_cut(
    new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]
) -> None:
    """The link drops while another client broadcasts: the page resumes and misses nothing."""
    server = start_server("--recovery-window", "120")
    with Relay(server.port) as relay:
        page = open_demo(new_page, relay)
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        sid = page.locator("#sid").text_content()
        submit(page, "join", join_room="lobby")
        expect(messages(page).last).to_have_text(re.compile(r"^In rooms: .*\blobby\b"))
        with Broadcaster(server.ws_url) as numbers:
            expect(logged(page, "n 5")).to_have_count(1)
            relay.cut(hold=True)
            expect(noted(page, "disconnected: transport close")).to_have_count(1)
            relay.wait(lambda: relay.waiting > 0, "reconnection attempt")
            numbers.wait_sent(numbers.sent + 20)  # broadcast while the page is away, for sure
            relay.release()
            status = page.locator("#status")
            expect(status).to_have_attribute("data-recovered", "true", timeout=RECONNECT_TIMEOUT)
            expect(status).to_have_text("connected (recovered)")
            expect(noted(page, "Recovered: missed events replayed")).to_have_count(1)
            numbers.wait_sent(numbers.sent + 10)  # and some more after the resume
            last = numbers.stop()
            expect(logged(page, f"n {last}")).to_have_count(1)
            numbered = [text for text in messages(page).all_text_contents() if NUMBERED.match(text)]
            assert numbered == [f"n {i}" for i in range(1, last + 1)]
            # Same session: same sid, still in the room.
            assert page.locator("#sid").text_content() == sid
            numbers.send("my room event", {"room": "lobby", "data": "for the lobby"})
            expect(logged(page, "for the lobby")).to_have_count(1)
        assert page.evaluate("[demo.test.recovered, demo.test.connected]") == [True, True]
    assert len(sockets) == 1
    assert re.search(r"[?&]recover=1&offset=[\w%-]+$", sockets[0]), sockets[0]  # the token goes in a frame
    # The connect handler ran again on the resume, and knew it (request.recovered).
    texts = messages(page).all_text_contents()
    assert texts.count("Connected") == 1 and texts.count("Reconnected") == 1


def test_page_starts_a_new_session_after_the_window(
    new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]
) -> None:
    """Away longer than the recovery window: the page says its state was lost, and it was."""
    server = start_server("--recovery-window", "1")
    with Relay(server.port) as relay:
        page = open_demo(new_page, relay)
        sid = page.locator("#sid").text_content()
        submit(page, "join", join_room="lobby")
        expect(messages(page).last).to_have_text(re.compile(r"^In rooms: .*\blobby\b"))
        relay.cut(hold=True)
        # Told at the drop; then the window running out, the behaviour under test, ends the session.
        server.wait_for_log(f"disconnect sid={sid} ")
        server.wait_for_log(f"kept session of sid={sid} ended: recovery window expired")
        relay.release()
        status = page.locator("#status")
        expect(status).to_have_attribute("data-recovered", "false", timeout=RECONNECT_TIMEOUT)
        expect(status).to_have_text("connected (new session)")
        expect(noted(page, "New session: state was lost")).to_have_count(1)
        expect(page.locator("#sid")).not_to_have_text(sid or "")
        assert page.evaluate("demo.test.recovered") is False
        # The new session is in no room: a message to the lobby does not reach it.
        expect(logged(page, "Connected")).to_have_count(2)  # the connect handler ran again
        with Broadcaster(server.ws_url) as other:
            other.send("my room event", {"room": "lobby", "data": "for the lobby"})
            other.send("my broadcast event", {"data": "barrier"})  # handled, and sent, after it
            expect(logged(page, "barrier")).to_have_count(1)
        expect(logged(page, "for the lobby")).to_have_count(0)


def test_calls_survive_a_recovery(new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]) -> None:
    """A call whose frame, or whose answer, was lost in the drop is answered once after the resume."""
    server = start_server("--recovery-window", "120")
    with Relay(server.port) as relay:
        page = open_blank(new_page, relay)
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.evaluate(
            f"""async (url) => {{
                window.pongs = 0;
                window.events = [];
                // No heartbeats: the only frames on the wire are the test's.
                const options = {{...{FAST}, heartbeatInterval: null}};
                window.test = await client.connect(url, options).of('/test').ready;
                test.on('my pong', () => pongs++);
                // The timeout only bounds a failing test: the resume takes milliseconds.
                window.ping = () => test.emitWithAck('my ping', null, {{timeout: {RECONNECT_TIMEOUT}}});
                test.on('connect', (data) => events.push(`connect recovered=${{data.recovered}}`));
                test.on('reconnect', (n, info) => events.push(`reconnect recovered=${{info.recovered}}`));
                test.on('disconnect', (reason) => events.push(`disconnect ${{reason}}`));
            }}""",
            relay.ws_url + "?app=demo%20page",
        )
        # The frame is lost on its way to the server: the client sends it again after the resume.
        relay.swallow("up")
        page.evaluate("() => { window.lost = ping(); }")
        relay.wait(lambda: relay.swallowed["up"] > 0, "frame swallowed")
        relay.cut()
        assert page.evaluate("lost.then((pong) => typeof pong.pong, (e) => e.code)") == "number"
        # The server handled it, but its answer is lost on the way back: the answer is replayed.
        relay.swallow("down")
        page.evaluate("() => { window.unanswered = ping(); }")
        relay.wait(lambda: relay.swallowed["down"] > 0, "answer swallowed")
        relay.cut()
        assert page.evaluate("unanswered.then((pong) => typeof pong.pong, (e) => e.code)") == "number"
        page.wait_for_function("events.length === 6")
        cycle = ["disconnect transport close", "reconnect recovered=true", "connect recovered=true"]
        assert page.evaluate("events") == cycle * 2
        # Each ping was handled once (a second handling would have sent a second pong).
        assert page.evaluate("test.emitWithAck('my ping').then(() => pongs)") == 3
    assert len(sockets) == 3
    # The application's query is kept; the token and offset come after it.
    assert all(re.search(r"/\?app=demo%20page&recover=1&offset=[\w%-]+$", url) for url in sockets[1:]), sockets


def test_link_found_dead_is_resumed(new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]) -> None:
    """Heartbeats go unanswered: the client drops the link without ending the session, and resumes it."""
    server = start_server("--recovery-window", "120")
    with Relay(server.port) as relay:
        page = open_blank(new_page, relay)
        page.evaluate(
            f"""async (url) => {{
                window.got = [];
                window.events = [];
                const options = {{...{FAST}, heartbeatInterval: 100, heartbeatTimeout: 300}};
                window.test = await client.connect(url, options).of('/test').ready;
                test.on('my response', (data) => got.push(data.data));
                test.on('connect', (data) => events.push(`connect recovered=${{data.recovered}}`));
                test.on('reconnect', (n, info) => events.push(`reconnect recovered=${{info.recovered}}`));
                test.on('disconnect', (reason) => events.push(`disconnect ${{reason}}`));
            }}""",
            relay.ws_url,
        )
        # The page still reaches the server, but nothing comes back: not even its own echo.
        relay.swallow("down")
        page.evaluate("test.emit('my event', { data: 'while deaf' })")
        page.wait_for_function("events.length === 3", timeout=RECONNECT_TIMEOUT)
        # A closing handshake on the old link would have reached the server and ended the session.
        resumed = ["disconnect ping timeout", "reconnect recovered=true", "connect recovered=true"]
        assert page.evaluate("events") == resumed
        page.evaluate("test.emit('my event', { data: 'barrier' })")
        page.wait_for_function("got.includes('barrier')")
        assert page.evaluate("got") == ["Connected", "while deaf", "Reconnected", "barrier"]


# client.js, exercised inside a page


def test_emit_with_ack(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """emitWithAck resolves with the handler's value and rejects with the server's error code."""
    page = open_blank(new_page, server)
    result = page.evaluate(
        """async (url) => {
            const socket = client.connect(url);
            const test = await socket.of('/test').ready;
            const pong = await test.emitWithAck('my ping');
            const refused = await test.emitWithAck('no such event').then(() => null, (e) => e.code);
            socket.close();
            return { pong, refused };
        }""",
        server.ws_url,
    )
    assert result["pong"] is not None
    assert result["refused"] == "unknown_event"


def test_emit_with_ack_times_out(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """A server that does not answer makes emitWithAck reject; a lost session rejects the rest."""
    page = open_blank(new_page, server)
    page.evaluate("async (url) => { window.test = await client.connect(url).of('/test').ready; }", server.ws_url)
    server.pause()
    code = page.evaluate("test.emitWithAck('my ping', null, {timeout: 300}).then(() => 'resolved', (e) => e.code)")
    assert code == "ack_timeout"
    server.resume()  # the late ack for the timed-out ping is ignored; the link still works
    assert page.evaluate("test.emitWithAck('my ping').then(() => 'resolved', (e) => e.code)") == "resolved"

    server.pause()
    page.evaluate(
        "() => { window.outcome = test.emitWithAck('my ping', null, {timeout: null}).then(() => 'ok', (e) => e.code); }"
    )
    # The link dies, but the call waits: a resumed session would still answer it. The new
    # server knows nothing of the old session, so the client learns it never will.
    server.kill()
    server.start()
    assert page.evaluate("outcome") == "disconnected"
    assert page.evaluate("test.recovered") is False


def test_emits_are_buffered_while_offline(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """Emits made during an outage arrive in order after reconnect; beyond the bound, oldest first are dropped."""
    page = open_blank(new_page, server)
    page.evaluate(
        f"""async (url) => {{
            window.got = [];
            window.warnings = [];
            window.events = [];
            window.roomy = await client.connect(url, {FAST}).of('/test').ready;
            window.tight = await client.connect(url, {{...{FAST}, bufferSize: 3}}).of('/test').ready;
            roomy.on('my response', (d) => got.push(d.data));
            tight.on('my response', (d) => got.push(d.data));
            tight.on('warning', (e) => warnings.push(e.code));
            roomy.on('reconnect', () => events.push('reconnect'));
            roomy.on('connect', () => events.push('connect'));
        }}""",
        server.ws_url,
    )
    server.kill()
    page.wait_for_function("!roomy.connected && !tight.connected")
    page.evaluate(
        """() => {
            for (let i = 0; i < 5; i++) roomy.emit('my event', { data: `roomy ${i}` });
            for (let i = 0; i < 5; i++) tight.emit('my event', { data: `tight ${i}` });
        }"""
    )
    assert page.evaluate("warnings") == ["buffer_overflow", "buffer_overflow"]
    server.start()
    page.wait_for_function("got.filter((d) => d !== 'Connected').length === 8", timeout=RECONNECT_TIMEOUT)
    got = page.evaluate("got.filter((d) => d !== 'Connected')")
    assert [d for d in got if d.startswith("roomy")] == [f"roomy {i}" for i in range(5)]
    assert [d for d in got if d.startswith("tight")] == ["tight 2", "tight 3", "tight 4"]
    assert page.evaluate("events") == ["reconnect", "connect"]


def test_namespaces_share_one_websocket(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """`/` and `/test` are connected at once over a single WebSocket, with one sid."""
    page = open_blank(new_page, server)
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    result = page.evaluate(
        """async (url) => {
            const root = client.connect(url);
            const test = root.of('/test');
            await Promise.all([root.ready, test.ready]);
            const pong = await test.emitWithAck('my ping');
            // `/test` has a `my ping` handler; `/` does not: the frames are routed apart.
            const rootPing = await root.emitWithAck('my ping').then(() => 'resolved', (e) => e.code);
            return { rootSid: root.sid, testSid: test.sid, both: root.connected && test.connected, pong, rootPing };
        }""",
        server.ws_url,
    )
    assert result["both"]
    assert result["rootSid"] and result["rootSid"] == result["testSid"]
    assert result["pong"] is not None
    assert result["rootPing"] == "unknown_event"
    assert len(sockets) == 1


def test_heartbeats_keep_a_quiet_link_alive(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """The server answers each heartbeat, so a link with no traffic outlives the heartbeat timeout."""
    page = open_blank(new_page, server)
    with page.expect_websocket() as opened:
        page.evaluate(
            """(url) => {
                window.events = [];
                window.root = client.connect(url, {heartbeatInterval: 50, heartbeatTimeout: 200});
                root.on('disconnect', (reason) => events.push(reason));
            }""",
            server.ws_url,
        )
    ws = opened.value
    for _ in range(10):  # 10 answers at 50 ms: well past two heartbeat timeouts
        ws.wait_for_event("framereceived", lambda payload: json.loads(payload)["event"] == "heartbeat")
    assert page.evaluate("[root.connected, events]") == [True, []]


def test_unknown_namespace_is_a_connect_error(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """Joining an unknown namespace rejects `ready` and emits connect_error; others are unaffected."""
    page = open_blank(new_page, server)
    result = page.evaluate(
        """async (url) => {
            const root = client.connect(url);
            const nope = root.of('/nope');
            const heard = new Promise((resolve) => nope.on('connect_error', (e) => resolve(e.message)));
            const refusal = await nope.ready.then(() => null, (e) => ({ code: e.code, message: e.message }));
            const test = await root.of('/test').ready;
            return { refusal, heard: await heard, nopeConnected: nope.connected, test: test.connected };
        }""",
        server.ws_url,
    )
    assert result["refusal"]["code"] == "connect_refused"
    assert "unknown namespace" in result["refusal"]["message"]
    assert result["heard"] == result["refusal"]["message"]
    assert result["nopeConnected"] is False
    assert result["test"] is True


# client.js against scripted servers: what the demo app never does


def test_client_answers_server_acks(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """A server frame with an id gets the listener's return value back, sync or async."""
    page = open_blank(new_page, server)
    asks: list[dict[str, Any]] = [
        {"event": "nobody listens", "namespace": "/", "id": 1},  # no listener: no answer
        {"event": "are you there", "namespace": "/", "data": None, "id": 2},
        {"event": "add", "namespace": "/", "data": [2, 3], "id": 3},
    ]
    with FakeServer(HELLO, *asks) as fake:
        page.evaluate(
            """(url) => {
                const root = client.connect(url);
                root.on('are you there', async () => { await null; return 'yes'; });
                root.on('add', ([a, b]) => a + b);
            }""",
            fake.ws_url,
        )
        # An answer to id 1 would have been written first, while its frame was handled.
        answers = sorted((fake.received.get(timeout=10) for _ in range(2)), key=lambda frame: frame["id"])
    assert answers == [
        {"event": "ack", "namespace": "/", "id": 2, "data": "yes"},
        {"event": "ack", "namespace": "/", "id": 3, "data": 5},
    ]


# client.js against servers that misbehave on purpose


def test_unsupported_protocol_closes_with_4010(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """A server speaking protocol 2 gets close code 4010 and a clear connect_error; no retry."""
    page = open_blank(new_page, server)
    with FakeServer({"event": "connect", "namespace": "/", "data": {"sid": "x", "protocol": 2}}) as fake:
        result = page.evaluate(
            f"""async (url) => {{
                const root = client.connect(url, {FAST});
                const error = await root.ready.then(() => null, (e) => ({{ code: e.code, message: e.message }}));
                const warning = nextWarning(root);
                root.emit('anything');  // the socket gave up: nothing is kept for later
                return {{ error, warning: await warning }};
            }}""",
            fake.ws_url,
        )
        assert fake.close_codes.get(timeout=10) == 4010
    assert result["error"]["code"] == "unsupported_protocol"
    assert "protocol 2" in result["error"]["message"]
    assert result["warning"] == "closed"
    assert fake.connections == 1


def test_silent_link_is_dead(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """Unanswered heartbeats make the client drop the link and reconnect."""
    page = open_blank(new_page, server)
    with FakeServer(HELLO) as fake:
        page.evaluate(
            f"""(url) => {{
                window.events = [];
                const root = client.connect(url, {{...{FAST}, heartbeatInterval: 100, heartbeatTimeout: 300}});
                root.on('connect', () => events.push('connect'));
                root.on('disconnect', (reason) => events.push(`disconnect: ${{reason}}`));
                root.on('reconnect', () => {{ events.push('reconnect'); root.close(); }});
            }}""",
            fake.ws_url,
        )
        page.wait_for_function("events.includes('reconnect')")
        assert page.evaluate("events")[:3] == ["connect", "disconnect: ping timeout", "reconnect"]
        assert fake.received.get(timeout=10) == {"event": "heartbeat"}
        assert fake.connections == 2


def test_kicked_client_does_not_reconnect(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """Close code 4001 (the application kicked the client) means: give up."""
    page = open_blank(new_page, server)
    with FakeServer(HELLO, close_code=4001) as fake:
        result = page.evaluate(
            f"""async (url) => {{
                const root = client.connect(url, {FAST});
                const reason = await new Promise((resolve) => root.on('disconnect', resolve));
                const warning = nextWarning(root);
                root.emit('anything');
                return {{ reason, warning: await warning }};
            }}""",
            fake.ws_url,
        )
    assert result == {"reason": "io server disconnect", "warning": "closed"}
    assert fake.connections == 1
