"""An app that counts the calls it gets: a slow one, and one recorded per key."""

import asyncio
from collections import Counter
from typing import Any

from plainsocket import SocketServer

socketio = SocketServer(recovery_window=120)
calls: Counter[str] = Counter()


@socketio.on("slow")
async def slow(data: Any) -> dict[str, int]:
    """Answer after ``data["seconds"]``: a call still in flight when something else happens."""
    calls["slow"] += 1
    await asyncio.sleep(float(data["seconds"]))
    return {"slow": calls["slow"]}


@socketio.on("record")
def record(key: str) -> int:
    """Count one arrival of ``key``; return how many arrived."""
    calls[key] += 1
    return calls[key]


@socketio.on("count")
def count(key: str) -> int:
    """How many times ``key`` arrived (``record``) or ran (``slow``)."""
    return calls[key]
