"""The client's command line (``plainsocket client URL ...``) on bad input and outages.

Every bad input is one line on stderr and an exit status (2: usage, 1: connection or server
error), never a traceback or a wait for an answer that already came. Real servers on
127.0.0.1: the demo app in a subprocess, and small scripted WebSocket servers.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ROOT, ServerProcess
from websockets.asyncio.server import ServerConnection, serve

from plainsocket.client import Client
from plainsocket.protocol import ProtocolError


async def run_cli(*args: str, timeout: float = 20) -> tuple[int, list[dict[str, Any]], str, float]:
    """Run ``python -m plainsocket client ARGS``; return exit code, stdout frames, stderr, seconds."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "plainsocket",
        "client",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    frames = [json.loads(line) for line in out.decode().splitlines()]
    return proc.returncode, frames, err.decode(), time.monotonic() - started


def one_line(err: str) -> str:
    """Assert ``err`` is one non-empty line without a traceback; return it."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].split("error:", 1)[-1].strip(), err  # never an empty "error:"
    return lines[0]


@pytest.fixture
def demo(server_process: Callable[..., ServerProcess]) -> ServerProcess:
    return server_process()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.asyncio
@pytest.mark.parametrize("url", ["127.0.0.1:{port}", "ws//127.0.0.1:{port}", "ftp://127.0.0.1:{port}", "ws://"])
async def test_a_url_that_is_not_a_server_url_is_a_usage_error(demo: ServerProcess, url: str) -> None:
    """A scheme-less or mistyped URL: exit 2 and one line that says what a URL looks like."""
    code, frames, err, _ = await run_cli(url.format(port=demo.port))
    assert code == 2 and frames == []
    assert "use ws://host:port" in one_line(err)


@pytest.mark.asyncio
async def test_http_urls_are_taken_as_ws(demo: ServerProcess) -> None:
    """http://host:port, as the server prints it when it starts, connects like ws://."""
    code, frames, err, _ = await run_cli(f"http://127.0.0.1:{demo.port}", "--wait", "0.1")
    assert code == 0, err
    assert frames[0]["event"] == "connect" and frames[0]["namespace"] == "/"


@pytest.mark.asyncio
async def test_wss_against_a_plain_server_says_what_happened(demo: ServerProcess) -> None:
    """wss:// to a plain ws:// server: exit 1 and a line naming the TLS failure."""
    code, _, err, _ = await run_cli(f"wss://127.0.0.1:{demo.port}")
    assert code == 1
    assert "TLS handshake" in one_line(err) and "plain ws://" in err


@pytest.mark.asyncio
async def test_a_closed_port_says_connection_refused() -> None:
    """Nothing listens: exit 1, one line."""
    code, _, err, _ = await run_cli(f"ws://127.0.0.1:{free_port()}")
    assert code == 1 and "connection refused" in one_line(err)


@pytest.mark.asyncio
async def test_a_namespace_without_a_slash_is_joined_at_once(demo: ServerProcess) -> None:
    """--namespace test means /test (as socket.io reads a path), not a 10 s wait."""
    code, frames, err, seconds = await run_cli(demo.url, "--namespace", "test", "--wait", "0.1")
    assert code == 0, err
    assert ("connect", "/test") in [(f["event"], f["namespace"]) for f in frames]
    assert seconds < 5


@pytest.mark.asyncio
async def test_an_invalid_namespace_is_a_usage_error(demo: ServerProcess) -> None:
    """A namespace the protocol can not carry is refused before connecting."""
    code, frames, err, _ = await run_cli(demo.url, "--namespace", "/" + "x" * 300)
    assert code == 2 and frames == [] and "longer than" in one_line(err)


async def _answers_connect_with_an_error(ws: ServerConnection) -> None:
    """Greet, then answer every namespace connect with an id-less error on that namespace."""
    await ws.send(json.dumps({"event": "connect", "namespace": "/", "data": {"sid": "s1", "protocol": 1}}))
    async for text in ws:
        frame = json.loads(text)
        if frame["event"] == "connect":
            data = {"code": "bad_thing", "message": "no such room service"}
            await ws.send(json.dumps({"event": "error", "namespace": frame["namespace"], "data": data}))


@pytest.mark.asyncio
async def test_an_error_answering_a_connect_fails_it_at_once() -> None:
    """An error event answering a connect ends the wait at once: library and CLI."""
    async with serve(_answers_connect_with_an_error, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        code, _, err, seconds = await run_cli(url, "--namespace", "/x")
        assert code == 1 and "bad_thing" in one_line(err) and seconds < 5
        async with Client(url, reconnect=False) as client:
            with pytest.raises(ProtocolError):
                await client.connect("x")  # refused before sending: no slash


@pytest.mark.asyncio
async def test_an_error_answer_to_an_emit_exits_1(demo: ServerProcess) -> None:
    """Without --ack, an error event the server sends is printed and makes the exit status 1."""
    code, frames, err, _ = await run_cli(demo.url, "--namespace", "/test", "--emit", "nothing", "--wait", "0.3")
    assert code == 1 and "unknown_event" in one_line(err)
    assert frames[-1]["event"] == "error"


async def _stderr_until(proc: asyncio.subprocess.Process, text: str, seen: list[str], timeout: float = 15) -> str:
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), timeout)).decode()
        assert line, f"stderr ended before {text!r}: {seen}"
        seen.append(line)
        if text in line:
            return line


async def _stdout_frame(proc: asyncio.subprocess.Process, timeout: float = 15) -> dict[str, Any]:
    assert proc.stdout is not None
    return json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout))


@pytest.mark.asyncio
async def test_listen_waits_for_the_server_and_reconnects_after_an_outage(
    server_process: Callable[..., ServerProcess],
) -> None:
    """--listen: waits for a server that is down, says when it connects, drops and comes back."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "plainsocket",
        "client",
        f"ws://127.0.0.1:{port}",
        "--namespace",
        "/test",
        "--listen",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        assert "connection refused" in await _stderr_until(proc, "waiting for", seen)
        server = server_process(port=port)
        await _stderr_until(proc, "connected to", seen)
        assert (await _stdout_frame(proc))["namespace"] == "/"
        assert (await _stdout_frame(proc))["namespace"] == "/test"
        await _stdout_frame(proc)  # the demo's "Connected" greeting
        server.proc.kill()
        server.proc.wait()
        await _stderr_until(proc, "disconnected (closed 1006): reconnecting", seen)
        server_process(port=port)
        assert "new session" in await _stderr_until(proc, "reconnected", seen)
        assert (await _stdout_frame(proc))["event"] == "connect"
        assert sum("waiting for" in line for line in seen) == 1  # one line per state change
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 130
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
