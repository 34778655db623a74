"""The server's keepalive: websockets' pings and timings, from one timer for every connection."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import struct
import weakref
from itertools import pairwise

from conftest import running, until
from test_hardening import handshake_request, port_of, reasons_by_sid, stalled_client

from plainsocket import SocketServer

PING, PONG, CLOSE = 0x9, 0xA, 0x8


class RawClient:
    """A WebSocket client on a bare stream: sees every ping, and answers it only when told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.loop = asyncio.get_running_loop()
        self.opened_at = self.loop.time()

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(handshake_request(port))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def frame(self, timeout: float = 5) -> tuple[int, bytes, float]:
        """Read the next frame the server sends: (opcode, payload, when it arrived)."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        payload = await self.reader.readexactly(size)
        return first & 0x0F, payload, self.loop.time()

    async def ping(self, timeout: float = 5) -> tuple[bytes, float]:
        """Skip text frames up to the next ping; return its payload and arrival time."""
        while True:
            opcode, payload, at = await self.frame(timeout)
            assert opcode != CLOSE, f"closed: {payload!r}"
            if opcode == PING:
                return payload, at

    def pong(self, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.writer.write(bytes([0x80 | PONG, 0x80 | len(payload)]) + mask + masked)

    def send_text(self, text: str) -> None:
        payload = text.encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def close(self) -> None:
        self.writer.transport.abort()


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in pairwise(times)]


async def test_pings_every_interval_while_the_client_answers() -> None:
    """The first ping comes ping_interval after the handshake, the next ones every ping_interval."""
    socketio = SocketServer(ping_interval=0.2, ping_timeout=0.5)
    async with running(socketio):
        client = await RawClient.open(port_of(socketio))
        try:
            times = []
            for _ in range(5):
                payload, at = await client.ping()
                times.append(at)
                client.pong(payload)
            assert 0.18 <= times[0] - client.opened_at < 0.5, times[0] - client.opened_at
            assert all(0.15 <= gap < 0.4 for gap in gaps(times)), gaps(times)
            (conn,) = socketio._connections.values()
            await until(lambda: conn.ws.latency > 0)  # websockets matched the pongs to its pings
            assert socketio.connection_count() == 1
        finally:
            client.close()


async def test_a_late_pong_sends_the_next_ping_at_once() -> None:
    """A pong later than ping_interval (within ping_timeout): the next ping follows it, as in websockets."""
    socketio = SocketServer(ping_interval=0.2, ping_timeout=2.0)
    async with running(socketio):
        client = await RawClient.open(port_of(socketio))
        try:
            payload, _ = await client.ping()
            for _ in range(2):
                await asyncio.sleep(0.4)  # the client's own delay: the behaviour under test
                client.pong(payload)
                answered = client.loop.time()
                payload, at = await client.ping()
                assert at - answered < 0.15, at - answered
            assert socketio.connection_count() == 1
        finally:
            client.close()


async def test_a_client_that_never_answers_is_closed_with_1011() -> None:
    """No pong within ping_timeout of the ping: close 1011 'keepalive ping timeout', reason 'ping timeout'."""
    socketio = SocketServer(ping_interval=0.2, ping_timeout=0.3, close_timeout=0.5)
    reasons = reasons_by_sid(socketio)
    async with running(socketio):
        client = await RawClient.open(port_of(socketio))
        try:
            _, pinged_at = await client.ping()
            while True:
                opcode, payload, closed_at = await client.frame()
                if opcode == CLOSE:
                    break
            code, reason = struct.unpack("!H", payload[:2])[0], payload[2:].decode()
            assert (code, reason) == (1011, "keepalive ping timeout")
            assert 0.28 <= closed_at - pinged_at < 1.5, closed_at - pinged_at
            await until(lambda: list(reasons.values()) == ["ping timeout"])
            assert socketio.connection_count() == 0
        finally:
            client.close()


async def test_without_a_ping_timeout_pings_go_on_unanswered() -> None:
    """ping_timeout=None: pings every ping_interval without waiting for pongs, and nobody is closed."""
    socketio = SocketServer(ping_interval=0.1, ping_timeout=None)
    async with running(socketio):
        client = await RawClient.open(port_of(socketio))
        try:
            times = [(await client.ping())[1] for _ in range(5)]
            assert all(0.05 <= gap < 0.3 for gap in gaps(times)), gaps(times)
            assert socketio.connection_count() == 1
        finally:
            client.close()


async def test_a_ping_stuck_behind_a_full_buffer_does_not_time_out() -> None:
    """As websockets' ping() waits for the buffer to drain, the pong timeout waits too: a client that
    stops reading is a slow consumer (send_timeout), not a ping timeout."""
    socketio = SocketServer(ping_interval=0.5, ping_timeout=0.2, send_timeout=1.5, close_timeout=0.3)
    reasons = reasons_by_sid(socketio)
    async with running(socketio):
        stuck = await stalled_client(port_of(socketio))
        try:
            await until(lambda: socketio.connection_count() == 1)
            (conn,) = socketio._connections.values()
            sent = 0
            while not conn.ws.paused:  # until the server's buffer is over its high-water mark
                assert sent < 100_000, "the buffer never filled"
                for _ in range(50):
                    socketio.emit("fill", "x" * 1000, to=conn.sid)
                    sent += 1
                await asyncio.sleep(0)  # let the server write this batch
            filled_at = asyncio.get_running_loop().time()
            await until(lambda: conn.sid in reasons, timeout=5)
            assert reasons[conn.sid] == "slow consumer"
            assert asyncio.get_running_loop().time() - filled_at > 1.0, "pinged (0.5 s) and waited past its timeout"
        finally:
            stuck.close()


async def test_closed_connections_are_let_go_and_idle_ones_have_no_task_of_their_own() -> None:
    """An idle client costs the handler task only; once closed, nothing keeps its connection alive."""
    socketio = SocketServer(ping_interval=20, ping_timeout=20)
    async with running(socketio):
        tasks_before = len(asyncio.all_tasks())
        clients = [await RawClient.open(port_of(socketio)) for _ in range(20)]
        try:
            await until(lambda: socketio.connection_count() == 20)
            assert len(asyncio.all_tasks()) - tasks_before == 20, "one task per connection: websockets' handler"
            sockets = [weakref.ref(conn.ws) for conn in socketio._connections.values()]
            assert all(ws() is not None and ws().keepalive_task is None for ws in sockets)  # type: ignore[union-attr]
            # The protocol's own heartbeat (docs/protocol.md) is a frame answered at once, apart from pings.
            clients[0].send_text(json.dumps({"event": "heartbeat"}))
            events = [json.loads((await clients[0].frame())[1])["event"] for _ in range(2)]
            assert events == ["connect", "heartbeat"]
        finally:
            for client in clients:
                client.close()
        await until(lambda: socketio.connection_count() == 0)
        await until(lambda: socketio._sockets == 0)
        gc.collect()
        assert [ws for ws in sockets if ws() is not None] == []
