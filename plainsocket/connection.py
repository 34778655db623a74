"""One WebSocket client of the server: its sid, namespaces, acknowledgements and write path.

Also the disconnect reasons a disconnect handler receives, and the errors of the calls a
server makes to its clients.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from .broadcast_log import Mark, SessionLog
from .protocol import CloseCode, Envelope

if TYPE_CHECKING:
    from .metrics import ServerMetrics

OPEN = State.OPEN

# Disconnect reasons passed to disconnect handlers (as in Socket.IO).
CLIENT_DISCONNECT = "client disconnect"
TRANSPORT_CLOSE = "transport close"
PING_TIMEOUT = "ping timeout"
SERVER_DISCONNECT = "server disconnect"
SERVER_SHUTDOWN = "server shutdown"
SERVICE_RESTART = "service restart"  # drained for a restart: it resumes on another node
SLOW_CONSUMER = "slow consumer"
RATE_LIMITED = "rate limited"
TOO_MANY_CONNECTIONS = "too many connections"


# What a kept session costs besides its frames (its Connection, registry entries, token, room
# history): tracemalloc sees about 2.6 KiB, RSS grows by about 4.8 KiB per kept session in the
# soak (the allocator's share). The budget is about memory, so it counts what RSS shows.
KEPT_SESSION_COST = 4096
SEEN_ID_COST = 75  # an int in a set and in a deque
NO_IDS: frozenset[int] = frozenset()


class CallTimeoutError(Exception):
    """The client did not acknowledge a :meth:`SocketServer.call` in time."""


class ClientDisconnectedError(Exception):
    """The client went away before acknowledging a :meth:`SocketServer.call`."""


class LimitExceededError(Exception):
    """A per-connection limit (rooms, pending acknowledgements) was reached."""


class ConnectionOwner(Protocol):
    """What a :class:`Connection` needs of the server that owns it (``SocketServer`` is one).

    Defined here, not imported from the server: the server is built on connections, and a
    connection knows only these limits and hooks.
    """

    max_send_buffer: int
    max_pending_acks: int
    rate_burst: float
    close_timeout: float | None
    recovery_window: float
    recovery_max_events: int
    recovery_max_bytes: int
    _metrics: ServerMetrics | None

    def client_address(self, ws: ServerConnection) -> str: ...

    def flush_soon(self, conn: Connection) -> None: ...

    def kept_grew(self, conn: Connection, grown: int) -> None: ...


class Connection:
    """One WebSocket client: its sid, namespaces, pending acknowledgements and write path."""

    __slots__ = (
        "address",
        "auth",
        "backlog",
        "backlog_bytes",
        "close_reason",
        "detached",
        "dirty",
        "dropping",
        "expiry",
        "frames_in",
        "held",
        "hold",
        "inflight",
        "kept_cost",
        "last_broadcast",
        "log",
        "namespaces",
        "next_ack_id",
        "pending",
        "progress",
        "refused",
        "resumed",
        "running",
        "seen",
        "server",
        "sessions",
        "sid",
        "stalled_since",
        "stamp",
        "token",
        "tokens",
        "unflushed",
        "worker",
        "written",
        "ws",
    )

    def __init__(self, server: ConnectionOwner, ws: ServerConnection, sid: str | None = None) -> None:
        self.ws: ServerConnection | GoneSocket = ws
        self.server = server
        self.sid = sid or secrets.token_urlsafe(16)
        self.address: str = server.client_address(ws)
        self.namespaces: set[str] = set()
        self.sessions: dict[str, dict[str, Any]] = {}
        self.pending: dict[int, asyncio.Future[Any]] = {}  # server -> client acks
        self.next_ack_id = 0
        self.tokens = float(server.rate_burst)
        self.stamp = time.monotonic()
        self.refused = 0  # frames refused in a row by the rate limit
        self.frames_in = 0  # frames received on the current socket (metrics add them up)
        self.backlog: deque[tuple[Envelope, int]] | None = None  # frames (and sizes) behind an async handler
        self.backlog_bytes = 0
        self.worker: asyncio.Task[None] | None = None
        self.running = 0  # concurrent=True handlers running now
        self.hold: list[bytes] | None = None  # frames held back while a connect handler runs
        self.held = 0  # bytes in hold (reset with it)
        self.unflushed = 0  # bytes framed in the protocol since the last flush
        self.close_reason: str | None = None
        self.written = 0  # bytes of frames handed to the transport: the slow-consumer watchdog, metrics
        self.progress = 0
        self.stalled_since: float | None = None
        # Connection state recovery (docs/protocol.md): what was sent, kept for a resume.
        self.token: str | None = None
        # Broadcasts are kept once, in the server's log: a session keeps its own frames only.
        self.log = SessionLog(server.broadcasts.seq) if server.recovery_window else None
        self.last_broadcast: Mark | None = None  # the newest broadcast sent to it
        self.seen: tuple[set[int], deque[int]] | None = None  # ids of client frames accepted
        # Of those, the ones not answered yet: a set once there is one (most clients never send ids).
        self.inflight: set[int] | frozenset[int] = NO_IDS
        self.resumed = False  # a resumed session drops frames whose id it has seen
        self.detached = False  # the socket dropped; the session waits for its client
        self.dropping: asyncio.Task[None] | None = None  # the disconnect handlers run at the drop
        self.auth: dict[str, Any] | None = None  # namespace -> auth of its connect, for a resume
        self.dirty = False  # frames wait in the protocol for this iteration's flush
        self.expiry: asyncio.TimerHandle | None = None
        self.kept_cost = 0  # what it counts against recovery_max_memory while it is kept

    def send(self, frame: bytes, wire: bytes | None = None, mark: Mark | None = None) -> None:
        """Queue one text frame without waiting: no single client can delay the others.

        ``wire`` is the frame already serialized by :func:`wire_frame`, shared by the
        recipients of a broadcast; ``mark`` names the broadcast in the server's log (which
        keeps it for a resume instead of this session).
        """
        if self.hold is not None:
            # Held frames are buffered too: a slow or stuck connect handler must not make
            # the server hold more for this client than max_send_buffer.
            self.held += len(frame)
            self.hold.append(frame)
            if self.held > self.server.max_send_buffer:
                self.close(CloseCode.SLOW_CONSUMER, SLOW_CONSUMER, SLOW_CONSUMER)
            return
        if mark is not None:
            self.last_broadcast = mark
        elif self.server.recovery_window:
            self.record(frame)
        self.write(frame, wire)

    def send_control(self, frame: bytes) -> None:
        """Send a frame that is never replayed (connect, heartbeat)."""
        self.write(frame)

    def record(self, frame: bytes) -> None:
        """Keep ``frame`` (sent to this session alone) for a resume, within its bounds."""
        log = self.log
        if log is None:
            return  # recovery was off when it connected
        server = self.server
        grown = log.record(frame, server.broadcasts.seq, server.recovery_max_events, server.recovery_max_bytes)
        if self.detached:
            server.kept_grew(self, grown)

    def recovery_cost(self) -> int:
        """Estimate what this session holds while it is kept, for ``recovery_max_memory``.

        Its own frames count in full; the broadcasts it would replay are counted once, in the
        server's log. ``session`` data is not counted (it is the application's, and measuring
        it would cost a walk of it).
        """
        cost = KEPT_SESSION_COST + self.backlog_bytes  # frames still waiting for a handler
        if self.log is not None:
            cost += self.log.cost
        if self.seen is not None:
            cost += SEEN_ID_COST * len(self.seen[1])  # ids remembered for deduplication
        return cost

    def handling(self, id: int) -> None:
        """Note that the frame with ``id`` is being handled (until :meth:`answered`)."""
        inflight = self.inflight
        if not isinstance(inflight, set):
            inflight = self.inflight = set()
        inflight.add(id)

    def answered(self, id: int) -> None:
        """Note that the frame with ``id`` was answered (acknowledged or refused)."""
        inflight = self.inflight
        if isinstance(inflight, set):
            inflight.discard(id)

    def handled_before(self, id: int) -> bool:
        """Remember a client frame id; tell whether it was handled already (a re-sent frame)."""
        if self.seen is None:
            self.seen = (set(), deque())
        ids, order = self.seen
        if id in ids:
            return True
        ids.add(id)
        order.append(id)
        if len(order) > self.server.recovery_max_events:
            ids.discard(order.popleft())
        return False

    def write(self, frame: bytes, wire: bytes | None = None) -> None:
        """Frame ``frame`` now; hand it to the socket at the end of this loop iteration.

        Frames queued for one client in one iteration leave in one write (one system call
        instead of one per frame): that is most of the cost of a broadcast storm.
        """
        ws = self.ws
        if ws.protocol.state is not OPEN:
            return
        limit = self.server.max_send_buffer
        if ws.transport.get_write_buffer_size() + self.unflushed > limit:
            # The bound is ours to enforce: websockets buffers without limit here. Frames
            # framed in this iteration count too; hand them to the kernel first, which takes
            # what a reading client can absorb, then judge what is left.
            self.flush()
            if ws.transport.get_write_buffer_size() > limit:
                self.close(CloseCode.SLOW_CONSUMER, SLOW_CONSUMER, SLOW_CONSUMER)
                return
        if wire is not None and not ws.protocol.extensions:
            # The same bytes for every recipient: serialized once per broadcast, not per client
            # (without extensions a server's text frame is the same for everyone, RFC 6455 5.1).
            ws.protocol.writes.append(wire)
        else:
            ws.protocol.send_text(frame)
        self.written += len(frame)
        self.unflushed += len(frame)
        if not self.dirty:
            self.dirty = True
            self.server.flush_soon(self)

    def flush(self) -> None:
        """Write every frame queued in the protocol, in one call when possible."""
        self.dirty = False
        self.unflushed = 0
        ws = self.ws
        chunks = ws.protocol.data_to_send()
        if not chunks:
            return
        transport = ws.transport
        try:
            if all(chunks):
                transport.writelines(chunks)
                return
            for chunk in chunks:  # an empty chunk asks to half-close, as in ws.send_data()
                if chunk:
                    transport.write(chunk)
                elif transport.can_write_eof():
                    transport.write_eof()
                else:
                    transport.close()
        except Exception:  # the transport failed; connection_lost() reports it
            pass

    def close(self, code: int, reason: str, why: str) -> None:
        """Start the closing handshake now; abort the TCP connection if it does not finish.

        ``ServerConnection.close()`` would wait behind a full write buffer, which is exactly
        the case of a slow consumer, so drive the sans-I/O protocol directly.
        """
        if self.close_reason is None:
            self.close_reason = why
        if self.hold:
            # Held frames die with the socket and were never recorded: a resume must not hide
            # that gap, so this session can only start afresh.
            if self.log is not None:
                self.log.broken = True
        self.hold = None
        ws = self.ws
        if ws.protocol.state is OPEN:
            ws.protocol.send_close(code, reason)
            try:
                ws.send_data()
            except Exception:
                pass
            asyncio.get_running_loop().call_later(self.server.close_timeout, ws.transport.abort)

    def expect_ack(self) -> tuple[int, asyncio.Future[Any]]:
        if len(self.pending) >= self.server.max_pending_acks:
            raise LimitExceededError(f"more than {self.server.max_pending_acks} pending acknowledgements")
        self.next_ack_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_ack_id] = future
        return self.next_ack_id, future


class _GoneProtocol:
    """The protocol of a socket that is gone: closed, nothing to send."""

    __slots__ = ()
    state = State.CLOSED
    close_rcvd = None
    extensions: tuple[()] = ()

    def data_to_send(self) -> list[bytes]:
        return []


class _GoneTransport:
    __slots__ = ()

    def abort(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class GoneSocket:
    """What a session kept for recovery holds of its dropped socket: the handshake request.

    Disconnect handlers still read ``request.headers`` and ``request.args``; the rest of the
    dead connection (its protocol, parser, buffers, transport, tasks) must not stay in memory
    for the whole recovery window.
    """

    __slots__ = ("remote_address", "request")
    protocol = _GoneProtocol()
    transport = _GoneTransport()

    def __init__(self, ws: ServerConnection | GoneSocket) -> None:
        self.request = ws.request
        self.remote_address = ws.remote_address


def wire_frame(payload: bytes) -> bytes:
    """Serialize a server's unfragmented, unmasked text frame carrying ``payload``."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


def close_reason(ws: ServerConnection) -> str:
    """Tell why a connection closed, from what the closing handshake left behind."""
    protocol = ws.protocol
    received = protocol.close_rcvd
    if received is not None and received.code == CloseCode.SHUTDOWN and (
        protocol.close_sent is None or protocol.close_rcvd_then_sent
    ):
        # A browser closing the tab or leaving the page: Socket.IO reports that as "transport close".
        return TRANSPORT_CLOSE
    if protocol.close_rcvd is not None and protocol.close_sent is not None:
        if protocol.close_rcvd_then_sent or protocol.close_sent.reason != "keepalive ping timeout":
            return CLIENT_DISCONNECT
    sent = protocol.close_sent
    if sent is not None and sent.reason == "keepalive ping timeout":
        return PING_TIMEOUT
    if protocol.close_rcvd is not None:
        return CLIENT_DISCONNECT
    return TRANSPORT_CLOSE
