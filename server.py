"""The demo app: Flask-SocketIO's classic example, ported; ``python server.py`` runs it.

Namespace ``/test``: ``my event`` is echoed back as ``my response``, ``my broadcast event``
goes to every client, and the room events show joining, leaving and closing rooms. The page
at ``/`` is client.html, next to this file.

Presence is on for every room of ``/test``: a member is keyed by the ``name`` of its connect
auth (``{"name": "alice"}``), else by its sid. A connection receives presence frames once it
asks with ``presence_mode`` (``{"mode": "full"}`` or ``"count"``): the page does; a plain
client sees only the demo's own events.

Every flag of ``plainsocket run`` works here (``python server.py --help``), and
``python server.py app:socketio`` runs another app instead, as ``plainsocket run`` would.
"""

from __future__ import annotations

import time
from typing import Any

from plainsocket import SocketServer, close_room, disconnect, emit, join_room, leave_room, request, rooms
from plainsocket.presence import Member, Presence


def create_app(**options: Any) -> SocketServer:
    """Build the demo server; ``options`` go to :class:`SocketServer`."""
    options.setdefault("presence", {"/test": Presence(rooms="*", key=presence_key, meta=presence_meta, mode="none")})
    socketio = SocketServer(**options)

    @socketio.on("my event", namespace="/test")
    def test_message(message: dict[str, Any]) -> None:
        emit("my response", {"data": _field(message, "data")})

    @socketio.on("my broadcast event", namespace="/test")
    def test_broadcast_message(message: dict[str, Any]) -> None:
        emit("my response", {"data": _field(message, "data")}, broadcast=True)

    @socketio.on("join", namespace="/test")
    def join(message: dict[str, Any]) -> None:
        join_room(str(_field(message, "room")))
        emit("my response", {"data": "In rooms: " + ", ".join(rooms())})

    @socketio.on("leave", namespace="/test")
    def leave(message: dict[str, Any]) -> None:
        leave_room(str(_field(message, "room")))
        emit("my response", {"data": "In rooms: " + ", ".join(rooms())})

    @socketio.on("close room", namespace="/test")
    def on_close_room(message: dict[str, Any]) -> None:
        room = str(_field(message, "room"))
        emit("my response", {"data": f"Room {room} is closing."}, to=room)
        close_room(room)

    @socketio.on("my room event", namespace="/test")
    def send_room_message(message: dict[str, Any]) -> None:
        emit("my response", {"data": _field(message, "data")}, to=str(_field(message, "room")))

    @socketio.on("disconnect request", namespace="/test")
    def disconnect_request() -> None:
        emit("my response", {"data": "Disconnected!"})
        disconnect()

    @socketio.on("my ping", namespace="/test")
    def ping_pong() -> dict[str, float]:
        emit("my pong")
        return {"pong": time.time()}

    @socketio.on("connect", namespace="/test")
    def test_connect(auth: Any) -> None:
        # Also runs when a dropped client resumes its session (its rooms are back).
        emit("my response", {"data": "Reconnected" if request.recovered else "Connected"})

    @socketio.on("disconnect", namespace="/test")
    def test_disconnect(reason: str) -> None:
        print("Client disconnected", request.sid, reason)

    return socketio


def presence_key(member: Member) -> str:
    """The ``name`` of the connect auth (at most 64 characters), else the sid."""
    name = _field(member.auth, "name")
    return name[:64] if isinstance(name, str) and name.strip() else member.sid


def presence_meta(member: Member) -> dict[str, Any]:
    return {"name": presence_key(member)}


def _field(message: Any, name: str) -> Any:
    """Read ``message[name]`` from client data that may not be a dict at all."""
    if isinstance(message, dict):
        return message.get(name)
    return None


# What `python server.py` runs; a flag overrides a keyword (`--recovery-window 0` turns recovery off).
socketio = create_app(recovery_window=120)

if __name__ == "__main__":
    from pathlib import Path

    from plainsocket.cli import main

    main(default_app="server:socketio", default_app_dir=str(Path(__file__).resolve().parent))
