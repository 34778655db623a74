"""Serve the demo app's benchmark behaviour on raw ``websockets``, as the yardstick for plainsocket.

This is the least code that speaks the same wire format as ``python server.py`` for the frames the
benchmark sends (docs/protocol.md), with none of plainsocket's validation, limits or bookkeeping:

    < {"event":"connect","namespace":"/","data":{"sid":"...","protocol":1}}        on open
    > {"event":"connect","namespace":"/test"}
    < {"event":"connect","namespace":"/test","data":{"sid":"..."}}
    < {"event":"my response","namespace":"/test","data":{"data":"Connected"}}
    > {"event":"my event","namespace":"/test","data":{"data":X}}
    < {"event":"my response","namespace":"/test","data":{"data":X}}               to the sender
    > {"event":"my broadcast event","namespace":"/test","data":{"data":X}}
    < {"event":"my response","namespace":"/test","data":{"data":X}}               to all of /test
    > {"event":"join","namespace":"/test","data":{"room":R}}
    < {"event":"my response","namespace":"/test","data":{"data":"In rooms: R"}}
    > {"event":"my room event","namespace":"/test","data":{"data":X,"room":R}}
    < {"event":"my response","namespace":"/test","data":{"data":X}}               to all of room R
    > {"event":"disconnect","namespace":"/test"}                                   leaves /test

Anything else is ignored. When it listens it writes ``listening on http://127.0.0.1:<port>`` to
stderr, the same readiness line as ``server.py``.

Usage: ``python bench/baseline.py [--host 127.0.0.1] [--port 0] [--uvloop]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import signal
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

NAMESPACE = "/test"

# Same keepalive as plainsocket's defaults (docs/protocol.md, "Heartbeat"), so neither server
# pays for pings the other one does not send.
PING_INTERVAL = 25.0
PING_TIMEOUT = 20.0

members: set[ServerConnection] = set()
rooms: dict[str, set[ServerConnection]] = {}


def encode(event: str, namespace: str, data: object) -> str:
    """Encode one envelope as compact JSON, like plainsocket does."""
    return json.dumps(
        {"event": event, "namespace": namespace, "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    )


async def handler(ws: ServerConnection) -> None:
    """Run one connection: greet it, then answer its frames in order until it closes."""
    sid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    joined: set[str] = set()
    try:
        await ws.send(encode("connect", "/", {"sid": sid, "protocol": 1}))
        async for message in ws:
            try:
                frame = json.loads(message)
                event = frame["event"]
            except (ValueError, TypeError, KeyError):
                continue
            if frame.get("namespace") != NAMESPACE:
                continue
            if event == "my event":
                await ws.send(encode("my response", NAMESPACE, frame.get("data")))
            elif event == "my broadcast event":
                # Encode once, write to every member without waiting for any of them.
                broadcast(members, encode("my response", NAMESPACE, frame.get("data")))
            elif event == "connect":
                members.add(ws)
                await ws.send(encode("connect", NAMESPACE, {"sid": sid}))
                await ws.send(encode("my response", NAMESPACE, {"data": "Connected"}))
            elif event == "join":
                room = str(_field(frame.get("data"), "room"))
                rooms.setdefault(room, set()).add(ws)
                joined.add(room)
                await ws.send(encode("my response", NAMESPACE, {"data": "In rooms: " + ", ".join(sorted(joined))}))
            elif event == "my room event":
                data = frame.get("data")
                room_members = rooms.get(str(_field(data, "room")), set())
                broadcast(room_members, encode("my response", NAMESPACE, {"data": _field(data, "data")}))
            elif event == "disconnect":
                members.discard(ws)
    except ConnectionClosed:
        pass
    finally:
        members.discard(ws)
        for room in joined:
            room_members = rooms[room]
            room_members.discard(ws)
            if not room_members:
                del rooms[room]


def _field(data: object, name: str) -> object:
    return data.get(name) if isinstance(data, dict) else None


async def run(host: str, port: int) -> None:
    """Listen until SIGTERM or SIGINT, announcing the bound port on stderr."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    async with serve(
        handler,
        host,
        port,
        compression=None,
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
    ) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"baseline listening on http://{host}:{bound}", file=sys.stderr, flush=True)
        await stop


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    if args.uvloop:
        import uvloop

        uvloop.run(run(args.host, args.port))
    else:
        asyncio.run(run(args.host, args.port))


if __name__ == "__main__":
    main()
