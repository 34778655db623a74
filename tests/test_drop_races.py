"""Races around a recoverable drop: what runs, what is kept, what a resume gets back.

The design under test (docs/protocol.md, "Extension: connection state recovery"):

* at a recoverable drop each namespace's disconnect handler runs at once, and once;
* the kept session keeps the rooms it had at the drop, whatever its own disconnect handlers
  do; room changes made by other code during or after the drop apply to the kept session;
* a resume (on this node, or on another one through Redis) runs the connect handlers only
  after the drop's disconnect handlers finished;
* expiry, kick and shutdown of a kept session run no handler, and leave no membership behind;
* frames queued behind an async handler when the socket drops: a queued ``disconnect`` takes
  that namespace out of the kept session without running its handler again, a queued
  ``connect`` is answered with ``connect_error``.

Each test waits for handlers through asyncio events they set, for frames on the wire, or for
the server tasks themselves (``conn.dropping``, ``conn.worker``); ``until`` only for state no
frame announces.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from conftest import running, until
from wire import Wire

from plainsocket import SocketServer, join_room, leave_room, request
from plainsocket.connection import Connection
from plainsocket.recovery import digest

GONE = "transport close"
DROPPED_BEFORE_JOIN = "the connection dropped before the namespace was joined"


def resume_url(base: str, wire: Wire, offset: str | None = None) -> str:
    """The URL that resumes ``wire``'s session after the frame of ``offset`` (all frames when None)."""
    url = f"{base}/?recover={quote(wire.hello['data']['recovery']['token'])}"
    return url + (f"&offset={quote(offset)}" if offset else "")


def recorder(calls: list[Any]) -> Callable[[str], None]:
    """A sync disconnect handler that records (namespace, reason)."""

    def gone(reason: str) -> None:
        calls.append((request.namespace, reason))

    return gone


def recorded(socketio: SocketServer, conn: Connection) -> int:
    """Count the frames a resume of ``conn`` from its first frame would replay."""
    frames = socketio.recovery.missed(conn, None)
    assert frames is not None, "nothing recorded for it is gone"
    return len(frames)


async def dropped(socketio: SocketServer, wire: Wire) -> Connection:
    """Abort ``wire``'s TCP connection; return its kept session once the drop's handlers finished."""
    wire.abort()
    # A drop's task clears itself from the session when its handlers are done.
    await until(lambda: (c := socketio._connections.get(wire.sid)) is not None and c.detached and c.dropping is None)
    return socketio._connections[wire.sid]


async def waiting_for_claim(socketio: SocketServer, wire: Wire) -> None:
    """Wait until a resume of ``wire``'s session reached ``socketio`` (it took the token)."""
    key = digest(wire.hello["data"]["recovery"]["token"])
    await until(lambda: key not in socketio.recovery._tokens)


# -- Rooms of the kept session ---------------------------------------------------------------


async def test_own_disconnect_handler_leave_room_keeps_the_rooms_of_the_drop(opened: Any) -> None:
    """A disconnect handler's leave_room is cleanup: the session resumes in the rooms it had at the drop."""
    socketio = SocketServer(recovery_window=30)
    calls: list[Any] = []
    socketio.on_event("join", lambda room: join_room(room))

    def gone(reason: str) -> None:
        calls.append((request.namespace, reason))
        leave_room("lobby")

    socketio.on_event("disconnect", gone)
    async with running(socketio) as url:
        client = await opened(url)
        ack = await client.call("join", "lobby", id=1)
        sid = client.sid
        conn = await dropped(socketio, client)
        assert calls == [("/", GONE)]
        assert socketio.kept_registry.rooms("/", sid) == {sid, "lobby"}
        assert socketio.members("lobby") == [] and socketio.sids() == [], "tracking shows live clients only"
        before = recorded(socketio, conn)
        socketio.emit("news", "during the window", to="lobby")
        assert recorded(socketio, conn) == before + 1, "recorded once for the kept session"

        resumed = await opened(resume_url(url, client, ack["offset"]))
        assert resumed.hello["data"]["sid"] == sid and resumed.hello["data"]["recovered"] is True
        assert (await resumed.expect("news", "/"))["data"] == "during the window"
        assert await resumed.silent()
        assert socketio.rooms(sid) == [sid, "lobby"]
        socketio.emit("news", "after the resume", to="lobby")
        assert (await resumed.expect("news", "/"))["data"] == "after the resume"
        assert calls == [("/", GONE)], "nothing more ran at the resume"
    assert calls == [("/", GONE), ("/", "server shutdown")]
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()


async def test_own_disconnect_handler_join_room_keeps_the_rooms_of_the_drop(opened: Any) -> None:
    """A disconnect handler's join_room does not add a room to the kept session: it resumes in the drop's rooms."""
    socketio = SocketServer(recovery_window=30)
    calls: list[Any] = []
    socketio.on_event("join", lambda room: join_room(room))

    def gone(reason: str) -> None:
        calls.append((request.namespace, reason))
        join_room("departed")  # e.g. "recently left" bookkeeping

    socketio.on_event("disconnect", gone)
    async with running(socketio) as url:
        client = await opened(url)
        ack = await client.call("join", "lobby", id=1)
        sid = client.sid
        conn = await dropped(socketio, client)
        assert calls == [("/", GONE)]
        assert socketio.kept_registry.rooms("/", sid) == {sid, "lobby"}
        before = recorded(socketio, conn)
        socketio.emit("news", "to departed", to="departed")
        assert recorded(socketio, conn) == before

        resumed = await opened(resume_url(url, client, ack["offset"]))
        assert resumed.hello["data"]["recovered"] is True
        assert await resumed.silent()
        assert socketio.rooms(sid) == [sid, "lobby"]
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()


async def test_enter_room_by_other_code_during_the_drop_reaches_the_kept_session(opened: Any) -> None:
    """enter_room by other code while the drop's disconnect handlers run applies to the kept session."""
    socketio = SocketServer(recovery_window=30)
    calls: list[Any] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def gone(reason: str) -> None:
        calls.append((request.namespace, reason))
        started.set()
        await release.wait()

    socketio.on_event("disconnect", gone)
    async with running(socketio) as url:
        client = await opened(url)
        sid = client.sid
        client.abort()
        await started.wait()
        socketio.enter_room(sid, "team")  # e.g. another client's handler invites this one
        conn = socketio._connections[sid]
        before = recorded(socketio, conn)
        socketio.emit("news", "while its handlers run", to="team")
        assert recorded(socketio, conn) == before + 1, "recorded once, though the sid is in both registries"
        release.set()
        assert conn.dropping is not None
        await conn.dropping
        assert calls == [("/", GONE)]
        assert socketio.kept_registry.rooms("/", sid) == {sid, "team"}
        assert socketio.members("team") == []
        socketio.emit("news", "after its handlers", to="team")
        assert recorded(socketio, conn) == before + 2

        resumed = await opened(resume_url(url, client))
        assert resumed.hello["data"]["recovered"] is True
        assert (await resumed.expect("news", "/"))["data"] == "while its handlers run"
        assert (await resumed.expect("news", "/"))["data"] == "after its handlers"
        assert await resumed.silent()
        assert socketio.rooms(sid) == [sid, "team"]
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()


async def test_leave_room_by_other_code_during_the_drop_reaches_the_kept_session(opened: Any) -> None:
    """leave_room by other code while the drop's disconnect handlers run applies to the kept session."""
    socketio = SocketServer(recovery_window=30)
    calls: list[Any] = []
    started, release = asyncio.Event(), asyncio.Event()
    socketio.on_event("join", lambda room: join_room(room))

    async def gone(reason: str) -> None:
        calls.append((request.namespace, reason))
        started.set()
        await release.wait()

    socketio.on_event("disconnect", gone)
    async with running(socketio) as url:
        client = await opened(url)
        ack = await client.call("join", "lobby", id=1)
        sid = client.sid
        client.abort()
        await started.wait()
        socketio.leave_room(sid, "lobby")  # e.g. a moderator's handler removes this one
        release.set()
        conn = socketio._connections[sid]
        assert conn.dropping is not None
        await conn.dropping
        assert calls == [("/", GONE)]
        assert socketio.kept_registry.rooms("/", sid) == {sid}
        before = recorded(socketio, conn)
        socketio.emit("news", "to the lobby", to="lobby")
        assert recorded(socketio, conn) == before

        resumed = await opened(resume_url(url, client, ack["offset"]))
        assert resumed.hello["data"]["recovered"] is True
        assert await resumed.silent()
        assert socketio.rooms(sid) == [sid]
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()


async def test_room_changes_after_the_drop_reach_the_kept_session(opened: Any) -> None:
    """enter_room and leave_room after the drop's handlers finished change the rooms the session resumes in."""
    socketio = SocketServer(recovery_window=30)
    calls: list[Any] = []
    socketio.on_event("join", lambda room: join_room(room))
    socketio.on_event("disconnect", recorder(calls))
    async with running(socketio) as url:
        client = await opened(url)
        ack = await client.call("join", "lobby", id=1)
        sid = client.sid
        conn = await dropped(socketio, client)
        socketio.enter_room(sid, "team")
        socketio.leave_room(sid, "lobby")
        assert socketio.kept_registry.rooms("/", sid) == {sid, "team"}
        before = recorded(socketio, conn)
        socketio.emit("news", "to the lobby", to="lobby")
        socketio.emit("news", "to the team", to="team")
        assert recorded(socketio, conn) == before + 1

        resumed = await opened(resume_url(url, client, ack["offset"]))
        assert (await resumed.expect("news", "/"))["data"] == "to the team"
        assert await resumed.silent()
        assert socketio.rooms(sid) == [sid, "team"]
        assert calls == [("/", GONE)]
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()


# -- Resume waits for the drop's disconnect handlers --------------------------------------------


async def test_resume_on_the_same_node_runs_connect_handlers_after_the_drops_disconnect_handlers(
    opened: Any,
) -> None:
    """A resume that arrives while the drop's disconnect handlers run waits for them before its connect handlers."""
    socketio = SocketServer(recovery_window=30)
    events: list[Any] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def gone(reason: str) -> None:
        events.append(("disconnect start", reason))
        started.set()
        await release.wait()  # e.g. a presence write to a database
        events.append(("disconnect end", reason))

    def connect() -> None:
        events.append(("connect", request.recovered))

    socketio.on_event("connect", connect)
    socketio.on_event("disconnect", gone)
    async with running(socketio) as url:
        client = await opened(url)
        client.abort()
        await started.wait()
        resuming = asyncio.ensure_future(opened(resume_url(url, client)))
        await waiting_for_claim(socketio, client)
        assert events == [("connect", False), ("disconnect start", GONE)]
        release.set()
        resumed = await resuming
        assert resumed.hello["data"]["recovered"] is True and resumed.hello["data"]["sid"] == client.sid
        assert events == [("connect", False), ("disconnect start", GONE), ("disconnect end", GONE), ("connect", True)]
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()


async def test_resume_on_another_node_runs_connect_handlers_after_the_drops_disconnect_handlers(
    redis_server: Any, opened: Any
) -> None:
    """A hand-over to another node waits for the drop's disconnect handlers; the rooms of the drop move with it."""
    events: list[Any] = []
    started, release = asyncio.Event(), asyncio.Event()

    def node(name: str) -> SocketServer:
        socketio = SocketServer(recovery_window=30, message_queue=redis_server.url, heartbeat_interval=0.25)

        async def gone(reason: str) -> None:
            events.append((name, "disconnect start", reason))
            leave_room("lobby")  # cleanup: the session still resumes in the lobby
            started.set()
            await release.wait()  # e.g. a presence write to a database
            events.append((name, "disconnect end", reason))

        def connect() -> None:
            events.append((name, "connect", request.recovered))

        socketio.on_event("connect", connect)
        socketio.on_event("disconnect", gone)
        socketio.on_event("join", lambda room: join_room(room))
        return socketio

    a, b = node("A"), node("B")
    async with running(a) as url_a, running(b) as url_b:
        await until(lambda: len(a.backplane.alive_nodes()) == 2 and len(b.backplane.alive_nodes()) == 2)
        client = await opened(url_a)
        ack = await client.call("join", "lobby", id=1)
        sid = client.sid
        client.abort()
        await started.wait()
        resuming = asyncio.ensure_future(opened(resume_url(url_b, client, ack["offset"])))
        await waiting_for_claim(a, client)
        assert events == [("A", "connect", False), ("A", "disconnect start", GONE)]
        release.set()
        resumed = await resuming
        assert resumed.hello["data"]["recovered"] is True and resumed.hello["data"]["sid"] == sid
        assert events == [
            ("A", "connect", False),
            ("A", "disconnect start", GONE),
            ("A", "disconnect end", GONE),
            ("B", "connect", True),
        ]
        assert b.rooms(sid) == [sid, "lobby"]
        assert sid not in a._connections and a.recoverable == 0
        assert a.registry.is_empty() and a.kept_registry.is_empty()
        a.emit("news", "from A", to="lobby")
        assert (await resumed.expect("news", "/"))["data"] == "from A"
        assert await resumed.silent()
    assert b.registry.is_empty() and b.kept_registry.is_empty()


# -- Shutdown ---------------------------------------------------------------------------------


async def test_shutdown_lets_a_running_drop_disconnect_handler_finish(opened: Any) -> None:
    """Shutdown waits for a dropped session's running disconnect handler (within close_timeout), runs nothing more."""
    socketio = SocketServer(recovery_window=30, close_timeout=1.0)
    done: list[str] = []
    started = asyncio.Event()

    async def gone(reason: str) -> None:
        done.append(f"started: {reason}")
        started.set()
        try:
            await asyncio.sleep(0.3)  # e.g. a database write
        except asyncio.CancelledError:
            done.append("cancelled")
            raise
        done.append("finished")

    socketio.on_event("disconnect", gone)
    async with running(socketio) as url:
        client = await opened(url)
        client.abort()
        await started.wait()
    assert done == [f"started: {GONE}", "finished"]
    assert socketio.recoverable == 0 and socketio._connections == {}
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()


@pytest.mark.parametrize("client", ["live", "dropped"])
async def test_shutdown_gives_a_drop_disconnect_handler_as_long_as_a_live_clients(opened: Any, client: str) -> None:
    """At shutdown a dropped session's running disconnect handler gets the time a live client's handler gets."""
    socketio = SocketServer(recovery_window=30, close_timeout=0.2)
    done: list[Any] = []

    async def gone(reason: str) -> None:
        done.append(("started", reason))
        try:
            await asyncio.sleep(0.3)  # e.g. a database write: longer than close_timeout, within close_timeout + 1
        except asyncio.CancelledError:
            done.append(("cancelled", reason))
            raise
        done.append(("finished", reason))

    socketio.on_event("disconnect", gone)
    async with running(socketio) as url:
        wire = await opened(url)
        if client == "dropped":
            wire.abort()
            await until(lambda: done == [("started", GONE)])
    reason = GONE if client == "dropped" else "server shutdown"
    assert done == [("started", reason), ("finished", reason)]
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()


# -- Frames queued behind an async handler at the drop -------------------------------------------


class Blocker:
    """An async ``slow`` handler that the test releases; frames sent meanwhile queue behind it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.outcome: list[str] = []

    async def slow(self) -> None:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.outcome.append("cancelled")
            raise
        self.outcome.append("finished")

    async def queue(self, socketio: SocketServer, wire: Wire, *frames: tuple[str, str]) -> Connection:
        """Start ``slow``, then send ``frames`` (event, namespace); return once the server queued them all."""
        await wire.send("slow")
        await self.started.wait()
        for event, namespace in frames:
            await wire.send(event, None, namespace)
        conn = socketio._connections[wire.sid]
        await until(lambda: conn.backlog is not None and len(conn.backlog) == len(frames))
        return conn


def chat_app(recovery_window: float, calls: list[Any], blocker: Blocker) -> SocketServer:
    socketio = SocketServer(recovery_window=recovery_window)
    socketio.on_event("connect", lambda: calls.append(("connect", request.namespace)), "/chat")
    socketio.on_event("disconnect", recorder(calls), "/chat")
    socketio.on_event("disconnect", recorder(calls))
    socketio.on_event("connect", lambda: calls.append(("connect", request.namespace)), "/other")
    socketio.on_event("disconnect", recorder(calls), "/other")
    socketio.on_event("slow", blocker.slow)
    return socketio


async def test_queued_disconnect_takes_the_namespace_out_of_the_kept_session_without_its_handler(
    opened: Any,
) -> None:
    """A disconnect queued behind a handler at the drop drops its namespace from the kept session; no handler reruns."""
    calls: list[Any] = []
    blocker = Blocker()
    socketio = chat_app(30, calls, blocker)
    async with running(socketio) as url:
        client = await opened(url)
        await client.join("/chat")
        sid = client.sid
        conn = await blocker.queue(socketio, client, ("disconnect", "/chat"))
        worker = conn.worker
        assert worker is not None
        calls.clear()  # the connects of the live session
        assert await dropped(socketio, client) is conn
        assert calls == [("/chat", GONE), ("/", GONE)]
        assert socketio.kept_registry.is_connected("/chat", sid)
        blocker.release.set()
        await worker
        assert blocker.outcome == ["finished"]
        assert calls == [("/chat", GONE), ("/", GONE)], "the queued disconnect ran no handler"
        assert conn.namespaces == {"/"}
        assert not socketio.kept_registry.is_connected("/chat", sid)
        assert socketio.kept_registry.rooms("/", sid) == {sid}
        assert socketio.registry.is_empty()

        resumed = await opened(resume_url(url, client))
        assert resumed.hello["data"]["recovered"] is True
        assert await resumed.silent(), "no connect frame for /chat"
        assert socketio.sids("/chat") == [] and socketio.sids() == [sid]
        await resumed.send("anything", None, "/chat")
        assert (await resumed.expect("error", "/chat"))["data"]["code"] == "not_connected"
        assert calls == [("/chat", GONE), ("/", GONE)]
    assert calls == [("/chat", GONE), ("/", GONE), ("/", "server shutdown")]
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()


async def test_queued_disconnect_while_the_drops_handler_of_that_namespace_runs(opened: Any) -> None:
    """A queued disconnect handled while its namespace's drop handler runs: that handler runs once, nothing leaks."""
    calls: list[Any] = []
    blocker = Blocker()
    socketio = chat_app(30, calls, blocker)
    in_chat_handler, chat_release = asyncio.Event(), asyncio.Event()

    async def chat_gone(reason: str) -> None:
        calls.append((request.namespace, reason))
        in_chat_handler.set()
        await chat_release.wait()

    socketio.on_event("disconnect", chat_gone, "/chat")
    async with running(socketio) as url:
        client = await opened(url)
        await client.join("/chat")
        sid = client.sid
        conn = await blocker.queue(socketio, client, ("disconnect", "/chat"))
        worker = conn.worker
        assert worker is not None
        calls.clear()
        client.abort()
        await in_chat_handler.wait()
        blocker.release.set()
        await worker  # the queued disconnect is handled while /chat's drop handler runs
        assert not socketio.kept_registry.is_connected("/chat", sid)
        chat_release.set()
        assert conn.dropping is not None
        await conn.dropping
        assert calls == [("/chat", GONE), ("/", GONE)]
        assert conn.namespaces == {"/"}
        assert socketio.kept_registry.rooms("/", sid) == {sid} and socketio.kept_registry.sids("/chat") == set()
        assert socketio.registry.is_empty()
    assert calls == [("/chat", GONE), ("/", GONE)], "a kept session's shutdown runs no handler"
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()


async def test_queued_connect_is_answered_with_connect_error(opened: Any) -> None:
    """A connect queued behind a handler at the drop runs no handler, joins nothing, is answered with connect_error."""
    calls: list[Any] = []
    blocker = Blocker()
    socketio = chat_app(30, calls, blocker)
    async with running(socketio) as url:
        client = await opened(url)
        sid = client.sid
        conn = await blocker.queue(socketio, client, ("connect", "/chat"))
        worker = conn.worker
        assert worker is not None
        assert await dropped(socketio, client) is conn
        assert calls == [("/", GONE)]
        blocker.release.set()
        await worker
        assert calls == [("/", GONE)], "no connect handler for a client that is gone"
        assert conn.namespaces == {"/"}
        assert socketio.sids("/chat") == [] and not socketio.kept_registry.is_connected("/chat", sid)
        assert socketio.health()["namespaces"] == {}

        resumed = await opened(resume_url(url, client))
        assert resumed.hello["data"]["recovered"] is True
        refusal = await resumed.expect("connect_error", "/chat")
        assert refusal["data"] == {"message": DROPPED_BEFORE_JOIN}
        assert await resumed.silent()
        assert socketio.sids("/chat") == [] and socketio.sids() == [sid]
        assert calls == [("/", GONE)]
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()


@pytest.mark.parametrize("end", ["expiry", "kick", "shutdown"])
async def test_kept_session_with_frames_queued_ends_without_handlers_or_leftovers(opened: Any, end: str) -> None:
    """A kept session that expires, is kicked or shut down with frames still queued runs no handler, leaks nothing."""
    calls: list[Any] = []
    blocker = Blocker()
    socketio = chat_app(0.3 if end == "expiry" else 30, calls, blocker)
    async with running(socketio) as url:
        client = await opened(url)
        await client.join("/chat")
        sid = client.sid
        conn = await blocker.queue(socketio, client, ("disconnect", "/chat"), ("connect", "/other"))
        worker = conn.worker
        assert worker is not None
        calls.clear()
        await dropped(socketio, client)
        assert calls == [("/chat", GONE), ("/", GONE)]
        if end == "expiry":
            await until(lambda: socketio.recoverable == 0)
        elif end == "kick":
            socketio.disconnect(sid)
        if end != "shutdown":
            assert sid not in socketio._connections
            blocker.release.set()  # whatever the queued frames were, they must change nothing now
            await asyncio.wait([worker])
            assert calls == [("/chat", GONE), ("/", GONE)]
            assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()
    blocker.release.set()
    await asyncio.wait([worker])
    assert calls == [("/chat", GONE), ("/", GONE)]
    assert socketio._connections == {} and socketio.recoverable == 0
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()


# -- An async connect handler in flight at the drop -------------------------------------------------


@pytest.mark.parametrize("accepts", [True, False], ids=["accepted", "refused"])
async def test_async_connect_in_flight_at_the_drop(opened: Any, accepts: bool) -> None:
    """An async connect in flight at the drop: its disconnect runs once then; accepted it is kept, refused it is not."""
    socketio = SocketServer(recovery_window=30)
    calls: list[Any] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def connect() -> bool:
        calls.append(("connect", request.namespace, request.recovered))
        if not request.recovered:
            started.set()
            await release.wait()
        return accepts

    socketio.on_event("connect", connect, "/chat")
    socketio.on_event("disconnect", recorder(calls), "/chat")
    socketio.on_event("disconnect", recorder(calls))
    async with running(socketio) as url:
        client = await opened(url)
        sid = client.sid
        await client.send("connect", None, "/chat")
        await started.wait()
        conn = socketio._connections[sid]
        worker = conn.worker
        assert worker is not None
        assert await dropped(socketio, client) is conn
        # /chat was (provisionally) joined at the drop: its disconnect handler runs then, once, as without recovery.
        assert calls == [("connect", "/chat", False), ("/chat", GONE), ("/", GONE)]
        release.set()
        await worker
        assert calls == [("connect", "/chat", False), ("/chat", GONE), ("/", GONE)], "the answer runs nothing more"
        if accepts:
            assert conn.namespaces == {"/", "/chat"} and socketio.kept_registry.rooms("/chat", sid) == {sid}
        else:
            assert conn.namespaces == {"/"} and not socketio.kept_registry.is_connected("/chat", sid)
        assert socketio.registry.is_empty()

        resumed = await opened(resume_url(url, client))
        assert resumed.hello["data"]["recovered"] is True
        if accepts:
            assert (await resumed.expect("connect", "/chat"))["data"] == {"sid": sid, "recovered": True}
            assert await resumed.silent()
            assert calls[3:] == [("connect", "/chat", True)]
            assert socketio.sids("/chat") == [sid]
        else:
            # The refusal was recorded while the socket was gone: the resumed client learns of it.
            assert (await resumed.expect("connect_error", "/chat"))["data"] == {"message": "connection refused"}
            assert calls[3:] == []
            assert socketio.sids("/chat") == []
        assert await resumed.silent()
    assert socketio.registry.is_empty() and socketio.kept_registry.is_empty()
