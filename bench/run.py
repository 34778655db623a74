"""Benchmark plainsocket against raw ``websockets``, Node and Socket.IO in one run; report the targets.

Usage (from the repository root)::

    python bench/run.py              # full run for people: 5 servers x 3 passes, then the chat workload
    python bench/run.py --quick      # under a minute, tiny loads, plainsocket and raw websockets (for CI)
    python bench/run.py --scaling    # also fan-out at 100/1,000/5,000 clients, 100 B and 10 KiB

Each pass starts a fresh ``python server.py --port 0``, a fresh ``python bench/baseline.py --port 0``
(the baseline) and a fresh process of each installed peer (bench/peers/: Node ``ws``, Node
socket.io, python-socketio), one at a time in rotating order; pins the server to one CPU and the
load generator (``bench/loadgen.js``) to another when there are two; checks the wire format, warms
the server up, then measures idle memory, connects/s, echo, fan-out and fan-out latency. After the
passes, the chat workload (10,000 clients in rooms of 10) runs once per server. The tables give
the median of the passes with the min-max spread; the targets, plainsocket's ratio to the server
each is set against.

A full run writes ``bench/results/latest.md`` and ``bench/results/latest.png``; a quick run
writes ``bench/results/raw/quick.md`` so it never overwrites a full run's report. The raw
numbers of every run go to ``bench/results/raw/`` (not committed), next to the servers' logs;
``--report-from`` renders a report again from them.

Exit status: 0 when everything ran; 1 when a measurement lost or refused something (error
frames, clients closed by the server, lost broadcasts, failed connects) or, with ``--check``,
a target was missed; 2 when something failed to run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
RAW = RESULTS / "raw"
READY = re.compile(r"listening on http://[^\s:]+:(\d+)")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# server.py's per-connection rate limit (100 frames/s) and per-address cap (1,000) would be what
# the benchmark measures, since all its clients share 127.0.0.1: lift them (the limiter still
# runs). Everything else stays at its default, but for the log level: one INFO line per connect
# and per disconnect costs about a tenth of connects/s, and the raw server logs nothing.
# --server-arg adds to these, and wins; with --server-cmd they are left out (the command is then
# taken as it is).
SERVER_ARGS = (
    "--log-level=warning",
    "--rate-limit=1e9",
    "--rate-burst=1000000000",
    "--max-connections=100000",
    "--max-connections-per-address=100000",
)

# Above these (in % of one core) a measurement is flagged: other processes shared the machine, or
# the load generator may have been the limit rather than the server.
BUSY_MACHINE = 25.0
BUSY_LOADGEN = 90.0

PLAINSOCKET = "plainsocket"
RAW_WS = "raw websockets"
NODE_WS = "Node ws"
NODE_SIO = "Node socket.io"
PY_SIO = "python-socketio"
SERVER_ORDER = (PLAINSOCKET, RAW_WS, NODE_WS, NODE_SIO, PY_SIO)


@dataclass(frozen=True)
class Peer:
    """A server measured next to plainsocket: how to start it and which wire format it speaks."""

    name: str
    protocol: str  # loadgen.js --protocol: "plainsocket" (docs/protocol.md) or "socketio"
    argv: Callable[[str, str], list[str]]  # (python, node) -> command line
    missing: Callable[[], str | None]  # None when it can run, else what to install


def _python_module_missing(*modules: str) -> Callable[[], str | None]:
    def check() -> str | None:
        absent = [name for name in modules if importlib.util.find_spec(name) is None]
        return f"pip install -r bench/requirements.txt ({', '.join(absent)} missing)" if absent else None

    return check


def _node_module_missing(module: str) -> Callable[[], str | None]:
    def check() -> str | None:
        return None if (ROOT / "node_modules" / module / "package.json").exists() else f"npm ci ({module} missing)"

    return check


# Every server but plainsocket and the baseline runs the same demo handlers (bench/peers/).
PEERS = (
    Peer(
        NODE_WS,
        "plainsocket",
        lambda py, node: [node, "bench/peers/ws_server.js", "--port", "0"],
        _node_module_missing("ws"),
    ),
    Peer(
        NODE_SIO,
        "socketio",
        lambda py, node: [node, "bench/peers/sio_server.js", "--port", "0"],
        _node_module_missing("socket.io"),
    ),
    Peer(
        PY_SIO,
        "socketio",
        lambda py, node: [py, "bench/peers/sio_server.py", "--port", "0"],
        _python_module_missing("socketio", "aiohttp"),
    ),
)


class BenchError(Exception):
    """Something the benchmark needs did not work (a server, the load generator, a check)."""


# ---------------------------------------------------------------------------------------------
# What to run


@dataclass(frozen=True)
class Profile:
    """The load of every scenario; ``quick`` and ``full`` below are the two in use."""

    name: str
    passes: int
    echo: dict[str, float]
    fanout: dict[str, float]
    latency: dict[str, float]
    connects: dict[str, float]
    idle_clients: int
    warmup: tuple[tuple[str, dict[str, float]], ...]
    scaling_clients: tuple[int, ...]
    scaling_sizes: tuple[int, ...]
    scaling: dict[str, float] = field(default_factory=dict)
    chat: dict[str, float] = field(default_factory=dict)


QUICK = Profile(
    name="quick",
    passes=1,
    echo={"clients": 10, "window": 8, "size": 100, "warmup": 0.3, "duration": 1},
    fanout={"clients": 100, "senders": 2, "window": 4, "size": 100, "warmup": 0.3, "duration": 1},
    latency={"clients": 100, "rate": 20, "size": 100, "warmup": 0.3, "duration": 1},
    connects={"total": 200, "concurrency": 10, "duration": 5},
    idle_clients=100,
    warmup=(("echo", {"clients": 5, "window": 4, "warmup": 0, "duration": 0.3}),),
    scaling_clients=(20, 100),
    scaling_sizes=(100, 10240),
    scaling={"senders": 2, "window": 4, "warmup": 0.3, "duration": 1},
    chat={"clients": 200, "room_size": 10, "rate": 1, "processes": 2, "warmup": 0.5, "duration": 1.5},
)

FULL = Profile(
    name="full",
    passes=3,
    echo={"clients": 50, "window": 16, "size": 100, "warmup": 1, "duration": 5},
    fanout={"clients": 1000, "senders": 2, "window": 4, "size": 100, "warmup": 1, "duration": 5},
    latency={"clients": 1000, "rate": 20, "size": 100, "warmup": 1, "duration": 5},
    connects={"total": 4000, "concurrency": 20, "duration": 10},
    idle_clients=1000,
    # Few connections, so the idle-memory scenario that follows is not served from their garbage.
    warmup=(
        ("echo", {"clients": 10, "window": 16, "warmup": 0, "duration": 1}),
        ("fanout", {"clients": 20, "senders": 2, "window": 4, "warmup": 0, "duration": 1}),
        ("connects", {"total": 100, "concurrency": 10, "duration": 5}),
    ),
    scaling_clients=(100, 1000, 5000),
    scaling_sizes=(100, 10240),
    scaling={"senders": 2, "window": 4, "warmup": 1, "duration": 3},
    # The chat of the issue: 10,000 in and 100,000 deliveries out per second.
    # light_rate: the same rooms at a fifth of the traffic, where no server here is saturated.
    chat={
        "clients": 10000,
        "room_size": 10,
        "rate": 1,
        "light_rate": 0.2,
        "processes": 4,
        "warmup": 3,
        "duration": 10,
    },
)


@dataclass(frozen=True)
class Metric:
    """One row of the table: a figure of each server (the targets are in TARGETS)."""

    key: str
    label: str
    higher_is_better: bool


def metrics(profile: Profile) -> list[Metric]:
    """Return the table's rows, labelled with the load that produced them."""
    e, f, lat, c = profile.echo, profile.fanout, profile.latency, profile.connects
    paced = f"{lat['rate']:.0f} broadcasts/s to {lat['clients']:,.0f}"
    return [
        Metric("echo", f"echo: responses/s ({e['clients']:.0f} clients x {e['window']:.0f} in flight)", True),
        Metric(
            "fanout",
            f"burst fan-out: deliveries/s ({f['clients']:,.0f} clients, {f['senders']:.0f} senders"
            f" x {f['window']:.0f} in flight)",
            True,
        ),
        Metric("latency_p50", f"paced fan-out latency p50, ms ({paced})", False),
        Metric("latency_p99", f"paced fan-out latency p99, ms ({paced})", False),
        Metric("idle_kib", f"idle memory: KiB per connection ({profile.idle_clients:,} joined to /test)", False),
        Metric("connects", f"connects/s (open, join /test, close; {c['concurrency']:.0f} at a time)", True),
    ]


# ---------------------------------------------------------------------------------------------
# Processes


def cpu_plan() -> tuple[set[int] | None, set[int] | None]:
    """Pick one CPU for the server and another for the load generator, when there are two."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[1]}


def raise_open_files() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the new limit.

    Thousands of clients need as many descriptors, in the server and in the load generator;
    the hard limit is what an unprivileged process can reach (20,000 here).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def pinned(cpus: set[int] | None) -> Callable[[], None]:
    """Return a ``preexec_fn`` that pins the child (and its threads) to ``cpus`` and lifts its fd limit."""

    def setup() -> None:
        raise_open_files()
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return setup


def proc_rss_kib(pid: int) -> int:
    """Return the resident set size of ``pid`` in KiB."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    import psutil  # type: ignore[import-untyped,unused-ignore]  # only where there is no /proc

    return int(psutil.Process(pid).memory_info().rss // 1024)


def proc_cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time ``pid`` has used so far."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            # Fields after the command name, which may contain spaces: see proc(5).
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except FileNotFoundError:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)


def machine_busy_seconds() -> float | None:
    """Return the CPU time all processes have used so far, from /proc/stat (None elsewhere)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (FileNotFoundError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy.
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(limit: float, threshold: float = 15.0) -> float:
    """Wait up to ``limit`` seconds for a second in which the machine is nearly idle.

    Returns the busy percentage (of one core) seen last; the caller decides what to say.
    """
    deadline = time.monotonic() + limit
    busy = 0.0
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        after = machine_busy_seconds()
        if before is None or after is None:
            return 0.0
        busy = 100 * (after - before)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def listening_port(pid: int) -> int | None:
    """Return the TCP port ``pid`` listens on, when psutil is installed and can tell."""
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    try:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr:
                return int(conn.laddr.port)
    except psutil.Error:
        return None
    return None


class Server:
    """One server process started for one pass, its port read from its log."""

    def __init__(
        self, name: str, argv: Sequence[str], cpus: set[int] | None, log: Path, protocol: str = "plainsocket"
    ) -> None:
        self.name = name
        self.protocol = protocol
        self.argv = list(argv)
        self.cpus = cpus
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> None:
        """Start the server and wait for its ``listening on`` line."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=pinned(self.cpus),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = READY.search(self.log.read_text(errors="replace"))
            if found:
                self.port = int(found.group(1))
                return
            if self.proc.poll() is not None:
                break
            port = listening_port(self.pid)  # the line is INFO: it is missing at --log-level=warning
            if port:
                self.port = port
                return
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise BenchError(f"{self.name} did not say 'listening on' ({shlex.join(self.argv)}):\n{tail}")

    def stop(self) -> None:
        """Stop the server with SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)


@contextmanager
def running(server: Server) -> Iterator[Server]:
    """Run ``server`` for the duration of the block."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


class PeakRss:
    """Sample a process's RSS in the background and keep the highest value."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, proc_rss_kib(self.pid))
            except (OSError, ValueError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Loadgen:
    """Run ``bench/loadgen.js`` against one server."""

    def __init__(self, node: str, cpus: set[int] | None, client: str, retries: int = 0) -> None:
        self.node = node
        self.cpus = cpus
        self.client = client
        self.retries = retries

    def measure(self, server: Server, mode: str, params: dict[str, float]) -> dict[str, Any]:
        """Run a measured mode; redo it (up to ``retries`` times) when other work disturbed it."""
        attempt = 1
        result = self.run(server, mode, params)
        while result.get("other_cpu", 0) > BUSY_MACHINE and attempt <= self.retries:
            wait_for_quiet(30)
            attempt += 1
            result = self.run(server, mode, params)
        result["attempts"] = attempt
        return result

    def run(
        self,
        server: Server,
        mode: str,
        params: dict[str, float],
        on_phase: Callable[[str, subprocess.Popen[str]], None] | None = None,
    ) -> dict[str, Any]:
        """Run one mode to completion and return its JSON result, plus the server's CPU use."""
        timeout = 60 + 3 * (params.get("warmup", 0) + params.get("duration", 0))
        argv = [self.node, str(BENCH / "loadgen.js"), "--url", server.url, "--mode", mode]
        argv += ["--client", self.client, "--protocol", server.protocol, "--deadline", f"{timeout:g}"]
        for key, value in params.items():
            argv += [f"--{key}", f"{value:g}"]
        errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: nobody reads it until the end
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            preexec_fn=pinned(self.cpus),
        )
        # The load generator enforces its own deadline; this one covers a wedged Node.
        watchdog = threading.Timer(timeout + 15, proc.kill)
        watchdog.start()
        result: dict[str, Any] | None = None
        cpu0 = cpu1 = busy0 = busy1 = None
        t0 = t1 = 0.0
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                message = json.loads(line)
                phase = message.get("phase")
                if phase == "measure":
                    cpu0, busy0, t0 = server.cpu_seconds(), machine_busy_seconds(), time.monotonic()
                elif phase == "measured":
                    cpu1, busy1, t1 = server.cpu_seconds(), machine_busy_seconds(), time.monotonic()
                elif phase is not None and on_phase is not None:
                    on_phase(phase, proc)
                elif phase is None:
                    result = message
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            errors.seek(0)
            stderr = errors.read()
            errors.close()
        if result is None or proc.returncode not in (0, 1):
            raise BenchError(f"loadgen {mode} against {server.name} failed ({proc.returncode}):\n{stderr[-2000:]}")
        if cpu0 is not None and cpu1 is not None and t1 > t0:
            result["server_cpu"] = 100 * (cpu1 - cpu0) / (t1 - t0)
            if busy0 is not None and busy1 is not None:
                # What neither the server nor the load generator used: other processes, the
                # kernel's own threads. Tens of % here mean a noisy measurement.
                busy = 100 * (busy1 - busy0) / (t1 - t0)
                result["other_cpu"] = max(0.0, busy - result["server_cpu"] - result["cpu"])
        return result

    def run_group(
        self, server: Server, mode: str, shares: Sequence[dict[str, Any]], go: str = "go"
    ) -> tuple[list[dict[str, Any]], float | None]:
        """Run several load generators at once, each with its own ``shares[i]`` parameters.

        Each one opens its connections and says ``ready``; then all get ``go`` on stdin together.
        Returns their results and the server's CPU use (% of one core) from the first
        ``measure`` to the last ``measured``.
        """
        import queue

        timeout = 120 + 3 * max(float(share.get("warmup", 0)) + float(share.get("duration", 0)) for share in shares)
        events: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
        procs = []
        logs = []  # each one's stderr, in a file: nobody reads it until the end
        for i, share in enumerate(shares):
            argv = [self.node, str(BENCH / "loadgen.js"), "--url", server.url, "--mode", mode]
            argv += ["--client", self.client, "--protocol", server.protocol, "--deadline", f"{timeout:g}"]
            for key, value in share.items():
                argv += [f"--{key}", value if isinstance(value, str) else f"{value:g}"]
            logs.append(tempfile.TemporaryFile("w+"))
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=logs[-1],
                text=True,
                preexec_fn=pinned(self.cpus),
            )
            procs.append(proc)

            def pump(index: int, out: Any) -> None:
                for line in out:
                    events.put((index, json.loads(line)))
                events.put((index, None))

            threading.Thread(target=pump, args=(i, proc.stdout), daemon=True).start()
        results: list[dict[str, Any] | None] = [None] * len(procs)
        ready = measuring = measured = finished = 0
        cpu0 = cpu1 = t0 = t1 = 0.0
        deadline = time.monotonic() + timeout + 15
        try:
            while finished < len(procs):
                try:
                    index, message = events.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    raise BenchError(f"loadgen {mode} against {server.name}: no answer within {timeout:g} s") from None
                if message is None:
                    finished += 1
                    continue
                phase = message.get("phase")
                if phase == "ready":
                    ready += 1
                    if ready == len(procs):
                        for proc in procs:
                            assert proc.stdin is not None
                            proc.stdin.write(go + "\n")
                            proc.stdin.flush()
                elif phase == "measure":
                    measuring += 1
                    if measuring == 1:
                        cpu0, t0 = server.cpu_seconds(), time.monotonic()
                elif phase == "measured":
                    measured += 1
                    if measured == len(procs):
                        cpu1, t1 = server.cpu_seconds(), time.monotonic()
                elif phase is None:
                    results[index] = message
            for proc in procs:
                proc.wait(30)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        failed = [i for i, result in enumerate(results) if result is None or procs[i].returncode not in (0, 1)]
        details = []
        for log in logs:
            log.seek(0)
            details.append(log.read())
            log.close()
        if failed:
            detail = details[failed[0]][-2000:]
            raise BenchError(f"loadgen {mode} against {server.name} failed:\n{detail}")
        cpu = 100 * (cpu1 - cpu0) / (t1 - t0) if t1 > t0 else None
        return [result for result in results if result is not None], cpu


# ---------------------------------------------------------------------------------------------
# Scenarios


# Loopback source addresses for the load generators: 127.0.0.1 alone has about 28,000 ephemeral
# ports toward one server port (/proc/sys/net/ipv4/ip_local_port_range), and a socket bound to
# an address before connect() takes one of them for good.
def source_addresses(n: int, first: int = 2) -> list[str]:
    return [f"127.0.0.{first + i}" for i in range(n)]


def merge_histograms(results: Sequence[dict[str, Any]]) -> tuple[list[tuple[float, int]], int]:
    """Merge the load generators' latency histograms: (bin start in ms, count) sorted, overflow."""
    counts: dict[int, int] = {}
    width = results[0]["bin_ms"]
    for result in results:
        for index, n in result["bins"]:
            counts[index] = counts.get(index, 0) + n
    return [(index * width, counts[index]) for index in sorted(counts)], sum(r["overflow"] for r in results)


def histogram_quantile(bins: Sequence[tuple[float, int]], overflow: int, q: float) -> float:
    """Return the q-quantile (ms, the bin's upper edge) of a merged histogram; inf in the overflow."""
    total = sum(n for _, n in bins) + overflow
    if total == 0:
        return math.nan
    rank = math.ceil(q * total)
    seen = 0
    width = bins[1][0] - bins[0][0] if len(bins) > 1 else 0.01
    for start, n in bins:
        seen += n
        if seen >= rank:
            return start + min(width, 0.01)
    return math.inf


def measure_chat(server: Server, loadgen: Loadgen, params: dict[str, float]) -> dict[str, Any]:
    """The chat workload: clients in rooms, each sending ``rate`` messages/s to its own room.

    The clients are split across ``processes`` load generators (whole rooms each, one loopback
    source address each), so no process nears its descriptor limit and every room's emit and
    receipt are timed on one clock.
    """
    clients, size, procs = int(params["clients"]), int(params["room_size"]), int(params["processes"])
    rooms = clients // size
    shares = []
    for i, address in enumerate(source_addresses(procs)):
        first, last = rooms * i // procs, rooms * (i + 1) // procs
        shares.append(
            {
                "clients": (last - first) * size,
                "room-size": size,
                "room-base": first,
                "rate": params["rate"],
                "size": params.get("size", 100),
                "warmup": params["warmup"],
                "duration": params["duration"],
                "open-concurrency": params.get("open_concurrency", 50),
                "local-address": address,
            }
        )
    busy0 = machine_busy_seconds()
    started = time.monotonic()
    results, server_cpu = loadgen.run_group(server, "chat", shares)
    busy1 = machine_busy_seconds()
    bins, overflow = merge_histograms(results)
    sent = sum(r["sent_in_window"] for r in results)
    wall = max(r["wall"] for r in results) or math.nan
    delivered = sum(r["received_in_window"] for r in results)
    out: dict[str, Any] = {
        "clients": sum(r["clients"] for r in results),
        "rooms": rooms,
        "processes": procs,
        "messages_per_s": sent / wall,
        "deliveries_per_s": delivered / wall,
        "p50": histogram_quantile(bins, overflow, 0.50),
        "p90": histogram_quantile(bins, overflow, 0.90),
        "p99": histogram_quantile(bins, overflow, 0.99),
        "max": max(r["max"] for r in results),
        "server_cpu": server_cpu,
        "cpu": sum(r["cpu"] or 0 for r in results),
        "open_s": max(r["open_s"] for r in results),
        "lost": sum(r["lost"] for r in results),
        "bad": sum(r["bad"] for r in results),
        "unexpected_closes": sum(r["unexpected_closes"] for r in results),
        "close_codes": {},
        "server_rss_kib": server.rss_kib(),
    }
    if busy0 is not None and busy1 is not None and server_cpu is not None:
        # Over the whole run (opening included): a rough figure of other work on the machine.
        spent = 100 * (busy1 - busy0) / (time.monotonic() - started)
        out["machine_cpu"] = spent
    return out


# A measurement with any of these lost or refused something; the run then exits with status 1.
LOSSES = ("bad", "unexpected_closes", "lost", "stalls", "failed")


def lost_something(result: dict[str, Any]) -> bool:
    """Tell whether a measurement lost or refused frames or connections, or got nothing at all."""
    return any(result.get(key) for key in LOSSES) or result.get("rate") == 0


def lossy(results: list[dict[str, Any]], scaling: dict[str, list[list[dict[str, Any]]]]) -> int:
    """Count the measurements that lost or refused something."""
    measured = [r for p in results for name in p for r in p[name]["raw"].values() if isinstance(r, dict)]
    measured += [row for runs in scaling.values() for run in runs for row in run]
    return sum(1 for result in measured if lost_something(result))


def anomalies(name: str, result: dict[str, Any]) -> list[str]:
    """List what makes a measurement suspect: error frames, dropped clients, lost broadcasts."""
    found = []
    for key in ("bad", "unexpected_closes", "lost", "stalls", "failed", "dropped_on_close"):
        if result.get(key):
            extra = f" {result['close_codes']}" if key == "unexpected_closes" else ""
            extra += f" {result['errors']}" if key == "failed" else ""
            found.append(f"{name}: {key} = {result[key]}{extra}")
    if result.get("rate") == 0:
        found.append(f"{name}: nothing was received while measuring")
    if result.get("other_cpu", 0) > BUSY_MACHINE:
        tries = f" (in each of {result['attempts']} attempts)" if result.get("attempts", 1) > 1 else ""
        found.append(f"{name}: other work used {result['other_cpu']:.0f} % of a core while measuring{tries}")
    if result.get("cpu", 0) > BUSY_LOADGEN:
        found.append(f"{name}: the load generator used {result['cpu']:.0f} % of its core: it may be the limit")
    return found


def measure_idle(server: Server, loadgen: Loadgen, clients: int) -> dict[str, Any]:
    """Open ``clients`` idle connections joined to /test and divide the server's RSS growth."""
    before = server.rss_kib()
    sample: dict[str, float] = {}

    def on_phase(phase: str, proc: subprocess.Popen[str]) -> None:
        if phase == "ready":
            time.sleep(0.5)  # let the last joins settle
            sample["rss"] = server.rss_kib()
            assert proc.stdin is not None
            proc.stdin.write("close\n")
            proc.stdin.flush()

    result = loadgen.run(server, "idle", {"clients": clients}, on_phase)
    if "rss" not in sample:
        raise BenchError(f"idle run against {server.name} never reported ready")
    time.sleep(0.5)
    result["rss_before_kib"] = before
    result["rss_joined_kib"] = sample["rss"]
    result["rss_after_close_kib"] = server.rss_kib()
    result["kib_per_conn"] = (sample["rss"] - before) / clients
    return result


SCENARIOS = ("idle", "connects", "echo", "fanout", "latency")
ALL_SCENARIOS = (*SCENARIOS, "chat")  # chat runs once per server, after the passes


def one_pass(
    server: Server, loadgen: Loadgen, profile: Profile, scenarios: Sequence[str] = SCENARIOS
) -> tuple[dict[str, Any], list[str]]:
    """Check, warm up and measure one fresh server; return the raw results and the anomalies."""
    raw: dict[str, Any] = {"rss_start_kib": server.rss_kib()}
    check = loadgen.run(server, "check", {})
    if not check.get("ok"):
        raise BenchError(f"{server.name} does not behave as the benchmark expects: {check['problems']}")
    for mode, params in profile.warmup:
        loadgen.run(server, mode, params)
    raw["rss_warm_kib"] = server.rss_kib()
    # Idle memory first, before a larger load leaves freed memory behind for new connections.
    if "idle" in scenarios:
        raw["idle"] = measure_idle(server, loadgen, profile.idle_clients)
    if "connects" in scenarios:
        raw["connects"] = loadgen.measure(server, "connects", profile.connects)
    if "echo" in scenarios:
        raw["echo"] = loadgen.measure(server, "echo", profile.echo)
    if "fanout" in scenarios:
        with PeakRss(server.pid) as peak:
            raw["fanout"] = loadgen.measure(server, "fanout", profile.fanout)
        raw["fanout"]["server_peak_rss_kib"] = peak.peak
    if "latency" in scenarios:
        raw["latency"] = loadgen.measure(server, "latency", profile.latency)
    raw["rss_end_kib"] = server.rss_kib()
    notes = []
    for key in scenarios:
        if key in raw:
            notes += anomalies(f"{server.name} {key}", raw[key])
    return raw, notes


# Where each row of the table comes from: (scenario, figure).
FIGURES = {
    "echo": ("echo", "rate"),
    "fanout": ("fanout", "rate"),
    "latency_p50": ("latency", "p50"),
    "latency_p99": ("latency", "p99"),
    "idle_kib": ("idle", "kib_per_conn"),
    "connects": ("connects", "rate"),
}


def values(raw: dict[str, Any]) -> dict[str, float]:
    """Pick the table's figures out of one pass's raw results (those that were measured)."""
    return {key: raw[scenario][figure] for key, (scenario, figure) in FIGURES.items() if scenario in raw}


def scaling_pass(server: Server, loadgen: Loadgen, profile: Profile) -> tuple[list[dict[str, Any]], list[str]]:
    """Measure fan-out throughput and server memory at each client count and message size."""
    check = loadgen.run(server, "check", {})
    if not check.get("ok"):
        raise BenchError(f"{server.name} does not behave as the benchmark expects: {check['problems']}")
    rows, notes = [], []
    for clients in profile.scaling_clients:
        for size in profile.scaling_sizes:
            params = {**profile.scaling, "clients": clients, "size": size}
            before = server.rss_kib()
            with PeakRss(server.pid) as peak:
                result = loadgen.measure(server, "fanout", params)
            result.update(clients=clients, size=size, rss_before_kib=before, server_peak_rss_kib=peak.peak)
            rows.append(result)
            notes += anomalies(f"{server.name} scaling {clients} clients {size} B", result)
    return rows, notes


# ---------------------------------------------------------------------------------------------
# Report


@dataclass
class Spread:
    """The median of a few passes and their range."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, xs: Sequence[float]) -> Spread:
        return cls(statistics.median(xs), min(xs), max(xs), len(xs))


def fmt(x: float) -> str:
    """Format a figure with sensible precision for the table."""
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cell(s: Spread) -> str:
    if s.n == 1 or s.low == s.high:
        return fmt(s.median)
    return f"{fmt(s.median)} ({fmt(s.low)}-{fmt(s.high)})"


def git_commit() -> str:
    """Describe the checked-out commit (with -dirty for uncommitted changes)."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def machine_info(
    args: argparse.Namespace,
    commit: str,
    commands: dict[str, list[str]],
    server_cpus: set[int] | None,
    load_cpus: set[int] | None,
) -> list[str]:
    """Describe the machine and software the numbers come from."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    node_version = subprocess.run([args.node, "--version"], capture_output=True, text=True).stdout.strip()

    def node_package(name: str) -> str:
        try:
            return str(json.loads((ROOT / "node_modules" / name / "package.json").read_text())["version"])
        except (OSError, KeyError, ValueError):
            return "not installed"

    def python_package(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    pinning = (
        f"server on CPU {sorted(server_cpus)}, load generator on CPU {sorted(load_cpus)}"
        if server_cpus and load_cpus
        else "none (fewer than 2 CPUs)"
    )
    lines = [
        f"- CPU: {model}, {os.cpu_count()} logical CPUs; pinning: {pinning}",
        f"- OS: {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, websockets {python_package('websockets')};"
        f" raw websockets server on {args.loop} (server.py picks uvloop when it is installed);"
        f" python-socketio {python_package('python-socketio')}, aiohttp {python_package('aiohttp')}",
        f"- Node {node_version}, ws {node_package('ws')}, socket.io {node_package('socket.io')};"
        f" load generator client: {args.client}",
        f"- commit: {commit}, {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- command: `{shlex.join(['python', 'bench/run.py', *sys.argv[1:]])}`",
    ]
    lines += [f"- {name}: `{shlex.join(argv[1:])}`" for name, argv in commands.items()]
    return lines


@dataclass(frozen=True)
class Target:
    """One of the performance targets: plainsocket's figure over a peer's, and its bound."""

    text: str
    key: str  # a row of FIGURES
    peer: str
    bound: float
    higher_is_better: bool

    def met(self, ratio: float) -> bool:
        return ratio >= self.bound if self.higher_is_better else ratio <= self.bound


TARGETS = (
    Target("echo ≥ Node socket.io", "echo", NODE_SIO, 1.0, True),
    Target("echo ≥ 0.8x Node ws (stretch)", "echo", NODE_WS, 0.8, True),
    Target("paced fan-out p99 ≤ 1.0x raw websockets", "latency_p99", RAW_WS, 1.0, False),
    Target("burst fan-out ≥ 5x raw websockets", "fanout", RAW_WS, 5.0, True),
    Target("idle KiB/conn ≤ 0.8x raw websockets", "idle_kib", RAW_WS, 0.8, False),
    Target("connects/s ≥ 1.0x raw websockets", "connects", RAW_WS, 1.0, True),
)


def median_of(passes: list[dict[str, Any]], name: str, key: str) -> Spread | None:
    """The spread of one figure of one server over the passes, None when it was not measured."""
    xs = [p[name]["values"][key] for p in passes if name in p and key in p[name]["values"]]
    return Spread.of(xs) if xs else None


# Throughput rows and the scenario whose server CPU they divide by: rate per CPU-second of the server.
PER_CPU = {"echo": "echo", "fanout": "fanout", "connects": "connects"}


def per_cpu_ratio(passes: list[dict[str, Any]], key: str, peer: str) -> float | None:
    """plainsocket's rate per second of its own CPU over the peer's: what a busy machine distorts least.

    When other work takes CPU time from the server, its rate falls with it; the work done per
    CPU-second of the server falls much less, so this ratio is the one to read on a shared machine.
    """
    scenario = PER_CPU.get(key)
    if scenario is None:
        return None

    def per_cpu(name: str) -> float | None:
        xs = []
        for p in passes:
            raw = p.get(name, {}).get("raw", {}).get(scenario)
            if raw and raw.get("server_cpu"):
                xs.append(raw["rate"] / (raw["server_cpu"] / 100))
        return statistics.median(xs) if xs else None

    ours, theirs = per_cpu(PLAINSOCKET), per_cpu(peer)
    return ours / theirs if ours and theirs else None


def judge_targets(passes: list[dict[str, Any]]) -> list[tuple[Target, float | None, bool | None]]:
    """Each target with plainsocket's ratio to its peer (None when either was not measured)."""
    verdicts = []
    for target in TARGETS:
        ours, theirs = median_of(passes, PLAINSOCKET, target.key), median_of(passes, target.peer, target.key)
        if ours is None or theirs is None or not theirs.median:
            verdicts.append((target, None, None))
            continue
        ratio = ours.median / theirs.median
        verdicts.append((target, ratio, target.met(ratio)))
    return verdicts


def latency_cell(ms: float) -> str:
    """A latency quantile; beyond the histogram's 2 s it is only known to be later."""
    return "> 2,000" if math.isinf(ms) else fmt(ms)


def render_chat(chat: dict[str, dict[str, Any]], params: dict[str, float], rate: float | None = None) -> list[str]:
    """The chat workload's table: one row per server."""
    rate = params["rate"] if rate is None else rate
    out = [f"## Chat workload, {rate:g} message/s per client", ""]
    out += [
        f"{params['clients']:,.0f} clients in rooms of {params['room_size']:.0f}, each sending"
        f" {rate:g} `my room event`/s to its room (the sender gets its copy too), from"
        f" {params['processes']:.0f} load generators on their own 127.0.0.x; {params['duration']:g} s measured"
        f" after {params['warmup']:g} s. Latency: emit to receipt, every delivery, one clock per room.",
        "",
        "| server | messages in/s | deliveries/s | p50 ms | p90 ms | p99 ms | max ms | server CPU %"
        " | late (> 5 s) or lost"
        " | server RSS, MiB | load generators CPU % (sum) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in chat.items():
        out.append(
            f"| {name} | {fmt(r['messages_per_s'])} | {fmt(r['deliveries_per_s'])} | {latency_cell(r['p50'])}"
            f" | {latency_cell(r['p90'])} | {latency_cell(r['p99'])} | {fmt(r['max'])}"
            f" | {fmt(r['server_cpu'] or math.nan)}"
            f" | {r['lost']:,} | {fmt(r['server_rss_kib'] / 1024)} | {fmt(r['cpu'])} |"
        )
    out.append("")
    if PLAINSOCKET in chat:
        ours = chat[PLAINSOCKET]
        for peer in (NODE_SIO, PY_SIO, RAW_WS):
            if peer in chat and chat[peer]["p99"]:
                theirs = chat[peer]
                cpu = (ours["server_cpu"] or math.nan) / (theirs["server_cpu"] or math.nan)

                def ratio(q: str, theirs: dict[str, Any] = theirs) -> str:
                    if not math.isfinite(ours[q]) or not math.isfinite(theirs[q]):
                        return "- (beyond 2 s)"
                    return f"{ours[q] / theirs[q]:.2f}" if theirs[q] else "-"

                out.append(f"- plainsocket / {peer}: p50 {ratio('p50')}, p99 {ratio('p99')}, server CPU {cpu:.2f}")
        out.append("")
    return out


def render_many(many: dict[str, Any] | None) -> list[str]:
    """Summarise the last many-connections run (bench/many.py), when there is one."""
    if not many:
        return [
            "## Many connections",
            "",
            "Not measured in this run: `python bench/many.py` (see bench/README.md).",
            "",
        ]
    out = ["## Many connections (bench/many.py, run separately)", ""]
    out += [
        "| set-up | connections asked | open | failed | time to connect, s | connects/s | broadcast: exactly once"
        " | missing | duplicated | delivered to all in, ms | server RSS, MiB | KiB per connection |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in many.get("runs", []):
        out.append(
            f"| {row['setup']} | {row['asked']:,} | {row['open']:,} | {row['failed']:,} | {fmt(row['open_s'])}"
            f" | {fmt(row['open'] / row['open_s'] if row['open_s'] else math.nan)} | {row['once']:,}"
            f" | {row['missing']:,} | {row['duplicated']:,} | {fmt(row['delivered_ms'] or math.nan)}"
            f" | {fmt(row['rss_kib'] / 1024)}"
            f" | {fmt(row['kib_per_conn'])} |"
        )
    out += ["", f"Measured {many.get('when', '?')}, commit {many.get('commit', '?')}.", ""]
    return out


def render(
    profile: Profile,
    passes: list[dict[str, Any]],
    scaling: dict[str, list[list[dict[str, Any]]]],
    notes: list[str],
    info: list[str],
    judge: bool,
    chat: dict[str, dict[str, Any]] | None = None,
    many: dict[str, Any] | None = None,
    chat_light: dict[str, dict[str, Any]] | None = None,
) -> tuple[str, list[tuple[Target, float | None, bool | None]]]:
    """Render the markdown report; also return each target's ratio and verdict."""
    names = [name for name in passes[0]]
    names.sort(key=lambda name: SERVER_ORDER.index(name) if name in SERVER_ORDER else len(SERVER_ORDER))
    out = [f"# plainsocket, raw websockets and peers ({profile.name} run, {len(passes)} pass(es))", ""]
    out += ["| metric | " + " | ".join(names) + " | plainsocket / raw |", "|---|" + "---:|" * (len(names) + 1)]
    measured = [metric for metric in metrics(profile) if metric.key in passes[0][PLAINSOCKET]["values"]]
    for metric in measured:
        cells = []
        for name in names:
            spread = median_of(passes, name, metric.key)
            cells.append(cell(spread) if spread else "-")
        ours, raw = median_of(passes, PLAINSOCKET, metric.key), median_of(passes, RAW_WS, metric.key)
        ratio = f"{ours.median / raw.median:.2f}" if ours and raw and raw.median else "-"
        out.append(f"| {metric.label} | " + " | ".join(cells) + f" | {ratio} |")
    out += ["", "Median of the passes, (min-max) when there are several.", ""]

    verdicts = judge_targets(passes)
    out += ["## Targets", ""]
    out += [
        "| target | plainsocket / peer | met | per server CPU-second | met per CPU-second |",
        "|---|---:|---|---:|---|",
    ]
    for target, ratio, met in verdicts:
        if ratio is None:
            out.append(f"| {target.text} | - | not measured (no {target.peer} in this run) | - | - |")
            continue
        verdict = "not judged (quick run)" if not judge else ("yes" if met else "**no**")
        cpu_ratio = per_cpu_ratio(passes, target.key, target.peer)
        if cpu_ratio is None:
            cpu_cells = "- | -"
        else:
            cpu_met = target.met(cpu_ratio)
            cpu_cells = f"{cpu_ratio:.2f} | " + ("-" if not judge else ("yes" if cpu_met else "**no**"))
        out.append(f"| {target.text} | {ratio:.2f} | {verdict} | {cpu_cells} |")
    out += [
        "",
        "The first ratio is the one the targets are set on. The second divides each server's rate by",
        "the CPU time it got during the measurement: when other work shares the machine (see",
        '"anything else" below) the server gets less than a core and its rate falls with it, while',
        "its work per CPU-second falls much less.",
        "",
    ]
    print("targets:", file=sys.stderr)
    for target, ratio, met in verdicts:
        shown = f"{ratio:.2f}" if ratio is not None else "-"
        verdict = "not measured" if ratio is None else ("not judged" if not judge else ("met" if met else "MISSED"))
        print(f"  {target.text}: {shown} ({verdict})", file=sys.stderr)

    if chat:
        out += render_chat(chat, profile.chat)
    if chat_light:
        out += render_chat(chat_light, profile.chat, profile.chat["light_rate"])
    out += render_many(many)

    out += ["## Who was busy", ""]
    out += [
        "Each server's CPU use during each measured window, in % of one core (median), then the",
        "load generator's (the highest against any server) and anything else on the machine. A server",
        "near 100 % with the load generator well below it means the server was the limit, as intended.",
        "",
        "| scenario | " + " | ".join(names) + " | load generator (max) | anything else (max) |",
        "|---|" + "---:|" * (len(names) + 2),
    ]
    for key in ("echo", "fanout", "latency", "connects"):
        if key not in passes[0][PLAINSOCKET]["raw"]:
            continue
        row = [key]
        for name in names:
            row.append(fmt(statistics.median(p[name]["raw"][key].get("server_cpu", math.nan) for p in passes)))
        row.append(fmt(max(p[name]["raw"][key]["cpu"] for p in passes for name in p)))
        row.append(fmt(max(p[name]["raw"][key].get("other_cpu", math.nan) for p in passes for name in p)))
        out.append("| " + " | ".join(row) + " |")
    out += [
        "",
        '"Anything else" is the CPU time the machine spent outside the server and the load generator',
        "(the kernel's own threads, other programs). More than a few % means other work shared the",
        "machine and the figures above are noisier than their spread suggests.",
        "",
    ]

    out += ["## Details", ""]
    out += ["| figure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    paced = profile.latency["rate"] * profile.latency["clients"]  # deliveries/s in the latency run
    details: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
        ("fan-out: broadcasts/s", lambda r: r["fanout"]["broadcasts_per_s"]),
        ("fan-out: server CPU per delivery, µs", lambda r: 1e4 * r["fanout"]["server_cpu"] / r["fanout"]["rate"]),
        # At 20 broadcasts/s each one is written alone: no batching of writes can help here.
        ("paced fan-out: server CPU per delivery, µs", lambda r: 1e4 * r["latency"]["server_cpu"] / paced),
        ("echo: server CPU per response, µs", lambda r: 1e4 * r["echo"]["server_cpu"] / r["echo"]["rate"]),
        ("fan-out: server peak RSS, MiB", lambda r: r["fanout"]["server_peak_rss_kib"] / 1024),
        ("fan-out latency min (the first recipient), ms", lambda r: r["latency"]["min"]),
        ("fan-out latency p90, ms", lambda r: r["latency"]["p90"]),
        ("fan-out latency max, ms", lambda r: r["latency"]["max"]),
        ("connect + join p50, ms", lambda r: r["connects"]["join_p50"]),
        ("connect + join p99, ms", lambda r: r["connects"]["join_p99"]),
        ("server RSS after warm-up, MiB", lambda r: r["rss_warm_kib"] / 1024),
        ("server RSS with idle clients, MiB", lambda r: r["idle"]["rss_joined_kib"] / 1024),
        ("server RSS once they closed, MiB", lambda r: r["idle"]["rss_after_close_kib"] / 1024),
        ("server RSS at the end, MiB", lambda r: r["rss_end_kib"] / 1024),
    ]
    for label, get in details:
        cells = []
        for name in names:
            try:
                cells.append(cell(Spread.of([get(p[name]["raw"]) for p in passes])))
            except (KeyError, ZeroDivisionError, TypeError):  # left out with --only, or it failed
                cells.append("-")
        if any(c != "-" for c in cells):
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")

    if scaling:
        out += ["## Fan-out scaling", ""]
        out += [
            "Deliveries/s and the server's peak RSS during the run, by client count and message size",
            f"(payload string of that many bytes; {profile.scaling['senders']:.0f} senders x"
            f" {profile.scaling['window']:.0f} in flight, {profile.scaling['duration']:g} s each).",
            "",
            "| clients | payload | plainsocket deliveries/s | raw deliveries/s | ratio"
            " | plainsocket peak RSS, MiB | raw peak RSS, MiB | load generator CPU % |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for i, config in enumerate(scaling[PLAINSOCKET][0]):
            ours = Spread.of([run[i]["rate"] for run in scaling[PLAINSOCKET]])
            theirs = Spread.of([run[i]["rate"] for run in scaling[RAW_WS]])
            rss_ours = Spread.of([run[i]["server_peak_rss_kib"] / 1024 for run in scaling[PLAINSOCKET]])
            rss_theirs = Spread.of([run[i]["server_peak_rss_kib"] / 1024 for run in scaling[RAW_WS]])
            cpu = max(run[i]["cpu"] for name in (PLAINSOCKET, RAW_WS) for run in scaling[name])
            ratio = ours.median / theirs.median if theirs.median else float("nan")
            out.append(
                f"| {config['clients']:,} | {config['size']:,} B | {cell(ours)} | {cell(theirs)} | {ratio:.2f}"
                f" | {cell(rss_ours)} | {cell(rss_theirs)} | ≤ {fmt(cpu)} |"
            )
        out.append("")

    if notes:
        out += ["## Anomalies", ""]
        out += [f"- {note}" for note in notes]
        out.append("")
    out += ["## Machine", "", *info, ""]
    return "\n".join(out), verdicts


COLORS = {
    PLAINSOCKET: "#1f77b4",
    RAW_WS: "#999999",
    NODE_WS: "#2ca02c",
    NODE_SIO: "#ff7f0e",
    PY_SIO: "#d62728",
}


def plot(
    path: Path,
    profile: Profile,
    passes: list[dict[str, Any]],
    scaling: dict[str, list[list[dict[str, Any]]]],
    chat: dict[str, dict[str, Any]] | None = None,
) -> bool:
    """Draw the comparison (and the chat latencies) to ``path``; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [name for name in SERVER_ORDER if name in passes[0]]
    rows = [metric for metric in metrics(profile) if metric.key in passes[0][PLAINSOCKET]["values"]]
    panels = len(rows) + (1 if chat else 0)
    ncols = min(4, panels)
    nrows = math.ceil(panels / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 3.6 * nrows), squeeze=False)
    axes = list(grid.flat)
    short = {
        PLAINSOCKET: "plain\nsocket",
        RAW_WS: "raw\nws",
        NODE_WS: "Node\nws",
        NODE_SIO: "Node\nsocket.io",
        PY_SIO: "python-\nsocketio",
    }
    for ax, metric in zip(axes, rows, strict=False):
        for x, name in enumerate(names):
            s = median_of(passes, name, metric.key)
            if s is None:
                continue
            ax.bar(
                x,
                s.median,
                color=COLORS.get(name, "#444444"),
                yerr=[[s.median - s.low], [s.high - s.median]],
                capsize=3,
            )
        ax.set_xticks(range(len(names)), [short.get(name, name) for name in names])
        ax.set_title(metric.label.split(" (")[0], fontsize=9)
        ax.tick_params(labelsize=7)
    if chat:
        ax = axes[len(rows)]
        chat_names = [name for name in SERVER_ORDER if name in chat]
        width = 0.4
        for x, name in enumerate(chat_names):
            p50, p99 = (min(chat[name][q], 2000.0) for q in ("p50", "p99"))  # the histogram ends at 2 s
            ax.bar(x - width / 2, p50, width, color=COLORS.get(name, "#444444"), alpha=0.5)
            ax.bar(x + width / 2, p99, width, color=COLORS.get(name, "#444444"))
        ax.set_yscale("log")
        ax.set_xticks(range(len(chat_names)), [short.get(name, name) for name in chat_names])
        ax.set_title(f"chat ({profile.chat['clients']:,.0f} clients): p50 (light), p99 ms", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.suptitle(f"plainsocket and peers ({profile.name} run, median and min-max of {len(passes)})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# Main


def prune_raw(keep: int = 5) -> None:
    """Delete the raw results and logs of all but the last ``keep`` runs."""
    stamped = re.compile(r"^(\d{8}-\d{6})-")
    stamps = sorted({m.group(1) for path in RAW.glob("*") if (m := stamped.match(path.name))})
    for path in RAW.glob("*"):
        m = stamped.match(path.name)
        if m and m.group(1) in stamps[:-keep]:
            path.unlink()


def display(path: Path) -> str:
    """Show ``path`` relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny loads, 1 pass, no targets (seconds)")
    parser.add_argument("--scaling", action="store_true", help="also measure fan-out at several sizes")
    parser.add_argument("--passes", type=int, help="passes per server (default: 3, or 1 with --quick)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--only",
        type=lambda text: [name.strip() for name in text.split(",")],
        default=list(ALL_SCENARIOS),
        metavar="LIST",
        help=f"comma-separated scenarios to run, of {','.join(ALL_SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--peers",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        metavar="LIST",
        help=f"comma-separated peers to run next to plainsocket and raw websockets, of"
        f" {','.join(peer.name for peer in PEERS)} (default: every one that is installed, none with --quick)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for server.py, repeatable (e.g. --server-arg=--log-level=warning)",
    )
    parser.add_argument(
        "--server-cmd",
        help="command line that starts the server to compare, instead of"
        " '{python} server.py --port 0' plus the limit flags; {python} is this interpreter",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop of the raw websockets server; auto: uvloop when installed, as server.py does",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        metavar="SECONDS",
        help="before each server's pass, wait up to this long for other work on the machine to stop"
        " (default: 30, or 0 with --quick)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help=f"redo a measurement up to N times when other work used more than {BUSY_MACHINE:g} %% of a core"
        " meanwhile (default: 2, or 0 with --quick)",
    )
    parser.add_argument("--client", choices=("wire", "ws"), default="wire", help="load generator's client")
    parser.add_argument("--node", default=shutil.which("node") or "node", help="Node.js executable")
    parser.add_argument(
        "--out", type=Path, help="report path (default: results/latest.md, quick: results/raw/quick.md)"
    )
    parser.add_argument(
        "--report-from",
        type=Path,
        metavar="JSON",
        help="measure nothing: write the report and plot again from a run's raw JSON (bench/results/raw/)"
        " and the latest results/many.json",
    )
    return parser.parse_args(argv)


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def report_again(path: Path, out: Path | None) -> int:
    """Render a past run's report and plot from its raw JSON, with the latest many-connections run."""
    dump = json.loads(path.read_text())
    profile = QUICK if dump["profile"] == "quick" else FULL
    many = json.loads((RESULTS / "many.json").read_text()) if (RESULTS / "many.json").exists() else None
    info = dump.get("info", [])
    report, _ = render(
        profile,
        dump["passes"],
        dump.get("scaling", {}),
        dump.get("notes", []),
        info,
        judge=profile is FULL,
        chat=dump.get("chat", {}),
        many=many,
        chat_light=dump.get("chat_light", {}),
    )
    out = out or (RESULTS / "latest.md" if profile is FULL else RAW / "quick.md")
    out.write_text(report, encoding="utf-8")
    plot(out.with_suffix(".png"), profile, dump["passes"], dump.get("scaling", {}), dump.get("chat", {}))
    print(report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_from:
        return report_again(args.report_from, args.out)
    # SIGTERM stops the run like Ctrl-C: the server of the moment is stopped on the way out.
    signal.signal(signal.SIGTERM, interrupted)
    profile = QUICK if args.quick else FULL
    unknown = set(args.only) - set(ALL_SCENARIOS)
    if unknown:
        print(
            f"run.py: unknown scenario(s) {', '.join(sorted(unknown))}; pick from {', '.join(ALL_SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    known_peers = {peer.name: peer for peer in PEERS}
    if args.peers is not None and (bad := set(args.peers) - set(known_peers)):
        print(f"run.py: unknown peer(s) {', '.join(sorted(bad))}; pick from {', '.join(known_peers)}", file=sys.stderr)
        return 2
    passes = args.passes or profile.passes
    # Only a complete full run replaces the report in results/; anything else goes to raw/.
    if args.out:
        out = args.out
    elif args.quick:
        out = RAW / "quick.md"
    elif set(args.only) != set(ALL_SCENARIOS) or args.peers is not None:
        out = RAW / "partial.md"
    else:
        out = RESULTS / "latest.md"
    if not shutil.which(args.node):
        print(f"run.py: Node.js not found ({args.node}); run `npm ci` after installing Node 20", file=sys.stderr)
        return 2
    raise_open_files()
    server_cpus, load_cpus = cpu_plan()
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)  # this driver mostly sleeps; keep it off the server's CPU
    python = sys.executable
    if args.loop == "auto":
        args.loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    commands = {
        PLAINSOCKET: [
            *(
                shlex.split(args.server_cmd.format(python=python))
                if args.server_cmd
                else [python, "server.py", "--port", "0", *SERVER_ARGS]
            ),
            *args.server_arg,
        ],
        RAW_WS: [python, str(BENCH / "baseline.py"), "--port", "0", *(["--uvloop"] if args.loop == "uvloop" else [])],
    }
    protocols = {PLAINSOCKET: "plainsocket", RAW_WS: "plainsocket"}
    notes: list[str] = []
    # A quick run (CI's) stays short and needs nothing beyond the test requirements: no peers
    # unless they are asked for with --peers.
    wanted = args.peers if args.peers is not None else ([] if args.quick else [peer.name for peer in PEERS])
    for peer in PEERS:
        if peer.name not in wanted:
            continue
        why = peer.missing()
        if why:
            notes.append(f"{peer.name} not measured: {why}")
            print(f"run.py: {peer.name} not measured: {why}", file=sys.stderr)
            if args.peers is not None:  # asked for by name: not having it is an error
                return 2
            continue
        commands[peer.name] = peer.argv(python, args.node)
        protocols[peer.name] = peer.protocol
    names = list(commands)
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 30.0
    retries = args.retries if args.retries is not None else (0 if args.quick else 2)
    loadgen = Loadgen(args.node, load_cpus, args.client, retries)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: list[dict[str, Any]] = []
    scaling: dict[str, list[list[dict[str, Any]]]] = {PLAINSOCKET: [], RAW_WS: []} if args.scaling else {}
    chat: dict[str, dict[str, Any]] = {}
    chat_light: dict[str, dict[str, Any]] = {}
    chat_failed = 0
    started = time.monotonic()
    commit = git_commit()  # before the run: the tree may change while it goes on
    try:
        for n in range(passes):
            # Rotate who goes first, so a drift of the machine does not favour one server.
            order = names[n % len(names) :] + names[: n % len(names)]
            this_pass: dict[str, Any] = {}
            for name in order:
                if args.wait_quiet:
                    busy = wait_for_quiet(args.wait_quiet)
                    if busy >= 15.0:
                        notes.append(f"pass {n + 1}: the machine was still {busy:.0f} % busy when {name} started")
                log = RAW / f"{stamp}-{name.replace(' ', '-')}-{n + 1}.log"
                print(f"pass {n + 1}/{passes}: {name} ...", file=sys.stderr, flush=True)
                with running(Server(name, commands[name], server_cpus, log, protocols[name])) as server:
                    raw, found = one_pass(server, loadgen, profile, args.only)
                this_pass[name] = {"raw": raw, "values": values(raw)}
                notes += [f"pass {n + 1}: {note}" for note in found]
                if args.scaling and name in scaling:
                    print(f"pass {n + 1}/{passes}: {name} scaling ...", file=sys.stderr, flush=True)
                    with running(Server(name, commands[name], server_cpus, log.with_suffix(".scaling.log"))) as server:
                        rows, found = scaling_pass(server, loadgen, profile)
                    scaling[name].append(rows)
                    notes += [f"pass {n + 1}: {note}" for note in found]
            results.append(this_pass)
        if "chat" in args.only:
            for name in names:
                if args.wait_quiet:
                    wait_for_quiet(args.wait_quiet)
                print(f"chat: {name} ...", file=sys.stderr, flush=True)
                log = RAW / f"{stamp}-{name.replace(' ', '-')}-chat.log"
                try:
                    with running(Server(name, commands[name], server_cpus, log, protocols[name])) as server:
                        check = loadgen.run(server, "check", {})
                        if not check.get("ok"):
                            raise BenchError(f"{name} does not behave as the benchmark expects: {check['problems']}")
                        chat[name] = measure_chat(server, loadgen, profile.chat)
                        if profile.chat.get("light_rate"):
                            light = {**profile.chat, "rate": profile.chat["light_rate"]}
                            chat_light[name] = measure_chat(server, loadgen, light)
                except BenchError as err:  # a server that can not carry the chat: say so, keep the rest
                    notes.append(f"{name} chat failed: {str(err)[:500]}")
                    chat_failed += 1
                    continue
                notes += anomalies(f"{name} chat", chat[name])
                if name in chat_light:
                    notes += anomalies(f"{name} light chat", chat_light[name])
    except BenchError as err:
        print(f"run.py: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    elapsed = time.monotonic() - started
    if (now := git_commit()) != commit:
        notes.append(f"the checkout changed during the run ({commit} at the start, {now} at the end)")

    info = machine_info(args, commit, commands, server_cpus, load_cpus)
    info.append(f"- duration of the run: {elapsed:.0f} s")
    many = None
    if not args.quick and (RESULTS / "many.json").exists():
        many = json.loads((RESULTS / "many.json").read_text())
    report, verdicts = render(
        profile, results, scaling, notes, info, judge=not args.quick, chat=chat, many=many, chat_light=chat_light
    )
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    RAW.mkdir(parents=True, exist_ok=True)
    dump = {
        "profile": profile.name,
        "commands": commands,
        "passes": results,
        "scaling": scaling,
        "chat": chat,
        "chat_light": chat_light,
        "notes": notes,
        "info": info,
    }
    (RAW / f"{stamp}-{profile.name}.json").write_text(json.dumps(dump, indent=1), encoding="utf-8")
    prune_raw()
    png = out.with_suffix(".png")
    if plot(png, profile, results, scaling, chat):
        print(f"wrote {display(out)} and {display(png)}", file=sys.stderr)
    else:
        print(
            f"wrote {display(out)}; no plot: matplotlib is not installed (pip install -r bench/requirements.txt)",
            file=sys.stderr,
        )
    status = 0
    if lost := lossy(results, scaling) + sum(1 for result in chat.values() if lost_something(result)) + chat_failed:
        print(f"run.py: {lost} measurement(s) lost or refused frames or connections (see Anomalies)", file=sys.stderr)
        status = 1
    if args.check and not args.quick and any(met is False for _, _, met in verdicts):
        print("run.py: a target was missed", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
