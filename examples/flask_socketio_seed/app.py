#!/usr/bin/env python
"""Flask-SocketIO's example app (``example/app.py``), ported to plainsocket file for file.

The handlers are upstream's, in upstream's order, with upstream's event names; README.md next
to this file lists every line that changed. Run it from the repository root with
``python -m plainsocket run app:socketio --app-dir examples/flask_socketio_seed`` (every flag
of ``plainsocket run`` works) or, with plainsocket installed (or ``PYTHONPATH=.``),
``python examples/flask_socketio_seed/app.py``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from plainsocket import SocketServer, close_room, disconnect, emit, join_room, leave_room, request, rooms, session

# Flask-SocketIO chooses "threading", "eventlet" or "gevent" here; plainsocket runs on asyncio only.
async_mode = "asyncio"

# No Flask app: the server itself serves the page, from this folder whatever the current directory.
HERE = Path(__file__).resolve().parent
socketio = SocketServer(static_files={"/": "index.html"}, static_dir=HERE)
thread: object | None = None  # what start_background_task() returns
# Upstream's `thread_lock = Lock()` is not needed: handlers run one at a time on the event loop,
# and the check-and-set in test_connect() has no `await` in between.

# Upstream sleeps 10 s; the tests shorten it (or lengthen it, to keep their frames exact).
INTERVAL = float(os.environ.get("BACKGROUND_INTERVAL", "10"))


async def background_thread() -> None:
    """Example of how to send server generated events to clients."""
    # `async def` and `await socketio.sleep()`: the task runs on the event loop, with the handlers.
    # Upstream's plain `def` with `socketio.sleep(10)` works too: it runs in a thread of its own.
    count = 0
    while True:
        await socketio.sleep(INTERVAL)
        count += 1
        socketio.emit("my_response", {"data": "Server generated event", "count": count}, namespace="/test")


# Upstream's `@app.route('/')` rendering templates/index.html is `static_files` above.


@socketio.on("my_event", namespace="/test")
def test_message(message: dict[str, Any]) -> None:
    session["receive_count"] = session.get("receive_count", 0) + 1
    emit("my_response", {"data": message["data"], "count": session["receive_count"]})


@socketio.on("my_broadcast_event", namespace="/test")
def test_broadcast_message(message: dict[str, Any]) -> None:
    session["receive_count"] = session.get("receive_count", 0) + 1
    emit("my_response", {"data": message["data"], "count": session["receive_count"]}, broadcast=True)


@socketio.on("join", namespace="/test")
def join(message: dict[str, Any]) -> None:
    join_room(message["room"])
    session["receive_count"] = session.get("receive_count", 0) + 1
    emit("my_response", {"data": "In rooms: " + ", ".join(rooms()), "count": session["receive_count"]})


@socketio.on("leave", namespace="/test")
def leave(message: dict[str, Any]) -> None:
    leave_room(message["room"])
    session["receive_count"] = session.get("receive_count", 0) + 1
    emit("my_response", {"data": "In rooms: " + ", ".join(rooms()), "count": session["receive_count"]})


@socketio.on("close_room", namespace="/test")
def close(message: dict[str, Any]) -> None:
    session["receive_count"] = session.get("receive_count", 0) + 1
    emit(
        "my_response",
        {"data": "Room " + message["room"] + " is closing.", "count": session["receive_count"]},
        to=message["room"],
    )
    close_room(message["room"])


@socketio.on("my_room_event", namespace="/test")
def send_room_message(message: dict[str, Any]) -> None:
    session["receive_count"] = session.get("receive_count", 0) + 1
    emit("my_response", {"data": message["data"], "count": session["receive_count"]}, to=message["room"])


@socketio.on("disconnect_request", namespace="/test")
def disconnect_request() -> None:
    # No @copy_current_request_context: the callback runs in a copy of this handler's context.
    def can_disconnect() -> None:
        disconnect()

    session["receive_count"] = session.get("receive_count", 0) + 1
    # for this emit we use a callback function
    # when the callback function is invoked we know that the message has been
    # received and it is safe to disconnect
    emit("my_response", {"data": "Disconnected!", "count": session["receive_count"]}, callback=can_disconnect)


@socketio.on("my_ping", namespace="/test")
def ping_pong() -> None:
    emit("my_pong")


@socketio.on("connect", namespace="/test")
def test_connect() -> None:
    global thread
    if thread is None:
        thread = socketio.start_background_task(background_thread)
    emit("my_response", {"data": "Connected", "count": 0})


@socketio.on("disconnect", namespace="/test")
def test_disconnect() -> None:
    print("Client disconnected", request.sid)


if __name__ == "__main__":
    # socketio.run() configures no logging: without this line it prints nothing, not even the
    # port it listens on. Upstream's debug=True (the reloader) works too, with watchfiles installed.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # as `plainsocket run`: our lines only
    socketio.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
