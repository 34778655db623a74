"""The broadcast log: broadcasts kept once for every session, filtered by target at a resume."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any
from urllib.parse import quote

from conftest import running, until
from wire import Wire

from plainsocket import SocketServer, join_room, leave_room
from plainsocket.connection import Connection


def make_app(**options: Any) -> SocketServer:
    options.setdefault("recovery_window", 30)
    socketio = SocketServer(**options)
    socketio.on_event("join", lambda room: join_room(room))
    socketio.on_event("leave", lambda room: leave_room(room))
    return socketio


def resume_url(base: str, wire: Wire, offset: str | None) -> str:
    url = f"{base}/?recover={quote(wire.hello['data']['recovery']['token'])}"
    return url + (f"&offset={quote(offset)}" if offset else "")


async def dropped(socketio: SocketServer, wire: Wire) -> Connection:
    """Abort ``wire``'s TCP connection; return its kept session once the drop's handlers finished."""
    wire.abort()
    await until(lambda: (c := socketio._connections.get(wire.sid)) is not None and c.detached and c.dropping is None)
    return socketio._connections[wire.sid]


async def joined(url: str, opened: Any, *rooms: str) -> Wire:
    wire = await opened(url)
    for number, room in enumerate(rooms, 1):
        await wire.call("join", room, id=number)
    return wire


async def replayed(wire: Wire) -> list[Any]:
    """Read the frames a resumed client gets until it goes quiet; return their data."""
    frames = []
    while True:
        try:
            frame = await wire.recv(0.3)
        except TimeoutError:
            return frames
        frames.append(frame["data"])


async def test_a_resume_replays_what_reached_the_session_in_order_once(opened: Any) -> None:
    """Room, namespace and direct frames come back in order, once; other rooms and skips do not."""
    socketio = make_app()
    async with running(socketio) as url:
        client = await joined(url, opened, "red")
        red = await joined(url, opened, "red")  # a room of two: its broadcasts go to the log
        await joined(url, opened, "blue", "green")
        first = socketio.emit("news", "start")  # everyone: the client's last frame before the cut
        assert first == 3
        start = await client.expect("news", "/")
        # Sent while it is live (it reads them, but resumes from "start" as if it had not).
        socketio.emit("news", "red 1", to="red")
        socketio.emit("news", "blue 1", to="blue")
        socketio.emit("news", "to it alone 1", to=client.sid)
        socketio.emit("news", "red but it is skipped", to="red", skip_sid=client.sid)
        socketio.emit("news", "red or green 1", to=["red", "green"])
        for expected in ("red 1", "to it alone 1", "red or green 1"):
            assert (await client.expect("news", "/"))["data"] == expected
        await dropped(socketio, client)
        # Sent while it is kept.
        socketio.emit("news", "red 2", to="red")
        socketio.emit("news", "everyone 2")
        socketio.emit("news", "blue 2", to="blue")
        socketio.emit("news", "to it alone 2", to=client.sid)
        socketio.emit("news", "everyone but it", skip_sid=[client.sid, red.sid])
        socketio.emit("news", "red 3", to="red")
        assert all(entry.frame.count(b'"offset"') == 1 for entry in socketio.broadcasts.entries)
        own = [frame for _, frame in socketio._connections[client.sid].log.frames]
        assert len(own) == 3 and all(b'"ack"' in frame or b"alone" in frame for frame in own), "to it alone"

        resumed = await opened(resume_url(url, client, start["offset"]))
        assert resumed.hello["data"]["recovered"] is True and resumed.sid == client.sid
        assert await replayed(resumed) == [
            "red 1",
            "to it alone 1",
            "red or green 1",
            "red 2",
            "everyone 2",
            "to it alone 2",
            "red 3",
        ]


async def test_a_resume_judges_each_broadcast_by_the_rooms_of_its_time(opened: Any) -> None:
    """A room entered after a broadcast does not replay it; a room left after one still does."""
    socketio = make_app()
    async with running(socketio) as url:
        client = await joined(url, opened, "old")
        await joined(url, opened, "old", "new")
        await joined(url, opened, "old", "new")
        socketio.emit("news", "start")
        start = await client.expect("news", "/")
        socketio.emit("news", "new before it joined", to="new")
        socketio.emit("news", "old while it was there", to="old")
        await client.expect("news", "/")
        await client.call("join", "new", id=10)
        await client.call("leave", "old", id=11)
        socketio.emit("news", "new after it joined", to="new")
        socketio.emit("news", "old after it left", to="old")
        await client.expect("news", "/")
        conn = await dropped(socketio, client)
        socketio.enter_room(client.sid, "later")  # other code, while it is kept
        socketio.emit("news", "later, before it was put there", to="old")
        socketio.emit("news", "later", to=["later", "old"])
        assert conn.log.epochs, "its membership changes are remembered"

        resumed = await opened(resume_url(url, client, start["offset"]))
        assert resumed.hello["data"]["recovered"] is True
        assert await replayed(resumed) == [
            "old while it was there",
            None,  # the acks of its join and leave: sent to it alone, they come back too
            None,
            "new after it joined",
            "later",
        ]


async def test_an_evicted_range_ends_only_the_sessions_that_needed_it(opened: Any) -> None:
    """Past the log's bound: a session missing evicted broadcasts starts afresh; newer or quiet ones resume."""
    socketio = make_app(recovery_log_events=5)
    async with running(socketio) as url:
        busy = await joined(url, opened, "busy")
        await joined(url, opened, "busy")
        quiet = await joined(url, opened, "quiet")
        await joined(url, opened, "quiet")
        idle = await joined(url, opened)
        socketio.emit("news", "start")
        starts = {wire.sid: (await wire.expect("news", "/"))["offset"] for wire in (busy, quiet, idle)}
        await dropped(socketio, busy)
        await dropped(socketio, idle)
        for number in range(6):
            socketio.emit("news", f"busy {number}", to="busy")
        socketio.emit("news", "quiet 1", to="quiet")
        quiet_1 = await quiet.expect("news", "/")
        await dropped(socketio, quiet)
        socketio.emit("news", "quiet 2", to="quiet")
        log = socketio.broadcasts
        assert len(log.entries) == 5 and log.evicted == 4, "start and busy 0-2 are gone"
        assert socketio.health()["recovery"]["log"]["evicted"] == 4

        again = await opened(resume_url(url, busy, starts[busy.sid]))
        assert again.hello["data"]["recovered"] is False and again.sid != busy.sid
        assert busy.sid not in socketio._connections
        newer = await opened(resume_url(url, quiet, quiet_1["offset"]))
        assert newer.hello["data"]["recovered"] is True and newer.sid == quiet.sid
        assert await replayed(newer) == ["quiet 2"]
        # Its last frame is gone from the log, but no broadcast reached it since: nothing to miss.
        untouched = await opened(resume_url(url, idle, starts[idle.sid]))
        assert untouched.hello["data"]["recovered"] is True and untouched.sid == idle.sid
        assert await replayed(untouched) == []


async def test_live_connections_hold_nothing_per_broadcast(opened: Any) -> None:
    """What recovery holds per live connection does not grow with the broadcasts it receives."""
    socketio = make_app(recovery_log_events=20)
    count = 40
    async with running(socketio) as url:
        clients = await asyncio.gather(*(joined(url, opened, "all") for _ in range(count)))
        conns = [socketio._connections[client.sid] for client in clients]
        own = [len(conn.log.frames) for conn in conns]

        async def read(wire: Wire, last: int) -> None:
            while (await wire.expect("n", "/"))["data"] < last:
                pass

        async def storm(first: int, last: int) -> None:
            for number in range(first, last + 1):
                socketio.emit("n", number, to="all")
            await asyncio.gather(*(read(client, last) for client in clients))

        await storm(0, 99)  # warm up: the log reaches its bound
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        await storm(100, 599)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        held = [tracemalloc.Filter(True, "*plainsocket/connection.py"), tracemalloc.Filter(True, "*broadcast_log.py")]
        diff = after.filter_traces(held).compare_to(before.filter_traces(held), "filename")
        grown = sum(stat.size_diff for stat in diff)
        print(f"recovery memory grown over 500 broadcasts to {count} live clients: {grown} bytes")
        # A log of references per connection would hold 40 x 500 x 8 bytes = 160 kB more.
        assert grown < 16_000, grown
        assert [len(conn.log.frames) for conn in conns] == own, "no broadcast in any connection's own log"
        assert all(conn.last_broadcast == socketio.broadcasts.entries[-1].mark for conn in conns)
        assert len(socketio.broadcasts.entries) == 20
