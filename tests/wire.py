"""A raw wire-level test client: exactly the frames of docs/protocol.md, nothing hidden."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect


class Wire:
    """One WebSocket speaking envelopes, for asserting frames exactly."""

    def __init__(self, ws: ClientConnection, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.hello = hello
        self.sid: str = hello["data"]["sid"] if hello["event"] == "connect" else ""

    @classmethod
    async def open(cls, url: str, **options: Any) -> Wire:
        ws = await connect(url, **options)
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        return cls(ws, hello)

    async def send(self, event: str, data: Any = None, namespace: str = "/", id: int | None = None) -> None:
        frame: dict[str, Any] = {"event": event, "namespace": namespace, "data": data}
        if id is not None:
            frame["id"] = id
        await self.ws.send(json.dumps(frame))

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.send(text)

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def expect(self, event: str, namespace: str | None = None, timeout: float = 5) -> dict[str, Any]:
        """Return the next frame, asserting its event (and namespace)."""
        frame = await self.recv(timeout)
        assert frame["event"] == event, frame
        if namespace is not None:
            assert frame["namespace"] == namespace, frame
        return frame

    async def join(self, namespace: str, auth: Any = None) -> dict[str, Any]:
        await self.send("connect", auth, namespace)
        return await self.expect("connect", namespace)

    async def call(self, event: str, data: Any = None, namespace: str = "/", id: int = 1) -> dict[str, Any]:
        """Send with an ack id and return the ack (or error) frame carrying it."""
        await self.send(event, data, namespace, id)
        while True:
            frame = await self.recv()
            if frame.get("id") == id and frame["event"] in ("ack", "error"):
                return frame

    async def silent(self, timeout: float = 0.2) -> bool:
        """Return True when no frame arrives within ``timeout`` (used to prove a non-delivery)."""
        try:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected frame {frame}")

    async def close(self) -> None:
        await self.ws.close()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        self.ws.transport.abort()
