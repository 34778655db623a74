"""Inside a handler: the current client (``request``, ``session``) and what it can do.

``emit``, ``send``, ``join_room``, ``leave_room``, ``close_room``, ``rooms`` and
``disconnect`` act on the client whose event is being handled, as in Flask-SocketIO; the same
operations exist as :class:`server.SocketServer` methods for code outside handlers.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from http.cookies import CookieError, SimpleCookie
from threading import get_ident
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers

from .protocol import Envelope

if TYPE_CHECKING:
    from .connection import Connection
    from .metrics import NamespaceMetrics, ServerMetrics


class HandlerHost(Protocol):
    """What the helpers of a handler need of the server running it (``SocketServer`` is one).

    Defined here, not imported from the server: the server is built on this module.
    """

    _loop_thread: int
    _metrics: ServerMetrics | None

    def frame(self, event: str, data: Any = None, namespace: str = ..., id: int | None = None) -> bytes: ...

    def emit(
        self,
        event: str,
        data: Any = None,
        *,
        namespace: str = ...,
        to: str | Iterable[str] | None = None,
        skip_sid: str | Iterable[str] | None = None,
        include_self: bool = True,
        callback: Callable[..., Any] | None = None,
    ) -> int: ...

    def enter_room(self, sid: str, room: str, *, namespace: str = ...) -> None: ...

    def leave_room(self, sid: str, room: str, *, namespace: str = ...) -> None: ...

    def close_room(self, room: str, *, namespace: str = ...) -> None: ...

    def rooms(self, sid: str, *, namespace: str = ...) -> list[str]: ...

    def disconnect(self, sid: str, *, namespace: str | None = None) -> None: ...

    def _on_loop(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None: ...


class Context(NamedTuple):
    """What a handler runs for; a named tuple, as one is built for every event handled."""

    server: HandlerHost
    conn: Connection
    namespace: str
    recovered: bool = False  # a connect handler run on a resume of a kept session
    envelope: Envelope | None = None  # the frame being handled, if any
    metrics: NamespaceMetrics | None = None  # the namespace's, while metrics are on


logger = logging.getLogger("plainsocket")

current: contextvars.ContextVar[Context] = contextvars.ContextVar("plainsocket_context")


def _context() -> Context:
    try:
        return current.get()
    except LookupError:
        raise RuntimeError("this works only inside an event handler; use the SocketServer methods") from None


class _Request:
    """The current client, inside a handler: ``request.sid``, ``request.namespace``, ..."""

    @property
    def sid(self) -> str:
        return _context().conn.sid

    @property
    def namespace(self) -> str:
        return _context().namespace

    @property
    def headers(self) -> Headers:
        request = _context().conn.ws.request
        return request.headers if request is not None else Headers()

    @property
    def path(self) -> str:
        request = _context().conn.ws.request
        return request.path if request is not None else "/"

    @property
    def remote_address(self) -> str:
        return _context().conn.address

    remote_addr = remote_address  # Flask's name

    @property
    def args(self) -> dict[str, str]:
        """The handshake URL's query parameters (the first value of each), as Flask's ``request.args``."""
        return {name: values[0] for name, values in parse_qs(urlsplit(self.path).query).items()}

    @property
    def cookies(self) -> dict[str, str]:
        """The handshake's cookies."""
        jar = SimpleCookie()
        for header in self.headers.get_all("Cookie"):
            try:
                jar.load(header)
            except CookieError:
                continue  # a malformed cookie header is the client's problem, not a crash
        return {name: morsel.value for name, morsel in jar.items()}

    @property
    def event(self) -> dict[str, Any] | None:
        """The event being handled, in Flask-SocketIO's shape: ``{"message": name, "args": (data,)}``."""
        envelope = _context().envelope
        return None if envelope is None else {"message": envelope.event, "args": (envelope.data,)}

    @property
    def recovered(self) -> bool:
        """In a connect handler: whether the client resumed a kept session (rooms and session back)."""
        return _context().recovered


class _Session(MutableMapping[str, Any]):
    """The current client's session dict for the current namespace, inside a handler."""

    def _data(self) -> dict[str, Any]:
        context = _context()
        return context.conn.sessions.setdefault(context.namespace, {})

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())


request = _Request()
session = _Session()


def emit(
    event: str,
    data: Any = None,
    *,
    namespace: str | None = None,
    to: str | list[str] | None = None,
    broadcast: bool = False,
    include_self: bool = True,
    skip_sid: str | list[str] | None = None,
    callback: Callable[..., Any] | None = None,
) -> None:
    """Emit from inside a handler: to the current client, or with ``to``/``broadcast`` wider.

    ``callback`` (one client only: the current one, or ``to=sid``) receives the client's
    acknowledgement, as in Flask-SocketIO.
    """
    try:
        context = current.get()  # _context(), inlined: emit is what most handlers call
    except LookupError:
        context = _context()  # raises, with the reason
    namespace = namespace or context.namespace
    if callback is not None:
        if broadcast:
            raise ValueError("callback= needs one recipient: broadcasts have no acknowledgement")
        context.server.emit(event, data, namespace=namespace, to=to or context.conn.sid, callback=callback)
        return
    if to is None and not broadcast:
        server, conn = context.server, context.conn
        if namespace not in conn.namespaces:
            # Never reach a client in a namespace it did not join (or was refused by).
            logger.warning("emit of %r not sent: sid=%s is not in namespace %r", event[:100], conn.sid, namespace[:100])
            return
        if get_ident() != server._loop_thread:  # a handler's work in asyncio.to_thread
            server.frame(event, data, namespace)  # validate in the caller
            server._on_loop(lambda: _send_counted(server, conn, server.frame(event, data, namespace), namespace))
            return
        conn.send(server.frame(event, data, namespace))
        counted = context.metrics
        if counted is not None and namespace == context.namespace:
            counted.sent += 1  # the usual reply: an attribute, no lookup
        elif server._metrics is not None:
            server._metrics.frames_sent(namespace, 1)
        return
    if not include_self:
        skip_sid = _with(skip_sid, context.conn.sid)
    context.server.emit(event, data, namespace=namespace, to=to, skip_sid=skip_sid)


def send(data: Any, *, json: bool = False, **options: Any) -> None:
    """Emit a ``message`` event (``json`` with ``json=True``), as Flask-SocketIO does."""
    emit("json" if json else "message", data, **options)


def join_room(room: str, sid: str | None = None, namespace: str | None = None) -> None:
    """Put the current client (or ``sid``) in ``room``."""
    context = _context()
    context.server.enter_room(sid or context.conn.sid, room, namespace=namespace or context.namespace)


def leave_room(room: str, sid: str | None = None, namespace: str | None = None) -> None:
    """Take the current client (or ``sid``) out of ``room``."""
    context = _context()
    context.server.leave_room(sid or context.conn.sid, room, namespace=namespace or context.namespace)


def close_room(room: str, namespace: str | None = None) -> None:
    """Take everyone out of ``room``."""
    context = _context()
    context.server.close_room(room, namespace=namespace or context.namespace)


def rooms(sid: str | None = None, namespace: str | None = None) -> list[str]:
    """Return the rooms of the current client (or ``sid``), its own sid room included."""
    context = _context()
    return context.server.rooms(sid or context.conn.sid, namespace=namespace or context.namespace)


def disconnect(sid: str | None = None, namespace: str | None = None) -> None:
    """Disconnect the current client (or ``sid``) from the current namespace."""
    context = _context()
    context.server.disconnect(sid or context.conn.sid, namespace=namespace or context.namespace)


def _send_counted(server: HandlerHost, conn: Connection, frame: bytes, namespace: str) -> None:
    """Send ``frame`` to ``conn`` and count it, on the loop (an emit from a handler's thread)."""
    conn.send(frame)
    if server._metrics is not None:
        server._metrics.frames_sent(namespace, 1)


def _with(skip_sid: str | list[str] | None, sid: str) -> list[str]:
    if skip_sid is None:
        return [sid]
    if isinstance(skip_sid, str):
        return [skip_sid, sid]
    return [*skip_sid, sid]
