"""Flask-SocketIO's names a porter looks for, and the app's own pages on the server's port."""

from __future__ import annotations

import asyncio
import http.client
from pathlib import Path
from typing import Any

import pytest
from conftest import running, until

from plainsocket import SocketServer, emit, request


async def test_event_decorator_names_the_handler_after_the_function(opened: Any) -> None:
    """@socketio.event and @socketio.event(namespace=...) register by function name."""
    socketio = SocketServer()

    @socketio.event
    def my_event(data: Any) -> Any:
        return {"got": data}

    @socketio.event(namespace="/chat")
    def hello() -> str:
        return "from chat"

    async with running(socketio) as url:
        client = await opened(url)
        assert (await client.call("my_event", 5, id=1))["data"] == {"got": 5}
        await client.join("/chat")
        assert (await client.call("hello", None, "/chat", id=2))["data"] == "from chat"


async def test_on_error_receives_the_exception_and_the_client_still_gets_handler_error(opened: Any) -> None:
    """on_error(namespace) and on_error_default receive the exception with request.event; the client is told."""
    socketio = SocketServer()
    seen: list[tuple[str, str, Any]] = []

    @socketio.on("boom", namespace="/chat")
    def boom(data: Any) -> None:
        raise ValueError("chat broke")

    @socketio.on("boom")
    def root_boom(data: Any) -> None:
        raise KeyError("root broke")

    @socketio.on_error("/chat")
    def chat_error(exc: Exception) -> None:
        seen.append(("/chat", repr(exc), request.event))

    @socketio.on_error_default
    def default_error(exc: Exception) -> None:
        seen.append((request.namespace, repr(exc), request.event))

    async with running(socketio) as url:
        client = await opened(url)
        await client.join("/chat")
        frame = await client.call("boom", {"x": 1}, "/chat", id=1)
        assert (frame["event"], frame["data"]["code"]) == ("error", "handler_error")
        frame = await client.call("boom", "y", id=2)
        assert (frame["event"], frame["data"]["code"]) == ("error", "handler_error")
        await until(lambda: len(seen) == 2)
    assert seen == [
        ("/chat", "ValueError('chat broke')", {"message": "boom", "args": ({"x": 1},)}),
        ("/", "KeyError('root broke')", {"message": "boom", "args": ("y",)}),
    ]


async def test_emit_with_callback_receives_the_clients_ack(opened: Any) -> None:
    """emit(..., callback=fn) in a handler, and socketio.emit(..., to=sid, callback=fn): fn gets the ack."""
    socketio = SocketServer()
    acks: list[tuple[str, Any]] = []

    @socketio.on("ask me")
    def ask_me() -> None:
        emit("question", "2+2?", callback=lambda answer: acks.append(("handler", answer)))

    async with running(socketio) as url:
        client = await opened(url)
        await client.send("ask me")
        question = await client.expect("question")
        await client.send("ack", 4, id=question["id"])
        await until(lambda: acks == [("handler", 4)])
        socketio.emit("question", "3+3?", to=client.sid, callback=lambda answer: acks.append(("server", answer)))
        question = await client.expect("question")
        await client.send("ack", 6, id=question["id"])
        await until(lambda: acks == [("handler", 4), ("server", 6)])
        with pytest.raises(ValueError, match="to=sid"):
            socketio.emit("question", "to all?", callback=print)


async def test_callback_never_called_is_reported(opened: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A callback whose client goes away is not called, and a warning says so."""
    socketio = SocketServer()
    called: list[Any] = []
    async with running(socketio) as url:
        client = await opened(url)
        socketio.emit("question", "?", to=client.sid, callback=called.append)
        await client.expect("question")
        await client.close()
        await until(lambda: any("callback of 'question' not called" in r.getMessage() for r in caplog.records))
    assert called == []


async def test_stop_from_a_handler_shuts_the_server_down(opened: Any) -> None:
    """socketio.stop() inside a handler closes every client with 1001, as SIGTERM does."""
    socketio = SocketServer()
    socketio.on_event("quit", socketio.stop)
    serving = asyncio.ensure_future(socketio._serve_until_signal("127.0.0.1", 0, None, None))
    await until(lambda: socketio.port is not None)
    client = await opened(f"ws://127.0.0.1:{socketio.port}")
    await client.send("quit")
    await asyncio.wait_for(serving, 10)
    await client.ws.wait_closed()
    assert client.ws.close_code == 1001


# -- The app's own pages -------------------------------------------------------------------------


def http_request(port: int, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        body = b"" if method == "HEAD" else response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text("<h1>my app</h1>")
    assets = tmp_path / "public"
    assets.mkdir()
    (assets / "app.js").write_text("console.log('mine')")
    (tmp_path / "secret.txt").write_text("top secret")
    return tmp_path


async def test_the_apps_page_replaces_the_demo_page_and_client_js_stays(site: Path) -> None:
    """static_files: the app's index.html at /, assets under a prefix, /client.js still served, 404 elsewhere."""
    socketio = SocketServer(static_files={"/": "index.html", "/assets": "public"}, static_dir=site)
    async with running(socketio):
        assert socketio.port is not None
        port = socketio.port
        status, headers, body = await asyncio.to_thread(http_request, port, "GET", "/")
        assert (status, body, headers["content-type"]) == (200, b"<h1>my app</h1>", "text/html; charset=utf-8")
        status, headers, body = await asyncio.to_thread(http_request, port, "GET", "/assets/app.js")
        assert (status, headers["content-type"]) == (200, "text/javascript; charset=utf-8")
        status, headers, body = await asyncio.to_thread(http_request, port, "GET", "/client.js")
        assert status == 200 and b"export function connect" in body and headers["access-control-allow-origin"] == "*"
        for path in ("/secret.txt", "/assets/../secret.txt", "/assets/%2e%2e/secret.txt", "/nothing"):
            status, _, body = await asyncio.to_thread(http_request, port, "GET", path)
            assert status == 404 and b"top secret" not in body, path


async def test_head_405_and_conditional_requests_over_http(site: Path) -> None:
    """HEAD has the headers and no body; POST gets 405 with Allow; an ETag revalidates to 304."""
    socketio = SocketServer(static_files={"/": "index.html"}, static_dir=site)
    async with running(socketio):
        port = socketio.port
        assert port is not None
        status, headers, body = await asyncio.to_thread(http_request, port, "HEAD", "/")
        assert (status, body, headers["content-length"]) == (200, b"", str(len("<h1>my app</h1>")))
        status, headers, _ = await asyncio.to_thread(http_request, port, "POST", "/")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        status, headers, _ = await asyncio.to_thread(http_request, port, "GET", "/")
        etag = headers["etag"]
        status, headers, body = await asyncio.to_thread(http_request, port, "GET", "/", {"If-None-Match": etag})
        assert (status, body) == (304, b"")
        status, _, _ = await asyncio.to_thread(http_request, port, "HEAD", "/healthz")
        assert status == 200


async def test_a_websocket_handshake_must_be_a_get(site: Path) -> None:
    """A POST carrying Upgrade: websocket is answered 405, never upgraded (RFC 6455 4.1)."""
    socketio = SocketServer()
    async with running(socketio):
        assert socketio.port is not None
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        }
        status, _, _ = await asyncio.to_thread(http_request, socketio.port, "POST", "/", headers)
        assert status == 405
        assert socketio.connection_count() == 0


async def test_without_a_page_of_its_own_the_app_gets_the_demo_page() -> None:
    """An app that serves no / gets the demo page there."""
    socketio = SocketServer()
    async with running(socketio):
        assert socketio.port is not None
        status, _, body = await asyncio.to_thread(http_request, socketio.port, "GET", "/")
        assert status == 200 and b"<title>" in body and b"/client.js" in body


def test_bad_static_config_is_refused_at_start(tmp_path: Path) -> None:
    """A static_files entry whose path does not exist is a clear error when the server starts."""
    socketio = SocketServer(static_files={"/": "nowhere.html"}, static_dir=tmp_path)
    with pytest.raises(ValueError, match=r"nowhere\.html"):
        asyncio.run(socketio.start("127.0.0.1", 0))

