"""Soak run: ``python server.py`` under churn, bounded in clients and time.

Most clients ("steady") connect, join ``/test`` and the room ``soak`` and stay for the whole run,
counting what they receive by sequence number. One of them sends ``my broadcast event`` and
``my room event`` at a fixed rate. The other clients ("churners") loop until the end: connect,
sometimes join ``/test`` and a room, sometimes send ``my event``, then leave, half of the time
with a closing handshake and half of the time by aborting the TCP connection.

At the end every steady client must have received every broadcast and room event, in order,
exactly once. The run prints the server's RSS at the start and the end, the deliveries and the
losses, and exits with 1 when a steady client lost a message or was dropped, or when the server
failed or did not exit cleanly on SIGTERM.

Usage::

    python scripts/soak.py               # 1,000 clients for 60 s
    python scripts/soak.py --quick       # 100 clients for 5 s (CI)
    python scripts/soak.py --clients 500 --duration 30 --rate 20 -- --recovery-window 0

Arguments after ``--`` go to ``server.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
ROOM = "soak"
CONNECT_CONCURRENCY = 50  # handshakes in flight at once: 2 cores serve both sides
ADDRESSES = 64  # spread clients over 127.0.0.2-65, as many users behind as many addresses


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000, help="clients in all (default 1000)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    parser.add_argument("--quick", action="store_true", help="100 clients for 5 s")
    parser.add_argument("--churn", type=float, default=0.2, help="share of clients that churn (default 0.2)")
    parser.add_argument("--rate", type=float, default=10.0, help="events per second from the sender (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the churners' choices")
    parser.add_argument("server_args", nargs="*", help="arguments for server.py (after --)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.duration = 100, 5.0
    if args.clients < 2:
        parser.error("--clients must be at least 2")
    return args


# -- The server ---------------------------------------------------------------------------------


class Server:
    """``python server.py`` with its output read as it comes (a full pipe would block it)."""

    def __init__(self, extra: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "server.py", "--host", "127.0.0.1", "--port", "0", *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.disconnects: Counter[str] = Counter()  # demo's "Client disconnected <sid> <reason>", by reason
        self.disconnected: Counter[str] = Counter()  # the same, by sid
        self.errors: list[str] = []  # ERROR lines and tracebacks
        self.port = 0
        ready = threading.Event()

        def read_err() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                if " ERROR " in line or line.startswith("Traceback"):
                    self.errors.append(line.rstrip())
                found = re.search(r"listening on https?://[\d.]+:(\d+)", line)
                if found:
                    self.port = int(found.group(1))
                    ready.set()
            ready.set()

        def read_out() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                found = re.match(r"Client disconnected (\S+) (.+)", line)
                if found:
                    self.disconnected[found.group(1)] += 1
                    self.disconnects[found.group(2)] += 1

        self.readers = [threading.Thread(target=read, daemon=True) for read in (read_err, read_out)]
        for reader in self.readers:
            reader.start()
        if not ready.wait(30) or not self.port:
            self.proc.kill()
            raise SystemExit("server.py did not start")
        self.url = f"ws://127.0.0.1:{self.port}"
        self.process = psutil.Process(self.proc.pid)

    def rss(self) -> float:
        """Resident memory in MiB."""
        return self.process.memory_info().rss / 2**20

    def recovery_report(self) -> dict[str, Any] | None:
        """What ``/healthz`` says of the sessions kept for recovery (None when recovery is off)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as reply:
            return json.load(reply).get("recovery")

    def stop(self, timeout: float = 15) -> int:
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for reader in self.readers:
            reader.join(5)
        return code


# -- Clients ----------------------------------------------------------------------------------


@dataclass
class Steady:
    """A client that stays: what it received, by kind ('b' broadcast, 'r' room)."""

    ws: ClientConnection
    received: dict[str, list[int]] = field(default_factory=lambda: {"b": [], "r": []})
    ended = False  # saw the end marker
    dropped: str | None = None  # why the connection closed, if it did before the end
    done: asyncio.Event = field(default_factory=asyncio.Event)  # ended or dropped


@dataclass
class Stats:
    sent: Counter[str] = field(default_factory=Counter)
    churn: Counter[str] = field(default_factory=Counter)
    joined: set[str] = field(default_factory=set)  # sids that joined /test


def address(n: int) -> tuple[str, int]:
    return (f"127.0.0.{2 + n % ADDRESSES}", 0)


async def open_client(url: str, n: int) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(url, local_addr=address(n), open_timeout=30, max_queue=None)
    hello = json.loads(await asyncio.wait_for(ws.recv(), 30))
    return ws, hello


async def expect(ws: ClientConnection, event: str, namespace: str = "/test") -> dict[str, Any]:
    """Read frames until ``event`` on ``namespace`` (broadcasts may come first)."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame["event"] == event and frame["namespace"] == namespace:
            return frame


async def join_test(ws: ClientConnection, room: str | None, stats: Stats) -> None:
    await ws.send(json.dumps({"event": "connect", "namespace": "/test"}))
    stats.joined.add((await expect(ws, "connect"))["data"]["sid"])
    if room is not None:
        await ws.send(json.dumps({"event": "join", "namespace": "/test", "data": {"room": room}}))
        while "In rooms" not in str((await expect(ws, "my response"))["data"]):
            pass


async def start_steady(url: str, n: int, limit: asyncio.Semaphore, stats: Stats) -> Steady:
    async with limit:
        ws, _ = await open_client(url, n)
        await join_test(ws, ROOM, stats)
        return Steady(ws)


async def read_steady(client: Steady) -> None:
    try:
        async for message in client.ws:
            frame = json.loads(message)
            data = frame.get("data")
            inner = data.get("data") if isinstance(data, dict) else None
            if frame["event"] != "my response" or not isinstance(inner, dict) or "soak" not in inner:
                continue
            if inner["soak"] == "end":
                client.ended = True
                client.done.set()
            else:
                client.received[inner["soak"]].append(inner["n"])
    except ConnectionClosed:
        pass
    if not client.ended:
        client.dropped = f"closed {client.ws.close_code} {client.ws.close_reason!r}"
    client.done.set()


async def send_events(sender: Steady, stats: Stats, deadline: float, rate: float) -> None:
    """Alternate broadcasts and room events at ``rate`` per second until ``deadline``."""
    ws = sender.ws
    interval = 1 / rate
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        if stats.sent["b"] <= stats.sent["r"]:
            event = {"event": "my broadcast event", "data": {"data": {"soak": "b", "n": stats.sent["b"]}}}
            stats.sent["b"] += 1
        else:
            payload = {"soak": "r", "n": stats.sent["r"]}
            event = {"event": "my room event", "data": {"room": ROOM, "data": payload}}
            stats.sent["r"] += 1
        await ws.send(json.dumps({**event, "namespace": "/test"}))
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def churn(url: str, n: int, stats: Stats, deadline: float, rng: random.Random, limit: asyncio.Semaphore) -> None:
    """Connect and drop in a loop until ``deadline``, one of many ways."""
    while time.monotonic() < deadline:
        ws = None
        try:
            async with limit:
                ws, hello = await open_client(url, n)
            if hello["event"] != "connect":
                stats.churn["refused"] += 1
                ws.transport.abort()
                continue
            if rng.random() < 0.7:
                await join_test(ws, f"r{rng.randrange(10)}" if rng.random() < 0.5 else None, stats)
                stats.churn["joined"] += 1
                if rng.random() < 0.5:
                    await ws.send(json.dumps({"event": "my event", "namespace": "/test", "data": {"data": n}}))
                    await expect(ws, "my response")
            await asyncio.sleep(rng.uniform(0, 0.3))
            if rng.random() < 0.5:
                await ws.close()
                stats.churn["closed"] += 1
            else:
                ws.transport.abort()
                stats.churn["aborted"] += 1
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == 4002:
                stats.churn["refused: too many connections"] += 1
            else:
                stats.churn[f"closed early: {exc.rcvd.code if exc.rcvd else 'no close frame'}"] += 1
        except (OSError, TimeoutError) as exc:
            stats.churn[f"error {type(exc).__name__}"] += 1
            if ws is not None:
                ws.transport.abort()
        stats.churn["cycles"] += 1


# -- The run ------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace, server: Server, stats: Stats) -> int:
    rng = random.Random(args.seed)
    churners = max(0, min(args.clients - 1, round(args.clients * args.churn)))
    steady_count = args.clients - churners
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    rss_start = server.rss()
    print(f"server pid {server.proc.pid} on port {server.port}: RSS {rss_start:.1f} MiB")

    started = time.monotonic()
    steady = await asyncio.gather(*(start_steady(server.url, n, limit, stats) for n in range(steady_count)))
    print(f"{steady_count} steady clients connected in {time.monotonic() - started:.1f} s: RSS {server.rss():.1f} MiB")
    readers = [asyncio.ensure_future(read_steady(client)) for client in steady]

    deadline = time.monotonic() + args.duration
    churning = [
        asyncio.ensure_future(churn(server.url, steady_count + n, stats, deadline, random.Random(rng.random()), limit))
        for n in range(churners)
    ]
    sender = steady[0]
    await send_events(sender, stats, deadline, args.rate)
    await asyncio.gather(*churning)
    # Everything sent before the end marker reaches a client before the marker does.
    end = {"event": "my broadcast event", "namespace": "/test", "data": {"data": {"soak": "end"}}}
    await sender.ws.send(json.dumps(end))
    await asyncio.wait([asyncio.ensure_future(client.done.wait()) for client in steady], timeout=30)
    rss_end = server.rss()
    kept = await asyncio.to_thread(server.recovery_report)

    expected = {"b": list(range(stats.sent["b"])), "r": list(range(stats.sent["r"]))}
    lost = disordered = deliveries = 0
    for client in steady:
        for kind, numbers in client.received.items():
            deliveries += len(numbers)
            if client.dropped:
                continue
            lost += len(set(expected[kind]) - set(numbers))
            if numbers != sorted(set(numbers)):
                disordered += 1
    dropped = [client.dropped for client in steady if client.dropped]
    unfinished = sum(1 for client in steady if not client.ended and not client.dropped)

    for client in steady:
        await client.ws.close()
    await asyncio.gather(*readers, return_exceptions=True)

    print(f"ran {time.monotonic() - started:.1f} s; sent {stats.sent['b']} broadcasts, {stats.sent['r']} room events")
    print(f"churn: {dict(sorted(stats.churn.items()))}")
    print(f"deliveries to steady clients: {deliveries}")
    print(f"lost by steady clients that stayed: {lost}; out of order or duplicated: {disordered}")
    print(f"steady clients dropped: {len(dropped)} {Counter(dropped).most_common(3) if dropped else ''}")
    print(f"steady clients without the end marker after 30 s: {unfinished}")
    print(f"server RSS: start {rss_start:.1f} MiB, end {rss_end:.1f} MiB")
    if kept is not None:
        print(
            f"kept for recovery at the end: {kept['sessions']} sessions, estimated {kept['bytes'] / 2**20:.1f} MiB"
            f" of the {kept['max_bytes'] / 2**20:.0f} MiB budget; {kept['evicted']} ended early by it"
        )
    return 1 if lost or disordered or dropped or unfinished else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = Server(args.server_args)
    stats = Stats()
    try:
        status = asyncio.run(soak(args, server, stats))
    finally:
        code = server.stop()
    print(f"server exit code {code} after SIGTERM; disconnect handler reasons: {dict(server.disconnects)}")
    # Every session of /test, steady or churned, clean or aborted, ends once: by the end of the run
    # or at shutdown.
    missing = stats.joined - set(server.disconnected)
    twice = [sid for sid, count in server.disconnected.items() if count > 1]
    print(f"/test sessions: {len(stats.joined)}; disconnect handler never ran: {len(missing)}; ran twice: {len(twice)}")
    if server.errors:
        print(f"server errors ({len(server.errors)}):", *server.errors[:10], sep="\n  ")
    if code != 0 or server.errors or missing or twice:
        status = 1
    print("OK" if status == 0 else "FAILED")
    return status


if __name__ == "__main__":
    sys.exit(main())
