"""Keepalive pings for every connection of a server, from one timer.

websockets' keepalive runs a task per connection: a task, its coroutine, a sleep's future and
its timer for every client, idle or not, and a task to create and cancel per connect. This
does what that task does, for all connections at once, with websockets' own pieces: the ping
is registered in the connection's ``pending_pings`` (so websockets answers ``ping()``'s
callers, measures ``latency`` and ends pending pings when the connection closes), framed by the
sans-I/O protocol, and a missing pong fails the connection with 1011 "keepalive ping timeout",
as websockets does.

The timing is websockets' too:

- the first ping goes out ``interval`` seconds after the handshake, each next one ``interval``
  after the previous one was sent, or as soon as the previous pong arrives when it is later
  than that (without a pong timeout, pings do not wait for pongs);
- the pong timeout starts once the ping has been handed to the socket: while the write buffer
  is above its high-water mark (websockets' ``ping()`` waits in ``drain()``), it waits for the
  buffer to drain, so a slow reader is not mistaken for a dead one (the server's slow-consumer
  watchdog handles a buffer that does not move);
- a connection that failed this way is aborted after ``close_timeout`` when the client does
  not finish the closing handshake.

Every connection's next ping is due ``interval`` after its last one was scheduled, so keeping
them in insertion order keeps them in time order: one timer, armed for the earliest of them,
serves every connection, and a closed connection leaves at once (``discard``).
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
from collections import OrderedDict

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode
from websockets.protocol import State

OPEN = State.OPEN
TIMEOUT_REASON = "keepalive ping timeout"  # websockets' own reason: close_reason() reads it


class Keepalive:
    """Ping open connections every ``interval`` seconds; fail those whose pong is ``timeout`` late."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, timeout: float | None) -> None:
        self.loop = loop
        self.interval = interval
        self.timeout = timeout  # None: never wait for pongs
        self._pings: OrderedDict[ServerConnection, float] = OrderedDict()  # next ping, earliest first
        self._pongs: OrderedDict[ServerConnection, float] = OrderedDict()  # pong deadline, earliest first
        self._waiting: dict[ServerConnection, bytes] = {}  # the ping whose pong is awaited
        self._draining: set[ServerConnection] = set()  # pongs whose timeout waits for the buffer
        self._overdue: set[ServerConnection] = set()  # ping when the awaited pong comes
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    # -- What connections tell it ---------------------------------------------------------------

    def add(self, ws: ServerConnection) -> None:
        """Start pinging ``ws`` (its handshake just completed)."""
        due = self.loop.time() + self.interval
        self._pings[ws] = due
        self._arm(due)

    def discard(self, ws: ServerConnection) -> None:
        """Forget ``ws`` (its connection is lost); websockets ends its pending pings itself."""
        self._pings.pop(ws, None)
        if self._waiting.pop(ws, None) is not None:
            self._pongs.pop(ws, None)
            self._draining.discard(ws)
            self._overdue.discard(ws)

    def pong(self, ws: ServerConnection) -> None:
        """A pong arrived on ``ws`` (websockets acknowledged the pings it answers)."""
        payload = self._waiting.get(ws)
        if payload is None or payload in ws.pending_pings:
            return
        del self._waiting[ws]
        self._pongs.pop(ws, None)
        self._draining.discard(ws)
        if ws in self._overdue:
            # Later than ``interval``: the next ping goes now, as websockets' keepalive does.
            self._overdue.discard(ws)
            self._ping(ws, self.loop.time())

    def drained(self, ws: ServerConnection) -> None:
        """``ws``'s write buffer fell below its low-water mark: a ping waiting for that starts its timeout."""
        if ws in self._draining:
            self._draining.discard(ws)
            self._expect_pong(ws, self.loop.time())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf

    # -- The timer --------------------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        """Make the timer fire at ``when`` at the latest."""
        if when >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._tick)
        self._timer_at = when

    def _tick(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self.loop.time()
        pongs = self._pongs
        while pongs:
            ws, deadline = next(iter(pongs.items()))
            if deadline > now:
                break
            del pongs[ws]
            payload = self._waiting.pop(ws)
            overdue = ws in self._overdue
            self._overdue.discard(ws)
            if payload in ws.pending_pings:
                _fail(ws)
            elif overdue:
                self._ping(ws, now)
        pings = self._pings
        # Only the connections due now: those pinged here are due again, at the end.
        for _ in range(len(pings)):
            ws, due = next(iter(pings.items()))
            if due > now:
                break
            del pings[ws]
            if ws in self._waiting:
                self._overdue.add(ws)  # the previous pong is not in yet
            else:
                self._ping(ws, now)
        earliest = min(next(iter(pings.values()), math.inf), next(iter(pongs.values()), math.inf))
        if earliest < math.inf:
            self._arm(earliest)

    # -- One connection ---------------------------------------------------------------------------

    def _ping(self, ws: ServerConnection, now: float) -> None:
        """Send a keepalive ping on ``ws``, as websockets' ``ping()`` does, and schedule the next one."""
        if ws.protocol.state is not OPEN:
            return  # closing: the connection is lost soon, and discarded then
        payload = struct.pack("!I", random.getrandbits(32))
        while payload in ws.pending_pings:
            payload = struct.pack("!I", random.getrandbits(32))
        ws.pending_pings[payload] = (self.loop.create_future(), now)
        ws.protocol.send_ping(payload)
        if not _send(ws):
            return
        if ws.debug:
            ws.logger.debug("% sent keepalive ping")
        self._pings[ws] = now + self.interval
        self._arm(now + self.interval)
        if self.timeout is None:
            return
        self._waiting[ws] = payload
        if ws.paused:
            self._draining.add(ws)  # websockets' ping() returns once drain() does
        else:
            self._expect_pong(ws, now)

    def _expect_pong(self, ws: ServerConnection, now: float) -> None:
        assert self.timeout is not None
        deadline = now + self.timeout
        self._pongs[ws] = deadline
        self._arm(deadline)


def _send(ws: ServerConnection) -> bool:
    """Write what the protocol has for the socket; on an error, abort as websockets' send_context does."""
    try:
        ws.send_data()
    except Exception as exc:
        ws.set_connection_exc(exc)
        ws.transport.abort()
        return False
    return True


def _fail(ws: ServerConnection) -> None:
    """Fail ``ws`` with 1011, as websockets' keepalive does when a pong is late."""
    if ws.protocol.state is not OPEN:
        return  # closing already, with its own deadline
    if ws.debug:
        ws.logger.debug("- timed out waiting for keepalive pong")
    ws.protocol.fail(CloseCode.INTERNAL_ERROR, TIMEOUT_REASON)
    if ws.close_timeout is not None and ws.close_deadline is None:
        ws.close_deadline = ws.loop.time() + ws.close_timeout
    if _send(ws) and ws.close_timeout is not None:
        # websockets waits for the close up to close_timeout, then aborts; so does this, without
        # waiting for a full buffer to drain first (a dead peer never drains it).
        ws.loop.call_later(ws.close_timeout, ws.transport.abort)
