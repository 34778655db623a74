"""Who is connected to which namespace, and in which rooms: plain synchronous state, no I/O.

Every client of a namespace is also in a room named after its sid (as in Socket.IO), so
"emit to a sid" and "emit to a room" are one operation.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable


class Registry:
    """Namespace membership and rooms for one process."""

    def __init__(self) -> None:
        self._members: dict[str, set[str]] = {}  # namespace -> sids
        self._rooms: dict[str, dict[str, set[str]]] = {}  # namespace -> room -> sids
        self._rooms_of: dict[tuple[str, str], set[str]] = {}  # (namespace, sid) -> rooms
        # Told a sid's membership is about to change (recovery judges broadcasts by the old one).
        self.on_change: Callable[[str], None] | None = None

    def connect(self, namespace: str, sid: str) -> None:
        """Add ``sid`` to ``namespace`` and to its own room there."""
        if self.on_change is not None:
            self.on_change(sid)
        self._members.setdefault(namespace, set()).add(sid)
        self._rooms_of.setdefault((namespace, sid), set())
        self.enter_room(namespace, sid, sid)

    def disconnect(self, namespace: str, sid: str) -> bool:
        """Remove ``sid`` from ``namespace`` and all its rooms; return whether it was there."""
        if self.on_change is not None and (namespace, sid) in self._rooms_of:
            self.on_change(sid)
        rooms = self._rooms_of.pop((namespace, sid), None)
        if rooms is None:
            return False
        for room in rooms:
            self._discard(namespace, room, sid)
        members = self._members[namespace]
        members.discard(sid)
        if not members:
            del self._members[namespace]
        return True

    def is_connected(self, namespace: str, sid: str) -> bool:
        return (namespace, sid) in self._rooms_of

    def enter_room(self, namespace: str, sid: str, room: str) -> None:
        """Put a connected ``sid`` in ``room``."""
        if self.on_change is not None and room not in self._rooms_of[(namespace, sid)]:
            self.on_change(sid)
        self._rooms_of[(namespace, sid)].add(room)
        self._rooms.setdefault(namespace, {}).setdefault(room, set()).add(sid)

    def leave_room(self, namespace: str, sid: str, room: str) -> None:
        """Take ``sid`` out of ``room`` (no error when it was not in it)."""
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None and room in rooms:
            if self.on_change is not None:
                self.on_change(sid)
            rooms.discard(room)
            self._discard(namespace, room, sid)

    def close_room(self, namespace: str, room: str) -> set[str]:
        """Take everyone out of ``room``; return who was in it."""
        if self.on_change is not None:
            for sid in tuple(self._rooms.get(namespace, {}).get(room, ())):
                self.on_change(sid)
        members = self._rooms.get(namespace, {}).pop(room, set())
        for sid in members:
            self._rooms_of[(namespace, sid)].discard(room)
        if namespace in self._rooms and not self._rooms[namespace]:
            del self._rooms[namespace]
        return members

    def rooms(self, namespace: str, sid: str) -> set[str]:
        """Return the rooms of ``sid`` in ``namespace`` (its own room included)."""
        return set(self._rooms_of.get((namespace, sid), ()))

    def memberships(self, sid: str) -> dict[str, frozenset[str]]:
        """Return every namespace of ``sid`` with its rooms there (its own room included)."""
        found = {}
        for namespace in self._members:
            rooms = self._rooms_of.get((namespace, sid))
            if rooms is not None:
                found[namespace] = frozenset(rooms)
        return found

    def room_count(self, namespace: str, sid: str) -> int:
        return len(self._rooms_of.get((namespace, sid), ()))

    def members(self, namespace: str, room: str) -> set[str]:
        """Return the sids in ``room`` (a live view: copy before changing membership)."""
        return self._rooms.get(namespace, {}).get(room, _EMPTY)

    def sids(self, namespace: str) -> set[str]:
        """Return the sids connected to ``namespace`` (a live view)."""
        return self._members.get(namespace, _EMPTY)

    def largest_rooms(self, namespace: str, limit: int) -> list[tuple[str, int]]:
        """Return the ``limit`` largest rooms of ``namespace`` as (name, size), without sid rooms."""
        rooms = self._rooms.get(namespace, {})
        named = ((room, len(sids)) for room, sids in rooms.items() if (namespace, room) not in self._rooms_of)
        return heapq.nlargest(limit, named, key=lambda item: (item[1], item[0]))

    def room_total(self, namespace: str) -> int:
        """Count the rooms of ``namespace`` that are not a client's own sid room."""
        return len(self._rooms.get(namespace, {})) - len(self._members.get(namespace, ()))

    def namespaces(self) -> list[str]:
        return list(self._members)

    def count(self, namespace: str | None = None) -> int:
        """Count the clients of ``namespace``, or the (namespace, client) pairs of all."""
        if namespace is None:
            return len(self._rooms_of)
        return len(self._members.get(namespace, ()))

    def recipients(self, namespace: str, to: str | Iterable[str] | None) -> set[str]:
        """Return who an emit to ``to`` (None: everyone; a room or sid; a list of them) reaches."""
        if to is None:
            return self.sids(namespace)
        rooms = self._rooms.get(namespace, {})
        if isinstance(to, str):
            return rooms.get(to, _EMPTY)
        found: set[str] = set()
        for room in to:
            found |= rooms.get(room, _EMPTY)
        return found

    def is_empty(self) -> bool:
        return not (self._members or self._rooms or self._rooms_of)

    def _discard(self, namespace: str, room: str, sid: str) -> None:
        rooms = self._rooms[namespace]
        members = rooms[room]
        members.discard(sid)
        if not members:
            del rooms[room]
            if not rooms:
                del self._rooms[namespace]


_EMPTY: frozenset[str] = frozenset()  # type: ignore[assignment]
