"""Presence on a running server: tracking as clients enter and leave rooms, and the frames.

The server calls the hub where a sid enters or leaves a room, leaves a namespace, drops,
resumes or ends; the hub keeps one :class:`presence.RoomView` per room with local members and
sends its changes to them as ``presence_diff`` frames, coalesced per room (the first change of
a quiet room leaves at the end of the loop iteration, later ones at most every
``batch_interval``). Presence frames go through each connection's ordered write path but are
never recorded for a resume: a resumed client gets a fresh ``presence_state`` instead.

Ordered with messages: before the server delivers a frame, it lets the hub send the pending
diffs that frame's recipients must see first (:meth:`PresenceHub.before_deliver`), so an
observer sees a join before the member's first message and the leave after its last.

Within one process joins and leaves are decided by :class:`presence.LocalCounts`; with a
:class:`presence_redis.RedisPresence` store they are decided in Redis for the whole cluster,
and the hub applies what it reports.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .connection import Connection, wire_frame
from .presence import (
    MODES,
    PRESENCE_COUNT,
    PRESENCE_DIFF,
    PRESENCE_LIST,
    PRESENCE_MODE,
    PRESENCE_STATE,
    PRESENCE_UPDATE,
    Entry,
    LocalCounts,
    Member,
    Presence,
    PresenceError,
    RoomView,
    TokenBucket,
    check_key,
    check_meta,
)
from .protocol import Envelope, encode

if TYPE_CHECKING:
    from .registry import Registry

logger = logging.getLogger("plainsocket.presence")

Room = tuple[str, str]  # (namespace, room)
Hook = Callable[[str, dict[str, Any], list[str], dict[str, Any]], Any]


class Store(Protocol):
    """Where joins and leaves are decided: the hub calls these, they call ``hub.applied``."""

    def add(
        self, namespace: str, room: str, sid: str, key: str, meta: dict[str, Any], *, moved: bool = False
    ) -> None: ...
    def remove(self, namespace: str, room: str, sid: str, key: str) -> None: ...
    def update(self, namespace: str, room: str, key: str, meta: dict[str, Any]) -> None: ...


class LocalStore:
    """Joins and leaves decided in this process."""

    def __init__(self, hub: PresenceHub) -> None:
        self.hub = hub
        self.counts = LocalCounts()

    def add(self, namespace: str, room: str, sid: str, key: str, meta: dict[str, Any], *, moved: bool = False) -> None:
        self.hub.applied(namespace, room, key, self.counts.add(namespace, room, sid, key, meta), joiner=sid)

    def remove(self, namespace: str, room: str, sid: str, key: str) -> None:
        self.hub.applied(namespace, room, key, self.counts.remove(namespace, room, sid, key))

    def update(self, namespace: str, room: str, key: str, meta: dict[str, Any]) -> None:
        entry = self.counts.update(namespace, room, key, meta)
        if entry is not None:
            self.hub.applied(namespace, room, key, entry)

    async def page(
        self, namespace: str, room: str, cursor: str | None, limit: int, *, key: str | None = None
    ) -> dict[str, Any] | None:
        return None  # every room with members has a view


class PresenceHub:
    """Presence for one server node: options per namespace, views per room, frames out."""

    def __init__(self, connections: Mapping[str, Connection], registry: Registry, kept_registry: Registry) -> None:
        self._connections = connections
        self._registry = registry
        self._kept_registry = kept_registry
        self.options: dict[str, Presence] = {}
        self.store: Any = LocalStore(self)
        self.views: dict[Room, RoomView] = {}
        self._tracked: dict[
            tuple[str, str], dict[str, tuple[str, dict[str, Any]]]
        ] = {}  # (ns, sid) -> room -> key, meta
        self._namespaces_of: dict[str, set[str]] = {}  # sid -> namespaces it is tracked in
        self._room_sids: dict[Room, set[str]] = {}  # tracked sids of this node per room
        self._auth: dict[tuple[str, str], Any] = {}
        self._modes: dict[tuple[str, str], str] = {}
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._seen: dict[Room, dict[str, int]] = {}  # sids whose state is newer than the last diff
        self._pending: set[Room] = set()
        self._awaiting: set[tuple[str, str, str]] = set()  # (ns, room, sid) whose state is not out yet
        self._timers: dict[Room, asyncio.Handle] = {}
        self._last_flush: dict[Room, float] = {}
        self._count_timers: dict[Room, asyncio.Handle] = {}
        self._last_count: dict[Room, float] = {}
        self._grace: dict[str, list[asyncio.TimerHandle]] = {}
        self._lapsed: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}  # sid -> (ns, room, meta)
        self._hooks: dict[str, list[Hook]] = {}
        self.frames_sent = 0  # presence frames written, for /healthz and tests

    # -- Configuration -----------------------------------------------------------------------

    def configure(self, options: Mapping[str, Presence] | None) -> None:
        """Turn presence on for the namespaces of ``options`` (and off for the others)."""
        for namespace, presence in (options or {}).items():
            if not isinstance(presence, Presence) or not namespace.startswith("/"):
                raise TypeError("presence maps a namespace ('/...') to a Presence(...)")
        self.options = dict(options or {})

    def enabled(self, namespace: str) -> bool:
        return namespace in self.options

    def on(self, namespace: str) -> Callable[[Hook], Hook]:
        """Register the decorated ``fn(room, joins, leaves, updates)`` for ``namespace``'s changes.

        It is called once per coalesced diff of a room with members on this node (a node of a
        cluster sees every change of those rooms). It may be ``async def``.
        """

        def register(fn: Hook) -> Hook:
            self._hooks.setdefault(namespace, []).append(fn)
            return fn

        return register

    # -- Server API ----------------------------------------------------------------------------

    def track(self, sid: str, room: str, *, namespace: str = "/", meta: dict[str, Any] | None = None) -> None:
        """Make ``sid`` (in ``room`` already) present there, whatever the room pattern says.

        Raises:
            PresenceError: presence is off for ``namespace``, ``sid`` is not in ``room``, or the
                key or metadata is invalid.
        """
        if not self.enabled(namespace):
            raise PresenceError("presence_off", f"presence is not enabled for {namespace!r}")
        if room == sid or room not in self._registry.rooms(namespace, sid):
            raise PresenceError("not_in_room", f"{sid} is not in room {room!r}")
        self._track(namespace, room, sid, meta)

    def untrack(self, sid: str, room: str, *, namespace: str = "/") -> None:
        """Stop showing ``sid`` in ``room`` (it stays in the room)."""
        self._untrack(namespace, room, sid)

    def update(self, sid: str, room: str, meta: dict[str, Any], *, namespace: str = "/") -> None:
        """Give the key of ``sid`` in ``room`` new metadata: an ``update``, not a leave and a join.

        Raises:
            PresenceError: ``sid`` is not present in ``room``, or ``meta`` is invalid or too large.
        """
        tracked = self._tracked.get((namespace, sid), {}).get(room)
        if tracked is None:
            raise PresenceError("not_present", f"{sid} is not present in room {room!r}")
        check_meta(meta, self.options[namespace].max_meta)
        key = tracked[0]
        self._tracked[(namespace, sid)][room] = (key, meta)
        self.store.update(namespace, room, key, dict(meta))

    async def list(
        self, room: str, *, namespace: str = "/", cursor: str | None = None, limit: int = 1000
    ) -> tuple[dict[str, Any], str | None]:
        """Return up to ``limit`` members ``{key: {"meta", "conns"}}`` after ``cursor``, and the next cursor."""
        page = await self._page(namespace, room, cursor, limit)
        return page["members"], page["cursor"]

    async def get(self, room: str, key: str, *, namespace: str = "/") -> dict[str, Any] | None:
        """Return ``{"meta", "conns"}`` of ``key`` in ``room``, or None."""
        view = self.views.get((namespace, room))
        if view is not None:
            entry = view.members.get(key)
            return None if entry is None else entry.wire()
        page = await self.store.page(namespace, room, None, 0, key=key)
        return None if page is None else page["members"].get(key)

    async def count(self, room: str, *, namespace: str = "/") -> dict[str, int]:
        """Return ``{"users", "connections"}`` of ``room``."""
        page = await self._page(namespace, room, None, 0)
        return dict(page["count"])

    async def _page(self, namespace: str, room: str, cursor: str | None, limit: int) -> dict[str, Any]:
        view = self.views.get((namespace, room))
        if view is not None:
            return _page_of(view, cursor, limit)
        page = await self.store.page(namespace, room, cursor, limit)
        return page or {"room": room, "rev": 0, "count": {"users": 0, "connections": 0}, "members": {}, "cursor": None}

    # -- Hooks the server calls ----------------------------------------------------------------

    def connected(self, namespace: str, sid: str, auth: Any) -> None:
        """A sid joined ``namespace`` with ``auth`` (what the key callable may read)."""
        if self.enabled(namespace) and auth is not None:
            self._auth[(namespace, sid)] = auth

    def entered(self, namespace: str, sid: str, room: str) -> None:
        """A sid entered ``room``: track it when the namespace's pattern says so."""
        options = self.options.get(namespace)
        if options is None or room == sid or not options.tracks(room):
            return
        if room not in self._registry.rooms(namespace, sid):
            return  # a kept session: it becomes present again if it resumes
        try:
            self._track(namespace, room, sid, None)
        except Exception:
            logger.exception("presence of %s in room %r not tracked", sid, room)

    def left(self, namespace: str, sid: str, room: str) -> None:
        """A sid left ``room`` (live or kept): untrack it unless it is still there."""
        if room in self._registry.rooms(namespace, sid) or room in self._kept_registry.rooms(namespace, sid):
            return
        self._untrack(namespace, room, sid)

    def room_closed(self, namespace: str, room: str) -> None:
        for sid in list(self._room_sids.get((namespace, room), ())):
            self._untrack(namespace, room, sid)

    def left_namespace(self, namespace: str, sid: str) -> None:
        """A sid left ``namespace`` for good: untrack it everywhere there."""
        for room in list(self._tracked.get((namespace, sid), ())):
            self._untrack(namespace, room, sid)
        for table in (self._auth, self._modes, self._buckets):
            table.pop((namespace, sid), None)  # type: ignore[attr-defined]
        lapsed = self._lapsed.get(sid)
        if lapsed:
            self._lapsed[sid] = [item for item in lapsed if item[0] != namespace]

    def dropped(self, sid: str, window: float) -> None:
        """A session dropped and is kept for ``window`` seconds: it stays present for the grace."""
        loop = asyncio.get_running_loop()
        self._cancel_grace(sid)
        handles = []
        for namespace in self._namespaces_of.get(sid, ()):
            grace = min(self.options[namespace].grace, window)
            handles.append(loop.call_later(grace, self._lapse, namespace, sid))
        if handles:
            self._grace[sid] = handles

    def resumed(self, conn: Connection) -> None:
        """A kept session resumed here: quiet within the grace, a join for what had lapsed."""
        sid = conn.sid
        self._cancel_grace(sid)
        if sid not in self._namespaces_of and sid not in self._lapsed:
            self._adopt(conn)  # moved here from another node: its presence comes along, quietly
            return
        for namespace, room, meta in self._lapsed.pop(sid, ()):
            if namespace in conn.namespaces and room in self._registry.rooms(namespace, sid):
                try:
                    self._track(namespace, room, sid, meta)
                except Exception:
                    logger.exception("presence of %s in room %r not tracked again", sid, room)
        for namespace in list(self._namespaces_of.get(sid, ())):
            for room in list(self._tracked.get((namespace, sid), ())):
                if room not in self._registry.rooms(namespace, sid):
                    self._untrack(namespace, room, sid)
                else:
                    self._send_state(namespace, room, conn)  # the diffs it missed were not recorded

    def _adopt(self, conn: Connection) -> None:
        for namespace in conn.namespaces:
            options = self.options.get(namespace)
            if options is None:
                continue
            for room in sorted(self._registry.rooms(namespace, conn.sid)):
                if room != conn.sid and options.tracks(room):
                    try:
                        self._track(namespace, room, conn.sid, None, moved=True)
                    except Exception:
                        logger.exception("presence of %s in room %r not taken over", conn.sid, room)

    def ended(self, sid: str, namespaces: Iterable[str]) -> None:
        """A session of ``namespaces`` ended (closed, expired, kicked): every presence of it goes."""
        self._cancel_grace(sid)
        self._lapsed.pop(sid, None)
        for namespace in {*namespaces, *self._namespaces_of.get(sid, ())}:
            self.left_namespace(namespace, sid)

    def handed_over(self, sid: str) -> None:
        """The session moves to another node: forget it here without a leave.

        In a cluster its entries stay in Redis; the node that resumes it makes them its own
        (a lapsed one joins again there).
        """
        self._cancel_grace(sid)
        for namespace in self._namespaces_of.pop(sid, ()):
            for room in self._tracked.pop((namespace, sid)):
                self._forget_local(namespace, room, sid)
        self._lapsed.pop(sid, None)

    def before_deliver(self, namespace: str, to: str | Iterable[str] | None) -> None:
        """Send the pending diffs that the recipients of a frame to ``to`` must see before it."""
        if not self._pending:
            return
        if to is None:
            for room in [r for r in self._pending if r[0] == namespace]:
                self._flush(room)
        elif isinstance(to, str):
            self._flush_for(namespace, to)
        else:
            for target in to:
                self._flush_for(namespace, target)

    def request(self, conn: Connection, envelope: Envelope) -> Any:
        """Answer a client's ``presence_list``, ``presence_update`` or ``presence_mode``.

        Raises:
            PresenceError: the request is invalid or refused.
        """
        namespace, data = envelope.namespace, envelope.data
        if type(data) is not dict:
            raise PresenceError("invalid_presence", f"{envelope.event} data must be a JSON object")
        room = data.get("room")
        if envelope.event == PRESENCE_MODE:
            return self._set_mode(conn, namespace, data)
        if type(room) is not str:
            raise PresenceError("invalid_presence", "'room' must be a string")
        if envelope.event == PRESENCE_LIST:
            return self._list_for(conn, namespace, room, data)
        if envelope.event == PRESENCE_UPDATE:
            return self._update_from(conn, namespace, room, data)
        raise PresenceError("invalid_presence", f"unknown presence request {envelope.event!r}")

    def stop(self) -> None:
        """The server stops: the cluster store stops sweeping."""
        stop = getattr(self.store, "stop", None)
        if stop is not None:
            stop()

    def health(self) -> dict[str, int]:
        return {
            "rooms": len(self.views),
            "members": sum(len(view) for view in self.views.values()),
            "frames": self.frames_sent,
        }

    # -- Applying changes -----------------------------------------------------------------------

    def applied(
        self,
        namespace: str,
        room: str,
        key: str,
        entry: Entry | None,
        *,
        source_rev: int | None = None,
        joiner: str | None = None,
    ) -> None:
        """Show a change the store decided; ``joiner`` gets the room's state."""
        view = self.views.get((namespace, room))
        if view is None:
            return  # no member here any more: nobody to show it to
        if view.set(key, entry, source_rev):
            self._changed((namespace, room))
        if joiner is not None:
            conn = self._connections.get(joiner)
            if conn is not None and not conn.detached:
                self._send_state(namespace, room, conn)

    def loaded(
        self, namespace: str, room: str, members: Mapping[str, Entry], source_rev: int, keep: Iterable[str] = ()
    ) -> None:
        """Replace a view's members with a snapshot of the store at ``source_rev`` (but the keys of ``keep``)."""
        view = self.views.get((namespace, room))
        if view is not None:
            view.reset(members, source_rev, keep)
            if view.pending:
                self._changed((namespace, room))

    def greet(self, namespace: str, room: str, sid: str) -> None:
        """Send ``room``'s state to ``sid``, present there (the store has the room's members now)."""
        conn = self._connections.get(sid)
        if conn is not None and not conn.detached and room in self._tracked.get((namespace, sid), ()):
            self._send_state(namespace, room, conn)

    def awaits_state(self, namespace: str, room: str, sid: str) -> bool:
        """Whether ``sid`` still waits for the state of ``room`` (its add has not been answered)."""
        return (namespace, room, sid) in self._awaiting

    def tracked_entries(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        """Every (namespace, room, sid, key, meta) tracked on this node (to re-assert them)."""
        return [
            (namespace, room, sid, key, meta)
            for (namespace, sid), rooms in self._tracked.items()
            for room, (key, meta) in rooms.items()
        ]

    def _track(self, namespace: str, room: str, sid: str, meta: dict[str, Any] | None, *, moved: bool = False) -> None:
        options = self.options[namespace]
        if room in self._tracked.get((namespace, sid), ()):
            return
        conn = self._connections.get(sid)
        auth = self._auth.get((namespace, sid), None if conn is None else (conn.auth or {}).get(namespace))
        member = Member(sid, namespace, room, auth, _session(conn, namespace))
        key = check_key(options.key(member))
        meta = options.meta(member) if meta is None else meta
        check_meta(meta, options.max_meta)
        self._tracked.setdefault((namespace, sid), {})[room] = (key, meta)
        self._namespaces_of.setdefault(sid, set()).add(namespace)
        self._room_sids.setdefault((namespace, room), set()).add(sid)
        self.views.setdefault((namespace, room), RoomView(room))
        self._awaiting.add((namespace, room, sid))  # no diff before its state
        self.store.add(namespace, room, sid, key, dict(meta), moved=moved)

    def _untrack(self, namespace: str, room: str, sid: str) -> None:
        rooms = self._tracked.get((namespace, sid))
        if rooms is None or room not in rooms:
            return
        key, _ = rooms.pop(room)
        if not rooms:
            del self._tracked[(namespace, sid)]
            namespaces = self._namespaces_of[sid]
            namespaces.discard(namespace)
            if not namespaces:
                del self._namespaces_of[sid]
        self.store.remove(namespace, room, sid, key)
        self._forget_local(namespace, room, sid)

    def _forget_local(self, namespace: str, room: str, sid: str) -> None:
        """``sid`` is no longer a local member of ``room``: drop the view with its last one."""
        name = (namespace, room)
        sids = self._room_sids.get(name)
        if sids is None:
            return
        sids.discard(sid)
        self._awaiting.discard((namespace, room, sid))
        seen = self._seen.get(name)
        if seen is not None:
            seen.pop(sid, None)
        if sids:
            return
        del self._room_sids[name]
        if name in self._pending:
            self._flush(name)  # the hooks hear the last leave
        # Nobody here to show the room to: stop keeping (or mirroring) it.
        self._drop_view(name)

    def _drop_view(self, name: Room) -> None:
        self.views.pop(name, None)
        self._pending.discard(name)
        self._seen.pop(name, None)
        self._last_flush.pop(name, None)
        self._last_count.pop(name, None)
        for timers in (self._timers, self._count_timers):
            handle = timers.pop(name, None)
            if handle is not None:
                handle.cancel()

    def _lapse(self, namespace: str, sid: str) -> None:
        """The grace of a dropped session ran out: it leaves, and comes back if it resumes."""
        conn = self._connections.get(sid)
        if conn is None or not conn.detached:
            return
        for room, (_, meta) in list(self._tracked.get((namespace, sid), {}).items()):
            self._lapsed.setdefault(sid, []).append((namespace, room, meta))
            self._untrack(namespace, room, sid)

    def _cancel_grace(self, sid: str) -> None:
        for handle in self._grace.pop(sid, ()):
            handle.cancel()

    # -- Frames ----------------------------------------------------------------------------------

    def _mode(self, namespace: str, sid: str) -> str:
        return self._modes.get((namespace, sid)) or self.options[namespace].mode

    def _send_state(self, namespace: str, room: str, conn: Connection) -> None:
        view = self.views.get((namespace, room))
        if view is None:
            return
        self._awaiting.discard((namespace, room, conn.sid))
        mode = self._mode(namespace, conn.sid)
        if mode == "full":
            state = view.state(self.options[namespace].max_state)
            self._write(conn, encode(PRESENCE_STATE, state, namespace).encode())
            if view.rev > view.sent_rev:
                self._seen.setdefault((namespace, room), {})[conn.sid] = view.rev
        elif mode == "count":
            self._write(conn, self._count_frame(namespace, view))

    def _changed(self, name: Room) -> None:
        self._pending.add(name)
        if name in self._timers:
            return
        loop = asyncio.get_running_loop()
        interval = self.options[name[0]].batch_interval
        wait = self._last_flush.get(name, -interval) + interval - loop.time()
        if wait <= 0:
            self._timers[name] = loop.call_soon(self._flush, name)
        else:
            self._timers[name] = loop.call_later(wait, self._flush, name)

    def _flush_for(self, namespace: str, target: str) -> None:
        name = (namespace, target)
        if name in self._pending:
            self._flush(name)
        for room in self._tracked.get((namespace, target), ()):
            name = (namespace, room)
            view = self.views.get(name)
            if name in self._pending and view is not None:
                seen = self._seen.get(name, {}).get(target, view.sent_rev)
                if seen < view.rev:
                    self._flush(name)

    def _flush(self, name: Room) -> None:
        """Send a room's coalesced diff to its local observers, and to the hooks."""
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()
        self._pending.discard(name)
        view = self.views.get(name)
        if view is None:
            return
        self._last_flush[name] = asyncio.get_running_loop().time()
        diff = view.take_diff()
        if diff is None:
            return
        namespace, room = name
        seen = self._seen.pop(name, {})
        full: list[Connection] = []
        counting = False
        for sid in self._registry.members(namespace, room):
            conn = self._connections.get(sid)
            if conn is None or seen.get(sid, -1) >= diff.rev or (namespace, room, sid) in self._awaiting:
                continue  # its state is newer than this diff, or still to come
            mode = self._mode(namespace, sid)
            if mode == "full":
                full.append(conn)
            elif mode == "count":
                counting = True
        if full:
            frame = encode(PRESENCE_DIFF, diff.payload(), namespace).encode()
            wire = wire_frame(frame) if len(full) > 1 else None
            for conn in full:
                self._write(conn, frame, wire)
        if counting:
            self._count_soon(name)
        if len(view.sources) > 2 * len(view) + 1000:
            view.forget_sources()  # old leaves: bounded memory, late duplicates are long gone
        self._call_hooks(namespace, diff.payload())

    def _count_soon(self, name: Room) -> None:
        if name in self._count_timers:
            return
        loop = asyncio.get_running_loop()
        interval = self.options[name[0]].count_interval
        wait = max(0.0, self._last_count.get(name, -interval) + interval - loop.time())
        self._count_timers[name] = loop.call_later(wait, self._send_counts, name)

    def _send_counts(self, name: Room) -> None:
        self._count_timers.pop(name, None)
        view = self.views.get(name)
        if view is None:
            return
        self._last_count[name] = asyncio.get_running_loop().time()
        namespace, room = name
        frame = self._count_frame(namespace, view)
        for sid in self._registry.members(namespace, room):
            conn = self._connections.get(sid)
            if conn is not None and self._mode(namespace, sid) == "count":
                self._write(conn, frame)

    def _count_frame(self, namespace: str, view: RoomView) -> bytes:
        return encode(PRESENCE_COUNT, {"room": view.room, "rev": view.rev, "count": view.count()}, namespace).encode()

    def _write(self, conn: Connection, frame: bytes, wire: bytes | None = None) -> None:
        """Write a presence frame in order with the client's other frames, never recorded."""
        if conn.detached:
            return
        self.frames_sent += 1
        if conn.hold is not None:
            conn.hold.append(frame)  # behind a running connect handler, like its other frames
            conn.held += len(frame)
            return
        conn.write(frame, wire)

    def _call_hooks(self, namespace: str, payload: dict[str, Any]) -> None:
        for hook in self._hooks.get(namespace, ()):
            try:
                result = hook(payload["room"], payload["joins"], payload["leaves"], payload["updates"])
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(_logged(result))
                    _BACKGROUND.add(task)
                    task.add_done_callback(_BACKGROUND.discard)
            except Exception:
                logger.exception("presence hook of %s failed", namespace)

    # -- Client requests -------------------------------------------------------------------------

    def _list_for(self, conn: Connection, namespace: str, room: str, data: dict[str, Any]) -> dict[str, Any]:
        view = self.views.get((namespace, room))
        if view is None or room not in self._registry.rooms(namespace, conn.sid):
            raise PresenceError("not_present", f"not in a presence room {room!r}")
        cursor, limit = data.get("cursor"), data.get("limit", self.options[namespace].max_state)
        if cursor is not None and type(cursor) is not str:
            raise PresenceError("invalid_presence", "'cursor' must be a string or null")
        if type(limit) is not int or not 1 <= limit <= self.options[namespace].max_state:
            raise PresenceError("invalid_presence", f"'limit' must be 1..{self.options[namespace].max_state}")
        page = _page_of(view, cursor, limit)
        if cursor is None and view.rev > view.sent_rev:
            self._seen.setdefault((namespace, room), {})[conn.sid] = view.rev
        return page

    def _update_from(self, conn: Connection, namespace: str, room: str, data: dict[str, Any]) -> dict[str, Any]:
        options = self.options[namespace]
        if not options.client_updates:
            raise PresenceError("forbidden", "this server does not take presence updates from clients")
        tracked = self._tracked.get((namespace, conn.sid), {}).get(room)
        if tracked is None:
            raise PresenceError("not_present", f"not present in room {room!r}")
        check_meta(data.get("meta"), options.max_meta)  # a refused update costs no token
        bucket = self._buckets.get((namespace, conn.sid))
        now = time.monotonic()
        if bucket is None:
            bucket = self._buckets[(namespace, conn.sid)] = TokenBucket(options.update_rate, options.update_burst, now)
        if not bucket.take(now):
            raise PresenceError("rate_limited", f"more than {options.update_rate:g} presence updates per second")
        self.update(conn.sid, room, data.get("meta"), namespace=namespace)  # type: ignore[arg-type]
        return {"room": room}

    def _set_mode(self, conn: Connection, namespace: str, data: dict[str, Any]) -> dict[str, Any]:
        mode = data.get("mode")
        if mode not in MODES:
            raise PresenceError("invalid_presence", f"'mode' must be one of {list(MODES)}")
        self._modes[(namespace, conn.sid)] = mode
        for room in self._tracked.get((namespace, conn.sid), ()):
            self._send_state(namespace, room, conn)
        return {"mode": mode}


_BACKGROUND: set[asyncio.Future[Any]] = set()


async def _logged(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("presence hook failed")


def _page_of(view: RoomView, cursor: str | None, limit: int) -> dict[str, Any]:
    members, next_cursor = view.page(cursor, limit) if limit else ({}, None)
    return {"room": view.room, "rev": view.rev, "count": view.count(), "members": members, "cursor": next_cursor}


def _session(conn: Connection | None, namespace: str) -> Mapping[str, Any]:
    return {} if conn is None else conn.sessions.get(namespace, {})
