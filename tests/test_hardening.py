"""Hardening: every limit and every kind of bad input, over real sockets.

Each test pushes one limit or one bad input and asserts the documented outcome (an ``error``
code, a close code, a disconnect reason), then that the same connection, or the server, still
works. SECURITY.md lists every limit with the test that proves it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, require, running, until
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wire import Wire

from plainsocket import (
    CallTimeoutError,
    ClientDisconnectedError,
    LimitExceededError,
    SocketServer,
    emit,
    join_room,
    leave_room,
    request,
    rooms,
    session,
)
from plainsocket.protocol import encode

# -- Helpers ---------------------------------------------------------------------------------


def add(data: list[int]) -> int:
    return sum(data)


def echo(data: Any) -> None:
    emit("echoed", data)


def event_length(event: str, data: Any) -> int:
    return len(event)


def make_app(**options: Any) -> SocketServer:
    """A server with the handlers the limit tests use, in '/' and '/chat'."""
    socketio = SocketServer(**options)
    for namespace in ("/", "/chat"):
        socketio.on_event("add", add, namespace)
        socketio.on_event("echo", echo, namespace)
        socketio.on_event("*", event_length, namespace)
    return socketio


async def still_works(client: Wire, namespace: str = "/") -> None:
    """Assert that ``client`` still gets an answer on ``namespace``."""
    frame = await client.call("add", [2, 3], namespace, id=424242)
    assert (frame["event"], frame["namespace"], frame["data"]) == ("ack", namespace, 5), frame


def reasons_by_sid(socketio: SocketServer, namespace: str = "/") -> dict[str, str]:
    """Record the disconnect reason of every client of ``namespace``."""
    reasons: dict[str, str] = {}

    @socketio.on("disconnect", namespace=namespace)
    def record(reason: str) -> None:
        reasons[request.sid] = reason

    return reasons


def port_of(socketio: SocketServer) -> int:
    assert socketio.port is not None, "start the server first"
    return socketio.port


def handshake_request(port: int, extra: str = "") -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


async def raw_socket(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    """Open a non-blocking TCP connection to the server; SO_RCVBUF is set before connecting."""
    sock = socket.socket()
    sock.setblocking(False)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def raw_request(sock: socket.socket, data: bytes) -> bytes:
    """Send an HTTP request; return the response head (everything up to the blank line)."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, data)
    head = b""
    async with asyncio.timeout(5):
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 1024)
            if not chunk:
                break
            head += chunk
    return head


async def stalled_client(port: int, rcvbuf: int | None = 4096) -> socket.socket:
    """A client that completes the WebSocket handshake, then never reads nor answers pings."""
    sock = await raw_socket(port, rcvbuf=rcvbuf)
    head = await raw_request(sock, handshake_request(port))
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def client_frame(text: str) -> bytes:
    """Encode one masked text frame, as a client must send it (RFC 6455 section 5.3)."""
    payload = text.encode()
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = bytes([0x81, 0x80 | size])
    elif size < 2**16:
        head = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


class Inbox:
    """Read every frame a client receives, in a task; await a count instead of sleeping."""

    def __init__(self, ws: ClientConnection) -> None:
        self.frames: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self.task = asyncio.ensure_future(self._read(ws))

    async def _read(self, ws: ClientConnection) -> None:
        async for message in ws:
            self.frames.append(json.loads(message))
            self._changed.set()

    async def wait_for(self, count: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                if self.task.done():
                    self.task.result()  # raises what ended the reader
                    raise AssertionError(f"connection closed after {len(self.frames)} frames")
                self._changed.clear()
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait([changed, self.task], return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()

    def stop(self) -> None:
        self.task.cancel()


def queued(socketio: SocketServer, sid: str) -> int:
    """Bytes the server holds for ``sid``: framed but not yet written, plus the transport's buffer."""
    ws = socketio._connections[sid].ws
    return ws.transport.get_write_buffer_size() + sum(map(len, ws.protocol.writes))


class ServerThreads:
    """``python server.py`` whose stdout and stderr are read as they come: under load a full pipe
    would block the server (conftest's ``server_process`` reads them only at the end)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "server.py", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.port = 0
        ready = threading.Event()

        def read_err() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.err.append(line)
                found = re.search(r"listening on https?://[\d.]+:(\d+)", line)
                if found:
                    self.port = int(found.group(1))
                    ready.set()
            ready.set()

        def read_out() -> None:
            assert self.proc.stdout is not None
            self.out.extend(self.proc.stdout)

        self.readers = [threading.Thread(target=read, daemon=True) for read in (read_err, read_out)]
        for reader in self.readers:
            reader.start()
        if not ready.wait(30) or not self.port:
            raise RuntimeError(f"server did not start: {''.join(self.err)}")
        self.url = f"ws://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM the server; return its exit code once it exited and its output is read."""
        self.proc.terminate()
        code = self.proc.wait(timeout)
        for reader in self.readers:
            reader.join(5)
        return code


@pytest.fixture
def server_threads() -> Iterator[Any]:
    started: list[ServerThreads] = []

    def start(*args: str) -> ServerThreads:
        started.append(ServerThreads(*args))
        return started[-1]

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.split(".")[0] in LOGGERS]


LOGGERS = ("plainsocket", "websockets")


# -- Parsing: depth, strict JSON, names, ids --------------------------------------------------

DEEP = 100_000


def chat_frame(data: str, event: str = '"add"', extra: str = "") -> str:
    return '{"event":' + event + ',"namespace":"/chat","data":' + data + extra + "}"


REFUSED_FRAMES = [
    # frame, error code, error namespace, error id
    pytest.param(chat_frame("[" * 32 + "]" * 32), "too_deep", "/", None, id="depth-33"),
    pytest.param(chat_frame("[" * DEEP + "]" * DEEP), "too_deep", "/", None, id="100k-deep-arrays"),
    pytest.param(chat_frame('{"a":' * DEEP + "0" + "}" * DEEP), "too_deep", "/", None, id="100k-deep-objects"),
    pytest.param("[" * DEEP, "too_deep", "/", None, id="100k-unclosed"),
    pytest.param(chat_frame("Infinity"), "not_strict_json", "/", None, id="Infinity"),
    pytest.param(chat_frame("[-Infinity]"), "not_strict_json", "/", None, id="-Infinity"),
    pytest.param(chat_frame('{"x":[NaN]}'), "not_strict_json", "/", None, id="nested-NaN"),
    pytest.param(chat_frame('"\\udc00"'), "not_strict_json", "/", None, id="lone-low-surrogate"),
    pytest.param(chat_frame('{"\\ud800":1}'), "not_strict_json", "/", None, id="surrogate-in-key"),
    pytest.param(chat_frame("1", event='"\\ud83d"'), "not_strict_json", "/", None, id="surrogate-in-event"),
    pytest.param(chat_frame("1" * 5000), "not_strict_json", "/", None, id="5000-digit-int"),
    pytest.param(chat_frame("-" + "9" * 5000), "not_strict_json", "/", None, id="5000-digit-negative-int"),
    pytest.param(chat_frame("1e999"), "not_strict_json", "/", None, id="float-overflow-to-infinity"),
    pytest.param(chat_frame("-" + "1" * 400 + ".5"), "not_strict_json", "/", None, id="long-float-to-infinity"),
    pytest.param(
        chat_frame("1", event='"' + "e" * 257 + '"', extra=',"id":3'), "invalid_event", "/chat", 3, id="event-257"
    ),
    pytest.param(
        '{"event":"add","namespace":"/' + "n" * 256 + '"}', "invalid_namespace", "/", None, id="namespace-257"
    ),
    pytest.param(chat_frame("[1]", extra=f',"id":{2**53}'), "invalid_id", "/chat", None, id="id-2**53"),
    pytest.param(chat_frame("[1]", extra=',"id":1.0'), "invalid_id", "/chat", None, id="id-float"),
    pytest.param(chat_frame("[1]", extra=',"id":true'), "invalid_id", "/chat", None, id="id-true"),
    pytest.param(chat_frame("[1]", extra=',"id":"5"'), "invalid_id", "/chat", None, id="id-string"),
]


@pytest.mark.parametrize(("frame", "code", "namespace", "id"), REFUSED_FRAMES)
async def test_refused_frame_gets_its_error_and_the_socket_keeps_working(
    opened: Any, frame: str, code: str, namespace: str, id: int | None
) -> None:
    """Each refused frame gets its error code at once (no stall, even 100k deep); the socket still works."""
    socketio = make_app()
    async with running(socketio) as url:
        client = await opened(url)
        await client.join("/chat")
        started = time.monotonic()
        await client.send_raw(frame)
        error = await client.expect("error", namespace)
        assert time.monotonic() - started < 2
        assert error["data"]["code"] == code
        assert error.get("id") == id
        await still_works(client, "/chat")


ACCEPTED_FRAMES = [
    # frame, the answer's event, the answer's data
    pytest.param(chat_frame("[" * 31 + "]" * 31, '"echo"'), "echoed", json.loads("[" * 31 + "]" * 31), id="depth-32"),
    pytest.param(chat_frame("null", '"' + "e" * 256 + '"', ',"id":1'), "ack", 256, id="event-256"),
    pytest.param('{"event":"add","namespace":"/' + "n" * 255 + '"}', "error", None, id="namespace-256"),
    pytest.param(chat_frame("[1]", extra=f',"id":{2**53 - 1}'), "ack", 1, id="id-2**53-1"),
    pytest.param(chat_frame('"\\ud83d\\ude00"', '"echo"'), "echoed", "\U0001f600", id="surrogate-pair"),
    pytest.param(chat_frame("1" * 4300, '"echo"'), "echoed", int("1" * 4300), id="4300-digit-int"),
    pytest.param(chat_frame("1e308", '"echo"'), "echoed", 1e308, id="large-finite-float"),
]


@pytest.mark.parametrize(("frame", "event", "data"), ACCEPTED_FRAMES)
async def test_frame_at_the_limit_is_accepted(opened: Any, frame: str, event: str, data: Any) -> None:
    """The limits sit exactly where docs/protocol.md puts them: the last valid value passes."""
    socketio = make_app()
    async with running(socketio) as url:
        client = await opened(url)
        await client.join("/chat")
        await client.send_raw(frame)
        answer = await client.recv()
        assert answer["event"] == event, answer
        if event == "error":  # a valid namespace nobody joined: parsed, then refused
            assert answer["data"]["code"] == "not_connected"
        else:
            assert answer["data"] == data


async def test_max_depth_and_max_event_length_are_configurable(opened: Any) -> None:
    """max_depth and max_event_length move the limits: at the limit accepted, one past refused."""
    socketio = make_app(max_depth=4, max_event_length=10)
    async with running(socketio) as url:
        client = await opened(url)
        await client.send("echo", [[[1]]])  # the envelope, then three levels: 4
        assert (await client.expect("echoed"))["data"] == [[[1]]]
        await client.send("echo", [[[[1]]]])
        assert (await client.expect("error"))["data"]["code"] == "too_deep"
        assert (await client.call("e" * 10, None, id=1))["data"] == 10
        frame = await client.call("e" * 11, None, id=2)
        assert frame["event"] == "error" and frame["data"]["code"] == "invalid_event"
        await still_works(client)


async def test_max_event_length_can_be_raised(opened: Any) -> None:
    """max_event_length above the default admits longer names (the limit is the server's, not 256)."""
    socketio = make_app(max_event_length=1000)
    async with running(socketio) as url:
        client = await opened(url)
        await client.send("e" * 1000, None, id=1)
        assert await client.recv() == {"event": "ack", "namespace": "/", "data": 1000, "id": 1}
        await client.send("e" * 1001, None, id=2)
        frame = await client.recv()
        assert (frame["event"], frame["data"]["code"], frame.get("id")) == ("error", "invalid_event", 2)


# -- Message size -------------------------------------------------------------------------------


async def test_message_at_max_size_is_accepted_one_byte_more_closes_1009(opened: Any) -> None:
    """A message of exactly max_message_size bytes is handled; one byte more closes with 1009."""
    socketio = make_app(max_message_size=1000)
    async with running(socketio) as url:
        client = await opened(url)
        frame = '{"event":"echo","data":"' + "a" * 974 + '"}'
        assert len(frame) == 1000
        await client.send_raw(frame)
        assert (await client.expect("echoed"))["data"] == "a" * 974
        await client.send_raw(frame[:-2] + 'a"}')
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 1009
        await until(lambda: socketio.connection_count() == 0)
        await still_works(await opened(url))


async def test_fragmented_message_over_max_size_closes_1009(opened: Any) -> None:
    """Fragments that add up past max_message_size close with 1009, though each fits."""
    socketio = make_app(max_message_size=1000)
    async with running(socketio) as url:
        client = await opened(url)
        await client.ws.send(["a" * 600, "b" * 600])
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 1009
        await still_works(await opened(url))


async def test_compressed_message_inflating_past_max_size_closes_1009(opened: Any) -> None:
    """With compression on, max_message_size applies after inflating: a deflate bomb closes 1009."""
    socketio = make_app(max_message_size=1000, compression=True)
    async with running(socketio) as url:
        client = await opened(url, compression="deflate")
        await client.ws.send('{"event":"echo","data":"' + "0" * 100_000 + '"}')  # ~100 bytes on the wire
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 1009
        await still_works(await opened(url, compression="deflate"))


async def test_oversized_handshake_gets_431(opened: Any) -> None:
    """A handshake header over 8 KiB is refused with HTTP 431 before any connection exists."""
    socketio = make_app()
    async with running(socketio) as url:
        sock = await raw_socket(port_of(socketio))
        try:
            head = await raw_request(sock, handshake_request(port_of(socketio), f"X-Big: {'a' * 9000}\r\n"))
        finally:
            sock.close()
        assert head.startswith(b"HTTP/1.1 431"), head
        assert socketio.connection_count() == 0
        await still_works(await opened(url))


# -- Namespaces, rooms, acknowledgements, backlog -----------------------------------------------


async def test_max_namespaces_refuses_with_connect_error(opened: Any) -> None:
    """Past max_namespaces ('/' counts) a connect gets 'too many namespaces'; leaving frees a slot."""
    socketio = SocketServer(max_namespaces=3)
    connects: list[str] = []

    def on_connect(auth: Any) -> None:
        connects.append(request.namespace)

    for namespace in ("/a", "/b", "/c"):
        socketio.on_event("connect", on_connect, namespace)
        socketio.on_event("add", add, namespace)
    async with running(socketio) as url:
        client = await opened(url)
        await client.join("/a")
        await client.join("/b")
        await client.send("connect", None, "/nowhere")  # unknown: refused, does not count
        assert (await client.expect("connect_error", "/nowhere"))["data"] == {"message": "unknown namespace"}
        await client.send("connect", None, "/c")
        frame = await client.expect("connect_error", "/c")
        assert frame["data"] == {"message": "too many namespaces"}
        assert connects == ["/a", "/b"]  # the connect handler of /c never ran
        assert socketio.sids("/c") == []
        await client.send("disconnect", None, "/a")
        await client.join("/c")
        await still_works(client, "/c")


async def test_max_rooms_in_a_handler_gives_limit_exceeded(opened: Any, caplog: pytest.LogCaptureFixture) -> None:
    """join_room past max_rooms fails the handler with limit_exceeded (not logged as a crash)."""
    socketio = make_app(max_rooms=3)

    @socketio.on("join")
    def join(room: str) -> list[str]:
        join_room(room)
        return rooms()

    @socketio.on("join async")
    async def join_async(room: str) -> list[str]:
        join_room(room)
        return rooms()

    @socketio.on("leave")
    def leave(room: str) -> None:
        leave_room(room)

    async with running(socketio) as url:
        client = await opened(url)
        with caplog.at_level(logging.INFO):
            for n in range(1, 4):
                assert (await client.call("join", f"r{n}", id=n))["data"] == [client.sid, "r1", "r2", "r3"][: n + 1]
            for event in ("join", "join async"):
                frame = await client.call(event, "r4", id=4)
                assert frame == {
                    "event": "error",
                    "namespace": "/",
                    "data": {"code": "limit_exceeded", "message": "more than 3 rooms"},
                    "id": 4,
                }
        assert error_records(caplog) == []
        assert socketio.members("r4") == []
        with pytest.raises(LimitExceededError):
            socketio.enter_room(client.sid, "r5")
        await client.call("leave", "r1", id=5)
        assert (await client.call("join", "r4", id=6))["data"] == [client.sid, "r2", "r3", "r4"]
        await still_works(client)


async def test_joining_a_room_again_at_max_rooms_is_idempotent(opened: Any) -> None:
    """Joining a room the client is already in does not count against max_rooms."""
    socketio = make_app(max_rooms=2)
    async with running(socketio) as url:
        client = await opened(url)
        socketio.enter_room(client.sid, "r1")
        socketio.enter_room(client.sid, "r2")
        socketio.enter_room(client.sid, "r2")  # already in it: nothing to refuse
        assert socketio.rooms(client.sid) == [client.sid, "r1", "r2"]


async def test_max_pending_acks_raises_and_the_map_empties(opened: Any) -> None:
    """Past max_pending_acks call() raises LimitExceededError (a handler's client gets limit_exceeded);
    timed-out calls leave nothing pending and new calls work."""
    socketio = make_app(max_pending_acks=3)

    @socketio.on("ask me")
    async def ask_me() -> Any:
        return await socketio.call("question", "from a handler", to=request.sid, timeout=5)

    async with running(socketio) as url:
        client = await opened(url)
        conn = socketio._connections[client.sid]
        calls = [asyncio.ensure_future(socketio.call("question", n, to=client.sid, timeout=0.3)) for n in range(3)]
        for n in range(3):
            assert (await client.expect("question"))["data"] == n  # never acknowledged
        with pytest.raises(LimitExceededError):
            await socketio.call("question", 3, to=client.sid, timeout=0.3)
        frame = await client.call("ask me", None, id=50)
        assert frame["event"] == "error" and frame["data"]["code"] == "limit_exceeded"
        assert len(conn.pending) == 3
        for call in calls:
            with pytest.raises(CallTimeoutError):
                await call
        assert conn.pending == {}
        call = asyncio.ensure_future(socketio.call("question", "again", to=client.sid, timeout=5))
        question = await client.expect("question")
        await client.send("ack", "answer", id=question["id"])
        assert await call == "answer"
        assert conn.pending == {}
        await still_works(client)


async def test_max_backlog_refuses_frames_behind_a_busy_handler(opened: Any) -> None:
    """Behind a running async handler at most max_backlog frames wait; the others get limit_exceeded."""
    socketio = make_app(max_backlog=3)
    gate = asyncio.Event()

    @socketio.on("wait")
    async def wait() -> str:
        await gate.wait()
        return "released"

    async with running(socketio) as url:
        client = await opened(url)
        await client.send("wait", None, id=1)
        for id in range(2, 8):
            await client.send("add", [id], id=id)
        for id in (5, 6, 7):  # refused at once, while the handler still runs
            frame = await client.expect("error")
            assert (frame["id"], frame["data"]["code"]) == (id, "limit_exceeded")
        gate.set()
        assert (await client.expect("ack"))["data"] == "released"
        assert [(await client.expect("ack"))["id"] for _ in range(3)] == [2, 3, 4]
        await still_works(client)


# -- Rate limit ---------------------------------------------------------------------------------


async def test_rate_limit_refuses_then_closes_1008_and_spares_others(opened: Any) -> None:
    """Past the burst each frame gets rate_limited; rate_burst refusals in a row close with 1008.
    Another client is unaffected meanwhile."""
    socketio = make_app(rate_limit=0.1, rate_burst=5)  # one token per 10 s: no refill during the test
    reasons = reasons_by_sid(socketio)
    async with running(socketio) as url:
        flooder, bystander = await opened(url), await opened(url)
        for id in range(1, 6):
            assert (await flooder.call("add", [id], id=id))["data"] == id
        for id in range(6, 11):
            await flooder.send("add", [id], id=id)
            frame = await flooder.expect("error")
            assert frame["data"]["code"] == "rate_limited"
            assert (frame["id"], frame["namespace"]) == (id, "/"), "it answers the refused frame"
        for id in range(1, 4):
            assert (await bystander.call("add", [id], id=id))["data"] == id
        await flooder.send("add", [11], id=11)
        with pytest.raises(ConnectionClosed):
            await flooder.recv()
        assert (flooder.ws.close_code, flooder.ws.close_reason) == (1008, "rate limit exceeded")
        await until(lambda: reasons.get(flooder.sid) == "rate limited")
        await still_works(bystander)
        await still_works(await opened(url))


async def test_rate_limited_connection_recovers(opened: Any) -> None:
    """A short burst over the limit is refused frame by frame; once tokens refill the socket works."""
    socketio = make_app(rate_limit=5, rate_burst=5)
    async with running(socketio) as url:
        client = await opened(url)
        for id in range(1, 11):
            await client.send("add", [id], id=id)
        answers = [await client.recv() for _ in range(10)]
        acks = [frame for frame in answers if frame["event"] == "ack"]
        refused = [frame for frame in answers if frame["event"] == "error"]
        assert len(acks) >= 5 and refused
        assert {frame["data"]["code"] for frame in refused} == {"rate_limited"}
        await asyncio.sleep(0.5)  # the bucket refills with time: 2.5 tokens
        await still_works(client)


# -- Connections ---------------------------------------------------------------------------------


async def expect_refused_4002(url: str, **options: Any) -> None:
    ws = await connect(url, **options)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)  # no connect frame first
    assert (ws.close_code, ws.close_reason) == (4002, "too many connections")


async def test_max_connections_closes_4002(opened: Any) -> None:
    """Past max_connections a new socket is closed with 4002 before any frame; a freed slot is reused."""
    socketio = make_app(max_connections=2)
    reasons = reasons_by_sid(socketio)
    async with running(socketio) as url:
        a, b = await opened(url), await opened(url)
        await expect_refused_4002(url)
        assert socketio.connection_count() == 2 and reasons == {}
        await a.close()
        await until(lambda: socketio.connection_count() == 1)
        await still_works(await opened(url))
        await still_works(b)


async def test_max_connections_per_address_closes_4002(opened: Any) -> None:
    """Past max_connections_per_address an address gets 4002; another address is still served."""
    socketio = make_app(max_connections_per_address=2)
    async with running(socketio) as url:
        await opened(url)
        await opened(url)
        await expect_refused_4002(url)
        other = await opened(url, local_addr=("127.0.0.2", 0))
        await still_works(other)
        assert socketio._per_address == {"127.0.0.1": 2, "127.0.0.2": 1}


async def test_sessions_kept_for_recovery_count_against_their_address(opened: Any) -> None:
    """A session kept for recovery still counts against its address: one address that connects and
    drops in a loop can not fill the server and lock every other address out for the window."""
    socketio = make_app(recovery_window=60, max_connections_per_address=3, max_connections=20)
    async with running(socketio) as url:
        for _ in range(30):
            ws = await connect(url)
            try:
                await ws.recv()
            except ConnectionClosed:
                continue  # refused: this address has enough sessions
            ws.transport.abort()
            await ws.wait_closed()
        await until(lambda: all(conn.detached for conn in socketio._connections.values()))
        assert len(socketio._connections) <= 3
        await still_works(await opened(url, local_addr=("127.0.0.2", 0)))


# -- Timeouts and stuck peers ---------------------------------------------------------------------


async def test_open_timeout_closes_idle_and_incomplete_handshakes(opened: Any) -> None:
    """A TCP connection that never sends (or never finishes) its HTTP request is closed at open_timeout."""
    socketio = make_app(open_timeout=0.5)
    loop = asyncio.get_running_loop()
    async with running(socketio) as url:
        idle = await raw_socket(port_of(socketio))
        partial = await raw_socket(port_of(socketio))
        await loop.sock_sendall(partial, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        try:
            bystander = await opened(url)
            for sock in (idle, partial):
                try:
                    assert await asyncio.wait_for(loop.sock_recv(sock, 1024), 5) == b""
                except ConnectionResetError:
                    pass
            assert 0.4 < time.monotonic() - started < 3
            assert socketio.connection_count() == 1
            await still_works(bystander)
        finally:
            idle.close()
            partial.close()


async def test_slow_consumer_is_dropped_with_4000_and_others_miss_nothing(opened: Any) -> None:
    """A client that stops reading during a broadcast storm is closed with 4000 ('slow consumer');
    its write buffer never passes max_send_buffer plus one frame; the others get every frame in order."""
    max_send_buffer = 64 * 1024
    socketio = SocketServer(max_send_buffer=max_send_buffer, close_timeout=0.5)
    reasons = reasons_by_sid(socketio)
    async with running(socketio) as url:
        readers = [await opened(url) for _ in range(3)]
        inboxes = [Inbox(reader.ws) for reader in readers]
        slow = await stalled_client(port_of(socketio))
        try:
            await until(lambda: socketio.connection_count() == 4)
            (slow_sid,) = set(socketio.sids()) - {reader.sid for reader in readers}
            slow_conn = socketio._connections[slow_sid]
            payload = "x" * 1000
            frame_size = len(encode("seq", {"n": 99_999, "p": payload}))
            sent = biggest = 0
            deadline = time.monotonic() + 20
            batches_after_drop = 0
            while batches_after_drop < 3:
                assert time.monotonic() < deadline and sent < 50_000, "the slow consumer was never dropped"
                for _ in range(100):
                    socketio.emit("seq", {"n": sent, "p": payload})
                    sent += 1
                    if slow_sid in socketio._connections:
                        biggest = max(biggest, queued(socketio, slow_sid))
                for inbox in inboxes:
                    await inbox.wait_for(sent)
                if slow_sid in reasons:
                    batches_after_drop += 1
        finally:
            slow.close()
        assert reasons[slow_sid] == "slow consumer"
        close = slow_conn.ws.protocol.close_sent
        assert close is not None and (close.code, close.reason) == (4000, "slow consumer")
        # One frame past the bound, plus each queued frame's 4-byte header, plus a close frame or a ping.
        framing = 4 * (max_send_buffer // frame_size + 2)
        assert biggest <= max_send_buffer + frame_size + framing + 64
        for inbox in inboxes:
            assert [frame["data"]["n"] for frame in inbox.frames] == list(range(sent))
            inbox.stop()
        assert sorted(socketio.sids()) == sorted(reader.sid for reader in readers)


async def test_send_timeout_drops_a_stuck_client_under_the_buffer_bound(opened: Any) -> None:
    """A client whose buffered frames do not move for send_timeout is closed with 4000, even though
    its buffer is far under max_send_buffer (keepalive can not see it: its ping waits behind the buffer)."""
    socketio = make_app(max_send_buffer=2**24, send_timeout=0.5, close_timeout=0.5, ping_interval=None)
    reasons = reasons_by_sid(socketio)
    async with running(socketio) as url:
        bystander = await opened(url)
        stuck = await stalled_client(port_of(socketio))
        try:
            await until(lambda: socketio.connection_count() == 2)
            (sid,) = set(socketio.sids()) - {bystander.sid}
            conn = socketio._connections[sid]
            payload = "x" * 1000
            sent = 0
            while conn.ws.transport.get_write_buffer_size() == 0:  # until the kernel buffers are full
                assert sent < 20_000
                for _ in range(100):
                    socketio.emit("seq", {"n": sent, "p": payload}, to=sid)
                    sent += 1
                await asyncio.sleep(0)  # let the server write this batch
            stalled_at = time.monotonic()
            await until(lambda: sid in reasons, timeout=5)
            assert 0.5 <= time.monotonic() - stalled_at < 4
        finally:
            stuck.close()
        assert reasons[sid] == "slow consumer"
        close = conn.ws.protocol.close_sent
        assert close is not None and close.code == 4000
        await still_works(bystander)


async def test_half_open_client_gets_ping_timeout_while_server_sends(opened: Any) -> None:
    """A peer that vanished without FIN while the server keeps sending to it is dropped with 'ping timeout'."""
    socketio = make_app(ping_interval=0.2, ping_timeout=0.3, close_timeout=0.3, send_timeout=30)
    reasons = reasons_by_sid(socketio)
    async with running(socketio) as url:
        bystander = await opened(url)
        gone = await stalled_client(port_of(socketio), rcvbuf=None)
        try:
            await until(lambda: socketio.connection_count() == 2)
            (sid,) = set(socketio.sids()) - {bystander.sid}
            conn = socketio._connections[sid]

            async def trickle() -> None:
                for n in range(500):
                    socketio.emit("tick", n, to=sid)
                    await asyncio.sleep(0.02)  # pacing, not synchronisation

            sender = asyncio.ensure_future(trickle())
            try:
                await until(lambda: sid in reasons, timeout=5)
            finally:
                sender.cancel()
        finally:
            gone.close()
        assert reasons[sid] == "ping timeout"
        close = conn.ws.protocol.close_sent
        assert close is not None and (close.code, close.reason) == (1011, "keepalive ping timeout")
        await still_works(bystander)


async def test_frames_held_during_a_connect_handler_are_bounded(opened: Any) -> None:
    """Frames queued for a client while its async connect handler runs stay under max_send_buffer
    plus one frame: a slow or stuck auth check can not make the server buffer without limit."""
    max_send_buffer = 64 * 1024
    socketio = make_app(max_send_buffer=max_send_buffer, close_timeout=0.5)
    gate = asyncio.Event()

    @socketio.on("connect", namespace="/slow")
    async def check(auth: Any) -> None:
        await gate.wait()

    async with running(socketio) as url:
        client = await opened(url)
        await client.send("connect", None, "/slow")
        await until(lambda: socketio.registry.is_connected("/slow", client.sid))
        conn = socketio._connections[client.sid]
        payload = "x" * 10_000
        frame_size = len(encode("news", {"n": 999, "p": payload}, "/slow"))
        biggest = 0
        for n in range(400):  # 4 MB
            socketio.emit("news", {"n": n, "p": payload}, namespace="/slow")
            biggest = max(biggest, sum(len(frame) for frame in conn.hold or ()))
        gate.set()
        assert biggest <= max_send_buffer + frame_size
        await still_works(await opened(url))


async def test_slow_consumer_keeps_server_rss_bounded(server_threads: Any) -> None:
    """python server.py: 48 MB broadcast while one client never reads; the server drops it and its RSS
    grows by far less than what that client would have queued."""
    server = server_threads(
        "--max-send-buffer", "65536", "--rate-limit", "100000", "--rate-burst", "100000",
        "--close-timeout", "1", "--recovery-window", "0",
    )  # fmt: skip
    process = psutil.Process(server.proc.pid)
    loop = asyncio.get_running_loop()
    slow = await stalled_client(server.port)
    flooder = await Wire.open(server.url)
    try:
        await loop.sock_sendall(slow, client_frame('{"event":"connect","namespace":"/test"}'))
        await flooder.join("/test")
        await flooder.expect("my response")
        inbox = Inbox(flooder.ws)
        baseline = peak = process.memory_info().rss
        payload = "x" * 32 * 1024
        total, window = 1500, 8
        for n in range(total):
            await inbox.wait_for(n - window)
            await flooder.send("my broadcast event", {"data": {"n": n, "p": payload}}, "/test")
            if n % 50 == 0:
                peak = max(peak, process.memory_info().rss)
        await inbox.wait_for(total)
        peak = max(peak, process.memory_info().rss)
        assert [frame["data"]["data"]["n"] for frame in inbox.frames] == list(range(total))
        inbox.stop()
    finally:
        slow.close()
        await flooder.close()
        code = await asyncio.to_thread(server.stop)
    assert code == 0, server.err
    out = "".join(server.out)
    assert len(re.findall(r"Client disconnected \S+ slow consumer", out)) == 1, out
    growth = (peak - baseline) / 2**20
    assert growth < 24, f"server RSS grew by {growth:.1f} MiB"


# -- Origin, TLS ---------------------------------------------------------------------------------

ORIGINS = [
    # allowed_origins, Origin header ("{port}" is the server's), accepted
    pytest.param(None, None, True, id="no-origin"),
    pytest.param(None, "http://127.0.0.1:{port}", True, id="same-origin"),
    pytest.param(None, "https://127.0.0.1:{port}", True, id="same-host-other-scheme"),
    pytest.param(None, "http://localhost:{port}", False, id="other-host-name"),
    pytest.param(None, "http://127.0.0.1", False, id="no-port"),
    pytest.param(None, "http://127.0.0.1:1", False, id="other-port"),
    pytest.param(None, "http://evil.example", False, id="cross-site"),
    pytest.param(None, "http://127.0.0.1:{port}.evil.com", False, id="host-prefix"),
    pytest.param(None, "http://127.0.0.1:{port}`.evil.com", False, id="backtick"),
    pytest.param(None, "http://127.0.0.1:{port}@evil.com", False, id="userinfo-suffix"),
    pytest.param(None, "http://user@127.0.0.1:{port}", False, id="userinfo-prefix"),
    pytest.param(None, "http://evil.com#@127.0.0.1:{port}", False, id="fragment"),
    pytest.param(None, "http://evil.com/127.0.0.1:{port}", False, id="in-path"),
    pytest.param(None, "null", False, id="null"),
    pytest.param(["http://app.example"], "http://app.example", True, id="allowed"),
    pytest.param(["http://app.example"], "http://app.example.evil.com", False, id="allowed-prefix"),
    pytest.param(["http://app.example"], "https://app.example", False, id="allowed-other-scheme"),
    pytest.param(["http://app.example"], "http://127.0.0.1:{port}", True, id="allowed-plus-same-origin"),
    pytest.param(["http://app.example"], None, True, id="allowed-plus-no-origin"),
    pytest.param("http://a.example, http://b.example/", "http://b.example", True, id="comma-list"),
    pytest.param("*", "http://evil.example", True, id="star"),
]


@pytest.mark.parametrize(("allowed", "origin", "accepted"), ORIGINS)
async def test_origin_check(opened: Any, allowed: Any, origin: str | None, accepted: bool) -> None:
    """A browser Origin must equal the Host (or be allowed); no Origin (wscat, Python) is accepted."""
    socketio = make_app(allowed_origins=allowed)
    async with running(socketio) as url:
        headers = {} if origin is None else {"Origin": origin.format(port=socketio.port)}
        if accepted:
            await still_works(await opened(url, additional_headers=headers))
        else:
            with pytest.raises(InvalidStatus) as refused:
                await opened(url, additional_headers=headers)
            assert refused.value.response.status_code == 403
            assert socketio.connection_count() == 0
            await still_works(await opened(url))


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        pytest.param("Origin: http://127.0.0.1:{port}\r\nOrigin: http://evil.example\r\n", 403, id="two-origins"),
        pytest.param("Origin: http://127.0.0.1:{port}\r\nHost: evil.example\r\n", 400, id="two-hosts"),
        pytest.param("Origin: http://[evil\r\n", 403, id="unparsable-origin"),
        pytest.param("Upgrade: websocket\r\n", 400, id="two-upgrades"),
    ],
)
async def test_ambiguous_handshake_is_refused_without_error_logs(
    opened: Any, caplog: pytest.LogCaptureFixture, extra: str, status: int
) -> None:
    """Repeated or unparsable handshake headers are a client error (4xx), never a server error (500 + traceback)."""
    socketio = make_app()
    async with running(socketio) as url:
        sock = await raw_socket(port_of(socketio))
        try:
            with caplog.at_level(logging.INFO):
                head = await raw_request(sock, handshake_request(port_of(socketio), extra.format(port=socketio.port)))
        finally:
            sock.close()
        assert status <= int(head.split()[1]) < status + 100, head
        assert error_records(caplog) == []
        await still_works(await opened(url))


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 with the openssl command."""
    require(shutil.which("openssl") is not None, "openssl (apt-get install openssl)")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


async def test_tls_wss_and_https_healthz(server_process: Any, tmp_path: Path) -> None:
    """python server.py --certfile --keyfile serves wss:// and https://.../healthz; an untrusting client fails."""
    cert, key = make_certificate(tmp_path)
    server = server_process("--certfile", str(cert), "--keyfile", str(key))
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        ws = await connect(f"wss://127.0.0.1:{server.port}", ssl=trusting)
        client = Wire(ws, json.loads(await ws.recv()))
        assert client.hello["event"] == "connect"
        await client.join("/test")
        await client.expect("my response")
        await client.send("my event", {"data": "over TLS"}, "/test")
        assert (await client.expect("my response"))["data"] == {"data": "over TLS"}

        def healthz() -> Any:
            with urllib.request.urlopen(f"https://127.0.0.1:{server.port}/healthz", context=trusting, timeout=5) as r:
                return json.loads(r.read())

        assert (await asyncio.to_thread(healthz))["connections"] == 1
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(f"wss://127.0.0.1:{server.port}", ssl=ssl.create_default_context())
        await client.close()
    finally:
        code, _, err = await asyncio.to_thread(server.stop)
    assert code == 0, err


# -- Auth gate, reserved names ------------------------------------------------------------------


async def test_refused_client_is_outside_the_namespace(opened: Any) -> None:
    """A refused client gets the handler's message only, receives nothing of the namespace and can not
    be put in its rooms, by the server API or by a handler."""
    socketio = SocketServer()

    @socketio.on("connect", namespace="/vip")
    def check(auth: Any) -> None:
        join_room("lounge")
        session["member"] = auth
        emit("welcome", "secret")
        emit("arrived", request.sid, broadcast=True)
        if auth != "pass":
            raise ConnectionRefusedError("members only")

    @socketio.on("sneak in")
    def sneak_in() -> None:
        join_room("lounge", namespace="/vip")

    async with running(socketio) as url:
        member, outsider = await opened(url), await opened(url)
        await member.send("connect", "pass", "/vip")
        await member.expect("connect", "/vip")
        await member.expect("welcome")
        await member.expect("arrived")
        await outsider.send("connect", "guess", "/vip")
        assert await outsider.recv() == {
            "event": "connect_error",
            "namespace": "/vip",
            "data": {"message": "members only"},
        }
        assert (await member.expect("arrived"))["data"] == outsider.sid  # the handler ran, as written
        socketio.enter_room(outsider.sid, "lounge", namespace="/vip")
        await outsider.call("sneak in", None, id=1)
        assert socketio.members("lounge", namespace="/vip") == [member.sid]
        assert socketio.rooms(outsider.sid, namespace="/vip") == []
        socketio.emit("all", 1, namespace="/vip")
        socketio.emit("room", 2, namespace="/vip", to="lounge")
        socketio.emit("direct", 3, namespace="/vip", to=outsider.sid)
        with pytest.raises(ClientDisconnectedError):  # not a client of /vip: nobody can answer
            await socketio.call("direct call", 4, to=outsider.sid, namespace="/vip", timeout=0.2)
        await member.expect("all")
        await member.expect("room")
        assert await outsider.silent()
        assert "/vip" not in socketio._connections[outsider.sid].sessions  # its session data is gone


async def test_reserved_events_never_reach_handlers(opened: Any) -> None:
    """error, connect_error, heartbeat and an ack nobody waits for reach no handler, not even '*'."""
    socketio = SocketServer()
    called: list[Any] = []
    for namespace in ("/", "/chat"):
        for event in ("error", "connect_error", "ack", "heartbeat"):
            socketio.on_event(event, lambda *args, event=event: called.append((event, args)), namespace)
        socketio.on_event("*", lambda event, data: called.append(("*", event, data)), namespace)

    async with running(socketio) as url:
        client = await opened(url)
        await client.join("/chat")
        for namespace in ("/", "/chat"):
            spoofs = [("error", None, "reserved_event"), ("connect_error", 1, "reserved_event")]
            spoofs += [("ack", None, "unknown_ack"), ("ack", 77, "unknown_ack")]
            for event, id, code in spoofs:
                await client.send(event, "spoof", namespace, id)
                frame = await client.expect("error", namespace)
                assert frame["data"]["code"] == code
                # An unknown ack's id was the server's: the error does not echo it (docs/protocol.md).
                assert frame.get("id") == (id if code == "reserved_event" else None)
            await client.send("heartbeat", "spoof", namespace)
            assert await client.recv() == {"event": "heartbeat", "namespace": "/", "data": None}
        assert called == []
        await client.send("anything", 1, "/chat")
        await until(lambda: called == [("*", "anything", 1)])


async def test_star_event_reaches_catch_all_as_an_event(opened: Any) -> None:
    """A client event named '*' is an event without a handler of its own: the catch-all gets ('*', data)."""
    socketio = SocketServer()

    @socketio.on("*")
    def anything(event: str, data: Any) -> list[Any]:
        return [event, data]

    async with running(socketio) as url:
        client = await opened(url)
        assert await client.call("*", "connect_error", id=1) == {
            "event": "ack",
            "namespace": "/",
            "data": ["*", "connect_error"],
            "id": 1,
        }


# -- Logs and handler failures ------------------------------------------------------------------


async def test_client_text_in_logs_is_escaped_and_truncated(opened: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Event names with newlines or escapes are logged quoted and escaped, long ones truncated."""
    socketio = SocketServer()

    @socketio.on("*")
    def broken(event: str, data: Any) -> None:
        raise RuntimeError("handler bug")

    forged = "evil\nINFO plainsocket: admin logged in\r\x1b[2J"
    async with running(socketio) as url:
        with caplog.at_level(logging.DEBUG):
            client = await opened(url)
            assert (await client.call(forged, None, id=1))["data"]["code"] == "handler_error"
            assert (await client.call("e" * 250 + "\n", None, id=2))["data"]["code"] == "handler_error"
            await client.close()
            await until(lambda: socketio.connection_count() == 0)
    messages = [record.getMessage() for record in caplog.records]
    assert any(repr(forged) in message for message in messages)
    for message in messages:
        assert "\n" not in message and "\r" not in message and "\x1b" not in message, message
    ours = [record.getMessage() for record in caplog.records if record.name == "plainsocket"]
    assert max(map(len, ours)) < 300


async def test_handler_failures_are_logged_and_contained(opened: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Async, unencodable-ack, bad-emit, connect and disconnect handler failures: each logged with its
    traceback, the client gets a generic error, the connection, the others and the cleanup go on."""
    socketio = make_app()

    @socketio.on("async fail")
    async def async_fail() -> None:
        raise RuntimeError("secret async detail")

    @socketio.on("bad ack")
    def bad_ack() -> Any:
        return {1, 2}

    @socketio.on("bad emit")
    def bad_emit() -> None:
        emit("x", object())

    @socketio.on("connect", namespace="/broken")
    def broken_connect(auth: Any) -> None:
        raise RuntimeError("secret connect detail")

    @socketio.on("disconnect")
    def broken_disconnect(reason: str) -> None:
        raise RuntimeError("secret disconnect detail")

    async with running(socketio) as url:
        client, bystander = await opened(url), await opened(url)
        with caplog.at_level(logging.ERROR):
            for id, event in enumerate(("async fail", "bad ack", "bad emit"), 1):
                frame = await client.call(event, None, id=id)
                assert frame["data"] == {"code": "handler_error", "message": "the event handler failed"}
            await client.send("connect", None, "/broken")
            assert (await client.expect("connect_error"))["data"] == {"message": "connection refused"}
            await still_works(client)
            await still_works(bystander)
            await client.close()
            await until(lambda: socketio.connection_count() == 1)
        failures = [record.exc_info[1] for record in caplog.records if record.exc_info]
        assert len(failures) == 5
        assert "secret async detail" in str(failures[0])
        assert isinstance(failures[1], TypeError)  # a set is not JSON
        assert "secret connect detail" in str(failures[3])
        assert "secret disconnect detail" in str(failures[4])
        assert socketio.sids() == [bystander.sid]
        assert not socketio.registry.is_connected("/broken", client.sid)


# -- Abrupt drops, shutdown ----------------------------------------------------------------------


async def test_thousand_connect_drop_cycles_leave_nothing_behind() -> None:
    """1,000 connects and drops (clean, aborted, mid-handshake, mid-handler, in rooms and /chat)
    leave no sid, room, connection, address count or task behind; each disconnect handler runs once."""
    socketio = SocketServer()
    connected: Counter[str] = Counter()
    disconnected: Counter[str] = Counter()
    socketio.on_event("connect", lambda: connected.update([request.sid]))
    socketio.on_event("disconnect", lambda: disconnected.update([request.sid]))

    @socketio.on("connect", namespace="/chat")
    async def chat_connect(auth: Any) -> None:
        await asyncio.sleep(0)

    @socketio.on("join", namespace="/chat")
    def join(room: str) -> bool:
        join_room(room)
        return True

    @socketio.on("slow join", namespace="/chat")
    async def slow_join(room: str) -> None:
        await asyncio.sleep(0.01)
        join_room(room)

    async with running(socketio) as url:
        baseline_tasks = len(asyncio.all_tasks())
        limit = asyncio.Semaphore(20)
        kinds: Counter[int] = Counter()

        async def cycle(n: int) -> None:
            kind = n % 8
            async with limit:
                if kind >= 6:  # TCP only, or a handshake the client never waits for
                    sock = await raw_socket(port_of(socketio))
                    if kind == 7:
                        await asyncio.get_running_loop().sock_sendall(sock, handshake_request(port_of(socketio)))
                    sock.close()
                    kinds[kind] += 1
                    return
                client = await Wire.open(url)
                if kind in (2, 3, 5):
                    await client.join("/chat")
                    await client.call("join", f"room{n % 10}", "/chat")
                if kind == 4:
                    await client.send("connect", None, "/chat")  # dropped while its connect handler runs
                if kind == 5:
                    await client.send("slow join", "late", "/chat")  # dropped while the handler runs
                if kind in (0, 2):
                    await client.close()
                else:
                    client.abort()
                    await client.ws.wait_closed()
                kinds[kind] += 1

        await asyncio.gather(*(cycle(n) for n in range(1000)))
        assert sum(kinds.values()) == 1000
        await until(lambda: socketio.connection_count() == 0, timeout=15)
        assert socketio.registry.is_empty()
        assert socketio._connections == {}
        assert socketio._per_address == {}
        assert len(connected) >= 750 and connected == disconnected
        assert set(disconnected.values()) == {1}
        await until(lambda: len(socketio._tasks) == 1)  # the slow-consumer watchdog only
        await until(lambda: len(asyncio.all_tasks()) <= baseline_tasks)


async def test_shutdown_ends_sessions_kept_for_recovery() -> None:
    """shutdown() also ends sessions kept for recovery: their handlers ran at the drop, once; nothing is left."""
    socketio = make_app(recovery_window=60)
    root, chat = reasons_by_sid(socketio), reasons_by_sid(socketio, "/chat")
    await socketio.start("127.0.0.1", 0)
    kept = await Wire.open(f"ws://127.0.0.1:{socketio.port}")
    await kept.join("/chat")
    kept.abort()
    await until(lambda: root == {kept.sid: "transport close"} and chat == {kept.sid: "transport close"})
    assert socketio.recoverable == 1 and socketio.connection_count() == 0
    await socketio.shutdown()
    assert root == {kept.sid: "transport close"} and chat == {kept.sid: "transport close"}, "nothing ran twice"
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()
    assert socketio._connections == {} and socketio.recoverable == 0


async def test_sigterm_under_load_closes_every_client_with_1001(server_threads: Any) -> None:
    """python server.py with 500 clients under a broadcast flood: SIGTERM closes each with 1001, runs
    each /test disconnect handler once with 'server shutdown', and exits 0 within the close timeout."""
    close_timeout = 3.0
    server = server_threads("--close-timeout", str(close_timeout))
    clients: list[ClientConnection] = []
    sids: list[str] = []
    limit = asyncio.Semaphore(50)

    async def open_one() -> None:
        async with limit:
            ws = await connect(server.url, ping_interval=None, open_timeout=20)
            sids.append(json.loads(await ws.recv())["data"]["sid"])
            clients.append(ws)
            await ws.send('{"event":"connect","namespace":"/test"}')
            assert json.loads(await ws.recv())["event"] == "connect"
            assert json.loads(await ws.recv())["data"] == {"data": "Connected"}

    received = [0] * 500

    async def count(index: int, ws: ClientConnection) -> None:
        async for _ in ws:
            received[index] += 1

    async def flood(ws: ClientConnection) -> None:
        for n in range(400):
            await ws.send(json.dumps({"event": "my broadcast event", "namespace": "/test", "data": {"data": n}}))
            await asyncio.sleep(0.05)  # pacing, under the default rate limit

    try:
        await asyncio.gather(*(open_one() for _ in range(500)))
        readers = [asyncio.ensure_future(count(i, ws)) for i, ws in enumerate(clients)]
        flooder = asyncio.ensure_future(flood(clients[0]))
        await until(lambda: min(received) >= 3, timeout=20)
        started = time.monotonic()
        code = await asyncio.to_thread(server.stop)
        elapsed = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), 10)
        flooder.cancel()
    finally:
        for ws in clients:
            ws.transport.abort()
    assert code == 0, server.err
    assert elapsed < close_timeout, f"exit took {elapsed:.2f} s"
    assert Counter((ws.close_code, ws.close_reason) for ws in clients) == {(1001, "server shutdown"): 500}
    lines = re.findall(r"Client disconnected (\S+) (.+)", "".join(server.out))
    assert Counter(lines) == Counter((sid, "server shutdown") for sid in sids)


# -- Fuzz -----------------------------------------------------------------------------------------

FUZZ_SECONDS = 4.0
FUZZ_CLIENTS = 3
FUZZ_SEED = int(os.environ.get("PLAINSOCKET_FUZZ_SEED", "20250101"))
PROBE_ID = 2**52  # ids the generator never picks
ERROR_CODES = {
    "invalid_json", "not_strict_json", "too_deep", "invalid_envelope", "invalid_event", "invalid_namespace",
    "invalid_id", "reserved_event", "unknown_ack", "not_connected", "unknown_event", "handler_error",
    "binary_unsupported", "rate_limited", "limit_exceeded",
}  # fmt: skip
EVENTS = [
    "echo", "add", "slow", "boom", "join", "probe", "connect", "disconnect", "ack", "error", "connect_error",
    "heartbeat", "*", "", "e" * 257, "my event", "__class__", "constructor", "on_echo", "\n", "\x00", "\u2028",
]  # fmt: skip
NAMESPACES = ["/", "/chat", "/refuse", "/nowhere", "chat", "", "/" + "n" * 256, "/\n", 7, None, ["/"]]
NON_STRICT = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", '"\\ud800"', '"x\\udfff"', "1" * 5000, "1" * 400]
IDS = [0, 1, 2, 7, 2**53 - 1, 2**53, -1, 1.5, "3", True, None, [1]]


class Fuzzer:
    """Random frames from a seeded generator: reproducible from the seed in a failure message."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def text(self, size: int) -> str:
        rng = self.rng
        ranges = [(0x20, 0x7E)] * 6 + [(0x00, 0x1F), (0x80, 0xD7FF), (0xE000, 0x10FFFF)]
        chars = []
        for _ in range(rng.randint(0, size)):
            low, high = rng.choice(ranges)
            chars.append(chr(rng.randint(low, high)))
        return "".join(chars)

    def value(self, depth: int) -> Any:
        rng = self.rng
        roll = rng.random()
        if depth <= 0 or roll < 0.5:
            return rng.choice(
                [None, True, False, rng.randint(-(2**70), 2**70), rng.uniform(-1e300, 1e300), self.text(20), 2**53]
            )
        if roll < 0.75:
            return [self.value(depth - 1) for _ in range(rng.randint(0, 4))]
        return {self.text(8): self.value(depth - 1) for _ in range(rng.randint(0, 4))}

    def envelope(self) -> dict[str, Any]:
        rng = self.rng
        frame: dict[str, Any] = {}
        if rng.random() < 0.95:
            frame["event"] = rng.choice(EVENTS) if rng.random() < 0.9 else self.value(1)
        if rng.random() < 0.7:
            frame["namespace"] = rng.choice(NAMESPACES)
        if rng.random() < 0.7:
            frame["data"] = self.value(rng.choice([0, 1, 2, 4, 8]))
        if rng.random() < 0.4:
            frame["id"] = rng.choice(IDS) if rng.random() < 0.5 else rng.randrange(0, 100)
        if rng.random() < 0.1:
            frame[self.text(5)] = self.value(2)
        return frame

    def frame(self) -> str | bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.55:
            return json.dumps(self.envelope(), ensure_ascii=rng.random() < 0.5)
        if roll < 0.65:
            return self.text(200)
        if roll < 0.72:
            return rng.randbytes(rng.randint(0, 64))
        if roll < 0.82:
            data = rng.choice(NON_STRICT) if rng.random() < 0.7 else self.deep()
            namespace = rng.choice(["/", "/chat"])
            return '{"event":"echo","namespace":"' + namespace + '","data":' + data + "}"
        if roll < 0.92:
            text = json.dumps(self.envelope())
            at = rng.randrange(len(text))
            return text[:at] + rng.choice(["", "{", "]", '"', "\\", ",", "\x00"]) + text[at + 1 :]
        return json.dumps(self.value(3))

    def deep(self) -> str:
        depth = self.rng.choice([30, 31, 32, 40, 999, 1000, 5000])
        opener, closer = self.rng.choice([("[", "]"), ('{"a":', "}")])
        return opener * depth + ("0" if opener != "[" else "") + closer * depth


def lenient_add(data: Any) -> int:
    return sum(n for n in data if type(n) is int) if type(data) is list else 0


async def slow(data: Any) -> Any:
    await asyncio.sleep(0.001)
    return data


def boom() -> None:
    raise RuntimeError("intentional handler failure")


def fuzz_app() -> SocketServer:
    """Handlers of every kind, none failing on odd data but 'boom'; no rate limit to get in the way."""
    socketio = SocketServer(rate_limit=1e9, rate_burst=10**9, max_message_size=2**16)
    for namespace in ("/", "/chat", "/refuse"):
        socketio.on_event("echo", echo, namespace)
        socketio.on_event("add", lenient_add, namespace)
        socketio.on_event("join", lambda room: join_room(str(room)[:50]), namespace)
        socketio.on_event("*", lambda event, data: [event], namespace)
        socketio.on_event("slow", slow, namespace)
        socketio.on_event("boom", boom, namespace)
    socketio.on_event("probe", lambda n: n)
    socketio.on_event("connect", lambda auth: auth != "no", "/chat")
    socketio.on_event("connect", lambda: False, "/refuse")
    return socketio


class ErrorRecords(logging.Handler):
    """Keep the ERROR records of our loggers but the intentional failures; nothing else keeps any
    (pytest's capture would hold every record, and the memory its messages use, until the test ends)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "handler of 'boom'" not in record.getMessage():
            self.records.append(record)

    def __enter__(self) -> ErrorRecords:
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self)
            logging.getLogger(name).propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self)
            logging.getLogger(name).propagate = True


async def test_fuzz_random_frames_over_live_sockets() -> None:
    """Seeded random frames (text, JSON shapes, binary, reserved names, odd ids) on 3 sockets for 4 s:
    every probe is answered, no unexpected error is logged, state stays bounded and empties after."""
    tracemalloc.start()
    try:
        with ErrorRecords() as errors:
            await fuzz(errors)
    finally:
        tracemalloc.stop()


async def fuzz(errors: ErrorRecords) -> None:
    socketio = fuzz_app()
    # Memory allocated by the server's modules (the top-level ones), not by the tests.
    ours = [tracemalloc.Filter(True, str(ROOT / "*.py")), tracemalloc.Filter(False, str(ROOT / "tests" / "*"))]

    def our_memory() -> int:
        return sum(stat.size for stat in tracemalloc.take_snapshot().filter_traces(ours).statistics("filename"))

    deadline = time.monotonic() + FUZZ_SECONDS
    sent = Counter[str]()
    biggest = Counter[str]()

    async def client(index: int, url: str) -> None:
        seed = FUZZ_SEED + index
        fuzzer = Fuzzer(seed)
        last: list[Any] = []
        async with connect(url, max_size=None) as ws:
            json.loads(await ws.recv())
            probe = 0
            while time.monotonic() < deadline:
                for _ in range(fuzzer.rng.randint(1, 15)):
                    frame = fuzzer.frame()
                    last = [*last[-20:], frame]
                    await ws.send(frame)
                    sent["frames"] += 1
                probe += 1
                await ws.send(json.dumps({"event": "probe", "data": probe, "id": PROBE_ID + probe}))
                try:
                    async with asyncio.timeout(5):
                        while True:
                            frame = json.loads(await ws.recv())
                            assert type(frame) is dict and type(frame["event"]) is str, frame
                            assert type(frame["namespace"]) is str, frame
                            if frame["event"] == "error":
                                assert frame["data"]["code"] in ERROR_CODES, frame
                            if frame["event"] == "question" and "id" in frame and fuzzer.rng.random() < 0.7:
                                await ws.send(json.dumps({"event": "ack", "id": frame["id"], "data": "yes"}))
                            if frame.get("id") == PROBE_ID + probe and frame["event"] in ("ack", "error"):
                                break
                except (TimeoutError, ConnectionClosed) as exc:
                    raise AssertionError(f"seed {seed}: no answer to probe {probe} after {last!r}") from exc
                for conn in list(socketio._connections.values()):
                    biggest["pending"] = max(biggest["pending"], len(conn.pending))
                    biggest["backlog"] = max(biggest["backlog"], len(conn.backlog or ()))
                    biggest["buffer"] = max(biggest["buffer"], queued(socketio, conn.sid))

    async def server_calls() -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            for sid in socketio.sids():
                try:
                    await socketio.call("question", n, to=sid, timeout=0.1)
                except (CallTimeoutError, ClientDisconnectedError, LimitExceededError):
                    pass
            await asyncio.sleep(0.05)

    async with running(socketio) as url:
        before = our_memory()
        await asyncio.gather(server_calls(), *(client(index, url) for index in range(FUZZ_CLIENTS)))
        await until(lambda: socketio.connection_count() == 0)
        assert socketio.registry.is_empty()
        assert socketio._per_address == {}
        await until(lambda: len(socketio._tasks) == 1)
        after = our_memory()
        probe = await Wire.open(url)
        await still_works_probe(probe)
        await probe.close()
    assert errors.records == [], [(r.getMessage(), r.exc_info and r.exc_info[1]) for r in errors.records]
    assert sent["frames"] > 300, sent
    assert biggest["pending"] <= socketio.max_pending_acks
    assert biggest["backlog"] <= socketio.max_backlog
    assert biggest["buffer"] <= socketio.max_send_buffer
    assert after - before < 64 * 1024, f"{after - before} bytes still allocated by the server"


async def still_works_probe(client: Wire) -> None:
    assert (await client.call("probe", 5, id=1))["data"] == 5


async def test_kept_sessions_make_room_for_live_clients(opened: Any) -> None:
    """At max_connections, the oldest session kept for recovery ends so a live client gets in."""
    socketio = SocketServer(recovery_window=30, max_connections=3)
    reasons: list[tuple[str, str]] = []
    socketio.on_event("disconnect", lambda reason: reasons.append((request.sid, reason)))
    async with running(socketio) as url:
        dropped = [await opened(url) for _ in range(3)]
        for client in dropped:
            client.abort()
        await until(lambda: sorted(reasons) == sorted((c.sid, "transport close") for c in dropped))
        assert socketio.recoverable == 3 and socketio.connection_count() == 0
        newcomer = await opened(url)
        assert newcomer.hello["event"] == "connect" and newcomer.hello["data"]["recovered"] is False
        assert dropped[0].sid not in socketio._connections, "the oldest kept session made room"
        assert socketio.recoverable == 2 and socketio.connection_count() == 1
        assert len(reasons) == 3, "its handlers ran at the drop, not again"


async def test_backlog_behind_a_busy_handler_is_bounded_in_bytes(opened: Any) -> None:
    """Frames queued behind a running async handler are refused past max_backlog_bytes."""
    socketio = SocketServer(max_backlog_bytes=350_000)  # three frames of ~100 KB fit, not four
    release = asyncio.Event()

    @socketio.on("slow")
    async def slow() -> None:
        await release.wait()

    @socketio.on("bulk")
    def bulk(data: str) -> int:
        return len(data)

    async with running(socketio) as url:
        client = await opened(url)
        await client.send("slow")
        for i in range(4):
            await client.send("bulk", "x" * 100_000, id=i)
        refused = await client.expect("error")
        assert refused["id"] == 3 and refused["data"]["code"] == "limit_exceeded"
        release.set()
        assert [(await client.expect("ack"))["id"] for _ in range(3)] == [0, 1, 2]
