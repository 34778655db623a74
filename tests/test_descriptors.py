"""At the open-files limit: new clients are refused at once with 503, existing ones keep working."""

from __future__ import annotations

import asyncio
import json
import re
import resource
import subprocess
import sys
import urllib.request
from typing import Any

from conftest import ROOT
from websockets.exceptions import InvalidStatus
from wire import Wire

LIMIT = 256


def limited() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))  # soft and hard: nothing to raise to


async def test_past_the_descriptor_limit_clients_get_503_at_once() -> None:
    """ulimit -n 256 and 400 clients: about 224 connect, the rest get 503 Retry-After at once, a few log lines."""
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once; its stderr is read until it listens)
        [sys.executable, "server.py", "--port", "0", "--recovery-window", "0", "--max-connections-per-address", "1000"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limited,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        for line in proc.stderr:
            lines.append(line)
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert any("open-files limit 256 fits about 224 clients" in line for line in lines)
        url = f"ws://127.0.0.1:{port}"
        admitted: list[Wire] = []
        refused: list[int] = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(400):
            try:
                admitted.append(await Wire.open(url))
            except InvalidStatus as exc:
                refused.append(exc.response.status_code)
                assert exc.response.headers["Retry-After"] == "5"
        assert loop.time() - started < 20, "refusals come at once, not after a timeout"
        assert 200 <= len(admitted) <= 230 and set(refused) == {503}, (len(admitted), set(refused))
        for client in admitted[:5]:
            await client.join("/test")
            await client.expect("my response", "/test")
            await client.send("my event", {"data": "still here"}, "/test")
            assert (await client.expect("my response", "/test"))["data"] == {"data": "still here"}
        for client in admitted[-20:]:
            await client.close()
        await asyncio.sleep(0)  # the closes are on their way; a newcomer below waits for its answer
        newcomer = None
        for _ in range(50):
            try:
                newcomer = await Wire.open(url)
                break
            except InvalidStatus:
                await asyncio.sleep(0.05)
        assert newcomer is not None, "after some leave, new clients get in"
        health: Any = await asyncio.to_thread(
            lambda: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
        )
        assert health["descriptors"]["refused"] >= len(refused)
        for client in admitted[:-20]:
            client.abort()
        newcomer.abort()
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=15)
    log = "".join(lines) + rest
    assert log.count("out of file descriptors") <= 3 and "Traceback" not in log
    assert "uvloop" not in log
