"""plainsocket: Socket.IO's event model over plain WebSockets.

The server, its Python API and its command line. A Flask-SocketIO app ports with a change of
imports::

    from plainsocket import SocketServer, emit

    socketio = SocketServer()

    @socketio.on("my event", namespace="/test")
    def test_message(message):
        emit("my response", {"data": message["data"]})

    if __name__ == "__main__":
        socketio.run(host="127.0.0.1", port=5000)

The wire format is docs/protocol.md; ``protocol.py`` parses and encodes it, ``registry.py``
keeps namespace and room membership. This module owns asyncio and the sockets.

Errors are converted in one place per direction: a :class:`protocol.ProtocolError` is the
client's fault and becomes an ``error`` event; an exception from application code is logged
with its traceback and the client gets a generic ``handler_error``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import functools
import inspect
import json
import logging
import resource
import secrets
import signal
import socket
import ssl as ssl_module
import sys
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from time import monotonic, perf_counter
from types import CoroutineType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import DATA_OPCODES, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event

from .broadcast_log import Broadcast, BroadcastLog, Mark, offset_of
from .connection import (
    CLIENT_DISCONNECT,
    OPEN,
    RATE_LIMITED,
    SERVER_DISCONNECT,
    SERVER_SHUTDOWN,
    SERVICE_RESTART,
    SLOW_CONSUMER,
    TOO_MANY_CONNECTIONS,
    CallTimeoutError,
    ClientDisconnectedError,
    Connection,
    LimitExceededError,
    close_reason,
    wire_frame,
)
from .context import (
    Context,
    close_room,
    current,
    disconnect,
    emit,
    join_room,
    leave_room,
    request,
    rooms,
    send,
    session,
)
from .forwarded import TrustedProxies, client_address, parse_trusted
from .hosts import AllowedHosts, normalize, parse_allowed
from .keepalive import Keepalive
from .metrics import (
    FIRST_HANDLER_BOUND,
    BackplaneStats,
    Family,
    LiveStats,
    ServerMetrics,
    on_loop,
    resident_memory,
)
from .presence import CLIENT_REQUESTS, Presence, PresenceError
from .presence_hub import PresenceHub
from .protocol import (
    ACK,
    CONNECT,
    CONNECT_ERROR,
    DEFAULT_NAMESPACE,
    DISCONNECT,
    ERROR,
    HEARTBEAT,
    MAX_DEPTH,
    MAX_EVENT_LENGTH,
    CloseCode,
    Envelope,
    ProtocolError,
    decode,
    encode,
)
from .recovery import Recovery
from .registry import Registry
from .static import StaticFiles, StaticResponse

# The names applications import from here, as they would from flask_socketio.
__all__ = [
    "CallTimeoutError",
    "ClientDisconnectedError",
    "LimitExceededError",
    "Namespace",
    "SocketServer",
    "close_room",
    "disconnect",
    "emit",
    "join_room",
    "leave_room",
    "request",
    "rooms",
    "send",
    "session",
]

if TYPE_CHECKING:
    from .admin import Admin
    from .backplane import RedisBackplane  # imported when used: Redis support costs memory

logger = logging.getLogger("plainsocket")

PACKAGE = Path(__file__).resolve().parent
HEARTBEAT_FRAME = encode(HEARTBEAT).encode()
# All sessions kept for recovery together, as estimated by Connection.recovery_cost(): a
# churny crowd of clients that never come back must not fill memory with their sessions.
DEFAULT_RECOVERY_MAX_MEMORY = 8 * 2**20  # the soak at defaults stays within 25 % of its RSS without recovery
FD_RESERVE = 32  # descriptors kept for Redis, files, logs and the listening socket
HOST_VERDICTS = 256  # Host header values whose allowed_hosts verdict is remembered
# Frames whose id nobody answers: remembering their ids would let a client grow memory forever.
_NEVER_ACKED = frozenset({CONNECT, DISCONNECT, HEARTBEAT})
_new_context = tuple.__new__  # Context(...) without its generated __new__: one per event

# -- Handlers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Handler:
    fn: Callable[..., Any]
    is_async: bool
    arity: int  # how many of the arguments the function accepts
    concurrent: bool = False  # run without waiting for the client's earlier events


def _make_handler(fn: Callable[..., Any], concurrent: bool = False) -> _Handler:
    """Inspect ``fn`` once, at registration, instead of guessing on every call."""
    positional = 0
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            positional = 2
            break
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    # A plain decorator (functools.wraps) around an async function returns its coroutine.
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(inspect.unwrap(fn))
    return _Handler(fn, is_async, positional, concurrent)


class Namespace:
    """A class-based namespace: ``on_<event>`` methods are its handlers.

    Event names with spaces reach the method with underscores: ``my event`` calls
    ``on_my_event``. Register an instance with :meth:`SocketServer.register_namespace`.
    """

    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.namespace = namespace
        self.server: SocketServer | None = None

    def handlers(self) -> Iterator[tuple[str, Callable[..., Any]]]:
        """Yield (event, bound method) for every ``on_<event>`` method."""
        for name in dir(type(self)):
            if name.startswith("on_") and callable(getattr(self, name)):
                event = name[3:]
                yield event, getattr(self, name)
                if "_" in event:
                    yield event.replace("_", " "), getattr(self, name)

    def emit(
        self,
        event: str,
        data: Any = None,
        *,
        to: str | list[str] | None = None,
        skip_sid: str | list[str] | None = None,
    ) -> None:
        """Emit to this namespace (see :meth:`SocketServer.emit`)."""
        self._server().emit(event, data, namespace=self.namespace, to=to, skip_sid=skip_sid)

    def send(self, data: Any, *, json: bool = False, **options: Any) -> None:
        """Emit a ``message`` event (``json`` with ``json=True``) in this namespace."""
        self.emit("json" if json else "message", data, **options)

    def enter_room(self, sid: str, room: str) -> None:
        self._server().enter_room(sid, room, namespace=self.namespace)

    def leave_room(self, sid: str, room: str) -> None:
        self._server().leave_room(sid, room, namespace=self.namespace)

    def close_room(self, room: str) -> None:
        self._server().close_room(room, namespace=self.namespace)

    def rooms(self, sid: str) -> list[str]:
        return self._server().rooms(sid, namespace=self.namespace)

    def disconnect(self, sid: str) -> None:
        """Take ``sid`` out of this namespace."""
        self._server().disconnect(sid, namespace=self.namespace)

    def _server(self) -> SocketServer:
        if self.server is None:
            raise RuntimeError("register the namespace first: socketio.register_namespace(...)")
        return self.server


# -- The server ------------------------------------------------------------------------------


class SocketServer:
    """An event server: namespaces, rooms, broadcasts and acknowledgements over WebSockets.

    Constructing it has no side effects; nothing listens until :meth:`start` or :meth:`run`.
    Every option is keyword-only; ``None`` disables a timeout.
    """

    def __init__(
        self,
        *,
        # Timeouts (seconds)
        ping_interval: float | None = 25.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float | None = 10.0,
        close_timeout: float = 5.0,
        send_timeout: float = 30.0,
        # Limits
        max_message_size: int = 2**20,
        max_depth: int = MAX_DEPTH,
        max_event_length: int = MAX_EVENT_LENGTH,
        max_namespaces: int = 32,
        max_rooms: int = 256,
        max_pending_acks: int = 256,
        max_backlog: int = 1024,
        max_backlog_bytes: int = 4 * 2**20,
        rate_limit: float = 100.0,
        rate_burst: int = 200,
        max_connections: int = 10_000,
        max_connections_per_address: int = 1_000,
        max_send_buffer: int = 2**20,
        # Security
        allowed_origins: Iterable[str] | str | None = None,
        allowed_hosts: Iterable[str] | str | None = None,
        forwarded_allow_ips: Iterable[str] | str | None = None,
        # HTTP on the same port
        static_files: Mapping[str, str | Mapping[str, str]] | None = None,
        static_dir: str | Path = ".",
        # Transport
        compression: bool = False,
        # Connection state recovery (off when the window is 0)
        recovery_window: float = 0.0,
        recovery_max_events: int = 1000,
        recovery_max_bytes: int = 2**20,
        recovery_max_memory: int = DEFAULT_RECOVERY_MAX_MEMORY,
        recovery_log_events: int | None = None,
        recovery_log_bytes: int | None = None,
        # Scale-out
        message_queue: str | None = None,
        channel: str = "plainsocket",
        heartbeat_interval: float = 2.0,
        drain_timeout: float = 5.0,
        # Presence (off for every namespace not named)
        presence: Mapping[str, Presence] | None = None,
        # Observability (docs: README "Operating plainsocket")
        metrics: bool = False,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        metrics_socket: str | None = None,
        # The admin page at GET /admin (off without a token; read-only without admin_write)
        admin_token: str | None = None,
        admin_write: bool = False,
    ) -> None:
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.send_timeout = send_timeout
        self.max_message_size = max_message_size
        self.max_depth = max_depth
        self.max_event_length = max_event_length
        self.max_namespaces = max_namespaces
        self.max_rooms = max_rooms
        self.max_pending_acks = max_pending_acks
        self.max_backlog = max_backlog
        self.max_backlog_bytes = max_backlog_bytes
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self.max_send_buffer = max_send_buffer
        self.allowed_origins = allowed_origins
        self.allowed_hosts = allowed_hosts
        self.forwarded_allow_ips = forwarded_allow_ips
        self.static_files = dict(static_files or {})
        self.static_dir = static_dir  # relative paths in static_files start here
        self._trusted = TrustedProxies()
        self._sockets = 0  # TCP connections open now (WebSocket or plain HTTP)
        self._socket_budget = max_connections * 2
        self.refused_at_limit = 0  # connections refused for want of file descriptors
        self._refused_unlogged = 0
        self._exhaustion_logged_at = 0.0
        self._hosts = AllowedHosts()
        self._host_verdicts: dict[str, bool] = {}  # Host header -> allowed, for headers seen often
        self._origins: frozenset[str] | str = frozenset()
        self.compression = compression
        self.message_queue = message_queue
        self.recovery_window = recovery_window
        self.recovery_max_events = recovery_max_events
        self.recovery_max_bytes = recovery_max_bytes
        self.recovery_max_memory = recovery_max_memory
        # The broadcasts kept once for every session (None: derived from the bounds above).
        self.recovery_log_events = recovery_log_events
        self.recovery_log_bytes = recovery_log_bytes
        self.broadcasts = BroadcastLog(0, 0, 0.0)
        self._size_broadcast_log()
        self.drain_timeout = drain_timeout
        self._offset_prefix = secrets.token_hex(4)  # offsets stay unique across a cluster
        self._offset_count = 0
        self.channel = channel
        self.heartbeat_interval = heartbeat_interval
        self.backplane: RedisBackplane | None = None
        # GET /metrics on this port (metrics), on a listener of its own (metrics_port), or as
        # JSON on a Unix socket for a --workers parent (metrics_socket); counted when any is set.
        self.metrics = metrics
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics_socket = metrics_socket
        self._metrics: ServerMetrics | None = None
        self._metrics_listeners: list[asyncio.Server] = []
        self.admin_token = admin_token
        self.admin_write = admin_write
        self._admin: Admin | None = None
        self._admin_files: StaticFiles | None = None
        self._node_id = secrets.token_hex(6)  # the backplane's node id once there is one

        self.registry = Registry()  # live clients: what tracking and delivery see
        self.kept_registry = Registry()  # sessions kept for a resume: delivery records for them
        self._handlers: dict[str, dict[str, _Handler]] = {DEFAULT_NAMESPACE: {}}
        self._error_handlers: dict[str, _Handler] = {}
        self._default_error_handler: _Handler | None = None
        self._connections: dict[str, Connection] = {}
        self.presence = PresenceHub(self._connections, self.registry, self.kept_registry)
        self.presence.configure(presence)
        # Connection state recovery: the tokens, the kept sessions and their memory budget.
        self.recovery = Recovery(
            self,
            connections=self._connections,
            registry=self.registry,
            kept_registry=self.kept_registry,
            presence=self.presence,
            broadcasts=self.broadcasts,
        )
        self.registry.on_change = functools.partial(self.recovery.membership_changing, self.registry)
        self.kept_registry.on_change = functools.partial(self.recovery.membership_changing, self.kept_registry)
        # The recovery's own objects, without a hop through it: delivery checks the first per
        # frame, and connections call the second for each frame a kept session records.
        self._kept_sessions = self.recovery.kept_sessions
        self.kept_grew: Callable[[Connection, int], None] = self.recovery.kept_grew
        self._per_address: dict[str, int] = {}
        self._server: Server | None = None
        self._keepalive: Keepalive | None = None  # pings every connection (ping_interval)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._to_flush: list[Connection] = []
        self._closing = False
        self.draining = False  # handing the sessions to the rest of the cluster before exiting
        self._drained: asyncio.Event | None = None  # set when the drain has nothing left to wait for
        self._handing_over: set[str] = set()  # sids the drain closed, until another node claims them
        self._resuming = 0  # connections in _resume: a drain waits for them too
        self._stopping = False  # shutdown() started
        self._stop: asyncio.Event | None = None  # set by stop(), SIGTERM or SIGINT while run() serves
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self.port: int | None = None
        self.url: str | None = None

    def configure(self, **options: Any) -> None:
        """Change constructor options before the server starts (what command-line flags do).

        Raises:
            TypeError: a name that is not a constructor option.
        """
        known = inspect.signature(SocketServer.__init__).parameters
        for name, value in options.items():
            if name == "self" or name not in known:
                raise TypeError(f"unknown SocketServer option {name!r}")
            if name == "presence":
                self.presence.configure(value)
                continue
            if name == "static_files":
                value = {**self.static_files, **value}  # the flag's folders join the app's own files
            setattr(self, name, value)

    # -- Registration --------------------------------------------------------------------

    def on(
        self, event: str, namespace: str = DEFAULT_NAMESPACE, *, concurrent: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as the handler of ``event`` in ``namespace``.

        ``connect`` handlers receive the client's auth data and may refuse it by returning
        ``False`` or raising ``ConnectionRefusedError(message)``; ``disconnect`` handlers
        receive the reason; ``*`` catches events that have no handler of their own and receives
        ``(event, data)``. Any other handler receives the event's data; its return value is the
        acknowledgement. Handlers may be ``def`` or ``async def``.

        A client's events are handled in the order they arrive: an ``async def`` handler holds
        the ones behind it until it returns. ``concurrent=True`` (for an ``async def``) lets
        the next events run meanwhile, as Flask-SocketIO's ``async_handlers`` does: for a long
        stream whose client must still be able to say "stop". At most ``max_backlog`` of them
        run at once per client.
        """

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.on_event(event, fn, namespace, concurrent=concurrent)
            return fn

        return register

    def on_event(
        self, event: str, handler: Callable[..., Any], namespace: str = DEFAULT_NAMESPACE, *, concurrent: bool = False
    ) -> None:
        """Register ``handler`` for ``event`` in ``namespace`` (the non-decorator form of :meth:`on`)."""
        if not namespace.startswith("/"):
            raise ValueError("a namespace starts with '/'")
        self._handlers.setdefault(namespace, {})[event] = _make_handler(handler, concurrent)

    def event(self, fn: Callable[..., Any] | None = None, *, namespace: str = DEFAULT_NAMESPACE) -> Any:
        """Register a handler named after the function: ``@socketio.event`` or ``@socketio.event(namespace=...)``."""

        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            self.on_event(handler.__name__, handler, namespace)
            return handler

        return register if fn is None else register(fn)

    def on_error(self, namespace: str = DEFAULT_NAMESPACE) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function to receive the exceptions of ``namespace``'s event handlers.

        The client still gets a ``handler_error``; ``request.event`` tells which event failed.
        """

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._error_handlers[namespace] = _make_handler(fn)
            return fn

        return register

    def on_error_default(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Register the decorated function for exceptions of namespaces without their own ``on_error``."""
        self._default_error_handler = _make_handler(fn)
        return fn

    def register_namespace(self, namespace: Namespace) -> None:
        """Register a class-based :class:`Namespace`."""
        namespace.server = self
        self._handlers.setdefault(namespace.namespace, {})
        for event, method in namespace.handlers():
            self.on_event(event, method, namespace.namespace)

    # -- Emitting --------------------------------------------------------------------------

    def emit(
        self,
        event: str,
        data: Any = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        to: str | Iterable[str] | None = None,
        skip_sid: str | Iterable[str] | None = None,
        include_self: bool = True,
        callback: Callable[..., Any] | None = None,
    ) -> int:
        """Emit ``event`` to everyone in ``namespace``, or to a room, a sid, or a list of them.

        The frame is encoded once and written to every recipient without waiting for any of
        them. Returns how many clients of this node it was written to (0 when called from
        another thread: the emit is handed to the server's loop). ``include_self=False``
        inside a handler skips the client being handled. ``callback`` (with ``to=sid``)
        receives that client's acknowledgement, as in Flask-SocketIO; when none comes within
        60 s, or the client goes away, a warning is logged instead.
        """
        if to is not None and not isinstance(to, str):
            to = list(to)  # read an iterator once, for this node and the others
        _check_rooms(to)
        if self._from_other_thread():
            # Flask-SocketIO apps emit from threads: validate here, deliver on the loop.
            Envelope(event, namespace, data)
            encode(event, data, namespace)
            self._on_loop(self.emit, event, data, namespace=namespace, to=to, skip_sid=skip_sid, callback=callback)
            return 0
        if not include_self:
            context = current.get(None)
            if context is not None:
                skip_sid = _with_sid(skip_sid, context.conn.sid)
        if callback is not None:
            if not isinstance(to, str):
                raise ValueError("callback= needs to=sid: only one client can acknowledge")
            self._spawn(self._call_back(event, data, to, namespace, callback))
            return 1
        offset = self._next_offset() if self.recovery_window else None
        frame = encode(event, data, namespace, None, offset).encode()
        if skip_sid is not None and not isinstance(skip_sid, str):
            skip_sid = list(skip_sid)
        count = self._deliver(namespace, frame, to, skip_sid)
        if self.backplane is not None and not (isinstance(to, str) and to in self._connections):
            # Deliver locally first, then let the other nodes deliver to theirs.
            self.backplane.publish_emit(namespace, event, data, to, skip_sid, offset)
        return count

    async def _call_back(self, event: str, data: Any, sid: str, namespace: str, callback: Callable[..., Any]) -> None:
        try:
            result = await self.call(event, data, to=sid, namespace=namespace)
        except (CallTimeoutError, ClientDisconnectedError, LimitExceededError) as exc:
            logger.warning("callback of %s not called (sid=%s): %s", _safe(event), sid, type(exc).__name__)
            return
        handler = _make_handler(callback)
        try:
            outcome = handler.fn(*(result,)[: handler.arity])
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception("callback of %s failed (sid=%s)", _safe(event), sid)

    def frame(self, event: str, data: Any = None, namespace: str = DEFAULT_NAMESPACE, id: int | None = None) -> bytes:
        """Encode one frame for one client (with an offset when recovery is on)."""
        if not self.recovery_window:
            return encode(event, data, namespace, id).encode()
        self._offset_count += 1  # _next_offset(), inlined: one per frame sent
        return encode(event, data, namespace, id, f"{self._offset_prefix}-{self._offset_count}").encode()

    def _error(self, code: str, message: str, namespace: str = DEFAULT_NAMESPACE, id: int | None = None) -> bytes:
        return self.frame(ERROR, {"code": code, "message": message}, namespace, id)

    def _next_offset(self) -> str:
        self._offset_count += 1
        return f"{self._offset_prefix}-{self._offset_count}"

    def send(self, data: Any, *, json: bool = False, **options: Any) -> int:
        """Emit a ``message`` event (``json`` with ``json=True``)."""
        return self.emit("json" if json else "message", data, **options)

    def _deliver(
        self, namespace: str, frame: bytes, to: str | Iterable[str] | None, skip_sid: str | Iterable[str] | None
    ) -> int:
        self.presence.before_deliver(namespace, to)  # a member's join reaches observers before its messages
        recipients = self.registry.recipients(namespace, to)
        skipped = None if skip_sid is None else ({skip_sid} if isinstance(skip_sid, str) else set(skip_sid))
        if skipped is not None:
            recipients = recipients - skipped
        connections = self._connections
        wire = wire_frame(frame) if len(recipients) > 1 else None
        # A frame for many is kept once, in the server's log, not by each recipient.
        mark = None
        if wire is not None and self.recovery_window:
            mark = self._log_broadcast(namespace, frame, to, skipped).mark
        metrics = self._metrics
        started = perf_counter() if metrics is not None and wire is not None else 0.0
        count = 0
        # Copy: a write may fail and start a disconnect, which changes membership.
        for sid in tuple(recipients):
            conn = connections.get(sid)
            if conn is not None:
                conn.send(frame, wire, mark)
                count += 1
        if metrics is not None:
            if started:
                metrics.broadcast_seconds.observe(perf_counter() - started)
            metrics.frames_sent(namespace, count)
        if self._kept_sessions:
            self._record_for_kept(namespace, frame, to, recipients, skipped, mark)
        return count

    def _record_for_kept(
        self,
        namespace: str,
        frame: bytes,
        to: str | Iterable[str] | None,
        live: set[str],
        skipped: set[str] | None,
        mark: Mark | None,
    ) -> None:
        """Record ``frame`` for the kept sessions it would have reached, for their resume."""
        # A session whose disconnect handlers still run is in both registries: once.
        kept = [
            sid
            for sid in self.kept_registry.recipients(namespace, to)
            if sid not in live and (skipped is None or sid not in skipped)
        ]
        if mark is None and kept and len(kept) + len(live) > 1:
            # For many, counting a live recipient (which keeps its copy: a resume sends it once).
            mark = self._log_broadcast(namespace, frame, to, skipped).mark
        for sid in kept:
            conn = self._connections.get(sid)
            if conn is None:
                continue
            if mark is None:
                conn.send(frame)  # to this session alone: in its own log
            else:
                conn.last_broadcast = mark

    def _log_broadcast(
        self, namespace: str, frame: bytes, to: str | Iterable[str] | None, skipped: set[str] | None
    ) -> Broadcast:
        """Keep a frame sent to many once, with its target, for the resumes that need it."""
        entry = self.broadcasts.append(frame, offset_of(frame) or "", namespace, to, skipped)
        if self._kept_sessions:
            self.recovery.check_budget()
        return entry

    def _size_broadcast_log(self) -> None:
        """Bound the broadcast log from the recovery options (again at start: flags may change them)."""
        log = self.broadcasts
        log.max_events = self.recovery_log_events or 10 * self.recovery_max_events
        log.max_bytes = self.recovery_log_bytes or min(4 * self.recovery_max_bytes, self.recovery_max_memory // 2)
        # Older broadcasts serve no session: a drop is seen within a ping interval and timeout,
        # and a dropped session waits for its client one recovery window.
        log.max_age = self.recovery_window + (self.ping_interval or 0) + (self.ping_timeout or 0)

    def call(
        self, event: str, data: Any = None, *, to: str, namespace: str = DEFAULT_NAMESPACE, timeout: float = 60.0
    ) -> Any:
        """Emit ``event`` asking for an acknowledgement, and return it (``await socketio.call(...)``).

        Addressed to a sid, return that client's acknowledgement data. Addressed to a room,
        return the list of acknowledgements received from its members within ``timeout``.
        From another thread it blocks that thread and returns the result itself.

        Raises:
            CallTimeoutError: (to a sid) no acknowledgement within ``timeout``.
            ClientDisconnectedError: the client is not connected or went away; or, on a
                single node, nobody in ``to`` is connected (an unknown sid, an empty room).
            LimitExceededError: (to a sid) too many acknowledgements are pending already.
        """
        if self._from_other_thread():
            assert self._loop is not None
            future = asyncio.run_coroutine_threadsafe(self._call(event, data, to, namespace, timeout), self._loop)
            return future.result(timeout + 5)
        return self._call(event, data, to, namespace, timeout)

    async def _call(self, event: str, data: Any, to: str, namespace: str, timeout: float) -> Any:
        """The body of :meth:`call`, on the loop."""
        conn = self._connections.get(to)
        if conn is not None and conn.detached:
            raise ClientDisconnectedError(to)  # kept for a resume, but gone: it was told so
        if conn is not None and self.registry.is_connected(namespace, to):
            return await self._call_one(conn, event, data, namespace, timeout)
        if self.backplane is None:
            if not self.registry.members(namespace, to):
                raise ClientDisconnectedError(to)  # no such sid here, or nobody in that room
            results, _, _ = await self.call_local(event, data, to, namespace, timeout)
            return results
        (results, _, _), replies = await asyncio.gather(
            self.call_local(event, data, to, namespace, timeout),
            self.backplane.call(event, data, to, namespace, timeout),
        )
        for reply in replies:
            if reply["single"]:  # the node that holds this sid answered
                if reply["error"] == "timeout":
                    raise CallTimeoutError(f"no acknowledgement of {event!r} from {to} in {timeout} s")
                if reply["error"] is not None:
                    raise ClientDisconnectedError(to)
                return reply["results"][0]
            results.extend(reply["results"])
        return results

    async def call_local(
        self, event: str, data: Any, to: str, namespace: str, timeout: float
    ) -> tuple[list[Any], str | None, bool]:
        """Call the clients of this node in ``to``: (acks received, error, whether ``to`` is a local sid)."""
        conn = self._connections.get(to)
        if conn is not None and conn.detached:
            return [], "disconnected", True
        if conn is not None and self.registry.is_connected(namespace, to):
            try:
                return [await self._call_one(conn, event, data, namespace, timeout)], None, True
            except CallTimeoutError:
                return [], "timeout", True
            except (ClientDisconnectedError, LimitExceededError):
                return [], "disconnected", True
        members = [c for sid in tuple(self.registry.members(namespace, to)) if (c := self._connections.get(sid))]
        results = await asyncio.gather(
            *(self._call_one(c, event, data, namespace, timeout) for c in members), return_exceptions=True
        )
        return [result for result in results if not isinstance(result, BaseException)], None, False

    async def _call_one(self, conn: Connection, event: str, data: Any, namespace: str, timeout: float) -> Any:
        if conn.ws.protocol.state is not OPEN:
            raise ClientDisconnectedError(conn.sid)
        id, future = conn.expect_ack()
        metrics = self._metrics
        try:
            conn.send(self.frame(event, data, namespace, id))
            if metrics is not None:
                metrics.frames_sent(namespace, 1)
            async with asyncio.timeout(timeout):
                result = await future
        except TimeoutError:
            if metrics is not None:
                metrics.ack("timeout")
            raise CallTimeoutError(f"no acknowledgement of {event!r} from {conn.sid} in {timeout} s") from None
        except ClientDisconnectedError:
            if metrics is not None:
                metrics.ack("disconnected")
            raise
        finally:
            conn.pending.pop(id, None)
        if metrics is not None:
            metrics.ack("ok")
        return result

    # -- Sessions outside handlers -----------------------------------------------------------

    def get_session(self, sid: str, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
        """Return the ``session`` dict of ``sid`` in ``namespace`` (python-socketio's name).

        Raises:
            ClientDisconnectedError: no such client on this node.
        """
        conn = self._connections.get(sid)
        if conn is None or namespace not in conn.namespaces:
            raise ClientDisconnectedError(sid)
        return conn.sessions.setdefault(namespace, {})

    def save_session(self, sid: str, data: Mapping[str, Any], namespace: str = DEFAULT_NAMESPACE) -> None:
        """Replace the ``session`` dict of ``sid`` in ``namespace``."""
        self.get_session(sid, namespace)
        self._connections[sid].sessions[namespace] = dict(data)

    # -- Rooms and tracking ----------------------------------------------------------------

    def enter_room(self, sid: str, room: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Put ``sid`` in ``room``.

        Raises:
            LimitExceededError: the client is in ``max_rooms`` rooms already.
        """
        _check_rooms(room)
        if self._from_other_thread():
            self._on_loop(self.enter_room, sid, room, namespace=namespace)
            return
        # A dropped session is in the kept registry, and also in the live one while its
        # disconnect handlers run: a room other code puts it in meanwhile must survive for the
        # resume; one its own handlers enter is not part of the session that was dropped.
        registries = [r for r in (self.registry, self.kept_registry) if r.is_connected(namespace, sid)]
        if self._own_drop_handler(sid):
            registries = [r for r in registries if r is self.registry]
        if not registries:
            if self.backplane is not None and sid not in self._connections:
                self.backplane.publish("enter_room", namespace=namespace, sid=sid, room=room)
            return
        for registry in registries:
            if room in registry.rooms(namespace, sid):
                continue  # already in it: joining again changes nothing
            if registry.room_count(namespace, sid) >= self.max_rooms + 1:  # + its own sid room
                raise LimitExceededError(f"more than {self.max_rooms} rooms")
            registry.enter_room(namespace, sid, room)
        self.presence.entered(namespace, sid, room)

    def _own_drop_handler(self, sid: str) -> bool:
        """Whether this code runs in a handler of ``sid``'s own session while it is being dropped."""
        context = current.get(None)
        conn = self._connections.get(sid)
        return (
            context is not None
            and conn is not None
            and context.conn is conn
            and conn.dropping is not None
            and not conn.dropping.done()
        )

    def leave_room(self, sid: str, room: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Take ``sid`` out of ``room``."""
        _check_rooms(room)
        if self._from_other_thread():
            self._on_loop(self.leave_room, sid, room, namespace=namespace)
            return
        if self.backplane is not None and sid not in self._connections:
            self.backplane.publish("leave_room", namespace=namespace, sid=sid, room=room)
        self.registry.leave_room(namespace, sid, room)
        if not self._own_drop_handler(sid):
            # A disconnect handler's own leave_room is cleanup: the session resumes in the rooms
            # it had at the drop (as Socket.IO persists them before its disconnect event).
            self.kept_registry.leave_room(namespace, sid, room)
        self.presence.left(namespace, sid, room)

    def close_room(self, room: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Take every member out of ``room``, on every node."""
        _check_rooms(room)
        if self._from_other_thread():
            self._on_loop(self.close_room, room, namespace=namespace)
            return
        self.registry.close_room(namespace, room)
        self.kept_registry.close_room(namespace, room)
        self.presence.room_closed(namespace, room)
        if self.backplane is not None:
            self.backplane.publish("close_room", namespace=namespace, room=room)

    def rooms(self, sid: str, *, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
        """Return the rooms ``sid`` is in (its own sid room first)."""
        found = self.registry.rooms(namespace, sid)
        if sid in found:
            found.discard(sid)
            return [sid, *sorted(found)]
        return sorted(found)

    def members(self, room: str, *, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
        """Return the sids in ``room``."""
        return sorted(self.registry.members(namespace, room))

    def sids(self, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
        """Return the sids connected to ``namespace``."""
        return sorted(self.registry.sids(namespace))

    def connection_count(self, namespace: str | None = None) -> int:
        """Count the live clients of ``namespace``, or every open WebSocket when ``namespace`` is None.

        Sessions kept for a resume are not clients: :attr:`recoverable` counts them.
        """
        if namespace is None:
            return len(self._connections) - self.recoverable
        return self.registry.count(namespace)

    @property
    def recoverable(self) -> int:
        """Count the sessions kept for a resume (their clients dropped; see ``recovery_window``)."""
        return len(self._kept_sessions)

    async def cluster_sids(self, namespace: str = DEFAULT_NAMESPACE, room: str | None = None) -> list[str]:
        """Return the sids in ``namespace`` (or in ``room``) on every node of the cluster."""
        sids, _ = self.local_view(namespace, room)
        if self.backplane is not None:
            for reply in await self.backplane.query(namespace, room):
                sids.extend(reply["sids"] or ())
        return sorted(set(sids))

    async def cluster_count(self, namespace: str | None = None) -> int:
        """Count the clients of ``namespace`` (every open WebSocket when None) on every node."""
        _, count = self.local_view(namespace, None)
        if self.backplane is not None:
            count += sum(reply["count"] for reply in await self.backplane.query(namespace, None))
        return count

    def local_view(self, namespace: str | None, room: str | None) -> tuple[list[str], int]:
        """Return this node's (sids, count) for ``namespace``/``room`` (all connections when None)."""
        if namespace is None:
            return [], len(self._connections) - self.recoverable
        sids = self.registry.sids(namespace) if room is None else self.registry.members(namespace, room)
        return list(sids), len(sids)

    def apply_remote(self, message: dict[str, Any]) -> None:
        """Apply a validated message from another node to this node's clients only."""
        kind, namespace = message["kind"], message["namespace"]
        if kind == "emit":
            offset = (message.get("offset") or self._next_offset()) if self.recovery_window else None
            frame = encode(message["event"], message.get("data"), namespace, None, offset).encode()
            self._deliver(namespace, frame, message["to"], message["skip"])
        elif kind == "enter_room" and message["sid"] in self._connections:
            try:
                self.enter_room(message["sid"], message["room"], namespace=namespace)
            except LimitExceededError:
                logger.warning("remote enter_room refused: %s is in too many rooms", message["sid"])
        elif kind == "leave_room" and message["sid"] in self._connections:
            self.leave_room(message["sid"], message["room"], namespace=namespace)
        elif kind == "close_room":
            self.registry.close_room(namespace, message["room"])
            self.kept_registry.close_room(namespace, message["room"])
            self.presence.room_closed(namespace, message["room"])
        elif kind == "disconnect" and message["sid"] in self._connections:
            self.disconnect(message["sid"], namespace=namespace)

    def disconnect(self, sid: str, *, namespace: str | None = None) -> None:
        """Disconnect ``sid`` from ``namespace``, or close its WebSocket (code 4001) when None."""
        if self._from_other_thread():
            self._on_loop(self.disconnect, sid, namespace=namespace)
            return
        conn = self._connections.get(sid)
        if conn is None:
            if self.backplane is not None:
                self.backplane.publish("disconnect", namespace=namespace, sid=sid)
            return
        if conn.detached:
            # Its handlers ran at the drop: what is left is the kept state, which must not resume.
            if namespace is None or conn.namespaces == {namespace}:
                self.recovery.forget(conn, SERVER_DISCONNECT)
            elif namespace in conn.namespaces:
                self._forget_namespace(conn, namespace)
            return
        if namespace is None:
            self.recovery.forget_token(conn)  # a kicked client must not resume its session
            conn.close(CloseCode.SERVER_DISCONNECT, SERVER_DISCONNECT, SERVER_DISCONNECT)
        elif namespace in conn.namespaces:
            self._spawn(self._leave(conn, namespace, SERVER_DISCONNECT, notify=True))

    def flush_soon(self, conn: Connection) -> None:
        """Flush ``conn`` at the end of this loop iteration (once for all its frames)."""
        if not self._to_flush:
            asyncio.get_running_loop().call_soon(self._flush)
        self._to_flush.append(conn)

    def _flush(self) -> None:
        connections, self._to_flush = self._to_flush, []
        for conn in connections:
            conn.flush()

    def start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> BackgroundTask:
        """Run ``target(*args, **kwargs)`` in the background, as Flask-SocketIO does.

        A coroutine function runs as a task on the server's loop; a plain function in a thread
        of its own (where :meth:`sleep` sleeps the thread and :meth:`emit` is safe). A crash is
        logged with its traceback when it happens. The result has ``join()``, and can be awaited.
        """
        name = getattr(target, "__name__", "task")
        if inspect.iscoroutinefunction(target):
            coro = _logged(target(*args, **kwargs), name)
            if self._from_other_thread():
                assert self._loop is not None
                future = asyncio.run_coroutine_threadsafe(coro, self._loop)
                return BackgroundTask(future=future)
            return BackgroundTask(task=self._spawn(coro))
        thread = threading.Thread(target=_logged_call, args=(target, args, kwargs), name=name, daemon=True)
        thread.start()
        return BackgroundTask(thread=thread)

    @staticmethod
    def sleep(seconds: float = 0) -> Any:
        """Pause: ``await socketio.sleep(s)`` on the event loop; in a thread, it sleeps that thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            time.sleep(seconds)
            return None
        return asyncio.sleep(seconds)

    def _from_other_thread(self) -> bool:
        """Whether the caller runs outside the server's event loop (a thread, ``asyncio.to_thread``)."""
        return self._loop is not None and threading.get_ident() != self._loop_thread

    def _on_loop(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``fn`` on the server's loop, soon; log what it raises (nobody else can see it)."""
        assert self._loop is not None

        def run() -> None:
            try:
                fn(*args, **kwargs)
            except Exception:
                logger.exception("%s called from a thread failed", getattr(fn, "__name__", "call"))

        self._loop.call_soon_threadsafe(run)

    # -- Lifecycle ---------------------------------------------------------------------------

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 5000,
        *,
        ssl: ssl_module.SSLContext | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; see :attr:`port`), or on ``sock``."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._origins = _parse_origins(self.allowed_origins)
        self._socket_budget = self._fit_descriptors()
        self._loop.set_exception_handler(_quiet_exhaustion(self._loop.get_exception_handler(), self))
        self._trusted = parse_trusted(self.forwarded_allow_ips)
        self._size_broadcast_log()
        self._hosts = parse_allowed(self.allowed_hosts)
        self._host_verdicts = {}
        if self._hosts.everyone:
            logger.warning("allowed_hosts '*': any DNS name pointed at this server reaches it (DNS rebinding)")
        self._static_files = StaticFiles(self.static_files, base_dir=self.static_dir)
        self._builtin = StaticFiles(_builtin_files())
        self._start_admin()
        if self.ping_interval is not None:
            self._keepalive = Keepalive(self._loop, self.ping_interval, self.ping_timeout)
        if self.message_queue is not None:
            # Fail before listening when Redis is unreachable: no half-working node.
            from .backplane import RedisBackplane

            self.backplane = RedisBackplane(
                self, self.message_queue, channel=self.channel, heartbeat_interval=self.heartbeat_interval
            )
            self._node_id = self.backplane.node
            if self._admin is not None:
                self.backplane.summary = self.admin_node_summary  # travels with the heartbeat
            await self.backplane.start()
            if self.presence.options:
                from .presence_redis import RedisPresence

                self.presence.store = RedisPresence(self.presence, self.backplane)
                await self.presence.store.start()
        self._server = await serve(
            self._serve,
            None if sock else host,
            None if sock else port,
            sock=sock,
            create_connection=functools.partial(HTTPConnection, tracker=self),
            process_request=self._process_request,
            compression="deflate" if self.compression else None,
            max_size=self.max_message_size,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            open_timeout=self.open_timeout,
            close_timeout=self.close_timeout,
            server_header=None,
            ssl=ssl,
        )
        host, self.port = self._server.sockets[0].getsockname()[:2]
        scheme = "https" if ssl else "http"
        self.url = f"{'wss' if ssl else 'ws'}://{host}:{self.port}"
        self._spawn(self._watch_slow_consumers())
        await self._start_metrics()
        logger.info("listening on %s://%s:%d", scheme, host, self.port)

    async def shutdown(self, *, restart: bool = False) -> None:
        """Close every client with 1001 (1012 with ``restart``), run their disconnect handlers, stop listening.

        In a cluster with recovery on, drain first (:meth:`drain`): the clients resume on
        another node and lose nothing.
        """
        if self._server is None or self._closing or self._stopping:
            return
        self._stopping = True
        if not self.draining and self._can_drain():
            await self.drain()
        self._closing = True
        code, why = (CloseCode.SERVICE_RESTART, "service restart") if restart else (CloseCode.SHUTDOWN, SERVER_SHUTDOWN)
        for conn in list(self._connections.values()):
            if conn.worker is not None:
                conn.worker.cancel()  # a running handler (a connect one too) must not outlive shutdown
            conn.close(code, why, SERVER_SHUTDOWN)
        self._server.close(close_connections=True)
        # Closing aborts every connection after close_timeout; bound the wait the same way.
        closed = asyncio.ensure_future(self._server.wait_closed())
        _, pending = await asyncio.wait([closed], timeout=self.close_timeout + 1.0)
        if pending:
            logger.warning("%d connection(s) still closing at shutdown", len(self._connections))
            closed.cancel()
        # Sessions kept for recovery have no socket left to close: let the disconnect handlers
        # of the latest drops finish (they ran at the drop, nothing more runs), then forget them.
        kept = [conn for conn in self._connections.values() if conn.detached]
        running = [conn.dropping for conn in kept if conn.dropping is not None and not conn.dropping.done()]
        if running:
            await asyncio.wait(running, timeout=self.close_timeout + 1.0)  # as live clients get
        for conn in kept:
            self.recovery.forget(conn, SERVER_SHUTDOWN)
        for task in list(self._tasks):
            task.cancel()
        if self._keepalive is not None:
            self._keepalive.stop()
        for listener in self._metrics_listeners:
            listener.close()
        if self.backplane is not None:
            self.presence.stop()
            await self.backplane.stop()
        logger.info("server stopped")

    async def drain(self) -> None:
        """Hand every session to the rest of the cluster, for a restart that loses nothing.

        Stop accepting; close each client with 1012 ("service restart": reconnect now) and keep
        its session as after a drop, so that the node it reconnects to claims it over Redis
        with every frame it missed; wait until every kept session is claimed, or
        ``drain_timeout`` seconds. :meth:`shutdown` does this first in a cluster.
        """
        assert self._server is not None
        if self.draining or self._closing:
            return
        self.draining = True
        self._drained = asyncio.Event()
        self._server.close(close_connections=False)  # the other nodes take the new clients
        live = [conn for conn in self._connections.values() if not conn.detached]
        logger.info("draining: %d client(s) to hand over within %g s", len(live), self.drain_timeout)
        for conn in live:
            self._hand_over(conn)
        started = asyncio.get_running_loop().time()
        self._note_drained()
        try:
            await asyncio.wait_for(self._drained.wait(), self.drain_timeout)
        except TimeoutError:
            pass
        waited = asyncio.get_running_loop().time() - started
        logger.info("drained in %.1f s: %d session(s) not claimed", waited, len(self._handing_over))

    def _can_drain(self) -> bool:
        """Whether another node could take this node's sessions now."""
        backplane = self.backplane
        if backplane is None or not self.recovery_window or not self.drain_timeout:
            return False
        return backplane.link_up and len(backplane.alive_nodes()) > 1

    def _hand_over(self, conn: Connection) -> None:
        """Close a client with 1012 and keep its session for the node it reconnects to."""
        self._handing_over.add(conn.sid)
        conn.close(CloseCode.SERVICE_RESTART, "service restart", SERVICE_RESTART)

    def _note_drained(self, gone: str | None = None) -> None:
        """While draining, tell :meth:`drain` once every session it closed left this node."""
        if self._drained is None:
            return
        if gone is not None:
            self._handing_over.discard(gone)
        if not self._handing_over and not self._resuming:
            self._drained.set()

    def run(
        self,
        host: str = "127.0.0.1",
        port: int = 5000,
        *,
        ssl: ssl_module.SSLContext | None = None,
        sock: socket.socket | None = None,
        debug: bool = False,
    ) -> None:
        """Serve until SIGTERM, SIGINT or :meth:`stop`, then shut down cleanly (blocking).

        With ``debug``, as Flask-SocketIO's ``run(debug=True)``: the program runs again in a
        child process that is restarted when a source file next to it changes (clients get
        1012 and reconnect). Under a supervisor (``--workers``, ``--reload``) it serves on the
        socket the supervisor handed over.
        """
        from .supervisor import Supervisor, bind, inherited_socket

        if not logging.getLogger().handlers:
            # A program started with `python app.py` (run() is its main): say what happens.
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            logging.getLogger("websockets").setLevel(logging.WARNING)
        sock = sock or inherited_socket()
        if debug and sock is None:
            folder = Path(sys.argv[0]).resolve().parent
            supervisor = Supervisor([sys.executable, *sys.argv], bind(host, port), reload_dirs=[folder])
            sys.exit(supervisor.run())
        _run_loop(self._serve_until_signal(host, port, ssl, sock))

    def stop(self) -> None:
        """Stop serving, as SIGTERM does (Flask-SocketIO's ``socketio.stop()``); callable from any thread."""
        loop = self._loop
        if loop is None:
            return
        if self._stop is not None:
            loop.call_soon_threadsafe(self._stop.set)
        else:
            loop.call_soon_threadsafe(lambda: self._spawn(self.shutdown()))

    async def _serve_until_signal(
        self, host: str, port: int, ssl: ssl_module.SSLContext | None, sock: socket.socket | None
    ) -> None:
        stop = self._stop = asyncio.Event()
        restart = False
        loop = asyncio.get_running_loop()

        def on_restart() -> None:
            nonlocal restart
            restart = True
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, on_restart)  # a supervisor restarting this worker
        await self.start(host, port, ssl=ssl, sock=sock)
        from .supervisor import tell_ready

        tell_ready()  # a rolling restart retires the worker this one replaces
        await stop.wait()
        logger.info("restarting" if restart else "shutting down")
        await self.shutdown(restart=restart)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- HTTP on the same port ---------------------------------------------------------------

    def client_address(self, ws: ServerConnection) -> str:
        """The client's IP address: the peer's, or what a trusted proxy says (``forwarded_allow_ips``)."""
        remote = ws.remote_address
        peer = str(remote[0]) if remote else "?"
        if not self._trusted or ws.request is None:
            return peer
        return client_address(peer, ws.request.headers, self._trusted)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        # get_all(): a repeated header is the client's error (4xx), never a 500 with a traceback.
        headers = request.headers
        assert isinstance(connection, HTTPConnection)
        refused = self._refuse_when_out_of_descriptors(connection) or self._refused_host(connection, headers)
        if refused is not None:
            return refused
        upgrades = [value.strip().lower() for value in headers.get_all("Upgrade")]
        if "websocket" not in upgrades:
            return self._http(connection, request)
        if upgrades != ["websocket"]:
            return connection.respond(HTTPStatus.BAD_REQUEST, "invalid Upgrade header\n")
        if connection.method != "GET":
            # RFC 6455 4.1: the opening handshake is a GET; nothing else is upgraded.
            return _static_response(connection, _not_allowed())
        origins = headers.get_all("Origin")
        if origins and not (len(origins) == 1 and self._origin_allowed(origins[0], headers.get_all("Host"))):
            # Cross-site WebSocket hijacking defence: browsers always send Origin.
            logger.warning("refused origin %s", _safe(", ".join(origins)))
            if self._metrics is not None:
                self._metrics.connection_refused("origin")
            return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")
        return None

    def _fit_descriptors(self) -> int:
        """Raise the soft open-files limit to the hard one; return how many sockets may be open.

        Past that budget new connections get 503 with Retry-After at once, instead of timing
        out while accept() fails (a few descriptors stay for Redis, files and logs).
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (ValueError, OSError):
                pass
        if soft == resource.RLIM_INFINITY:
            return self.max_connections * 2
        budget = max(16, soft - FD_RESERVE)
        if budget < self.max_connections:
            logger.warning(
                "open-files limit %d fits about %d clients, not max_connections=%d (raise it with ulimit -n)",
                soft,
                budget,
                self.max_connections,
            )
        return budget

    def _refuse_when_out_of_descriptors(self, connection: ServerConnection) -> Response | None:
        if self._sockets <= self._socket_budget:
            return None
        self._note_exhaustion()
        response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "server full, retry later\n")
        response.headers["Retry-After"] = "5"
        return response

    def _note_exhaustion(self) -> None:
        """Count refusals for want of descriptors; log them once per interval, never per attempt."""
        self.refused_at_limit += 1
        self._refused_unlogged += 1
        if self._metrics is not None:
            self._metrics.connection_refused("limits")
        now = time.monotonic()
        if now - self._exhaustion_logged_at >= 10.0:
            logger.error(
                "out of file descriptors: refused %d connection(s) (open sockets %d, budget %d)",
                self._refused_unlogged,
                self._sockets,
                self._socket_budget,
            )
            self._exhaustion_logged_at = now
            self._refused_unlogged = 0

    def _refused_host(self, connection: ServerConnection, headers: Headers) -> Response | None:
        """Answer 400 to a request for a host this server does not serve (DNS rebinding)."""
        hosts = headers.get_all("Host")
        if self._trusted:
            remote = connection.remote_address
            if remote and str(remote[0]) in self._trusted and headers.get_all("X-Forwarded-Host"):
                hosts = [headers.get_all("X-Forwarded-Host")[-1].split(",")[-1]]  # the proxy's own hop
        if len(hosts) == 1 and self._host_allowed(hosts[0]):
            return None
        if self._metrics is not None:
            self._metrics.connection_refused("host")
        logger.warning("refused host %s (allowed_hosts)", _safe(", ".join(hosts)) if hosts else "(none)")
        return connection.respond(HTTPStatus.BAD_REQUEST, "host not allowed\n")

    def _host_allowed(self, header: str) -> bool:
        """Whether ``allowed_hosts`` lets a request name this ``Host``; remembered per header value.

        Nearly every client of a server names the same few hosts: the verdict is kept for short
        values, at most HOST_VERDICTS of them (then forgotten at once), so a flood of made-up
        names costs a bounded dict.
        """
        verdict = self._host_verdicts.get(header)
        if verdict is None:
            verdict = self._hosts.allows(normalize(header))
            if len(header) <= 255:
                if len(self._host_verdicts) >= HOST_VERDICTS:
                    self._host_verdicts.clear()
                self._host_verdicts[header] = verdict
        return verdict

    def _origin_allowed(self, origin: str, hosts: list[str]) -> bool:
        if self._origins == "*":
            return True
        if origin in self._origins:
            return True
        if len(hosts) != 1:
            return False
        # Same origin: compare the parsed host[:port] exactly, never by substring.
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:  # e.g. "http://[": not a URL at all
            return False
        return bool(hosts[0]) and netloc.lower() == hosts[0].lower()

    def _http(self, connection: HTTPConnection, request: Request) -> Response:
        """Answer a plain HTTP request: /healthz, /client.js, the app's static files, the demo page."""
        method, path = connection.method, urlsplit(request.path).path
        if path == "/healthz":
            if method not in ("GET", "HEAD"):
                return _static_response(connection, _not_allowed())
            health = self.health()
            status = HTTPStatus.OK if health["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
            response = _response(connection, status, json.dumps(health), "application/json")
            return _without_body(response) if method == "HEAD" else response
        if path == "/metrics" and self._metrics is not None and self.metrics_port is None and not self.metrics_socket:
            return self._metrics_response(connection, method)
        if self._admin_files is not None and path in ("/admin", "/admin.js", "/admin.css"):
            return _static_response(connection, _with_csp(self._admin_files.respond(method, path, request.headers)))
        found = self._builtin.respond(method, request.path, request.headers) if path == "/client.js" else None
        if found is not None and found.status < 400:
            # A public library: any page may import it (its sockets still pass the origin check).
            found.headers.append(("Access-Control-Allow-Origin", "*"))
        if found is None:
            found = self._static_files.respond(method, request.path, request.headers)
        if found is None and path == "/":
            found = self._builtin.respond(method, request.path, request.headers)  # the app serves no page
        if found is None:
            return _response(connection, HTTPStatus.NOT_FOUND, "not found\n", "text/plain; charset=utf-8")
        return _static_response(connection, found)

    def health(self) -> dict[str, Any]:
        """Return what ``GET /healthz`` reports.

        Status is "ok" (HTTP 200), "full" at ``max_connections`` (new clients are refused) or
        "unhealthy" while Redis is lost (both 503).
        """
        report: dict[str, Any] = {
            "status": "ok",
            "connections": self.connection_count(),
            "namespaces": {ns: self.registry.count(ns) for ns in self.registry.namespaces()},
        }
        if self.recovery_window:
            report["recoverable"] = self.recoverable
            log = self.broadcasts
            report["recovery"] = {
                "sessions": self.recoverable,
                "bytes": self.recovery.kept_bytes + log.cost,  # the broadcast log counts once, for all
                "max_bytes": self.recovery_max_memory,
                "evicted": self.recovery.evicted,
                "log": {
                    "events": len(log.entries),
                    "bytes": log.cost,
                    "max_events": log.max_events,
                    "max_bytes": log.max_bytes,
                    "evicted": log.evicted,
                },
            }
        report["descriptors"] = {
            "sockets": self._sockets,
            "budget": self._socket_budget,
            "refused": self.refused_at_limit,
        }
        if len(self._connections) >= self.max_connections and not self.recoverable:
            report["status"] = "full"  # every new client is refused: send them elsewhere
        if self.presence.options:
            report["presence"] = self.presence.health()
        if self.backplane is not None:
            report["redis"] = self.backplane.health()
            if not self.backplane.link_up:
                report["status"] = "unhealthy"
        return report

    # -- Metrics ------------------------------------------------------------------------------

    async def _start_metrics(self) -> None:
        if not (self.metrics or self.metrics_port is not None or self.metrics_socket or self._admin):
            return
        from .metrics_http import serve_http, serve_worker

        self._metrics = ServerMetrics(self._handlers, self.live_stats)
        self._spawn(self._metrics.watch_loop())
        if self.metrics_port is not None:
            listener = await serve_http(self.metrics_host, self.metrics_port, self.metrics_families)
            self._metrics_listeners.append(listener)
            host, port = listener.sockets[0].getsockname()[:2]
            logger.info("metrics on http://%s:%d/metrics", host, port)
        if self.metrics_socket:
            self._metrics_listeners.append(await serve_worker(self.metrics_socket, self.metrics_families))

    def metrics_families(self) -> list[Family]:
        """Return this process's metric families (empty while metrics are off); safe from any thread."""
        metrics = self._metrics
        if metrics is None:
            return []
        return on_loop(self._loop, self._loop_thread, metrics.families)  # type: ignore[no-any-return]

    def live_stats(self) -> LiveStats:
        """Read what the gauges report from the live state, now (on the loop)."""
        live = [conn for conn in self._connections.values() if not conn.detached]
        buffered = [conn.ws.transport.get_write_buffer_size() for conn in live]
        backplane = None
        if self.backplane is not None:
            backplane = BackplaneStats(**self.backplane.stats())
        return LiveStats(
            connections=self.connection_count(),
            namespaces={ns: self.registry.count(ns) for ns in self._handlers},
            kept_sessions=self.recoverable,
            send_buffer_bytes=sum(buffered),
            send_buffer_max_bytes=max(buffered, default=0),
            pending_acks=sum(len(conn.pending) for conn in self._connections.values()),
            received_frames=sum(conn.frames_in for conn in live),
            sent_bytes=sum(conn.written for conn in live),
            backplane=backplane,
        )

    def _metrics_response(self, connection: ServerConnection, method: str) -> Response:
        from .metrics import CONTENT_TYPE, render

        if method not in ("GET", "HEAD"):
            return _static_response(connection, _not_allowed())
        response = _response(connection, HTTPStatus.OK, render(self.metrics_families()), CONTENT_TYPE)
        return _without_body(response) if method == "HEAD" else response

    # -- The admin page ----------------------------------------------------------------------

    def _start_admin(self) -> None:
        if not self.admin_token:
            return
        from .admin import NAMESPACE, Admin

        if NAMESPACE in self._handlers and self._admin is None:
            raise ValueError(f"the application has a namespace {NAMESPACE}: the admin page needs it")
        self._admin = Admin(self, self.admin_token, write=self.admin_write)
        self._admin.register()
        static = PACKAGE / "static"
        self._admin_files = StaticFiles({f"/{name}": str(static / f"{name}.html" if name == "admin" else static / name)
                                         for name in ("admin", "admin.js", "admin.css")})
        if self.admin_write:
            logger.warning("admin page with write actions: whoever has the admin token can disconnect clients")

    def admin_namespaces(self) -> list[str]:
        """The namespaces the application registered (the admin page's own left out)."""
        return sorted(ns for ns in self._handlers if ns != "/admin")

    def admin_node_summary(self, rooms: bool) -> dict[str, Any]:
        """This node's statistics for the admin page (with its largest rooms when ``rooms``)."""
        from .admin import node_summary
        from .supervisor import worker_index

        metrics = self._metrics
        live = self.live_stats()
        counters: dict[str, Any] = {
            "kept": live.kept_sessions,
            "send_buffer_max": live.send_buffer_max_bytes,
        }
        if metrics is not None:
            counters.update(
                events_in=sum(metrics.received.values()),
                frames_out=sum(metrics.sent.values()),
                bytes_in=metrics.bytes_in,
                bytes_out=metrics.bytes_out + live.sent_bytes,
                closed=dict(metrics.closed),
                refused=dict(metrics.refused),
                handler_errors=sum(metrics.handler_errors.values()),
                loop_lag=metrics.loop_lag,
                rss=resident_memory(),
            )
        namespaces = self.admin_namespaces()
        counts = {ns: live.namespaces.get(ns, 0) for ns in namespaces}
        if "/" in counts:  # an admin page is in / too: not one of the application's clients
            counts["/"] -= len(self.registry.sids("/admin") & self.registry.sids("/"))
        return node_summary(
            node=self._node_id,
            worker=worker_index(),
            started=metrics.started if metrics is not None else 0.0,
            interval=self.heartbeat_interval,
            connections=live.connections - self.registry.count("/admin"),  # the admin pages are not clients
            namespaces=counts,
            counters=counters,
            backplane=self.backplane.stats() if self.backplane is not None else None,
            rooms={ns: (self.registry.room_total(ns), self.registry.largest_rooms(ns, 5)) for ns in namespaces}
            if rooms
            else None,
        )

    async def admin_cluster(self) -> dict[str, Any]:
        """Every node's summary (this node's fresh, the others' from their last heartbeat)."""
        local = self.admin_node_summary(rooms=True)
        if self.backplane is None:
            return {"nodes": [local], "node": local["node"], "backplane": "off"}
        self.backplane.watched_until = time.monotonic() + 3 * self.heartbeat_interval
        if not self.backplane.link_up:
            return {"nodes": [local], "node": local["node"], "backplane": "down"}
        try:
            others = await self.backplane.node_summaries()
        except Exception as exc:  # Redis went away between the check and the read
            logger.warning("reading the cluster's statistics failed: %s", exc)
            return {"nodes": [local], "node": local["node"], "backplane": "down"}
        nodes = [local, *(node for node in others if node.get("node") != local["node"])]
        return {"nodes": nodes, "node": local["node"], "backplane": "up"}

    def admin_client_details(self, sid: str) -> dict[str, Any] | None:
        """What the admin page shows of one client of this node, or None."""
        conn = self._connections.get(sid)
        if conn is None:
            return None
        rooms = {}
        for namespace in sorted(conn.namespaces):
            names = sorted(room for room in self.registry.rooms(namespace, sid) if room != sid)
            rooms[namespace] = {"total": len(names), "rooms": [name[:200] for name in names[:100]]}
        buffered = 0 if conn.detached else conn.ws.transport.get_write_buffer_size()
        return {
            "node": self._node_id,
            "address": conn.address,
            "namespaces": rooms,
            "kept": conn.detached,
            "send_buffer": buffered,
            "pending_acks": len(conn.pending),
        }

    # -- One connection's life ---------------------------------------------------------------

    async def _serve(self, ws: ServerConnection) -> None:
        if self.recovery_window and _may_resume(ws):
            self._resuming += 1
            try:
                conn = await self.recovery.resume(ws)
            finally:
                self._resuming -= 1
        else:
            conn = None
        if self._metrics is not None and self.recovery_window and "recover=" in (ws.request.path if ws.request else ""):
            self._metrics.resume("failed" if conn is None else "resumed")
        fresh = conn is None
        if conn is None:
            conn = Connection(self, ws)
            if self._over_connection_limit(conn):
                if self._metrics is not None:
                    self._metrics.connection_refused("limits")
                    self._metrics.connection_opened()
                    self._metrics.connection_closed(TOO_MANY_CONNECTIONS)
                conn.close(CloseCode.TOO_MANY_CONNECTIONS, TOO_MANY_CONNECTIONS, TOO_MANY_CONNECTIONS)
                self._note_drained()
                await ws.until_closed()
                return
            self._connections[conn.sid] = conn
            logger.info("connect sid=%s address=%s", conn.sid, conn.address)
        self._per_address[conn.address] = self._per_address.get(conn.address, 0) + 1
        if self._metrics is not None:
            self._metrics.connection_opened()
        address = conn.address
        if self._closing:
            conn.close(CloseCode.SHUTDOWN, SERVER_SHUTDOWN, SERVER_SHUTDOWN)  # accepted as it stopped
        elif self.draining:
            self._hand_over(conn)  # resumed here as the drain began: on to another node
        self._note_drained()  # a drain waits for resumes under way, then for what they hand on
        try:
            if fresh and not _client_connects_root(ws):
                pending = self._connect_namespace(conn, DEFAULT_NAMESPACE, None)
                if pending is not None:
                    # A task of its own, so that shutdown can cancel it like any other handler.
                    conn.worker = asyncio.ensure_future(pending)
                    try:
                        await conn.worker
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            raise
                    finally:
                        conn.worker = None
            else:
                await self._reconnect_namespaces(conn)
            assert isinstance(ws, HTTPConnection)
            # From now on frames are handled as they arrive (HTTPConnection): nothing waits
            # in recv() for them, so an idle client costs no waiting coroutines.
            ws.read_with(conn)
            await ws.until_closed()
        except ConnectionClosed:
            pass
        finally:
            remaining = self._per_address[address] - 1
            if remaining:
                self._per_address[address] = remaining
            else:
                del self._per_address[address]
            if self._metrics is not None:
                self._metrics.connection_closed((conn.ws is ws and conn.close_reason) or close_reason(ws))
            if conn.ws is ws:  # else a newer socket took the session over, with the counts
                self._count_closed_socket(conn)
            # Else a newer socket took the session over, or it moved to another node.
            if conn.ws is ws and not conn.detached and self._connections.get(conn.sid) is conn:
                reason = conn.close_reason or close_reason(ws)
                if self.recovery.keeps(conn, reason):
                    self.recovery.drop(conn, reason)
                else:
                    await self._end(conn, reason)

    def _count_closed_socket(self, conn: Connection) -> None:
        """Move what a socket counted on its connection into the metrics' counters.

        Counted on the connection (slots), not by metrics hooks per frame; the live
        connections' counts are added at scrape time (live_stats).
        """
        if self._metrics is not None:
            self._metrics.received_frames += conn.frames_in
            self._metrics.bytes_out += conn.written
        conn.frames_in = 0  # the session may resume on another socket (which resets written)

    def _over_connection_limit(self, conn: Connection) -> bool:
        if self._per_address.get(conn.address, 0) >= self.max_connections_per_address:
            return True
        return len(self._connections) >= self.max_connections and not self.recovery.evict_oldest()

    async def _end(self, conn: Connection, reason: str) -> None:
        """End a session: run each namespace's disconnect handler exactly once, forget it."""
        self.recovery.undetach(conn)
        if conn.worker is not None:
            conn.worker.cancel()
        self._fail_pending(conn)
        self.recovery.forget_token(conn)
        for namespace in sorted(conn.namespaces, key=lambda ns: ns == DEFAULT_NAMESPACE):
            await self._leave(conn, namespace, reason, notify=False)
        self.presence.ended(conn.sid, ())
        self._connections.pop(conn.sid, None)
        logger.info("disconnect sid=%s address=%s reason=%s", conn.sid, conn.address, reason)
        self._note_drained(conn.sid)

    def _fail_pending(self, conn: Connection) -> None:
        for future in conn.pending.values():
            if not future.done():
                future.set_exception(ClientDisconnectedError(conn.sid))
        conn.pending.clear()

    def _admit(self, conn: Connection, namespace: str = DEFAULT_NAMESPACE, id: int | None = None) -> bool:
        """Apply the per-connection token bucket; refuse (and eventually close) a flood.

        A refused frame is answered with its own ``id`` and namespace, so that the call waiting
        for it fails at once (at most ``rate_burst`` such answers before the close).
        """
        now = monotonic()  # the clock _run reads at a handler's end
        tokens = min(self.rate_burst, conn.tokens + (now - conn.stamp) * self.rate_limit)
        conn.stamp = now
        if tokens >= 1.0:
            conn.tokens = tokens - 1.0
            conn.refused = 0
            return True
        conn.tokens = tokens
        conn.refused += 1
        if conn.refused > self.rate_burst:
            conn.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded", RATE_LIMITED)
        else:
            message = f"more than {self.rate_limit:g} frames per second"
            conn.send(self._error("rate_limited", message, namespace, id))
        return False

    async def _read_queued(self, conn: Connection, ws: ServerConnection) -> None:
        """Handle the messages websockets queued (fragmented, binary, or behind those), in order."""
        while True:
            try:
                message = await ws.recv()
            except ConnectionClosed:
                return
            if type(message) is str:
                self._on_text(conn, message)
            else:
                self._on_binary(conn)
            if not len(ws.recv_messages.frames):
                return  # the next complete text frame can take the fast path again

    def _on_binary(self, conn: Connection) -> None:
        conn.frames_in += 1
        if conn.close_reason is None and self._admit(conn):
            conn.send(self._error("binary_unsupported", "binary frames are not part of protocol v1"))

    def _on_text(self, conn: Connection, text: str) -> None:
        # Counted on the connection (a slot), summed at scrape: cheaper than a metrics hook.
        conn.frames_in += 1
        if conn.close_reason is not None:
            return  # closing: what the client still sends is not handled
        # Decoded before the rate limiter, whose answer to a refused frame needs its id and
        # namespace anyway: its clock read then marks the end of decoding, where a sync
        # handler's time starts (see _run).
        try:
            envelope = decode(text, max_depth=self.max_depth, max_event_length=self.max_event_length)
        except ProtocolError as exc:
            if self._admit(conn, exc.namespace, exc.id):
                conn.send(self._error(exc.code, exc.message, exc.namespace, exc.id))
            return
        if not self._admit(conn, envelope.namespace, envelope.id):
            return
        event = envelope.event
        if event == ACK:
            self._resolve_ack(conn, envelope)
        elif event == HEARTBEAT:
            conn.send_control(HEARTBEAT_FRAME)
        elif (
            self.recovery_window
            and envelope.id is not None
            and event not in _NEVER_ACKED
            and self._seen_before(conn, envelope.id)
        ):
            # Re-sent after a resume: it was handled (its ack was replayed) or is still running.
            return
        elif conn.backlog is not None:
            # An async handler is running: keep the client's order by queueing behind it.
            size = len(text)
            if len(conn.backlog) >= self.max_backlog or conn.backlog_bytes + size > self.max_backlog_bytes:
                self._refuse(conn, envelope, "limit_exceeded", "too many frames waiting for a handler")
            else:
                conn.backlog.append((envelope, size))
                conn.backlog_bytes += size
        else:
            pending = self._process(conn, envelope)
            if pending is not None:
                conn.backlog = deque()
                conn.worker = asyncio.ensure_future(self._work(conn, pending))

    async def _work(self, conn: Connection, pending: Awaitable[None]) -> None:
        """Run an async handler, then the frames that arrived meanwhile, in order."""
        backlog = conn.backlog
        assert backlog is not None
        try:
            while True:
                await pending
                next_pending = None
                while backlog and next_pending is None:
                    envelope, size = backlog.popleft()
                    conn.backlog_bytes -= size
                    next_pending = self._process(conn, envelope)
                if next_pending is None:
                    return
                pending = next_pending
        finally:
            conn.backlog = None
            conn.backlog_bytes = 0
            conn.worker = None

    def _process(self, conn: Connection, envelope: Envelope) -> Awaitable[None] | None:
        """Handle one frame; return an awaitable when an async handler must finish it."""
        event, namespace = envelope.event, envelope.namespace
        if conn.detached and event in (CONNECT, DISCONNECT):
            # Queued behind a handler when the socket dropped: the drop already told the app.
            return self._change_kept_namespace(conn, envelope)
        if event == CONNECT:
            return self._connect_namespace(conn, namespace, envelope.data)
        if event == DISCONNECT:
            return (
                self._leave(conn, namespace, CLIENT_DISCONNECT, notify=False) if namespace in conn.namespaces else None
            )
        if event == ERROR or event == CONNECT_ERROR:
            self._refuse(conn, envelope, "reserved_event", f"{event!r} is reserved for the server")
            return None
        if namespace not in conn.namespaces:
            self._refuse(conn, envelope, "not_connected", f"not connected to namespace {namespace!r}")
            return None
        if event in CLIENT_REQUESTS and self.presence.enabled(namespace):
            self._presence_request(conn, envelope)
            return None
        handlers = self._handlers[namespace]
        # '*' names the catch-all, not an event a client can call it with directly.
        handler = handlers.get(event) if event != "*" else None
        args: tuple[Any, ...] = (envelope.data,)
        if handler is None:
            handler = handlers.get("*")
            args = (event, envelope.data)
            if handler is None or event in (CONNECT, DISCONNECT):
                self._refuse(conn, envelope, "unknown_event", "no handler for this event")
                return None
        if handler.is_async and handler.concurrent:
            if conn.running >= self.max_backlog:
                self._refuse(conn, envelope, "limit_exceeded", "too many events running at once")
                return None
            conn.running += 1
            task = self._spawn(self._finish_async(conn, envelope, handler, args))
            task.add_done_callback(lambda _: setattr(conn, "running", conn.running - 1))
            return None
        if handler.is_async:
            return self._finish_async(conn, envelope, handler, args)
        try:
            result = self._run(conn, namespace, handler, args, envelope=envelope)
        except Exception as exc:
            self._handler_failed(conn, envelope, exc)
            return None
        if type(result) is CoroutineType:
            # An async handler behind a decorator that hid it (no __wrapped__): finish it as
            # one. Its event was counted, and timed to the coroutine's creation, just now.
            return self._finish_async(conn, envelope, _Handler(lambda *_: result, True, 0), (), timed=False)
        if envelope.id is not None:
            self._ack(conn, envelope, result)
        return None

    async def _finish_async(
        self, conn: Connection, envelope: Envelope, handler: _Handler, args: tuple[Any, ...], timed: bool = True
    ) -> None:
        try:
            result = await self._run_async(conn, envelope.namespace, handler, args, envelope=envelope, timed=timed)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task is being cancelled (the session ends): let it
            # The handler awaited something cancelled elsewhere: its failure, not the client's queue.
            self._refuse(conn, envelope, "handler_error", "the event handler was cancelled")
            return
        except Exception as exc:
            self._handler_failed(conn, envelope, exc)
            return
        if envelope.id is not None:
            self._ack(conn, envelope, result)

    def _run(
        self,
        conn: Connection,
        namespace: str,
        handler: _Handler,
        args: tuple[Any, ...],
        recovered: bool = False,
        envelope: Envelope | None = None,
        timed: bool = True,
    ) -> Any:
        """Call a sync handler with the context helpers bound to ``conn`` and ``namespace``.

        With metrics on, an event's handler (``envelope`` given, ``timed``) is timed from the
        frame's admission: the rate limiter read the clock moments ago, once the frame was
        decoded, which spares a clock read per event. A frame queued behind an async handler
        waited since then, so its time starts here.
        """
        metrics = self._metrics
        counted = None
        if metrics is not None:
            try:  # metrics.namespace(), with its dict lookup inlined: this runs for every event
                counted = metrics.namespaces[namespace]
            except KeyError:
                counted = metrics.namespace(namespace)
        token = current.set(_new_context(Context, (self, conn, namespace, recovered, envelope, counted)))
        if counted is None or envelope is None or not timed:  # events only are timed, not connects
            try:
                return handler.fn(*args[: handler.arity])
            finally:
                current.reset(token)
        started = conn.stamp if conn.backlog is None else monotonic()
        try:
            return handler.fn(*args[: handler.arity])
        finally:
            current.reset(token)
            elapsed = monotonic() - started
            # Histogram.observe inlined, for every event: most are faster than the first
            # bucket's bound, which spares the search too.
            histogram = counted.handler
            if elapsed <= FIRST_HANDLER_BOUND:
                histogram.counts[0] += 1
            else:
                histogram.counts[bisect_left(histogram.bounds, elapsed)] += 1
            histogram.sum += elapsed

    async def _run_async(
        self,
        conn: Connection,
        namespace: str,
        handler: _Handler,
        args: tuple[Any, ...],
        recovered: bool = False,
        envelope: Envelope | None = None,
        timed: bool = True,
    ) -> Any:
        """Await an async handler; the context is set in the task that runs it."""
        counted = self._metrics.namespace(namespace) if self._metrics is not None else None
        token = current.set(_new_context(Context, (self, conn, namespace, recovered, envelope, counted)))
        timing = counted is not None and envelope is not None and timed  # events only, not connects
        started = monotonic() if timing else 0.0
        try:
            return await handler.fn(*args[: handler.arity])
        finally:
            current.reset(token)
            if timing:
                counted.handler.observe(monotonic() - started)  # type: ignore[union-attr]

    def _seen_before(self, conn: Connection, id: int) -> bool:
        """Record a client frame id; tell whether to drop the frame as a re-send after a resume."""
        if conn.handled_before(id):
            return conn.resumed  # plain v1 clients may reuse ids: only resumed sessions dedupe
        conn.handling(id)
        return False

    def _presence_request(self, conn: Connection, envelope: Envelope) -> None:
        try:
            result = self.presence.request(conn, envelope)
        except PresenceError as exc:
            self._refuse(conn, envelope, exc.code, exc.message)
            return
        if envelope.id is not None:
            self._ack(conn, envelope, result)

    def _ack(self, conn: Connection, envelope: Envelope, result: Any) -> None:
        try:
            frame = self.frame(ACK, result, envelope.namespace, envelope.id)
        except (TypeError, ValueError) as exc:
            self._handler_failed(conn, envelope, exc)
            return
        conn.answered(envelope.id)  # type: ignore[arg-type]
        conn.send(frame)
        if self._metrics is not None:
            self._metrics.frames_sent(envelope.namespace, 1)

    def _handler_failed(self, conn: Connection, envelope: Envelope, exc: Exception) -> None:
        if isinstance(exc, LimitExceededError):
            self._refuse(conn, envelope, "limit_exceeded", str(exc))
            return
        self._refuse(conn, envelope, "handler_error", "the event handler failed")
        if self._metrics is not None:
            self._metrics.handler_failed(envelope.namespace)
        on_error = self._error_handlers.get(envelope.namespace, self._default_error_handler)
        if on_error is not None:
            # The application handles its errors (Flask-SocketIO's on_error): no traceback here.
            self._spawn(self._report_error(conn, envelope, exc, on_error))
            return
        logger.error(
            "handler of %s in %s failed (sid=%s)",
            _safe(envelope.event),
            _safe(envelope.namespace),
            conn.sid,
            exc_info=exc,
        )

    async def _report_error(self, conn: Connection, envelope: Envelope, exc: Exception, on_error: _Handler) -> None:
        try:
            if on_error.is_async:
                # Not timed: the event was counted once, by its own handler's run.
                await self._run_async(conn, envelope.namespace, on_error, (exc,), envelope=envelope, timed=False)
            else:
                self._run(conn, envelope.namespace, on_error, (exc,), envelope=envelope, timed=False)
        except Exception as failure:
            logger.error("handler of %s failed (sid=%s)", _safe(envelope.event), conn.sid, exc_info=exc)
            logger.error("and its error handler failed too", exc_info=failure)

    def _refuse(self, conn: Connection, envelope: Envelope, code: str, message: str) -> None:
        if envelope.id is not None:
            conn.answered(envelope.id)
        conn.send(self._error(code, message, envelope.namespace, envelope.id))

    def _resolve_ack(self, conn: Connection, envelope: Envelope) -> None:
        future = conn.pending.pop(envelope.id, None) if envelope.id is not None else None
        if future is None:
            # No id on this error: the id was ours, and a client would take it for its own call's.
            message = f"no acknowledgement with id {envelope.id} is pending"
            conn.send(self._error("unknown_ack", message, envelope.namespace))
        elif not future.done():
            future.set_result(envelope.data)

    # -- Namespaces --------------------------------------------------------------------------

    def _connect_namespace(self, conn: Connection, namespace: str, auth: Any) -> Awaitable[None] | None:
        handlers = self._handlers.get(namespace)
        if handlers is None:
            if self._metrics is not None:
                self._metrics.connection_refused("namespace")
            conn.send(self.frame(CONNECT_ERROR, {"message": "unknown namespace"}, namespace))
            return None
        if namespace in conn.namespaces:
            conn.send_control(self.recovery.connect_frame(conn, namespace))
            return None
        if len(conn.namespaces) >= self.max_namespaces:
            if self._metrics is not None:
                self._metrics.connection_refused("namespace")
            conn.send(self.frame(CONNECT_ERROR, {"message": "too many namespaces"}, namespace))
            return None
        # Join provisionally so the connect handler can use rooms and emit; hold this
        # client's frames until the handler accepts, so that `connect` comes first.
        self.registry.connect(namespace, conn.sid)
        conn.namespaces.add(namespace)
        self.presence.connected(namespace, conn.sid, auth)
        if self.recovery_window and auth is not None:
            # Kept for the connect handler that runs again on a resume (no auth comes with it).
            conn.auth = conn.auth or {}
            conn.auth[namespace] = auth
        handler = handlers.get(CONNECT)
        if handler is None:
            self._settle_connect(conn, namespace, None)
            return None
        conn.hold, conn.held = [], 0
        if handler.is_async:
            return self._connect_async(conn, namespace, handler, auth)
        try:
            refusal = _refusal(self._run(conn, namespace, handler, (auth,)))
        except Exception as exc:
            refusal = self._connect_failed(conn, namespace, exc)
        self._settle_connect(conn, namespace, refusal)
        return None

    async def _connect_async(self, conn: Connection, namespace: str, handler: _Handler, auth: Any) -> None:
        try:
            refusal = _refusal(await self._run_async(conn, namespace, handler, (auth,)))
        except Exception as exc:
            refusal = self._connect_failed(conn, namespace, exc)
        self._settle_connect(conn, namespace, refusal)

    def _connect_failed(self, conn: Connection, namespace: str, exc: Exception) -> str:
        if isinstance(exc, ConnectionRefusedError) and not isinstance(exc.errno, int):
            # ConnectionRefusedError("why"): the app refuses. With an errno it is an OS error
            # from a backend the handler called (a database down): our failure, logged below.
            return str(exc.args[0]) if exc.args else "connection refused"
        logger.error("connect handler of %s failed (sid=%s)", _safe(namespace), conn.sid, exc_info=exc)
        return "connection refused"

    def _settle_connect(self, conn: Connection, namespace: str, refusal: str | None) -> None:
        held, conn.hold = conn.hold or [], None
        if refusal is None:
            conn.send_control(self.recovery.connect_frame(conn, namespace))
        else:
            # A refused client receives nothing from that namespace.
            self._refuse_namespace(conn, namespace, refusal)
            held = [frame for frame in held if json.loads(frame)["namespace"] != namespace]
        for frame in held:
            conn.send(frame)

    def _change_kept_namespace(self, conn: Connection, envelope: Envelope) -> None:
        """Apply a client's connect or disconnect that reached a dropped session: no handler runs."""
        namespace = envelope.namespace
        if envelope.event == DISCONNECT:
            self._forget_namespace(conn, namespace)
        elif namespace not in conn.namespaces:
            message = "the connection dropped before the namespace was joined"
            conn.send(self.frame(CONNECT_ERROR, {"message": message}, namespace))

    def _forget_namespace(self, conn: Connection, namespace: str) -> None:
        """Take ``conn`` out of ``namespace`` everywhere, with no handler run: its own state,
        both registries and presence."""
        conn.namespaces.discard(namespace)
        conn.sessions.pop(namespace, None)
        if conn.auth is not None:
            conn.auth.pop(namespace, None)
        self.kept_registry.disconnect(namespace, conn.sid)
        self.registry.disconnect(namespace, conn.sid)  # in case its disconnect handler still runs
        self.presence.left_namespace(namespace, conn.sid)

    def _refuse_namespace(self, conn: Connection, namespace: str, refusal: str) -> None:
        """Take ``conn`` out of ``namespace`` after its connect handler refused it."""
        if self._metrics is not None:
            self._metrics.connection_refused("connect_handler")
        self._forget_namespace(conn, namespace)  # in the kept registry too: it may have dropped meanwhile
        conn.send(self.frame(CONNECT_ERROR, {"message": refusal}, namespace))

    async def _reconnect_namespaces(self, conn: Connection) -> None:
        """Run a resumed session's connect handlers again, ``/`` first, with ``request.recovered``.

        Its rooms and ``session`` are back already; a handler may still refuse the namespace.
        """
        for namespace in sorted(conn.namespaces, key=lambda ns: ns != DEFAULT_NAMESPACE):
            handler = self._handlers[namespace].get(CONNECT)
            if handler is None:
                continue
            args = ((conn.auth or {}).get(namespace),)
            try:
                if handler.is_async:
                    result = await self._run_async(conn, namespace, handler, args, recovered=True)
                else:
                    result = self._run(conn, namespace, handler, args, recovered=True)
                refusal = _refusal(result)
            except Exception as exc:
                refusal = self._connect_failed(conn, namespace, exc)
            if refusal is not None and namespace in conn.namespaces:
                self._refuse_namespace(conn, namespace, refusal)

    async def _run_disconnect_handler(self, conn: Connection, namespace: str, reason: str) -> None:
        handler = self._handlers[namespace].get(DISCONNECT)
        try:
            if handler is not None and handler.is_async:
                await self._run_async(conn, namespace, handler, (reason,))
            elif handler is not None:
                self._run(conn, namespace, handler, (reason,))
        except Exception:
            logger.exception("disconnect handler of %s failed (sid=%s)", _safe(namespace), conn.sid)

    async def _leave(self, conn: Connection, namespace: str, reason: str, *, notify: bool) -> None:
        """Take ``conn`` out of ``namespace`` and run its disconnect handler once."""
        if namespace not in conn.namespaces:
            return
        conn.namespaces.discard(namespace)
        try:
            await self._run_disconnect_handler(conn, namespace, reason)
        finally:
            # Even when cancelled; and not if the client joined again while the handler ran.
            if namespace not in conn.namespaces:
                self.registry.disconnect(namespace, conn.sid)
                self.presence.left_namespace(namespace, conn.sid)
                conn.sessions.pop(namespace, None)
                if conn.auth is not None:
                    conn.auth.pop(namespace, None)
        if notify:
            conn.send(self.frame(DISCONNECT, None, namespace))

    # -- Slow consumers ---------------------------------------------------------------------

    async def _watch_slow_consumers(self) -> None:
        """Close clients whose write buffer has not moved for ``send_timeout`` seconds.

        websockets' keepalive can not catch them: its ping waits behind the full buffer.
        """
        interval = min(1.0, self.send_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn in list(self._connections.values()):
                buffered = conn.ws.transport.get_write_buffer_size()
                progress = conn.written - buffered
                if buffered == 0 or progress > conn.progress:
                    conn.stalled_since = None
                elif conn.stalled_since is None:
                    conn.stalled_since = now
                elif now - conn.stalled_since > self.send_timeout:
                    conn.close(CloseCode.SLOW_CONSUMER, SLOW_CONSUMER, SLOW_CONSUMER)
                conn.progress = progress


# -- Helpers -------------------------------------------------------------------------------


class BackgroundTask:
    """What :meth:`SocketServer.start_background_task` returns: ``join()`` it, or await it."""

    def __init__(
        self,
        *,
        thread: threading.Thread | None = None,
        task: asyncio.Task[Any] | None = None,
        future: concurrent.futures.Future[Any] | None = None,
    ) -> None:
        self._thread, self._task, self._future = thread, task, future

    def join(self, timeout: float | None = None) -> None:
        """Wait for the end (from a thread; on the event loop, ``await`` the task instead)."""
        if self._thread is not None:
            self._thread.join(timeout)
        elif self._future is not None:
            concurrent.futures.wait([self._future], timeout)
        else:
            raise RuntimeError("a task on the event loop: await it instead of join()")

    def done(self) -> bool:
        if self._thread is not None:
            return not self._thread.is_alive()
        future = self._task if self._task is not None else self._future
        return future is not None and future.done()

    def __await__(self) -> Any:
        if self._task is not None:
            return self._task.__await__()
        if self._future is not None:
            return asyncio.wrap_future(self._future).__await__()
        assert self._thread is not None
        return asyncio.to_thread(self._thread.join).__await__()


async def _logged(coro: Awaitable[Any], name: str) -> Any:
    try:
        return await coro
    except Exception:
        logger.exception("background task %s crashed", name)  # now, not when someone looks
        return None


def _logged_call(target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        target(*args, **kwargs)
    except Exception:
        logger.exception("background task %s crashed", getattr(target, "__name__", "task"))


def _check_rooms(rooms: Any) -> None:
    """Room names are strings: they travel in JSON between nodes and are compared as text."""
    if rooms is None or isinstance(rooms, str):
        return
    for room in rooms if isinstance(rooms, list | tuple | set | frozenset) else (rooms,):
        if not isinstance(room, str):
            raise TypeError(f"room names are strings, not {type(room).__name__}: use str({room!r})")


def _with_sid(skip_sid: str | Iterable[str] | None, sid: str) -> list[str]:
    if skip_sid is None:
        return [sid]
    if isinstance(skip_sid, str):
        return [skip_sid, sid]
    return [*skip_sid, sid]


def _may_resume(ws: ServerConnection) -> bool:
    """Whether the handshake URL may name a session to resume (``recover=`` in its query).

    Without ``recover`` in it, nor ``%`` (a percent-encoded name), :meth:`Recovery._resume`
    finds no token: skip its parsing of the URL for every fresh connection.
    """
    path = ws.request.path if ws.request is not None else ""
    return "recover" in path or "%" in path


def _client_connects_root(ws: ServerConnection) -> bool:
    """Whether the handshake asked to connect ``/`` itself, with its auth (``?connect=client``)."""
    request = ws.request
    if request is None or "connect=client" not in request.path:
        return False  # without it the query can not hold it: no URL parsing per connect
    return "connect=client" in urlsplit(request.path).query.split("&")


def _refusal(result: Any) -> str | None:
    return "connection refused" if result is False else None


def _safe(text: str, limit: int = 100) -> str:
    """Render client-provided text for a log line: quoted, escaped, truncated."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def _parse_origins(origins: Iterable[str] | str | None) -> frozenset[str] | str:
    if origins is None:
        return frozenset()
    if isinstance(origins, str):
        origins = [part.strip() for part in origins.split(",") if part.strip()]
    origins = list(origins)
    if "*" in origins:
        logger.warning("allowed_origins '*': any web site can drive your users' sockets")
        return "*"
    return frozenset(origin.rstrip("/") for origin in origins)


def _builtin_files() -> dict[str, str]:
    """The files every server has: client.js, and the demo page for an app that serves no ``/``.

    The demo page is the repository's top-level client.html; a wheel carries it inside the package.
    """
    files = {"/client.js": str(PACKAGE / "static" / "client.js")}
    for page in (PACKAGE / "static" / "client.html", PACKAGE.parent / "client.html"):
        if page.is_file():
            files["/"] = str(page)
            break
    return files


class _Link:
    """What :class:`HTTPConnection` adds to websockets' connection, in one slotted object.

    Python shares one key table among the attribute dicts of a class's instances, up to 30
    keys; websockets' connection uses 28 of them. Past 30 every connection gets a dict of its
    own, about 1.5 KiB more per client, so everything added here lives behind one key.

    The table also stops growing once many instances exist (CPython 3.11 shrinks its room by
    one per new instance): keys first set after other connections were created, as
    ``connection_made()`` sets two, could miss it, for every later connection. That is why
    :class:`HTTPConnection` names them in ``__init__``.
    """

    __slots__ = ("closed", "conn", "reading", "server", "start")

    def __init__(self, server: SocketServer) -> None:
        self.server = server
        self.start: bytes | None = b""  # the first bytes of the stream, until the method is known
        # The client whose frames the server handles as they arrive (None: not yet, or no more).
        self.conn: Connection | None = None
        self.reading: asyncio.Future[None] | None = None  # the server reading the queued messages
        self.closed: asyncio.Future[None] | None = None  # see HTTPConnection.until_closed()


class HTTPConnection(ServerConnection):
    """A connection whose plain HTTP requests may use any method, and whose frames skip a queue.

    websockets parses GET requests only (an opening handshake is a GET) and drops any other
    without an answer, so ``curl -I`` would get nothing. The method on the request line is
    swapped for GET before websockets parses it, and remembered: HEAD gets its headers without
    a body, other methods 405, and a request that was not a GET is never upgraded.

    websockets queues each received message for the handler's ``recv()``: a future and a task
    switch per message, most of the cost of an echo, and coroutines waiting for every idle
    client. Once the server reads this connection (:meth:`read_with`), a complete text frame
    that finds that queue empty is decoded and handled as soon as it is parsed, in order with
    everything else. Anything else (fragments, binary frames, invalid UTF-8, frames behind
    queued ones) goes through the queue, read by a task only while it holds something, which
    keeps websockets' handling of it.

    websockets' keepalive is a task per connection; here the server's :class:`Keepalive`
    pings every connection from one timer, with websockets' pings and close code.
    """

    method = "GET"

    def __init__(self, *args: Any, tracker: SocketServer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._link = _Link(tracker)
        # websockets sets these two in connection_made(), which asyncio calls later: named now,
        # so that the first connection puts every key in the class's shared key table (see _Link).
        self.recv_messages = None  # type: ignore[assignment]
        self.transport = None  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        link = self._link
        metrics = link.server._metrics
        if metrics is not None:
            metrics.bytes_in += len(data)
        self._parse(link, data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._link.server._sockets += 1
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        link = self._link
        # No frame comes after this: let go of the client, so that this connection and the
        # client do not hold each other (a cycle only the garbage collector would free).
        link.conn = None
        server = link.server
        server._sockets -= 1
        if server._keepalive is not None:
            server._keepalive.discard(self)
        super().connection_lost(exc)
        if link.closed is not None and not link.closed.done():
            link.closed.set_result(None)

    def until_closed(self) -> asyncio.Future[None]:
        """Return a future done once the TCP connection is closed, for the task serving it.

        What ``wait_closed()`` waits for, without its shield (a coroutine, a future and two
        callbacks per call, kept for as long as an idle client stays): only the handler waits
        here, so cancelling it cancels nobody else's wait.
        """
        link = self._link
        if link.closed is None:
            link.closed = self.loop.create_future()
            if self.connection_lost_waiter.done():
                link.closed.set_result(None)
        return link.closed

    def start_keepalive(self) -> None:
        """Have the server's one keepalive timer ping this connection, instead of a task of its own."""
        keepalive = self._link.server._keepalive
        if keepalive is not None and self.ping_interval is not None:
            keepalive.add(self)

    def acknowledge_pings(self, data: bytes) -> None:
        super().acknowledge_pings(data)
        keepalive = self._link.server._keepalive
        if keepalive is not None:
            keepalive.pong(self)

    def resume_writing(self) -> None:
        super().resume_writing()
        keepalive = self._link.server._keepalive
        if keepalive is not None:
            keepalive.drained(self)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close as websockets does; once the connection is closed, return at once.

        websockets' ``close()`` does nothing then either (it is idempotent), but gets there
        through a send context, a timeout, two shields and a ConnectionClosed raised and caught:
        a tenth of a connect's cost, paid by every handler's end (``async with connection``).
        """
        if self.connection_lost_waiter.done():
            return
        await super().close(code, reason)

    def read_with(self, conn: Connection) -> None:
        """Hand every text frame from now on to the server, for ``conn``; queued messages too."""
        self._link.conn = conn
        self._read_queued()  # what arrived before

    def process_event(self, event: Event) -> None:
        link = self._link
        conn = link.conn
        if conn is None:
            super().process_event(event)  # the handshake, or a frame before the server reads
            return
        if event.opcode is Opcode.TEXT and event.fin and link.reading is None and not len(self.recv_messages.frames):
            try:
                text = bytes(event.data).decode()
            except UnicodeDecodeError:
                pass  # recv() fails the connection with 1007, as websockets does
            else:
                try:
                    link.server._on_text(conn, text)
                except Exception:
                    self._crashed()
                return
        super().process_event(event)
        if event.opcode in DATA_OPCODES:
            self._read_queued()

    def _read_queued(self) -> None:
        """Start reading websockets' queue of messages (in order), unless it is empty or read."""
        link = self._link
        if link.reading is None and link.conn is not None and len(self.recv_messages.frames):
            link.reading = asyncio.ensure_future(self._reading(link.conn))

    async def _reading(self, conn: Connection) -> None:
        try:
            await self._link.server._read_queued(conn, self)
        except Exception:
            self._crashed()
        finally:
            self._link.reading = None

    def _crashed(self) -> None:
        """Our bug, as when a connection handler crashes: log it, close with 1011."""
        logger.exception("error while handling a frame")
        self._link.conn = None
        if self.protocol.state is OPEN:
            self.protocol.fail(CloseCode.INTERNAL_ERROR)
            self.send_data()

    def _parse(self, link: _Link, data: bytes) -> None:
        if link.start is None:
            super().data_received(data)
            return
        data = link.start + data
        space = data.find(b" ", 0, 16)
        if space == -1 and len(data) < 16:
            link.start = data  # the request line arrives in pieces
            return
        link.start = None
        method = data[:space] if space > 0 else b""
        if method != b"GET" and method.isalpha() and method.isupper():
            self.method = method.decode("ascii")
            data = b"GET" + data[space:]
        super().data_received(data)


def _quiet_exhaustion(previous: Any, server: SocketServer) -> Callable[[Any, dict[str, Any]], None]:
    """An exception handler that counts accept() failures for want of descriptors (asyncio logs
    each one with a traceback, thousands a second) and hands everything else on."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == "socket.accept() out of system resource":
            server._note_exhaustion()
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    return handle


# The admin page runs its own scripts and styles only, talks to this server only, and can not
# be framed: a room name that reaches it as HTML would still run nothing.
ADMIN_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _with_csp(found: StaticResponse | None) -> StaticResponse:
    if found is None:
        return StaticResponse(HTTPStatus.NOT_FOUND, [("Content-Type", "text/plain; charset=utf-8")], b"not found\n")
    headers = [
        *found.headers,
        ("Content-Security-Policy", ADMIN_CSP),
        ("Referrer-Policy", "no-referrer"),
    ]
    return StaticResponse(found.status, headers, found.body)


def _not_allowed() -> StaticResponse:
    return StaticResponse(HTTPStatus.METHOD_NOT_ALLOWED, [("Allow", "GET, HEAD")], b"")


def _static_response(connection: ServerConnection, found: StaticResponse) -> Response:
    headers = Headers(found.headers)
    headers["Date"] = email.utils.formatdate(usegmt=True)
    headers["Connection"] = "close"
    if "Content-Length" not in headers and found.status != HTTPStatus.NOT_MODIFIED:
        headers["Content-Length"] = str(len(found.body))
    return Response(found.status.value, found.status.phrase, headers, found.body)


def _without_body(response: Response) -> Response:
    """The answer to HEAD: the same headers (Content-Length included), no body."""
    return Response(response.status_code, response.reason_phrase, response.headers, b"")


def _response(connection: ServerConnection, status: HTTPStatus, body: str, content_type: str) -> Response:
    response = connection.respond(status, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-cache"
    return response


def _run_loop(main: Awaitable[None]) -> None:
    """Run ``main`` on uvloop when it is installed (faster), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        uvloop = None  # not inside the except: every later traceback would carry this ImportError
    if uvloop is None:
        asyncio.run(main)  # type: ignore[arg-type]
    else:
        uvloop.run(main)  # type: ignore[arg-type]
