"""Sessions kept for recovery are light, and all of them together stay within one memory budget."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any
from urllib.parse import quote

from conftest import running, until
from wire import Wire

from plainsocket import SocketServer, join_room, request, rooms
from plainsocket.connection import KEPT_SESSION_COST, Connection


def resume_url(base: str, wire: Wire) -> str:
    return f"{base}/?recover={quote(wire.hello['data']['recovery']['token'])}"


async def dropped(socketio: SocketServer, wire: Wire) -> Connection:
    """Abort ``wire``; return its kept session once the drop's disconnect handlers are done."""
    wire.abort()
    await until(lambda: (c := socketio._connections.get(wire.sid)) is not None and c.detached and c.dropping is None)
    return socketio._connections[wire.sid]


async def test_a_kept_session_lets_its_dead_socket_go(opened: Any) -> None:
    """After a drop only the session stays: the dead connection is freed; handlers still saw the request."""
    socketio = SocketServer(recovery_window=30)
    seen: list[Any] = []
    socketio.on_event("disconnect", lambda reason: seen.append((reason, request.headers.get("X-Test"))))
    async with running(socketio) as url:
        client = await opened(url, additional_headers={"X-Test": "hello"})
        socket = weakref.ref(socketio._connections[client.sid].ws)
        conn = await dropped(socketio, client)
        gc.collect()
        assert socket() is None, "the kept session holds no reference to its dropped socket"
        assert seen == [("transport close", "hello")], "the disconnect handler read the handshake's headers"
        assert conn.ws.request is None and conn.ws.protocol.data_to_send() == []
        resumed = await opened(resume_url(url, client))
        assert resumed.hello["data"]["recovered"] is True and resumed.sid == client.sid


async def test_the_budget_ends_the_oldest_kept_sessions_first(opened: Any) -> None:
    """Past recovery_max_memory the oldest kept sessions give way; their clients get recovered false."""
    budget = 3 * KEPT_SESSION_COST + 1000
    socketio = SocketServer(recovery_window=30, recovery_max_memory=budget)
    async with running(socketio) as url:
        # Dropped in the reverse order of their connects: the oldest drop goes first.
        clients = [await opened(url) for _ in range(5)][::-1]
        for client in clients:
            await dropped(socketio, client)
        await until(lambda: socketio.recoverable == 3)
        kept = sorted(socketio.recovery.kept_sessions)
        assert kept == sorted(c.sid for c in clients[2:]), "the two oldest went first"
        assert socketio.recovery.kept_bytes == 3 * KEPT_SESSION_COST
        news = "x" * (KEPT_SESSION_COST + 1500)  # with the log entry's overhead: two sessions' worth
        socketio.emit("news", news)  # kept once, in the broadcast log, which counts too
        await until(lambda: socketio.recoverable == 1)
        assert list(socketio.recovery.kept_sessions) == [clients[-1].sid], "the newest is the one left"
        log = socketio.broadcasts
        assert len(log.entries) == 1 and log.cost > len(news)
        assert socketio.recovery.kept_bytes == KEPT_SESSION_COST, "a kept session does not count the shared frame"
        report = socketio.health()["recovery"]
        held = socketio.recovery.kept_bytes + log.cost
        assert report == {
            "sessions": 1,
            "bytes": held,
            "max_bytes": budget,
            "evicted": 4,
            "log": {"events": 1, "bytes": log.cost, "max_events": 10_000, "max_bytes": budget // 2, "evicted": 0},
        }
        assert held <= budget

        for old in clients[:-1]:
            again = await opened(resume_url(url, old))
            assert again.hello["data"]["recovered"] is False and again.sid != old.sid
        newest = await opened(resume_url(url, clients[-1]))
        assert newest.hello["data"]["recovered"] is True and newest.sid == clients[-1].sid
        assert (await newest.expect("news", "/"))["data"] == news
        assert socketio.recovery.kept_bytes == 0 and socketio.recovery.kept_sessions == {}


async def test_one_session_larger_than_the_budget_is_not_kept(opened: Any) -> None:
    """A session that alone exceeds the budget is ended at once rather than held over it."""
    socketio = SocketServer(recovery_window=30, recovery_max_memory=KEPT_SESSION_COST + 100)
    async with running(socketio) as url:
        client = await opened(url)
        socketio.emit("big", "y" * 5000, to=client.sid)
        await client.expect("big", "/")
        client.abort()
        await until(lambda: socketio.recovery.evicted == 1 and client.sid not in socketio._connections)
        assert socketio.recoverable == 0 and socketio.recovery.kept_bytes == 0
        again = await opened(resume_url(url, client))
        assert again.hello["data"]["recovered"] is False


async def test_the_budget_waits_for_the_drops_disconnect_handlers(opened: Any) -> None:
    """A session that does not fit is ended only after its disconnect handlers ran: they still see its rooms."""
    socketio = SocketServer(recovery_window=30, recovery_max_memory=KEPT_SESSION_COST // 2)
    seen: list[Any] = []
    socketio.on_event("join", lambda room: join_room(room))

    @socketio.on("disconnect")
    async def gone(reason: str) -> None:
        await asyncio.sleep(0.1)  # an async handler: the budget is checked meanwhile
        seen.append((reason, set(rooms())))

    async with running(socketio) as url:
        client = await opened(url)
        await client.call("join", "lobby")
        client.abort()
        await until(lambda: socketio.recovery.evicted == 1)
        assert seen == [("transport close", {client.sid, "lobby"})]
        assert socketio.recoverable == 0 and socketio.recovery.kept_bytes == 0
