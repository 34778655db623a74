"""DNS rebinding: the server answers only to hosts it serves (IP literals, localhost, allowed_hosts)."""

from __future__ import annotations

import asyncio
import http.client
from typing import Any

import pytest
from conftest import running
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from plainsocket import SocketServer
from plainsocket.hosts import normalize, parse_allowed


async def handshake(port: int, host: str, origin: str | None = None) -> int:
    """Open a WebSocket naming ``host``; return 101 or the refusal's HTTP status."""
    headers = {"Origin": origin} if origin is not None else {}
    try:
        # The URL names the host (it goes into the Host header); the socket goes to 127.0.0.1.
        async with connect(f"ws://{host}/", host="127.0.0.1", port=port, additional_headers=headers):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_a_rebinding_page_can_not_drive_a_local_server() -> None:
    """Host evil.example:PORT with a matching Origin: refused with 400, no handler runs; allowed by name."""
    connected: list[str] = []
    socketio = SocketServer()
    socketio.on_event("connect", lambda: connected.append("ran"))
    async with running(socketio):
        assert socketio.port is not None
        evil = f"evil.example:{socketio.port}"
        assert await handshake(socketio.port, evil, f"http://{evil}") == 400
        assert connected == []
        assert await handshake(socketio.port, f"127.0.0.1:{socketio.port}", f"http://127.0.0.1:{socketio.port}") == 101
    allowed = SocketServer(allowed_hosts="evil.example")
    async with running(allowed):
        assert allowed.port is not None
        evil = f"evil.example:{allowed.port}"
        assert await handshake(allowed.port, evil, f"http://{evil}") == 101


def get(port: int, host: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.putrequest("GET", "/healthz", skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


async def test_plain_http_is_checked_too() -> None:
    """GET /healthz with a foreign Host is 400 as well: pages are not served to rebinding names."""
    socketio = SocketServer()
    async with running(socketio):
        assert socketio.port is not None
        assert await asyncio.to_thread(get, socketio.port, "evil.example") == 400
        assert await asyncio.to_thread(get, socketio.port, f"localhost:{socketio.port}") == 200


@pytest.mark.parametrize(
    ("header", "normalized"),
    [
        ("localhost:5000", "localhost"),
        ("LOCALHOST", "localhost"),
        ("localhost.", "localhost"),
        ("Evil.Example.:80", "evil.example"),
        ("[::1]:5000", "::1"),
        ("[::1]", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("[evil.example]:80", None),
        ("evil.example:80:81", None),
        ("evil.example:port", None),
        ("user@evil.example", None),
        ("", None),
        ("a b", None),
    ],
)
def test_host_spellings(header: str, normalized: str | None) -> None:
    """Host headers are compared in one spelling: lower case, no trailing dot, no port."""
    assert normalize(header) == normalized


@pytest.mark.parametrize(
    ("spec", "host", "allowed"),
    [
        (None, "localhost", True),
        (None, "app.localhost", True),
        (None, "127.0.0.1", True),
        (None, "::1", True),
        (None, "192.168.1.20", True),
        (None, "evil.example", False),
        (None, "localhost.evil.example", False),
        (None, None, False),
        ("app.example", "app.example", True),
        ("app.example", "www.app.example", False),
        (".app.example", "www.app.example", True),
        (".app.example", "app.example", True),
        (".app.example", "evilapp.example", False),
        ("*", "anything.example", True),
    ],
)
def test_allowed_hosts_table(spec: str | None, host: str | None, allowed: bool) -> None:
    """IP literals and localhost always; names only when listed; a leading dot allows subdomains."""
    assert parse_allowed(spec).allows(host) is allowed


async def test_duplicate_or_missing_host_is_refused() -> None:
    """Two Host headers, or none, are refused: which one would a proxy have routed?"""
    socketio = SocketServer()
    async with running(socketio):
        port = socketio.port
        assert port is not None

        def raw(request: bytes) -> bytes:
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(request)
                return sock.recv(200)

        twice = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n"
        none: Any = b"GET /healthz HTTP/1.1\r\n\r\n"
        for request in (twice, none):
            assert (await asyncio.to_thread(raw, request)).startswith(b"HTTP/1.1 400")
