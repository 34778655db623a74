"""The asyncio client (client.py): its API, reconnection, testing helpers and command line.

Real sockets on 127.0.0.1 with ephemeral ports: the demo app as ``python server.py`` in a
subprocess, and in-process ``SocketServer`` apps with handlers written for each test.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from conftest import ROOT, ServerProcess, until
from websockets.asyncio.server import ServerConnection, serve

from plainsocket import SocketServer, emit
from plainsocket.client import (
    BufferFullError,
    Client,
    ClientTimeoutError,
    ConnectRefusedError,
    DisconnectedError,
    ProtocolVersionError,
    RemoteError,
    reconnect_delay,
    serve_for_test,
    test_client,
)

FAST = {"reconnect_delay": 0.05, "reconnect_delay_max": 0.2}


# -- Reconnection policy (no sockets) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "attempt", "expected"),
    [
        (1000, 0, None),  # normal closure: nothing to do
        (1002, 0, None),  # protocol error: the client is broken
        (1007, 0, None),  # invalid UTF-8: the client is broken
        (4001, 0, None),  # kicked by the application
        (4000, 0, 0.0),  # slow consumer: at once...
        (4000, 1, 1.0),  # ...then back off
        (1001, 0, 0.5),  # shutdown: backoff from the first delay
        (1006, 1, 1.0),
        (1011, 2, 2.0),
        (1009, 3, 4.0),
        (1011, 10, 5.0),  # capped
        (1008, 0, 5.0),  # rate limited: the long delay at once
        (4002, 0, 5.0),  # too many connections: the long delay
        (1012, 0, 1.0),  # service restart: within RESTART_SPREAD (rng 1.0 here), resuming elsewhere...
        (1012, 1, 1.0),  # ...then back off
    ],
)
def test_reconnect_delay_follows_close_codes(code: int, attempt: int, expected: float | None) -> None:
    """Each close code of docs/protocol.md maps to give up, at once, long or exponential backoff."""
    assert reconnect_delay(code, attempt, delay=0.5, delay_max=5.0, rng=lambda: 1.0) == expected


def test_reconnect_delay_jitter_stays_between_half_and_full() -> None:
    """Jitter spreads a delay over [delay/2, delay], never above the cap."""
    low = reconnect_delay(1006, 20, delay=0.5, delay_max=5.0, rng=lambda: 0.0)
    high = reconnect_delay(1006, 20, delay=0.5, delay_max=5.0, rng=lambda: 1.0)
    assert (low, high) == (2.5, 5.0)


# -- Against the demo app (python server.py) --------------------------------------------------


@pytest.fixture
def demo(server_process: Callable[..., ServerProcess]) -> ServerProcess:
    """The demo app in a subprocess, ready (it logged its listening line)."""
    return server_process()


@pytest.mark.asyncio
async def test_emit_and_wait_for_the_response(demo: ServerProcess) -> None:
    """An emitted event's reply is queued on its namespace and returned by wait()."""
    async with Client(demo.url) as client:
        assert client.sid and client.root.connected
        test = await client.connect("/test")
        assert await test.wait("my response") == {"data": "Connected"}
        await test.emit("my event", {"data": "hello"})
        assert await test.wait("my response") == {"data": "hello"}


@pytest.mark.asyncio
async def test_call_returns_the_ack_and_keeps_other_events_queued(demo: ServerProcess) -> None:
    """call() returns the ack's data; events sent meanwhile stay queued, in order."""
    async with Client(demo.url) as client:
        test = await client.connect("/test")
        ack = await test.call("my ping", timeout=5)
        assert set(ack) == {"pong"} and isinstance(ack["pong"], float)
        assert [(e.event, e.data) for e in [await test.receive(), await test.receive()]] == [
            ("my response", {"data": "Connected"}),
            ("my pong", None),
        ]


@pytest.mark.asyncio
async def test_broadcast_reaches_every_client_and_handlers(demo: ServerProcess) -> None:
    """A broadcast reaches both clients; a registered handler sees it as well as the queue."""
    async with Client(demo.url) as one, Client(demo.url) as two:
        first, second = await one.connect("/test"), await two.connect("/test")
        seen: list[Any] = []
        second.on("my response", seen.append)
        await first.emit("my broadcast event", {"data": 42})
        for ns in (first, second):
            assert await ns.wait("my response") == {"data": "Connected"}
            assert await ns.wait("my response") == {"data": 42}
        await until(lambda: {"data": 42} in seen)


@pytest.mark.asyncio
async def test_rooms_through_the_demo_app(demo: ServerProcess) -> None:
    """Joining a room and emitting to it through the demo's room events."""
    async with Client(demo.url) as client:
        test = await client.connect("/test")
        await test.emit("join", {"room": "lobby"})
        await test.emit("my room event", {"room": "lobby", "data": "to the room"})
        assert await test.wait("my response") == {"data": "Connected"}
        assert await test.wait("my response") == {"data": f"In rooms: {client.sid}, lobby"}
        assert await test.wait("my response") == {"data": "to the room"}


@pytest.mark.asyncio
async def test_unknown_namespace_raises_connect_refused(demo: ServerProcess) -> None:
    """connect() to a namespace the server does not have raises ConnectRefusedError."""
    async with Client(demo.url) as client:
        with pytest.raises(ConnectRefusedError) as refused:
            await client.connect("/nope")
        assert (refused.value.namespace, refused.value.message) == ("/nope", "unknown namespace")
        assert not client.namespace("/nope").connected
        with pytest.raises(DisconnectedError):
            await client.namespace("/nope").emit("my event")


@pytest.mark.asyncio
async def test_error_events_answer_calls_or_reach_the_queue(demo: ServerProcess) -> None:
    """An error with a call's id raises RemoteError; one without goes to on('error') and the queue."""
    async with Client(demo.url) as client:
        test = await client.connect("/test")
        with pytest.raises(RemoteError) as error:
            await test.call("no such event", timeout=5)
        assert error.value.code == "unknown_event"
        errors: list[Any] = []
        test.on("error", errors.append)
        await test.emit("no such event")
        assert (await test.wait("error"))["code"] == "unknown_event"
        await until(lambda: len(errors) == 1)
        assert errors[0]["code"] == "unknown_event"


@pytest.mark.asyncio
async def test_server_side_namespace_disconnect(demo: ServerProcess) -> None:
    """The server's disconnect frame is queued, leaves the namespace and keeps the socket."""
    async with Client(demo.url) as client:
        test = await client.connect("/test")
        await test.emit("disconnect request")
        assert await test.wait("my response") == {"data": "Connected"}
        assert await test.wait("my response") == {"data": "Disconnected!"}
        await test.wait("disconnect")
        assert not test.connected and client.connected
        with pytest.raises(DisconnectedError):
            await test.emit("my event", {"data": "after"})
        test = await client.connect("/test")  # and it can come back
        assert test.connected


@pytest.mark.asyncio
async def test_leaving_a_namespace(demo: ServerProcess) -> None:
    """disconnect() leaves the namespace: the server's broadcasts to it stop arriving."""
    async with Client(demo.url) as client, Client(demo.url) as other:
        test, sender = await client.connect("/test"), await other.connect("/test")
        await test.disconnect()
        with pytest.raises(RemoteError):  # a round trip: the server has handled the disconnect
            await client.root.call("sync")
        await sender.emit("my broadcast event", {"data": "after"})
        assert await sender.wait("my response") == {"data": "Connected"}
        assert await sender.wait("my response") == {"data": "after"}
        assert await test.wait("my response") == {"data": "Connected"}  # queued before leaving
        with pytest.raises(ClientTimeoutError):
            await test.wait("my response", timeout=0.3)


@pytest.mark.asyncio
async def test_reconnects_after_the_server_restarts(server_process: Callable[..., ServerProcess]) -> None:
    """Killed and restarted on the same port: namespaces rejoined, buffered emits sent in order."""
    first = server_process()
    lifecycle: list[tuple[str, Any]] = []
    down = asyncio.Event()
    back = asyncio.Event()
    client = Client(first.url, **FAST)

    @client.on("connect")
    def connected() -> None:
        lifecycle.append(("connect", None))

    @client.on("disconnect")
    def disconnected(reason: str) -> None:
        lifecycle.append(("disconnect", reason))
        down.set()

    @client.on("reconnect")
    def reconnected(attempt: int) -> None:
        lifecycle.append(("reconnect", attempt))
        back.set()

    async with client:
        test = await client.connect("/test")
        assert await test.wait("my response") == {"data": "Connected"}
        old_sid = client.sid

        first.proc.kill()
        first.proc.wait()
        await asyncio.wait_for(down.wait(), 5)
        assert not client.connected and not test.connected
        for n in range(5):
            await test.emit("my event", {"data": n})  # buffered
        await asyncio.to_thread(server_process, port=first.port)
        await asyncio.wait_for(back.wait(), 10)

        assert client.connected and test.connected and client.sid != old_sid
        replies = [await test.wait("my response") for _ in range(6)]
        assert replies == [{"data": "Connected"}, *({"data": n} for n in range(5))]
        await until(lambda: len(lifecycle) >= 4)
        assert lifecycle[0] == ("connect", None)
        assert lifecycle[1] == ("disconnect", "closed 1006")
        assert lifecycle[2][0] == "reconnect" and lifecycle[2][1] >= 1
        assert lifecycle[3] == ("connect", None)


# -- In-process apps through the testing helpers ----------------------------------------------


def echo_app() -> SocketServer:
    """An app with one namespace, /x: ``echo`` answers and acks, ``slow`` sleeps ``data`` seconds."""
    socketio = SocketServer()

    @socketio.on("echo", namespace="/x")
    def echo(data: Any) -> Any:
        emit("echoed", data)
        return {"got": data}

    @socketio.on("slow", namespace="/x")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "late"

    @socketio.on("burst", namespace="/x")
    def burst(count: int) -> None:
        for n in range(count):
            emit("n", n)

    return socketio


@pytest.mark.asyncio
async def test_test_client_helper_runs_an_app() -> None:
    """test_client() serves the app on a free port and yields a joined namespace."""
    async with test_client(echo_app(), namespace="/x") as x:
        assert x.name == "/x" and x.connected
        assert await x.call("echo", [1, 2]) == {"got": [1, 2]}
        assert await x.wait("echoed") == [1, 2]


@pytest.mark.asyncio
async def test_serve_for_test_yields_a_url_for_several_clients() -> None:
    """serve_for_test() yields a ws:// URL on 127.0.0.1 and stops the server afterwards."""
    socketio = echo_app()
    async with serve_for_test(socketio) as url:
        assert url == f"ws://127.0.0.1:{socketio.port}"
        async with Client(url) as one, Client(url) as two:
            assert one.sid != two.sid
            assert socketio.connection_count() == 2
    with pytest.raises(OSError):
        async with Client(url, reconnect=False):
            pass


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_server_call_is_answered_by_a_handler(kind: str) -> None:
    """The server's call() gets the client handler's return value as the ack."""
    socketio = echo_app()
    async with serve_for_test(socketio) as url, Client(url) as client:
        x = await client.connect("/x")
        if kind == "sync":
            x.on("q", lambda data: {"answer": data * 2})
        else:

            @x.on("q")
            async def answer(data: int) -> dict[str, int]:
                await asyncio.sleep(0)
                return {"answer": data * 2}

        assert await socketio.call("q", 21, to=client.sid, namespace="/x", timeout=2) == {"answer": 42}


@pytest.mark.asyncio
async def test_server_call_answered_by_hand() -> None:
    """Without a handler the request is queued with its id, and ack() answers it."""
    socketio = echo_app()
    async with serve_for_test(socketio) as url, Client(url) as client:
        x = await client.connect("/x")
        call = asyncio.create_task(socketio.call("q", "?", to=client.sid, namespace="/x", timeout=5))
        request = await x.receive()
        assert (request.event, request.data) == ("q", "?") and request.id is not None
        await x.ack(request.id, "by hand")
        assert await call == "by hand"


@pytest.mark.asyncio
async def test_a_handler_may_call_the_server() -> None:
    """A handler awaiting call() gets its ack: handlers do not block the reader."""
    socketio = echo_app()
    async with serve_for_test(socketio) as url, Client(url) as client:
        x = await client.connect("/x")

        @x.on("q")
        async def ask_back(data: Any) -> Any:
            return await x.call("echo", data)

        assert await socketio.call("q", "ping", to=client.sid, namespace="/x", timeout=5) == {"got": "ping"}


@pytest.mark.asyncio
async def test_handlers_run_in_order_and_survive_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Handlers run one at a time in arrival order; one that raises is logged, not fatal."""
    seen: list[int] = []

    async def record(n: int) -> None:
        await asyncio.sleep(0.001 * (5 - n))  # earlier events sleep longer
        if n == 2:
            raise RuntimeError("boom")
        seen.append(n)

    async with test_client(echo_app(), namespace="/x") as x:
        x.on("n", record)
        await x.emit("burst", 5)
        await until(lambda: seen == [0, 1, 3, 4])
        assert await x.call("echo", "still here") == {"got": "still here"}
    assert any(r.exc_info and str(r.exc_info[1]) == "boom" for r in caplog.records)


@pytest.mark.asyncio
async def test_received_queue_drops_the_oldest_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A full queue keeps the newest events and logs one warning."""
    async with test_client(echo_app(), namespace="/x", max_queue=3) as x:
        last = asyncio.Event()
        x.on("n", lambda n: n == 9 and last.set())
        with caplog.at_level(logging.WARNING, logger="plainsocket.client"):
            await x.emit("burst", 10)
            await asyncio.wait_for(last.wait(), 5)
        assert [(await x.receive()).data for _ in range(3)] == [7, 8, 9]
        warnings = [r for r in caplog.records if r.name == "plainsocket.client" and "queue full" in r.message]
        assert len(warnings) == 1


@pytest.mark.asyncio
async def test_timeouts_are_typed() -> None:
    """call() and wait() raise ClientTimeoutError, which is also a TimeoutError."""
    async with test_client(echo_app(), namespace="/x") as x:
        with pytest.raises(ClientTimeoutError):
            await x.call("slow", 0.5, timeout=0.2)
        with pytest.raises(TimeoutError):
            await x.wait("never", timeout=0.05)
        # The late ack is dropped; the connection is fine (echo runs once slow is done).
        assert await x.call("echo", 1) == {"got": 1}


@pytest.mark.asyncio
async def test_reserved_and_invalid_events_are_refused_before_sending() -> None:
    """Reserved names raise ValueError; data JSON can not hold raises before anything is sent."""
    async with test_client(echo_app(), namespace="/x") as x:
        for name in ("connect", "ack", "error", "heartbeat"):
            with pytest.raises(ValueError, match="reserved"):
                await x.emit(name)
        with pytest.raises(ValueError):
            await x.emit("echo", float("nan"))
        with pytest.raises(TypeError):
            await x.emit("echo", object())
        assert await x.call("echo", "ok") == {"got": "ok"}


@pytest.mark.asyncio
async def test_root_namespace_auth_retry() -> None:
    """When / refuses the anonymous greeting, the client retries with its auth."""
    socketio = SocketServer()

    @socketio.on("connect")
    def check(auth: Any) -> bool:
        return auth == {"token": "s3cret"}

    async with serve_for_test(socketio) as url:
        for auth in (None, {"token": "wrong"}):
            with pytest.raises(ConnectRefusedError) as refused:
                async with Client(url, auth, reconnect=False):
                    pass
            assert (refused.value.namespace, refused.value.message) == ("/", "connection refused")
        async with Client(url, {"token": "s3cret"}) as client:
            assert client.root.connected and socketio.sids() == [client.sid]


@pytest.mark.asyncio
async def test_namespace_auth() -> None:
    """connect(namespace, auth=...) sends auth; a refusal carries the handler's message."""
    socketio = SocketServer()

    @socketio.on("connect", namespace="/private")
    def check(auth: Any) -> None:
        if auth != {"token": "s3cret"}:
            raise ConnectionRefusedError("not authorized")

    async with serve_for_test(socketio) as url, Client(url) as client:
        with pytest.raises(ConnectRefusedError, match="not authorized"):
            await client.connect("/private", auth={"token": "nope"})
        private = await client.connect("/private", auth={"token": "s3cret"})
        assert private.connected and socketio.sids("/private") == [client.sid]


@pytest.mark.asyncio
async def test_kicked_client_gives_up() -> None:
    """Close code 4001 ends the client for good: no reconnection, pending calls fail at once."""
    socketio = echo_app()
    reasons: list[str] = []
    async with serve_for_test(socketio) as url, Client(url, **FAST) as client:
        client.on("disconnect", reasons.append)
        x = await client.connect("/x")
        call = asyncio.create_task(x.call("slow", 30, timeout=30))
        await until(lambda: socketio.connection_count() == 1 and not call.done())
        socketio.disconnect(client.sid)
        with pytest.raises(DisconnectedError) as gone:
            await asyncio.wait_for(call, 5)
        assert gone.value.code == 4001
        await asyncio.wait_for(client.wait_closed(), 5)
        assert reasons == ["closed 4001"] and not client.connected
        with pytest.raises(DisconnectedError):
            await x.emit("echo", 1)
        with pytest.raises(DisconnectedError):
            await x.wait("anything")
        await until(lambda: socketio.connection_count() == 0)


@pytest.mark.asyncio
async def test_calls_in_flight_fail_when_the_connection_drops() -> None:
    """A call sent on a connection that drops fails at once, even while reconnection goes on."""
    socketio = echo_app()
    async with serve_for_test(socketio) as url:
        async with Client(url, reconnect_delay=30, reconnect_delay_max=30) as client:
            x = await client.connect("/x")
            call = asyncio.create_task(x.call("slow", 30, timeout=30))
            await until(lambda: socketio.connection_count() == 1 and not call.done())
            await socketio.shutdown()  # 1001: reconnect with backoff
            with pytest.raises(DisconnectedError) as dropped:
                await asyncio.wait_for(call, 5)
            assert dropped.value.code == 1001


@pytest.mark.asyncio
async def test_emits_while_disconnected_are_bounded() -> None:
    """While reconnecting, emits are buffered up to max_buffer, then BufferFullError."""
    socketio = echo_app()
    down = asyncio.Event()
    async with serve_for_test(socketio) as url:
        async with Client(url, reconnect_delay=30, reconnect_delay_max=30, max_buffer=2) as client:
            client.on("disconnect", lambda reason: down.set())
            x = await client.connect("/x")
            await socketio.shutdown()  # 1001: the client backs off for a long time
            await asyncio.wait_for(down.wait(), 5)
            await x.emit("echo", 1)
            await x.emit("echo", 2)
            with pytest.raises(BufferFullError):
                await x.emit("echo", 3)
            with pytest.raises(DisconnectedError):
                await x.ack(1, "acks are never buffered")
        with pytest.raises(DisconnectedError):
            await x.emit("echo", 4)  # closed for good


@pytest.mark.asyncio
async def test_closed_client_ends_iteration() -> None:
    """async for yields queued events, then stops when the client is closed."""
    async with test_client(echo_app(), namespace="/x") as x:
        await x.call("burst", 3)
        received: list[Any] = []
        iterate = asyncio.create_task(_collect(x, received))
        await until(lambda: len(received) == 3)
        await x.client.close()
        await asyncio.wait_for(iterate, 5)
    assert received == [0, 1, 2]


async def _collect(namespace: Any, into: list[Any]) -> None:
    async for envelope in namespace:
        into.append(envelope.data)


# -- Servers that do not speak protocol 1 -----------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "greeting",
    [
        '{"event":"connect","namespace":"/","data":{"sid":"abc","protocol":2}}',
        '0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":[],"pingInterval":25000}',  # Socket.IO
        '{"event":"hello"}',
    ],
)
async def test_foreign_greeting_closes_with_4010(greeting: str) -> None:
    """A greeting that is not protocol 1 raises ProtocolVersionError and closes with 4010."""
    codes: list[int | None] = []

    async def greet(ws: ServerConnection) -> None:
        await ws.send(greeting)
        await ws.wait_closed()
        codes.append(ws.close_code)

    async with serve(greet, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ProtocolVersionError):
            async with Client(f"ws://127.0.0.1:{port}", reconnect=False):
                pass
        await until(lambda: bool(codes))
    assert codes == [4010]


@pytest.mark.asyncio
async def test_silent_server_times_out() -> None:
    """A server that never greets raises ClientTimeoutError after connect_timeout, no hang."""

    async def mute(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(mute, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ClientTimeoutError):
            async with Client(f"ws://127.0.0.1:{port}", connect_timeout=0.3):
                pass


# -- Command line -----------------------------------------------------------------------------


async def run_cli(*args: str, timeout: float = 20) -> tuple[int, list[dict[str, Any]], str]:
    """Run ``python -m plainsocket.client ARGS``; return its exit code, stdout frames and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "plainsocket.client",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, [json.loads(line) for line in out.decode().splitlines()], err.decode()


def events(frames: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    return [(f["event"], f["namespace"], f.get("data")) for f in frames]


@pytest.mark.asyncio
async def test_cli_emits_and_prints_replies(demo: ServerProcess) -> None:
    """--emit (repeatable) sends in order; every received frame is printed as one JSON line."""
    code, frames, err = await run_cli(
        demo.url, "--namespace", "/test", "--emit", "my event", '{"data": "hi"}', "--emit", "my event", '{"data": 2}'
    )
    assert code == 0, err
    sid = frames[0]["data"]["sid"]
    token = frames[0]["data"]["recovery"]["token"]  # the demo app keeps dropped sessions
    assert events(frames) == [
        ("connect", "/", {"sid": sid, "protocol": 1, "recovered": False, "recovery": {"token": token, "window": 120}}),
        ("connect", "/test", {"sid": sid}),
        ("my response", "/test", {"data": "Connected"}),
        ("my response", "/test", {"data": "hi"}),
        ("my response", "/test", {"data": 2}),
    ]


@pytest.mark.asyncio
async def test_cli_ack_exits_after_the_acks(demo: ServerProcess) -> None:
    """With --ack each emit waits for its ack, and the client exits after the last one."""
    code, frames, err = await run_cli(
        demo.url,
        "--namespace",
        "/test",
        "--ack",
        "--wait",
        "30",
        "--emit",
        "my event",
        '{"data": 1}',
        "--emit",
        "my ping",
    )
    assert code == 0, err
    acks = [f for f in frames if f["event"] == "ack"]
    assert [(a["id"], a["namespace"]) for a in acks] == [(1, "/test"), (2, "/test")]
    assert acks[0]["data"] is None and set(acks[1]["data"]) == {"pong"}


@pytest.mark.asyncio
async def test_cli_reports_refusals_and_remote_errors(demo: ServerProcess) -> None:
    """A refused namespace or an error answer exits 1 with the reason on stderr."""
    code, frames, err = await run_cli(demo.url, "--namespace", "/nope")
    assert code == 1 and "unknown namespace" in err
    assert events(frames)[-1] == ("connect_error", "/nope", {"message": "unknown namespace"})
    code, frames, err = await run_cli(demo.url, "--namespace", "/test", "--ack", "--emit", "nothing")
    assert code == 1 and "unknown_event" in err
    code, _, err = await run_cli(demo.url, "--emit", "my event", "{not json")
    assert code == 2 and "not valid JSON" in err


@pytest.mark.asyncio
async def test_cli_listen_prints_until_interrupted(demo: ServerProcess) -> None:
    """--listen prints frames as they arrive (a broadcast from another client) until SIGINT."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "plainsocket.client",
        demo.url,
        "--namespace",
        "/test",
        "--listen",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        lines = _lines(proc.stdout)
        assert (await anext(lines))["event"] == "connect"
        assert (await anext(lines))["namespace"] == "/test"
        assert (await anext(lines))["data"] == {"data": "Connected"}
        async with Client(demo.url) as other:
            test = await other.connect("/test")
            await test.emit("my broadcast event", {"data": "to all"})
            assert (await anext(lines))["data"] == {"data": "to all"}
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 130
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _lines(stream: asyncio.StreamReader | None, timeout: float = 10) -> AsyncIterator[dict[str, Any]]:
    """Yield JSON lines from ``stream``, each within ``timeout`` seconds."""
    assert stream is not None
    while line := await asyncio.wait_for(stream.readline(), timeout):
        yield json.loads(line)


# Scripted servers for the client's failure paths.


async def _scripted(handler: Callable[..., Awaitable[None]]) -> Any:
    from websockets.asyncio.server import serve

    return await serve(handler, "127.0.0.1", 0)


async def _greet(ws: Any) -> None:
    await ws.send(json.dumps({"event": "connect", "namespace": "/", "data": {"sid": "s", "protocol": 1}}))


async def test_repeated_slow_consumer_closes_back_off() -> None:
    """A server that greets then closes with 4000 again and again meets a backoff, not a busy loop."""
    opened = 0

    async def handler(ws: Any) -> None:
        nonlocal opened
        opened += 1
        await _greet(ws)
        await ws.close(4000, "slow consumer")

    server = await _scripted(handler)
    client = Client(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", reconnect_delay=0.5)
    try:
        await client.open()
        await until(lambda: opened >= 3, timeout=10)  # at once, then after backoffs
        count = opened
        await asyncio.sleep(1.0)  # the behaviour under test is the absence of a busy loop
        assert opened - count <= 3, f"{opened - count} reconnections in 1 s"
    finally:
        await client.close()
        server.close()


async def test_close_from_a_handler_with_a_full_queue_returns() -> None:
    """close() called inside a handler while more events wait returns instead of deadlocking."""

    async def handler(ws: Any) -> None:
        await _greet(ws)
        for i in range(5):
            await ws.send(json.dumps({"event": "tick", "data": i}))
        await ws.wait_closed()

    server = await _scripted(handler)
    client = Client(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", max_pending=2, close_timeout=1)
    closed = asyncio.Event()

    @client.root.on("tick")
    async def tick(data: int) -> None:
        if data == 0:
            await asyncio.sleep(0.2)  # let the reader fill the job queue
            await client.close()
            closed.set()

    try:
        await client.open()
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        server.close()


async def test_a_cancelled_handler_does_not_stop_the_next_ones() -> None:
    """A handler that ends in CancelledError is logged; later handlers run and close() is clean."""

    async def handler(ws: Any) -> None:
        await _greet(ws)
        for i in range(3):
            await ws.send(json.dumps({"event": "tick", "data": i}))
        await ws.wait_closed()

    server = await _scripted(handler)
    client = Client(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", close_timeout=1)
    seen: list[int] = []

    @client.root.on("tick")
    async def tick(data: int) -> None:
        seen.append(data)
        if data == 0:
            sub = asyncio.ensure_future(asyncio.sleep(10))
            sub.cancel()
            await sub

    try:
        await client.open()
        await until(lambda: seen == [0, 1, 2])
        await client.close()  # must not raise CancelledError
    finally:
        server.close()


@pytest.mark.asyncio
async def test_a_message_over_the_size_limit_fails_alone_and_calls_in_flight_survive() -> None:
    """1009: the oversized call fails with message_too_big; a call in flight is answered after the resume."""
    socketio = SocketServer(recovery_window=30, max_message_size=1024)
    runs = []

    @socketio.on("slow")
    async def slow(seconds: float) -> str:
        runs.append(seconds)
        await asyncio.sleep(seconds)
        return "late"

    async with serve_for_test(socketio) as url, Client(url, **FAST) as client:
        reconnected = asyncio.Event()
        client.on("reconnect", lambda attempt, recovered: reconnected.set())
        slow_call = asyncio.create_task(client.root.call("slow", 0.5))
        await until(lambda: runs == [0.5])  # in flight: the server is handling it
        with pytest.raises(RemoteError) as refused:
            await client.root.call("echo", "x" * 2000)
        assert refused.value.code == "message_too_big"
        assert await slow_call == "late"
        await asyncio.wait_for(reconnected.wait(), 5)
        assert client.recovered and runs == [0.5]
        with pytest.raises(RemoteError, match="too big"):
            await client.root.emit("echo", "y" * 3000)  # known too big: refused before sending
        assert client.connected
