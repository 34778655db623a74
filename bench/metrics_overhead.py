"""What Prometheus metrics cost: echo and fan-out with ``--metrics`` against the same server without.

Usage (from the repository root)::

    python bench/metrics_overhead.py --loadgen       # throughput: 8 pairs per scenario (~2 minutes)
    python bench/metrics_overhead.py --loadgen --control  # the same, metrics off in both: the noise floor
    python bench/metrics_overhead.py --instructions  # instructions per echo and per delivery (valgrind)
    python bench/metrics_overhead.py                 # the server's own work, timed in one process
    python bench/metrics_overhead.py --quick ...     # fewer trials or pairs (a smoke run)

``--loadgen``: two ``python server.py`` run side by side with the benchmark's flags
(bench/run.py), one with ``--metrics`` (scraped every second during its load, harsher than
Prometheus' default 15 s), one without. bench/run.py's echo and fan-out scenarios are
measured on them in turns, in pairs (alternating which goes first), with its load generator.
The cost is the median over the pairs of each pair's throughput ratio: paired measurements
hold on a shared machine, where separate runs drift by tens of percent. The target is under
3 %.

``--loadgen --control``: the same with metrics off in both servers. Whatever "cost" it
shows is the noise floor of the pairs: on a 2-core machine shared with the load generator,
two identical servers have differed by 8 % in the median of 8 pairs.

``--instructions``: ``server.py`` runs under valgrind's callgrind, which counts the
instructions the process executes (the kernel's share of a write is not counted), with and
without ``--metrics``, for a fixed number of echoes and of broadcasts (real clients over
loopback), and once more with the same clients connected and idle for as long as that load
took: the difference is the work per echo and per delivery. What runs per second instead
(keepalive pings, the loop-lag probe) cancels out; under valgrind a second holds some 50
times fewer echoes than natively, so it would otherwise be charged 50 times over. A count does
not depend on what else the machine runs, so it shows a cost of 1 % that throughput on a
shared machine can not. One thing it overstates: under valgrind an echo's handler time is
mostly 1 to 2.5 ms instead of some microseconds, past the handler histogram's first bucket (0.5 ms),
so the bucket search runs, which natively the first bucket's test spares. The same mode
counts the server's handler path alone, called in a loop, both ways, and prints the echo's
cost without that difference (about 850 instructions). Needs ``valgrind`` (Debian package).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

OFF, ON = "metrics off", "metrics on"
TARGET = 3.0  # percent of throughput


class Scraper:
    """Scrape ``/metrics`` every ``interval`` seconds while the load runs (what Prometheus does)."""

    def __init__(self, url: str, interval: float = 1.0) -> None:
        self.url = url
        self.interval = interval
        self.stop = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            with urllib.request.urlopen(self.url, timeout=5) as response:
                response.read()
            self.scrapes += 1

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


def measure(
    server: run.Server, loadgen: run.Loadgen, scenario: str, params: dict[str, float], scrape: bool = True
) -> dict[str, float]:
    """One measurement of ``scenario``; the metrics server is scraped every second meanwhile."""
    if server.name == ON and scrape:
        with Scraper(f"http://127.0.0.1:{server.port}/metrics") as scraper:
            result = loadgen.measure(server, scenario, params)
        if not scraper.scrapes:
            raise run.BenchError("no scrape answered during the load")
    else:
        result = loadgen.measure(server, scenario, params)
    if run.lost_something(result):
        raise run.BenchError(f"{server.name} {scenario} lost or refused something: {result}")
    cpu = result.get("server_cpu")
    return {"rate": result["rate"], "us": 1e6 * cpu / 100 / result["rate"] if cpu else float("nan")}


async def in_process(clients: int, trials: int) -> dict[str, tuple[float, float]]:
    """Time the server's own work per echo and per broadcast, with metrics on and off, in one process.

    One demo server and ``clients`` real WebSocket clients on loopback. The server's metrics
    are switched on and off between trials on the same server and connections, and each
    figure is the fastest of ``trials`` (the least disturbed by other work): what is compared
    is exactly the code the metrics add.
    """
    import json as json_module

    from websockets.asyncio.client import connect

    sys.path.insert(0, str(run.ROOT))
    from plainsocket.metrics import ServerMetrics
    from server import create_app

    socketio = create_app(rate_limit=1e9, rate_burst=10**9, max_connections_per_address=10**6)
    await socketio.start("127.0.0.1", 0)
    metrics = ServerMetrics(socketio._handlers, socketio.live_stats)
    sockets = []
    readers = []
    received = [0]  # frames the clients read, so that every trial starts with empty buffers

    async def read(ws: Any) -> None:
        async for _ in ws:
            received[0] += 1

    try:
        for _ in range(clients):
            ws = await connect(f"ws://127.0.0.1:{socketio.port}/")
            await ws.recv()
            await ws.send(json_module.dumps({"event": "connect", "namespace": "/test", "data": None}))
            sockets.append(ws)
            readers.append(asyncio.ensure_future(read(ws)))
        while socketio.registry.count("/test") < clients:  # noqa: ASYNC110 (no event announces a join)
            await asyncio.sleep(0.01)
        conn = next(iter(socketio._connections.values()))
        echo = json_module.dumps({"event": "my event", "namespace": "/test", "data": {"data": "x" * 80}})
        payload = {"data": "y" * 80}

        def one_echo() -> None:
            socketio._on_text(conn, echo)
            socketio._flush()

        def one_broadcast() -> None:
            for _ in range(8):
                socketio.emit("my response", payload, namespace="/test")
            socketio._flush()

        async def drained(expected: int) -> None:
            deadline = time.monotonic() + 30
            while received[0] < expected and time.monotonic() < deadline:  # noqa: ASYNC110 (frames counted above)
                await asyncio.sleep(0.001)

        await drained(2 * clients)  # greeting replies of the /test joins
        expected = received[0]
        best: dict[str, dict[bool, float]] = {"echo": {False: 1e9, True: 1e9}, "broadcast": {False: 1e9, True: 1e9}}
        for trial in range(trials):
            for on in (trial % 2 == 0, trial % 2 == 1):
                socketio._metrics = metrics if on else None
                work = (("echo", one_echo, 50, 50), ("broadcast", one_broadcast, 1, 8 * clients))
                for name, fn, repeat, frames in work:
                    started = time.perf_counter()
                    for _ in range(repeat):
                        fn()
                    best[name][on] = min(best[name][on], (time.perf_counter() - started) / repeat)
                    expected += frames
                    await drained(expected)  # the next trial starts from the same state
        return {name: (times[False], times[True]) for name, times in best.items()}
    finally:
        socketio._metrics = None
        for reader in readers:
            reader.cancel()
        for ws in sockets:
            await ws.close()
        await socketio.shutdown()


INSTRUCTION_CLIENTS = 10  # echo clients
FANOUT_CLIENTS = 100  # receivers of each broadcast


async def _joined(url: str) -> Any:
    """A client of /test past its greetings (the connect and the demo's welcome)."""
    import json as json_module

    from websockets.asyncio.client import connect

    ws = await connect(url, max_size=None)
    await ws.recv()
    await ws.send(json_module.dumps({"event": "connect", "namespace": "/test", "data": None}))
    for _ in range(2):
        await ws.recv()
    return ws


async def _echo_load(clients: list[Any], echoes: int, window: int = 16) -> None:
    """Each client sends ``echoes`` echoes, ``window`` in flight, and reads every reply."""
    import json as json_module

    message = json_module.dumps({"event": "my event", "namespace": "/test", "data": {"data": "x" * 80}})

    async def one(ws: Any) -> None:
        sent = received = 0
        while sent < min(window, echoes):
            await ws.send(message)
            sent += 1
        while received < echoes:
            await ws.recv()
            received += 1
            if sent < echoes:
                await ws.send(message)
                sent += 1

    await asyncio.gather(*(one(ws) for ws in clients))


async def _fanout_load(clients: list[Any], broadcasts: int) -> None:
    """The first client broadcasts ``broadcasts`` times, one at a time; every client reads each."""
    import json as json_module

    message = json_module.dumps({"event": "my broadcast event", "namespace": "/test", "data": {"data": "y" * 80}})
    for _ in range(broadcasts):
        await clients[0].send(message)
        for ws in clients:
            await ws.recv()


async def _drive(url: str, load: str, count: int, idle: float) -> float:
    """Join the load's clients, run ``count`` of it (or sit ``idle`` seconds); return how long that took."""
    clients = [await _joined(url) for _ in range(INSTRUCTION_CLIENTS if load == "echo" else FANOUT_CLIENTS)]
    started = time.monotonic()
    if count:
        await (_echo_load(clients, count) if load == "echo" else _fanout_load(clients, count))
    else:
        await asyncio.sleep(idle)
    elapsed = time.monotonic() - started
    for ws in clients:
        await ws.close()
    return elapsed


def _instructions(metrics: bool, load: str, count: int, idle: float = 0.0) -> tuple[int, float]:
    """Run server.py under callgrind through ``load``: (its instruction total, the load's seconds)."""
    import tempfile

    out = Path(tempfile.mkdtemp()) / "callgrind.out"
    argv = [
        *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable),
        *("server.py", "--port", "0", *run.SERVER_ARGS),
        *(["--metrics"] if metrics else []),
    ]
    run.START_TIMEOUT = run.STOP_TIMEOUT = 600.0  # valgrind runs the server some 50 times slower
    with run.running(run.Server(OFF, argv, None, out.with_suffix(".log"))) as server:
        elapsed = asyncio.run(_drive(server.url, load, count, idle))
    for line in out.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1]), elapsed
    raise run.BenchError(f"no callgrind summary in {out}")


HANDLER_CALLS = 20_000  # calls of the handler path per --handler-loop run
HANDLER_MODES = {
    "off": "metrics off",
    "fast": "metrics on, within the first bucket (an echo, natively)",
    "slow": "metrics on, past it (an echo under valgrind)",
}


def handler_loop(mode: str, calls: int) -> None:
    """Call the server's sync handler path ``calls`` times: what --instructions counts per mode.

    The frame's admission stamp is set just before each call (``fast``) or 1 ms before it
    (``slow``), which decides whether the handler histogram's bucket search runs.
    """
    sys.path.insert(0, str(run.ROOT))
    from plainsocket.metrics import ServerMetrics
    from plainsocket.protocol import Envelope
    from plainsocket.server import SocketServer, _make_handler

    socketio = SocketServer(metrics=mode != "off")
    socketio.on("my event", namespace="/test")(lambda data: data)
    handler = _make_handler(lambda data: data)
    if mode != "off":
        socketio._metrics = ServerMetrics(socketio._handlers, socketio.live_stats)

    class Admitted:  # what the handler path reads of a connection
        stamp = 0.0
        backlog = None

    conn: Any = Admitted()
    envelope = Envelope("my event", "/test", {"data": "x"})
    args = ({"data": "x"},)
    late = 0.001 if mode == "slow" else 0.0
    for _ in range(calls):
        conn.stamp = time.monotonic() - late
        socketio._run(conn, "/test", handler, args, envelope=envelope)


def _handler_instructions(mode: str, calls: int) -> int:
    import tempfile

    out = Path(tempfile.mkdtemp()) / "callgrind.out"
    argv = [
        *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable),
        *(__file__, "--handler-loop", mode, str(calls)),
    ]
    subprocess.run(argv, check=True, capture_output=True, cwd=run.ROOT)
    for line in out.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise run.BenchError(f"no callgrind summary in {out}")


def print_instructions(quick: bool) -> int:
    """Instructions per echo and per delivery with metrics on and off, from callgrind totals."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    if shutil.which("valgrind") is None:
        print("metrics_overhead.py: --instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    echoes, broadcasts = (30, 5) if quick else (1000, 100)
    # One string hash for every run: dict probes, and so the counts, vary with the hash seed.
    os.environ["PYTHONHASHSEED"] = "0"
    units = {"echo": INSTRUCTION_CLIENTS * echoes, "fanout": FANOUT_CLIENTS * broadcasts}
    loaded = [(on, load, n) for on in (False, True) for load, n in (("echo", echoes), ("fanout", broadcasts))]
    with ThreadPoolExecutor(max(1, len(os.sched_getaffinity(0)))) as pool:
        totals = dict(zip(loaded, pool.map(lambda job: _instructions(*job), loaded), strict=True))
        # Each baseline sits idle, its clients connected, as long as its load took: what runs
        # per second (keepalive pings, the loop-lag probe) cancels out, and is not counted per
        # echo. Under valgrind a second holds some 50 times fewer echoes than it does natively.
        idle = [(on, load, 0, totals[(on, load, n)][1]) for on, load, n in loaded]
        totals.update(zip([job[:3] for job in idle], pool.map(lambda job: _instructions(*job), idle), strict=True))
        jobs = [(mode, count) for mode in HANDLER_MODES for count in (0, HANDLER_CALLS)]
        calls = dict(zip(jobs, pool.map(lambda job: _handler_instructions(*job), jobs), strict=True))
    print(f"| instructions ({time.strftime('%Y-%m-%d')}), valgrind callgrind | metrics off | metrics on | cost |")
    print("|---|---:|---:|---:|")
    worst = 0.0
    per_echo = {}
    for load, label, n in (("echo", "per echo", echoes), ("fanout", "per delivery of a broadcast", broadcasts)):
        per = {on: (totals[(on, load, n)][0] - totals[(on, load, 0)][0]) / units[load] for on in (False, True)}
        cost = 100 * (per[True] / per[False] - 1)
        worst = max(worst, cost)
        per_echo = per_echo or per
        print(f"| {label} | {per[False]:,.0f} | {per[True]:,.0f} | {cost:+.1f} % |")
    handler = {mode: (calls[(mode, HANDLER_CALLS)] - calls[(mode, 0)]) / HANDLER_CALLS for mode in HANDLER_MODES}
    print("\n| one call of the handler path, valgrind callgrind | instructions |\n|---|---:|")
    for mode, label in HANDLER_MODES.items():
        print(f"| {label} | {handler[mode]:,.0f} |")
    search = handler["slow"] - handler["fast"]
    native = 100 * ((per_echo[True] - search) / per_echo[False] - 1)
    print(f"\nthe bucket search valgrind's slowness adds: {search:,.0f} per echo; without it, echo {native:+.1f} %")
    print(f"worst cost {worst:.1f} % of the instructions (target < {TARGET:g} % of throughput)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials, or 2 pairs of short loadgen measurements")
    parser.add_argument("--loadgen", action="store_true", help="throughput with bench/run.py's load generator")
    parser.add_argument("--pairs", type=int, default=None, help="--loadgen: measurement pairs per scenario (default 8)")
    parser.add_argument("--node", default="node")
    parser.add_argument("--instructions", action="store_true", help="count instructions under valgrind")
    parser.add_argument(
        "--control", action="store_true", help="--loadgen with metrics off in both servers: what the pairs resolve"
    )
    parser.add_argument("--handler-loop", nargs=2, metavar=("MODE", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.handler_loop:
        handler_loop(args.handler_loop[0], int(args.handler_loop[1]))
        return 0
    if args.instructions:
        return print_instructions(args.quick)
    if not args.loadgen:
        clients = 100 if args.quick else 1000
        found = asyncio.run(in_process(clients, 50 if args.quick else 400))
        day = time.strftime("%Y-%m-%d")
        print(f"| server's own work, fastest of the trials ({day}) | metrics off | metrics on | cost |")
        print("|---|---:|---:|---:|")
        worst = 0.0
        labels = {
            "echo": "one echo (decode, handler, reply, write)",
            "broadcast": f"8 broadcasts to {clients:,} (one write per client, as 8 in flight)",
        }
        for name, label in labels.items():
            off, on = found[name]
            cost = 100 * (on - off) / off
            worst = max(worst, cost)
            print(f"| {label} | {off * 1e6:.2f} µs | {on * 1e6:.2f} µs | {cost:+.1f} % |")
        print(f"\nworst cost {worst:.1f} % (target < {TARGET:g} %)")
        return 0
    profile = run.QUICK if args.quick else run.FULL
    pairs = args.pairs or (2 if args.quick else 8)
    length = {"warmup": 0.3, "duration": 1} if args.quick else {"warmup": 0.5, "duration": 2}
    scenarios = {"echo": {**profile.echo, **length}, "fanout": {**profile.fanout, **length}}
    server_cpus, load_cpus = run.cpu_plan()
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)
    base = [sys.executable, "server.py", "--port", "0", *run.SERVER_ARGS]
    loadgen = run.Loadgen(args.node, load_cpus, "wire")
    rows: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {name: [] for name in scenarios}
    try:
        # Both servers live for the whole run and are measured in turns, so each pair of
        # measurements sees the same machine: a paired comparison holds on a shared one.
        with contextlib.ExitStack() as stack:
            servers = {
                name: stack.enter_context(run.running(run.Server(name, argv, server_cpus, run.RAW / f"{name}.log")))
                for name, argv in ((OFF, base), (ON, base if args.control else [*base, "--metrics"]))
            }
            for server in servers.values():
                check = loadgen.run(server, "check", {})
                if not check.get("ok"):
                    raise run.BenchError(f"{server.name}: {check['problems']}")
                for mode, params in profile.warmup:
                    loadgen.run(server, mode, params)
            for scenario, params in scenarios.items():
                for n in range(pairs):
                    order = (OFF, ON) if n % 2 == 0 else (ON, OFF)
                    got = {name: measure(servers[name], loadgen, scenario, params, not args.control) for name in order}
                    rows[scenario].append((got[OFF], got[ON]))
                    print(f"{scenario} pair {n + 1}/{pairs}: off {got[OFF]} on {got[ON]}", file=sys.stderr, flush=True)
    except run.BenchError as err:
        print(f"metrics_overhead.py: {err}", file=sys.stderr)
        return 2
    second = "metrics off too (control)" if args.control else "metrics on"
    print(f"| median of {pairs} pairs ({time.strftime('%Y-%m-%d')}) | metrics off | {second} | cost |")
    print("|---|---:|---:|---:|")
    worst = 0.0
    for scenario, unit in (("echo", "responses/s"), ("fanout", "deliveries/s")):
        pairs_of = rows[scenario]
        off = statistics.median(a["rate"] for a, _ in pairs_of)
        on = statistics.median(b["rate"] for _, b in pairs_of)
        cost = 100 * (1 - statistics.median(b["rate"] / a["rate"] for a, b in pairs_of))
        worst = max(worst, cost)
        print(f"| {scenario}: {unit} | {off:,.0f} | {on:,.0f} | {cost:+.1f} % |")
        off_us = statistics.median(a["us"] for a, _ in pairs_of)
        on_us = statistics.median(b["us"] for _, b in pairs_of)
        cpu_cost = 100 * (statistics.median(b["us"] / a["us"] for a, b in pairs_of) - 1)
        print(f"| {scenario}: server CPU µs per message | {off_us:.2f} | {on_us:.2f} | {cpu_cost:+.1f} % |")
    if args.control:
        print("\ncontrol: both servers run without metrics; any cost above is the pairs' noise")
    else:
        print(f"\nthroughput cost: worst median of pairs {worst:.1f} % (target < {TARGET:g} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
