"""plainsocket: Socket.IO's event model over plain WebSockets.

A Flask-SocketIO app ports with a change of imports::

    from plainsocket import SocketServer, emit

    socketio = SocketServer()

    @socketio.on("my event", namespace="/test")
    def test_message(message):
        emit("my response", {"data": message["data"]})

    if __name__ == "__main__":
        socketio.run(host="127.0.0.1", port=5000)

Run it with every command-line flag: ``plainsocket run app:socketio --port 5000``.

The modules, from the bottom up (each imports only those above it): ``protocol`` (the wire
format, pure), ``registry`` (rooms and membership, plain state), ``presence`` (presence
bookkeeping, plain state), ``forwarded`` and ``static`` (HTTP helpers, pure), ``connection``
(one client's write path), ``context`` (what a handler can do), ``metrics`` (what a process
counts, and the Prometheus text format), ``metrics_http`` (serving it, and a ``--workers``
parent's merge), ``admin`` (the ``/admin`` namespace of the admin page), ``presence_hub``
(presence on a running server), ``recovery`` and ``server`` (the event core and its asyncio
server), ``backplane`` (Redis scale-out), ``presence_redis`` (presence decided in Redis),
``supervisor`` and ``cli`` (the program: workers, reload, app loading), and ``client`` with
``client_presence`` (the Python client).
"""

from __future__ import annotations

from .connection import CallTimeoutError, ClientDisconnectedError, LimitExceededError
from .context import close_room, disconnect, emit, join_room, leave_room, request, rooms, send, session
from .protocol import Envelope, ProtocolError
from .server import Namespace, SocketServer

__all__ = [
    "CallTimeoutError",
    "ClientDisconnectedError",
    "Envelope",
    "LimitExceededError",
    "Namespace",
    "ProtocolError",
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
