"""Prometheus metrics of one server process: what it counts, and the text format it serves.

Counters and histograms are plain numbers bumped on the event loop by the server (no locks:
one thread writes them). Gauges are never kept by increments that could drift: they are read
from the server's live state when a scrape asks (:class:`LiveStats`).

Cardinality is bounded by construction. A label is one of:

- ``worker``: the stable index of a ``--workers`` child (added to every series it serves);
- ``namespace``: only namespaces the application registered (others are never counted
  under their own name: a client can not add a series by naming one);
- a fixed enum: ``reason``, ``result``.

Never a sid, a room, an event name, an address or anything else a client chooses.

The exposition is hand-written (format 0.0.4, ``text/plain; version=0.0.4``): it needs no
dependency, and a ``--workers`` parent merges its children's families without any of
prometheus_client's multiprocess machinery. :class:`PrometheusCollector` hands the same
families to an application's own prometheus_client registry.

This module imports nothing of the server: the server hands it a :class:`LiveStats`.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

PREFIX = "plainsocket_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Why a connection closed: the disconnect reasons of connection.py, as label values.
CLOSE_REASONS: dict[str, str] = {
    "client disconnect": "client",
    "transport close": "transport_close",
    "ping timeout": "ping_timeout",
    "slow consumer": "slow_consumer",
    "rate limited": "rate_limited",
    "server disconnect": "server",
    "server shutdown": "shutdown",
    "too many connections": "too_many_connections",
}
OTHER = "other"
REFUSAL_REASONS = ("origin", "host", "limits", "namespace", "connect_handler")
ACK_RESULTS = ("ok", "timeout", "disconnected")
RESUME_RESULTS = ("resumed", "failed")

HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FIRST_HANDLER_BOUND = HANDLER_BUCKETS[0]  # most handlers end within it: the server tests it first
BROADCAST_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LOOP_TICK = 0.5  # seconds between event-loop lag probes


# -- Families ---------------------------------------------------------------------------------

Labels = dict[str, str]


@dataclass(slots=True)
class Family:
    """One metric family: its name (without suffixes), type, help and samples."""

    name: str
    type: str  # counter, gauge, histogram
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Labels | None = None, suffix: str = "") -> Family:
        self.samples.append((self.name + suffix, labels or {}, value))
        return self

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "help": self.help, "samples": self.samples}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Family:
        samples = [
            (str(name), {str(k): str(v) for k, v in labels.items()}, float(value))
            for name, labels, value in data["samples"]
        ]
        return cls(str(data["name"]), str(data["type"]), str(data["help"]), samples)


def render(families: Iterable[Family]) -> str:
    """Render families in the Prometheus text format 0.0.4 (one HELP and TYPE per family)."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for name, labels, value in family.samples:
            if labels:
                inner = ",".join(f'{key}="{_escape_label(val)}"' for key, val in labels.items())
                lines.append(f"{name}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


def merge(parts: Iterable[Iterable[Family]]) -> list[Family]:
    """Merge the families of several processes by name (their samples differ by ``worker``)."""
    merged: dict[str, Family] = {}
    for families in parts:
        for family in families:
            into = merged.get(family.name)
            if into is None:
                merged[family.name] = Family(family.name, family.type, family.help, list(family.samples))
            elif into.type == family.type:
                into.samples.extend(family.samples)
    return list(merged.values())


def with_labels(families: Iterable[Family], labels: Labels) -> list[Family]:
    """Add ``labels`` (e.g. ``worker``) to every sample, first among its labels."""
    return [
        Family(f.name, f.type, f.help, [(name, {**labels, **own}, value) for name, own, value in f.samples])
        for f in families
    ]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


# -- Histograms -----------------------------------------------------------------------------


class Histogram:
    """Fixed buckets, counted per bucket (cumulative only when rendered)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add_to(self, family: Family, labels: Labels | None = None) -> None:
        labels = labels or {}
        total = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            family.add(total, {**labels, "le": _bound(bound)}, "_bucket")
        family.add(self.sum, labels, "_sum")
        family.add(total, labels, "_count")


# -- What a scrape reads from the server ------------------------------------------------------


@dataclass(slots=True)
class BackplaneStats:
    up: bool
    nodes: int
    queued: int
    lost: int
    missed: int
    roundtrip: float | None  # seconds of the last heartbeat ping through Redis, None before one


@dataclass(slots=True)
class LiveStats:
    """The server's state now, read at scrape time (never kept by increments)."""

    connections: int
    namespaces: dict[str, int]  # registered namespace -> live clients
    kept_sessions: int
    send_buffer_bytes: int
    send_buffer_max_bytes: int
    pending_acks: int
    backplane: BackplaneStats | None
    received_frames: int = 0  # by the live connections' sockets (closed ones are in the counter)
    sent_bytes: int = 0  # to them, likewise


class NamespaceMetrics:
    """What is counted for one registered namespace, in slots.

    The server puts a namespace's object in the context of each handler it runs, so that the
    handler's timing and the frames it sends add to attributes, with no dict lookup each.
    """

    __slots__ = ("errors", "handler", "sent")

    def __init__(self) -> None:
        self.sent = 0  # event and ack frames written to clients
        self.errors = 0  # handlers that raised
        self.handler = Histogram(HANDLER_BUCKETS)  # handler durations; its count is the events received


# -- The counters of one process --------------------------------------------------------------


class ServerMetrics:
    """What one server process counts; :meth:`families` adds the live gauges at scrape time.

    ``registered`` is the server's own mapping of namespaces: a namespace outside it is never
    a label value (its events are counted under the total only).
    """

    def __init__(self, registered: Mapping[str, Any], live: Callable[[], LiveStats]) -> None:
        self.registered = registered
        self.live = live
        self.started = time.time()
        self.opened = 0
        self.closed: dict[str, int] = {}
        self.refused: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        self.received_frames = 0
        self.namespaces: dict[str, NamespaceMetrics] = {}  # registered namespaces that saw something
        self.bytes_in = 0
        self.bytes_out = 0
        self.acks: dict[str, int] = dict.fromkeys(ACK_RESULTS, 0)
        self.resumes: dict[str, int] = dict.fromkeys(RESUME_RESULTS, 0)
        self.broadcast_seconds = Histogram(BROADCAST_BUCKETS)
        self.loop_lag = 0.0

    # Hooks, called by the server on its loop. Cheap: a dict lookup and an addition.

    def connection_opened(self) -> None:
        self.opened += 1

    def connection_closed(self, reason: str) -> None:
        label = CLOSE_REASONS.get(reason, OTHER)
        self.closed[label] = self.closed.get(label, 0) + 1

    def connection_refused(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def namespace(self, namespace: str) -> NamespaceMetrics | None:
        """The metrics of ``namespace``; None for a namespace the application did not register."""
        found = self.namespaces.get(namespace)
        if found is None and namespace in self.registered:
            found = self.namespaces[namespace] = NamespaceMetrics()
        return found

    def frames_sent(self, namespace: str, count: int) -> None:
        found = self.namespace(namespace)
        if found is not None:
            found.sent += count

    def ack(self, result: str) -> None:
        self.acks[result] += 1

    def handler_failed(self, namespace: str) -> None:
        found = self.namespace(namespace)
        if found is not None:
            found.errors += 1

    def event_handled(self, namespace: str, seconds: float) -> None:
        """One event of ``namespace`` went through its handler in ``seconds`` (its count is the histogram's)."""
        found = self.namespace(namespace)
        if found is not None:
            found.handler.observe(seconds)

    @property
    def received(self) -> dict[str, int]:
        """Events handled per namespace: the handler histograms' counts."""
        return {namespace: found.handler.count for namespace, found in self.namespaces.items()}

    @property
    def sent(self) -> dict[str, int]:
        """Event and ack frames written per namespace."""
        return {namespace: found.sent for namespace, found in self.namespaces.items()}

    @property
    def handler_errors(self) -> dict[str, int]:
        """Event handlers that raised, per namespace."""
        return {namespace: found.errors for namespace, found in self.namespaces.items()}

    def resume(self, result: str) -> None:
        self.resumes[result] += 1

    async def watch_loop(self, tick: float = LOOP_TICK) -> None:
        """Measure event-loop lag: how late a sleep of ``tick`` seconds wakes up."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(tick)
            self.loop_lag = max(0.0, loop.time() - start - tick)

    # The exposition.

    def families(self) -> list[Family]:
        """Every family of this process: counters, histograms, live gauges, process metrics."""
        live = self.live()
        namespaces = sorted(self.registered)
        p = PREFIX
        out = [
            Family(p + "connections", "gauge", "WebSocket clients connected now (kept sessions excluded)").add(
                live.connections
            ),
            _per_namespace(
                Family(p + "namespace_connections", "gauge", "Clients connected now to each registered namespace"),
                namespaces,
                live.namespaces,
            ),
            Family(p + "connections_opened_total", "counter", "WebSocket connections accepted").add(self.opened),
            _by(
                Family(p + "connections_closed_total", "counter", "WebSocket connections closed, by reason"),
                "reason",
                [*CLOSE_REASONS.values(), OTHER],
                self.closed,
            ),
            _by(
                Family(p + "connections_refused_total", "counter", "Connections or namespace joins refused, by reason"),
                "reason",
                list(self.refused),
                self.refused,
            ),
            Family(p + "received_frames_total", "counter", "Frames received from clients").add(
                self.received_frames + live.received_frames
            ),
            _per_namespace(
                Family(p + "events_received_total", "counter", "Events handled in each registered namespace"),
                namespaces,
                self.received,
            ),
            _per_namespace(
                Family(p + "frames_sent_total", "counter", "Event and ack frames written to clients, per namespace"),
                namespaces,
                self.sent,
            ),
            Family(p + "received_bytes_total", "counter", "Bytes received on client sockets").add(self.bytes_in),
            Family(p + "sent_bytes_total", "counter", "Bytes of frames written to client sockets").add(
                self.bytes_out + live.sent_bytes
            ),
            _by(
                Family(p + "acks_total", "counter", "Acknowledgements the server asked clients for, by result"),
                "result",
                list(ACK_RESULTS),
                self.acks,
            ),
            _per_namespace(
                Family(p + "handler_errors_total", "counter", "Event handlers that raised, per namespace"),
                namespaces,
                self.handler_errors,
            ),
        ]
        handlers = Family(p + "handler_duration_seconds", "histogram", "Time spent in event handlers, per namespace")
        for namespace in namespaces:
            found = self.namespaces.get(namespace)
            histogram = found.handler if found is not None else Histogram(HANDLER_BUCKETS)
            histogram.add_to(handlers, {"namespace": namespace})
        broadcast = Family(
            p + "broadcast_duration_seconds", "histogram", "Time to write one broadcast to local clients"
        )
        self.broadcast_seconds.add_to(broadcast)
        out += [
            handlers,
            broadcast,
            Family(p + "send_buffer_bytes", "gauge", "Bytes waiting in clients' send buffers, summed").add(
                live.send_buffer_bytes
            ),
            Family(p + "send_buffer_max_bytes", "gauge", "Bytes waiting in the fullest send buffer").add(
                live.send_buffer_max_bytes
            ),
            Family(p + "pending_acks", "gauge", "Acknowledgements the server is waiting for").add(live.pending_acks),
            Family(p + "recovery_sessions", "gauge", "Dropped sessions kept for a resume").add(live.kept_sessions),
            _by(
                Family(p + "recovery_resumes_total", "counter", "Resume attempts, by result"),
                "result",
                list(RESUME_RESULTS),
                self.resumes,
            ),
            Family(p + "event_loop_lag_seconds", "gauge", "How late the event loop ran a timer, last probe").add(
                self.loop_lag
            ),
            Family(p + "start_time_seconds", "gauge", "When this process started serving, Unix time").add(self.started),
        ]
        if live.backplane is not None:
            out += _backplane_families(live.backplane)
        out += process_families()
        return out


def _by(family: Family, label: str, values: list[str], counts: Mapping[str, int]) -> Family:
    """One sample per enum value, zeros included: a series exists before its first event."""
    for value in values:
        family.add(counts.get(value, 0), {label: value})
    return family


def _per_namespace(family: Family, namespaces: list[str], counts: Mapping[str, int]) -> Family:
    for namespace in namespaces:
        family.add(counts.get(namespace, 0), {"namespace": namespace})
    return family


def _backplane_families(stats: BackplaneStats) -> list[Family]:
    p = PREFIX + "backplane_"
    families = [
        Family(p + "up", "gauge", "Whether this node both hears and reaches Redis (1) or not (0)").add(int(stats.up)),
        Family(p + "nodes", "gauge", "Nodes of the cluster seen alive by their heartbeat").add(stats.nodes),
        Family(p + "queue_messages", "gauge", "Messages waiting to be published to Redis").add(stats.queued),
        Family(p + "lost_total", "counter", "Messages this node sent that not every node received").add(stats.lost),
        Family(p + "missed_total", "counter", "Messages from other nodes this node never received").add(stats.missed),
    ]
    if stats.roundtrip is not None:
        families.append(
            Family(p + "roundtrip_seconds", "gauge", "Last heartbeat ping through Redis and back").add(stats.roundtrip)
        )
    return families


# -- Process metrics (the standard names of prometheus_client's process collector) ------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = resource.getpagesize()


def process_families() -> list[Family]:
    """process_* metrics from /proc/self where there is one, else what ``resource`` knows."""
    families: list[Family] = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = Family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds")
    families.append(cpu.add(usage.ru_utime + usage.ru_stime))
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as system:
            boot = next(float(line.split()[1]) for line in system if line.startswith(b"btime"))
        families += [
            Family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes").add(int(fields[20])),
            Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes").add(
                int(fields[21]) * _PAGE
            ),
            Family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds").add(
                boot + int(fields[19]) / _TICKS
            ),
            Family("process_open_fds", "gauge", "Number of open file descriptors").add(
                len(os.listdir("/proc/self/fd"))
            ),
        ]
    except (OSError, IndexError, ValueError, StopIteration):
        families.append(
            Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes (peak)").add(
                usage.ru_maxrss * 1024
            )
        )
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        families.append(Family("process_max_fds", "gauge", "Maximum number of open file descriptors").add(soft))
    return families


def resident_memory() -> int:
    """This process's resident memory in bytes (its peak where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- An application's own prometheus_client registry ---------------------------------------


class PrometheusCollector:
    """Hand plainsocket's families to a prometheus_client registry::

        from prometheus_client import REGISTRY
        REGISTRY.register(PrometheusCollector(socketio.metrics_families))

    ``families`` is called on each scrape, from whichever thread scrapes; pass
    :meth:`SocketServer.metrics_families`, which reads the server's state on its own loop.
    ``process`` (default False) leaves out the process_* families, which prometheus_client's
    default registry already has.
    """

    def __init__(self, families: Callable[[], list[Family]], *, process: bool = False) -> None:
        self._families = families
        self._process = process

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import Metric

        for family in self._families():
            if not self._process and family.name.startswith("process_"):
                continue
            name = family.name
            kind = family.type
            if kind == "counter":
                name = name.removesuffix("_total")  # prometheus_client adds it back
            metric = Metric(name, family.help, kind)
            for sample_name, labels, value in family.samples:
                metric.add_sample(sample_name, labels, value)
            yield metric


def on_loop(
    loop: asyncio.AbstractEventLoop | None, loop_thread: int, fn: Callable[[], Any], timeout: float = 2.0
) -> Any:
    """Call ``fn`` on ``loop`` and wait for its result when called from another thread."""
    if loop is None or threading.get_ident() == loop_thread or not loop.is_running():
        return fn()

    async def call() -> Any:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)
