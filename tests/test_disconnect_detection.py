"""A dropped client is noticed at once, with recovery on: handlers run at the drop, counts stay true."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from typing import Any

import pytest
from conftest import running, until
from test_hardening import client_frame, stalled_client
from wire import Wire

from plainsocket import SocketServer, request
from server import create_app


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return json.loads(response.read())


def reasons_in(socketio: SocketServer, *namespaces: str) -> list[tuple[str, str, str]]:
    """Record (sid, namespace, reason) of every disconnect handler run in ``namespaces``."""
    reasons: list[tuple[str, str, str]] = []
    for namespace in namespaces:

        def record(reason: str) -> None:
            reasons.append((request.sid, request.namespace, reason))

        socketio.on_event("disconnect", record, namespace)
    return reasons


async def test_demo_as_shipped_notices_an_aborted_client_within_a_second(server_process: Any) -> None:
    """python server.py (recovery on): a TCP abort logs its disconnect within 1 s; /healthz stops counting it."""
    server = server_process()
    client = await Wire.open(server.url)
    await client.join("/test")
    await client.expect("my response", "/test")
    assert health(server.port)["connections"] == 1
    line = f"disconnect sid={client.sid} address=127.0.0.1 reason=transport close"
    assert server.proc.stderr is not None
    started = time.monotonic()
    client.abort()
    async with asyncio.timeout(1.0):
        while line not in await asyncio.to_thread(server.proc.stderr.readline):
            pass
    assert time.monotonic() - started < 1.0
    report = health(server.port)
    assert report["connections"] == 0 and report["namespaces"] == {} and report["recoverable"] == 1
    code, out, _ = await asyncio.to_thread(server.stop)
    assert code == 0
    assert out.count(f"Client disconnected {client.sid} transport close") == 1
    assert out.count("Client disconnected") == 1, "shutdown runs nothing more for a kept session"


async def test_a_thousand_aborted_clients_leave_no_ghosts(caplog: pytest.LogCaptureFixture, capsys: Any) -> None:
    """1,000 connect/abort cycles on the demo app: every count back to its baseline, 1,000 recoverable."""
    caplog.set_level(logging.INFO, logger="plainsocket")
    socketio = create_app(recovery_window=120)
    async with running(socketio) as url:
        # From another address: 127.0.0.1 may hold 1,000 sessions, live and kept together.
        watcher = await Wire.open(url, local_addr=("127.0.0.2", 0))
        await watcher.join("/test")
        assert socketio.port is not None
        baseline = await asyncio.to_thread(health, socketio.port)
        assert baseline["connections"] == 1 and baseline["namespaces"] == {"/": 1, "/test": 1}
        baseline.pop("recovery")
        present = baseline.pop("presence")

        async def cycle() -> str:
            client = await Wire.open(url)
            await client.join("/test")
            await client.send("join", {"room": "lobby"}, "/test")
            await client.expect("my response", "/test")  # Connected
            await client.expect("my response", "/test")  # In rooms: ...
            client.abort()
            return client.sid

        aborted: list[str] = []
        for _ in range(10):
            aborted += await asyncio.gather(*(cycle() for _ in range(100)))
        await until(lambda: socketio.connection_count() == 1 and socketio.recoverable == 1000, timeout=10)
        report = await asyncio.to_thread(health, socketio.port)
        kept = report.pop("recovery")
        report.pop("presence")  # presence keeps dropped members for its grace: checked below
        assert report == {**baseline, "recoverable": 1000}
        assert kept["sessions"] == 1000 and kept["evicted"] == 0
        assert 1000 * 1024 < kept["bytes"] < kept["max_bytes"], "each kept session counts against the budget"
        assert socketio.sids("/test") == [watcher.sid] and socketio.members("lobby", namespace="/test") == []
        assert socketio.connection_count("/test") == 1 and await socketio.cluster_count() == 1
        assert await socketio.cluster_sids("/test") == [watcher.sid]
        disconnects = [r.getMessage() for r in caplog.records if r.getMessage().startswith("disconnect sid=")]
        assert len(disconnects) == 1000 and all("reason=transport close" in line for line in disconnects)
        printed = capsys.readouterr().out.splitlines()
        assert sorted(printed) == sorted(f"Client disconnected {sid} transport close" for sid in aborted)
        # Presence is quiet across blips: the dropped members leave once its grace is over.
        await until(lambda: socketio.health()["presence"] == present, timeout=15)
        # The kept sessions still record for a resume: a broadcast to the room reaches their logs.
        socketio.emit("my response", {"data": "lobby news"}, namespace="/test", to="lobby")
        missed = [socketio.recovery.missed(socketio._connections[sid], None) for sid in aborted]
        assert all(frames and b"lobby news" in frames[-1] and frames[-1].endswith(b"}") for frames in missed)


async def test_ping_timeout_with_recovery_on_runs_each_handler_once(opened: Any) -> None:
    """A client that stops answering pings: '/chat' then '/' handlers run once with 'ping timeout', kept."""
    socketio = SocketServer(recovery_window=30, ping_interval=0.2, ping_timeout=0.3, close_timeout=0.3)
    socketio.on_event("connect", lambda: None, "/chat")
    reasons = reasons_in(socketio, "/", "/chat")
    async with running(socketio):
        assert socketio.port is not None
        silent = await stalled_client(socketio.port, rcvbuf=None)
        try:
            silent.sendall(client_frame(json.dumps({"event": "connect", "namespace": "/chat"})))
            await until(lambda: socketio.connection_count("/chat") == 1)
            (sid,) = socketio.sids("/chat")
            await until(lambda: len(reasons) == 2)
            assert reasons == [(sid, "/chat", "ping timeout"), (sid, "/", "ping timeout")]
            assert socketio.recoverable == 1 and socketio.connection_count() == 0 and socketio.sids() == []
        finally:
            silent.close()
    assert reasons == [(sid, "/chat", "ping timeout"), (sid, "/", "ping timeout")], "shutdown ran nothing more"


async def test_slow_consumer_with_recovery_on_is_told_at_the_drop(opened: Any) -> None:
    """A client that stops reading is closed with 4000: its handler runs once with 'slow consumer', kept."""
    socketio = SocketServer(recovery_window=30, max_send_buffer=64 * 1024, close_timeout=0.3)
    reasons = reasons_in(socketio, "/")
    async with running(socketio) as url:
        bystander = await opened(url)
        assert socketio.port is not None
        slow = await stalled_client(socketio.port)
        try:
            await until(lambda: socketio.connection_count() == 2)
            (sid,) = set(socketio.sids()) - {bystander.sid}
            for n in range(5000):
                socketio.emit("seq", {"n": n, "p": "x" * 1000}, to=sid)
                if n % 100 == 0:
                    await asyncio.sleep(0)  # let the server write this batch
                if reasons:
                    break
            await until(lambda: reasons == [(sid, "/", "slow consumer")])
            assert socketio.recoverable == 1 and socketio.sids() == [bystander.sid]
        finally:
            slow.close()
        frame = await bystander.call("anything", id=3)
        assert frame["data"]["code"] == "unknown_event", "the server goes on serving"
    assert [r for r in reasons if r[0] == sid] == [(sid, "/", "slow consumer")], "shutdown ran nothing more"
