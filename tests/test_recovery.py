"""Connection state recovery on the wire: cut the TCP connection, come back, miss nothing."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import quote

from conftest import running, until
from wire import Wire

from plainsocket import SocketServer, emit, join_room, request, session


def make_app(**options: Any) -> tuple[SocketServer, dict[str, Any]]:
    options.setdefault("recovery_window", 30)
    socketio = SocketServer(**options)
    seen: dict[str, Any] = {"handled": [], "disconnects": [], "connects": []}

    @socketio.on("connect", namespace="/test")
    def connect() -> None:
        rooms = sorted(socketio.rooms(request.sid, namespace="/test"))
        seen["connects"].append((request.sid, request.recovered, rooms, session.get("value")))
        emit("welcome", {"recovered": request.recovered, "value": session.get("value")})

    @socketio.on("join", namespace="/test")
    def join(room: str) -> None:
        join_room(room)

    @socketio.on("remember", namespace="/test")
    def remember(value: Any) -> None:
        session["value"] = value

    @socketio.on("recall", namespace="/test")
    def recall() -> Any:
        return session.get("value")

    @socketio.on("order", namespace="/test")
    def order(item: str) -> str:
        seen["handled"].append(item)
        return f"ordered {item}"

    @socketio.on("disconnect", namespace="/test")
    def gone(reason: str) -> None:
        seen["disconnects"].append((request.sid, reason))

    return socketio, seen


class Receiver:
    """A raw client that remembers the offset of the last frame it consumed."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.offset: str | None = None
        self.token: str = wire.hello["data"]["recovery"]["token"]
        self.numbers: list[int] = []

    async def next(self, timeout: float = 5) -> dict[str, Any]:
        frame = await self.wire.recv(timeout)
        if "offset" in frame:
            self.offset = frame["offset"]
        if frame["event"] == "n":
            self.numbers.append(frame["data"])
        return frame

    async def until_number(self, number: int) -> None:
        while not self.numbers or self.numbers[-1] < number:
            await self.next()

    def resume_url(self, base: str) -> str:
        url = f"{base}/?recover={quote(self.token)}"
        return url + (f"&offset={quote(self.offset)}" if self.offset else "")

    async def resume(self, base: str, opened: Any) -> dict[str, Any]:
        """Reconnect with the token; return the greeting; keep reading with the new socket."""
        self.wire = await opened(self.resume_url(base))
        if self.wire.hello["data"].get("recovery"):
            self.token = self.wire.hello["data"]["recovery"]["token"]
        return self.wire.hello


@asynccontextmanager
async def storm(socketio: SocketServer, total: int, namespace: str = "/test") -> AsyncIterator[asyncio.Task[None]]:
    """Emit numbered events 0..total-1 in the background, yielding to the loop between them."""

    async def run() -> None:
        for i in range(total):
            socketio.emit("n", i, namespace=namespace)
            if i % 10 == 0:
                await asyncio.sleep(0.001)

    task = asyncio.ensure_future(run())
    try:
        yield task
    finally:
        task.cancel()


@asynccontextmanager
async def two_nodes(redis_url: str) -> AsyncIterator[list[tuple[SocketServer, str, dict[str, Any]]]]:
    """Two recovering nodes on one Redis, each aware of the other; yield (node, url, seen) triples."""
    async with AsyncExitStack() as stack:
        nodes = []
        for _ in range(2):
            node, seen = make_app(message_queue=redis_url, heartbeat_interval=0.25)
            nodes.append((node, await stack.enter_async_context(running(node)), seen))
        await until(lambda: all(len(node.backplane.alive_nodes()) == 2 for node, _, _ in nodes))
        yield nodes


async def joined(url: str, opened: Any) -> Receiver:
    receiver = Receiver(await opened(url))
    await receiver.wire.send("connect", None, "/test")
    await receiver.wire.expect("connect", "/test")
    await receiver.next()  # welcome
    return receiver


async def test_cut_mid_storm_and_recover_everything(opened: Any) -> None:
    """An aborted TCP connection in a broadcast storm: resumed, zero lost, zero duplicated, in order."""
    socketio, seen = make_app()
    total = 600
    async with running(socketio) as url:
        client = await joined(url, opened)
        await client.wire.send("join", "lobby", "/test")
        await client.wire.send("remember", "apple", "/test")
        sid = client.wire.sid
        async with storm(socketio, total) as emitting:
            await client.until_number(100)
            client.wire.abort()  # no close frame: the server must keep the session
            await until(lambda: socketio._connections[sid].detached)
            hello = await client.resume(url, opened)
            assert hello["data"]["sid"] == sid and hello["data"]["recovered"] is True
            assert (await client.wire.expect("connect", "/test"))["data"] == {"sid": sid, "recovered": True}
            await client.until_number(total - 1)
            await emitting
        assert client.numbers == list(range(total)), "every event once, in order"
        socketio.emit("room news", "still in lobby", namespace="/test", to="lobby")
        assert (await client.next())["data"] == "still in lobby"
        await client.wire.send("recall", None, "/test", id=1)
        assert (await client.next())["data"] == "apple"
        assert seen["disconnects"] == [(sid, "transport close")], "told once, at the drop"
        # The connect handler ran again after the replay, told of the resume, rooms and session back.
        assert seen["connects"] == [(sid, False, [sid], None), (sid, True, sorted([sid, "lobby"]), "apple")]


async def test_live_takeover_when_the_server_has_not_noticed_the_drop(opened: Any) -> None:
    """A client that reconnects before the server saw the old socket die takes its session over."""
    socketio, seen = make_app()
    async with running(socketio) as url:
        client = await joined(url, opened)
        old = client.wire
        socketio.emit("n", 1, namespace="/test")
        await client.next()
        hello = await client.resume(url, opened)
        assert hello["data"]["recovered"] is True and hello["data"]["sid"] == old.sid
        await client.wire.expect("connect", "/test")
        assert (await client.next())["data"] == {"recovered": True, "value": None}
        await old.ws.wait_closed()
        socketio.emit("n", 2, namespace="/test")
        assert (await client.next())["data"] == 2
        assert socketio.connection_count() == 1
        # The old socket's end was a disconnect, told before the resume's connect handler ran.
        assert seen["disconnects"] == [(old.sid, "transport close")]
        assert [connect[1] for connect in seen["connects"]] == [False, True]


async def test_resent_call_is_not_handled_twice(opened: Any) -> None:
    """A call whose ack was lost: after the resume its ack is replayed and a re-send is dropped."""
    socketio, seen = make_app()
    async with running(socketio) as url:
        client = await joined(url, opened)
        await client.wire.send("order", "pizza", "/test", id=5)
        await until(lambda: seen["handled"] == ["pizza"])
        client.wire.abort()  # the ack is lost with the connection
        await until(lambda: socketio._connections[client.wire.sid].detached)
        await client.resume(url, opened)
        await client.wire.expect("connect", "/test")
        ack = await client.next()  # the replayed ack comes before anything new
        assert ack["event"] == "ack" and ack["id"] == 5 and ack["data"] == "ordered pizza"
        assert (await client.next())["event"] == "welcome"
        await client.wire.send("order", "pizza", "/test", id=5)  # the client library re-sends once
        await client.wire.send("order", "salad", "/test", id=6)
        assert (await client.next())["data"] == "ordered salad"
        assert seen["handled"] == ["pizza", "salad"]


async def test_expired_window_gives_a_fresh_session(opened: Any) -> None:
    """After the window the kept session is gone (nothing more runs) and a resume is refused."""
    socketio, seen = make_app(recovery_window=0.3)
    async with running(socketio) as url:
        client = await joined(url, opened)
        sid = client.wire.sid
        client.wire.abort()
        await until(lambda: seen["disconnects"] == [(sid, "transport close")])
        assert socketio.recoverable == 1
        await until(lambda: sid not in socketio._connections)
        assert socketio.recoverable == 0 and socketio.kept_registry.is_empty()
        hello = await client.resume(url, opened)
        assert hello["data"]["recovered"] is False and hello["data"]["sid"] != sid
        assert socketio.sids("/test") == []
        assert seen["disconnects"] == [(sid, "transport close")], "the expiry ran no handler"


async def test_forged_and_reused_tokens_are_refused(opened: Any) -> None:
    """A made-up token, or a token already used once, never resumes a session."""
    socketio, _ = make_app()
    async with running(socketio) as url:
        client = await joined(url, opened)
        sid = client.wire.sid
        forged = await opened(f"{url}/?recover=not-a-real-token")
        assert forged.hello["data"]["recovered"] is False and forged.sid != sid
        sid_only = await opened(f"{url}/?recover={sid}")
        assert sid_only.hello["data"]["recovered"] is False
        used = client.token
        client.wire.abort()
        await until(lambda: socketio._connections[sid].detached)
        assert (await client.resume(url, opened))["data"]["recovered"] is True
        again = await opened(f"{url}/?recover={quote(used)}")
        assert again.hello["data"]["recovered"] is False and again.sid != sid


async def test_session_past_its_bound_is_not_recovered(opened: Any) -> None:
    """More missed events than recovery_max_events: recovered is false, never a silent gap."""
    socketio, seen = make_app(recovery_max_events=20)
    async with running(socketio) as url:
        client = await joined(url, opened)
        sid = client.wire.sid
        client.wire.abort()
        await until(lambda: socketio._connections[sid].detached)
        for i in range(50):
            socketio.emit("n", i, namespace="/test")
        hello = await client.resume(url, opened)
        assert hello["data"]["recovered"] is False
        await until(lambda: seen["disconnects"] == [(sid, "transport close")])


async def test_a_clean_close_ends_the_session_at_once(opened: Any) -> None:
    """A client that closes the WebSocket itself is gone: no session is kept."""
    socketio, seen = make_app()
    async with running(socketio) as url:
        client = await joined(url, opened)
        await client.wire.close()
        await until(lambda: seen["disconnects"] == [(client.wire.sid, "client disconnect")])
        assert (await client.resume(url, opened))["data"]["recovered"] is False


async def test_memory_bounded_with_1000_sessions_waiting(opened: Any) -> None:
    """1,000 dropped sessions under a broadcast storm keep at most their bounds."""
    socketio, _ = make_app(recovery_max_events=50, recovery_max_bytes=4096, rate_limit=10_000)
    async with running(socketio) as url:
        clients = []
        for _ in range(1000):
            wire = await Wire.open(url)
            await wire.send("connect", None, "/test")
            clients.append(wire)
        for wire in clients:
            await wire.expect("connect", "/test")
            wire.abort()
        await until(lambda: all(c.detached for c in socketio._connections.values()), timeout=20)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            socketio.emit("n", {"i": i, "pad": "x" * 200}, namespace="/test")
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        for conn in socketio._connections.values():
            assert len(conn.log.frames) == 1, "its own welcome only: broadcasts are kept once, in the server's log"
        assert socketio.broadcasts.bytes <= 4 * 4096 and len(socketio.broadcasts.entries) <= 200
        # 200 shared frames kept once: well under 10 MB.
        print(f"traced growth over 200 broadcasts to 1,000 waiting sessions: {grown} bytes")
        assert grown < 10_000_000, grown


async def test_resume_on_another_node_through_redis(redis_server: Any, opened: Any) -> None:
    """Cut on node A mid-storm (emitted from both nodes), resume through node B: nothing lost or doubled."""
    async with two_nodes(redis_server.url) as ((a, url_a, seen_a), (b, url_b, seen_b)):
        client = await joined(url_a, opened)
        await client.wire.send("join", "lobby", "/test")
        await client.wire.send("remember", "pear", "/test")
        sid = client.wire.sid
        total = 400

        async def alternate() -> None:
            # Even numbers from node A, odd from node B: each node's own order must hold.
            for i in range(total):
                (a if i % 2 == 0 else b).emit("n", i, namespace="/test")
                if i % 10 == 0:
                    await asyncio.sleep(0.002)

        emitting = asyncio.ensure_future(alternate())
        await client.until_number(60)
        client.wire.abort()
        await until(lambda: seen_a["disconnects"] == [(sid, "transport close")])  # told at once, on A
        assert a._connections[sid].detached and await b.cluster_count("/test") == 0
        assert await b.cluster_sids("/test") == [] and await a.cluster_sids("/test", "lobby") == []
        hello = await client.resume(url_b, opened)
        assert hello["data"] == {**hello["data"], "sid": sid, "recovered": True}
        await client.wire.expect("connect", "/test")
        await emitting
        welcomed = []
        while sorted(client.numbers) != list(range(total)) or not welcomed:
            frame = await client.next()
            if frame["event"] == "welcome":  # B's connect handler, after the replay
                welcomed.append(frame["data"])
        assert welcomed == [{"recovered": True, "value": "pear"}]
        assert len(client.numbers) == total, "no duplicates"
        evens = [n for n in client.numbers if n % 2 == 0]
        odds = [n for n in client.numbers if n % 2 == 1]
        assert evens == sorted(evens) and odds == sorted(odds), "each sender's order kept"
        assert sid not in a._connections and b._connections[sid].detached is False
        # B ran the connect handler of the resumed session; A ran nothing more.
        assert seen_b["connects"] == [(sid, True, sorted([sid, "lobby"]), "pear")]
        assert seen_b["disconnects"] == [] and seen_a["disconnects"] == [(sid, "transport close")]
        assert [connect[1] for connect in seen_a["connects"]] == [False]
        assert await a.cluster_sids("/test", "lobby") == [sid] and a.recoverable == 0
        a.emit("room news", "from a", namespace="/test", to="lobby")
        assert (await client.next())["data"] == "from a"
        await client.wire.send("recall", None, "/test", id=1)
        assert (await client.next())["data"] == "pear"


async def test_a_kicked_client_can_not_resume(opened: Any) -> None:
    """disconnect(sid) ends a session for good, whether its socket is gone or still open."""
    socketio, seen = make_app()
    async with running(socketio) as url:
        dropped = await joined(url, opened)
        sid = dropped.wire.sid
        dropped.wire.abort()
        await until(lambda: seen["disconnects"] == [(sid, "transport close")])
        socketio.disconnect(sid)
        assert sid not in socketio._connections and socketio.recoverable == 0
        assert (await dropped.resume(url, opened))["data"]["recovered"] is False
        assert seen["disconnects"] == [(sid, "transport close")], "told once"

        kicked = await joined(url, opened)
        socketio.disconnect(kicked.wire.sid)  # the client ignores the 4001 and comes back at once
        assert (await kicked.resume(url, opened))["data"]["recovered"] is False


async def test_v1_clients_may_reuse_ids_with_recovery_on(opened: Any) -> None:
    """Without a resume, a frame is never dropped for reusing an id (wscat users type id 1 often)."""
    socketio, seen = make_app()
    async with running(socketio) as url:
        client = await joined(url, opened)
        for item in ("tea", "cake"):
            await client.wire.send("order", item, "/test", id=1)
            assert (await client.next())["data"] == f"ordered {item}"
        assert seen["handled"] == ["tea", "cake"]


async def test_unknown_token_gets_a_fresh_session_quickly_in_a_cluster(redis_server: Any, opened: Any) -> None:
    """Every node answers a claim, so an unknown token costs one round trip, not a timeout."""
    async with two_nodes(redis_server.url) as ((_, url_a, _), _):
        loop = asyncio.get_running_loop()
        started = loop.time()
        fresh = await opened(f"{url_a}/?recover=unknown-token")
        assert fresh.hello["data"]["recovered"] is False
        assert loop.time() - started < 1.0
