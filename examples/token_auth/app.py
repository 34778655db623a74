"""Token authentication on connect: a good token is let in, any other gets ``connect_error``.

The ``/`` namespace's connect handler checks ``auth["token"]``. The server joins every new
socket to ``/`` before the client has said anything, so the first frame a client gets is a
``connect_error`` with ``{"message": "invalid token"}``; it answers with
``{"event":"connect","namespace":"/","data":{"token":"..."}}`` (``client.js`` and
``client.py`` do so by themselves with their ``auth`` option), and gets ``connect`` or
``connect_error`` again. ``whoami`` answers who the token belongs to. Run it with
``python -m plainsocket run app:socketio --app-dir examples/token_auth``.
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import Any

from plainsocket import SocketServer, request, session

logger = logging.getLogger("token_auth")

# user -> token. A real application loads these from its secret store (or keeps only their
# hashes and compares hashes); never from the source code.
TOKENS = {
    "alice": "alice-7f3c9d2e1b",
    "bob": "bob-4a8e6c0f5d",
}

socketio = SocketServer()


def user_for(token: Any) -> str | None:
    """Return the user whose token this is, or None.

    Every known token is compared, each with :func:`hmac.compare_digest`, so the time taken
    tells neither how much of a token matched nor which entry did.
    """
    if not isinstance(token, str):
        return None
    given = token.encode("utf-8")  # bytes: compare_digest refuses non-ASCII str
    found = None
    for user, expected in TOKENS.items():
        if hmac.compare_digest(given, expected.encode("utf-8")):
            found = user
    return found


@socketio.on("connect")
def on_connect(auth: Any) -> None:
    token = auth.get("token") if isinstance(auth, dict) else None
    user = user_for(token)
    if user is None:
        raise ConnectionRefusedError("invalid token")
    session["user"] = user
    logger.info("%s connected (sid=%s)", user, request.sid)


@socketio.on("whoami")
def whoami() -> dict[str, str]:
    # Only reachable once connected: a refused client's events get a `not_connected` error.
    return {"user": session["user"], "sid": request.sid}


@socketio.on("disconnect")
def on_disconnect(reason: str) -> None:
    logger.info("%s disconnected (sid=%s): %s", session.get("user"), request.sid, reason)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # as `plainsocket run`: our lines only
    socketio.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
