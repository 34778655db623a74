"""The demo app that `python server.py` runs, end to end over a real subprocess."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

from wire import Wire


async def test_demo_app_end_to_end(server_process: Any) -> None:
    """The Flask-SocketIO example behaviours, then SIGTERM: 1001 to clients, handlers run, exit 0."""
    server = server_process()
    a, b = await Wire.open(server.url), await Wire.open(server.url)
    try:
        for client in (a, b):
            await client.join("/test")
            assert (await client.expect("my response", "/test"))["data"] == {"data": "Connected"}

        await a.send("my event", {"data": "hello"}, "/test")
        assert (await a.expect("my response"))["data"] == {"data": "hello"}
        assert await b.silent()

        await a.send("my broadcast event", {"data": "everyone"}, "/test")
        for client in (a, b):
            assert (await client.expect("my response"))["data"] == {"data": "everyone"}

        await a.send("join", {"room": "r1"}, "/test")
        assert (await a.expect("my response"))["data"] == {"data": f"In rooms: {a.sid}, r1"}
        await b.send("my room event", {"room": "r1", "data": "to r1"}, "/test")
        assert (await a.expect("my response"))["data"] == {"data": "to r1"}
        assert await b.silent()
        await a.send("leave", {"room": "r1"}, "/test")
        assert (await a.expect("my response"))["data"] == {"data": f"In rooms: {a.sid}"}

        await a.send("join", {"room": "r2"}, "/test")
        await a.expect("my response")
        await b.send("close room", {"room": "r2"}, "/test")
        assert (await a.expect("my response"))["data"] == {"data": "Room r2 is closing."}
        await b.send("my room event", {"room": "r2", "data": "late"}, "/test")
        await b.send("my event", {"data": "sync"}, "/test")
        await b.expect("my response")
        assert await a.silent()

        ack = await a.call("my ping", None, "/test", id=9)
        assert ack["event"] == "ack" and isinstance(ack["data"]["pong"], float)

        await b.send("disconnect request", None, "/test")
        assert (await b.expect("my response"))["data"] == {"data": "Disconnected!"}
        await b.expect("disconnect", "/test")

        health = await asyncio.to_thread(read_json, f"http://127.0.0.1:{server.port}/healthz")
        assert health["connections"] == 2
    finally:
        code, out, err = await asyncio.to_thread(server.stop)
    assert code == 0
    for client in (a, b):
        await client.ws.wait_closed()
        assert client.ws.close_code == 1001
    assert f"Client disconnected {b.sid} server disconnect" in out
    assert f"Client disconnected {a.sid} server shutdown" in out
    assert f"disconnect sid={a.sid} address=127.0.0.1 reason=server shutdown" in err
    assert "Traceback" not in err


def read_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())
