"""Frames are handled in the order they arrive, whichever way websockets hands them over.

Complete text frames are handled as soon as they are parsed; fragmented messages, binary
frames and frames that arrive behind them go through websockets' message queue. Mixed
together, they must still be handled in order.
"""

from __future__ import annotations

import json
from typing import Any

from conftest import running
from wire import Wire

from plainsocket import SocketServer


def frame(n: int) -> str:
    return json.dumps({"event": "n", "namespace": "/", "data": n, "id": n})


async def test_fragmented_binary_and_complete_frames_are_handled_in_order(opened: Any) -> None:
    """Complete, fragmented, complete, binary, complete: every answer in the order sent."""
    socketio = SocketServer()
    handled: list[int] = []

    @socketio.on("n")
    def number(n: int) -> int:
        handled.append(n)
        return n

    async with running(socketio) as url:
        client: Wire = await opened(url)
        text = frame(2)
        await client.send_raw(frame(1))
        await client.ws.send([text[:10], text[10:20], text[20:]])  # one message in three fragments
        await client.send_raw(frame(3))
        await client.send_raw(b"\x00binary")
        await client.send_raw(frame(4))
        answers = [await client.recv() for _ in range(5)]
        seen = [(a["event"], a.get("id"), a["data"] if a["event"] == "ack" else a["data"]["code"]) for a in answers]
        assert seen == [
            ("ack", 1, 1),
            ("ack", 2, 2),
            ("ack", 3, 3),
            ("error", None, "binary_unsupported"),
            ("ack", 4, 4),
        ]
        assert handled == [1, 2, 3, 4]


async def test_invalid_utf8_in_a_complete_frame_closes_1007(opened: Any) -> None:
    """A text frame that is not UTF-8 closes the connection with 1007, as websockets does."""
    socketio = SocketServer()
    async with running(socketio) as url:
        client: Wire = await opened(url)
        client.ws.protocol.send_text(b'{"event":"x","data":"\xff"}')
        client.ws.send_data()
        await client.ws.wait_closed()
        assert client.ws.close_code == 1007
