"""client.py and connection state recovery: cut the TCP connection, the client resumes by itself.

Real sockets on 127.0.0.1. The link is cut without a close frame, either by a TCP relay
between the client and the server (both sides see a reset, as on a network failure) or by
aborting the client's own transport. Servers: in-process ``SocketServer(recovery_window=...)``
apps, ``python server.py --recovery-window 120``, and a scripted raw WebSocket server for the
exact URLs the client opens.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import pytest
from conftest import ServerProcess, running, until
from websockets.asyncio.server import ServerConnection, serve

from plainsocket import SocketServer, emit, join_room, request
from plainsocket.client import Client, ClientTimeoutError, DisconnectedError

FAST: dict[str, Any] = {"reconnect_delay": 0.05, "reconnect_delay_max": 0.2}


class Relay:
    """A TCP relay in front of a server whose connections the test cuts (no close frame).

    ``refuse`` drops new connections at once (the client stays away); ``drop["up"]`` and
    ``drop["down"]`` discard the bytes going to the server or to the client (counted in
    ``dropped``), so that a frame is lost in flight.
    """

    def __init__(self, target_port: int | None) -> None:
        assert target_port is not None
        self.target_port = target_port
        self.refuse = False
        self.drop = {"up": False, "down": False}
        self.dropped = {"up": 0, "down": 0}
        self.accepted = 0
        self._transports: set[asyncio.BaseTransport] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.url

    def cut(self) -> None:
        """Reset every relayed connection, both sides, discarding what is in flight."""
        for transport in self._transports:
            transport.abort()  # type: ignore[attr-defined]
        self._transports.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._transports |= {writer.transport, upstream_writer.transport}
        await asyncio.gather(self._pump(reader, upstream_writer, "up"), self._pump(upstream_reader, writer, "down"))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        try:
            while data := await reader.read(65536):
                if self.drop[direction]:
                    self.dropped[direction] += len(data)
                    continue
                writer.write(data)
                await writer.drain()
        except OSError:
            writer.transport.abort()
        else:
            writer.close()  # the other side closed: pass it on, after what is buffered


@asynccontextmanager
async def relayed(port: int | None) -> AsyncIterator[Relay]:
    relay = Relay(port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


def make_app(**options: Any) -> tuple[SocketServer, dict[str, list[Any]]]:
    """An app on /x: ``join`` a room, ``order`` (counted, acked), ``slow order`` and ``nap`` (async)."""
    options.setdefault("recovery_window", 30)
    options.setdefault("recovery_max_events", 5000)
    socketio = SocketServer(**options)
    seen: dict[str, list[Any]] = {"connects": [], "disconnects": [], "orders": [], "naps": []}

    @socketio.on("connect", namespace="/x")
    def connect() -> None:
        seen["connects"].append((request.sid, request.recovered) if request.recovered else request.sid)

    @socketio.on("disconnect", namespace="/x")
    def disconnect(reason: str) -> None:
        seen["disconnects"].append((request.sid, reason))

    @socketio.on("join", namespace="/x")
    def join(room: str) -> bool:
        join_room(room)
        return True

    @socketio.on("order", namespace="/x")
    def order(item: str) -> str:
        seen["orders"].append(item)
        emit("ordered", item)
        return f"ordered {item}"

    @socketio.on("slow order", namespace="/x")
    async def slow_order(item: str) -> str:
        seen["orders"].append(item)
        emit("ordered", item)
        await asyncio.sleep(0.5)
        return f"ordered {item}"

    @socketio.on("nap", namespace="/x")
    async def nap(seconds: float) -> str:
        seen["naps"].append(seconds)  # the call reached the server
        await asyncio.sleep(seconds)
        return "rested"

    return socketio, seen


def lifecycle(client: Client) -> list[tuple[Any, ...]]:
    """Record the client's lifecycle callbacks, with their arguments."""
    events: list[tuple[Any, ...]] = []
    client.on("connect", lambda recovered: events.append(("connect", recovered)))
    client.on("disconnect", lambda reason: events.append(("disconnect", reason)))
    client.on("reconnect", lambda attempt, recovered: events.append(("reconnect", recovered)))
    return events


async def storm(socketio: SocketServer, total: int, cut_at: int, cut: Callable[[], Awaitable[None]]) -> None:
    """Broadcast ``n`` 0..total-1 on /x, yielding to the loop every ten events; ``cut()`` on the way."""
    for i in range(total):
        if i == cut_at:
            await cut()
        socketio.emit("n", i, namespace="/x")
        if i % 10 == 0:
            await asyncio.sleep(0.001)


def reconnected(events: list[tuple[Any, ...]], count: int = 1) -> Callable[[], bool]:
    return lambda: sum(event[0] == "reconnect" for event in events) >= count


# -- Resuming the session ---------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["relay", "client transport"])
async def test_cut_mid_storm_misses_nothing(cut: str) -> None:
    """A cut in a broadcast storm: every event once, in order; same sid, rooms and namespaces."""
    socketio, seen = make_app()
    total = 1500
    async with running(socketio), relayed(socketio.port) as relay:
        client = Client(relay.url, **FAST)
        events = lifecycle(client)
        numbers: list[int] = []
        client.namespace("/x").on("n", numbers.append)
        async with client:
            x = await client.connect("/x")
            assert await x.call("join", "lobby") is True
            sid = client.sid

            async def cut_now() -> None:
                await until(lambda: len(numbers) > 0)  # the client is receiving the storm
                if cut == "relay":
                    relay.cut()
                else:
                    assert client._ws is not None
                    client._ws.transport.abort()

            await storm(socketio, total, total // 3, cut_now)
            await until(reconnected(events))
            await until(lambda: len(numbers) >= total)
            await asyncio.sleep(0.1)  # a duplicate would arrive by now
            assert numbers == list(range(total)), "every event exactly once, in order"
            assert client.recovered and client.sid == sid and x.connected
            assert events[:4] == [
                ("connect", False),
                ("disconnect", "closed 1006"),
                ("reconnect", True),
                ("connect", True),
            ]
            assert seen["connects"] == [sid, (sid, True)], "the connect handler ran again, told of the resume"
            assert seen["disconnects"] == [(sid, "transport close")], "told once, at the drop"
            socketio.emit("room news", "still in the lobby", namespace="/x", to="lobby")
            assert await x.wait("room news") == "still in the lobby"
            assert await x.call("order", "after") == "ordered after"


@pytest.mark.parametrize("lost", ["ack", "call", "running"])
async def test_call_in_flight_is_answered_after_recovery(lost: str) -> None:
    """A call whose answer the drop lost is answered after the recovery; its handler ran once.

    ``ack``: the server handled it, the ack was lost (it comes back with the missed frames).
    ``call``: the frame never reached the server (the client sends it again).
    ``running``: the handler was still running (its ack comes on the new connection).
    Events emitted while away are sent after the re-sent call, in order.
    """
    socketio, seen = make_app()
    async with running(socketio), relayed(socketio.port) as relay:
        client = Client(relay.url, **FAST)
        events = lifecycle(client)
        async with client:
            x = await client.connect("/x")
            sid = client.sid
            if lost == "ack":
                relay.drop["down"] = True
                call = asyncio.create_task(x.call("order", "pizza", timeout=10))
                await until(lambda: seen["orders"] == ["pizza"] and relay.dropped["down"] > 0)
            elif lost == "call":
                relay.drop["up"] = True
                call = asyncio.create_task(x.call("order", "pizza", timeout=10))
                await until(lambda: relay.dropped["up"] > 0)
                assert seen["orders"] == []
            else:
                call = asyncio.create_task(x.call("slow order", "pizza", timeout=10))
                await until(lambda: seen["orders"] == ["pizza"])
            relay.refuse = True
            relay.cut()
            relay.drop = {"up": False, "down": False}
            await until(lambda: not client.connected)
            assert not call.done(), "a call in flight waits for the recovery"
            await x.emit("order", "salad")  # buffered while away
            relay.refuse = False
            assert await asyncio.wait_for(call, 5) == "ordered pizza"
            await until(lambda: seen["orders"] == ["pizza", "salad"])
            await until(reconnected(events))
            assert client.recovered and client.sid == sid
            assert await x.call("order", "soup") == "ordered soup"
            assert seen["orders"] == ["pizza", "salad", "soup"], "each handled exactly once, in order"
            assert [await x.wait("ordered") for _ in range(3)] == ["pizza", "salad", "soup"]


@pytest.mark.parametrize("lost", ["call", "ack"])
async def test_retries_find_a_silently_dead_link_and_the_call_arrives_once(lost: str) -> None:
    """retries: a call unanswered over a dead link makes the client drop it; after the resume it is handled once."""
    socketio, seen = make_app()
    async with running(socketio), relayed(socketio.port) as relay:
        client = Client(relay.url, retries=20, ping_interval=None, ping_timeout=0.2, **FAST)
        events = lifecycle(client)
        async with client:
            x = await client.connect("/x")
            relay.drop["up" if lost == "call" else "down"] = True
            call = asyncio.create_task(x.call("order", "pizza", timeout=0.3))
            await until(lambda: not client.connected)  # the link check found it dead
            relay.drop = {"up": False, "down": False}
            assert await asyncio.wait_for(call, 10) == "ordered pizza"
            await until(reconnected(events))
            assert client.recovered and seen["orders"] == ["pizza"]


async def test_call_timeout_still_runs_while_waiting_for_recovery() -> None:
    """A call kept across a drop still times out when the client stays away too long."""
    socketio, seen = make_app()
    async with running(socketio), relayed(socketio.port) as relay:
        async with Client(relay.url, **FAST) as client:
            x = await client.connect("/x")
            call = asyncio.create_task(x.call("nap", 5, timeout=0.5))
            await until(lambda: seen["naps"])
            relay.refuse = True
            relay.cut()
            with pytest.raises(ClientTimeoutError):
                await asyncio.wait_for(call, 5)
            assert not client.connected


async def test_dead_link_found_by_keepalive_is_dropped_not_closed() -> None:
    """Pings unanswered: the client drops the link without a close frame, and resumes the session.

    Only the server's frames are lost: a close frame from the client would reach the server,
    which would take it as the client leaving and end the session.
    """
    socketio, seen = make_app()
    async with running(socketio), relayed(socketio.port) as relay:
        client = Client(relay.url, ping_interval=0.1, ping_timeout=0.2, **FAST)
        events = lifecycle(client)
        async with client:
            x = await client.connect("/x")
            sid = client.sid
            relay.drop["down"] = True
            relay.refuse = True
            await until(lambda: not client.connected)
            relay.drop["down"] = False
            relay.refuse = False
            await until(reconnected(events))
            assert events[1] == ("disconnect", "closed 1006")
            assert client.recovered and client.sid == sid and x.connected
            assert seen["disconnects"] == [(sid, "ping timeout")] or seen["disconnects"] == [(sid, "transport close")]
            assert seen["connects"] == [sid, (sid, True)]
            assert await x.call("order", "still here") == "ordered still here"


async def test_token_of_a_later_connect_of_root_is_kept() -> None:
    """Each connect of / replaces the token: the client resumes with the newest one."""
    socketio, _ = make_app()
    async with running(socketio), relayed(socketio.port) as relay:
        client = Client(relay.url, **FAST)
        events = lifecycle(client)
        async with client:
            sid = client.sid
            await client.connect("/")  # answered with a connect of / and a new token
            relay.cut()
            await until(reconnected(events))
            assert client.recovered and client.sid == sid


async def test_server_call_answered_after_recovery() -> None:
    """A handler answering the server's call across the drop acks on the resumed connection."""
    socketio, _ = make_app()
    async with running(socketio), relayed(socketio.port) as relay:
        async with Client(relay.url, **FAST) as client:
            x = await client.connect("/x")
            asked = asyncio.Event()
            answer = asyncio.Event()

            @x.on("question")
            async def question(data: str) -> str:
                asked.set()
                await answer.wait()
                return data.upper()

            assert client.sid is not None
            call = asyncio.create_task(socketio.call("question", "yes?", to=client.sid, namespace="/x", timeout=10))
            await asyncio.wait_for(asked.wait(), 5)
            relay.cut()
            # Not the reconnect callback: it waits for this handler (they run one at a time).
            await until(lambda: not client.connected)
            await until(lambda: client.connected)
            assert client.recovered
            answer.set()
            assert await asyncio.wait_for(call, 5) == "YES?"


async def test_namespace_left_while_away_is_left_on_the_server() -> None:
    """A namespace left while the link was down is left on the resumed session too."""
    socketio, _ = make_app()

    @socketio.on("ping", namespace="/y")
    def ping() -> str:
        return "pong"

    async with running(socketio), relayed(socketio.port) as relay:
        client = Client(relay.url, **FAST)
        events = lifecycle(client)
        async with client:
            x, y = await client.connect("/x"), await client.connect("/y")
            relay.refuse = True
            relay.cut()
            await until(lambda: not client.connected)
            await y.disconnect()  # can not reach the server now
            relay.refuse = False
            await until(reconnected(events))
            assert client.recovered and x.connected and not y.connected
            await until(lambda: socketio.sids("/y") == [])
            assert socketio.sids("/x") == [client.sid]


# -- Not resumed: a fresh session -------------------------------------------------------------


async def test_expired_window_gives_a_fresh_session() -> None:
    """Away longer than the window: new sid, namespaces joined again, calls in flight fail."""
    socketio, seen = make_app(recovery_window=0.5)
    async with running(socketio), relayed(socketio.port) as relay:
        client = Client(relay.url, **FAST)
        events = lifecycle(client)
        async with client:
            x = await client.connect("/x")
            old_sid = client.sid
            call = asyncio.create_task(x.call("nap", 5, timeout=30))
            await until(lambda: seen["naps"])
            relay.refuse = True
            relay.cut()
            await until(lambda: not client.connected)
            await x.emit("order", "while away")  # buffered
            await until(lambda: seen["disconnects"] == [(old_sid, "transport close")])  # told at the drop
            await until(lambda: old_sid not in socketio._connections)  # the window expired
            assert not call.done(), "the call waits to know whether the session is resumed"
            relay.refuse = False
            with pytest.raises(DisconnectedError) as dropped:
                await asyncio.wait_for(call, 5)
            assert dropped.value.code == 1006
            await until(reconnected(events))
            assert not client.recovered and client.sid != old_sid
            assert events[-2:] == [("reconnect", False), ("connect", False)]
            assert x.connected and seen["connects"] == [old_sid, client.sid]
            await until(lambda: seen["orders"] == ["while away"])
            assert await x.call("order", "fresh") == "ordered fresh"


async def test_server_restart_gives_a_fresh_session() -> None:
    """A token the server does not know (it restarted): fresh session, namespaces joined again."""
    first, _ = make_app()
    second, seen = make_app()
    async with running(first), running(second), relayed(first.port) as relay:
        client = Client(relay.url, **FAST)
        events = lifecycle(client)
        async with client:
            x = await client.connect("/x")
            old_sid = client.sid
            assert second.port is not None
            relay.target_port = second.port  # the next connection reaches a server that never saw us
            relay.cut()
            await until(reconnected(events))
            assert not client.recovered and client.sid != old_sid
            assert seen["connects"] == [client.sid] and x.connected
            assert await x.call("order", "again") == "ordered again"


async def test_recovery_off_behaves_as_before() -> None:
    """Without a recovery window there is no token: calls in flight fail at the drop."""
    socketio, seen = make_app(recovery_window=0)
    async with running(socketio), relayed(socketio.port) as relay:
        client = Client(relay.url, **FAST)
        events = lifecycle(client)
        async with client:
            x = await client.connect("/x")
            old_sid = client.sid
            call = asyncio.create_task(x.call("nap", 5, timeout=30))
            await until(lambda: seen["naps"])
            relay.refuse = True
            relay.cut()
            with pytest.raises(DisconnectedError) as dropped:
                await asyncio.wait_for(call, 5)
            assert dropped.value.code == 1006
            relay.refuse = False
            await until(reconnected(events))
            assert not client.recovered and client.sid != old_sid and x.connected
            assert seen["connects"] == [old_sid, client.sid]


# -- Tokens at the URL level ------------------------------------------------------------------


async def test_forged_and_reused_tokens_get_fresh_sessions(opened: Any) -> None:
    """Only the current token resumes; it is replaced on each resume; forged or used ones do not."""
    socketio, _ = make_app()
    async with running(socketio) as url:
        wire = await opened(url)
        sid, first_token = wire.sid, wire.hello["data"]["recovery"]["token"]
        await wire.join("/x")
        wire.abort()
        await until(lambda: socketio.kept_registry.is_connected("/x", sid) and socketio.sids("/x") == [])

        forged = await opened(f"{url}/?recover={quote(first_token[::-1], safe='')}")
        assert forged.hello["data"]["recovered"] is False and forged.sid != sid
        sid_only = await opened(f"{url}/?recover={sid}")
        assert sid_only.hello["data"]["recovered"] is False and sid_only.sid != sid

        resumed = await opened(f"{url}/?recover={quote(first_token, safe='')}")
        assert resumed.hello["data"]["recovered"] is True and resumed.sid == sid
        second_token = resumed.hello["data"]["recovery"]["token"]
        assert second_token != first_token
        assert await resumed.expect("connect", "/x")
        resumed.abort()
        await until(lambda: socketio._connections[sid].detached)

        reused = await opened(f"{url}/?recover={quote(first_token, safe='')}")
        assert reused.hello["data"]["recovered"] is False and reused.sid != sid
        again = await opened(f"{url}/?recover={quote(second_token, safe='')}")
        assert again.hello["data"]["recovered"] is True and again.sid == sid


async def test_token_in_the_first_frame_resumes_and_anything_else_is_fresh(opened: Any) -> None:
    """?recover=1: a first heartbeat carrying the token resumes the session; a wrong one or none is fresh."""
    from websockets.asyncio.client import connect

    socketio, _ = make_app()
    async with running(socketio) as url:
        wire = await opened(url)
        sid, token = wire.sid, wire.hello["data"]["recovery"]["token"]
        await wire.join("/x")
        wire.abort()
        await until(lambda: socketio.kept_registry.is_connected("/x", sid))
        for first in ({"recover": "not-the-token"}, None):
            async with connect(f"{url}/?recover=1") as ws:
                await ws.send(json.dumps({"event": "heartbeat", "namespace": "/", "data": first}))
                hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert hello["data"]["recovered"] is False and hello["data"]["sid"] != sid
        async with connect(f"{url}/?recover=1") as ws:  # no offset: none was received
            await ws.send(json.dumps({"event": "heartbeat", "namespace": "/", "data": {"recover": token}}))
            hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert hello["data"]["recovered"] is True and hello["data"]["sid"] == sid
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["namespace"] == "/x"  # its namespace, back


async def test_reconnection_urls_carry_token_and_offset() -> None:
    """The client adds recover=1 and offset= (URL-encoded) to its own query, keeps the rest, and sends the token first.

    A scripted server: each connection greets as listed, sends the listed frames, answers
    heartbeats and drops the link (no close frame) when asked. The offset counts even from a
    frame the client refuses (too deep for it): it was received, and must not come twice.
    """
    deep: Any = "bottom"
    for _ in range(40):
        deep = [deep]
    frames = {
        "n a-1": {"event": "n", "namespace": "/", "data": 1, "offset": "a-1"},
        "deep a-2": {"event": "deep", "namespace": "/", "data": deep, "offset": "a-2"},
        "n": {"event": "n", "namespace": "/", "data": 2},
    }
    script: list[tuple[dict[str, Any], list[str]]] = [
        ({"sid": "s1", "protocol": 1, "recovered": False, "recovery": {"token": "t/+ =1", "window": 5}}, ["n a-1"]),
        ({"sid": "s1", "protocol": 1, "recovered": True, "recovery": {"token": "t2", "window": 5}}, ["deep a-2", "n"]),
        ({"sid": "s2", "protocol": 1, "recovered": False, "recovery": {"token": "t3", "window": 5}}, []),
        ({"sid": "s3", "protocol": 1}, []),  # recovery turned off on the server
        ({"sid": "s4", "protocol": 1}, []),
    ]
    paths: list[str] = []
    tokens: list[Any] = []  # the data of the first heartbeat of each resuming connection

    async def scripted(ws: ServerConnection) -> None:
        assert ws.request is not None
        greeting, names = script[len(paths)]
        paths.append(ws.request.path)
        await ws.send(json.dumps({"event": "connect", "namespace": "/", "data": greeting}))
        for name in names:
            await ws.send(json.dumps(frames[name]))
        async for message in ws:
            frame = json.loads(message)
            if frame["event"] == "heartbeat" and frame.get("data") is not None:
                tokens.append(frame["data"])  # a server with recovery off answers it too
            if frame["event"] == "heartbeat":
                await ws.send(json.dumps({"event": "heartbeat", "namespace": "/", "data": None}))
            elif frame["event"] == "drop":
                ws.transport.abort()
                return

    async with serve(scripted, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = Client(f"ws://127.0.0.1:{port}/chat?room=lobby&x=%2F", **FAST)
        events = lifecycle(client)
        async with client:
            for round in range(1, len(script)):
                if script[round - 1][1]:
                    await client.root.wait("n")  # the frames before it were read too
                await client.root.emit("drop")
                await until(reconnected(events, round))
            assert paths == [
                "/chat?room=lobby&x=%2F",
                "/chat?room=lobby&x=%2F&recover=1&offset=a-1",
                "/chat?room=lobby&x=%2F&recover=1&offset=a-2",
                "/chat?room=lobby&x=%2F&recover=1",  # a fresh session: no offset of its own yet
                "/chat?room=lobby&x=%2F",  # no token: the server has recovery off
            ]
            # The token is never in a URL: it is the first frame, a heartbeat.
            assert tokens == [{"recover": "t/+ =1"}, {"recover": "t2"}, {"recover": "t3"}]
            assert [e[1] for e in events if e[0] == "connect"] == [False, True, False, False, False]
            assert client.sid == "s4"


# -- Against python server.py -----------------------------------------------------------------


async def test_python_server_py_recovery(server_process: Callable[..., ServerProcess]) -> None:
    """The demo app with --recovery-window 120: a cut mid-broadcast loses and doubles nothing."""
    demo = server_process("--recovery-window", "120")
    total = 180  # within the demo's rate-limit burst (200 frames)
    async with relayed(demo.port) as relay:
        client = Client(relay.url, **FAST)
        events = lifecycle(client)
        responses: list[Any] = []
        client.namespace("/test").on("my response", lambda data: responses.append(data["data"]))
        async with client, Client(demo.url, max_queue=0) as sender:
            test = await client.connect("/test")
            other = await sender.connect("/test")
            await test.emit("join", {"room": "lobby"})
            sid = client.sid
            await until(lambda: len(responses) == 2)  # "Connected", "In rooms: ..."

            async def broadcast() -> None:
                for i in range(total):
                    await other.emit("my broadcast event", {"data": i})
                    await asyncio.sleep(0.002)

            emitting = asyncio.create_task(broadcast())
            await until(lambda: len(responses) >= 2 + total // 3)
            assert not emitting.done()
            relay.cut()
            await until(reconnected(events))
            await emitting
            await until(lambda: len(responses) >= 2 + total)
            await other.emit("my room event", {"room": "lobby", "data": "lobby news"})
            await until(lambda: responses[-1] == "lobby news")
            assert responses.count("Reconnected") == 1, "the connect handler ran again on the resume"
            resumed = [data for data in responses[2:] if data != "Reconnected"]
            assert resumed == [*range(total), "lobby news"], "every broadcast once, in order"
            assert client.recovered and client.sid == sid and test.connected
