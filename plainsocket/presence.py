"""Presence bookkeeping: who is in a room, keyed per user, and what changed. Pure: no I/O.

A room's members are keyed (by default the sid; typically a user id), each with its metadata
and how many connections it has. A key *joins* when its first connection appears, *leaves*
when its last one goes; more connections only change ``conns``; new metadata is an *update*.

:class:`RoomView` is one room as this process shows it to its clients: the members, a
revision that grows with every change, and the changes not sent yet, which it hands out as one
coalesced diff. :class:`LocalCounts` decides joins and leaves within one process; with Redis
the decision is made there (``presence_redis``) and the views only mirror it.

Wire payloads (docs/protocol.md, "Presence")::

    presence_state {"room":"lobby","rev":3,"count":{"users":1,"connections":2},
                    "members":{"alice":{"meta":{"name":"Alice"},"conns":2}},"cursor":null}
    presence_diff  {"room":"lobby","from":3,"rev":5,"joins":{"bob":{"meta":{},"conns":1}},
                    "leaves":["carol"],"updates":{},"count":{"users":2,"connections":3}}
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PRESENCE_STATE = "presence_state"
PRESENCE_DIFF = "presence_diff"
PRESENCE_COUNT = "presence_count"
PRESENCE_LIST = "presence_list"  # client -> server: a page of members (acknowledged)
PRESENCE_UPDATE = "presence_update"  # client -> server: new metadata for its own key
PRESENCE_MODE = "presence_mode"  # client -> server: full, count or none
CLIENT_REQUESTS = frozenset({PRESENCE_LIST, PRESENCE_UPDATE, PRESENCE_MODE})
MODES = ("full", "count", "none")
MAX_KEY_LENGTH = 256
MAX_PAGE = 1000


class PresenceError(Exception):
    """A presence request or call that can not be honoured; ``code`` goes into the ``error`` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Member:
    """What the ``key`` and ``meta`` callables of :class:`Presence` receive about a connection."""

    sid: str
    namespace: str
    room: str
    auth: Any  # the data of the namespace's connect (None without)
    session: Mapping[str, Any]


def _sid(member: Member) -> str:
    return member.sid


def _no_meta(member: Member) -> dict[str, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class Presence:
    """Presence for the rooms of one namespace (off unless configured).

    Args:
        rooms: which rooms are tracked: a glob pattern (``"game:*"``), several, or a
            callable taking the room name. The sid's own room is never tracked.
        key: the member's key from a :class:`Member` (default: the sid).
        meta: the member's initial metadata, a JSON object (default ``{}``).
        mode: what a connection receives by default: ``"full"`` (state and diffs),
            ``"count"`` (counts at most once per ``count_interval``) or ``"none"``.
        max_meta: the largest metadata, in bytes of compact JSON.
        grace: seconds a dropped session stays present while it may resume (never longer
            than the recovery window); a resume within it produces no event.
        max_state: members in ``presence_state`` and in one page of ``presence_list``.
        batch_interval: seconds between two diffs of one room: changes in between are
            coalesced into one frame (the first change of a quiet room goes out at once).
        count_interval: seconds between two ``presence_count`` frames of one room.
        client_updates: whether clients may send ``presence_update`` for their own key.
        update_rate, update_burst: the token bucket of a connection's ``presence_update``.
    """

    rooms: str | Iterable[str] | Callable[[str], bool] = "*"
    key: Callable[[Member], str] = _sid
    meta: Callable[[Member], dict[str, Any]] = _no_meta
    mode: str = "full"
    max_meta: int = 2048
    grace: float = 5.0
    max_state: int = 1000
    batch_interval: float = 0.25
    count_interval: float = 1.0
    client_updates: bool = True
    update_rate: float = 1.0
    update_burst: int = 5
    _patterns: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if not 1 <= self.max_state <= MAX_PAGE:
            raise ValueError(f"max_state must be 1..{MAX_PAGE}")
        if not callable(self.rooms):
            patterns = (self.rooms,) if isinstance(self.rooms, str) else tuple(self.rooms)
            object.__setattr__(self, "_patterns", patterns)

    def tracks(self, room: str) -> bool:
        """Whether entering ``room`` makes a connection present there."""
        if callable(self.rooms):
            return bool(self.rooms(room))
        return any(fnmatch.fnmatchcase(room, pattern) for pattern in self._patterns)


def check_meta(meta: Any, limit: int) -> str:
    """Return ``meta`` as compact JSON.

    Raises:
        PresenceError: ``invalid_meta`` (not a JSON object) or ``meta_too_large``.
    """
    if type(meta) is not dict:
        raise PresenceError("invalid_meta", "presence metadata must be a JSON object")
    try:
        text = json.dumps(meta, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        raise PresenceError("invalid_meta", "presence metadata must be plain JSON") from None
    if len(text.encode()) > limit:
        raise PresenceError("meta_too_large", f"presence metadata larger than {limit} bytes")
    return text


def check_key(key: Any) -> str:
    if type(key) is not str or not key or len(key) > MAX_KEY_LENGTH:
        raise PresenceError("invalid_key", f"a presence key is a string of 1..{MAX_KEY_LENGTH} characters")
    return key


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's presence in a room: its metadata and connection count."""

    meta: dict[str, Any]
    conns: int

    def wire(self) -> dict[str, Any]:
        return {"meta": self.meta, "conns": self.conns}


@dataclass(frozen=True, slots=True)
class Diff:
    """The net change of a room from revision ``start`` to ``rev``."""

    room: str
    start: int
    rev: int
    joins: dict[str, Entry]
    leaves: list[str]
    updates: dict[str, Entry]
    users: int
    connections: int

    def payload(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "from": self.start,
            "rev": self.rev,
            "joins": {key: entry.wire() for key, entry in self.joins.items()},
            "leaves": self.leaves,
            "updates": {key: entry.wire() for key, entry in self.updates.items()},
            "count": {"users": self.users, "connections": self.connections},
        }


_ABSENT = object()


class RoomView:
    """One room's members as this process shows them, with the changes not yet sent.

    ``set`` may carry the revision of the change at its source (Redis): a change older than
    the one already applied to that key is ignored, so changes that arrive out of order
    leave the view as the source is.
    """

    def __init__(self, room: str) -> None:
        self.room = room
        self.members: dict[str, Entry] = {}
        self.rev = 0  # this view's revision: one more per change it applied
        self.sent_rev = 0  # the revision of the last diff handed out
        self.connections = 0
        self._before: dict[str, Any] = {}  # key -> its entry at sent_rev (_ABSENT: none)
        self.sources: dict[str, int] = {}  # key -> source revision of its last change (leaves too)
        self.floor = 0  # source revision of the last snapshot: older changes are in it already

    def __len__(self) -> int:
        return len(self.members)

    @property
    def pending(self) -> bool:
        return bool(self._before)

    def set(self, key: str, entry: Entry | None, source_rev: int | None = None) -> bool:
        """Make ``key``'s entry ``entry`` (None: it left); return whether the view changed."""
        if source_rev is not None:
            last = self.sources.get(key, self.floor)
            if source_rev <= last:
                return False
            self.sources[key] = source_rev
        old = self.members.get(key)
        if old == entry:
            return False
        self._apply(key, old, entry)
        return True

    def _apply(self, key: str, old: Entry | None, entry: Entry | None) -> None:
        if key not in self._before:
            self._before[key] = _ABSENT if old is None else old
        if old is not None:
            self.connections -= old.conns
            if entry is None:
                del self.members[key]
        if entry is not None:
            self.members[key] = entry
            self.connections += entry.conns
        self.rev += 1

    def reset(self, members: Mapping[str, Entry], source_rev: int, keep: Iterable[str] = ()) -> None:
        """Take a snapshot of the source at ``source_rev``: what differs becomes the next diff.

        Changes newer than the snapshot, applied already, stay; older ones are ignored from now on.
        Keys in ``keep`` stay as they are, and take the next change of any revision.
        """
        kept = set(keep)
        for key in kept:
            self.sources[key] = 0
        for key in set(self.members) | set(members):
            if key in kept or self.sources.get(key, 0) > source_rev:
                continue
            self.sources[key] = source_rev
            old, entry = self.members.get(key), members.get(key)
            if old != entry:
                self._apply(key, old, entry)
        self.floor = max(self.floor, source_rev)

    def take_diff(self) -> Diff | None:
        """Hand out the net change since the last diff (None when it nets to nothing)."""
        joins: dict[str, Entry] = {}
        updates: dict[str, Entry] = {}
        leaves: list[str] = []
        for key, before in self._before.items():
            now = self.members.get(key)
            if now is None:
                if before is not _ABSENT:
                    leaves.append(key)
            elif before is _ABSENT:
                joins[key] = now
            elif now != before:
                updates[key] = now
        self._before.clear()
        if not (joins or leaves or updates):
            return None  # sent_rev stays: the next diff starts where the client is
        diff = Diff(
            self.room, self.sent_rev, self.rev, joins, sorted(leaves), updates, len(self.members), self.connections
        )
        self.sent_rev = self.rev
        return diff

    def count(self) -> dict[str, int]:
        return {"users": len(self.members), "connections": self.connections}

    def page(self, cursor: str | None, limit: int) -> tuple[dict[str, Any], str | None]:
        """Return up to ``limit`` members with keys after ``cursor`` (in key order), and the next cursor."""
        keys = sorted(self.members) if cursor is None else sorted(k for k in self.members if k > cursor)
        chosen = keys[:limit]
        members = {key: self.members[key].wire() for key in chosen}
        return members, (chosen[-1] if len(keys) > limit else None)

    def state(self, limit: int) -> dict[str, Any]:
        """The ``presence_state`` payload: the first page, the counts and this revision."""
        members, cursor = self.page(None, limit)
        return {"room": self.room, "rev": self.rev, "count": self.count(), "members": members, "cursor": cursor}

    def forget_sources(self) -> None:
        """Drop the source revisions of keys no longer present (their leaves are old news)."""
        self.sources = {key: rev for key, rev in self.sources.items() if key in self.members}


class LocalCounts:
    """Joins and leaves decided within one process: which sids hold each key of a room."""

    def __init__(self) -> None:
        self._sids: dict[tuple[str, str], dict[str, set[str]]] = {}  # (ns, room) -> key -> sids
        self._meta: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def add(self, namespace: str, room: str, sid: str, key: str, meta: dict[str, Any]) -> Entry:
        """Add a connection of ``key``; its metadata becomes ``meta`` (last writer wins)."""
        sids = self._sids.setdefault((namespace, room), {}).setdefault(key, set())
        sids.add(sid)
        self._meta.setdefault((namespace, room), {})[key] = meta
        return Entry(meta, len(sids))

    def remove(self, namespace: str, room: str, sid: str, key: str) -> Entry | None:
        """Remove a connection of ``key``; return the key's entry after it (None: it left)."""
        room_sids = self._sids.get((namespace, room))
        if room_sids is None or key not in room_sids:
            return None
        sids = room_sids[key]
        sids.discard(sid)
        metas = self._meta[(namespace, room)]
        if sids:
            return Entry(metas[key], len(sids))
        del room_sids[key]
        del metas[key]
        if not room_sids:
            del self._sids[(namespace, room)]
            del self._meta[(namespace, room)]
        return None

    def update(self, namespace: str, room: str, key: str, meta: dict[str, Any]) -> Entry | None:
        """Give ``key`` new metadata; None when the key is not present."""
        sids = self._sids.get((namespace, room), {}).get(key)
        if not sids:
            return None
        self._meta[(namespace, room)][key] = meta
        return Entry(meta, len(sids))

    def is_empty(self) -> bool:
        return not self._sids


class TokenBucket:
    """``rate`` events per second with bursts of ``burst``; the clock is passed in."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
