"""What Prometheus metrics cost: echo and fan-out with ``--metrics`` against the same server without.

Usage (from the repository root)::

    python bench/metrics_overhead.py            # 5 alternating passes of each, full loads
    python bench/metrics_overhead.py --quick    # 1 pass, tiny loads (a smoke run)

Each pass starts a fresh ``python server.py`` with the benchmark's flags (bench/run.py), once
with ``--metrics`` (and a scrape of ``/metrics`` every second during the load, a harsher
interval than Prometheus' default 15 s) and once without, in alternating order, and runs
bench/run.py's echo and fan-out scenarios with its load generator. It prints the medians and
the cost of metrics in percent of throughput; the target is under 3 %.
"""

from __future__ import annotations

import argparse
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


def one(name: str, argv: list[str], loadgen: run.Loadgen, profile: run.Profile, cpus: set[int] | None) -> dict:
    log = run.RAW / f"metrics-overhead-{name.replace(' ', '-')}.log"
    with run.running(run.Server(name, argv, cpus, log)) as server:
        check = loadgen.run(server, "check", {})
        if not check.get("ok"):
            raise run.BenchError(f"{name}: {check['problems']}")
        for mode, params in profile.warmup:
            loadgen.run(server, mode, params)
        figures = {}
        scrape_url = f"http://127.0.0.1:{server.port}/metrics"
        for scenario, params in (("echo", profile.echo), ("fanout", profile.fanout)):
            if name == ON:
                with Scraper(scrape_url) as scraper:
                    result = loadgen.measure(server, scenario, params)
                if not scraper.scrapes and params["duration"] >= 2:
                    raise run.BenchError("no scrape answered during the load")
            else:
                result = loadgen.measure(server, scenario, params)
            if run.lost_something(result):
                raise run.BenchError(f"{name} {scenario} lost or refused something: {result}")
            # Server CPU per message too: on a shared machine it is steadier than throughput.
            cpu = result.get("server_cpu")
            figures[scenario] = result["rate"]
            figures[scenario + "_us"] = 1e6 * cpu / 100 / result["rate"] if cpu else float("nan")
        print(f"  {name}: {figures}", file=sys.stderr, flush=True)
        return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1 pass, tiny loads")
    parser.add_argument("--passes", type=int, default=None, help="passes of each (default 5, 1 with --quick)")
    parser.add_argument("--node", default="node")
    args = parser.parse_args(argv)
    profile = run.QUICK if args.quick else run.FULL
    passes = args.passes or (1 if args.quick else 5)
    server_cpus, load_cpus = run.cpu_plan()
    base = [sys.executable, "server.py", "--port", "0", *run.SERVER_ARGS]
    commands = {OFF: base, ON: [*base, "--metrics"]}
    loadgen = run.Loadgen(args.node, load_cpus, "wire")
    results: dict[str, list[dict[str, float]]] = {OFF: [], ON: []}
    try:
        for n in range(passes):
            order = (OFF, ON) if n % 2 == 0 else (ON, OFF)
            for name in order:
                print(f"pass {n + 1}/{passes}: {name} ...", file=sys.stderr, flush=True)
                results[name].append(one(name, commands[name], loadgen, profile, server_cpus))
    except run.BenchError as err:
        print(f"metrics_overhead.py: {err}", file=sys.stderr)
        return 2
    print(f"| median of {passes} passes ({time.strftime('%Y-%m-%d')}) | metrics off | metrics on | cost |")
    print("|---|---:|---:|---:|")
    worst = 0.0
    for scenario, unit in (("echo", "responses/s"), ("fanout", "deliveries/s")):
        off = statistics.median(r[scenario] for r in results[OFF])
        on = statistics.median(r[scenario] for r in results[ON])
        cost = (off - on) / off * 100
        print(f"| {scenario}: {unit} | {off:,.0f} | {on:,.0f} | {cost:+.1f} % |")
        off_us = statistics.median(r[scenario + "_us"] for r in results[OFF])
        on_us = statistics.median(r[scenario + "_us"] for r in results[ON])
        cpu_cost = (on_us - off_us) / off_us * 100
        worst = max(worst, cpu_cost)
        print(f"| {scenario}: server CPU µs per message | {off_us:.2f} | {on_us:.2f} | {cpu_cost:+.1f} % |")
    print(f"\nworst CPU cost per message {worst:.1f} % (target < {TARGET:g} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
