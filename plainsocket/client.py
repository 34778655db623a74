"""Asyncio client for plainsocket: named events, namespaces and acks over one WebSocket.

The model is the browser client's (docs/protocol.md is the wire format)::

    from plainsocket.client import Client

    async with Client("ws://127.0.0.1:5000") as client:
        test = await client.connect("/test")            # join a namespace (auth=... optional)

        @test.on("my response")                         # sync or async; the return value is
        def on_response(data):                          # the ack when the server asked for one
            print("got", data)

        await test.emit("my event", {"data": "hi"})
        pong = await test.call("my ping", timeout=5)   # the ack's data
        data = await test.wait("my response", timeout=5)

Every event the server sends goes to its handler (if any) and to the namespace's bounded queue
(the oldest is dropped, with a warning, when it is full). ``wait(event)`` takes the first queued
event of that name and returns its ``data``; ``receive()`` and ``async for envelope in test``
take whole :class:`~protocol.Envelope` objects in order. ``error`` events are queued on their
namespace like any other event, except the ones that answer a :meth:`Namespace.call`, which
raise :class:`RemoteError` there. ``client.root`` is the namespace ``/``.

The connection comes back after a drop, following the close codes of docs/protocol.md
(exponential backoff with jitter and a cap; give up after 4001, 1002, 1007 or HTTP 403).
On reconnection the client joins every namespace again with its auth, then sends the events
emitted while it was away, in order. ``client.on("connect" | "disconnect" | "reconnect")``
registers lifecycle callbacks; ``client.on("frame")`` sees every received text frame.

When the server keeps dropped sessions (docs/protocol.md, "Extension: connection state
recovery"), the client resumes its session on reconnection: same sid, namespaces and rooms,
and every frame it missed, once and in order, before any new one. Calls sent before the drop
stay pending (their timeouts still run) and are sent again, once, when their answer was not
among the missed frames; then the events emitted while away follow. ``client.recovered``
tells whether the last (re)connection resumed the session; the ``connect`` and ``reconnect``
callbacks get the same flag. When it is False after a reconnection the session is new (the
window expired, the server restarted, recovery is off): pending calls failed, namespaces were
joined again, and the application must resynchronise what it missed.

Testing your own handlers (the role of Flask-SocketIO's test client)::

    from plainsocket.client import serve_for_test, test_client
    from plainsocket import SocketServer, emit

    socketio = SocketServer()

    @socketio.on("my event", namespace="/test")
    def my_event(data):
        emit("my response", data)

    @pytest.mark.asyncio
    async def test_my_event():
        async with test_client(socketio, namespace="/test") as test:
            await test.emit("my event", {"n": 1})
            assert await test.wait("my response", timeout=2) == {"n": 1}

``serve_for_test(socketio)`` starts the server on 127.0.0.1, port 0, and yields its ``ws://`` URL
for tests that open several clients; ``test_client`` opens one client on top of it.

Command line (prints every received frame as one line of compact JSON)::

    python client.py ws://127.0.0.1:5000 --namespace /test --emit 'my event' '{"data": "hi"}'
    python client.py ws://127.0.0.1:5000 --namespace /test --emit 'my ping' --ack
    python client.py ws://127.0.0.1:5000 --namespace /test --listen   # waits for the server, reconnects

A bad URL or namespace is one line on stderr and exit status 2; a connection problem, a
refusal or an ``error`` frame from the server is one line and exit status 1. ``http://`` and
``https://`` URLs are taken as ``ws://`` and ``wss://``, and ``--namespace test`` as ``/test``.

Exceptions::

    ClientError
    ├── ConnectRefusedError    the server refused a namespace (connect_error)
    ├── ProtocolVersionError   the server does not speak protocol version 1
    ├── RemoteError            the server answered a call with an error event (or closed
    │                          with 1009 for it: code message_too_big)
    ├── ClientTimeoutError     a call, wait or connect timed out (also a TimeoutError)
    ├── BufferFullError        too many events emitted while disconnected
    └── DisconnectedError      not connected: the namespace was left or the connection is gone

Opening the socket can also raise what ``websockets.asyncio.client.connect`` raises (``OSError``,
``InvalidHandshake``, ``TimeoutError``); invalid outgoing events raise ``ValueError`` (a reserved
name), :class:`~protocol.ProtocolError` (a bad name or namespace) or ``TypeError`` (data that
JSON can not hold).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import random
import signal
import ssl
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Origin

from .client_presence import FRAMES as PRESENCE_FRAMES
from .client_presence import RoomPresence
from .protocol import (
    ACK,
    CONNECT,
    CONNECT_ERROR,
    DEFAULT_NAMESPACE,
    DISCONNECT,
    ERROR,
    HEARTBEAT,
    PROTOCOL_VERSION,
    RESERVED_EVENTS,
    CloseCode,
    Envelope,
    ProtocolError,
    encode,
    parse_json,
)

__all__ = [
    "BufferFullError",
    "Client",
    "ClientError",
    "ClientTimeoutError",
    "ConnectRefusedError",
    "DisconnectedError",
    "Namespace",
    "ProtocolVersionError",
    "RemoteError",
    "reconnect_delay",
    "serve_for_test",
    "test_client",
    "websocket_url",
]

logger = logging.getLogger("plainsocket.client")

Handler = Callable[..., Any]

LIFECYCLE_EVENTS = frozenset({"connect", "disconnect", "reconnect", "frame"})

# Close codes after which reconnecting can not help (docs/protocol.md, "Close codes").
GIVE_UP_CODES = frozenset({1000, 1002, 1007, CloseCode.SERVER_DISCONNECT})
# 1012: the node restarts and hands the session to another node for a short drain: resume now.
AT_ONCE_CODES = frozenset({CloseCode.SLOW_CONSUMER, CloseCode.SERVICE_RESTART})
RESTART_SPREAD = 1.0  # seconds over which the clients of a restarting node come back (1012)
LONG_BACKOFF_CODES = frozenset({CloseCode.POLICY_VIOLATION, CloseCode.TOO_MANY_CONNECTIONS})
ABNORMAL_CLOSURE = 1006  # RFC 6455 7.1.5: the connection closed without a close frame
HTTP_FORBIDDEN = 403  # an Origin the server does not allow: give up
# Drops after which a server with recovery on keeps the session (network loss, ping timeout,
# slow consumer): calls in flight wait for the recovery instead of failing at once.
# After 1009 too: only the frame that was too big is lost (see Client._refused_too_big).
MESSAGE_TOO_BIG = 1009
RECOVERABLE_CODES = frozenset(
    {ABNORMAL_CLOSURE, CloseCode.INTERNAL_ERROR, CloseCode.SLOW_CONSUMER, CloseCode.SERVICE_RESTART, MESSAGE_TOO_BIG}
)


class ClientError(Exception):
    """Base class of the client's errors."""


class ConnectRefusedError(ClientError):
    """The server answered ``connect`` with ``connect_error``.

    Attributes:
        namespace: the namespace that refused the client.
        message: the server's ``message``.
        data: the whole ``connect_error`` payload.
    """

    def __init__(self, namespace: str, data: Any) -> None:
        self.namespace = namespace
        self.data = data
        self.message = str(data.get("message", "")) if isinstance(data, dict) else str(data)
        super().__init__(f"connection to {namespace} refused: {self.message}")


class ProtocolVersionError(ClientError):
    """The server's first frame is not a protocol-1 ``connect`` (the socket was closed with 4010)."""


class RemoteError(ClientError):
    """The server answered a call with an ``error`` event, or refused it as too big.

    ``message_too_big``: the server closed the link with 1009 for this frame (the session is
    resumed), or the frame is as large as one it refused so and was not sent.

    Attributes:
        code: the machine code, e.g. ``unknown_event`` (docs/protocol.md, "Errors").
        message: the server's human text.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class ClientTimeoutError(ClientError, TimeoutError):
    """A call, wait or connect did not complete in time."""


class BufferFullError(ClientError):
    """Too many events were emitted while the connection was down."""


class DisconnectedError(ClientError):
    """Not connected: the namespace was left, or the connection is gone for good.

    Attributes:
        code: the WebSocket close code, when the connection closed.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


def reconnect_delay(
    code: int,
    attempt: int,
    *,
    delay: float,
    delay_max: float,
    rng: Callable[[], float] = random.random,
) -> float | None:
    """Return how long to wait before reconnection attempt ``attempt`` (0 first), or None to give up.

    Follows the close-code table of docs/protocol.md: give up after 1000, 1002, 1007 and 4001;
    4000 reconnects at once, then backs off; 1008 and 4002 wait the longest delay; anything
    else (1001, 1006, 1009, 1011, ...) backs off exponentially from ``delay`` up to ``delay_max``.
    The delay is jittered down to half its value so clients dropped together do not return together.
    """
    if code in GIVE_UP_CODES:
        return None
    if code == CloseCode.SERVICE_RESTART and attempt == 0:
        # A node restarting closes all its clients at once: spread their claims on the others.
        return RESTART_SPREAD * rng()
    if code in AT_ONCE_CODES and attempt == 0:
        return 0.0
    if code in LONG_BACKOFF_CODES:
        base = delay_max
    else:
        base = min(delay_max, delay * 2 ** min(attempt, 32))
    return base * (0.5 + rng() / 2)


_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


def websocket_url(url: str) -> str:
    """Return ``url`` as a ``ws://`` or ``wss://`` URL; ``http(s)://`` maps to ``ws(s)://``.

    Raises:
        ValueError: no such scheme or no host, in one line that says what is expected.
    """
    scheme, netloc, path, query, fragment = urlsplit(url)
    mapped = _SCHEMES.get(scheme.lower())
    if mapped is None or not urlsplit(url).hostname:
        raise ValueError(f"{url!r} is not a server URL: use ws://host:port (or wss://, http://, https://)")
    return urlunsplit((mapped, netloc, path, query, fragment))


def _outgoing(event: str, data: Any, namespace: str, id: int | None = None) -> str:
    """Validate and encode an application event."""
    if event in RESERVED_EVENTS:
        raise ValueError(f"{event!r} is a reserved event name")
    Envelope(event, namespace, None, id)  # validates the name and namespace
    return encode(event, data, namespace, id)


def _parse(text: str) -> tuple[Envelope | ProtocolError, str | None]:
    """Decode a received frame into its envelope (or why it is invalid) and its recovery offset.

    The offset is read even from a frame the client refuses: it was received all the same,
    and a recovery from an older offset would deliver the frames after it twice.
    """
    obj: Any = None
    try:
        obj = parse_json(text)
        if type(obj) is not dict:
            raise ProtocolError("invalid_envelope", "frame must be a JSON object")
        fields: dict[str, Any] = obj
        # Envelope() validates the event, namespace and id as protocol.decode() does.
        result: Envelope | ProtocolError = Envelope(
            fields.get("event"),  # type: ignore[arg-type]  # validated by Envelope
            fields.get("namespace", DEFAULT_NAMESPACE),
            fields.get("data"),
            fields.get("id"),
        )
    except ProtocolError as exc:
        result = exc
        if obj is None:
            with contextlib.suppress(ValueError, RecursionError):
                obj = json.loads(text)  # e.g. deeper than the client's limit: only its offset counts
    offset = obj.get("offset") if type(obj) is dict else None
    return result, offset if type(offset) is str and offset else None


def _trim_args(callback: Handler, args: Sequence[Any]) -> Sequence[Any]:
    """Drop the trailing arguments a callback written for fewer does not take."""
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):
        return args
    for count in range(len(args), -1, -1):
        try:
            signature.bind(*args[:count])
        except TypeError:
            continue
        return args[:count]
    return args  # takes none of these: let the call say why


@dataclass(slots=True)
class _Call:
    """A call waiting for its ``ack``: its namespace, its future and its frame (to send again)."""

    namespace: str
    future: asyncio.Future[Any]
    text: str


async def _invoke(handler: Handler, *args: Any) -> Any:
    """Call a sync or async handler and return its result."""
    result = handler(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _register(table: dict[str, Handler], event: str, handler: Handler | None) -> Handler | Callable[[Handler], Handler]:
    """Store ``handler`` for ``event``, or return a decorator that does."""
    if handler is not None:
        table[event] = handler
        return handler

    def decorator(function: Handler) -> Handler:
        table[event] = function
        return function

    return decorator


class _Inbox:
    """Received events of one namespace, oldest first; the oldest is dropped when full."""

    def __init__(self, namespace: str, limit: int) -> None:
        self._namespace = namespace
        self._limit = limit
        self._events: deque[Envelope] = deque()
        self._changed = asyncio.Event()
        self._closed: str | None = None
        self._overflowing = False

    def put(self, envelope: Envelope) -> None:
        """Queue an event, dropping the oldest one when the queue is full."""
        if self._limit <= 0:
            return
        if len(self._events) >= self._limit:
            self._events.popleft()
            if not self._overflowing:
                # Once per overflow: a queue nobody reads would otherwise log every event.
                logger.warning(
                    "%s: received-event queue full (%d), dropping the oldest events",
                    self._namespace,
                    self._limit,
                )
                self._overflowing = True
        self._events.append(envelope)
        self._changed.set()

    def close(self, reason: str) -> None:
        """Wake every taker: once the queue is empty, take() raises DisconnectedError."""
        self._closed = reason
        self._changed.set()

    async def take(self, match: Callable[[Envelope], bool]) -> Envelope:
        """Remove and return the oldest queued event that matches, waiting for one."""
        while True:
            for index, envelope in enumerate(self._events):
                if match(envelope):
                    del self._events[index]
                    self._overflowing = False
                    return envelope
            if self._closed is not None:
                raise DisconnectedError(self._closed)
            self._changed.clear()
            await self._changed.wait()


class Namespace:
    """One namespace of a :class:`Client`: handlers, emits, calls and received events."""

    def __init__(self, client: Client, name: str, queue_limit: int) -> None:
        self.name = name
        self.client = client
        self._handlers: dict[str, Handler] = {}
        self._inbox = _Inbox(name, queue_limit)
        self._joined = False
        self._auth: Any = None
        self._presences: dict[str, RoomPresence] = {}

    def __repr__(self) -> str:
        return f"<Namespace {self.name} {'connected' if self.connected else 'not connected'}>"

    @property
    def connected(self) -> bool:
        """Whether the client is in this namespace and the connection is up."""
        return self._joined and self.client.connected

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register the handler of ``event``; without ``handler``, return a decorator.

        The handler gets the event's ``data``, may be sync or async, and its return value is
        sent back as the ``ack`` when the server's frame asked for one. One handler per event.
        """
        return _register(self._handlers, event, handler)

    async def emit(self, event: str, data: Any = None) -> None:
        """Send ``event`` with ``data``; while reconnecting it is buffered and sent later.

        Raises:
            DisconnectedError: this namespace is not joined, or the connection is gone.
            BufferFullError: the connection is down and the buffer is full.
        """
        self._check_joined()
        await self.client._send(_outgoing(event, data, self.name))

    async def call(self, event: str, data: Any = None, *, timeout: float | None = 5.0) -> Any:
        """Send ``event`` asking for an acknowledgement and return the ack's data.

        Raises:
            ClientTimeoutError: no answer within ``timeout`` seconds.
            RemoteError: the server answered with an ``error`` event.
            DisconnectedError: the connection dropped after the event was sent (and, when the
                server keeps dropped sessions, the reconnection did not resume the session).
        """
        self._check_joined()
        return await self.client._call(self.name, event, data, timeout)

    async def ack(self, id: int, data: Any = None) -> None:
        """Answer the server's acknowledgement request ``id`` by hand (when no handler did).

        Raises:
            DisconnectedError: the connection is down (an ack is never buffered: the request
                it answers died with the connection).
        """
        await self.client._send_now(encode(ACK, data, self.name, id))

    async def disconnect(self) -> None:
        """Leave this namespace; the socket stays open."""
        if not self._joined:
            return
        self._joined = False
        self.client._fail_calls(self.name, DisconnectedError(f"left {self.name}"))
        with contextlib.suppress(DisconnectedError):
            # Not buffered: a namespace left while the link is down is not joined again anyway.
            await self.client._send_now(encode(DISCONNECT, None, self.name))

    async def wait(self, event: str, *, timeout: float | None = 5.0) -> Any:
        """Take the oldest queued ``event`` (waiting for one) and return its data.

        Raises:
            ClientTimeoutError: none arrived within ``timeout`` seconds.
            DisconnectedError: the connection is gone and no such event is queued.
        """
        envelope = await self._take(lambda envelope: envelope.event == event, timeout, repr(event))
        return envelope.data

    async def receive(self, *, timeout: float | None = 5.0) -> Envelope:
        """Take the oldest queued event of any name (waiting for one).

        Raises:
            ClientTimeoutError: nothing arrived within ``timeout`` seconds.
            DisconnectedError: the connection is gone and the queue is empty.
        """
        return await self._take(lambda envelope: True, timeout, "event")

    async def __aiter__(self) -> AsyncIterator[Envelope]:
        """Yield received events in order until the connection is gone for good."""
        while True:
            try:
                yield await self._take(lambda envelope: True, None, "event")
            except DisconnectedError:
                return

    async def _take(self, match: Callable[[Envelope], bool], timeout: float | None, what: str) -> Envelope:
        try:
            async with asyncio.timeout(timeout):
                return await self._inbox.take(match)
        except TimeoutError:
            raise ClientTimeoutError(f"no {what} on {self.name} within {timeout} s") from None

    def presence(self, room: str) -> RoomPresence:
        """Return the members of presence room ``room``, kept in sync (``plainsocket.client_presence``)."""
        found = self._presences.get(room)
        if found is None:
            found = self._presences[room] = RoomPresence(room, self.call)
        return found

    def _check_joined(self) -> None:
        if not self._joined:
            raise DisconnectedError(f"not connected to namespace {self.name}")

    def _deliver(self, envelope: Envelope) -> Handler | None:
        """Queue a received event; return its handler, if any."""
        self._inbox.put(envelope)
        return self._handlers.get(envelope.event)


class Client:
    """A plainsocket connection: ``async with Client(url) as client: ...``.

    Args:
        url: the server's ``ws://`` or ``wss://`` URL; ``http://`` and ``https://`` are taken
            as ``ws://`` and ``wss://`` (as client.js does). Anything else is a ``ValueError``.
        auth: sent as the ``connect`` data when ``/`` refuses the client, and on reconnection.
        reconnect: reconnect after a drop (docs/protocol.md, "Close codes"), resuming the
            session when the server keeps it ("Extension: connection state recovery").

    Keyword-only options (``None`` disables a timeout or a limit where noted):
        connect_timeout: seconds to open the socket and read the greeting, and for each
            namespace ``connect`` (default 10).
        ping_interval, ping_timeout: WebSocket keepalive (defaults 20 and 20, as ``websockets``).
            A link that does not answer a ping in time is dropped without a close frame, so
            that the server keeps the session for a recovery.
        close_timeout: seconds to wait for the closing handshake and for handlers (default 5).
        reconnect_delay, reconnect_delay_max: the backoff's first and longest delay in seconds
            (defaults 0.5 and 10).
        reconnect_attempts: attempts before giving up (default None: forever).
        retries: times a call with no answer within its timeout checks the link and waits
            again (default 0; socket.io-client's ``retries``). The check is a ping answered
            within ``ping_timeout``: a link that died silently is dropped, the session resumed,
            and the call sent again with its id, which the server handles once.
        max_queue: received events kept per namespace (default 1000; 0 keeps none).
        max_buffer: events kept while disconnected (default 1000).
        max_pending: received events waiting for their handler before reading pauses
            (default 1000).
        max_size: largest incoming message in bytes (default 2**20, the server's default).
        origin: the ``Origin`` header, for servers that check it.
    """

    def __init__(
        self,
        url: str,
        auth: Any = None,
        reconnect: bool = True,
        *,
        # Timeouts
        connect_timeout: float | None = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float | None = 5.0,
        reconnect_delay: float = 0.5,
        reconnect_delay_max: float = 10.0,
        # Limits
        reconnect_attempts: int | None = None,
        retries: int = 0,
        max_queue: int = 1000,
        max_buffer: int = 1000,
        max_pending: int = 1000,
        max_size: int | None = 2**20,
        # HTTP
        origin: str | None = None,
    ) -> None:
        self.url = websocket_url(url)
        self.auth = auth
        self.reconnect = reconnect
        self.sid: str | None = None
        self._recovered = False
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self._reconnect_delay = reconnect_delay
        self._reconnect_delay_max = reconnect_delay_max
        self._last_at_once = float("-inf")  # when a 4000 last got an immediate reconnection
        self._reconnect_attempts = reconnect_attempts
        self._retries = retries
        self._probe: asyncio.Task[None] | None = None
        self._max_queue = max_queue
        self._max_buffer = max_buffer
        self._max_pending = max_pending
        self._max_size = max_size
        self._origin = origin
        self._namespaces: dict[str, Namespace] = {}
        self._callbacks: dict[str, Handler] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, _Call] = {}
        self._connecting: dict[str, asyncio.Future[Any]] = {}
        self._buffer: deque[tuple[str, int | None]] = deque()
        # Connection state recovery (docs/protocol.md): the session's single-use token, the
        # offset of the last frame received, and the calls sent before a drop that no answer
        # reached (they wait for the recovery, which re-sends them, or fail without one).
        self._token: str | None = None
        self._offset: str | None = None
        self._unanswered: list[int] = []
        self._drop_error: DisconnectedError | None = None
        self._end_reason = ""  # why the connection is gone for good
        # The largest frame sent on the current link, and the smallest the server refused (1009).
        self._largest: tuple[int, str] = (0, "")
        self._refused_bytes: int | None = None
        self._replay_done: asyncio.Future[bool] | None = None
        self._ws: ClientConnection | None = None
        self._ready = False
        self._closing = False
        self._closed: asyncio.Event | None = None
        self._jobs: asyncio.Queue[Callable[[], Awaitable[None]] | None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[tuple[int, str]] | None = None

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """Whether the connection is up and every namespace has been joined again."""
        return self._ready

    @property
    def recovered(self) -> bool:
        """Whether the last (re)connection resumed the session (docs/protocol.md, recovery).

        False after the first connection, and after a reconnection that got a fresh session
        (new sid; calls in flight failed, namespaces joined again): what was sent meanwhile is
        lost, and the application should resynchronise.
        """
        return self._recovered

    @property
    def root(self) -> Namespace:
        """The namespace ``/``, joined when the connection opens."""
        return self.namespace(DEFAULT_NAMESPACE)

    def namespace(self, name: str) -> Namespace:
        """Return the :class:`Namespace` object for ``name`` (joined or not)."""
        namespace = self._namespaces.get(name)
        if namespace is None:
            namespace = self._namespaces[name] = Namespace(self, name, self._max_queue)
        return namespace

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register a lifecycle callback; without ``handler``, return a decorator.

        Events: ``connect(recovered)`` after each (re)connection, ``disconnect(reason)`` when
        the connection drops or closes, ``reconnect(attempt, recovered)`` after a successful
        reconnection, ``frame(text)`` for every text frame received. ``recovered`` is
        :attr:`recovered`; a ``connect`` or ``reconnect`` callback that takes fewer arguments
        gets fewer (``connect()``, ``reconnect(attempt)``). The ``disconnect`` reason is
        ``"client"`` after :meth:`close`, else ``"closed <code>"``. Register callbacks before
        opening to see the first ``connect``. Callbacks and handlers run one at a time, in order.
        Namespace events go to :meth:`Namespace.on`.
        """
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(f"{event!r} is not one of {sorted(LIFECYCLE_EVENTS)}; see Namespace.on")
        return _register(self._callbacks, event, handler)

    async def open(self) -> None:
        """Open the socket and read the server's greeting.

        Raises:
            ConnectRefusedError: ``/`` refused the client (even with ``auth``).
            ProtocolVersionError: the server does not speak protocol version 1.
            ClientTimeoutError: no greeting within ``connect_timeout``.
        """
        self._closed = asyncio.Event()
        self._jobs = asyncio.Queue(self._max_pending)
        self._dispatcher = asyncio.create_task(self._dispatch())
        try:
            ws = await self._open_socket()
        except BaseException:
            self._closing = True
            await self._stop_dispatcher()
            self._closed.set()
            raise
        self._start_reading(ws)
        self._ready = True
        self._supervisor = asyncio.create_task(self._supervise())
        await self._fire("connect", self._recovered)

    async def connect(self, namespace: str, *, auth: Any = None, timeout: float | None = None) -> Namespace:
        """Join ``namespace`` with ``auth`` as the ``connect`` data and return it.

        Args:
            timeout: seconds to wait for the answer (default: ``connect_timeout``).

        Raises:
            ConnectRefusedError: the server answered ``connect_error``.
            ClientTimeoutError: no answer in time.
            DisconnectedError: the connection is down.
            RemoteError: the server answered the ``connect`` with an ``error`` event.
            ProtocolError: ``namespace`` is not a valid name (it must start with ``/``).
        """
        Envelope(CONNECT, namespace)  # validates the name before anything is sent
        ns = self.namespace(namespace)
        ws = self._ws
        if ws is None or self._closing:
            raise DisconnectedError(f"cannot join {namespace}: not connected")
        ns._auth = auth
        if timeout is None:
            timeout = self._connect_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._join(ws, ns)
        except TimeoutError:
            raise ClientTimeoutError(f"no answer to connect {namespace} within {timeout} s") from None
        return ns

    async def close(self) -> None:
        """Close the connection (code 1000), stop reconnecting and let queued handlers finish."""
        if self._closing:
            if self._closed is not None:
                await self._closed.wait()
            return
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            if asyncio.current_task() is self._dispatcher:
                # Closing from a handler: the reader may wait for room in the queue this very
                # task empties; stop it rather than wait for it.
                self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._finish("the client closed the connection", CloseCode.NORMAL)
        await self._stop_dispatcher()

    async def wait_closed(self) -> None:
        """Wait until the connection is gone for good (closed, or reconnection gave up)."""
        assert self._closed is not None, "the client was never opened"
        await self._closed.wait()

    # Connection

    async def _open_socket(self, *, recover: bool = False) -> ClientConnection:
        """Open the WebSocket and complete the greeting; return the connection.

        With ``recover`` and a recovery token, ask the server to resume the session; whether
        it did is in :attr:`recovered` afterwards.
        """
        resuming = recover and self._token is not None
        # With auth, connect / ourselves (docs/protocol.md, "Connecting"): the auth reaches the
        # connect handler on the first attempt instead of after a refusal.
        sends_auth = not resuming and self.auth is not None
        url = self._recovery_url() if resuming else _with_query(self.url, "connect=client") if sends_auth else self.url
        ws = await connect(
            url,
            origin=None if self._origin is None else Origin(self._origin),
            open_timeout=self._connect_timeout,
            ping_interval=None,  # our own keepalive: websockets' sends a close frame on a dead link
            ping_timeout=None,
            close_timeout=self._close_timeout,
            max_size=self._max_size,
        )
        try:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    if sends_auth:
                        await ws.send(encode(CONNECT, self.auth, DEFAULT_NAMESPACE))
                    elif resuming:
                        # The token in the first frame, not in the URL (docs/protocol.md, "Resuming").
                        await ws.send(encode(HEARTBEAT, {"recover": self._token}, DEFAULT_NAMESPACE))
                    data, offset = await self._handshake(ws, auth_sent=sends_auth)
            except TimeoutError:
                raise ClientTimeoutError(f"no greeting from {self.url} within {self._connect_timeout} s") from None
        except BaseException:
            await ws.close()
            raise
        sid = str(data["sid"])
        recovered = resuming and data.get("recovered") is True and sid == self.sid
        if not recovered:
            # A new session: the old one's offsets mean nothing to it, and it is in / (a
            # resumed session keeps its own state of /: it may have left it).
            self._offset = offset
            self.root._joined = True
        self._keep_token(data)
        self.sid = sid
        self._recovered = recovered
        return ws

    def _keep_token(self, data: Any) -> None:
        """Keep the recovery token of a ``connect`` of ``/`` (none: the server has recovery off)."""
        recovery = data.get("recovery") if isinstance(data, dict) else None
        token = recovery.get("token") if isinstance(recovery, dict) else None
        self._token = token if isinstance(token, str) and token else None

    def _recovery_url(self) -> str:
        """Return the URL with ``recover=1`` (the token follows in a frame) and ``offset`` in its query."""
        scheme, netloc, path, query, fragment = urlsplit(self.url)
        params = [p for p in query.split("&") if p and p.split("=", 1)[0] not in ("recover", "offset")]
        params.append("recover=1")
        if self._offset is not None:
            params.append(f"offset={quote(self._offset, safe='')}")
        return urlunsplit((scheme, netloc, path, "&".join(params), fragment))

    async def _handshake(self, ws: ClientConnection, *, auth_sent: bool = False) -> tuple[dict[str, Any], str | None]:
        """Read the greeting (answering a refusal of ``/`` with ``auth``, unless it was sent already).

        Returns the ``connect`` data (it has a ``sid``) and the offset of the last frame read.
        """
        envelope, offset = await self._recv_greeting(ws)
        if envelope.event == CONNECT_ERROR and self.auth is not None and not auth_sent:
            await ws.send(encode(CONNECT, self.auth, DEFAULT_NAMESPACE))
            envelope, later = await self._recv_greeting(ws, retry=True)
            offset = later or offset
        if envelope.event == CONNECT_ERROR:
            raise ConnectRefusedError(DEFAULT_NAMESPACE, envelope.data)
        data = envelope.data if isinstance(envelope.data, dict) else {}
        if data.get("protocol") != PROTOCOL_VERSION or not isinstance(data.get("sid"), str):
            await self._refuse_protocol(ws, f"protocol {data.get('protocol')!r}")
        return data, offset

    async def _recv_greeting(self, ws: ClientConnection, *, retry: bool = False) -> tuple[Envelope, str | None]:
        """Return the next ``connect`` or ``connect_error`` for ``/``, and the last offset read.

        The first frame must be one (docs/protocol.md, "Connecting"): anything else means the
        peer does not speak this protocol. After an auth retry, other frames are skipped.
        """
        offset = None
        while True:
            message = await ws.recv()
            envelope = None
            if isinstance(message, str):
                await self._fire("frame", message)
                parsed, seen = _parse(message)
                offset = seen or offset
                envelope = parsed if isinstance(parsed, Envelope) else None
            if (
                envelope is not None
                and envelope.namespace == DEFAULT_NAMESPACE
                and envelope.event in (CONNECT, CONNECT_ERROR)
            ):
                return envelope, offset
            if not retry:
                await self._refuse_protocol(ws, f"first frame {str(message)[:100]!r}")
            logger.debug("skipping %r while waiting for connect /", message)

    async def _refuse_protocol(self, ws: ClientConnection, what: str) -> NoReturn:
        # docs/protocol.md, "Connecting": close with 4010 instead of waiting for frames.
        await ws.close(CloseCode.UNSUPPORTED_PROTOCOL, "unsupported protocol")
        raise ProtocolVersionError(f"{self.url} does not speak plainsocket protocol {PROTOCOL_VERSION} ({what})")

    async def _join(self, ws: ClientConnection, ns: Namespace) -> Any:
        """Send ``connect`` for ``ns`` (unless one is in flight) and return the answer's data."""
        future = self._connecting.get(ns.name)
        if future is None:
            future = self._connecting[ns.name] = asyncio.get_running_loop().create_future()
            try:
                await ws.send(encode(CONNECT, ns._auth, ns.name))
            except ConnectionClosed:
                self._connecting.pop(ns.name, None)
                raise DisconnectedError(f"cannot join {ns.name}: connection closed") from None
        try:
            # Shielded: a second caller's timeout must not cancel the first caller's answer.
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # Timed out: a later connect() must send its own frame, not wait on this one.
            if self._connecting.get(ns.name) is future:
                del self._connecting[ns.name]
            raise

    def _start_reading(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._largest = (0, "")
        self._reader = asyncio.create_task(self._read(ws))

    async def _read(self, ws: ClientConnection) -> tuple[int, str]:
        """Handle frames until the connection closes; return its close code and reason."""
        keepalive = asyncio.create_task(self._keepalive(ws)) if self._ping_interval is not None else None
        try:
            async for message in ws:
                if isinstance(message, str):
                    await self._handle(ws, message)
                else:
                    logger.warning("ignoring a binary frame (protocol v1 is text only)")
        except ConnectionClosed:
            pass
        except Exception:
            logger.error("client failed while reading frames", exc_info=True)
            await ws.close(CloseCode.INTERNAL_ERROR)
        finally:
            if keepalive is not None:
                keepalive.cancel()
        await ws.wait_closed()
        code = ws.close_code if ws.close_code is not None else ABNORMAL_CLOSURE
        reason = ws.close_reason or ""
        if code == MESSAGE_TOO_BIG:
            await self._refused_too_big()
        await self._connection_lost(code, reason)
        return code, reason

    async def _keepalive(self, ws: ClientConnection) -> None:
        """Ping every ``ping_interval``; drop a link that does not answer within ``ping_timeout``.

        Dropped, not closed: a close frame that gets through means "I am leaving" and ends the
        session, while the server keeps a session whose link died (docs/protocol.md, recovery).
        """
        assert self._ping_interval is not None
        while True:
            await asyncio.sleep(self._ping_interval)
            try:
                async with asyncio.timeout(self._ping_timeout):
                    pong = await ws.ping()
                    if self._ping_timeout is not None:
                        await pong
            except ConnectionClosed:
                return
            except TimeoutError:
                logger.warning("no answer to a ping within %s s: dropping the connection", self._ping_timeout)
                ws.transport.abort()
                return

    async def _connection_lost(self, code: int, reason: str) -> None:
        """Mark the connection down and fail what can no longer be answered."""
        self._ready = False
        error = DisconnectedError(f"connection closed ({code}{': ' + reason if reason else ''})", code)
        for future in self._connecting.values():
            if not future.done():
                future.set_exception(error)
        self._connecting.clear()
        if self._replay_done is not None and not self._replay_done.done():
            self._replay_done.set_result(False)
        buffered = {id for _, id in self._buffer}
        sent = sorted(id for id in self._pending if id not in buffered)
        if self._token is not None and self.reconnect and not self._closing and code in RECOVERABLE_CODES:
            # The server may have kept the session: these calls wait for the recovery.
            self._unanswered, self._drop_error = sent, error
        else:
            self._unanswered, self._drop_error = [], None
            for id in sent:
                self._pending.pop(id).future.set_exception(error)
        await self._fire("disconnect", "client" if self._closing else f"closed {code}")

    async def _supervise(self) -> None:
        """Wait for each connection to drop and reconnect when the close code allows it."""
        while True:
            assert self._reader is not None
            # asyncio.wait, not await: cancelling the supervisor must not cancel the reader.
            await asyncio.wait([self._reader])
            code, reason = self._reader.result()
            if not self.reconnect or not await self._reconnect(code):
                self._finish(f"connection closed ({code}{': ' + reason if reason else ''})", code)
                return

    def _at_once_attempt(self, code: int, attempt: int) -> int:
        """Allow "reconnect at once" (4000) at most once per ``reconnect_delay_max``.

        A server that keeps greeting then dropping us with 4000 must meet a backoff, not a
        busy loop: the attempt counter starts again after every successful greeting.
        """
        if code not in AT_ONCE_CODES or attempt != 0:
            return attempt
        now = time.monotonic()
        if now - self._last_at_once <= self._reconnect_delay_max:
            return 1
        self._last_at_once = now
        return 0

    async def _reconnect(self, code: int) -> bool:
        """Reconnect after a drop with close ``code``; return False when giving up."""
        attempt = -1
        while True:
            attempt += 1
            if self._reconnect_attempts is not None and attempt >= self._reconnect_attempts:
                return False
            delay = reconnect_delay(
                code,
                self._at_once_attempt(code, attempt),
                delay=self._reconnect_delay,
                delay_max=self._reconnect_delay_max,
            )
            if delay is None:
                logger.info("not reconnecting after close code %d", code)
                return False
            await asyncio.sleep(delay)
            try:
                ws = await self._open_socket(recover=True)
            except InvalidStatus as exc:
                if exc.response.status_code == HTTP_FORBIDDEN:
                    logger.warning("not reconnecting: %s", exc)
                    return False
                logger.info("reconnection attempt %d failed: %s", attempt + 1, exc)
                continue
            except (ConnectRefusedError, ProtocolVersionError) as exc:
                logger.warning("not reconnecting: %s", exc)
                return False
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as exc:
                logger.info("reconnection attempt %d failed: %s", attempt + 1, exc)
                continue
            self._start_reading(ws)
            if await self._resume(ws):
                await self._fire("reconnect", attempt + 1, self._recovered)
                await self._fire("connect", self._recovered)
            return True

    async def _resume(self, ws: ClientConnection) -> bool:
        """Resume or rejoin, then send the buffered events; False if the link dropped meanwhile.

        A recovered session keeps its namespaces (the server confirms each with a ``connect``):
        once the missed frames have been read, the calls they did not answer are sent again,
        once. A fresh session fails those calls and joins the namespaces again.
        """
        if self._recovered:
            if not await self._replayed(ws):
                return False
            for id in self._unanswered:
                call = self._pending.get(id)
                if call is None or call.future.done():
                    continue  # answered by a replayed frame, or given up
                try:
                    await self._write(ws, call.text)  # the server drops it if it was handled already
                except ConnectionClosed:
                    return False
        else:
            for id in self._unanswered:
                call = self._pending.pop(id, None)
                if call is not None and not call.future.done():
                    call.future.set_exception(self._drop_error or DisconnectedError("the session was not recovered"))
        self._unanswered, self._drop_error = [], None
        if not self._recovered and not await self._rejoin(ws):
            return False
        while self._buffer:
            item = self._buffer.popleft()
            try:
                await self._write(ws, item[0])
            except ConnectionClosed:
                self._buffer.appendleft(item)  # not sent: keep it for the next connection
                return False
        self._ready = True
        return True

    async def _replayed(self, ws: ClientConnection) -> bool:
        """Wait until the frames a recovery replays have been read; False if the link dropped.

        The server replays them before it reads anything from the new socket, so its answer
        to a ``heartbeat`` comes after the last one.
        """
        done = self._replay_done = asyncio.get_running_loop().create_future()
        try:
            await ws.send(encode(HEARTBEAT, None, DEFAULT_NAMESPACE))
            async with asyncio.timeout(self._connect_timeout):
                return await done
        except ConnectionClosed:
            return False
        except TimeoutError:
            # Sending the calls again is still safe: the server drops the ones it handled.
            logger.warning("no heartbeat answer within %s s after the recovery", self._connect_timeout)
            return True
        finally:
            self._replay_done = None

    async def _rejoin(self, ws: ClientConnection) -> bool:
        """Join the namespaces of the lost session again with their auth; False if the link dropped."""
        namespaces = [ns for ns in self._namespaces.values() if ns._joined and ns.name != DEFAULT_NAMESPACE]
        try:
            async with asyncio.timeout(self._connect_timeout):
                results = await asyncio.gather(*(self._join(ws, ns) for ns in namespaces), return_exceptions=True)
        except TimeoutError:
            logger.warning("namespaces not joined again within %s s", self._connect_timeout)
            results = []
        for ns, result in zip(namespaces, results, strict=False):
            if isinstance(result, DisconnectedError):
                return False
            if isinstance(result, ConnectRefusedError):
                # Nobody awaits this refusal: show it on the namespace like a received event.
                await self._deliver(Envelope(CONNECT_ERROR, ns.name, result.data))
            if isinstance(result, BaseException):
                logger.warning("could not join %s again: %s", ns.name, result)
        return True

    def _finish(self, reason: str, code: int | None) -> None:
        """The connection is gone for good: fail everything still waiting."""
        self._ready = False
        self._end_reason = reason
        error = DisconnectedError(reason, code)
        for call in self._pending.values():
            if not call.future.done():
                call.future.set_exception(error)
        self._pending.clear()
        self._unanswered, self._drop_error = [], None
        self._buffer.clear()
        for ns in self._namespaces.values():
            ns._inbox.close(reason)
        if self._closed is not None:
            self._closed.set()

    # Sending

    async def _write(self, ws: ClientConnection, text: str) -> None:
        """Send ``text`` on ``ws``, keeping the largest frame sent (what a 1009 is about)."""
        await ws.send(text)
        if len(text) * 3 > self._largest[0]:  # at most 3 bytes per character: rarely measured
            size = len(text.encode())
            if size > self._largest[0]:
                self._largest = (size, text)

    def _check_size(self, text: str) -> None:
        if self._refused_bytes is not None and len(text.encode()) >= self._refused_bytes:
            raise RemoteError(
                "message_too_big", f"the server refused a message of {self._refused_bytes} bytes as too big"
            )

    async def _refused_too_big(self) -> None:
        """Close code 1009: the largest frame sent on the link was over the server's limit.

        Every frame the server read before it was within the limit, so it is that one (or one
        as large). Its call fails with ``message_too_big`` (a plain emit gets an ``error``
        event on its namespace), it is not sent again, and frames as large are refused.
        """
        size, text = self._largest
        if not text:
            return
        self._refused_bytes = min(self._refused_bytes or size, size)
        envelope, _ = _parse(text)
        event = envelope.event if isinstance(envelope, Envelope) else "a message"
        message = f"{event!r} ({size} bytes) is over the server's size limit (close code 1009): not delivered"
        id = envelope.id if isinstance(envelope, Envelope) else None
        call = self._pending.pop(id, None) if id is not None else None
        if call is not None and not call.future.done():
            call.future.set_exception(RemoteError("message_too_big", message))
        elif isinstance(envelope, Envelope):
            data = {"code": "message_too_big", "message": message, "event": event, "bytes": size}
            await self._deliver(Envelope(ERROR, envelope.namespace, data))

    async def _send(self, text: str, ack_id: int | None = None) -> None:
        """Send a frame now, or buffer it while reconnecting."""
        if self._closed is None or self._closed.is_set() or self._closing:
            raise DisconnectedError("the connection is closed")
        self._check_size(text)
        if self._ready and self._ws is not None:
            try:
                await self._write(self._ws, text)
                return
            except ConnectionClosed:
                pass  # the reader will notice; keep the frame for the next connection
        if not self.reconnect:
            raise DisconnectedError("the connection is closed")
        if len(self._buffer) >= self._max_buffer:
            raise BufferFullError(f"{self._max_buffer} events already wait for the connection")
        self._buffer.append((text, ack_id))

    async def _send_now(self, text: str) -> None:
        """Send a frame on the current connection, never buffering it."""
        ws = self._ws
        if not self._ready or ws is None or self._closing:
            raise DisconnectedError("not connected")
        self._check_size(text)
        try:
            await self._write(ws, text)
        except ConnectionClosed:
            raise DisconnectedError("the connection is closed") from None

    async def _call(self, namespace: str, event: str, data: Any, timeout: float | None) -> Any:
        id = next(self._ids)
        text = _outgoing(event, data, namespace, id)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[id] = _Call(namespace, future, text)
        try:
            await self._send(text, id)
            retries = self._retries
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        return await asyncio.shield(future)  # shielded: a retry waits for it again
                except TimeoutError:
                    if retries <= 0 or future.done():
                        raise
                    retries -= 1
                    self._check_link()
        except TimeoutError:
            raise ClientTimeoutError(f"no ack for {event!r} on {namespace} within {timeout} s") from None
        finally:
            self._pending.pop(id, None)
            with contextlib.suppress(ValueError):
                self._buffer.remove((text, id))  # a call that gave up is not sent later

    def _check_link(self) -> None:
        """Ping the link now; drop it if the pong does not come within ``ping_timeout``.

        Over a live link a call without an answer is only slow (TCP delivered it); over a dead
        one, dropping the link lets the resume send the call again.
        """
        ws = self._ws
        if ws is None or not self._ready or (self._probe is not None and not self._probe.done()):
            return
        self._probe = asyncio.create_task(self._ping_or_drop(ws))

    async def _ping_or_drop(self, ws: ClientConnection) -> None:
        try:
            async with asyncio.timeout(self._ping_timeout or self._connect_timeout):
                await (await ws.ping())
        except ConnectionClosed:
            pass
        except TimeoutError:
            logger.warning("no answer to a ping while a call waits: dropping the connection")
            ws.transport.abort()  # dropped, not closed: the server keeps the session

    def _fail_calls(self, namespace: str, error: ClientError) -> None:
        for id, call in list(self._pending.items()):
            if call.namespace == namespace:
                del self._pending[id]
                if not call.future.done():
                    call.future.set_exception(error)

    async def _send_ack(self, sid: str | None, envelope: Envelope, result: Any) -> None:
        """Answer the server's acknowledgement request of session ``sid``.

        On the current connection: the one that asked, or its successor when the session was
        recovered. The session that asked may be gone: then the answer is too.
        """
        ws = self._ws
        if sid != self.sid or ws is None:
            logger.debug("dropping the ack for id %s: the session it answers is gone", envelope.id)
            return
        try:
            text = encode(ACK, result, envelope.namespace, envelope.id)
        except (TypeError, ValueError):
            logger.error("handler for %r returned data JSON can not hold", envelope.event, exc_info=True)
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(text)

    # Receiving

    async def _handle(self, ws: ClientConnection, text: str) -> None:
        """Route one received frame."""
        await self._fire("frame", text)
        envelope, offset = _parse(text)
        if offset is not None:
            self._offset = offset
        if isinstance(envelope, ProtocolError):
            logger.warning("ignoring an invalid frame from the server: %s", envelope.message)
            return
        event = envelope.event
        if event == ACK or (event == ERROR and envelope.id in self._pending):
            self._settle_call(envelope)
        elif event == ERROR and envelope.id is None and envelope.namespace in self._connecting:
            # A connect frame has no id: an error on its namespace while it waits answers it.
            self._refuse_connect(envelope)
        elif event in (CONNECT, CONNECT_ERROR):
            await self._settle_connect(ws, envelope)
        elif event == HEARTBEAT:
            if self._replay_done is not None and not self._replay_done.done():
                self._replay_done.set_result(True)
        else:
            await self._deliver(envelope)

    def _settle_call(self, envelope: Envelope) -> None:
        """Resolve the call that an ``ack`` or ``error`` answers."""
        call = self._pending.pop(envelope.id, None) if envelope.id is not None else None
        if call is None or call.future.done():
            logger.debug("ignoring an ack for id %s: no call waits for it", envelope.id)
        elif envelope.event == ERROR:
            data = envelope.data if isinstance(envelope.data, dict) else {}
            call.future.set_exception(RemoteError(str(data.get("code", "")), str(data.get("message", ""))))
        else:
            call.future.set_result(envelope.data)

    def _refuse_connect(self, envelope: Envelope) -> None:
        """Fail the ``connect()`` that an ``error`` event answers, at once."""
        future = self._connecting.pop(envelope.namespace)
        data = envelope.data if isinstance(envelope.data, dict) else {}
        if not future.done():
            future.set_exception(RemoteError(str(data.get("code", "")), str(data.get("message", ""))))

    async def _settle_connect(self, ws: ClientConnection, envelope: Envelope) -> None:
        ns = self.namespace(envelope.namespace)
        recovered = isinstance(envelope.data, dict) and envelope.data.get("recovered") is True
        if ns.name == DEFAULT_NAMESPACE and envelope.event == CONNECT:
            self._keep_token(envelope.data)  # each connect of / replaces the token
        if recovered and not ns._joined and ns.name not in self._connecting:
            # The resumed session is still in a namespace this client left while the link was down.
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode(DISCONNECT, None, ns.name))
            return
        ns._joined = envelope.event == CONNECT
        future = self._connecting.pop(envelope.namespace, None)
        if future is None or future.done():
            if not recovered:
                logger.debug("unexpected %s for %s", envelope.event, envelope.namespace)
            if envelope.event == CONNECT_ERROR:
                ns._inbox.put(envelope)
            return
        if envelope.event == CONNECT:
            future.set_result(envelope.data)
        else:
            future.set_exception(ConnectRefusedError(envelope.namespace, envelope.data))

    async def _deliver(self, envelope: Envelope) -> None:
        """Queue an event on its namespace and schedule its handler."""
        ns = self.namespace(envelope.namespace)
        if envelope.event in PRESENCE_FRAMES and isinstance(envelope.data, dict):
            room = ns._presences.get(envelope.data.get("room"))  # type: ignore[arg-type]
            if room is not None:
                room.receive(envelope.event, envelope.data)
                return
        if envelope.event == DISCONNECT:
            # The server removed us from the namespace (docs/protocol.md, "Leaving").
            ns._joined = False
            self._fail_calls(ns.name, DisconnectedError(f"the server disconnected {ns.name}"))
        handler = ns._deliver(envelope)
        if handler is not None:
            sid = self.sid
            await self._schedule(lambda: self._run_handler(sid, handler, envelope))

    async def _run_handler(self, sid: str | None, handler: Handler, envelope: Envelope) -> None:
        try:
            result = await _invoke(handler, envelope.data)
        except Exception:
            logger.error("handler for %r on %s raised", envelope.event, envelope.namespace, exc_info=True)
            return
        if envelope.id is not None:
            await self._send_ack(sid, envelope, result)

    # Handlers run one at a time, in the order their frames arrived, off the reader task:
    # a handler may await call() while the reader keeps reading the ack.

    async def _fire(self, event: str, *args: Any) -> None:
        """Schedule the lifecycle callback for ``event``, if one is registered."""
        callback = self._callbacks.get(event)
        if callback is not None:
            await self._schedule(lambda: self._run_callback(event, callback, args))

    async def _run_callback(self, event: str, callback: Handler, args: Sequence[Any]) -> None:
        if event in ("connect", "reconnect"):
            args = _trim_args(callback, args)  # callbacks written before the recovered flag
        try:
            await _invoke(callback, *args)
        except Exception:
            logger.error("%s callback raised", event, exc_info=True)

    async def _schedule(self, job: Callable[[], Awaitable[None]]) -> None:
        assert self._jobs is not None
        await self._jobs.put(job)  # a full queue pauses reading: backpressure to the server

    async def _dispatch(self) -> None:
        assert self._jobs is not None
        while (job := await self._jobs.get()) is not None:
            try:
                await job()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the dispatcher itself is being stopped
                # A handler awaited something that was cancelled: the next handlers still run.
                logger.error("a handler was cancelled", exc_info=True)

    async def _stop_dispatcher(self) -> None:
        """Let queued handlers finish (up to close_timeout), then stop the dispatcher."""
        dispatcher = self._dispatcher
        if dispatcher is None or self._jobs is None:
            return
        if dispatcher is asyncio.current_task():
            # Closing from a handler: stop once it returns (a full queue keeps it to loop end).
            with contextlib.suppress(asyncio.QueueFull):
                self._jobs.put_nowait(None)
            return
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._jobs.put(None)
                await asyncio.wait([dispatcher])  # not shield(): its outcome is not ours to raise
        except TimeoutError:
            logger.warning("handlers still running after %s s: cancelled", self._close_timeout)
            dispatcher.cancel()
            await asyncio.gather(dispatcher, return_exceptions=True)


# Testing helpers


class _Server(Protocol):
    """What the testing helpers need of a ``server.SocketServer``."""

    @property
    def port(self) -> int: ...

    async def start(self, host: str = ..., port: int = ...) -> None: ...

    async def shutdown(self) -> None: ...


@contextlib.asynccontextmanager
async def serve_for_test(socketio: _Server) -> AsyncIterator[str]:
    """Start ``socketio`` on 127.0.0.1 with a free port; yield its ``ws://`` URL; shut it down."""
    await socketio.start(host="127.0.0.1", port=0)
    try:
        yield f"ws://127.0.0.1:{socketio.port}"
    finally:
        await socketio.shutdown()


@contextlib.asynccontextmanager
async def test_client(
    socketio: _Server, namespace: str = DEFAULT_NAMESPACE, *, auth: Any = None, **options: Any
) -> AsyncIterator[Namespace]:
    """Serve ``socketio`` for the test, connect one client to ``namespace`` and yield it.

    ``auth`` goes to ``/`` (when it refuses) and to ``namespace``. Other keyword arguments go to
    :class:`Client`; reconnection is off unless ``reconnect=True`` is given.
    """
    options.setdefault("reconnect", False)
    async with serve_for_test(socketio) as url, Client(url, auth, **options) as client:
        if namespace == DEFAULT_NAMESPACE:
            yield client.root
        else:
            yield await client.connect(namespace, auth=auth)


test_client.__test__ = False  # type: ignore[attr-defined]  # not a test: pytest collects test_*


# Command line


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="plainsocket client",
        description="Connect to a plainsocket server, emit events and print every received frame as one line of JSON.",
    )
    parser.add_argument("url", help="server URL, e.g. ws://127.0.0.1:5000 (http:// and https:// also work)")
    parser.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help="namespace to join (default /; 'test' means '/test')"
    )
    parser.add_argument("--auth", help="JSON auth payload for connect")
    parser.add_argument(
        "--emit",
        nargs="+",
        action="append",
        default=[],
        metavar=("EVENT", "DATA"),
        help="emit EVENT with optional JSON DATA; repeat for several, sent in order",
    )
    parser.add_argument("--ack", action="store_true", help="ask for an ack for each emit, wait for it")
    parser.add_argument(
        "--listen",
        action="store_true",
        help="keep printing frames until interrupted; wait for the server and reconnect after outages",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="without --ack or --listen: exit once no frame arrived for SECONDS (default 0.5)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each ack (default 5)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    args = parser.parse_args(argv)
    try:
        args.url = websocket_url(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.namespace.startswith("/"):
        args.namespace = "/" + args.namespace  # as socket.io's io("host/test") reads a path
    try:
        Envelope(CONNECT, args.namespace)
    except ProtocolError as exc:
        parser.error(f"--namespace {args.namespace!r}: {exc.message}")
    if args.auth is not None:
        try:
            args.auth = json.loads(args.auth)
        except ValueError:
            parser.error(f"--auth is not valid JSON: {args.auth!r}")
    emits = []
    for item in args.emit:
        if len(item) > 2:
            parser.error(f"--emit takes EVENT and optional DATA, got {len(item)} values")
        try:
            emits.append((item[0], json.loads(item[1]) if len(item) == 2 else None))
        except ValueError:
            parser.error(f"--emit {item[0]!r}: DATA is not valid JSON: {item[1]!r}")
    args.emit = emits
    return args


def _compact(text: str) -> str:
    """Return a received frame as one line of compact JSON."""
    try:
        return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return json.dumps(text)  # not JSON: print it as a JSON string, still one line


def _server_error(text: str) -> str | None:
    """Return ``code: message`` when ``text`` is an ``error`` event, else None."""
    envelope, _ = _parse(text)
    if not isinstance(envelope, Envelope) or envelope.event != ERROR:
        return None
    data = envelope.data if isinstance(envelope.data, dict) else {}
    return f"{data.get('code', '')}: {data.get('message', '')} (on {envelope.namespace})"


def _describe(exc: BaseException, url: str) -> str:
    """Say in one line why the connection to ``url`` failed; never an empty message."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        why = " (this Origin is not allowed)" if status == HTTP_FORBIDDEN else ""
        return f"the server refused the WebSocket handshake with HTTP {status}{why}"
    if isinstance(exc, ConnectionClosed):
        close = exc.rcvd
        if close is None:
            return "the connection dropped before the server's greeting"
        return f"the server closed the connection with {close.code}{' ' + close.reason if close.reason else ''}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {urlsplit(url).netloc} (is the server running?)"
    detail = str(exc) or type(exc).__name__
    if url.startswith("wss:") and isinstance(exc, (ssl.SSLError, ConnectionResetError, EOFError)):
        return f"TLS handshake with {urlsplit(url).netloc} failed ({detail}): is it a plain ws:// server?"
    return detail


RETRYABLE = (OSError, InvalidHandshake, TimeoutError, ConnectionClosed, EOFError)


def _say(text: str) -> None:
    print(f"plainsocket client: {text}", file=sys.stderr, flush=True)


async def _open_waiting(make: Callable[[], Client], url: str) -> Client:
    """Open a client, waiting for a server that is down (one line on stderr per change)."""
    attempt = 0
    said = None
    while True:
        client = make()
        try:
            await client.open()
        except RETRYABLE as exc:
            if isinstance(exc, InvalidStatus) and exc.response.status_code == HTTP_FORBIDDEN:
                raise
            why = _describe(exc, url)
            if why != said:
                _say(f"waiting for {url}: {why}")
                said = why
            await asyncio.sleep(reconnect_delay(ABNORMAL_CLOSURE, attempt, delay=0.5, delay_max=5.0) or 0.5)
            attempt += 1
            continue
        if said is not None:
            _say(f"connected to {url}")
        return client


async def _run_cli(args: argparse.Namespace) -> int:
    arrived = asyncio.Event()
    errors: list[str] = []

    def print_frame(text: str) -> None:
        arrived.set()
        print(_compact(text), flush=True)
        error = _server_error(text)
        if error is not None:
            errors.append(error)

    def on_disconnect(reason: str) -> None:
        if reason != "client":
            _say(f"disconnected ({reason}): reconnecting")

    def on_reconnect(attempt: int, recovered: bool) -> None:
        how = "session resumed" if recovered else "new session, frames sent meanwhile are lost"
        _say(f"reconnected after {attempt} attempt{'s' if attempt > 1 else ''} ({how})")

    def make() -> Client:
        client = Client(args.url, args.auth, reconnect=args.listen, max_queue=0)
        client.on("frame", print_frame)
        if args.listen:
            client.on("disconnect", on_disconnect)
            client.on("reconnect", on_reconnect)
        return client

    if args.listen:
        client = await _open_waiting(make, args.url)
    else:
        client = make()
        await client.open()
    try:
        ns = client.root
        if args.namespace != DEFAULT_NAMESPACE:
            ns = await client.connect(args.namespace, auth=args.auth)
        for event, data in args.emit:
            if args.ack:
                await ns.call(event, data, timeout=args.timeout)
            else:
                await ns.emit(event, data)
        if args.listen:
            await client.wait_closed()
            if not client._closing:
                _say(f"error: {client._end_reason}; not reconnecting")
                return 1
        elif not args.ack:
            await _settle(args.wait, arrived)
    finally:
        await client.close()
    if errors and not args.listen:
        _say(f"error: the server answered {errors[0]}")
        return 1
    return 0


async def _settle(quiet: float, arrived: asyncio.Event) -> None:
    """Return once no frame has arrived for ``quiet`` seconds."""
    while True:
        arrived.clear()
        try:
            async with asyncio.timeout(quiet):
                await arrived.wait()
        except TimeoutError:
            return


def _with_query(url: str, param: str) -> str:
    scheme, netloc, path, query, fragment = urlsplit(url)
    return urlunsplit((scheme, netloc, path, "&".join(filter(None, [query, param])), fragment))


def main(argv: list[str] | None = None) -> int:
    """Run the command line client; return the exit status (2: usage, 1: connection or server error)."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Ctrl-C stops --listen even when started from a shell that ignores SIGINT (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return asyncio.run(_run_cli(args))
    except KeyboardInterrupt:
        return 130
    except ClientError as exc:
        _say(f"error: {exc}")
        return 1
    except (*RETRYABLE, ValueError) as exc:
        _say(f"error: {_describe(exc, args.url)}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
