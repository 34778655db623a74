"""A chat with nicknames and rooms, in namespace ``/chat``.

Client events (all answer with an acknowledgement when the frame asks for one):

- ``connect`` with ``{"nick": "ann"}`` as auth (optional: a guest name is given otherwise);
- ``nick`` ``{"nick": "ann"}``: change the nickname (announced to the current room);
- ``join`` ``{"room": "lobby"}``: move to a room (leaving the previous one; both are told);
- ``leave``: leave the current room (announced);
- ``say`` ``{"text": "hi"}``: ``said`` ``{"room", "nick", "text"}`` to everyone in the room, sender included;
- ``who`` ``{"room": "lobby"}`` (default: the current room): the nicknames in it, sorted.

Server events: ``said`` and ``announcement`` ``{"room", "text"}`` (joins, leaves, renames and
disconnects). Run it with ``python -m plainsocket run app:socketio --app-dir examples/chat``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from plainsocket import ClientDisconnectedError, SocketServer, emit, join_room, leave_room, request, session

CHAT = "/chat"
MAX_NICK = 32
MAX_ROOM = 64
MAX_TEXT = 2000

socketio = SocketServer(static_files={"/": "index.html"}, static_dir=Path(__file__).resolve().parent)


class ChatError(ValueError):
    """A request the chat refuses; its message goes back in the acknowledgement."""


def _text(data: Any, field: str, limit: int) -> str:
    """``data[field]`` as a stripped, non-empty string of at most ``limit`` characters."""
    value = data.get(field) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise ChatError(f"{field} must be a non-empty string")
    value = value.strip()
    if len(value) > limit:
        raise ChatError(f"{field} is longer than {limit} characters")
    return value


def _room(data: Any) -> str:
    """``data["room"]`` as a room name; a sid is refused: it is the room of one client's private messages."""
    room = _text(data, "room", MAX_ROOM)
    if room in socketio.sids(CHAT):
        raise ChatError("that name is taken")
    return room


def _announce(room: str, text: str, *, include_self: bool = True) -> None:
    emit("announcement", {"room": room, "text": text}, to=room, include_self=include_self)


def _leave_current_room() -> str | None:
    """Leave the current room, if any, telling those who stay; return its name."""
    room = session.get("room")
    if room is None:
        return None
    leave_room(room)
    session["room"] = None
    _announce(room, f"{session['nick']} left {room}")
    return room


def _refusal(error: ChatError) -> dict[str, Any]:
    return {"ok": False, "error": str(error)}


@socketio.on("connect", namespace=CHAT)
def on_connect(auth: Any) -> None:
    if isinstance(auth, dict) and "nick" in auth:
        try:
            nick = _text(auth, "nick", MAX_NICK)
        except ChatError as error:
            raise ConnectionRefusedError(str(error)) from None
    else:
        nick = f"guest-{request.sid[:6]}"
    session["nick"] = nick
    session["room"] = None
    emit("announcement", {"room": None, "text": f"Welcome, {nick}"})


@socketio.on("nick", namespace=CHAT)
def on_nick(data: Any) -> dict[str, Any]:
    try:
        nick = _text(data, "nick", MAX_NICK)
    except ChatError as error:
        return _refusal(error)
    old, session["nick"] = session["nick"], nick
    room = session.get("room")
    if room is not None and old != nick:
        _announce(room, f"{old} is now known as {nick}")
    return {"ok": True, "nick": nick}


@socketio.on("join", namespace=CHAT)
def on_join(data: Any) -> dict[str, Any]:
    try:
        room = _room(data)
    except ChatError as error:
        return _refusal(error)
    if session.get("room") == room:
        return {"ok": True, "room": room}
    _leave_current_room()
    join_room(room)
    session["room"] = room
    _announce(room, f"{session['nick']} joined {room}")
    return {"ok": True, "room": room}


@socketio.on("leave", namespace=CHAT)
def on_leave() -> dict[str, Any]:
    room = _leave_current_room()
    if room is None:
        return {"ok": False, "error": "not in a room"}
    return {"ok": True, "room": room}


@socketio.on("say", namespace=CHAT)
def on_say(data: Any) -> dict[str, Any]:
    room = session.get("room")
    if room is None:
        return {"ok": False, "error": "join a room first"}
    try:
        text = _text(data, "text", MAX_TEXT)
    except ChatError as error:
        return _refusal(error)
    emit("said", {"room": room, "nick": session["nick"], "text": text}, to=room)
    return {"ok": True}


@socketio.on("who", namespace=CHAT)
def on_who(data: Any) -> dict[str, Any]:
    room = session.get("room")
    if isinstance(data, dict) and data.get("room") is not None:
        try:
            room = _room(data)
        except ChatError as error:
            return _refusal(error)
    if room is None:
        return {"ok": False, "error": "not in a room"}
    # Each member's nickname is in its own session. One process: members() and get_session() know
    # this process's clients only (scaled out on Redis, the names would need a shared store).
    nicks = []
    for sid in socketio.members(room, namespace=CHAT):
        try:
            nicks.append(socketio.get_session(sid, CHAT)["nick"])
        except ClientDisconnectedError:
            continue  # leaving /chat right now: its disconnect handler runs
    return {"ok": True, "room": room, "nicks": sorted(nicks)}


@socketio.on("disconnect", namespace=CHAT)
def on_disconnect(reason: str) -> None:
    room = session.get("room")
    if room is not None:
        # Still a member while this handler runs: leave out the one who is gone.
        _announce(room, f"{session['nick']} disconnected", include_self=False)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # as `plainsocket run`: our lines only
    socketio.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
