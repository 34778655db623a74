"""Prometheus metrics: the text format, what is counted, bounded cardinality, the bridge."""

from __future__ import annotations

import asyncio
import functools
import time
import urllib.request
from typing import Any

import pytest
from conftest import running
from prometheus_client.parser import text_string_to_metric_families
from wire import Wire

from plainsocket import SocketServer, emit, join_room
from plainsocket.metrics import Family, Histogram, render


def scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


async def fetch(url: str) -> str:
    content_type, body = await asyncio.to_thread(scrape, url)
    assert content_type.startswith("text/plain; version=0.0.4")
    return body


def parse(body: str) -> dict[str, Any]:
    """Parse with prometheus_client's own parser; assert one HELP/TYPE per family."""
    types = [line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), "a family has two TYPE lines"
    return {family.name: family for family in text_string_to_metric_families(body)}


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of the one sample named ``name`` whose labels include ``labels``."""
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


def series(body: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in body.splitlines() if line and not line.startswith("#")}


def app(**options: Any) -> SocketServer:
    socketio = SocketServer(metrics=True, **options)

    @socketio.on("echo", namespace="/chat")
    def echo(data: Any) -> Any:
        return data

    @socketio.on("shout", namespace="/chat")
    def shout(data: Any) -> None:
        emit("shouted", data, broadcast=True)

    @socketio.on("join", namespace="/chat")
    def join(room: str) -> None:
        join_room(room)

    @socketio.on("boom", namespace="/chat")
    def boom(_: Any) -> None:
        raise RuntimeError("boom")

    @socketio.on("*", namespace="/chat")
    def anything(event: str, data: Any) -> None:
        pass

    @socketio.on("connect", namespace="/private")
    def private(auth: Any) -> bool:
        return False

    return socketio


def test_render_escapes_and_parses() -> None:
    """Label values and help text with backslashes, quotes and newlines survive the parser."""
    family = Family("plainsocket_x", "gauge", 'help with \\ and\nnewline').add(1.5, {"namespace": 'a"b\\c\nd'})
    parsed = parse(render([family]))
    sample = parsed["plainsocket_x"].samples[0]
    assert sample.labels["namespace"] == 'a"b\\c\nd'
    assert sample.value == 1.5
    assert parsed["plainsocket_x"].documentation == "help with \\ and\nnewline"


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram((0.1, 1.0))
    for seconds in (0.05, 0.5, 0.5, 5.0):
        histogram.observe(seconds)
    family = Family("plainsocket_h_seconds", "histogram", "h")
    histogram.add_to(family)
    parsed = parse(render([family]))
    buckets = {s.labels["le"]: s.value for s in parsed["plainsocket_h_seconds"].samples if s.name.endswith("_bucket")}
    assert buckets == {"0.1": 1, "1.0": 3, "+Inf": 4}
    assert value(parsed, "plainsocket_h_seconds_count") == 4


async def test_counts_what_happens() -> None:
    """Connections, events, frames, bytes, errors, refusals and handler time are counted."""
    socketio = app()
    async with running(socketio) as url:
        metrics_url = f"http://127.0.0.1:{socketio.port}/metrics"
        a, b = await Wire.open(url), await Wire.open(url)
        for client in (a, b):
            await client.join("/chat")
        assert (await a.call("echo", "hi", "/chat"))["data"] == "hi"
        await a.send("shout", "all", "/chat")
        await a.expect("shouted", "/chat")
        await b.expect("shouted", "/chat")
        assert (await a.call("boom", None, "/chat", id=2))["data"]["code"] == "handler_error"
        await a.send("connect", None, "/private")
        await a.expect("connect_error", "/private")
        await a.send("connect", None, "/nowhere")
        await a.expect("connect_error", "/nowhere")
        families = parse(await fetch(metrics_url))
        assert value(families, "plainsocket_connections") == 2
        assert value(families, "plainsocket_namespace_connections", namespace="/chat") == 2
        assert value(families, "plainsocket_connections_opened_total") == 2
        assert value(families, "plainsocket_events_received_total", namespace="/chat") == 3
        # One ack, the broadcast to two clients (the error frame is not an event).
        assert value(families, "plainsocket_frames_sent_total", namespace="/chat") == 3
        assert value(families, "plainsocket_handler_errors_total", namespace="/chat") == 1
        assert value(families, "plainsocket_connections_refused_total", reason="connect_handler") == 1
        assert value(families, "plainsocket_connections_refused_total", reason="namespace") == 1
        assert value(families, "plainsocket_handler_duration_seconds_count", namespace="/chat") >= 3
        assert value(families, "plainsocket_broadcast_duration_seconds_count") == 1
        assert value(families, "plainsocket_received_bytes_total") > 100
        assert value(families, "plainsocket_sent_bytes_total") > 100
        frames_before = value(families, "plainsocket_received_frames_total")
        sent_before = value(families, "plainsocket_sent_bytes_total")
        assert frames_before >= 5
        assert value(families, "process_resident_memory_bytes") > 1e6
        assert families["plainsocket_connections_closed"].type == "counter"
        assert families["plainsocket_handler_duration_seconds"].type == "histogram"
        await b.ws.close()
        await b.ws.wait_closed()
        for _ in range(100):
            families = parse(await fetch(metrics_url))
            if value(families, "plainsocket_connections") == 1:
                break
            await asyncio.sleep(0.02)
        assert value(families, "plainsocket_connections") == 1
        assert value(families, "plainsocket_connections_closed_total", reason="client") == 1
        # Counted on each connection, moved into the counters when its socket closes: no drop.
        assert value(families, "plainsocket_received_frames_total") >= frames_before
        assert value(families, "plainsocket_sent_bytes_total") >= sent_before
        await a.ws.close()


def buckets(families: dict[str, Any], name: str, namespace: str) -> dict[str, float]:
    """The cumulative bucket counts of histogram ``name`` for ``namespace``, by their ``le``."""
    return {
        sample.labels["le"]: sample.value
        for sample in families[name].samples
        if sample.name == name + "_bucket" and sample.labels.get("namespace") == namespace
    }


async def test_handler_time_is_the_handlers_own() -> None:
    """A slow handler lands in its bucket; a frame queued behind an async one is timed from its start."""
    socketio = SocketServer(metrics=True)

    @socketio.on("slow", namespace="/slow")
    def slow(_: Any) -> str:
        deadline = time.perf_counter() + 0.03
        while time.perf_counter() < deadline:  # busy: the loop's own 30 ms
            pass
        return "done"

    @socketio.on("wait", namespace="/queue")
    async def wait(_: Any) -> str:
        await asyncio.sleep(0.3)
        return "waited"

    @socketio.on("quick", namespace="/queue")
    def quick(_: Any) -> str:
        return "quick"

    async with running(socketio) as url:
        client = await Wire.open(url)
        await client.join("/slow")
        await client.join("/queue")
        assert (await client.call("slow", None, "/slow"))["data"] == "done"
        await client.send("wait", None, "/queue", id=2)
        await client.send("quick", None, "/queue", id=3)  # waits 0.3 s behind "wait"
        replies = [await client.expect("ack", "/queue"), await client.expect("ack", "/queue")]
        assert [reply["data"] for reply in replies] == ["waited", "quick"]
        families = parse(await fetch(f"http://127.0.0.1:{socketio.port}/metrics"))
        name = "plainsocket_handler_duration_seconds"
        slow_buckets = buckets(families, name, "/slow")
        assert slow_buckets["0.025"] == 0 and slow_buckets["+Inf"] == 1
        assert value(families, name + "_sum", namespace="/slow") >= 0.03
        queue_buckets = buckets(families, name, "/queue")
        assert queue_buckets["0.1"] == 1, queue_buckets  # "quick", not its 0.3 s in the queue
        assert queue_buckets["0.25"] == 1 and queue_buckets["+Inf"] == 2


async def test_decoding_a_big_frame_is_not_handler_time() -> None:
    """A frame that takes tens of milliseconds to decode, for a handler that does nothing."""
    socketio = SocketServer(metrics=True)

    @socketio.on("big", namespace="/big")
    def big(data: Any) -> int:
        return len(data)

    async with running(socketio) as url:
        client = await Wire.open(url)
        await client.join("/big")
        items = [{"k": n, "v": "x"} for n in range(30_000)]  # 600 kB of brackets: json's strict parser
        started = time.perf_counter()
        assert (await client.call("big", items, "/big"))["data"] == 30_000
        assert time.perf_counter() - started > 0.025  # the decoding took that long at least
        families = parse(await fetch(f"http://127.0.0.1:{socketio.port}/metrics"))
        assert buckets(families, "plainsocket_handler_duration_seconds", "/big")["0.025"] == 1


async def test_wrapped_async_handler_counts_once_with_its_await() -> None:
    """An async handler behind a decorator, with functools.wraps or without, is one event."""
    socketio = SocketServer(metrics=True)

    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            return fn(*args)  # a coroutine, which the server awaits

        return wrapper

    def hidden(fn: Any) -> Any:
        return lambda *args: fn(*args)  # no __wrapped__: the server finds the coroutine when called

    @socketio.on("nap", namespace="/nap")
    @logged
    async def nap(_: Any) -> str:
        await asyncio.sleep(0.05)
        return "rested"

    @socketio.on("nap", namespace="/hidden")
    @hidden
    async def hidden_nap(_: Any) -> str:
        await asyncio.sleep(0.05)
        return "rested"

    async with running(socketio) as url:
        client = await Wire.open(url)
        for namespace in ("/nap", "/hidden"):
            await client.join(namespace)
            assert (await client.call("nap", None, namespace))["data"] == "rested"
        families = parse(await fetch(f"http://127.0.0.1:{socketio.port}/metrics"))
        for namespace in ("/nap", "/hidden"):
            assert value(families, "plainsocket_events_received_total", namespace=namespace) == 1
        nap_buckets = buckets(families, "plainsocket_handler_duration_seconds", "/nap")
        assert nap_buckets["0.025"] == 0 and nap_buckets["+Inf"] == 1


async def test_an_emit_from_a_handlers_thread_is_counted() -> None:
    socketio = SocketServer(metrics=True)

    @socketio.on("work", namespace="/work")
    async def work(_: Any) -> None:
        await asyncio.to_thread(emit, "done", "in a thread")

    async with running(socketio) as url:
        client = await Wire.open(url)
        await client.join("/work")
        await client.send("work", None, "/work")
        assert (await client.expect("done", "/work"))["data"] == "in a thread"
        families = parse(await fetch(f"http://127.0.0.1:{socketio.port}/metrics"))
        assert value(families, "plainsocket_frames_sent_total", namespace="/work") == 1


async def test_an_event_with_an_error_handler_counts_once() -> None:
    """The error handler's run is not a second event received."""
    socketio = SocketServer(metrics=True)

    @socketio.on("boom", namespace="/err")
    def boom(_: Any) -> None:
        raise RuntimeError("boom")

    @socketio.on_error("/err")
    def failed(exc: Exception) -> None:
        emit("failed", str(exc))

    async with running(socketio) as url:
        client = await Wire.open(url)
        await client.join("/err")
        assert (await client.call("boom", None, "/err"))["data"]["code"] == "handler_error"
        assert (await client.expect("failed", "/err"))["data"] == "boom"
        families = parse(await fetch(f"http://127.0.0.1:{socketio.port}/metrics"))
        assert value(families, "plainsocket_events_received_total", namespace="/err") == 1
        assert value(families, "plainsocket_handler_duration_seconds_count", namespace="/err") == 1
        assert value(families, "plainsocket_handler_errors_total", namespace="/err") == 1


async def test_acks_by_result() -> None:
    """Server calls are counted as ok, timeout or disconnected."""
    socketio = app()
    async with running(socketio) as url:
        client = await Wire.open(url)
        await client.join("/chat")
        sid = client.sid
        call = asyncio.ensure_future(socketio.call("question", 1, to=sid, namespace="/chat", timeout=5))
        asked = await client.expect("question", "/chat")
        await client.send("ack", 42, "/chat", asked["id"])
        assert await call == 42
        with pytest.raises(Exception, match="no acknowledgement"):
            await socketio.call("question", 2, to=sid, namespace="/chat", timeout=0.05)
        families = parse(await fetch(f"http://127.0.0.1:{socketio.port}/metrics"))
        assert value(families, "plainsocket_acks_total", result="ok") == 1
        assert value(families, "plainsocket_acks_total", result="timeout") == 1
        await client.ws.close()


async def test_hostile_names_add_no_series() -> None:
    """10,000 distinct event names, room names and unknown namespaces add not a single series."""
    socketio = app(rate_limit=1e9, rate_burst=10**6, max_rooms=20_000)
    async with running(socketio) as url:
        metrics_url = f"http://127.0.0.1:{socketio.port}/metrics"
        client = await Wire.open(url)
        await client.join("/chat")
        await client.call("echo", "warm", "/chat")
        before = series(await fetch(metrics_url))
        for n in range(10_000):
            await client.send(f"event-{n}", None, "/chat")
            await client.send("join", f"room-{n}", "/chat")
            if n % 10 == 0:
                await client.send("connect", None, f"/ns-{n}")
                await client.send(f"x-{n}", None, f"/ns-{n}")
        assert (await client.call("echo", "done", "/chat", id=99))["data"] == "done"
        assert len(socketio.rooms(client.sid, namespace="/chat")) == 10_001
        after_body = await fetch(metrics_url)
        assert series(after_body) == before
        assert "event-" not in after_body and "room-" not in after_body and "/ns-" not in after_body
        parsed = parse(after_body)
        assert value(parsed, "plainsocket_events_received_total", namespace="/chat") >= 20_002
        await client.ws.close()


async def test_separate_port_and_shared_port_404() -> None:
    """With metrics_port the main port has no /metrics; the loopback listener has it, GET only."""
    socketio = app(metrics_port=0)
    async with running(socketio):
        listener = socketio._metrics_listeners[0]
        port = listener.sockets[0].getsockname()[1]
        parse(await fetch(f"http://127.0.0.1:{port}/metrics"))
        with pytest.raises(urllib.error.HTTPError) as missing:
            await asyncio.to_thread(scrape, f"http://127.0.0.1:{socketio.port}/metrics")
        missing.value.close()
        assert missing.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as elsewhere:
            await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/")
        elsewhere.value.close()
        assert elsewhere.value.code == 404
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError) as posted:
            await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
        posted.value.close()
        assert posted.value.code == 405


async def test_metrics_off_by_default() -> None:
    socketio = SocketServer()
    async with running(socketio):
        assert socketio.metrics_families() == []
        with pytest.raises(urllib.error.HTTPError) as missing:
            await asyncio.to_thread(scrape, f"http://127.0.0.1:{socketio.port}/metrics")
        missing.value.close()
        assert missing.value.code == 404


async def test_an_apps_own_registry() -> None:
    """An application registers plainsocket's collector in its prometheus_client registry."""
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from plainsocket.metrics import PrometheusCollector

    socketio = app()
    registry = CollectorRegistry()
    Counter("myapp_logins", "logins", registry=registry).inc()
    registry.register(PrometheusCollector(socketio.metrics_families))
    async with running(socketio) as url:
        client = await Wire.open(url)
        await client.join("/chat")
        # prometheus_client scrapes from its own thread: the families are read on the loop.
        body = (await asyncio.to_thread(generate_latest, registry)).decode()
        families = parse(body)
        assert value(families, "myapp_logins_total") == 1
        assert value(families, "plainsocket_connections") == 1
        assert value(families, "plainsocket_connections_opened_total") == 1
        assert "process_cpu_seconds_total" not in body
        await client.ws.close()


async def test_backplane_metrics_while_redis_is_down(redis_server: Any) -> None:
    """Backplane series are there with Redis up; with Redis gone a scrape still answers, up=0."""
    socketio = app(message_queue=redis_server.url, heartbeat_interval=0.1)
    async with running(socketio):
        metrics_url = f"http://127.0.0.1:{socketio.port}/metrics"
        for _ in range(100):
            families = parse(await fetch(metrics_url))
            if "plainsocket_backplane_roundtrip_seconds" in families:
                break
            await asyncio.sleep(0.05)
        assert value(families, "plainsocket_backplane_up") == 1
        assert value(families, "plainsocket_backplane_nodes") == 1
        assert 0 < value(families, "plainsocket_backplane_roundtrip_seconds") < 1
        redis_server.stop()
        for _ in range(100):
            families = parse(await fetch(metrics_url))
            if value(families, "plainsocket_backplane_up") == 0:
                break
            await asyncio.sleep(0.05)
        assert value(families, "plainsocket_backplane_up") == 0
        assert value(families, "plainsocket_connections") == 0


async def test_promtool_finds_nothing_to_lint() -> None:
    """Prometheus' own linter (promtool check metrics) accepts the exposition without a remark."""
    import shutil
    import subprocess

    from conftest import require

    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool (apt-get install prometheus)")
    socketio = app(message_queue=None)
    async with running(socketio) as url:
        client = await Wire.open(url)
        await client.join("/chat")
        await client.call("echo", 1, "/chat")
        body = await fetch(f"http://127.0.0.1:{socketio.port}/metrics")
        await client.ws.close()
    command = [promtool, "check", "metrics"]
    checked = await asyncio.to_thread(subprocess.run, command, input=body, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and checked.stdout + checked.stderr == "", checked.stdout + checked.stderr
