"""The demo app's benchmark behaviour on python-socketio (aiohttp), as a peer for bench/run.py.

Namespace ``/test``, the same handlers as ``server.py``: ``my event`` answers the sender with
``my response``, ``my broadcast event`` sends it to all of ``/test``, ``join`` enters a room and
answers, ``my room event`` sends ``my response`` to the room (the sender included). Everything
at python-socketio's defaults but logging. Writes ``listening on http://127.0.0.1:<port>`` to
stderr once it listens.

Usage: ``python bench/peers/sio_server.py [--host 127.0.0.1] [--port 0]``
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import socketio
from aiohttp import web

NAMESPACE = "/test"


def create_server() -> socketio.AsyncServer:
    """Build the AsyncServer with the demo's handlers on /test."""
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", logger=False, engineio_logger=False)

    def field(message: Any, name: str) -> Any:
        return message.get(name) if isinstance(message, dict) else None

    @sio.on("connect", namespace=NAMESPACE)
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await sio.emit("my response", {"data": "Connected"}, to=sid, namespace=NAMESPACE)

    @sio.on("my event", namespace=NAMESPACE)
    async def my_event(sid: str, message: Any) -> None:
        await sio.emit("my response", {"data": field(message, "data")}, to=sid, namespace=NAMESPACE)

    @sio.on("my broadcast event", namespace=NAMESPACE)
    async def my_broadcast(sid: str, message: Any) -> None:
        await sio.emit("my response", {"data": field(message, "data")}, namespace=NAMESPACE)

    @sio.on("join", namespace=NAMESPACE)
    async def join(sid: str, message: Any) -> None:
        await sio.enter_room(sid, str(field(message, "room")), namespace=NAMESPACE)
        await sio.emit("my response", {"data": "In rooms"}, to=sid, namespace=NAMESPACE)

    @sio.on("my room event", namespace=NAMESPACE)
    async def my_room_event(sid: str, message: Any) -> None:
        room = str(field(message, "room"))
        await sio.emit("my response", {"data": field(message, "data")}, to=room, namespace=NAMESPACE)

    return sio


async def serve(host: str, port: int) -> None:
    """Listen until SIGTERM or SIGINT, announcing the bound port on stderr."""
    app = web.Application()
    create_server().attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"python-socketio listening on http://{host}:{bound}", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    await stop
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000, help="0 picks a free port")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
