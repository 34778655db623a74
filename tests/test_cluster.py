"""Scale-out on a real Redis: several nodes (in-process and server.py processes) act as one."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import redis
from conftest import ROOT, running, until
from websockets.exceptions import ConnectionClosed
from wire import Wire

from plainsocket import CallTimeoutError, SocketServer
from plainsocket.backplane import Emitter, make_message


def make_node(redis_url: str, **options: Any) -> SocketServer:
    node = SocketServer(message_queue=redis_url, heartbeat_interval=0.25, **options)
    node.on_event("connect", lambda: None, namespace="/test")
    return node


@asynccontextmanager
async def cluster(redis_url: str, size: int = 2, **options: Any) -> AsyncIterator[list[tuple[SocketServer, str]]]:
    """Start ``size`` nodes on one Redis; yield (node, ws url) pairs."""
    async with AsyncExitStack() as stack:
        nodes = []
        for _ in range(size):
            node = make_node(redis_url, **options)
            nodes.append((node, await stack.enter_async_context(running(node))))
        # Every node knows every other one before the test starts.
        await until(lambda: all(len(n.backplane.alive_nodes()) == size for n, _ in nodes))
        yield nodes


async def test_broadcast_reaches_clients_on_every_node(redis_server: Any, opened: Any) -> None:
    """An emit on node A reaches the namespace's clients on A and on B, once each."""
    async with cluster(redis_server.url) as [(a, url_a), (_, url_b)]:
        on_a, on_b = await opened(url_a), await opened(url_b)
        await on_a.join("/test")
        await on_b.join("/test")
        a.emit("news", 1, namespace="/test")
        assert (await on_a.expect("news", "/test"))["data"] == 1
        assert (await on_b.expect("news", "/test"))["data"] == 1
        assert await on_a.silent() and await on_b.silent(0.05)


async def test_emit_to_remote_sid_room_and_skip_sid(redis_server: Any, opened: Any) -> None:
    """to=sid, to=room and skip_sid work whichever node holds the clients."""
    async with cluster(redis_server.url) as [(a, _), (b, url_b)]:
        x, y = await opened(url_b), await opened(url_b)
        for client in (x, y):
            await client.join("/test")
        a.emit("direct", "hi", namespace="/test", to=y.sid)
        assert (await y.expect("direct"))["data"] == "hi"
        assert await x.silent()
        # A room joined through node A for clients held by node B.
        a.enter_room(x.sid, "room", namespace="/test")
        await until(lambda: b.members("room", namespace="/test") == [x.sid])
        a.emit("room news", 1, namespace="/test", to="room")
        assert (await x.expect("room news"))["data"] == 1
        a.emit("all but x", 2, namespace="/test", skip_sid=x.sid)
        assert (await y.expect("all but x"))["data"] == 2
        assert await x.silent()
        a.leave_room(x.sid, "room", namespace="/test")
        await until(lambda: b.members("room", namespace="/test") == [])


async def test_close_room_across_nodes(redis_server: Any, opened: Any) -> None:
    """close_room on one node empties the room on every node."""
    async with cluster(redis_server.url) as [(a, url_a), (b, url_b)]:
        on_a, on_b = await opened(url_a), await opened(url_b)
        await on_a.join("/test")
        await on_b.join("/test")
        a.enter_room(on_a.sid, "r", namespace="/test")
        b.enter_room(on_b.sid, "r", namespace="/test")
        assert await a.cluster_sids("/test", room="r") == sorted([on_a.sid, on_b.sid])
        a.close_room("r", namespace="/test")
        await until(lambda: b.members("r", namespace="/test") == [])
        assert await a.cluster_sids("/test", room="r") == []


async def test_remote_disconnect(redis_server: Any, opened: Any) -> None:
    """disconnect(sid) on node A closes the client held by node B with 4001."""
    async with cluster(redis_server.url) as [(a, _), (_, url_b)]:
        client = await opened(url_b)
        a.disconnect(client.sid)
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 4001


async def test_cross_node_calls(redis_server: Any, opened: Any) -> None:
    """call() to a sid or a room on another node returns the clients' acks; silence times out."""
    async with cluster(redis_server.url, size=3) as [(a, url_a), (b, url_b), (c, url_c)]:
        on_b, on_c, on_a = await opened(url_b), await opened(url_c), await opened(url_a)
        for client in (on_a, on_b, on_c):
            await client.join("/test")
        call = asyncio.ensure_future(a.call("question", 1, to=on_b.sid, namespace="/test", timeout=5))
        frame = await on_b.expect("question")
        await on_b.send("ack", "from b", "/test", id=frame["id"])
        assert await call == "from b"

        with pytest.raises(CallTimeoutError):
            await a.call("question", 2, to=on_c.sid, namespace="/test", timeout=0.5)

        for node, client in ((a, on_a), (b, on_b), (c, on_c)):
            node.enter_room(client.sid, "poll", namespace="/test")
        call = asyncio.ensure_future(a.call("vote", None, to="poll", namespace="/test", timeout=3))
        for client in (on_a, on_b, on_c):
            while (frame := await client.recv())["event"] != "vote":
                pass
            await client.send("ack", client.sid, "/test", id=frame["id"])
        assert sorted(await call) == sorted([on_a.sid, on_b.sid, on_c.sid])


async def test_cluster_wide_tracking(redis_server: Any, opened: Any) -> None:
    """cluster_sids and cluster_count see every node's clients."""
    async with cluster(redis_server.url) as [(a, url_a), (b, url_b)]:
        clients = [await opened(url) for url in (url_a, url_b, url_b)]
        await clients[1].join("/test")
        assert await a.cluster_count() == 3
        assert await b.cluster_count("/") == 3
        assert await a.cluster_sids("/test") == [clients[1].sid]
        assert await a.cluster_sids("/") == sorted(c.sid for c in clients)


async def test_order_holds_across_nodes(redis_server: Any, opened: Any) -> None:
    """Broadcasts from one node reach a client on another node in the order emitted."""
    async with cluster(redis_server.url) as [(a, _), (_, url_b)]:
        clients = [await opened(url_b) for _ in range(3)]
        for client in clients:
            await client.join("/test")
        for i in range(500):
            a.emit("n", i, namespace="/test")
        for client in clients:
            assert [(await client.recv())["data"] for _ in range(500)] == list(range(500))


async def test_emitter_from_a_process_without_a_server(redis_server: Any, opened: Any) -> None:
    """Emitter publishes to the cluster from plain synchronous code."""
    async with cluster(redis_server.url) as [(_, url_a), (b, url_b)]:
        on_a, on_b = await opened(url_a), await opened(url_b)
        await on_a.join("/test")
        await on_b.join("/test")
        b.enter_room(on_b.sid, "desk", namespace="/test")
        emitter = Emitter(redis_server.url)
        try:
            assert await asyncio.to_thread(emitter.emit, "my response", {"data": "all"}, namespace="/test") == 2
            await asyncio.to_thread(emitter.emit, "my response", {"data": "desk"}, namespace="/test", to="desk")
        finally:
            emitter.close()
        assert (await on_a.expect("my response"))["data"] == {"data": "all"}
        assert (await on_b.expect("my response"))["data"] == {"data": "all"}
        assert (await on_b.expect("my response"))["data"] == {"data": "desk"}
        assert await on_a.silent()


async def test_invalid_backplane_messages_are_dropped(
    redis_server: Any, opened: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Pickle, non-JSON, wrong kinds or field types are logged and dropped; the node keeps working."""
    import pickle

    async with cluster(redis_server.url, size=1) as [(_, url_a)]:
        client = await opened(url_a)
        await client.join("/test")
        raw = redis.Redis.from_url(redis_server.url)
        bad = [
            pickle.dumps({"kind": "emit"}),
            b"not json",
            b'{"v":1,"kind":"emit","node":"x","namespace":"/test","event":"e","data":NaN,"to":null,"skip":null}',
            make_message("exec", "x", code="print(1)").encode(),
            make_message("emit", "x", namespace="/test", event="", data=1, to=None, skip=None).encode(),
            make_message("emit", "x", namespace="/test", event="e", data=1, to=[1], skip=None).encode(),
            make_message("disconnect", "x", namespace=None, sid=5).encode(),
        ]
        with caplog.at_level(logging.WARNING, logger="plainsocket.backplane"):
            for message in bad:
                raw.publish("plainsocket", message)
            raw.publish(
                "plainsocket", make_message("emit", "x", namespace="/test", event="ok", data=1, to=None, skip=None)
            )
            assert (await client.expect("ok"))["data"] == 1
        raw.close()
        dropped = [r for r in caplog.records if "dropped an invalid backplane message" in r.getMessage()]
        assert len(dropped) == len(bad)


def read_health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_server_py_nodes_broadcast_across_processes(redis_server: Any, server_process: Any) -> None:
    """Two `python server.py --redis` processes: the demo broadcast and room events cross them."""
    node_a = server_process("--redis", redis_server.url, "--heartbeat-interval", "0.25")
    node_b = server_process("--redis", redis_server.url, "--heartbeat-interval", "0.25")
    a, b = await Wire.open(node_a.url), await Wire.open(node_b.url)
    try:
        for client in (a, b):
            await client.join("/test")
            await client.expect("my response")
        await until(lambda: read_health(node_a.port)[1]["redis"]["nodes"] == 2)
        await a.send("my broadcast event", {"data": "across"}, "/test")
        assert (await b.expect("my response"))["data"] == {"data": "across"}
        assert (await a.expect("my response"))["data"] == {"data": "across"}
        await b.send("join", {"room": "r"}, "/test")
        await b.expect("my response")
        await a.send("my room event", {"room": "r", "data": "to r"}, "/test")
        assert (await b.expect("my response"))["data"] == {"data": "to r"}
        await a.send("close room", {"room": "r"}, "/test")
        assert (await b.expect("my response"))["data"] == {"data": "Room r is closing."}
        status, health = await asyncio.to_thread(read_health, node_b.port)
        assert status == 200 and health["redis"]["connected"] is True
    finally:
        await a.close()
        await b.close()
        for node in (node_a, node_b):
            code, _, err = await asyncio.to_thread(node.stop)
            assert code == 0 and "Traceback" not in err


async def test_redis_unavailable_at_start_exits_with_clear_error(server_process: Any) -> None:
    """No Redis at start: a one-line error and exit code 1, quickly, no traceback."""
    from redis_server import free_port

    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "server.py", "--port", "0", "--redis", f"redis://127.0.0.1:{free_port()}/0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 1
    assert "can not reach Redis" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_killed_node_leaves_cluster_view(redis_server: Any, opened: Any, server_process: Any) -> None:
    """A node killed with SIGKILL: its clients leave the totals within the heartbeat bound."""
    node_b = server_process("--redis", redis_server.url, "--heartbeat-interval", "0.25")
    a = make_node(redis_server.url)
    async with running(a) as url_a:
        on_a = await opened(url_a)
        on_b = [await opened(node_b.url) for _ in range(3)]
        await until(lambda: len(a.backplane.alive_nodes()) == 2)
        assert await a.cluster_count() == 4
        node_b.proc.send_signal(signal.SIGKILL)
        node_b.proc.wait()
        # Bound: the node's TTL (3 heartbeats = 0.75 s) plus one of our heartbeats.
        loop = asyncio.get_running_loop()
        started = loop.time()
        await until(lambda: len(a.backplane.alive_nodes()) == 1, timeout=3)
        assert loop.time() - started < 1.5
        assert await a.cluster_count() == 1
        a.emit("still here", namespace="/")
        await on_a.expect("still here")
        del on_b


async def test_redis_restart_mid_traffic_loss_is_accounted(redis_server: Any, opened: Any) -> None:
    """Redis dies and comes back during a stream of emits.

    Local clients get everything; the remote client gets an in-order, duplicate-free subset,
    and every message it missed is counted as lost on the sending node. Health turns
    unhealthy during the outage and recovers.
    """
    total = 400
    async with cluster(redis_server.url) as [(a, url_a), (b, url_b)]:
        local, remote = await opened(url_a), await opened(url_b)
        for client in (local, remote):
            await client.join("/test")
        received: list[int] = []

        async def collect() -> None:
            while True:
                frame = await remote.recv(timeout=30)
                if frame["event"] == "n":
                    received.append(frame["data"])
                elif frame["event"] == "done":
                    return

        collector = asyncio.ensure_future(collect())
        saw_unhealthy = False
        for i in range(total):
            a.emit("n", i, namespace="/test")
            if i == total // 4:
                redis_server.stop()
            if i == total // 2:
                await until(lambda: a.health()["status"] == "unhealthy")
                saw_unhealthy = True
                redis_server.start()
            await asyncio.sleep(0.005)  # pace the stream so the outage falls in the middle of it
        await until(lambda: a.health()["status"] == "ok" and b.health()["status"] == "ok", timeout=10)
        await until(lambda: len(a.backplane.alive_nodes()) == 2 and len(b.backplane.alive_nodes()) == 2)
        for i in range(total, total + 10):  # after the outage: every one arrives
            a.emit("n", i, namespace="/test")
        a.emit("done", namespace="/test")
        await asyncio.wait_for(collector, 15)

        assert saw_unhealthy
        assert [(await local.recv())["data"] for _ in range(total + 10)] == list(range(total + 10))
        assert received == sorted(set(received)), "order kept, no duplicates"
        assert received[-10:] == list(range(total, total + 10)), "delivery resumed after the outage"
        missed = total + 10 - len(received)
        assert missed > 0 and a.backplane.lost > 0
        assert b.backplane.missed == missed, "every message the remote node missed is counted there"


async def test_workers_share_one_port(redis_server: Any, server_process: Any) -> None:
    """--workers 2 runs two nodes on one port; a broadcast reaches clients of both."""
    node = server_process("--redis", redis_server.url, "--workers", "2", "--heartbeat-interval", "0.25")
    assert node.proc.stderr is not None
    clients = [await Wire.open(node.url) for _ in range(12)]
    try:
        for client in clients:
            await client.join("/test")
            await client.expect("my response")
        await until(lambda: read_health(node.port)[1]["redis"]["nodes"] == 2)
        await clients[0].send("my broadcast event", {"data": "all"}, "/test")
        for client in clients:
            assert (await client.expect("my response"))["data"] == {"data": "all"}
    finally:
        for client in clients:
            client.abort()
        code, _, err = await asyncio.to_thread(node.stop)
    assert code == 0
    assert err.count("server stopped") == 2, "both workers shut down cleanly"
