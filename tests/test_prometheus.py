"""A real Prometheus scrapes ``--workers 2 --redis``: every worker's series on one target."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import require
from redis_server import free_port
from websockets.asyncio.client import connect

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SCRAPE = 1.0  # seconds between scrapes


class Prometheus:
    """Debian's prometheus on loopback, scraping one target every second, in a temp folder."""

    def __init__(self, target: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="prometheus-test-"))
        config = self.folder / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
            "scrape_configs:\n  - job_name: plainsocket\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)  # still starting: nothing to await but its port
        raise RuntimeError("prometheus did not start")

    def query(self, expression: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=5) as response:
            reply = json.load(response)
        assert reply["status"] == "success", reply
        return reply["data"]["result"]  # type: ignore[no-any-return]

    def scalar(self, expression: str) -> float | None:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def prometheus_for() -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        started.append(Prometheus(target))
        return started[-1]

    yield start
    for prometheus in started:
        prometheus.stop()


async def until(check: Any, timeout: float, what: str) -> Any:
    """Poll Prometheus until ``check()`` is truthy (what it reports changes at each scrape)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(check)
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen in {timeout} s: {what}")
        await asyncio.sleep(0.2)


def worker_pids(parent: int) -> dict[str, int]:
    """Worker index -> pid of the children of a --workers parent."""
    found = {}
    for child in psutil.Process(parent).children():
        try:
            found[child.environ().get("PLAINSOCKET_WORKER", "?")] = child.pid
        except psutil.Error:  # exited (a zombie until the parent reaps it)
            pass
    return found


async def chatter(url: str, stop: asyncio.Event, sent: list[int]) -> None:
    """One client of /test sending 'my event' every 50 ms until ``stop`` (or 60 s), reading what comes."""
    async with connect(url) as ws:
        await ws.recv()  # connect of /
        await ws.send(json.dumps({"event": "connect", "namespace": "/test", "data": None}))

        async def drain() -> None:
            async for _ in ws:
                pass

        reader = asyncio.ensure_future(drain())
        deadline = time.monotonic() + 60
        try:
            while not stop.is_set() and time.monotonic() < deadline and not reader.done():
                await ws.send(json.dumps({"event": "my event", "namespace": "/test", "data": {"data": "x"}}))
                sent[0] += 1
                try:
                    await asyncio.wait_for(stop.wait(), 0.05)
                except TimeoutError:
                    pass
        except Exception:
            pass  # its worker was killed: the test goes on with the others
        finally:
            reader.cancel()


async def test_prometheus_scrapes_two_workers(redis_server: Any, server_process: Any, prometheus_for: Any) -> None:
    """10 clients -> sum(plainsocket_connections) == 10; a dead worker is down in 2 scrapes; rate() does not spike."""
    require(os.access(PROMETHEUS, os.X_OK), "prometheus (apt-get install prometheus)")
    metrics_port = free_port()
    server = server_process("--workers", "2", "--redis", redis_server.url, "--metrics-port", str(metrics_port))
    prometheus = prometheus_for(f"127.0.0.1:{metrics_port}")
    await until(lambda: prometheus.scalar('count(plainsocket_worker_up == 1)') == 2, 20, "both workers up")
    assert prometheus.scalar('up{job="plainsocket"}') == 1

    stop, sent = asyncio.Event(), [0]
    clients = [asyncio.ensure_future(chatter(server.url, stop, sent)) for _ in range(10)]
    try:
        await until(lambda: prometheus.scalar("sum(plainsocket_connections)") == 10, 10, "10 connections")
        in_test = "sum(plainsocket_namespace_connections{namespace='/test'})"
        await until(lambda: prometheus.scalar(in_test) == 10, 5, "10 clients in /test")
        rate = "sum(rate(plainsocket_frames_sent_total[4s]))"
        await until(lambda: (prometheus.scalar(rate) or 0) > 50, 10, "steady traffic")
        await asyncio.sleep(4 * SCRAPE)
        steady = prometheus.scalar(f"max_over_time({rate}[5s:500ms])")
        assert steady is not None and steady > 50
        assert sent[0] > 0

        # Stop the worker that holds most clients: it stops answering, and is down within two scrapes.
        per_worker = {r["metric"]["worker"]: float(r["value"][1]) for r in prometheus.query("plainsocket_connections")}
        victim = max(per_worker, key=lambda w: per_worker[w])
        pid = worker_pids(server.proc.pid)[victim]
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        down = f'plainsocket_worker_up{{worker="{victim}"}} == 0'
        await until(lambda: prometheus.query(down), 2 * SCRAPE + 1.0, f"worker {victim} down")
        assert time.monotonic() - stopped_at <= 2 * SCRAPE + 1.0
        survivor = "1" if victim == "0" else "0"
        assert prometheus.scalar(f'plainsocket_worker_up{{worker="{survivor}"}}') == 1

        # Kill it: the parent starts a new one under the same index; its counters start at zero.
        started_at = time.time()
        os.kill(pid, signal.SIGKILL)
        await until(
            lambda: worker_pids(server.proc.pid).get(victim) not in (None, pid), 10, f"worker {victim} restarted"
        )
        restarted = (
            f'plainsocket_worker_up{{worker="{victim}"}} == 1'
            f" and on(worker) plainsocket_start_time_seconds > {started_at}"
        )
        await until(lambda: prometheus.query(restarted), 15, f"worker {victim} back with fresh counters")
        await asyncio.sleep(3 * SCRAPE)  # let rate() windows span the restart

        # Per-worker counters: the reset of one worker is a reset of its own series only.
        window = f"{int(time.time() - started_at) + 1}s"
        peak = prometheus.scalar(f"max_over_time({rate}[{window}:500ms])")
        assert peak is not None
        assert peak < 1.5 * steady, f"rate spiked after the restart: {peak}/s against {steady}/s before"
        resets = prometheus.scalar(f'sum(resets(plainsocket_frames_sent_total{{worker="{victim}"}}[1m]))')
        assert resets is not None and resets >= 1
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
    code, _, err = server.stop()
    assert code == 0, err[-2000:]
