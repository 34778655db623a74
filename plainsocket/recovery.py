"""Connection state recovery: a client that drops comes back to the same session.

When a socket drops without a closing handshake, the application is told at once (the
disconnect handlers run, tracking stops counting the client), but the session (sid,
namespaces, rooms, ``session`` data, the frames sent to it) is kept for ``recovery_window``
seconds in a registry of its own, recording what it would have received (within
``recovery_max_events`` and ``recovery_max_bytes``): broadcasts once for every session, in
the server's log (:mod:`broadcast_log`), and the frames sent to it alone in its own. The
client reconnects with its secret, single-use token and the offset of the last frame it got;
it receives, in order and exactly once, every frame after that offset before any new one
(docs/protocol.md, "Extension: connection state recovery"); then the connect handlers run
again, with ``request.recovered`` true. A session that expires runs nothing more.

Across a cluster the token is claimed from the node that holds the session, over the Redis
backplane: that node sends the session's state and recorded frames and goes on recording
until the new node has joined the session's rooms, then hands over the rest; frames both
nodes recorded in that overlap are recognised by their offsets and sent once.

:class:`Recovery` is a collaborator of the server, which creates one and calls it; it owns
the tokens and the kept sessions, and knows of the server only :class:`RecoveryHost`. It
runs on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed

from .broadcast_log import offset_of
from .connection import SERVICE_RESTART, TRANSPORT_CLOSE, Connection, ConnectionOwner, GoneSocket
from .protocol import (
    CONNECT,
    DEFAULT_NAMESPACE,
    HEARTBEAT,
    PROTOCOL_VERSION,
    ProtocolError,
    decode,
    encode,
    valid_offset,
)

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from .broadcast_log import BroadcastLog
    from .presence_hub import PresenceHub
    from .registry import Registry

logger = logging.getLogger("plainsocket")

# Sessions kept after these reasons only: the client did not mean to leave.
RECOVERABLE = frozenset({TRANSPORT_CLOSE, "ping timeout", "slow consumer", SERVICE_RESTART})
CLAIM_TIMEOUT = 2.0  # seconds a node waits for the node holding a session to hand it over
# ``?recover=1``: the token comes in the client's first frame, not in the URL (browsers print
# the URL of a failed attempt in their console, proxies log it).
TOKEN_IN_FIRST_FRAME = "1"


def digest(token: str) -> str:
    """Key tokens by their hash: a lookup never compares secrets byte by byte."""
    return hashlib.sha256(token.encode()).hexdigest()


class SessionClaims(Protocol):
    """What recovery needs of the cluster: claiming a session from the node that holds it."""

    async def claim(self, key: str, offset: str | None, wait: float) -> dict[str, Any] | None: ...

    async def finish_claim(self, node: str, sid: str, mark: int, wait: float) -> list[str] | None: ...


class RecoveryHost(ConnectionOwner, Protocol):
    """What :class:`Recovery` needs of the server (``SocketServer`` is one).

    Defined here, not imported from the server: the server is built on recovery. Its options
    are read when used (``configure()`` may change them before the server starts); a resumed
    session from another node is a :class:`Connection` of this server, hence ConnectionOwner.
    """

    recovery_max_memory: int
    max_connections_per_address: int
    open_timeout: float | None
    draining: bool  # a drain keeps every session: no trimming for memory meanwhile
    _closing: bool
    _per_address: dict[str, int]  # live connections per address
    _handlers: dict[str, Any]  # namespace -> its handlers

    @property
    def backplane(self) -> SessionClaims | None: ...

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]: ...

    async def _run_disconnect_handler(self, conn: Connection, namespace: str, reason: str) -> None: ...

    def _fail_pending(self, conn: Connection) -> None: ...

    def _note_drained(self, gone: str | None = None) -> None: ...


class Recovery:
    """The sessions kept for a resume, their tokens and their memory budget.

    The server calls it at every step of a session's life that concerns recovery: the connect
    frame (:meth:`connect_frame`), the drop (:meth:`keeps`, :meth:`drop`), the resume
    (:meth:`resume`), the end (:meth:`undetach`, :meth:`forget`); the backplane calls
    :meth:`release_session` and :meth:`finish_release` when another node claims a session.
    """

    def __init__(
        self,
        server: RecoveryHost,
        *,
        connections: dict[str, Connection],
        registry: Registry,
        kept_registry: Registry,
        presence: PresenceHub,
        broadcasts: BroadcastLog,
    ) -> None:
        self.server = server
        self.connections = connections  # the server's, live and kept: sid -> Connection
        self.registry = registry  # live clients
        self.kept_registry = kept_registry  # sessions kept for a resume
        self.presence = presence
        self.broadcasts = broadcasts
        self.kept_sessions: dict[str, Connection] = {}  # oldest drop first
        self.kept_bytes = 0  # what they hold, as estimated for recovery_max_memory
        self.evicted = 0  # kept sessions ended early to stay within recovery_max_memory
        self._kept_per_address: dict[str, int] = {}
        self._tokens: dict[str, str] = {}  # token digest -> sid
        self._released: set[str] = set()  # sids being handed over to another node
        self._attaching: str | None = None  # a sid whose membership moves back to the live registry
        self._trimming = False

    # -- Tokens -------------------------------------------------------------------------

    def _issue_token(self, conn: Connection) -> str:
        """Give ``conn`` a new single-use token; the previous one stops working."""
        self.forget_token(conn)
        conn.token = secrets.token_urlsafe(24)
        self._tokens[digest(conn.token)] = conn.sid
        return conn.token

    def forget_token(self, conn: Connection) -> None:
        """Make ``conn``'s token unusable: its session must not resume."""
        if conn.token is not None:
            self._tokens.pop(digest(conn.token), None)
            conn.token = None

    def connect_frame(self, conn: Connection, namespace: str, recovered: bool = False) -> bytes:
        """Encode the ``connect`` frame of ``namespace``; for ``/`` with a new token when recovery is on."""
        data: dict[str, Any] = {"sid": conn.sid}
        if namespace == DEFAULT_NAMESPACE:
            data["protocol"] = PROTOCOL_VERSION
            window = self.server.recovery_window
            if window:
                data["recovered"] = recovered
                data["recovery"] = {
                    "token": self._issue_token(conn),
                    "window": int(window) if window % 1 == 0 else window,
                }
        elif recovered:
            data["recovered"] = True
        return encode(CONNECT, data, namespace).encode()

    # -- Dropping and expiring ---------------------------------------------------------------

    def keeps(self, conn: Connection, reason: str) -> bool:
        """Whether the session of ``conn``, whose socket closed for ``reason``, is kept for a resume."""
        server = self.server
        if not (server.recovery_window and not server._closing and reason in RECOVERABLE and conn.namespaces):
            return False
        if reason == TRANSPORT_CLOSE and conn.ws.protocol.close_rcvd is not None:
            return False  # a closed tab (1001) said goodbye: nobody will resume it
        # A kept session holds a place of its address: one address that connects and drops in
        # a loop must not fill max_connections with kept sessions and lock everyone else out.
        held = server._per_address.get(conn.address, 0) + self._kept_per_address.get(conn.address, 0)
        return held < server.max_connections_per_address

    def drop(self, conn: Connection, reason: str) -> None:
        """Keep a dropped session for a resume, and tell the application now that it left.

        The disconnect handlers run at once (in a task), as for any disconnect: tracking shows
        live clients only. The session goes on recording what is sent to it, in the rooms it
        had at the drop, whatever the handlers do (as Socket.IO persists a session before its
        ``disconnect`` event).
        """
        self._detach(conn, reason)
        self.presence.dropped(conn.sid, self.server.recovery_window)  # present for the grace
        conn.dropping = self.server._spawn(self._notify_drop(conn, reason))

    def _detach(self, conn: Connection, reason: str) -> None:
        """Move ``conn``'s membership to the kept registry and start its window."""
        if not conn.detached:
            self._kept_per_address[conn.address] = self._kept_per_address.get(conn.address, 0) + 1
            self.kept_sessions[conn.sid] = conn
            for namespace in conn.namespaces:
                rooms = self.registry.rooms(namespace, conn.sid)
                self.kept_registry.connect(namespace, conn.sid)
                for room in rooms:
                    self.kept_registry.enter_room(namespace, conn.sid, room)
        conn.detached = True
        conn.close_reason = reason
        conn.ws = GoneSocket(conn.ws)  # let the dead connection's objects go
        self._cancel_expiry(conn)
        conn.expiry = asyncio.get_running_loop().call_later(self.server.recovery_window, self._expire, conn)
        self.kept_grew(conn, conn.recovery_cost() - conn.kept_cost)

    def kept_grew(self, conn: Connection, grown: int) -> None:
        """Count what a kept session added; past ``recovery_max_memory``, trim (soon: not mid-broadcast)."""
        conn.kept_cost += grown
        self.kept_bytes += grown
        self.check_budget()

    def check_budget(self) -> None:
        """Trim the kept sessions soon if they and the broadcast log hold more than ``recovery_max_memory``."""
        # Not during a drain: the sessions it keeps held that memory while they were live.
        held = self.kept_bytes + self.broadcasts.cost
        if held > self.server.recovery_max_memory and not self._trimming and not self.server.draining:
            self._trimming = True
            asyncio.get_running_loop().call_soon(self._trim_kept_sessions)

    def _trim_kept_sessions(self) -> None:
        """End the oldest kept sessions until all of them fit in ``recovery_max_memory``."""
        self._trimming = False
        server = self.server
        for conn in list(self.kept_sessions.values()):
            if self.kept_bytes + self.broadcasts.cost <= server.recovery_max_memory or server.draining:
                return
            if self._evictable(conn):
                self.evicted += 1
                self.forget(conn, "the kept sessions' memory budget is used up (recovery_max_memory)")

    def evict_oldest(self) -> bool:
        """Make room for a live client by ending the oldest session kept for recovery."""
        for kept in self.kept_sessions.values():
            if self._evictable(kept):
                self.forget(kept, "its place went to a live client (max_connections)")
                return True
        return False

    def _evictable(self, conn: Connection) -> bool:
        """A kept session may end early unless its drop's handlers still run or it is moving.

        Those wait: the handlers must see the session's rooms, and a session being handed to
        another node leaves within CLAIM_TIMEOUT anyway. The budget is checked again after.
        """
        return conn.dropping is None and conn.sid not in self._released

    async def _notify_drop(self, conn: Connection, reason: str) -> None:
        """Run each namespace's disconnect handler once, then take the client out of tracking."""
        for namespace in sorted(conn.namespaces, key=lambda ns: ns == DEFAULT_NAMESPACE):
            await self.server._run_disconnect_handler(conn, namespace, reason)
            self.registry.disconnect(namespace, conn.sid)
        if isinstance(conn.ws, GoneSocket) and conn.worker is None and not conn.running:
            conn.ws.request = None  # nothing runs any more that could read it
        if conn.dropping is asyncio.current_task():
            conn.dropping = None  # done: nothing waits for it any more
        self.check_budget()  # it could not give way while its handlers ran
        logger.info(
            "disconnect sid=%s address=%s reason=%s (kept %g s for a resume)",
            conn.sid,
            conn.address,
            reason,
            self.server.recovery_window,
        )

    def undetach(self, conn: Connection) -> dict[str, set[str]]:
        """Give back the place a kept session held (it resumes, moves or ends); return its rooms."""
        if not conn.detached:
            return {}
        conn.detached = False
        del self.kept_sessions[conn.sid]
        self.kept_bytes -= conn.kept_cost
        conn.kept_cost = 0
        left = self._kept_per_address[conn.address] - 1
        if left:
            self._kept_per_address[conn.address] = left
        else:
            del self._kept_per_address[conn.address]
        rooms = {}
        for namespace in conn.namespaces:
            rooms[namespace] = self.kept_registry.rooms(namespace, conn.sid)
            self.kept_registry.disconnect(namespace, conn.sid)
        return rooms

    def forget(self, conn: Connection, why: str) -> None:
        """End a kept session without running anything more: the application was told at the drop."""
        self._cancel_expiry(conn)
        self.forget_token(conn)
        self.undetach(conn)
        if conn.worker is not None:
            conn.worker.cancel()
        self.server._fail_pending(conn)
        for namespace in conn.namespaces:
            self.registry.disconnect(namespace, conn.sid)  # in case its handlers still run
        self.presence.ended(conn.sid, conn.namespaces)
        if self.connections.get(conn.sid) is conn:
            del self.connections[conn.sid]
        self._released.discard(conn.sid)
        logger.info("kept session of sid=%s ended: %s", conn.sid, why)
        self.server._note_drained(conn.sid)

    def _expire(self, conn: Connection) -> None:
        if conn.detached and self.connections.get(conn.sid) is conn:
            self.forget(conn, "recovery window expired")

    # -- Recording ---------------------------------------------------------------------------

    def membership_changing(self, registry: Registry, sid: str) -> None:
        """Let a session remember its membership before it changes, to judge the broadcasts before."""
        conn = self.connections.get(sid)
        if conn is None or conn.log is None or sid == self._attaching:
            return
        if registry is not (self.kept_registry if conn.detached else self.registry):
            return  # the other registry decides what this session receives now
        log = self.broadcasts
        if log.seq > conn.log.start:
            before = conn.log.cost
            conn.log.note_membership(log.seq, registry.memberships(sid), log.first_seq)
            if conn.detached:
                self.kept_grew(conn, conn.log.cost - before)

    # -- Resuming on this node ---------------------------------------------------------------

    async def resume(self, ws: ServerConnection) -> Connection | None:
        """Resume the session named by the URL's ``recover`` token, or return None (fresh)."""
        request = ws.request
        query = parse_qs(urlsplit(request.path if request else "").query)
        token = query.get("recover", [""])[0]
        if token == TOKEN_IN_FIRST_FRAME:
            token = await _first_frame_token(ws, self.server.open_timeout)
        if not token:
            return None
        offset = query.get("offset", [None])[0]
        if offset is not None and not valid_offset(offset):
            logger.info("recovery refused: malformed offset")
            return None
        key = digest(token)
        sid = self._tokens.pop(key, None)
        if sid is None:
            if self.server.backplane is not None:
                return await self._resume_remote(ws, key, offset)
            logger.info("recovery refused: unknown, used or expired token")
            return None
        conn = self.connections.get(sid)
        if conn is None or not _resumable(conn):
            return None
        if not conn.detached:
            # The client saw the drop before we did: the old socket is dead, take over.
            conn.ws.transport.abort()
            self.drop(conn, TRANSPORT_CLOSE)
        if conn.dropping is not None:
            # Its disconnect handlers first: they must not run after the connect handlers.
            await asyncio.shield(conn.dropping)
        if not conn.detached or self.connections.get(sid) is not conn:
            return None  # ended (kicked, evicted, expired) meanwhile
        frames = self.missed(conn, offset)
        if frames is None:
            self.forget(conn, "frames after its offset are gone")
            return None
        self._cancel_expiry(conn)
        self._attach(conn, ws)
        self._greet_recovered(conn, frames)
        return conn

    def missed(self, conn: Connection, offset: str | None) -> list[bytes] | None:
        """Return the frames sent to ``conn`` after ``offset`` (all when None), or None if some are gone."""
        if conn.log is None:
            return None
        return conn.log.frames_after(
            self.broadcasts,
            conn.sid,
            conn.last_broadcast,
            self._membership(conn),
            offset,
            (self.server.recovery_max_events, self.server.recovery_max_bytes),
        )

    def _membership(self, conn: Connection) -> dict[str, frozenset[str]]:
        """Return the namespaces and rooms that decide what ``conn`` receives now."""
        return (self.kept_registry if conn.detached else self.registry).memberships(conn.sid)

    def _cancel_expiry(self, conn: Connection) -> None:
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None

    def _attach(self, conn: Connection, ws: ServerConnection) -> None:
        """Give a kept session its new socket and put it back in its rooms."""
        self._attaching = conn.sid  # the same membership, moving: no change to remember
        try:
            for namespace, rooms in self.undetach(conn).items():
                self.registry.connect(namespace, conn.sid)
                for room in rooms:
                    self.registry.enter_room(namespace, conn.sid, room)
        finally:
            self._attaching = None
        conn.dropping = None
        conn.ws = ws
        conn.detached = False
        conn.close_reason = None
        conn.address = self.server.client_address(ws)
        conn.tokens = float(self.server.rate_burst)
        conn.written = conn.progress = 0
        conn.stalled_since = None

    def _greet_recovered(self, conn: Connection, frames: list[bytes]) -> None:
        """Send the recovered connect frames, then every missed frame, before anything new."""
        conn.send_control(self.connect_frame(conn, DEFAULT_NAMESPACE, recovered=True))
        for namespace in sorted(conn.namespaces - {DEFAULT_NAMESPACE}):
            conn.send_control(self.connect_frame(conn, namespace, recovered=True))
        for frame in frames:
            conn.write(frame)
        conn.resumed = True
        self.presence.resumed(conn)  # after the replay: fresh presence state, no event within the grace
        logger.info("recovered sid=%s address=%s replayed=%d", conn.sid, conn.address, len(frames))

    # -- Handing a session over to another node -----------------------------------------------

    async def release_session(self, key: str, offset: str | None) -> dict[str, Any] | None:
        """Start handing over the session of token ``key`` (a claim from another node).

        Returns None when this node does not hold it; else the session's state and the frames
        after ``offset`` (``ok`` false when those are gone). The session keeps recording until
        :meth:`finish_release`. Its disconnect handlers finish first: the other node's connect
        handlers must not run before them.
        """
        sid = self._tokens.pop(key, None)
        if sid is None:
            return None
        conn = self.connections[sid]
        refused = {"ok": False, "sid": sid, "state": None, "frames": [], "mark": 0}
        if not _resumable(conn):
            return refused
        if not conn.detached:
            conn.ws.transport.abort()
            self.drop(conn, TRANSPORT_CLOSE)
        if conn.dropping is not None:
            await asyncio.wait([conn.dropping], timeout=CLAIM_TIMEOUT / 2)
        if not conn.detached or self.connections.get(sid) is not conn:
            return refused  # ended (kicked, evicted, expired) meanwhile
        frames = self.missed(conn, offset)
        try:
            state = json.loads(json.dumps({"sessions": conn.sessions}))
        except (TypeError, ValueError):
            state = None  # session data that JSON can not carry can not move
        if frames is None or state is None:
            self.forget(conn, "its frames or session data can not move to another node")
            return refused
        state.update(
            namespaces={ns: sorted(self.kept_registry.rooms(ns, sid) - {sid}) for ns in conn.namespaces},
            auth=conn.auth or {},
            # Ids still being handled are left out: their re-send must run here again.
            seen=sorted(conn.seen[0] - conn.inflight) if conn.seen else [],
            next_ack_id=conn.next_ack_id,
        )
        self._released.add(sid)
        assert conn.log is not None  # missed() found frames
        conn.log.released = conn.log.position(self.broadcasts)
        mark = conn.log.count  # the other node hands it back; the position stays here
        return {"ok": True, "sid": sid, "state": state, "frames": [f.decode() for f in frames], "mark": mark}

    def finish_release(self, sid: str, mark: int) -> list[str] | None:
        """Hand over the frames recorded since ``mark`` and forget the session, without handlers.

        Returns None when the session is gone or some of those frames were evicted.
        """
        conn = self.connections.get(sid)
        if conn is None or not conn.detached or sid not in self._released:
            return None
        self._released.discard(sid)
        log = conn.log
        if log is None or log.released is None:
            return None
        # ``mark`` is what release_session() sent; the position it stands for stayed here.
        frames = log.frames_since(self.broadcasts, sid, conn.last_broadcast, self._membership(conn), log.released)
        if frames is None:
            return None
        self.presence.handed_over(sid)  # no leave: the other node takes its presence over
        self.forget(conn, "handed over to another node")
        return [frame.decode() for frame in frames]

    async def _resume_remote(self, ws: ServerConnection, key: str, offset: str | None) -> Connection | None:
        """Claim a session held by another node and resume it here."""
        backplane = self.server.backplane
        assert backplane is not None
        claim = await backplane.claim(key, offset, CLAIM_TIMEOUT)
        if claim is None or not claim["ok"]:
            logger.info("recovery refused: no node holds this token, or its frames are gone")
            return None
        conn = Connection(self.server, ws, sid=claim["sid"])
        try:
            state = _checked_state(claim["state"])
            frames = [_checked_frame(text) for text in claim["frames"]]
            if any(namespace not in self.server._handlers for namespace in state["namespaces"]):
                raise ValueError("a namespace this node does not serve")
        except (ProtocolError, KeyError, TypeError, ValueError):
            logger.warning("recovery refused: invalid session state from node %s", claim["node"])
            return None
        # Join the rooms first and hold what arrives, then take the rest from the old node.
        self.connections[conn.sid] = conn
        for namespace, rooms in state["namespaces"].items():
            self.registry.connect(namespace, conn.sid)
            conn.namespaces.add(namespace)
            for room in rooms:
                self.registry.enter_room(namespace, conn.sid, room)
        conn.sessions = state["sessions"]
        conn.auth = state["auth"] or None
        conn.next_ack_id = state["next_ack_id"]
        for id in state["seen"]:
            conn.handled_before(id)
        conn.hold, conn.held = [], 0
        rest = await backplane.finish_claim(claim["node"], conn.sid, claim["mark"], CLAIM_TIMEOUT)
        held, conn.hold = conn.hold or [], None
        try:
            rest_frames = None if rest is None else [_checked_frame(text) for text in rest]
        except ProtocolError:
            rest_frames = None
        if rest_frames is None or conn.close_reason is not None:
            for namespace in conn.namespaces:
                self.registry.disconnect(namespace, conn.sid)
            del self.connections[conn.sid]
            logger.info("recovery refused: node %s did not finish the hand-over", claim["node"])
            return None
        frames += rest_frames
        sent = {_offset_of(frame) for frame in frames}
        frames += [frame for frame in held if _offset_of(frame) not in sent]  # the overlap, once
        for frame in frames:
            conn.record(frame)
        if conn.log is not None:
            conn.log.restart(self.broadcasts.seq)  # the broadcasts held meanwhile are in its own log now
        self._greet_recovered(conn, frames)
        return conn


async def _first_frame_token(ws: ServerConnection, timeout: float | None) -> str:
    """Read the token of ``?recover=1`` from the first frame: ``heartbeat`` with ``{"recover": token}``.

    A heartbeat, so that a server that does not resume (recovery off, an older version) just
    answers it. Anything else, or nothing in time, means no token: a fresh session.
    """
    try:
        async with asyncio.timeout(timeout):
            message = await ws.recv()
    except (TimeoutError, ConnectionClosed):
        return ""
    try:
        envelope = decode(message) if isinstance(message, str) else None
    except ProtocolError:
        envelope = None
    data = envelope.data if envelope is not None and envelope.event == HEARTBEAT else None
    token = data.get("recover") if isinstance(data, dict) else None
    return token if isinstance(token, str) else ""


def _resumable(conn: Connection) -> bool:
    """A session the server is closing on purpose (kick, rate limit, shutdown) never resumes."""
    return conn.close_reason is None or conn.close_reason in RECOVERABLE


def _checked_frame(text: str) -> bytes:
    """Validate a frame received from another node like any frame from the outside."""
    decode(text, max_depth=128)
    return text.encode()


def _checked_state(state: Any) -> dict[str, Any]:
    if not isinstance(state, dict):
        raise TypeError("state")
    namespaces = state["namespaces"]
    if not isinstance(namespaces, dict) or not all(
        isinstance(ns, str)
        and ns.startswith("/")
        and isinstance(rooms, list)
        and all(isinstance(r, str) for r in rooms)
        for ns, rooms in namespaces.items()
    ):
        raise TypeError("namespaces")
    if not isinstance(state["sessions"], dict) or not all(isinstance(v, dict) for v in state["sessions"].values()):
        raise TypeError("sessions")
    if not isinstance(state["seen"], list) or not all(type(i) is int for i in state["seen"]):
        raise TypeError("seen")
    state.setdefault("auth", {})  # nodes of the previous release send none
    if not isinstance(state["auth"], dict):
        raise TypeError("auth")
    if type(state["next_ack_id"]) is not int:
        raise TypeError("next_ack_id")
    return state


_offset_of = offset_of
