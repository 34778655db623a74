"""The built-in ``/admin`` namespace: what the admin page at ``GET /admin`` shows, and its guard.

Enabled only with an admin token (``admin_token=``, ``--admin-token`` or the environment
variable ``PLAINSOCKET_ADMIN_TOKEN``). The page is itself a plainsocket client: it connects
``/admin`` with ``{"token": ...}`` as its auth, which is compared in constant time; an address
that fails ``MAX_FAILURES`` times in ``FAILURE_WINDOW`` seconds is refused, whatever it sends,
until the window ends.

What the page receives (server to admin):

    cluster  {"nodes": [summary, ...], "node": "<this node>", "backplane": "up"|"down"|"off",
              "write": bool, "interval": seconds}

pushed every heartbeat interval, only while an admin is connected to this node. Each node's
summary (:func:`node_summary`) travels with the backplane's existing heartbeat in its Redis
node key; the node an admin watches reads every node's key (SCAN + MGET) for that push. With
Redis down the push holds the local node only, and says the backplane is down.

What the page asks for, with an acknowledgement (never pushed to every admin):

    inspect_sid   {"sid"}                                  -> one client of this node
    inspect_room  {"namespace", "room", "offset", "limit"} -> a page of its sids, cluster-wide
    disconnect    {"sid"}  only with admin_write: close that client (4001), logged with who did it

Without ``admin_write`` no write event is registered at all: a crafted one gets the same
``unknown_event`` error as any event that has no handler.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

from .context import request

logger = logging.getLogger("plainsocket.admin")

NAMESPACE = "/admin"
TOKEN_VARIABLE = "PLAINSOCKET_ADMIN_TOKEN"
MAX_FAILURES = 5  # failed tokens per address...
FAILURE_WINDOW = 60.0  # ...in this many seconds, then that address is refused until the window ends
MAX_TRACKED_ADDRESSES = 10_000  # addresses whose failures are remembered (oldest forgotten first)
TOP_ROOMS = 5  # largest rooms per namespace in a node's summary
MAX_NAME = 200  # characters of a room name in a summary or a reply
MAX_PAGE = 100  # sids per inspect_room reply
MAX_ROOMS_SHOWN = 100  # rooms per namespace in an inspect_sid reply
VERSION = "0.2.0"


class AdminHost(Protocol):
    """What the admin namespace needs of the server (server.SocketServer provides it)."""

    heartbeat_interval: float

    def on_event(self, event: str, handler: Any, namespace: str = ..., *, concurrent: bool = ...) -> None: ...

    def emit(self, event: str, data: Any = ..., *, namespace: str = ..., to: Any = ...) -> int: ...

    def sids(self, namespace: str = ...) -> list[str]: ...

    def disconnect(self, sid: str, *, namespace: str | None = ...) -> None: ...

    def start_background_task(self, target: Any, *args: Any) -> Any: ...

    async def cluster_sids(self, namespace: str = ..., room: str | None = ...) -> list[str]: ...

    def admin_node_summary(self, rooms: bool) -> dict[str, Any]: ...

    def admin_client_details(self, sid: str) -> dict[str, Any] | None: ...

    def admin_namespaces(self) -> list[str]: ...

    async def admin_cluster(self) -> dict[str, Any]: ...


class FailureThrottle:
    """Failed attempts per address in a fixed window; a bounded map, oldest address forgotten first."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address -> (count, window start)

    def blocked(self, address: str, now: float) -> float:
        """Seconds until ``address`` may try again (0: it may now)."""
        count, start = self._failures.get(address, (0, now))
        if now - start >= self.window:
            self._failures.pop(address, None)
            return 0.0
        return start + self.window - now if count >= self.limit else 0.0

    def failed(self, address: str, now: float) -> None:
        count, start = self._failures.pop(address, (0, now))
        if now - start >= self.window:
            count, start = 0, now
        self._failures[address] = (count + 1, start)
        while len(self._failures) > MAX_TRACKED_ADDRESSES:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


class Admin:
    """The ``/admin`` namespace of one server: its guard, its pushes and its queries."""

    def __init__(self, host: AdminHost, token: str, *, write: bool = False) -> None:
        if not token:
            raise ValueError("the admin page needs a token")
        self.host = host
        self._token = token.encode()
        self.write = write
        self.throttle = FailureThrottle()
        self._pusher: Any = None  # the background task pushing the cluster view

    def register(self) -> None:
        """Register the namespace's handlers; the write ones only with ``write``."""
        on = self.host.on_event
        on("connect", self._connect, NAMESPACE)
        on("disconnect", self._disconnect, NAMESPACE)
        on("inspect_sid", self._inspect_sid, NAMESPACE, concurrent=True)
        on("inspect_room", self._inspect_room, NAMESPACE, concurrent=True)
        if self.write:
            on("disconnect_sid", self._disconnect_sid, NAMESPACE)

    # -- Connecting -------------------------------------------------------------------------

    def _connect(self, auth: Any) -> None:
        address = request.remote_address
        now = time.monotonic()
        wait = self.throttle.blocked(address, now)
        if wait:
            logger.warning("admin login refused for %s: too many failed attempts", address)
            raise ConnectionRefusedError(f"too many failed attempts: retry in {wait:.0f} s")
        given = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self._token):
            self.throttle.failed(address, now)
            logger.warning("admin login failed from %s", address)
            raise ConnectionRefusedError("invalid admin token")
        self.throttle.succeeded(address)
        logger.info("admin connected: sid=%s address=%s%s", request.sid, address, " (write)" if self.write else "")
        if self._pusher is None or self._pusher.done():
            # A task of the server's: shutdown cancels it with the others.
            self._pusher = self.host.start_background_task(self._push_while_watched)

    def _disconnect(self, reason: str) -> None:
        logger.info("admin disconnected: sid=%s address=%s", request.sid, request.remote_address)

    async def _push_while_watched(self) -> None:
        """Send the cluster view to this node's admins each interval; stop when none is left."""
        await asyncio.sleep(0)  # the connect frame first
        while True:
            admins = self.host.sids(NAMESPACE)
            if not admins:
                return
            try:
                view = await self.host.admin_cluster()
            except Exception:
                logger.exception("reading the cluster's statistics failed")
                local = self.host.admin_node_summary(True)
                view = {"nodes": [local], "node": local["node"], "backplane": "down"}
            view = {**view, "write": self.write, "interval": self.host.heartbeat_interval}
            for sid in self.host.sids(NAMESPACE):
                self.host.emit("cluster", view, namespace=NAMESPACE, to=sid)
            await asyncio.sleep(self.host.heartbeat_interval)

    # -- Queries -------------------------------------------------------------------------

    async def _inspect_sid(self, data: Any) -> dict[str, Any]:
        sid = data.get("sid") if isinstance(data, dict) else None
        if not isinstance(sid, str) or not sid or len(sid) > 64:
            return {"error": "give a sid"}
        details = self.host.admin_client_details(sid)
        if details is not None:
            return {"sid": sid, "found": True, **details}
        # On another node: every client is in a room named after its sid, so the cluster
        # query tells its namespaces (its other rooms are known to its own node only).
        namespaces = {}
        for namespace in [*self.host.admin_namespaces(), NAMESPACE]:
            if sid in await self.host.cluster_sids(namespace, sid):
                namespaces[namespace] = {"total": 0, "rooms": [], "elsewhere": True}
        if not namespaces:
            return {"sid": sid, "found": False, "message": "no such client in the cluster"}
        return {
            "sid": sid,
            "found": True,
            "node": "another node",
            "address": "-",
            "namespaces": namespaces,
            "kept": False,
            "send_buffer": None,
            "pending_acks": None,
        }

    async def _inspect_room(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            return {"error": "give a namespace and a room"}
        namespace, room = data.get("namespace"), data.get("room")
        offset, limit = data.get("offset", 0), data.get("limit", MAX_PAGE)
        if namespace not in self.host.admin_namespaces() or not isinstance(room, str):
            return {"error": "unknown namespace, or no room given"}
        if type(offset) is not int or type(limit) is not int or offset < 0 or not 0 < limit <= MAX_PAGE:
            return {"error": f"offset >= 0 and 0 < limit <= {MAX_PAGE}"}
        sids = await self.host.cluster_sids(namespace, room)
        return {
            "namespace": namespace,
            "room": room,
            "total": len(sids),
            "offset": offset,
            "sids": sids[offset : offset + limit],
        }

    # -- Writes (registered with admin_write only) ------------------------------------------

    def _disconnect_sid(self, data: Any) -> dict[str, Any]:
        sid = data.get("sid") if isinstance(data, dict) else None
        if not isinstance(sid, str) or not sid or len(sid) > 64:
            return {"error": "give a sid"}
        logger.warning("admin sid=%s address=%s disconnected sid=%s", request.sid, request.remote_address, sid)
        self.host.disconnect(sid)
        return {"ok": True, "sid": sid}


def node_summary(
    *,
    node: str,
    worker: int | None,
    started: float,
    interval: float,
    connections: int,
    namespaces: Mapping[str, int],
    counters: Mapping[str, Any],
    backplane: Mapping[str, Any] | None,
    rooms: Mapping[str, tuple[int, list[tuple[str, int]]]] | None,
) -> dict[str, Any]:
    """One node's statistics for the admin page: bounded in size whatever clients do."""
    summary: dict[str, Any] = {
        "node": node,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "worker": worker,
        "version": VERSION,
        "started": started,
        "time": time.time(),
        "interval": interval,
        "connections": connections,
        "namespaces": dict(namespaces),
        **counters,
        "backplane": dict(backplane) if backplane is not None else None,
    }
    if rooms is not None:
        summary["rooms"] = {
            namespace: {"total": total, "largest": [[name[:MAX_NAME], size] for name, size in largest[:TOP_ROOMS]]}
            for namespace, (total, largest) in rooms.items()
        }
    return summary
