"""The client's view of a presence room: members kept in sync from the server's frames.

``namespace.presence(room)`` (see ``plainsocket.client``) returns a :class:`RoomPresence`::

    lobby = chat.presence("lobby")

    @lobby.on("join")
    def joined(key, entry):              # entry: {"meta": {...}, "conns": 1}
        print(key, "is here")

    await lobby.synced()                 # the first presence_state arrived
    lobby.members                        # {key: {"meta", "conns"}}, lobby.count
    while await lobby.more(): ...        # the pages past the first (rooms of 1,000+)

Events: ``sync`` (a state arrived or a resynchronisation ended), ``join(key, entry)``,
``leave(key, entry)``, ``update(key, entry, previous)`` and ``count(count)``. They fire for
real changes of what this view holds only, so a state that repeats what the view knows fires
none. A diff whose ``from`` is past this view's revision means frames were lost: the view
asks for the list again by itself (``presence_list``) and fires what changed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("plainsocket.client")

EVENTS = ("sync", "join", "leave", "update", "count")
FRAMES = frozenset({"presence_state", "presence_diff", "presence_count"})


class RoomPresence:
    """One presence room as the server reports it to this client."""

    def __init__(self, room: str, call: Callable[[str, Any], Awaitable[Any]]) -> None:
        self.room = room
        self.members: dict[str, dict[str, Any]] = {}
        self.count: dict[str, int] = {"users": 0, "connections": 0}
        self.rev: int | None = None  # None until the first state
        self.cursor: str | None = None  # more members past it (see more())
        self.resyncs = 0  # how often a gap made this view ask for the list again
        self._call = call
        self._handlers: dict[str, list[Callable[..., Any]]] = {}
        self._synced = asyncio.Event()
        self._resyncing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"<RoomPresence {self.room} users={self.count['users']} rev={self.rev}>"

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Any:
        """Register ``handler`` for ``event`` (one of :data:`EVENTS`); without it, a decorator."""
        if event not in EVENTS:
            raise ValueError(f"presence events are {EVENTS}")

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._handlers.setdefault(event, []).append(fn)
            return fn

        return register if handler is None else register(handler)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.members.get(key)

    async def synced(self, *, timeout: float | None = 5.0) -> None:
        """Wait for the first state (and for a running resynchronisation)."""
        async with asyncio.timeout(timeout):
            await self._synced.wait()
            if self._resyncing is not None:
                await asyncio.shield(self._resyncing)

    async def more(self) -> bool:
        """Fetch the next page of members; return whether pages remain after it."""
        if self.cursor is None:
            return False
        start = self.cursor
        page = await self._call("presence_list", {"room": self.room, "cursor": start})
        self._replace_range(start, page["cursor"], page["members"])
        self.cursor = page["cursor"]
        return self.cursor is not None

    async def load_all(self) -> None:
        """Fetch every page: afterwards ``members`` holds the whole room."""
        while await self.more():
            pass

    async def update(self, meta: dict[str, Any]) -> None:
        """Ask the server to change this client's metadata in the room (when it allows it)."""
        await self._call("presence_update", {"room": self.room, "meta": meta})

    async def resync(self) -> None:
        """Fetch the whole list again and fire what changed."""
        self.resyncs += 1
        page = await self._call("presence_list", {"room": self.room, "cursor": None})
        self._state(page)
        while page["cursor"] is not None:
            start = page["cursor"]
            page = await self._call("presence_list", {"room": self.room, "cursor": start})
            self._replace_range(start, page["cursor"], page["members"])
        self.cursor = None
        self._fire("sync")

    # -- Frames --------------------------------------------------------------------------------

    def receive(self, event: str, data: dict[str, Any]) -> None:
        """Apply one presence frame of this room."""
        if event == "presence_state":
            self._state(data)
            self._fire("sync")
        elif event == "presence_diff":
            self._diff(data)
        elif event == "presence_count":
            self.count = dict(data["count"])
            self._fire("count", self.count)

    def _state(self, data: dict[str, Any]) -> None:
        self.rev = data["rev"]
        self.count = dict(data["count"])
        self.cursor = data["cursor"]
        self._replace_range(None, data["cursor"], data["members"])
        self._synced.set()

    def _diff(self, data: dict[str, Any]) -> None:
        if self.rev is None or data["rev"] <= self.rev:
            return  # before the state, or already in it
        if data["from"] > self.rev:
            self._start_resync()  # diffs were lost: the list tells what they said
            return
        self.rev = data["rev"]
        self.count = dict(data["count"])
        for key, entry in {**data["joins"], **data["updates"]}.items():
            self._set(key, entry)
        for key in data["leaves"]:
            self._set(key, None)

    def _replace_range(self, after: str | None, upto: str | None, members: dict[str, Any]) -> None:
        """Make the keys in (after, upto] (``upto`` None: to the end) exactly ``members``."""
        for key in [k for k in self.members if (after is None or k > after) and (upto is None or k <= upto)]:
            if key not in members:
                self._set(key, None)
        for key, entry in members.items():
            self._set(key, entry)

    def _set(self, key: str, entry: dict[str, Any] | None) -> None:
        old = self.members.get(key)
        if entry is None:
            if old is not None:
                del self.members[key]
                self._fire("leave", key, old)
        elif old is None:
            self.members[key] = entry
            self._fire("join", key, entry)
        elif old != entry:
            self.members[key] = entry
            self._fire("update", key, entry, old)

    def _start_resync(self) -> None:
        if self._resyncing is None or self._resyncing.done():
            self._resyncing = asyncio.ensure_future(self._resync_logged())

    async def _resync_logged(self) -> None:
        try:
            await self.resync()
        except Exception as exc:
            logger.warning("presence of %s could not resynchronise: %s", self.room, exc)

    def _fire(self, event: str, *args: Any) -> None:
        for handler in self._handlers.get(event, ()):
            try:
                result = handler(*args)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except Exception:
                logger.exception("presence %s handler of %s failed", event, self.room)
