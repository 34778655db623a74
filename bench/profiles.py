"""Where plainsocket's time and memory go: the profiles behind bench/README.md's findings.

    python bench/profiles.py echo    # py-spy samples of server.py under the echo load, by layer
    python bench/profiles.py idle    # tracemalloc: what 1,000 idle clients joined to /test allocate

``echo`` needs ``py-spy`` (pip install -r bench/requirements.txt) and prints the share of samples
per layer (plainsocket, websockets, json, asyncio) and the top functions by own time; ``idle``
runs server.py under tracemalloc and prints the allocation sites that grew by line, per client.
Both pin the server to the first CPU and the load generator to the second, as bench/run.py does.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import ROOT, SERVER_ARGS, Server, cpu_plan, pinned, running  # noqa: E402

PORT_ARGS = ["--port", "0"]

# Runs server.py with tracemalloc on; SIGUSR1 writes the allocation sites (by line) to the file
# named in PLAINSOCKET_TRACE, so a snapshot can be taken from outside at the right moment.
TRACED = r"""
import os, runpy, signal, sys, tracemalloc
tracemalloc.start(1)
snapshots = []
def dump(*_):
    snapshots.append(tracemalloc.take_snapshot())
    if len(snapshots) == 2:
        stats = snapshots[1].compare_to(snapshots[0], "lineno")
        with open(os.environ["PLAINSOCKET_TRACE"], "w") as out:
            for stat in stats[:40]:
                frame = stat.traceback[0]
                out.write(f"{stat.size_diff}\t{stat.count_diff}\t{frame.filename}:{frame.lineno}\n")
signal.signal(signal.SIGUSR1, dump)
sys.argv = ["server.py", *sys.argv[1:]]
runpy.run_path("server.py", run_name="__main__")
"""


def layer(path: str) -> str:
    for name in ("plainsocket", "websockets", "json", "asyncio", "selectors"):
        if f"/{name}/" in path or path.startswith(f"{name}/") or path.endswith(f"{name}.py"):
            return "asyncio" if name == "selectors" else name
    return "other" if path else "?"


def profile_echo(seconds: float) -> None:
    server_cpus, load_cpus = cpu_plan()
    argv = [sys.executable, "server.py", *PORT_ARGS, *SERVER_ARGS]
    raw = Path(tempfile.mkdtemp()) / "echo.raw"
    with running(Server("plainsocket", argv, server_cpus, Path(tempfile.mkdtemp()) / "server.log")) as server:
        load = subprocess.Popen(
            [
                *("node", "bench/loadgen.js", "--url", server.url, "--mode", "echo", "--clients", "50"),
                *("--window", "16", "--warmup", "1", "--duration", str(seconds + 2)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pinned(load_cpus),
        )
        time.sleep(1.5)
        subprocess.run(
            [
                *("py-spy", "record", "-p", str(server.pid), "-d", str(int(seconds)), "-r", "250"),
                *("--nonblocking", "--format", "raw", "-o", str(raw)),
            ],
            check=True,
            capture_output=True,
        )
        out, _ = load.communicate(timeout=60)
    rate = json.loads(out.strip().splitlines()[-1])["rate"]
    own: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        found = re.match(r"(.*) \((.*?):\d+\)", leaf)
        function, path = (found.group(1), found.group(2)) if found else (leaf, "")
        own[f"{function} ({path.split('site-packages/')[-1]})"] += n
        layers[layer(path)] += n
    print(f"echo under py-spy: {rate:,.0f} responses/s (the sampler slows the server), {total} samples\n")
    print("| layer | share of samples |\n|---|---:|")
    for name, n in layers.most_common():
        print(f"| {name} | {100 * n / total:.1f} % |")
    print("\n| function (own time) | share |\n|---|---:|")
    for name, n in own.most_common(25):
        print(f"| {name} | {100 * n / total:.1f} % |")


def profile_idle(clients: int) -> None:
    server_cpus, load_cpus = cpu_plan()
    trace = Path(tempfile.mkdtemp()) / "idle.trace"
    argv = [sys.executable, "-c", TRACED, *PORT_ARGS, *SERVER_ARGS]
    os.environ["PLAINSOCKET_TRACE"] = str(trace)
    with running(Server("plainsocket", argv, server_cpus, Path(tempfile.mkdtemp()) / "server.log")) as server:
        # Warm up with a few clients first, so imports and first-use caches are not counted.
        subprocess.run(
            ["node", "bench/loadgen.js", "--url", server.url, "--mode", "connects", "--total", "50"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        os.kill(server.pid, signal.SIGUSR1)
        load = subprocess.Popen(
            ["node", "bench/loadgen.js", "--url", server.url, "--mode", "idle", "--clients", str(clients)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pinned(load_cpus),
        )
        assert load.stdout is not None and load.stdin is not None
        for line in load.stdout:
            if json.loads(line).get("phase") == "ready":
                break
        time.sleep(1)
        os.kill(server.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not trace.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        load.stdin.write("close\n")
        load.stdin.flush()
        load.communicate(timeout=60)
    rows = [line.split("\t") for line in trace.read_text().splitlines()]
    total = sum(int(size) for size, _, _ in rows)
    print(f"{clients:,} idle clients joined to /test: {total / clients / 1024:.2f} KiB per client in the top 40 sites")
    print("(Python objects only: the kernel's socket buffers and the allocator's slack are not in it)\n")
    print("| bytes per client | objects per client | where |\n|---:|---:|---|")
    for size, count, where in rows[:25]:
        print(f"| {int(size) / clients:.0f} | {int(count) / clients:.1f} | {where.split('site-packages/')[-1]} |")


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "echo":
        profile_echo(8)
    elif what == "idle":
        profile_idle(1000)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
