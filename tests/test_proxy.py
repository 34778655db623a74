"""Behind a reverse proxy: docs/nginx.conf in a real nginx, ``forwarded_allow_ips``, forwarded.py's rules.

nginx is the system one (``apt-get install -y nginx``), run by the test as an unprivileged
process on a free loopback port, with every file it writes inside ``tmp_path``. Clients bind
to other loopback addresses (127.0.0.2, 127.0.0.3) so that nginx, on 127.0.0.1, forwards
addresses that differ from its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, ServerProcess, require, running
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus

from plainsocket import SocketServer, request
from plainsocket.forwarded import TrustedProxies, client_address, parse_trusted
from plainsocket.protocol import CloseCode

try:
    from playwright.sync_api import Browser, expect, sync_playwright
except ImportError:  # checked (skip, or fail on CI) by the `browser` fixture
    sync_playwright = None  # type: ignore[assignment]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
EXAMPLE = ROOT / "docs" / "nginx.conf"
LISTEN = "listen 80;"  # the lines of docs/nginx.conf the tests change: the two ports
UPSTREAM = "server 127.0.0.1:5000;"
FORGED = "203.0.113.9"  # TEST-NET-3: an address no client here has
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# Around the example (an http-level snippet): everything nginx writes goes to the test's directory.
WRAPPER = """\
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

{example}
}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Nginx:
    """nginx running docs/nginx.conf, its two ports changed, maybe one of its lines ``edits``."""

    def __init__(self, directory: Path, upstream_port: int, edits: dict[str, str]) -> None:
        self.directory = directory
        directory.mkdir()
        example = EXAMPLE.read_text()
        for old in (LISTEN, UPSTREAM, *edits):
            assert example.count(old) == 1, f"docs/nginx.conf should have {old!r} once"
        for old, new in edits.items():
            example = example.replace(old, new)
        self.example = example.replace(UPSTREAM, f"server 127.0.0.1:{upstream_port};")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> Nginx:
        """Start on a free port (another, should someone take it first) and wait until it accepts."""
        for _attempt in range(3):
            self.port = free_port()
            conf = self.directory / "nginx.conf"
            example = self.example.replace(LISTEN, f"listen 127.0.0.1:{self.port};")
            conf.write_text(WRAPPER.format(dir=self.directory, example=example))
            error_log = self.directory / "error.log"
            command = [NGINX, "-p", f"{self.directory}/", "-c", str(conf), "-e", str(error_log)]
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self
                except OSError:
                    time.sleep(0.01)  # nothing to await: nginx says nothing when it listens
            self.stop()
            log = error_log.read_text() if error_log.exists() else ""
            if "Address already in use" not in log:
                pytest.fail("nginx did not start:\n" + log)
        pytest.fail("nginx found no free port")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[..., Nginx]]:
    """Start nginx in front of a server's port: ``nginx(port, edits={old line: new line})``."""
    require(shutil.which("nginx") is not None or os.path.exists("/usr/sbin/nginx"), "nginx (apt-get install -y nginx)")
    started: list[Nginx] = []

    def start(upstream_port: int, edits: dict[str, str] | None = None) -> Nginx:
        proxy = Nginx(tmp_path / f"nginx{len(started)}", upstream_port, edits or {})
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()


def app(**options: Any) -> SocketServer:
    """A server whose ``whoami`` answers ``request.remote_address`` and ``headers`` what the proxy sent."""
    socketio = SocketServer(**options)
    socketio.on_event("whoami", lambda: request.remote_address)
    names = ("Host", "X-Forwarded-For", "Forwarded", "X-Forwarded-Proto")
    socketio.on_event("headers", lambda: {name: request.headers.get(name) for name in names})
    return socketio


async def whoami(client: Any) -> str:
    ack = await client.call("whoami")
    assert ack["event"] == "ack", ack
    return str(ack["data"])


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "plainsocket"]


# -- A real nginx in front ----------------------------------------------------------------


async def test_clients_behind_nginx_are_counted_by_their_own_address(
    nginx: Callable[..., Nginx], opened: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Through nginx, 127.0.0.2 and 127.0.0.3 count as two addresses, one connection each; 127.0.0.2 again is 4002."""
    caplog.set_level(logging.INFO, logger="plainsocket")
    socketio = app(forwarded_allow_ips="127.0.0.1", max_connections_per_address=1)
    async with running(socketio):
        proxy = nginx(socketio.port)
        a = await opened(proxy.ws_url, local_addr=("127.0.0.2", 0))
        b = await opened(proxy.ws_url, local_addr=("127.0.0.3", 0))
        assert await whoami(a) == "127.0.0.2"
        assert await whoami(b) == "127.0.0.3"
        with pytest.raises(ConnectionClosed) as refused:
            await opened(proxy.ws_url, local_addr=("127.0.0.2", 0))
        assert refused.value.rcvd is not None
        assert refused.value.rcvd.code == CloseCode.TOO_MANY_CONNECTIONS
        assert await whoami(a) == "127.0.0.2"  # the first one lives on
    lines = log_lines(caplog)
    assert f"connect sid={a.sid} address=127.0.0.2" in lines
    assert f"connect sid={b.sid} address=127.0.0.3" in lines
    assert any(line.startswith(f"disconnect sid={a.sid} address=127.0.0.2 reason=") for line in lines)


async def test_without_forwarded_allow_ips_everyone_behind_nginx_is_nginx(
    nginx: Callable[..., Nginx], opened: Any
) -> None:
    """Trusting nobody (the default), every client behind nginx is 127.0.0.1 and shares its limit."""
    socketio = app(max_connections_per_address=1)
    async with running(socketio):
        proxy = nginx(socketio.port)
        a = await opened(proxy.ws_url, local_addr=("127.0.0.2", 0))
        assert await whoami(a) == "127.0.0.1"
        with pytest.raises(ConnectionClosed) as refused:
            await opened(proxy.ws_url, local_addr=("127.0.0.3", 0))
        assert refused.value.rcvd is not None
        assert refused.value.rcvd.code == CloseCode.TOO_MANY_CONNECTIONS


@pytest.mark.parametrize(
    ("forged", "arrives"),
    [
        ({"X-Forwarded-For": FORGED}, f"{FORGED}, 127.0.0.2"),
        ({"X-Forwarded-For": f"{FORGED}, 127.0.0.1"}, f"{FORGED}, 127.0.0.1, 127.0.0.2"),
        ({"Forwarded": f"for={FORGED}"}, "127.0.0.2"),
    ],
    ids=["x-forwarded-for", "x-forwarded-for-with-a-trusted-hop", "forwarded"],
)
async def test_a_header_forged_through_nginx_gives_the_real_client(
    nginx: Callable[..., Nginx], opened: Any, caplog: pytest.LogCaptureFixture, forged: dict[str, str], arrives: str
) -> None:
    """A client's own forwarding header, sent through nginx, is not believed: the server sees the real client."""
    caplog.set_level(logging.INFO, logger="plainsocket")
    socketio = app(forwarded_allow_ips="127.0.0.1")
    async with running(socketio):
        proxy = nginx(socketio.port)
        client = await opened(proxy.ws_url, local_addr=("127.0.0.2", 0), additional_headers=forged)
        assert await whoami(client) == "127.0.0.2"
        seen = (await client.call("headers", id=2))["data"]
    # nginx appends the address it saw (the rightmost hop is the one it vouches for) and drops Forwarded.
    assert seen["X-Forwarded-For"] == arrives
    assert seen["Forwarded"] is None
    assert f"connect sid={client.sid} address=127.0.0.2" in log_lines(caplog)


async def test_a_clients_own_forwarded_header_loses_to_x_forwarded_for(
    nginx: Callable[..., Nginx], opened: Any
) -> None:
    """Even without docs/nginx.conf clearing it, a client's Forwarded header passed on by nginx is not believed."""
    socketio = app(forwarded_allow_ips="127.0.0.1")
    async with running(socketio):
        proxy = nginx(socketio.port, edits={'proxy_set_header Forwarded "";': ""})
        client = await opened(
            proxy.ws_url, local_addr=("127.0.0.2", 0), additional_headers={"Forwarded": f"for={FORGED}"}
        )
        assert await whoami(client) == "127.0.0.2"


async def test_trusting_everyone_behind_an_appending_proxy_believes_a_forgery(
    nginx: Callable[..., Nginx], opened: Any
) -> None:
    """Why docs/proxy.md advises against ``*`` here: it takes the leftmost X-Forwarded-For, which the client wrote."""
    socketio = app(forwarded_allow_ips="*")
    async with running(socketio):
        proxy = nginx(socketio.port)
        honest = await opened(proxy.ws_url, local_addr=("127.0.0.2", 0))
        forger = await opened(proxy.ws_url, local_addr=("127.0.0.3", 0), additional_headers={"X-Forwarded-For": FORGED})
        assert await whoami(honest) == "127.0.0.2"
        assert await whoami(forger) == FORGED


async def test_nginx_forwards_host_and_proto_and_the_origin_check_still_works(
    nginx: Callable[..., Nginx], opened: Any
) -> None:
    """Through nginx a same-origin page (Host with its port) is admitted and another site's page refused (403)."""
    socketio = app(forwarded_allow_ips="127.0.0.1")
    async with running(socketio):
        proxy = nginx(socketio.port)
        host = f"127.0.0.1:{proxy.port}"
        client = await opened(proxy.ws_url, origin=f"http://{host}")
        seen = (await client.call("headers"))["data"]
        assert seen["Host"] == host
        assert seen["X-Forwarded-Proto"] == "http"
        with pytest.raises(InvalidStatus) as refused:
            await opened(proxy.ws_url, origin="http://evil.example")
        assert refused.value.response.status_code == 403


async def test_host_without_its_port_would_refuse_same_origin_pages(nginx: Callable[..., Nginx], opened: Any) -> None:
    """Why docs/nginx.conf forwards $http_host: with $host a page on a non-default port fails the origin check."""
    socketio = app()
    async with running(socketio):
        proxy = nginx(socketio.port, edits={"proxy_set_header Host $http_host;": "proxy_set_header Host $host;"})
        with pytest.raises(InvalidStatus) as refused:
            await opened(proxy.ws_url, origin=f"http://127.0.0.1:{proxy.port}")
        assert refused.value.response.status_code == 403


async def test_server_pings_keep_an_idle_socket_open_through_nginx(nginx: Callable[..., Nginx], opened: Any) -> None:
    """proxy_read_timeout cuts a silent socket; the server's pings, more frequent than it, keep an idle one open."""
    shorter = {"proxy_read_timeout 75s;": "proxy_read_timeout 1s;", "proxy_send_timeout 75s;": "proxy_send_timeout 1s;"}
    pinging = app(ping_interval=0.2)
    async with running(pinging):
        proxy = nginx(pinging.port, edits=shorter)
        client = await opened(proxy.ws_url, ping_interval=None)  # only the server pings
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.ws.wait_closed(), 2.5)  # idle for 2.5 read timeouts
        assert await whoami(client) == "127.0.0.1"
    silent = app(ping_interval=None)
    async with running(silent):
        proxy = nginx(silent.port, edits=shorter)
        client = await opened(proxy.ws_url, ping_interval=None)
        await asyncio.wait_for(client.ws.wait_closed(), 5)  # nginx drops it after 1 s of silence
        assert client.ws.close_code == 1006  # dropped: no closing handshake


# -- Straight to the server ----------------------------------------------------------------


@pytest.mark.parametrize(
    "forged", [{"X-Forwarded-For": FORGED}, {"Forwarded": f'for="{FORGED}:4711"'}], ids=["x-forwarded-for", "forwarded"]
)
async def test_a_forged_header_from_an_untrusted_peer_is_ignored(
    opened: Any, caplog: pytest.LogCaptureFixture, forged: dict[str, str]
) -> None:
    """A forwarding header sent straight to the server by a peer it does not trust changes nothing, logs included."""
    caplog.set_level(logging.INFO, logger="plainsocket")
    socketio = app(forwarded_allow_ips="127.0.0.9", max_connections_per_address=1)
    async with running(socketio) as url:
        client = await opened(url, additional_headers=forged)
        assert await whoami(client) == "127.0.0.1"
        with pytest.raises(ConnectionClosed) as refused:  # counted as 127.0.0.1, not as the forged address
            await opened(url, additional_headers={"X-Forwarded-For": "192.0.2.1"})
        assert refused.value.rcvd is not None
        assert refused.value.rcvd.code == CloseCode.TOO_MANY_CONNECTIONS
    lines = log_lines(caplog)
    assert f"connect sid={client.sid} address=127.0.0.1" in lines
    assert any(line.startswith(f"disconnect sid={client.sid} address=127.0.0.1 reason=") for line in lines)
    assert not any(FORGED in line for line in lines)


async def test_a_trusted_peer_is_believed(opened: Any) -> None:
    """From a trusted address the header is believed: so only the proxy may reach the server from one."""
    socketio = app(forwarded_allow_ips="127.0.0.1")
    async with running(socketio) as url:
        client = await opened(url, additional_headers={"X-Forwarded-For": FORGED})
        assert await whoami(client) == FORGED


def test_an_invalid_forwarded_allow_ips_stops_the_server_at_start() -> None:
    """``--forwarded-allow-ips localhost`` (a name, not an address) is refused at start with a one-line error."""
    result = subprocess.run(
        [sys.executable, "server.py", "--host", "127.0.0.1", "--port", "0", "--forwarded-allow-ips", "localhost"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "not an IP address or network: 'localhost'" in result.stderr
    assert "Traceback" not in result.stderr


# -- forwarded.py --------------------------------------------------------------------------

XFF = "X-Forwarded-For"
FWD = "Forwarded"


@pytest.mark.parametrize(
    ("peer", "headers", "trusted", "expected"),
    [
        # Who is believed
        ("198.51.100.7", [(XFF, FORGED)], "127.0.0.1", "198.51.100.7"),
        ("198.51.100.7", [(FWD, f"for={FORGED}")], "127.0.0.1", "198.51.100.7"),
        ("127.0.0.1", [(XFF, FORGED)], None, "127.0.0.1"),
        ("127.0.0.1", [(XFF, FORGED)], "", "127.0.0.1"),
        ("127.0.0.1", [], "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", [(XFF, "192.0.2.1")], "127.0.0.1", "192.0.2.1"),
        # Walking X-Forwarded-For from the right, past trusted hops
        ("127.0.0.1", [(XFF, f"{FORGED}, 192.0.2.1")], "127.0.0.1", "192.0.2.1"),
        ("127.0.0.1", [(XFF, "192.0.2.1, 10.0.0.5")], "127.0.0.1, 10.0.0.0/8", "192.0.2.1"),
        ("127.0.0.1", [(XFF, f"{FORGED}, 192.0.2.1, 10.0.0.5")], "127.0.0.1, 10.0.0.0/8", "192.0.2.1"),
        ("127.0.0.1", [(XFF, "10.0.0.7, 10.0.0.5")], "127.0.0.1, 10.0.0.0/8", "10.0.0.7"),  # all trusted: leftmost
        ("127.0.0.1", [(XFF, f"{FORGED}, 127.0.0.1")], "127.0.0.1", FORGED),  # a client on a trusted address
        ("127.0.0.1", [(XFF, FORGED), (XFF, "192.0.2.1")], "127.0.0.1", "192.0.2.1"),  # repeated header: one list
        ("127.0.0.1", [(XFF, "192.0.2.1:4711")], "127.0.0.1", "192.0.2.1"),
        ("127.0.0.1", [(XFF, "2001:db8::1")], "127.0.0.1", "2001:db8::1"),
        ("127.0.0.1", [(XFF, "[2001:db8::1]:443")], "127.0.0.1", "2001:db8::1"),
        # RFC 7239 Forwarded
        ("127.0.0.1", [(FWD, 'for="[2001:db8::1]:4711"')], "127.0.0.1", "2001:db8::1"),
        ("127.0.0.1", [(FWD, "for=192.0.2.60;proto=http;by=203.0.113.43")], "127.0.0.1", "192.0.2.60"),
        ("127.0.0.1", [(FWD, "proto=https; For=192.0.2.60")], "127.0.0.1", "192.0.2.60"),
        ("127.0.0.1", [(FWD, f"for={FORGED}, for=198.51.100.17")], "127.0.0.1", "198.51.100.17"),
        ("127.0.0.1", [(FWD, f"for={FORGED}"), (FWD, "for=198.51.100.17")], "127.0.0.1", "198.51.100.17"),
        ("127.0.0.1", [(FWD, "for=198.51.100.17"), (XFF, "198.51.100.18")], "127.0.0.1", "198.51.100.18"),  # XFF first
        # Garbage: never an address, and nothing left of it is read
        ("127.0.0.1", [(XFF, "not-an-ip")], "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", [(XFF, "")], "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", [(XFF, "1.2.3")], "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", [(XFF, "999.0.0.1")], "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", [(XFF, "garbage, 192.0.2.1")], "127.0.0.1", "192.0.2.1"),
        ("127.0.0.1", [(XFF, f"{FORGED}, unknown")], "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", [(XFF, f"{FORGED}, unknown, 10.0.0.5")], "127.0.0.1, 10.0.0.0/8", "10.0.0.5"),
        ("127.0.0.1", [(FWD, "for=unknown")], "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", [(FWD, f"for={FORGED}, for=_hidden")], "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", [(FWD, f"for={FORGED}, by=10.0.0.5")], "127.0.0.1", "127.0.0.1"),  # a hop that names nobody
        ("127.0.0.1", [(FWD, 'for="[2001:db8::1')], "127.0.0.1", "127.0.0.1"),
        # *: every peer, and every hop, is trusted
        ("198.51.100.7", [(XFF, "192.0.2.1")], "*", "192.0.2.1"),
        ("198.51.100.7", [(XFF, f"{FORGED}, 192.0.2.1")], "*", FORGED),
        ("198.51.100.7", [(XFF, "unknown, 192.0.2.1")], "*", "192.0.2.1"),
        ("198.51.100.7", [], "*", "198.51.100.7"),
        # Networks
        ("10.1.2.3", [(XFF, "192.0.2.1")], "10.0.0.0/8", "192.0.2.1"),
        ("11.0.0.1", [(XFF, "192.0.2.1")], "10.0.0.0/8", "11.0.0.1"),
        ("2001:db8::5", [(XFF, "192.0.2.1")], "2001:db8::/32", "192.0.2.1"),
        ("::1", [(XFF, "192.0.2.1")], "127.0.0.1", "::1"),
        ("?", [(XFF, "192.0.2.1")], "*", "192.0.2.1"),
        ("?", [(XFF, "192.0.2.1")], "127.0.0.1", "?"),  # no peer address (a unix socket): never trusted
    ],
)
def test_client_address(peer: str, headers: list[tuple[str, str]], trusted: str | None, expected: str) -> None:
    """client_address() gives the expected address for this peer, headers and trust."""
    assert client_address(peer, Headers(headers), parse_trusted(trusted)) == expected


@pytest.mark.parametrize(
    ("spec", "inside", "outside"),
    [
        (None, [], ["127.0.0.1"]),
        ("", [], ["127.0.0.1"]),
        (" , ", [], ["127.0.0.1"]),
        ("127.0.0.1", ["127.0.0.1"], ["127.0.0.2", "::1", "garbage"]),
        (" 127.0.0.1 , 10.0.0.0/8 ", ["127.0.0.1", "10.255.0.1"], ["11.0.0.1"]),
        (["127.0.0.1", "::1"], ["127.0.0.1", "::1"], ["127.0.0.2"]),
        ("10.1.2.3/8", ["10.0.0.1"], ["11.0.0.1"]),  # host bits set: the network anyway, as uvicorn does
        ("2001:db8::/32", ["2001:db8:ffff::1"], ["2001:db9::1"]),
        ("*", ["127.0.0.1", "2001:db8::1", "198.51.100.7"], []),
        ("127.0.0.1,*", ["198.51.100.7"], []),
    ],
)
def test_parse_trusted(spec: Any, inside: list[str], outside: list[str]) -> None:
    """parse_trusted() trusts exactly the listed addresses and networks."""
    trusted = parse_trusted(spec)
    assert isinstance(trusted, TrustedProxies)
    assert bool(trusted) == bool(inside)
    assert all(address in trusted for address in inside)
    assert not any(address in trusted for address in outside)


@pytest.mark.parametrize(
    ("spec", "bad"),
    [
        ("localhost", "localhost"),
        ("10.0.0.0/33", "10.0.0.0/33"),
        ("127.0.0.1;10.0.0.1", "127.0.0.1;10.0.0.1"),
        ("1.2.3.4.5", "1.2.3.4.5"),
        ("127.0.0.1, nope", "nope"),
        (["127.0.0.1", "::1/129"], "::1/129"),
    ],
)
def test_parse_trusted_refuses_what_is_not_an_address(spec: Any, bad: str) -> None:
    """parse_trusted() raises ValueError, naming the entry, for anything but addresses, networks and ``*``."""
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        parse_trusted(spec)


# -- The demo page through nginx, in Chromium -----------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = []
    if sync_playwright is None:
        missing.append("the playwright Python package")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(CHROMIUM)
    require(not missing, f"{' and '.join(missing)}: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_demo_page_through_nginx(
    browser: Browser, nginx: Callable[..., Nginx], server_process: Callable[..., ServerProcess]
) -> None:
    """The demo page through nginx connects (the origin check passes), gets its echo; the log names the client."""
    server = server_process("--forwarded-allow-ips", "127.0.0.1")
    proxy = nginx(server.port)
    context = browser.new_context()
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(proxy.url + "/")
        assert page.evaluate("location.host") == f"127.0.0.1:{proxy.port}"  # its socket goes to nginx too
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
        messages = page.locator("#log li.message .text")
        expect(messages).to_have_text(["Connected"])
        page.fill("#emit_data", "through nginx")
        page.locator("#emit button[type=submit]").click()
        expect(messages).to_have_text(["Connected", "through nginx"])
        sid = page.locator("#sid").inner_text()
    finally:
        context.close()
    assert errors == []
    code, _out, err = server.stop()
    assert code == 0, err
    assert f"connect sid={sid} address=127.0.0.1" in err
    assert "refused origin" not in err
