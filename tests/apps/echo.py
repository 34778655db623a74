"""A user's app, for the command-line tests: its own keywords, which flags may override."""

from __future__ import annotations

import os
from typing import Any

from plainsocket import SocketServer, emit

app = SocketServer(ping_interval=7.0, max_rooms=5)


def install(socketio: SocketServer) -> SocketServer:
    @socketio.on("options")
    def options() -> dict[str, Any]:
        return {
            "ping_interval": socketio.ping_interval,
            "max_rooms": socketio.max_rooms,
            "rate_limit": socketio.rate_limit,
            "recovery_window": socketio.recovery_window,
        }

    @socketio.on("whoami")
    def whoami() -> int:
        return os.getpid()

    @socketio.on("shout")
    def shout(data: Any) -> None:
        emit("heard", data, broadcast=True)

    return socketio


install(app)


def create_app() -> SocketServer:
    """The factory form (``--factory``): a fresh server each call."""
    return install(SocketServer(max_rooms=9))


not_a_server = 42
