"""What Prometheus metrics cost: echo and fan-out with ``--metrics`` against the same server without.

Usage (from the repository root)::

    python bench/metrics_overhead.py            # 8 pairs per scenario, full loads (~2 minutes)
    python bench/metrics_overhead.py --quick    # 2 short pairs, tiny loads (a smoke run)

Two ``python server.py`` run side by side with the benchmark's flags (bench/run.py), one with
``--metrics`` (scraped every second during its load, harsher than Prometheus' default 15 s),
one without. bench/run.py's echo and fan-out scenarios are measured on them in turns, in
pairs (alternating which goes first), with its load generator. The cost is the median over
the pairs of each pair's throughput ratio: paired measurements hold on a shared machine,
where separate runs drift by tens of percent. The target is under 3 %.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

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


def measure(server: run.Server, loadgen: run.Loadgen, scenario: str, params: dict[str, float]) -> dict[str, float]:
    """One measurement of ``scenario``; the metrics server is scraped every second meanwhile."""
    if server.name == ON:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="2 pairs of short measurements")
    parser.add_argument("--pairs", type=int, default=None, help="measurement pairs per scenario (default 8)")
    parser.add_argument("--node", default="node")
    args = parser.parse_args(argv)
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
                for name, argv in ((OFF, base), (ON, [*base, "--metrics"]))
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
                    got = {name: measure(servers[name], loadgen, scenario, params) for name in order}
                    rows[scenario].append((got[OFF], got[ON]))
                    print(f"{scenario} pair {n + 1}/{pairs}: off {got[OFF]} on {got[ON]}", file=sys.stderr, flush=True)
    except run.BenchError as err:
        print(f"metrics_overhead.py: {err}", file=sys.stderr)
        return 2
    print(f"| median of {pairs} pairs ({time.strftime('%Y-%m-%d')}) | metrics off | metrics on | cost |")
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
    print(f"\nthroughput cost: worst median of pairs {worst:.1f} % (target < {TARGET:g} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
