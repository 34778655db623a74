"""The edges a Flask-SocketIO porter hits: threads, plain background functions, bounded memory, odd values."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

import psutil
import pytest
from conftest import ROOT, running, until
from websockets.asyncio.client import connect as connect_ws
from wire import Wire

from plainsocket import ClientDisconnectedError, SocketServer, emit, join_room
from plainsocket.backplane import BackplaneError, redact


async def test_emit_from_threads_reaches_every_client_at_once(opened: Any) -> None:
    """A to_thread worker emits progress and a broadcast: every client gets every frame at once, acks stay on time."""
    socketio = SocketServer()

    def work(sid: str) -> None:
        for step in (25, 50, 75):
            socketio.emit("progress", step, to=sid)
        socketio.emit("news", "done", to=None)
        emit("direct", "from the thread")  # a handler's context, copied into the thread

    @socketio.on("work")
    async def start_work() -> str:
        await asyncio.to_thread(work, socketio_sid())
        return "ok"

    def socketio_sid() -> str:
        from plainsocket import request

        return request.sid

    @socketio.on("ping")
    def ping(n: int) -> int:
        return n

    async with running(socketio) as url:
        clients = [await opened(url) for _ in range(3)]
        worker = clients[0]
        frame = await worker.call("work", None, id=1)  # the ack comes after everything the thread sent
        assert frame["data"] == "ok"
        for other in clients[1:]:
            assert (await other.expect("news"))["data"] == "done"
        for client in clients:
            assert (await client.call("ping", 7, id=2))["data"] == 7, "no client is a frame behind"


async def test_thread_emit_with_an_invalid_event_raises_in_the_thread() -> None:
    """A bad emit from a thread fails there, before anything is queued."""
    socketio = SocketServer()
    async with running(socketio):
        errors: list[BaseException] = []

        def bad() -> None:
            try:
                socketio.emit("", "no name")
            except Exception as exc:
                errors.append(exc)

        await asyncio.to_thread(bad)
        assert errors and type(errors[0]).__name__ == "ProtocolError"


async def test_call_from_a_thread_blocks_for_the_ack(opened: Any) -> None:
    """socketio.call() from a thread returns the client's answer there."""
    socketio = SocketServer()
    async with running(socketio) as url:
        client = await opened(url)
        answer: list[Any] = []
        asking = asyncio.ensure_future(
            asyncio.to_thread(lambda: answer.append(socketio.call("question", 1, to=client.sid, timeout=5)))
        )
        question = await client.expect("question")
        await client.send("ack", "answer", id=question["id"])
        await asking
        assert answer == ["answer"]


def test_flask_socketio_background_thread_example(tmp_path: Any) -> None:
    """The example's plain-function background thread: emits every 0.2 s, /healthz answers, SIGTERM exits 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "plainsocket", "run", "tests.apps.bg_thread:socketio", "--port", "0"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on" in line:
                port = int(line.rsplit(":", 1)[1])
                break

        async def session() -> list[int]:
            client = await Wire.open(f"ws://127.0.0.1:{port}")
            await client.join("/test")
            counts = []
            while len(counts) < 4:
                frame = await client.expect("my_response", "/test", timeout=3)
                counts.append(frame["data"]["count"])
            health = await asyncio.to_thread(
                lambda: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read())
            )
            assert health["status"] == "ok"
            return counts

        counts = asyncio.run(session())
        assert counts[0] == 0 and counts[1:] == sorted(counts[1:]) and counts[-1] >= 2
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def test_background_task_forms_and_crash_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """start_background_task: async (awaitable), plain with kwargs (join), and a crash logged when it happens."""
    socketio = SocketServer()
    async with running(socketio):
        results: list[Any] = []

        async def coroutine(x: int) -> None:
            await socketio.sleep()
            results.append(("async", x))

        def plain(x: int, *, y: int) -> None:
            socketio.sleep(0.01)
            results.append(("plain", x, y))

        def crash() -> None:
            raise RuntimeError("boom in the background")

        await socketio.start_background_task(coroutine, 1)
        task = socketio.start_background_task(plain, 2, y=3)
        await asyncio.to_thread(task.join, 5)
        crashed = socketio.start_background_task(crash)
        await crashed
        assert results == [("async", 1), ("plain", 2, 3)]
        assert any("background task crash crashed" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_heartbeats_and_connects_with_ids_do_not_grow_memory(opened: Any) -> None:
    """100,000 heartbeat/connect/disconnect frames carrying ids (recovery on): nothing per id is kept."""
    socketio = SocketServer(recovery_window=30, rate_limit=1e9, rate_burst=10**9, max_send_buffer=2**26)
    async with running(socketio) as url:
        client = await opened(url, ping_interval=None)
        conn = socketio._connections[client.sid]
        kinds = [("heartbeat", "/"), ("connect", "/"), ("disconnect", "/nowhere")]

        async def drain() -> None:  # read the answers, so that neither side's buffers fill up
            while (await client.recv(timeout=60)).get("id") != 10**9:
                pass

        draining = asyncio.ensure_future(drain())
        before = psutil.Process().memory_info().rss
        for i in range(100_000):
            # Mostly frames nobody answers (the cheapest for a flooding client), some of each other.
            event, namespace = kinds[0 if i % 100 == 0 else 1 if i % 100 == 1 else 2]
            await client.ws.send(f'{{"event":"{event}","namespace":"{namespace}","id":{i}}}')
        await client.send("x", None, id=10**9)  # answered once every frame before it was handled
        await draining
        grown = psutil.Process().memory_info().rss - before
        # Before the fix every id stayed in conn.inflight: 100,000 entries, about 7 MB.
        assert len(conn.inflight) == 0 and (conn.seen is None or len(conn.seen[0]) <= socketio.recovery_max_events)
        assert grown < 4 * 2**20, f"RSS grew {grown} bytes (client and server share this process)"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--send-timeout", "0", "argument --send-timeout: must be > 0"),
        ("--ping-interval", "0", "argument --ping-interval: must be > 0 or 'none'"),
        ("--ping-timeout", "-1", "argument --ping-timeout: must be > 0 or 'none'"),
        ("--max-send-buffer", "0", "argument --max-send-buffer: must be >= 1024"),
        ("--rate-burst", "0", "argument --rate-burst: must be >= 1"),
        ("--recovery-window", "-5", "argument --recovery-window: must be >= 0"),
        ("--rate-limit", "nan", "argument --rate-limit: must be > 0"),
        ("--port", "70000", "argument --port: expected a port in 0..65535"),
        ("--workers", "0", "argument --workers: must be >= 1"),
        ("--redis", "localhost:6379", "argument --redis: expected redis://"),
        ("--max-rooms", "many", "argument --max-rooms: expected a whole number >= 1"),
    ],
)
def test_impossible_flag_values_are_one_line_and_exit_2(flag: str, value: str, message: str) -> None:
    """Each impossible value is refused with one line naming the flag and the allowed range."""
    ran = subprocess.run(
        [sys.executable, "server.py", flag, value], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert ran.returncode == 2 and message in ran.stderr, ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1, ran.stderr


async def test_redis_password_never_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    """An unreachable Redis with a password: the error names the host, not the secret."""
    assert redact("redis://user:s3cret@127.0.0.1:6390/0") == "redis://user:***@127.0.0.1:6390/0"
    assert redact("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/0"
    socketio = SocketServer(message_queue="redis://:s3cret@127.0.0.1:1/0")
    with pytest.raises(BackplaneError) as failed:
        await socketio.start("127.0.0.1", 0)
    assert "s3cret" not in str(failed.value) and "***" in str(failed.value)
    assert all("s3cret" not in r.getMessage() for r in caplog.records)


async def test_a_backend_outage_in_a_connect_handler_is_logged(opened: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An OS ConnectionRefusedError (errno 111) is our failure: logged with its traceback, a generic refusal."""
    socketio = SocketServer()

    @socketio.on("connect", namespace="/db")
    def connect() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    @socketio.on("connect", namespace="/vip")
    def vip() -> None:
        raise ConnectionRefusedError("members only")

    async with running(socketio) as url:
        client = await opened(url)
        await client.send("connect", None, "/db")
        assert (await client.expect("connect_error", "/db"))["data"] == {"message": "connection refused"}
        await client.send("connect", None, "/vip")
        assert (await client.expect("connect_error", "/vip"))["data"] == {"message": "members only"}
    failures = [r for r in caplog.records if "connect handler of '/db' failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert not any("/vip" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


async def test_a_handler_that_raises_cancelled_error_answers_and_the_queue_goes_on(opened: Any) -> None:
    """CancelledError from a handler's own await: handler_error for its id, the frames behind it still run."""
    socketio = SocketServer()

    @socketio.on("job")
    async def job() -> None:
        other = asyncio.ensure_future(asyncio.sleep(10))
        asyncio.get_running_loop().call_soon(other.cancel)
        await other

    socketio.on_event("after", lambda: "still served")
    async with running(socketio) as url:
        client = await opened(url)
        await client.send("job", None, id=1)
        await client.send("after", None, id=2)
        first, second = await client.recv(), await client.recv()
        assert (first["id"], first["data"]["code"]) == (1, "handler_error")
        assert (second["id"], second["data"]) == (2, "still served")


async def test_room_names_must_be_strings(opened: Any) -> None:
    """join_room(42) raises TypeError with a hint; the client gets handler_error; nothing half-works."""
    socketio = SocketServer()
    socketio.on_event("join", lambda: join_room(42))
    async with running(socketio) as url:
        client = await opened(url)
        assert (await client.call("join", id=1))["data"]["code"] == "handler_error"
        with pytest.raises(TypeError, match=r"use str\(42\)"):
            socketio.emit("x", to=[42])  # type: ignore[list-item]
        assert socketio.rooms(client.sid) == [client.sid]


async def test_concurrent_handler_lets_stop_through(opened: Any) -> None:
    """concurrent=True: a long stream handler runs while the same client's 'stop' is handled."""
    socketio = SocketServer()
    stopped = asyncio.Event()

    @socketio.on("stream", concurrent=True)
    async def stream() -> str:
        sent = 0
        while not stopped.is_set() and sent < 500:
            emit("chunk", sent)
            sent += 1
            await asyncio.sleep(0.01)
        return "stream over"

    @socketio.on("stop")
    def stop() -> str:
        stopped.set()
        return "stopping"

    async with running(socketio) as url:
        client = await opened(url)
        await client.send("stream", None, id=1)
        await client.expect("chunk")
        await client.send("stop", None, id=2)
        answers = {}
        while len(answers) < 2:
            frame = await client.recv()
            if frame["event"] == "ack":
                answers[frame["id"]] = frame["data"]
        assert answers == {2: "stopping", 1: "stream over"}


async def test_call_to_an_unknown_sid_raises(opened: Any) -> None:
    """call() to a sid nobody holds raises ClientDisconnectedError at once, as documented."""
    socketio = SocketServer()
    async with running(socketio):
        started = time.monotonic()
        with pytest.raises(ClientDisconnectedError):
            await socketio.call("hello", to="no-such-sid", timeout=5)
        assert time.monotonic() - started < 1


async def test_async_handler_behind_a_plain_decorator_runs(opened: Any) -> None:
    """An async handler wrapped by a functools.wraps decorator is awaited, its ack sent."""
    socketio = SocketServer()

    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            return fn(*args)

        return wrapper

    @socketio.on("wrapped")
    @logged
    async def wrapped(data: Any) -> Any:
        await asyncio.sleep(0)
        return {"wrapped": data}

    async with running(socketio) as url:
        client = await opened(url)
        assert (await client.call("wrapped", 1, id=1))["data"] == {"wrapped": 1}


async def test_healthz_says_full_when_new_clients_are_refused(opened: Any) -> None:
    """At max_connections /healthz answers 503 with status 'full'."""
    socketio = SocketServer(max_connections=1)
    async with running(socketio) as url:
        await opened(url)
        assert socketio.health()["status"] == "full"


async def test_emit_to_a_namespace_the_client_is_not_in_is_not_sent(opened: Any) -> None:
    """emit(namespace='/other') in a handler does not reach a client that never joined /other."""
    socketio = SocketServer()
    socketio.on_event("connect", lambda: None, "/other")
    socketio.on_event("leak", lambda: emit("secret", 1, namespace="/other"))
    async with running(socketio) as url:
        client = await opened(url)
        await client.send("leak")
        assert await client.silent()


def test_emit_from_a_thread_before_start_is_local() -> None:
    """Before the server starts, emit from any thread is a plain call (nothing to hand over)."""
    socketio = SocketServer()
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(socketio.emit("x", 1)))
    thread.start()
    thread.join()
    assert done == [0]


def test_tracebacks_do_not_carry_the_uvloop_import_error() -> None:
    """An exception escaping the server's loop has no ImportError('uvloop') chained to it."""
    from plainsocket.server import _run_loop

    async def fail() -> None:
        raise RuntimeError("an app bug")

    with pytest.raises(RuntimeError) as raised:
        _run_loop(fail())
    assert raised.value.__context__ is None


async def test_namespace_class_has_the_room_methods(opened: Any) -> None:
    """A class-based Namespace can send, enter/leave/close rooms, list rooms and disconnect a sid."""
    from plainsocket import Namespace, request

    class Chat(Namespace):
        def on_enter(self, room: str) -> list[str]:
            self.enter_room(request.sid, room)
            return self.rooms(request.sid)

        def on_shout(self, text: str) -> None:
            self.send(text, to="lobby")

        def on_leave(self, room: str) -> list[str]:
            self.leave_room(request.sid, room)
            return self.rooms(request.sid)

        def on_kick(self) -> None:
            self.disconnect(request.sid)

    socketio = SocketServer()
    socketio.register_namespace(Chat("/chat"))
    async with running(socketio) as url:
        client = await opened(url)
        await client.join("/chat")
        assert (await client.call("enter", "lobby", "/chat", id=1))["data"] == [client.sid, "lobby"]
        await client.send("shout", "hi", "/chat")
        assert (await client.expect("message", "/chat"))["data"] == "hi"
        assert (await client.call("leave", "lobby", "/chat", id=2))["data"] == [client.sid]
        await client.send("kick", None, "/chat")
        await client.expect("disconnect", "/chat")
        await until(lambda: socketio.sids("/chat") == [])


async def test_auth_for_root_reaches_the_connect_handler_on_the_first_attempt(opened: Any) -> None:
    """?connect=client: the server waits for the client's connect of / and hands its data to the handler."""
    from plainsocket.client import Client

    socketio = SocketServer()
    seen: list[Any] = []

    @socketio.on("connect")
    def connect(auth: Any) -> bool:
        seen.append(auth)
        return auth == {"token": "s3cret"}

    async with running(socketio) as url:
        async with connect_ws(f"{url}/?connect=client") as ws:
            await ws.send(json.dumps({"event": "connect", "namespace": "/", "data": {"token": "s3cret"}}))
            greeting = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (greeting["event"], greeting["namespace"]) == ("connect", "/")
        async with Client(url, {"token": "s3cret"}) as client:
            assert client.sid
        assert seen == [{"token": "s3cret"}] * 2, "one attempt each, with the auth, and no refusal first"
        plain = await opened(url)  # without the flag: greeted at once, as wscat users are
        assert plain.hello["event"] == "connect_error" and seen[-1] is None


async def test_shutdown_cancels_a_running_root_connect_handler(opened: Any) -> None:
    """shutdown() during a slow / connect handler: cancelled at once, disconnect runs, nothing after it returns."""
    socketio = SocketServer(close_timeout=1.0)
    events: list[str] = []
    entered = asyncio.Event()

    @socketio.on("connect")
    async def slow_connect() -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
            events.append("connect finished")
        except asyncio.CancelledError:
            events.append("connect cancelled")
            raise

    socketio.on_event("disconnect", lambda reason: events.append(f"disconnect {reason}"))
    await socketio.start("127.0.0.1", 0)
    client = asyncio.ensure_future(connect_ws(f"ws://127.0.0.1:{socketio.port}"))
    await entered.wait()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await socketio.shutdown()
    assert loop.time() - started < 3.0
    assert events == ["connect cancelled", "disconnect server shutdown"]
    ws = await client
    await ws.wait_closed()
    await asyncio.sleep(0)
    assert events == ["connect cancelled", "disconnect server shutdown"], "nothing ran after shutdown()"
