"""Presence within one process: real sockets, real clients, every frame checked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

from conftest import running, until
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from wire import Wire

from plainsocket import SocketServer, emit, join_room, leave_room, request, rooms
from plainsocket.client import Client
from plainsocket.presence import Member, Presence

PRESENCE_EVENTS = ("presence_state", "presence_diff", "presence_count")


def by_name(member: Member) -> str:
    auth = member.auth if isinstance(member.auth, dict) else {}
    return str(auth.get("name") or member.sid)


def make_app(*, presence: dict[str, Any] | None = None, **options: Any) -> SocketServer:
    settings = {"rooms": "room:*", "key": by_name, **(presence or {})}
    socketio = SocketServer(presence={"/chat": Presence(**settings)}, max_connections_per_address=5000, **options)

    @socketio.on("join", namespace="/chat")
    def join(room: str) -> str:
        join_room(room)
        return "ok"

    @socketio.on("join and say", namespace="/chat")
    def join_and_say(room: str) -> None:
        join_room(room)
        emit("said", {"room": room, "by": request.sid}, to=room)

    @socketio.on("leave", namespace="/chat")
    def leave(room: str) -> str:
        leave_room(room)
        return "ok"

    @socketio.on("say", namespace="/chat")
    def say(room: str) -> None:
        emit("said", {"room": room, "by": request.sid}, to=room)

    @socketio.on("disconnect", namespace="/chat")
    def gone(reason: str) -> None:
        for room in rooms():
            if room != request.sid:
                emit("said", {"room": room, "by": request.sid, "last": True}, to=room)

    socketio.on_event("connect", lambda: None, namespace="/plain")
    socketio.on_event("join", lambda room: join_room(room), namespace="/plain")
    return socketio


class Peer:
    """A raw client in /chat that keeps every frame it receives, in order."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.frames: list[dict[str, Any]] = []
        self.ids = 100
        self.offset: str | None = None

    @classmethod
    async def open(cls, url: str, opened: Any, name: str | None = None) -> Peer:
        peer = cls(await opened(url))
        await peer.wire.join("/chat", {"name": name} if name else None)
        return peer

    async def next(self, timeout: float = 5) -> dict[str, Any]:
        frame = await self.wire.recv(timeout)
        if "offset" in frame:
            self.offset = frame["offset"]
        self.frames.append(frame)
        return frame

    async def until(self, test: Callable[[dict[str, Any]], bool], timeout: float = 5) -> dict[str, Any]:
        while True:
            frame = await self.next(timeout)
            if test(frame):
                return frame

    async def find(self, test: Callable[[dict[str, Any]], bool], timeout: float = 5) -> dict[str, Any]:
        """The first frame received so far that passes ``test``, or the next one."""
        for frame in self.frames:
            if test(frame):
                return frame
        return await self.until(test, timeout)

    async def call(self, event: str, data: Any) -> dict[str, Any]:
        self.ids += 1
        ident = self.ids
        await self.wire.send(event, data, "/chat", ident)
        return await self.until(lambda f: f.get("id") == ident and f["event"] in ("ack", "error"))

    async def enter(self, room: str) -> dict[str, Any]:
        """Join ``room``; return the presence_state it sends (it comes before the ack)."""
        start = len(self.frames)
        await self.call("join", room)
        for frame in self.frames[start:]:
            if frame["event"] == "presence_state":
                return frame
        return await self.until(lambda f: f["event"] == "presence_state")

    def presence(self, event: str = "presence_diff") -> list[dict[str, Any]]:
        return [f["data"] for f in self.frames if f["event"] == event]

    def joined(self) -> list[str]:
        return [key for diff in self.presence() for key in diff["joins"]]

    def left(self) -> list[str]:
        return [key for diff in self.presence() for key in diff["leaves"]]


def diff_with(event: str, key: str) -> Callable[[dict[str, Any]], bool]:
    """Match a presence_diff carrying ``key`` in its joins, leaves or updates."""
    return lambda f: f["event"] == "presence_diff" and key in f["data"][event]


async def test_joins_leaves_and_tabs_of_one_key(opened: Any) -> None:
    """One key with two tabs: one join, a count update, one leave when its last tab goes."""
    async with running(make_app()) as url:
        observer = await Peer.open(url, opened, "olga")
        state = await observer.enter("room:1")
        assert state["data"] == {
            "room": "room:1",
            "rev": state["data"]["rev"],
            "count": {"users": 1, "connections": 1},
            "members": {"olga": {"meta": {}, "conns": 1}},
            "cursor": None,
        }
        tab1 = await Peer.open(url, opened, "alice")
        await tab1.enter("room:1")
        join = await observer.until(diff_with("joins", "alice"))
        assert join["data"]["joins"] == {"alice": {"meta": {}, "conns": 1}}
        assert join["data"]["from"] == state["data"]["rev"] and join["data"]["rev"] > join["data"]["from"]
        tab2 = await Peer.open(url, opened, "alice")
        both = await tab2.enter("room:1")
        assert both["data"]["members"]["alice"] == {"meta": {}, "conns": 2}
        update = await observer.until(diff_with("updates", "alice"))
        assert update["data"]["updates"] == {"alice": {"meta": {}, "conns": 2}}
        assert update["data"]["count"] == {"users": 2, "connections": 3}
        await tab1.wire.close()
        fewer = await observer.until(diff_with("updates", "alice"))
        assert fewer["data"]["updates"]["alice"]["conns"] == 1 and fewer["data"]["leaves"] == []
        await tab2.call("leave", "room:1")
        left = await observer.until(diff_with("leaves", "alice"))
        assert left["data"]["count"] == {"users": 1, "connections": 1}
        assert observer.joined() == ["alice"] and observer.left() == ["alice"]
        assert all(f["data"]["from"] == p["data"]["rev"] for p, f in zip(
            [state, *[f for f in observer.frames if f["event"] == "presence_diff"]],
            [f for f in observer.frames if f["event"] == "presence_diff"],
            strict=False,
        )), "each diff starts where the previous one ended"


async def test_off_by_default_and_never_the_sid_room(opened: Any) -> None:
    """A namespace without presence sends no presence frame; the sid's own room is never tracked."""
    socketio = make_app(presence={"rooms": "*"})
    async with running(socketio) as url:
        plain = await opened(url)
        await plain.join("/plain")
        await plain.send("join", "room:1", "/plain")
        assert await plain.silent(0.3)
        peer = await Peer.open(url, opened, "alice")
        assert await peer.wire.silent(0.2), "joining /chat puts the sid in its own room: not tracked"
        await peer.enter("lobby")
        assert socketio.presence.views.keys() == {("/chat", "lobby")}
        assert await socketio.presence.count(peer.wire.sid, namespace="/chat") == {"users": 0, "connections": 0}


async def test_join_before_first_message_and_leave_after_last(opened: Any) -> None:
    """100 times: an observer sees X's join before X's first message and the leave after its last."""
    async with running(make_app()) as url:
        observer = await Peer.open(url, opened, "olga")
        await observer.enter("room:1")
        sids = []
        for i in range(100):
            x = await Peer.open(url, opened, f"x{i}")
            sids.append(x.wire.sid)
            await x.wire.send("join and say", "room:1", "/chat")
            sid = x.wire.sid
            await observer.until(lambda f, sid=sid: f["event"] == "said" and f["data"]["by"] == sid)
            assert f"x{i}" in observer.joined(), f"x{i}'s join came after its message"
            x.wire.abort() if i % 2 else await x.wire.close()  # a drop and a goodbye both say a last word
        while len(observer.left()) < 100:
            await observer.next()
        for i in range(100):
            said = [n for n, f in enumerate(observer.frames) if f["event"] == "said" and f["data"]["by"] == sids[i]]
            last_word = max(said)
            leave = next(n for n, f in enumerate(observer.frames) if diff_with("leaves", f"x{i}")(f))
            assert last_word < leave, f"x{i} left before its last message"


async def test_a_burst_of_1000_joins_reaches_200_observers_in_few_frames(opened: Any) -> None:
    """1,000 joins in about 2 s, 200 observers: at most 20 diff frames each, the union exactly the 1,000 keys."""
    async with running(make_app()) as url:
        observers = [await Peer.open(url, opened, f"o{i:03}") for i in range(200)]
        for observer in observers:
            await observer.enter("room:big")
        def all_there(frame: dict[str, Any]) -> bool:
            return frame["event"].startswith("presence_") and frame["data"]["count"]["users"] == 200

        for observer in observers:  # the observers' own joins are old news before the burst
            if not any(all_there(frame) for frame in observer.frames):
                await observer.until(all_there)
            observer.frames.clear()
        joiners: list[Peer] = []
        for chunk in range(10):  # connected first: the burst is of joins, not of handshakes
            joiners += await asyncio.gather(*(Peer.open(url, opened, f"j{chunk * 100 + i:04}") for i in range(100)))
        started = asyncio.get_running_loop().time()
        for batch in range(20):  # 50 joins every 0.1 s
            for peer in joiners[batch * 50 : batch * 50 + 50]:
                await peer.wire.send("join", "room:big", "/chat", 1)
            await asyncio.sleep(0.1)
        elapsed = asyncio.get_running_loop().time() - started
        expected = {f"j{i:04}" for i in range(1000)}
        for observer in observers:
            while set(observer.joined()) != expected:
                await observer.next()
            diffs = observer.presence()
            assert len(diffs) <= 20, len(diffs)
            assert sorted(observer.joined()) == sorted(expected), "each key joined exactly once"
        assert elapsed < 8  # paced at 2 s; a loaded 2-core machine runs late
        counts = [len(o.presence()) for o in observers]
        for peer in observers + joiners:
            peer.wire.abort()
        print(f"burst: 1000 joins in {elapsed:.1f} s, diff frames per observer: max {max(counts)}, min {min(counts)}")


async def test_state_is_capped_and_pages_give_every_key_once(opened: Any) -> None:
    """The state on join holds max_state members and a cursor; the client's pages give every key once."""
    socketio = make_app(presence={"max_state": 50})
    async with running(socketio) as url:
        await asyncio.gather(*(_member(url, opened, f"m{i:03}") for i in range(120)))
        async with Client(url) as client:
            chat = await client.connect("/chat", auth={"name": "reader"})
            lobby = chat.presence("room:1")
            seen: list[str] = []
            lobby.on("join", lambda key, entry: seen.append(key))
            await chat.call("join", "room:1")
            await lobby.synced()
            assert len(lobby.members) == 50 and lobby.count == {"users": 121, "connections": 121}
            assert lobby.cursor is not None
            await lobby.load_all()
            assert sorted(seen) == sorted({f"m{i:03}" for i in range(120)} | {"reader"})
            assert len(seen) == 121, "no key twice"
            members, cursor = await socketio.presence.list("room:1", namespace="/chat", limit=1000)
            assert cursor is None and lobby.members == members


async def _member(url: str, opened: Any, name: str) -> Peer:
    peer = await Peer.open(url, opened, name)
    await peer.enter("room:1")
    return peer


def recovering_app(**presence: Any) -> SocketServer:
    return make_app(presence=presence, recovery_window=10)


async def _resume(peer: Peer, url: str, opened: Any) -> Peer:
    token = peer.wire.hello["data"]["recovery"]["token"]
    resume = f"{url}/?recover={quote(token)}" + (f"&offset={quote(peer.offset)}" if peer.offset else "")
    back = Peer(await opened(resume))
    assert back.wire.hello["data"]["recovered"] is True
    return back


async def test_a_3_second_blip_resumed_makes_no_presence_event(opened: Any) -> None:
    """A drop resumed within the grace: the observer gets no presence frame at all; the resumer a fresh state."""
    socketio = recovering_app()
    async with running(socketio) as url:
        observer = await Peer.open(url, opened, "olga")
        await observer.enter("room:1")
        x = await Peer.open(url, opened, "xavier")
        await x.enter("room:1")
        await observer.until(diff_with("joins", "xavier"))
        observer.frames.clear()
        x.wire.abort()
        await asyncio.sleep(3)
        back = await _resume(x, url, opened)
        state = await back.until(lambda f: f["event"] == "presence_state")
        assert set(state["data"]["members"]) == {"olga", "xavier"}
        await back.wire.send("say", "room:1", "/chat")
        await observer.until(lambda f: f["event"] == "said" and not f["data"].get("last"))
        assert await observer.wire.silent(0.5)
        assert [f for f in observer.frames if f["event"] in PRESENCE_EVENTS] == []


async def test_past_the_grace_one_leave_then_one_join(opened: Any) -> None:
    """A drop longer than the grace: one leave; its resume within the recovery window: one join."""
    socketio = recovering_app(grace=0.3)
    async with running(socketio) as url:
        observer = await Peer.open(url, opened, "olga")
        await observer.enter("room:1")
        x = await Peer.open(url, opened, "xavier")
        await x.enter("room:1")
        await observer.until(diff_with("joins", "xavier"))
        x.wire.abort()
        await observer.until(diff_with("leaves", "xavier"))
        back = await _resume(x, url, opened)
        await back.until(lambda f: f["event"] == "presence_state")
        await observer.until(diff_with("joins", "xavier"))
        assert observer.joined() == ["xavier", "xavier"] and observer.left() == ["xavier"]
        assert await observer.wire.silent(0.4)


async def test_presence_frames_are_not_recorded_for_a_resume(opened: Any) -> None:
    """Presence frames carry no offset and are never replayed: they do not use up the recovery log."""
    socketio = recovering_app()
    async with running(socketio) as url:
        observer = await Peer.open(url, opened, "olga")
        await observer.enter("room:1")
        for i in range(5):
            peer = await Peer.open(url, opened, f"p{i}")
            await peer.enter("room:1")
            await observer.until(diff_with("joins", f"p{i}"))
        assert all("offset" not in f for f in observer.frames if f["event"] in PRESENCE_EVENTS)
        conn = socketio._connections[observer.wire.sid]
        assert not any(b"presence_" in frame for _, frame in conn.log.frames or ())
        assert not any(b"presence_" in entry.frame for entry in socketio.broadcasts.entries)


async def test_oversized_meta_and_update_floods_get_error_frames(opened: Any) -> None:
    """Metadata past max_meta: meta_too_large; updates past the rate: rate_limited; bad data: invalid_presence."""
    async with running(make_app(presence={"max_meta": 100, "update_rate": 1, "update_burst": 3})) as url:
        observer = await Peer.open(url, opened, "olga")
        await observer.enter("room:1")
        x = await Peer.open(url, opened, "xavier")
        await x.enter("room:1")
        big = await x.call("presence_update", {"room": "room:1", "meta": {"bio": "x" * 200}})
        assert big["event"] == "error" and big["data"]["code"] == "meta_too_large"
        bad = await x.call("presence_update", {"room": "room:1", "meta": [1]})
        assert bad["data"]["code"] == "invalid_meta"
        answers = [await x.call("presence_update", {"room": "room:1", "meta": {"n": i}}) for i in range(6)]
        assert [a["event"] for a in answers][:3] == ["ack"] * 3, "a burst of update_burst goes through"
        refused = [a["data"]["code"] for a in answers if a["event"] == "error"]
        assert len(refused) >= 2 and set(refused) == {"rate_limited"}
        def updated(frame: dict[str, Any]) -> bool:
            entry = {**frame["data"]["joins"], **frame["data"]["updates"]}.get("xavier") or {}
            return frame["event"] == "presence_diff" and entry.get("meta") == {"n": 2}

        await observer.until(updated)  # the last accepted one: coalesced with what came before
        wrong = await x.call("presence_list", {"room": 5})
        assert wrong["data"]["code"] == "invalid_presence"
        other = await x.call("presence_list", {"room": "room:elsewhere"})
        assert other["data"]["code"] == "not_present"


async def test_counts_only_and_no_events(opened: Any) -> None:
    """A connection in mode count gets presence_count frames (at most one per interval); none gets nothing."""
    async with running(make_app(presence={"count_interval": 0.2})) as url:
        counter = await Peer.open(url, opened, "counter")
        assert (await counter.call("presence_mode", {"mode": "count"}))["data"] == {"mode": "count"}
        await counter.call("join", "room:1")
        first = await counter.until(lambda f: f["event"] == "presence_count")
        assert first["data"]["count"] == {"users": 1, "connections": 1}
        quiet = await Peer.open(url, opened, "quiet")
        await quiet.call("presence_mode", {"mode": "none"})
        await quiet.call("join", "room:1")
        for i in range(10):
            peer = await Peer.open(url, opened, f"p{i}")
            await peer.call("join", "room:1")
        while True:
            frame = await counter.until(lambda f: f["event"] == "presence_count")
            if frame["data"]["count"]["users"] == 12:
                break
        assert len(counter.presence("presence_count")) <= 4
        assert counter.presence() == [] and counter.presence("presence_state") == []
        assert await quiet.wire.silent(0.3) and quiet.presence("presence_diff") == []


async def test_server_api_and_hook(opened: Any) -> None:
    """track/untrack/update/list/get/count, and the hook hears each coalesced change."""
    socketio = make_app(presence={"rooms": "room:auto"})
    heard: list[tuple[str, list[str], list[str], list[str]]] = []

    @socketio.presence.on("/chat")
    def changed(room: str, joins: dict[str, Any], leaves: list[str], updates: dict[str, Any]) -> None:
        heard.append((room, sorted(joins), leaves, sorted(updates)))

    async with running(socketio) as url:
        alice = await Peer.open(url, opened, "alice")
        await alice.call("join", "manual")
        assert await alice.wire.silent(0.2), "manual is not a presence room"
        socketio.presence.track(alice.wire.sid, "manual", namespace="/chat", meta={"role": "host"})
        state = await alice.until(lambda f: f["event"] == "presence_state")
        assert state["data"]["members"] == {"alice": {"meta": {"role": "host"}, "conns": 1}}
        host = {"meta": {"role": "host"}, "conns": 1}
        assert await socketio.presence.get("manual", "alice", namespace="/chat") == host
        socketio.presence.update(alice.wire.sid, "manual", {"role": "away"}, namespace="/chat")
        await until(lambda: len(heard) == 2)
        assert await socketio.presence.count("manual", namespace="/chat") == {"users": 1, "connections": 1}
        away = {"alice": {"meta": {"role": "away"}, "conns": 1}}
        assert await socketio.presence.list("manual", namespace="/chat") == (away, None)
        socketio.presence.untrack(alice.wire.sid, "manual", namespace="/chat")
        await until(lambda: len(heard) == 3)
        assert heard == [("manual", ["alice"], [], []), ("manual", [], [], ["alice"]), ("manual", [], ["alice"], [])]
        assert socketio.rooms(alice.wire.sid, namespace="/chat") == [alice.wire.sid, "manual"], "still in the room"


class DropOneDiff:
    """A WebSocket relay in front of the server that loses the ``nth`` presence_diff it carries."""

    def __init__(self, upstream: str, nth: int) -> None:
        self.upstream = upstream
        self.nth = nth
        self.seen = 0
        self.dropped: dict[str, Any] | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        async with serve(self._relay, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            yield f"ws://127.0.0.1:{port}"

    async def _relay(self, client: Any) -> None:
        path = client.request.path if client.request else "/"
        async with connect(self.upstream + path) as server:

            async def up() -> None:
                async for message in client:
                    await server.send(message)

            async def down() -> None:
                async for message in server:
                    frame = json.loads(message)
                    if frame["event"] == "presence_diff":
                        self.seen += 1
                        if self.seen == self.nth:
                            self.dropped = frame
                            continue
                    await client.send(message)

            tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()


async def test_a_lost_diff_makes_the_client_resynchronise(opened: Any) -> None:
    """A presence_diff lost on the way (fault injected): the client sees the gap, asks again, ends equal."""
    socketio = make_app()
    async with running(socketio) as url:
        relay = DropOneDiff(url, nth=2)
        async with relay.running() as relayed, Client(relayed) as client:
            chat = await client.connect("/chat", auth={"name": "reader"})
            lobby = chat.presence("room:1")
            await chat.call("join", "room:1")
            await lobby.synced()
            for i in range(4):
                peer = await Peer.open(url, opened, f"p{i}")
                await peer.enter("room:1")
                await asyncio.sleep(0.3)  # one diff each: the second is the one lost
            members, _ = await socketio.presence.list("room:1", namespace="/chat")
            await until(lambda: lobby.members == members)
            assert relay.dropped is not None and lobby.resyncs == 1
            assert set(lobby.members) == {"reader", "p0", "p1", "p2", "p3"}


def test_the_readme_example_runs_as_written() -> None:
    """examples/presence.py (quoted in README.md) prints one join per key, the counts, one leave."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run(
        [sys.executable, "examples/presence.py"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert lines[0] == "join alice {'meta': {}, 'conns': 1}"
    assert [line.split()[:2] for line in lines].count(["join", "bob"]) == 1
    assert "members ['alice', 'bob'] {'users': 2, 'connections': 3}" in lines
    assert lines[-2:] == ["leave bob", "members ['alice'] {'users': 1, 'connections': 1}"]
