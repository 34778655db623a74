"""Restarts that lose nothing: a stopping node of a cluster hands its sessions to the others.

A node that stops (SIGTERM, SIGHUP from a supervisor, ``shutdown()``) while it has Redis and
recovery stops accepting, closes its clients with 1012 and keeps their sessions claimable for
``drain_timeout``; a client that resumes on another node gets every event exactly once.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from conftest import ROOT, running, until
from test_recovery import Receiver, joined, make_app, storm
from websockets.exceptions import ConnectionClosed
from wire import Wire

from plainsocket.backplane import Emitter
from plainsocket.client import Client

TOTAL = 600


async def read_until_closed(client: Receiver) -> int:
    """Consume frames until the server closes the socket; return its close code."""
    while True:
        try:
            await client.next()
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "the server closed with a close frame"
            return closed.rcvd.code


async def test_a_drained_node_hands_its_client_over_mid_storm(redis_server: Any, opened: Any) -> None:
    """Node A shuts down while B storms its client: 1012, resumed on B, all 600 exactly once, in order."""
    a, seen_a = make_app(message_queue=redis_server.url, heartbeat_interval=0.25, drain_timeout=10)
    b, seen_b = make_app(message_queue=redis_server.url, heartbeat_interval=0.25)
    async with running(a) as url_a, running(b) as url_b:
        await until(lambda: len(a.backplane.alive_nodes()) == len(b.backplane.alive_nodes()) == 2)
        client = await joined(url_a, opened)
        sid = client.wire.sid
        async with storm(b, TOTAL) as emitting:
            await client.until_number(100)
            started = time.monotonic()
            stopping = asyncio.ensure_future(a.shutdown())
            assert await read_until_closed(client) == 1012, "service restart: reconnect now"
            assert seen_a["disconnects"] == [(sid, "service restart")], "told at once, as for a drop"
            hello = await client.resume(url_b, opened)
            assert hello["data"]["sid"] == sid and hello["data"]["recovered"] is True
            await stopping
            assert time.monotonic() - started < 5, "the drain ends once every session is claimed"
            await emitting
            welcomed = []
            while len(client.numbers) < TOTAL or not welcomed:
                frame = await client.next()
                if frame["event"] == "welcome":  # B's connect handler, after the replay
                    welcomed.append(frame["data"]["recovered"])
        assert client.numbers == list(range(TOTAL)), "every event exactly once, in order"
        assert welcomed == [True] and await client.wire.silent()
        assert [c[:2] for c in seen_b["connects"]] == [(sid, True)] and seen_b["disconnects"] == []


async def test_alone_a_stopping_node_does_not_drain(opened: Any) -> None:
    """Without Redis no other node can take the session: shutdown closes with 1001 at once."""
    socketio, _ = make_app(drain_timeout=10)
    async with running(socketio) as url:
        client = await joined(url, opened)
        started = time.monotonic()
        stopping = asyncio.ensure_future(socketio.shutdown())
        assert await read_until_closed(client) == 1001
        await stopping
        assert time.monotonic() - started < 3 and not socketio.draining


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_pids(parent: int) -> set[int]:
    """The children of ``parent`` (Linux: /proc/PID/task/*/children)."""
    found: set[int] = set()
    for task in os.listdir(f"/proc/{parent}/task"):
        with open(f"/proc/{parent}/task/{task}/children") as children:
            found |= {int(pid) for pid in children.read().split()}
    return found


def emit_numbers(redis_url: str, done: threading.Event) -> None:
    """Publish events 0..TOTAL-1 to /test through Redis, paced over about six seconds."""
    emitter = Emitter(redis_url)
    try:
        for i in range(TOTAL):
            emitter.emit("n", i, namespace="/test")
            time.sleep(0.01)
    finally:
        emitter.close()
        done.set()


async def test_sighup_replaces_workers_one_at_a_time_and_loses_nothing(redis_server: Any) -> None:
    """--workers 2 on Redis, SIGHUP to the parent: both workers replaced; a client keeps every event once."""
    port = free_port()
    command = [sys.executable, "-m", "plainsocket", "run", "server:socketio", "--workers", "2", "--port", str(port)]
    command += ["--redis", redis_server.url, "--heartbeat-interval", "0.25", "--log-level", "warning"]
    parent = subprocess.Popen(  # noqa: ASYNC220 (returns at once: the supervisor runs alongside)
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        url = f"ws://127.0.0.1:{port}"
        wire = None
        deadline = time.monotonic() + 20
        while wire is None:
            try:
                wire = await Wire.open(url)
            except OSError:
                assert time.monotonic() < deadline, "the workers did not start"
                await asyncio.sleep(0.1)
        await until(lambda: len(worker_pids(parent.pid)) == 2, timeout=20)
        first = worker_pids(parent.pid)
        client = Receiver(wire)
        await wire.send("connect", None, "/test")
        await wire.expect("connect", "/test")
        # And the Python client, which must resume by itself at once after a 1012.
        python_client = Client(url)
        await python_client.open()
        heard: list[int] = []
        resumed: list[bool] = []
        python_client.on("reconnect", lambda attempt, recovered: resumed.append(recovered))
        (await python_client.connect("/test")).on("n", heard.append)
        done = threading.Event()
        threading.Thread(target=emit_numbers, args=(redis_server.url, done), daemon=True).start()
        await client.until_number(50)
        parent.send_signal(signal.SIGHUP)
        moves = 0
        fewest = len(worker_pids(parent.pid))
        while len(client.numbers) < TOTAL:
            fewest = min(fewest, len(worker_pids(parent.pid)))
            try:
                await client.next(timeout=15)
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1012
                moves += 1
                client.wire = await Wire.open(f"{url}/?recover={quote(client.token)}&offset={quote(client.offset)}")
                assert client.wire.hello["data"]["recovered"] is True, "resumed on another worker"
                client.token = client.wire.hello["data"]["recovery"]["token"]
        assert client.numbers == list(range(TOTAL)), "every event exactly once, in order"
        assert moves >= 1, "the client's worker was replaced while it listened"
        assert fewest >= 2, "one at a time: a successor starts before its worker goes"
        await until(lambda: len(heard) >= TOTAL, timeout=15)
        assert heard == list(range(TOTAL)) and resumed and all(resumed), "the Python client resumed each time"
        await python_client.close()
        await until(lambda: len(worker_pids(parent.pid)) == 2 and not worker_pids(parent.pid) & first, timeout=30)
        assert done.wait(10)
        await client.wire.close()
    finally:
        parent.send_signal(signal.SIGTERM)
        try:
            parent.wait(30)
        except subprocess.TimeoutExpired:
            parent.kill()
            parent.wait()
    errors = [line for line in (parent.stderr.read() if parent.stderr else "").splitlines() if "Traceback" in line]
    assert errors == [] and parent.returncode == 0


async def test_an_emitters_frame_has_one_offset_on_every_node(redis_server: Any, opened: Any) -> None:
    """Both nodes record an Emitter's frame under the same offset: a session moving between them gets it once."""
    a, _ = make_app(message_queue=redis_server.url, heartbeat_interval=0.25)
    b, _ = make_app(message_queue=redis_server.url, heartbeat_interval=0.25)
    async with running(a) as url_a, running(b) as url_b:
        await until(lambda: len(a.backplane.alive_nodes()) == len(b.backplane.alive_nodes()) == 2)
        on_a, on_b = await joined(url_a, opened), await joined(url_b, opened)
        emitter = Emitter(redis_server.url)
        try:
            assert await asyncio.to_thread(emitter.emit, "n", 7, namespace="/test") == 2
        finally:
            emitter.close()
        frames = [await client.next() for client in (on_a, on_b)]
        assert [f["data"] for f in frames] == [7, 7]
        assert frames[0]["offset"] == frames[1]["offset"]


async def test_a_resume_under_way_when_the_drain_begins_is_handed_on(redis_server: Any, opened: Any) -> None:
    """B drains while a client's resume through B still claims the session from A: it goes on to A."""
    a, _ = make_app(message_queue=redis_server.url, heartbeat_interval=0.25)
    b, _ = make_app(message_queue=redis_server.url, heartbeat_interval=0.25, drain_timeout=10)

    @a.on("disconnect")
    async def slow(reason: str) -> None:
        await asyncio.sleep(0.5)  # A hands the session over only after its handlers ran

    async with running(a) as url_a, running(b) as url_b:
        await until(lambda: len(a.backplane.alive_nodes()) == len(b.backplane.alive_nodes()) == 2)
        client = Receiver(await opened(url_a))
        sid = client.wire.sid
        client.wire.abort()
        await until(lambda: (conn := a._connections.get(sid)) is not None and conn.detached)
        resuming = asyncio.ensure_future(client.resume(url_b, opened))
        await until(lambda: b._resuming == 1)
        started = time.monotonic()
        stopping = asyncio.ensure_future(b.shutdown())
        hello = await resuming
        assert hello["data"]["sid"] == sid and hello["data"]["recovered"] is True
        assert await read_until_closed(client) == 1012, "resumed as B drained: sent on"
        again = await client.resume(url_a, opened)
        assert again["data"]["sid"] == sid and again["data"]["recovered"] is True, "A took it back"
        await stopping
        assert time.monotonic() - started < 5 and sid not in b._connections
        assert a._connections[sid].detached is False


async def test_a_drain_keeps_every_session_whatever_the_memory_budget(redis_server: Any, opened: Any) -> None:
    """The drain's sessions held their memory while live: the budget does not end them."""
    a, _ = make_app(message_queue=redis_server.url, heartbeat_interval=0.25, recovery_max_memory=10_000)
    b, _ = make_app(message_queue=redis_server.url, heartbeat_interval=0.25)
    async with running(a) as url_a, running(b) as url_b:
        await until(lambda: len(a.backplane.alive_nodes()) == len(b.backplane.alive_nodes()) == 2)
        clients = [await joined(url_a, opened) for _ in range(5)]
        a.emit("big", "x" * 10_000, namespace="/test")
        for client in clients:
            assert (await client.next())["event"] == "big"
        stopping = asyncio.ensure_future(a.shutdown())
        for client in clients:
            assert await read_until_closed(client) == 1012
        for client in clients:
            hello = await client.resume(url_b, opened)
            assert hello["data"]["recovered"] is True
        await stopping
        assert a.recovery.evicted == 0


async def test_the_drain_waits_only_for_the_clients_it_closed(redis_server: Any, opened: Any) -> None:
    """A session dropped before the drain (its client gone for good) does not hold the drain up."""
    a, _ = make_app(message_queue=redis_server.url, heartbeat_interval=0.25, drain_timeout=10)
    b, _ = make_app(message_queue=redis_server.url, heartbeat_interval=0.25)
    async with running(a) as url_a, running(b) as url_b:
        await until(lambda: len(a.backplane.alive_nodes()) == len(b.backplane.alive_nodes()) == 2)
        gone = await opened(url_a)
        gone.abort()
        await until(lambda: (conn := a._connections.get(gone.sid)) is not None and conn.detached)
        client = await joined(url_a, opened)
        started = time.monotonic()
        stopping = asyncio.ensure_future(a.shutdown())
        assert await read_until_closed(client) == 1012
        assert (await client.resume(url_b, opened))["data"]["recovered"] is True
        await stopping
        assert time.monotonic() - started < 5, "done once its own client was claimed"


async def test_drain_then_shutdown_stops_the_node(redis_server: Any, opened: Any) -> None:
    """drain() called on its own, then shutdown(): the node stops, with nothing kept."""
    a, _ = make_app(message_queue=redis_server.url, heartbeat_interval=0.25, drain_timeout=0.5)
    b, _ = make_app(message_queue=redis_server.url, heartbeat_interval=0.25)
    async with running(a) as url_a, running(b):
        await until(lambda: len(a.backplane.alive_nodes()) == len(b.backplane.alive_nodes()) == 2)
        client = await joined(url_a, opened)
        await a.drain()
        assert await read_until_closed(client) == 1012
        await a.shutdown()
        assert a._closing and a._connections == {} and a.recoverable == 0
        await until(lambda: len(b.backplane.alive_nodes()) == 1, timeout=5)


def test_a_rolling_restart_stops_when_a_new_worker_does_not_start(redis_server: Any, tmp_path: Path) -> None:
    """A release that fails at import replaces no worker: the roll stops, the old workers keep serving."""
    marker = tmp_path / "broken"
    (tmp_path / "app.py").write_text(
        "import os\n"
        f"if os.path.exists({str(marker)!r}):\n"
        "    raise SystemExit('this release is broken')\n"
        "from plainsocket import SocketServer\n"
        "socketio = SocketServer()\n"
    )
    port = free_port()
    command = [sys.executable, "-m", "plainsocket", "run", "app:socketio", "--app-dir", str(tmp_path)]
    command += ["--workers", "2", "--port", str(port), "--redis", redis_server.url]
    parent = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lines = _lines_of(parent)
        assert _wait_for(lines, "listening on", 20) and _wait_for(lines, "listening on", 20), "both workers listen"
        before = worker_pids(parent.pid)
        assert len(before) == 2
        marker.write_text("")
        parent.send_signal(signal.SIGHUP)
        assert _wait_for(lines, "rolling restart stopped", 20)
        assert worker_pids(parent.pid) == before, "no worker was replaced"
        assert _listening(port), "the old workers still serve"
        marker.unlink()
        parent.send_signal(signal.SIGHUP)  # a good release rolls through
        deadline = time.monotonic() + 30
        while worker_pids(parent.pid) & before or len(worker_pids(parent.pid)) != 2:
            assert time.monotonic() < deadline, "the good release did not replace the workers"
            time.sleep(0.1)
    finally:
        parent.send_signal(signal.SIGTERM)
        try:
            parent.wait(30)
        except subprocess.TimeoutExpired:
            parent.kill()
            parent.wait()
    assert parent.returncode == 0


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """The stderr lines of ``process``, read by a thread as they come (a full pipe would block it)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str], text: str, timeout: float) -> bool:
    """Consume lines until one contains ``text``; False if none does within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if text in lines.get(timeout=max(0.0, deadline - time.monotonic())):
                return True
        except queue.Empty:
            return False


async def test_a_stopped_node_stops_beating_even_when_a_cancellation_is_lost(redis_server: Any) -> None:
    """A heartbeat whose cancellation a Redis call swallowed still ends with the node."""
    a, _ = make_app(message_queue=redis_server.url, heartbeat_interval=0.2)
    b, _ = make_app(message_queue=redis_server.url, heartbeat_interval=0.2)
    async with running(a), running(b):
        await until(lambda: len(b.backplane.alive_nodes()) == 2)
        backplane = a.backplane
        beat, in_beat = backplane._beat, asyncio.Event()

        async def beat_that_loses_a_cancellation() -> None:
            backplane._beat = beat  # once: the next beats are the real ones
            await beat()
            in_beat.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                pass  # what a library that swallows a cancellation does: the loop goes on

        backplane._beat = beat_that_loses_a_cancellation
        await in_beat.wait()
        heartbeat = backplane._tasks[2]
        await a.shutdown()
        assert heartbeat.done()  # it would beat on, and keep the node alive, without the check
        await until(lambda: len(b.backplane.alive_nodes()) == 1)
