"""Presence across a cluster on a real Redis: server.py processes and in-process nodes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import redis
from conftest import running, until
from test_presence import Peer, _resume, diff_with, make_app
from wire import Wire

from plainsocket import SocketServer

PRESENCE_EVENTS = ("presence_state", "presence_diff", "presence_count")


async def demo_peer(url: str, name: str) -> Peer:
    """A client of the demo's /test that asked for presence frames."""
    peer = Peer(await Wire.open(url))
    await peer.wire.join("/test", {"name": name})
    await peer.wire.send("presence_mode", {"mode": "full"}, "/test")
    return peer


async def demo_enter(peer: Peer, room: str) -> dict[str, Any]:
    await peer.wire.send("join", {"room": room}, "/test")
    return await peer.until(lambda f: f["event"] == "presence_state")


async def demo_list(peer: Peer, room: str) -> dict[str, Any]:
    peer.ids += 1
    ident = peer.ids
    await peer.wire.send("presence_list", {"room": room, "cursor": None}, "/test", ident)
    frame = await peer.until(lambda f: f.get("id") == ident)
    return frame["data"]["members"]


def left_keys(peer: Peer) -> list[str]:
    return [key for diff in peer.presence() for key in diff["leaves"]]


async def test_a_killed_node_s_members_leave_within_10_s(redis_server: Any, server_process: Any) -> None:
    """kill -9 one of three nodes: each observer gets exactly one leave per key it held alone, within 10 s."""
    nodes = [server_process("--redis", redis_server.url) for _ in range(3)]
    peers: list[Peer] = []
    try:
        observers = []
        for index, node in enumerate(nodes[:2]):
            observer = await demo_peer(node.url, f"observer{index}")
            await demo_enter(observer, "lobby")
            observers.append(observer)
        doomed = [f"c{i}" for i in range(10)]
        for name in doomed:
            peers.append(await demo_peer(nodes[2].url, name))
            await demo_enter(peers[-1], "lobby")
        # "shared" has a connection on the doomed node and one on a survivor: it stays.
        for url in (nodes[2].url, nodes[0].url):
            peers.append(await demo_peer(url, "shared"))
            await demo_enter(peers[-1], "lobby")
        for observer in observers:
            while len(await demo_list(observer, "lobby")) != 13:  # noqa: ASYNC110 (a request, not a flag)
                await asyncio.sleep(0.05)
            observer.frames.clear()
        killed = time.monotonic()
        nodes[2].proc.kill()
        waits = []
        for observer in observers:
            while sorted(left_keys(observer)) != doomed:
                await observer.next(timeout=12)
            waits.append(time.monotonic() - killed)
        assert max(waits) < 10, waits
        print(f"kill -9: leaves delivered after {max(waits):.1f} s")
        lists = [await demo_list(observer, "lobby") for observer in observers]
        assert lists[0] == lists[1] and sorted(lists[0]) == ["observer0", "observer1", "shared"]
        assert lists[0]["shared"]["conns"] == 1
        await asyncio.sleep(0.5)
        for observer in observers:
            assert sorted(left_keys(observer)) == doomed, "exactly one leave per key, no more"
        left = redis.Redis.from_url(redis_server.url).keys("plainsocket:presence:node:*")
        assert len(left) == 2, left  # the survivors' owner sets only
    finally:
        for peer in peers + observers:
            peer.wire.abort()


async def test_no_orphans_after_a_full_restart(redis_server: Any, server_process: Any) -> None:
    """Every node killed, one started again: what the dead cluster left in Redis is swept, with no orphan."""
    nodes = [server_process("--redis", redis_server.url) for _ in range(2)]
    peers = [await demo_peer(node.url, f"p{i}{n}") for n, node in enumerate(nodes) for i in range(5)]
    for peer in peers:
        await demo_enter(peer, "lobby")
    await until(lambda: redis.Redis.from_url(redis_server.url).hlen('plainsocket:presence:r:["/test","lobby"]:k') == 10)
    for node in nodes:
        node.proc.kill()
    for peer in peers:
        peer.wire.abort()
    started = time.monotonic()
    fresh = server_process("--redis", redis_server.url)
    newcomer = await demo_peer(fresh.url, "newcomer")
    await demo_enter(newcomer, "lobby")
    while sorted(await demo_list(newcomer, "lobby")) != ["newcomer"]:  # noqa: ASYNC110 (a request, not a flag)
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started
    assert elapsed < 10
    print(f"full restart: orphans gone {elapsed:.1f} s after the new node started")
    assert sorted(newcomer.left()) == sorted(f"p{i}{n}" for n in range(2) for i in range(5)), "one leave each"
    newcomer.wire.abort()


@asynccontextmanager
async def nodes(redis_url: str, size: int, **options: Any) -> AsyncIterator[list[tuple[SocketServer, str]]]:
    async with AsyncExitStack() as stack:
        started = []
        for _ in range(size):
            node = make_app(
                message_queue=redis_url, heartbeat_interval=0.25, rate_limit=10_000, rate_burst=10_000, **options
            )
            started.append((node, await stack.enter_async_context(running(node))))
        await until(lambda: all(len(n.backplane.alive_nodes()) == size for n, _ in started))
        yield started


async def test_one_key_three_connections_on_two_nodes(redis_server: Any, opened: Any) -> None:
    """alice on two nodes, three tabs: one join, connection counts, one leave when the last tab goes."""
    async with nodes(redis_server.url, 2) as [(_, url_a), (_, url_b)]:
        watchers = [await Peer.open(url, opened, f"olga{n}") for n, url in enumerate((url_a, url_b))]
        for watcher in watchers:
            await watcher.enter("room:1")
        for watcher in watchers:
            await watcher.find(lambda f: f["event"].startswith("presence_") and f["data"]["count"]["users"] == 2)
        tabs = []
        for url in (url_a, url_b, url_a):
            tabs.append(await Peer.open(url, opened, "alice"))
            await tabs[-1].enter("room:1")

        def conns_of_alice(conns: int) -> Any:
            def test(frame: dict[str, Any]) -> bool:
                if frame["event"] != "presence_diff":
                    return False
                entry = {**frame["data"]["joins"], **frame["data"]["updates"]}.get("alice", {})
                return entry.get("conns") == conns

            return test

        for watcher in watchers:
            await watcher.until(conns_of_alice(3))
        for tab in tabs[:2]:
            await tab.wire.close()
        for watcher in watchers:
            await watcher.until(conns_of_alice(1))
        await tabs[2].wire.close()
        for watcher in watchers:
            await watcher.until(diff_with("leaves", "alice"))
            assert watcher.left() == ["alice"], "one leave, with the last tab"
            joins = [diff for diff in watcher.presence() if "alice" in diff["joins"]]
            assert len(joins) == 1 and joins[0]["rev"] > joins[0]["from"], "one join"
            assert joins[0]["leaves"] == [], "no leave before the last tab"


async def test_blips_resumed_on_the_same_and_another_node_make_no_event(redis_server: Any, opened: Any) -> None:
    """A 3 s drop resumed on its node, then one resumed on another node: observers get no presence frame."""
    async with nodes(redis_server.url, 2, recovery_window=10) as [(_, url_a), (b, url_b)]:
        observers = [await Peer.open(url, opened, f"olga{n}") for n, url in enumerate((url_a, url_b))]
        for observer in observers:
            await observer.enter("room:1")
        x = await Peer.open(url_a, opened, "xavier")
        await x.enter("room:1")
        for observer in observers:
            await observer.until(lambda f: f["event"] == "presence_diff" and "xavier" in f["data"]["joins"])
            observer.frames.clear()
        for url in (url_a, url_b):
            x.wire.abort()
            await asyncio.sleep(3)
            x = await _resume(x, url, opened)
            await x.until(lambda f: f["event"] == "presence_state")
        await x.wire.send("say", "room:1", "/chat")
        for observer in observers:
            await observer.until(lambda f: f["event"] == "said" and not f["data"].get("last"))
            assert await observer.wire.silent(0.5)
            assert [f for f in observer.frames if f["event"] in PRESENCE_EVENTS] == []
        assert await b.presence.count("room:1", namespace="/chat") == {"users": 3, "connections": 3}
        owned = redis.Redis.from_url(redis_server.url).smembers(f"plainsocket:presence:node:{b.backplane.node}")
        assert any(member.endswith(x.wire.sid.encode()) for member in owned), "node B owns the session now"


async def test_join_always_before_the_member_s_message_across_nodes(redis_server: Any, opened: Any) -> None:
    """1,000 times join-then-say on node A: observers on A and B see the join first and the leave after."""
    async with nodes(redis_server.url, 2) as [(_, url_a), (_, url_b)]:
        observers = [await Peer.open(url, opened, f"olga{n}") for n, url in enumerate((url_a, url_b))]
        for observer in observers:
            await observer.enter("room:1")
        x = await Peer.open(url_a, opened, "xavier")
        await x.call("join", "room:elsewhere")  # a view on node A before the first join
        for _ in range(1000):
            await x.wire.send("join and say", "room:1", "/chat")
            await x.wire.send("leave", "room:1", "/chat")
        for observer in observers:
            present = False
            said = 0
            while said < 1000:
                frame = await observer.next()
                if frame["event"] == "presence_diff":
                    if "xavier" in frame["data"]["joins"]:
                        present = True
                    if "xavier" in frame["data"]["leaves"]:
                        present = False
                elif frame["event"] == "said":
                    assert present, f"message {said} before xavier's join"
                    said += 1
            await observer.until(diff_with("leaves", "xavier"))
        for peer in [*observers, x]:
            peer.wire.abort()  # now, while the loop runs


async def test_entries_lost_by_redis_are_put_back(redis_server: Any, opened: Any) -> None:
    """Redis forgets everything (FLUSHALL): each node puts its members back, and observers are told nothing."""
    async with nodes(redis_server.url, 2) as [(a, url_a), (_, url_b)]:
        peers = [await Peer.open(url, opened, f"p{n}{i}") for n, url in enumerate((url_a, url_b)) for i in range(3)]
        for peer in peers:
            await peer.enter("room:1")
        store = redis.Redis.from_url(redis_server.url)
        key = 'plainsocket:presence:r:["/chat","room:1"]:k'
        await until(lambda: store.hlen(key) == 6)
        for peer in peers:
            await peer.find(lambda f: f["event"].startswith("presence_") and f["data"]["count"]["users"] == 6)
            peer.frames.clear()
        store.flushall()
        await until(lambda: store.hlen(key) == 6, timeout=8)
        assert await a.presence.count("room:1", namespace="/chat") == {"users": 6, "connections": 6}
        for peer in peers:
            assert await peer.wire.silent(0.3)
        for peer in peers:
            peer.wire.abort()


async def test_a_10000_member_room_is_capped_and_paged_once_per_key(redis_server: Any) -> None:
    """10,000 members held by another live node: the state has 1,000 and the count; paging lists each once."""
    from plainsocket.client import Client
    from plainsocket.presence_redis import ADD, EMPTY_ROOM_TTL, room_id

    async with nodes(redis_server.url, 1) as [(node, url)], Client(url) as client:
        store = redis.Redis.from_url(redis_server.url)
        store.set("plainsocket:node:elsewhere", "{}", px=60_000)  # a live node, as far as the sweep can tell
        pipe = store.pipeline(transaction=False)
        rid = room_id("/chat", "room:big")
        for i in range(10_000):
            args = ("elsewhere", rid, "/chat", "room:big", f"sid{i}", f"k{i:05}", "{}", "0")
            pipe.eval(ADD, 0, "plainsocket:presence", "plainsocket", str(EMPTY_ROOM_TTL), *args)
        await asyncio.to_thread(pipe.execute)  # in a thread: the node's loop keeps running
        chat = await client.connect("/chat", auth={"name": "reader"})
        big = chat.presence("room:big")
        joined: list[str] = []
        big.on("join", lambda key, entry: joined.append(key))
        await chat.call("join", "room:big")
        await big.synced(timeout=15)  # a loaded machine may time the first add out: it is retried
        assert len(big.members) == 1000 and big.count == {"users": 10_001, "connections": 10_001}
        await big.load_all()
        assert sorted(joined) == sorted([f"k{i:05}" for i in range(10_000)] + ["reader"])
        members, cursor = await node.presence.list("room:big", namespace="/chat", limit=1000)
        assert len(members) == 1000 and cursor is not None


async def test_a_burst_of_1000_joins_across_nodes_reaches_100_observers_in_few_frames(
    redis_server: Any, opened: Any
) -> None:
    """1,000 joins paced over 2 s on two nodes, 50 observers on each: at most 20 diffs each, exactly the 1,000 keys.

    Both nodes and every client share this process (and 2 cores), hence fewer observers than the
    single-process test's 200, and joiners that receive nothing: starved of CPU, a node's
    publishes to Redis time out.
    """
    async with nodes(redis_server.url, 2) as [(_, url_a), (_, url_b)]:
        urls = (url_a, url_b)
        observers = [await Peer.open(urls[i % 2], opened, f"o{i:03}") for i in range(100)]
        for observer in observers:
            await observer.enter("room:big")

        def everyone(frame: dict[str, Any]) -> bool:
            return frame["event"].startswith("presence_") and frame["data"]["count"]["users"] == 100

        for observer in observers:
            await observer.find(everyone)
            observer.frames.clear()
        joiners: list[Peer] = []
        for chunk in range(10):
            group = (Peer.open(urls[i % 2], opened, f"j{chunk * 100 + i:04}") for i in range(100))
            joiners += await asyncio.gather(*group)
        for peer in joiners:  # present without being told: the load here is the observers'
            await peer.wire.send("presence_mode", {"mode": "none"}, "/chat")
        started = asyncio.get_running_loop().time()
        for batch in range(20):
            for peer in joiners[batch * 50 : batch * 50 + 50]:
                await peer.wire.send("join", "room:big", "/chat", 1)
            await asyncio.sleep(0.1)
        expected = {f"j{i:04}" for i in range(1000)}
        for observer in observers:
            while set(observer.joined()) != expected:
                await observer.next(timeout=10)
        elapsed = asyncio.get_running_loop().time() - started
        counts = [len(observer.presence()) for observer in observers]
        print(f"cluster burst: all 1000 joins seen after {elapsed:.1f} s; diffs per observer max {max(counts)}")
        assert max(counts) <= 20
        for observer in observers:
            assert sorted(observer.joined()) == sorted(expected), "each key joined exactly once"
        for peer in observers + joiners:
            peer.wire.abort()
