"""Browser tests for the findings of the hand review of client.html and client.js.

Each test replays one reproduction of docs' review (turn 2) in headless Chromium, with the
helpers and fixtures of test_browser.py; they wait on conditions, never on the clock.
"""

from __future__ import annotations

import http.server
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from test_browser import (  # noqa: F401  (fixtures: pytest finds them by name)
    FAST,
    RECONNECT_TIMEOUT,
    ROOT,
    Relay,
    ServerProcess,
    browser,
    logged,
    messages,
    new_page,
    noted,
    open_blank,
    open_demo,
    server,
    start_server,
    submit,
)

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the `browser` fixture skips
    pass

CLIENT_JS = ROOT / "plainsocket" / "static" / "client.js"
CLIENT_HTML = ROOT / "client.html"
DOWN = "could not connect (server down, or this origin is refused)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PageShell:
    """A plain HTTP server for client.html and client.js only: the page loads, its WebSocket fails.

    Stands in for "the server is down when the page loads" (a cached page, a restart).
    """

    FILES = {"/": (CLIENT_HTML, "text/html"), "/client.js": (CLIENT_JS, "text/javascript")}

    def __init__(self) -> None:
        files = self.FILES

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = files.get(self.path)
                if found is None or self.headers.get("Upgrade"):
                    self.send_error(404)
                    return
                body = Path(found[0]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", found[1])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PageShell:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(timeout=10)
        self.httpd.server_close()


@pytest.fixture
def phone_page(new_page: Callable[[], Page]) -> Callable[[], Page]:
    def make() -> Page:
        page = new_page()
        page.set_viewport_size({"width": 360, "height": 740})
        return page

    return make


# 1. The demo page after Disconnect plus a link drop


def test_left_namespace_stays_disconnected_when_the_link_drops(
    new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]
) -> None:
    """After Disconnect, a dropped and restored link shows the link state; /test stays out, Connect again works."""
    server = start_server("--recovery-window", "120")
    with Relay(server.port) as relay:
        page = open_demo(new_page, relay)
        page.locator("#disconnect_button").click()
        status = page.locator("#status")
        expect(status).to_have_text("disconnected (io server disconnect)")
        page.evaluate("() => { window.linkUps = 0; demo.socket.on('connect', () => linkUps++); }")
        relay.cut()
        page.wait_for_function("linkUps === 1", timeout=RECONNECT_TIMEOUT)
        expect(page.locator("#link")).to_have_text("connected")
        expect(status).to_have_text("disconnected (io server disconnect)")
        expect(status).to_have_attribute("data-state", "disconnected")
        connect_again = page.locator("#connect_button")
        expect(connect_again).to_be_visible()
        connect_again.click()
        expect(status).to_have_text("connected")
        submit(page, "emit", emit_data="back in /test")
        expect(logged(page, "back in /test")).to_have_count(1)


# 2. connect_error on every failed attempt; `ready` settles


def test_failed_attempts_are_connect_errors_and_ready_waits_for_the_server(
    new_page: Callable[[], Page], server: ServerProcess
) -> None:
    """Server down: each attempt emits connect_error with a reason; `ready` resolves once the server is up."""
    page = open_blank(new_page, server)
    server.kill()
    page.evaluate(
        f"""(url) => {{
            window.errors = [];
            window.root = client.connect(url, {FAST});
            root.on('connect_error', (e) => errors.push({{ code: e.code, message: e.message }}));
            window.outcome = root.ready.then(() => 'connected', (e) => e.code);
        }}""",
        server.ws_url,
    )
    page.wait_for_function("errors.length >= 2")
    server.start()
    assert page.evaluate("outcome") == "connected"
    errors = page.evaluate("errors")
    assert {(e["code"], e["message"]) for e in errors} == {("connect_failed", DOWN)}


def test_ready_rejects_when_the_client_gives_up(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """With reconnectAttempts, each failed attempt is a connect_error and `ready` rejects with reconnect_failed."""
    page = open_blank(new_page, server)
    result = page.evaluate(
        f"""async (url) => {{
            const errors = [];
            const root = client.connect(url, {{...{FAST}, reconnectAttempts: 2}});
            root.on('connect_error', (e) => errors.push(e.code));
            const outcome = await root.ready.then(() => 'connected', (e) => e.code);
            return {{ outcome, errors, active: root.active }};
        }}""",
        f"ws://127.0.0.1:{free_port()}/",
    )
    assert result == {"outcome": "reconnect_failed", "errors": ["connect_failed"] * 3, "active": False}


def test_server_full_is_shown_on_the_demo(
    new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]
) -> None:
    """A second tab refused with 4002 logs and shows "server full" instead of "connecting…" forever."""
    server = start_server("--max-connections-per-address", "1")
    open_demo(new_page, server)
    second = new_page()
    second.goto(server.url + "/")
    expect(second.locator("#log li.error", has_text="server full")).not_to_have_count(0)
    expect(second.locator("#link")).to_contain_text("server full")
    expect(second.locator("#status")).not_to_have_attribute("data-state", "connected")


def test_refused_origin_is_a_connect_error(
    new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]
) -> None:
    """A page of another origin that is refused (HTTP 403) gets connect_error with a reason it can show."""
    target = start_server()
    other = start_server()
    page = new_page()
    page.goto(other.url + "/client.js")
    result = page.evaluate(
        f"""async (url) => {{
            const client = await import(url.replace('ws:', 'http:') + 'client.js');
            const root = client.connect(url, {{...{FAST}, reconnectAttempts: 1}});
            const errors = [];
            root.on('connect_error', (e) => errors.push(e.message));
            const outcome = await root.ready.then(() => 'connected', (e) => e.code);
            return {{ outcome, errors }};
        }}""",
        target.ws_url,
    )
    target.wait_for_log("refused origin")
    refused = f"could not connect (server down, or this page's origin {other.url} is not in the server's allowed origins)"
    assert result == {"outcome": "reconnect_failed", "errors": [refused, refused]}


def test_first_connect_after_server_down_at_load(
    new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]
) -> None:
    """Server down at load: the page logs why it can not connect, then calls the first connect a first connect."""
    shell = PageShell()
    with shell:
        page = new_page()
        page.goto(f"http://127.0.0.1:{shell.port}/")
        expect(page.locator("#log li.error", has_text=DOWN)).not_to_have_count(0)
        expect(page.locator("#link")).to_contain_text(DOWN)
        expect(page.locator("#status")).not_to_contain_text("reconnecting")
        shell.stop()
        server = ServerProcess()
        server.port = shell.port
    try:
        server.start()
        status = page.locator("#status")
        expect(status).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
        expect(status).not_to_have_attribute("data-recovered", re.compile("."))
        expect(messages(page)).to_have_text(["Connected"])
        expect(noted(page, "New session: state was lost")).to_have_count(0)
        expect(noted(page, "reconnected")).to_have_count(0)
    finally:
        server.stop()


# 3. socket.io-style acks and properties


def test_socketio_style_ack_callbacks_and_properties(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """emit(ev, data, cb), timeout(ms).emit(ev, data, (err, data)), and id/connected/disconnected/active."""
    page = open_blank(new_page, server)
    result = page.evaluate(
        """async (url) => {
            const test = await client.connect(url).of('/test').ready;
            const plain = await new Promise((resolve) => test.emit('my ping', null, (pong) => resolve(typeof pong.pong)));
            const timed = await new Promise((resolve) =>
                test.timeout(5000).emit('my ping', null, (err, pong) => resolve([err, typeof pong.pong])));
            const refused = await new Promise((resolve) =>
                test.timeout(5000).emit('no such event', null, (err) => resolve(err.code)));
            const viaPromise = await test.timeout(5000).emitWithAck('my ping').then((pong) => typeof pong.pong);
            let tooMany = null;
            try { test.emit('my event', { data: 1 }, { data: 2 }); } catch (e) { tooMany = e.name; }
            const before = { id: test.id === test.sid && typeof test.id === 'string', connected: test.connected,
                             disconnected: test.disconnected, active: test.active };
            test.disconnect();
            const after = { id: test.id === undefined, connected: test.connected, disconnected: test.disconnected, active: test.active };
            return { plain, timed, refused, viaPromise, tooMany, before, after };
        }""",
        server.ws_url,
    )
    assert result == {
        "plain": "number",
        "timed": [None, "number"],
        "refused": "unknown_event",
        "viaPromise": "number",
        "tooMany": "TypeError",
        "before": {"id": True, "connected": True, "disconnected": False, "active": True},
        "after": {"id": True, "connected": False, "disconnected": True, "active": False},
    }


def test_timeout_emit_reports_ack_timeout(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """timeout(ms).emit's callback gets an ack_timeout error when the server does not answer in time."""
    page = open_blank(new_page, server)
    page.evaluate("async (url) => { window.test = await client.connect(url).of('/test').ready; }", server.ws_url)
    server.pause()
    try:
        code = page.evaluate(
            "new Promise((resolve) => test.timeout(200).emit('my ping', null, (err, data) => resolve(err && err.code)))"
        )
    finally:
        server.resume()
    assert code == "ack_timeout"


# 4. Backoffs


def test_long_backoff_is_a_minimum(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """The long backoff (1008, 4002) is never below reconnectDelayLong; jitter only adds to it."""
    page = open_blank(new_page, server)
    low, high = page.evaluate(
        """(url) => {
            const root = client.connect(url, { reconnectDelayLong: 30000, randomizationFactor: 0.5 });
            const samples = Array.from({ length: 2000 }, () => root.manager.backoff('long'));
            root.close();
            return [Math.min(...samples), Math.max(...samples)];
        }""",
        server.ws_url,
    )
    assert 30000 <= low and high <= 45000


def test_connect_cancels_a_pending_backoff(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """connect() during a long backoff reconnects now instead of waiting it out."""
    page = open_blank(new_page, server)
    page.evaluate(
        """async (url) => {
            const options = { reconnectDelay: 600000, reconnectDelayMax: 600000, randomizationFactor: 0 };
            window.test = await client.connect(url, options).of('/test').ready;
        }""",
        server.ws_url,
    )
    server.kill()
    page.wait_for_function("!test.connected")
    server.start()
    page.evaluate("test.connect().ready")  # resolves on connect; a 10-minute backoff would time out
    assert page.evaluate("test.connected") is True


def test_connect_again_button_connects_now(
    new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]
) -> None:
    """Connect again, pressed while the link waits out a backoff, reconnects now."""
    server = start_server("--recovery-window", "120")
    page = open_demo(new_page, server)
    page.locator("#disconnect_button").click()
    expect(page.locator("#status")).to_have_text("disconnected (io server disconnect)")
    # Stretch the next backoff: the link will wait 10 minutes after the restart below.
    page.evaluate("Object.assign(demo.socket.manager.options, { reconnectDelay: 600000, reconnectDelayMax: 600000 })")
    server.kill()
    expect(page.locator("#link")).to_contain_text("down")
    server.start()
    page.locator("#connect_button").click()
    expect(page.locator("#status")).to_have_text("connected")
    expect(page.locator("#link")).to_have_text("connected")


# 5. offline / online


def test_offline_drops_the_link_and_online_resumes(
    new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]
) -> None:
    """The browser going offline is a disconnect ("offline") at once; back online, the session is resumed at once."""
    server = start_server("--recovery-window", "120")
    page = open_demo(new_page, server)
    sid = page.locator("#sid").text_content()
    status = page.locator("#status")
    page.context.set_offline(True)
    expect(status).to_have_text("disconnected (offline)")
    expect(page.locator("#link")).to_have_text("down (offline)")
    page.context.set_offline(False)
    # The heartbeat would take 30 s to notice, the backoff up to 7.5 s: the default 5 s is enough.
    expect(status).to_have_text("connected (recovered)")
    assert page.locator("#sid").text_content() == sid
    expect(logged(page, "Reconnected")).to_have_count(1)


# 6. The demo page: contrast, live region, favicon, phone width

CONTRAST = """() => {
    const channel = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    const parse = (text) => text.match(/[\\d.]+/g).map(Number);
    const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
    const background = (el) => {
        for (let e = el; e; e = e.parentElement) {
            const rgba = parse(getComputedStyle(e).backgroundColor);
            if (rgba.length < 4 || rgba[3] > 0) return rgba;
        }
        return parse(getComputedStyle(document.documentElement).backgroundColor);
    };
    const ratio = (fg, bg) => {
        const [a, b] = [luminance(fg), luminance(bg)].sort((x, y) => y - x);
        return (a + 0.05) / (b + 0.05);
    };
    const worst = [];
    const check = (el, color, what) => {
        const r = ratio(parse(color), background(el));
        if (r < 4.5) worst.push(`${what}: ${r.toFixed(2)}`);
    };
    for (const el of document.querySelectorAll('body *')) {
        if (!el.checkVisibility() || el.disabled) continue;  // disabled controls are exempt (WCAG 1.4.3)
        const hasText = [...el.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
        if (hasText) check(el, getComputedStyle(el).color, `${el.tagName.toLowerCase()}#${el.id}.${el.className} "${el.textContent.trim().slice(0, 20)}"`);
        if (el.placeholder) check(el, getComputedStyle(el, '::placeholder').color, `placeholder of #${el.id}`);
    }
    return worst;
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_demo_text_meets_wcag_aa_contrast(new_page: Callable[[], Page], server: ServerProcess, scheme: str) -> None:
    """Every visible text (buttons, labels, hints, log, status, placeholders) has a contrast of at least 4.5:1."""
    page = new_page()
    page.emulate_media(color_scheme=scheme)
    page.goto(server.url + "/")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    submit(page, "emit", emit_data="some text")  # a reply and a log line, for good measure
    expect(logged(page, "some text")).to_have_count(1)
    assert page.evaluate(CONTRAST) == []
    page.locator("#disconnect_button").click()  # the danger button, then Connect again and the red status
    expect(page.locator("#connect_button")).to_be_visible()
    assert page.evaluate(CONTRAST) == []


def test_live_region_announces_states_not_latency(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """Only the states are in the polite status region: latency updates announce nothing, a disconnect does."""
    page = open_demo(new_page, server)
    page.evaluate(
        """() => {
            window.announced = [];
            window.latencyUpdates = 0;
            const live = [...document.querySelectorAll('[aria-live], [role=status], [role=alert]')];
            for (const region of live) {
                new MutationObserver(() => announced.push(region.textContent)).observe(
                    region, { subtree: true, childList: true, characterData: true });
            }
            new MutationObserver(() => latencyUpdates++).observe(
                document.getElementById('latency'), { subtree: true, childList: true, characterData: true });
        }"""
    )
    page.wait_for_function("latencyUpdates >= 2")
    assert page.evaluate("announced") == []
    region = page.evaluate(
        """() => {
            const region = document.getElementById('status').closest('[aria-live], [role=status]');
            return region && { role: region.getAttribute('role'), live: region.getAttribute('aria-live'),
                               latency: region.contains(document.getElementById('latency')) };
        }"""
    )
    assert region is not None and region["latency"] is False
    assert region["role"] == "status" or region["live"] == "polite"
    page.locator("#disconnect_button").click()
    page.wait_for_function("announced.some((text) => text.includes('disconnected'))")


def test_no_favicon_404(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """Loading the demo requests nothing that fails (no favicon.ico 404)."""
    page = new_page()
    failed: list[str] = []
    page.on("response", lambda response: failed.append(response.url) if response.status >= 400 else None)
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(server.url + "/")
    expect(page.locator("#latency")).to_have_text(re.compile(r" ms$"))
    assert page.locator("link[rel=icon]").count() == 1
    assert failed == []


def test_echo_reply_is_visible_on_a_phone(phone_page: Callable[[], Page], server: ServerProcess) -> None:
    """At 360 px wide, the Echo reply shows next to its button, in the viewport."""
    page = open_demo(phone_page, server)
    submit(page, "emit", emit_data="hello from a phone")
    reply = page.locator("#emit .reply")
    expect(reply).to_have_text("hello from a phone")
    expect(reply).to_be_in_viewport()
    button = page.locator("#emit button[type=submit]").bounding_box()
    box = reply.bounding_box()
    assert button and box and 0 <= box["y"] - button["y"] < 200


# 7. disconnect() on `/`, URL errors


def test_root_disconnect_closes_the_websocket(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """disconnect() of the last wanted namespace closes the WebSocket; connect() opens a new one."""
    page = open_blank(new_page, server)
    with page.expect_websocket() as opened:
        page.evaluate("async (url) => { window.root = await client.connect(url).ready; }", server.ws_url)
    ws = opened.value
    page.evaluate("root.disconnect()")
    ws.wait_for_event("close")
    assert page.evaluate("[root.connected, root.active]") == [False, False]
    with page.expect_websocket():
        page.evaluate("root.connect().ready")
    assert page.evaluate("root.connected") is True


@pytest.mark.parametrize("url", [None, "127.0.0.1:5000", "/"])
def test_connect_without_a_websocket_url_is_a_type_error(
    new_page: Callable[[], Page], server: ServerProcess, url: str | None
) -> None:
    """connect() with no URL or a scheme-less one throws a TypeError saying what it wants."""
    page = open_blank(new_page, server)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    error = page.evaluate(
        """(url) => {
            try { (url === null ? client.connect() : client.connect(url)).close(); return null; }
            catch (e) { return { name: e.name, message: e.message }; }
        }""",
        url,
    )
    assert error is not None and error["name"] == "TypeError"
    assert "ws://" in error["message"]
    assert sockets == []


@pytest.mark.parametrize("auth", ["{token: 's3cret'}", "() => ({token: 's3cret'})"], ids=["object", "function"])
def test_auth_for_root_arrives_with_the_first_connect(
    new_page: Callable[[], Page], start_server: Callable[..., ServerProcess], auth: str
) -> None:
    """auth for / (an object, or a function called on each attempt) reaches the connect handler at once."""
    server = start_server("tests.apps.authroot:socketio")
    page = open_blank(new_page, server)
    sid = page.evaluate(
        f"""async (url) => {{
            const socket = client.connect(url, {{auth: {auth}}});
            await socket.ready;
            return socket.id;
        }}""",
        server.ws_url,
    )
    assert sid
    server.wait_for_log("admitted with {'token': 's3cret'}")
    assert not any("refused auth" in line for line in server.log), "no refusal before the auth"


# 8. A message over the server's size limit (close 1009)


def test_too_big_message_is_an_error_and_calls_in_flight_survive(
    new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]
) -> None:
    """1009: the oversized call fails with message_too_big, a call in flight is still answered after the resume."""
    server = start_server("tests.apps.calls:socketio", "--max-message-size", "1024")
    page = open_blank(new_page, server)
    result = page.evaluate(
        f"""async (url) => {{
            const root = client.connect(url, {FAST});
            await root.ready;
            const disconnects = [];
            root.on('disconnect', (reason, details) => disconnects.push(details.code));
            const slow = root.emitWithAck('slow', {{ seconds: 1 }});
            const big = await root.emitWithAck('record', 'x'.repeat(2000)).then(() => null, (e) => [e.code, e.data]);
            const answer = await slow.catch((e) => e.code);
            const recovered = root.recovered;
            // The server's limit is now known: a frame as large is refused here, the link stays.
            const warning = nextWarning(root);
            root.emit('record', 'y'.repeat(3000));
            const local = await warning;
            const ran = await root.emitWithAck('count', 'slow');
            return {{ big, answer, recovered, local, ran, disconnects }};
        }}""",
        server.ws_url,
    )
    code, data = result.pop("big")
    assert code == "message_too_big" and data["event"] == "record" and data["bytes"] > 2000
    assert result == {
        "answer": {"slow": 1},
        "recovered": True,
        "local": "message_too_big",
        "ran": 1,
        "disconnects": [1009],
    }


def test_too_big_echo_is_shown_on_the_demo(
    new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]
) -> None:
    """An Echo over the size limit says so next to the button; the session is resumed."""
    server = start_server("--max-message-size", "1024")
    page = open_demo(new_page, server)
    submit(page, "emit", emit_data="z" * 2000)
    expect(page.locator("#emit .reply")).to_contain_text("message_too_big")
    expect(page.locator("#log li.error", has_text="over the server's size limit")).to_have_count(1)
    expect(page.locator("#status")).to_have_text("connected (recovered)")


# 9. retries: emits that must arrive, over a link that dies silently


def test_retries_resend_emits_lost_on_a_silently_dead_link(
    new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]
) -> None:
    """With retries, an emit whose frame (or whose ack) a dead link swallowed arrives once, after the resume."""
    server = start_server("tests.apps.calls:socketio")
    with Relay(server.port) as relay:
        page = open_blank(new_page, relay)
        page.evaluate(
            f"""async (url) => {{
                const options = {{...{FAST}, retries: 30, ackTimeout: 300, heartbeatInterval: 60000, heartbeatTimeout: 500}};
                window.root = client.connect(url, options);
                await root.ready;
                window.warnings = [];
                root.on('warning', (e) => warnings.push(e.code));
                window.connects = [];
                root.on('connect', (data) => connects.push(data.recovered));
            }}""",
            relay.ws_url,
        )
        relay.swallow("up")  # the emit never reaches the server
        page.evaluate("root.emit('record', 'lost on the way up')")
        relay.wait(lambda: relay.swallowed["up"] > 0, "emit swallowed")
        page.wait_for_function("connects.length === 1", timeout=RECONNECT_TIMEOUT)
        relay.swallow("down")  # the server handles the call, its ack is lost
        page.evaluate("() => { window.answer = root.emitWithAck('record', 'ack lost on the way down'); }")
        relay.wait(lambda: relay.swallowed["down"] > 0, "ack swallowed")
        page.wait_for_function("connects.length === 2", timeout=RECONNECT_TIMEOUT)
        assert page.evaluate("answer") == 1
        counts = page.evaluate(
            "Promise.all(['lost on the way up', 'ack lost on the way down'].map((key) => root.emitWithAck('count', key)))"
        )
        assert counts == [1, 1]
        assert page.evaluate("[connects, warnings]") == [[True, True], []]


def test_volatile_emits_are_dropped_when_not_connected(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """volatile.emit sends when connected and drops, silently, while connecting; emit buffers."""
    page = open_blank(new_page, server)
    result = page.evaluate(
        """async (url) => {
            const test = await client.connect(url).of('/test').ready;
            const got = [];
            test.on('my response', (d) => { if (d.data !== 'Connected') got.push(d.data); });
            const warnings = [];
            test.on('warning', (e) => warnings.push(e.code));
            test.volatile.emit('my event', { data: 'live' });
            test.disconnect();
            test.connect();
            test.volatile.emit('my event', { data: 'while connecting' });
            test.emit('my event', { data: 'buffered' });
            await test.ready;
            await test.emitWithAck('my ping');  // after every echo above
            let withAck = null;
            try { test.volatile.emit('my ping', null, () => {}); } catch (e) { withAck = e.name; }
            return { got, warnings, withAck };
        }""",
        server.ws_url,
    )
    assert result == {"got": ["live", "buffered"], "warnings": [], "withAck": "TypeError"}


# 10. Small rough edges of the demo page


def test_close_room_and_empty_echo_give_feedback(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """Close room answers next to its button even for a room nobody is in; an empty Echo is not sent."""
    page = open_demo(new_page, server)
    submit(page, "close", close_room="nowhere")
    expect(page.locator("#close .reply")).to_contain_text("Closed room nowhere")
    submit(page, "emit", emit_data="")
    assert page.evaluate("document.querySelector('#emit_data').validationMessage") != ""
    submit(page, "emit", emit_data="after")
    expect(messages(page)).to_have_text(["Connected", "after"])  # no blank line in between


# 11. The recovery token stays out of URLs and the console


def test_recovery_token_is_not_in_urls_or_the_console(
    new_page: Callable[[], Page], start_server: Callable[..., ServerProcess]
) -> None:
    """Failed resume attempts print their URL in the console: it holds no token; the resume still works."""
    server = start_server("--recovery-window", "120")
    page = open_demo(new_page, server)
    console: list[str] = []
    urls: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.on("websocket", lambda ws: urls.append(ws.url))
    sid = page.locator("#sid").text_content()
    token = page.evaluate("demo.socket.manager.token")
    assert token
    page.evaluate("() => { window.errors = 0; demo.socket.on('connect_error', () => errors++); }")
    server.kill()
    page.wait_for_function("errors >= 2", timeout=RECONNECT_TIMEOUT)
    server.start()
    expect(page.locator("#status")).to_have_text(re.compile(r"^connected"), timeout=RECONNECT_TIMEOUT)
    failures = [text for text in console if "WebSocket connection to" in text]
    assert failures, console  # the browser did print the failed attempts
    assert urls and all("recover=1" in url for url in urls), urls
    assert not [text for text in console + urls if token in text]
    assert page.locator("#sid").text_content() != sid  # a restart: a fresh session, as before
