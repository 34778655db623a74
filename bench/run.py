"""Benchmark plainsocket against a raw ``websockets`` server in one run and report the ratios.

Usage (from the repository root)::

    python bench/run.py              # full run for people: a few minutes, 3 passes
    python bench/run.py --quick      # seconds, tiny loads, 1 pass, no targets (for CI)
    python bench/run.py --scaling    # also fan-out at 100/1,000/5,000 clients, 100 B and 10 KiB

Each pass starts a fresh ``python server.py --port 0`` and a fresh ``python bench/baseline.py
--port 0`` (the order alternates between passes), pins the server to one CPU and the load
generator (``bench/loadgen.js``) to another when there are two, checks the wire format, warms the
server up, then measures idle memory, connects/s, echo, fan-out and fan-out latency. The table
gives the median of the passes with the min-max spread, and the ratio plainsocket / raw.

A full run writes ``bench/results/latest.md`` and ``bench/results/latest.png``; a quick run
writes ``bench/results/raw/quick.md`` so it never overwrites a full run's report. The raw
numbers of every run go to ``bench/results/raw/`` (not committed), next to the servers' logs.

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
)


@dataclass(frozen=True)
class Metric:
    """One row of the table: how to read it from a pass and how plainsocket should compare."""

    key: str
    label: str
    higher_is_better: bool
    target: float | None  # bound on plainsocket / raw websockets; None: shown, not judged

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f"{'≥' if self.higher_is_better else '≤'} {self.target:.2f}"

    def met(self, ratio: float) -> bool | None:
        if self.target is None:
            return None
        return ratio >= self.target if self.higher_is_better else ratio <= self.target


def metrics(profile: Profile) -> list[Metric]:
    """Return the table's rows, labelled with the load that produced them."""
    e, f, lat, c = profile.echo, profile.fanout, profile.latency, profile.connects
    paced = f"{lat['rate']:.0f} broadcasts/s to {lat['clients']:,.0f}"
    return [
        Metric("echo", f"echo: responses/s ({e['clients']:.0f} clients x {e['window']:.0f} in flight)", True, 0.9),
        Metric(
            "fanout",
            f"fan-out: deliveries/s ({f['clients']:,.0f} clients, {f['senders']:.0f} senders"
            f" x {f['window']:.0f} in flight)",
            True,
            0.9,
        ),
        Metric("latency_p50", f"fan-out latency p50, ms ({paced})", False, None),
        Metric("latency_p99", f"fan-out latency p99, ms ({paced})", False, 1.2),
        Metric("idle_kib", f"idle memory: KiB per connection ({profile.idle_clients:,} joined to /test)", False, 1.25),
        Metric("connects", f"connects/s (open, join /test, close; {c['concurrency']:.0f} at a time)", True, 0.9),
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


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """Return a ``preexec_fn`` that pins the child (and every thread it starts) to ``cpus``."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


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

    def __init__(self, name: str, argv: Sequence[str], cpus: set[int] | None, log: Path) -> None:
        self.name = name
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
        argv += ["--client", self.client, "--deadline", f"{timeout:g}"]
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


# ---------------------------------------------------------------------------------------------
# Scenarios


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
    try:
        ws_version = json.loads((ROOT / "node_modules/ws/package.json").read_text())["version"]
    except (OSError, KeyError, ValueError):
        ws_version = "unknown"
    pinning = (
        f"server on CPU {sorted(server_cpus)}, load generator on CPU {sorted(load_cpus)}"
        if server_cpus and load_cpus
        else "none (fewer than 2 CPUs)"
    )
    lines = [
        f"- CPU: {model}, {os.cpu_count()} logical CPUs; pinning: {pinning}",
        f"- OS: {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, websockets {importlib.metadata.version('websockets')};"
        f" raw websockets server on {args.loop} (server.py picks uvloop when it is installed)",
        f"- Node {node_version}, ws {ws_version}, load generator client: {args.client}",
        f"- commit: {commit}, {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- command: `{shlex.join(['python', 'bench/run.py', *sys.argv[1:]])}`",
        f"- plainsocket: `{shlex.join(commands[PLAINSOCKET][1:])}`",
        f"- raw websockets: `{shlex.join(commands[RAW_WS][1:])}`",
    ]
    return lines


def render(
    profile: Profile,
    passes: list[dict[str, Any]],
    scaling: dict[str, list[list[dict[str, Any]]]],
    notes: list[str],
    info: list[str],
    judge: bool,
) -> tuple[str, list[tuple[Metric, float, bool | None]]]:
    """Render the markdown report; also return each metric's ratio and verdict."""
    out = [f"# plainsocket vs raw websockets ({profile.name} run, {len(passes)} pass(es))", ""]
    out += ["| metric | plainsocket | raw websockets | ratio | target |", "|---|---:|---:|---:|---|"]
    verdicts = []
    measured = [metric for metric in metrics(profile) if metric.key in passes[0][PLAINSOCKET]["values"]]
    for metric in measured:
        ours = Spread.of([p[PLAINSOCKET]["values"][metric.key] for p in passes])
        theirs = Spread.of([p[RAW_WS]["values"][metric.key] for p in passes])
        ratio = ours.median / theirs.median if theirs.median else float("nan")
        met = metric.met(ratio) if judge else None
        verdicts.append((metric, ratio, met))
        if metric.target is None:
            target = "-"
        elif not judge:
            target = f"{metric.target_text()} (not judged in a quick run)"
        else:
            target = f"{metric.target_text()}: {'ok' if met else '**missed**'}"
        out.append(f"| {metric.label} | {cell(ours)} | {cell(theirs)} | {ratio:.2f} | {target} |")
    out += ["", "Median of the passes, (min-max) when there are several; ratio = plainsocket / raw websockets.", ""]

    out += ["## Who was busy", ""]
    out += [
        "CPU use during each measured window, in % of one core (median). A server near 100 % with",
        "the load generator well below it means the server was the limit, as intended.",
        "",
        "| scenario | plainsocket server | raw server | load generator (vs plainsocket) | load generator (vs raw)"
        " | anything else (max) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key in ("echo", "fanout", "latency", "connects"):
        if key not in passes[0][PLAINSOCKET]["raw"]:
            continue
        row = [key]
        for name in (PLAINSOCKET, RAW_WS):
            row.append(fmt(statistics.median(p[name]["raw"][key].get("server_cpu", math.nan) for p in passes)))
        for name in (PLAINSOCKET, RAW_WS):
            row.append(fmt(statistics.median(p[name]["raw"][key]["cpu"] for p in passes)))
        row.append(fmt(max(p[name]["raw"][key].get("other_cpu", math.nan) for p in passes for name in p)))
        out.append("| " + " | ".join(row) + " |")
    out += [
        "",
        '"Anything else" is the CPU time the machine spent outside the two processes (the kernel\'s',
        "own threads, other programs). More than a few % means other work shared the machine and",
        "the figures above are noisier than their spread suggests.",
        "",
    ]

    out += ["## Details", ""]
    out += ["| figure | plainsocket | raw websockets |", "|---|---:|---:|"]
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
        try:
            cells = [cell(Spread.of([get(p[name]["raw"]) for p in passes])) for name in (PLAINSOCKET, RAW_WS)]
        except (KeyError, ZeroDivisionError):  # a scenario left out with --only, or one that failed
            continue
        out.append(f"| {label} | {cells[0]} | {cells[1]} |")
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


def plot(
    path: Path, profile: Profile, passes: list[dict[str, Any]], scaling: dict[str, list[list[dict[str, Any]]]]
) -> bool:
    """Draw the comparison (and the scaling curves) to ``path``; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [metric for metric in metrics(profile) if metric.key in passes[0][PLAINSOCKET]["values"]]
    panels = len(rows) + (2 if scaling else 0)
    ncols = min(4, panels)
    nrows = math.ceil(panels / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.2 * nrows), squeeze=False)
    axes = list(grid.flat)
    colors = {PLAINSOCKET: "#1f77b4", RAW_WS: "#999999"}
    for ax, metric in zip(axes, rows, strict=False):
        medians = []
        for x, name in enumerate((PLAINSOCKET, RAW_WS)):
            s = Spread.of([p[name]["values"][metric.key] for p in passes])
            medians.append(s.median)
            ax.bar(x, s.median, color=colors[name], yerr=[[s.median - s.low], [s.high - s.median]], capsize=4)
        ax.set_xticks([0, 1], ["plainsocket", "raw websockets"])
        verdict = f", target {metric.target_text()}" if metric.target is not None else ""
        ax.set_title(
            f"{metric.label.split(' (')[0]}\nratio {medians[0] / medians[1] if medians[1] else math.nan:.2f}{verdict}",
            fontsize=9,
        )
        ax.tick_params(labelsize=8)
    if scaling:
        ax_rate, ax_rss = axes[len(rows)], axes[len(rows) + 1]
        for name in (PLAINSOCKET, RAW_WS):
            runs = scaling[name]
            for size, style in zip(profile.scaling_sizes, ("-o", "--s"), strict=False):
                idx = [i for i, row in enumerate(runs[0]) if row["size"] == size]
                xs = [runs[0][i]["clients"] for i in idx]
                rate = [statistics.median(run[i]["rate"] for run in runs) for i in idx]
                rss = [statistics.median(run[i]["server_peak_rss_kib"] / 1024 for run in runs) for i in idx]
                label = f"{'plainsocket' if name == PLAINSOCKET else 'raw'}, {size:,} B"
                ax_rate.plot(xs, rate, style, color=colors[name], label=label)
                ax_rss.plot(xs, rss, style, color=colors[name], label=label)
        for ax, title in ((ax_rate, "fan-out deliveries/s by clients"), (ax_rss, "server peak RSS, MiB, by clients")):
            ax.set_xscale("log")
            ax.set_ylim(bottom=0)
            ax.set_title(title, fontsize=9)
            ax.tick_params(labelsize=8)
            ax.legend(fontsize=7)
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.suptitle(
        f"plainsocket vs raw websockets ({profile.name} run, median and min-max of {len(passes)})", fontsize=10
    )
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
        default=list(SCENARIOS),
        metavar="LIST",
        help=f"comma-separated scenarios to run, of {','.join(SCENARIOS)} (default: all)",
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    profile = QUICK if args.quick else FULL
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        print(
            f"run.py: unknown scenario(s) {', '.join(sorted(unknown))}; pick from {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    passes = args.passes or profile.passes
    # Only a complete full run replaces the report in results/; anything else goes to raw/.
    if args.out:
        out = args.out
    elif args.quick:
        out = RAW / "quick.md"
    elif set(args.only) != set(SCENARIOS):
        out = RAW / "partial.md"
    else:
        out = RESULTS / "latest.md"
    if not shutil.which(args.node):
        print(f"run.py: Node.js not found ({args.node}); run `npm ci` after installing Node 20", file=sys.stderr)
        return 2
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
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 30.0
    retries = args.retries if args.retries is not None else (0 if args.quick else 2)
    loadgen = Loadgen(args.node, load_cpus, args.client, retries)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: list[dict[str, Any]] = []
    scaling: dict[str, list[list[dict[str, Any]]]] = {PLAINSOCKET: [], RAW_WS: []} if args.scaling else {}
    notes: list[str] = []
    started = time.monotonic()
    commit = git_commit()  # before the run: the tree may change while it goes on
    try:
        for n in range(passes):
            # Alternate who goes first, so a drift of the machine does not favour one server.
            order = (PLAINSOCKET, RAW_WS) if n % 2 == 0 else (RAW_WS, PLAINSOCKET)
            this_pass: dict[str, Any] = {}
            for name in order:
                if args.wait_quiet:
                    busy = wait_for_quiet(args.wait_quiet)
                    if busy >= 15.0:
                        notes.append(f"pass {n + 1}: the machine was still {busy:.0f} % busy when {name} started")
                log = RAW / f"{stamp}-{name.replace(' ', '-')}-{n + 1}.log"
                print(f"pass {n + 1}/{passes}: {name} ...", file=sys.stderr, flush=True)
                with running(Server(name, commands[name], server_cpus, log)) as server:
                    raw, found = one_pass(server, loadgen, profile, args.only)
                this_pass[name] = {"raw": raw, "values": values(raw)}
                notes += [f"pass {n + 1}: {note}" for note in found]
                if args.scaling:
                    print(f"pass {n + 1}/{passes}: {name} scaling ...", file=sys.stderr, flush=True)
                    with running(Server(name, commands[name], server_cpus, log.with_suffix(".scaling.log"))) as server:
                        rows, found = scaling_pass(server, loadgen, profile)
                    scaling[name].append(rows)
                    notes += [f"pass {n + 1}: {note}" for note in found]
            results.append(this_pass)
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
    report, verdicts = render(profile, results, scaling, notes, info, judge=not args.quick)
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    RAW.mkdir(parents=True, exist_ok=True)
    dump = {"profile": profile.name, "commands": commands, "passes": results, "scaling": scaling, "notes": notes}
    (RAW / f"{stamp}-{profile.name}.json").write_text(json.dumps(dump, indent=1), encoding="utf-8")
    prune_raw()
    png = out.with_suffix(".png")
    if plot(png, profile, results, scaling):
        print(f"wrote {display(out)} and {display(png)}", file=sys.stderr)
    else:
        print(
            f"wrote {display(out)}; no plot: matplotlib is not installed (pip install -r bench/requirements.txt)",
            file=sys.stderr,
        )
    status = 0
    if lost := lossy(results, scaling):
        print(f"run.py: {lost} measurement(s) lost or refused frames or connections (see Anomalies)", file=sys.stderr)
        status = 1
    if args.check and any(met is False for _, _, met in verdicts):
        print("run.py: a target was missed", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
