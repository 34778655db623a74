"""What connection state recovery keeps of the frames sent: plain synchronous state, no I/O.

A frame sent to many clients (a broadcast) is kept once, in the server's :class:`BroadcastLog`,
with its target (namespace, rooms, skipped sids), as Socket.IO's in-memory adapter keeps one
list of packets for all sessions. A frame sent to one client alone (a reply, an ack, an emit
to its sid) is kept in that session's own :class:`SessionLog`. A resume replays the log
entries after the client's offset that reached the session, merged with its own frames, in
the order they were sent, each once.

Which broadcasts reached a session is decided from its membership (namespaces and rooms)
when each was sent: the session remembers its membership from before each change
(``note_membership``), so a room entered after a broadcast does not replay it and a room
left after one still does. Each recipient also remembers the last broadcast that reached it
(a ``mark``): a session that no broadcast reached since its offset resumes even when the log
has moved on past that offset.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from .protocol import offset_suffix

# What a log entry costs besides its frame's bytes (the entry, its mark, offset and time;
# a list of rooms and a set of skipped sids add theirs), and what an own frame adds besides
# its bytes; measured with tracemalloc, rounded up.
ENTRY_COST = 320
SKIPPED_COST = 240
FRAME_COST = 80
EPOCH_COST = 256  # a remembered membership: its tuple, dict and frozenset of (shared) room names
MAX_EPOCHS = 32  # membership changes a session remembers within the log's span

Mark = tuple[int, str]  # (seq, offset) of a broadcast: what a recipient remembers of it
Membership = dict[str, frozenset[str]]  # namespace -> rooms (its own sid room included)


class Broadcast:
    """One broadcast frame in the log, with who it was sent to."""

    __slots__ = ("frame", "mark", "namespace", "sent", "skipped", "to")

    def __init__(
        self,
        mark: Mark,
        frame: bytes,
        namespace: str,
        to: str | list[str] | None,
        skipped: set[str] | None,
        sent: float,
    ) -> None:
        self.mark = mark
        self.frame = frame
        self.namespace = namespace
        self.to = to
        self.skipped = skipped
        self.sent = sent

    def cost(self) -> int:
        """Estimate the memory this entry holds."""
        cost = ENTRY_COST + len(self.frame)
        if isinstance(self.to, list):
            cost += 64 + 8 * len(self.to)
        if self.skipped is not None:
            cost += SKIPPED_COST + 64 * len(self.skipped)
        return cost

    def reaches(self, sid: str, membership: Membership) -> bool:
        """Tell whether a session with ``membership`` was one of this frame's recipients."""
        rooms = membership.get(self.namespace)
        if rooms is None or (self.skipped is not None and sid in self.skipped):
            return False
        to = self.to
        if to is None:
            return True
        if isinstance(to, str):
            return to in rooms
        return not rooms.isdisjoint(to)


class BroadcastLog:
    """The server's broadcasts, oldest first, bounded in count, bytes and age."""

    def __init__(self, max_events: int, max_bytes: int, max_age: float) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.entries: deque[Broadcast] = deque()
        self.seq = 0  # of the newest entry ever appended
        self.bytes = 0  # what the entries held now cost, their frames included
        self.evicted = 0  # entries dropped to stay within the bounds

    @property
    def first_seq(self) -> int:
        """The seq of the oldest entry held (the next one's when empty)."""
        return self.entries[0].mark[0] if self.entries else self.seq + 1

    @property
    def cost(self) -> int:
        """Estimate the memory the log holds, for ``recovery_max_memory``."""
        return self.bytes

    def append(self, frame: bytes, offset: str, namespace: str, to: Any, skipped: set[str] | None) -> Broadcast:
        """Keep one broadcast; drop the oldest entries past a bound."""
        self.seq += 1
        now = time.monotonic()
        entry = Broadcast((self.seq, offset), frame, namespace, to, skipped, now)
        entries = self.entries
        entries.append(entry)
        self.bytes += entry.cost()
        oldest = now - self.max_age
        while entries and (len(entries) > self.max_events or self.bytes > self.max_bytes or entries[0].sent < oldest):
            self.bytes -= entries.popleft().cost()
            self.evicted += 1
        return entry

    def find(self, suffix: bytes) -> int | None:
        """Return the seq of the entry whose frame ends with ``suffix`` (newest first), if held."""
        for entry in reversed(self.entries):
            if entry.frame.endswith(suffix):
                return entry.mark[0]
        return None

    def after(self, seq: int) -> Iterator[Broadcast]:
        """Iterate over the entries held after ``seq``, oldest first."""
        return itertools.islice(self.entries, max(seq + 1 - self.first_seq, 0), None)


class SessionLog:
    """What one session keeps for a resume: its own frames and its membership's history."""

    __slots__ = ("broken", "count", "epochs", "frames", "frames_bytes", "lost", "released", "start", "unjudged")

    def __init__(self, start: int) -> None:
        self.start = start  # broadcasts up to this seq were sent before the session existed here
        self.frames: deque[tuple[int, bytes]] | None = None  # (log seq when sent, frame)
        self.frames_bytes = 0
        self.count = 0  # own frames ever recorded
        self.lost: int | None = None  # log seq of the newest own frame dropped for the bounds
        self.broken = False  # frames went unrecorded: nothing can be replayed
        self.epochs: list[tuple[int, Membership]] | None = None  # (until seq, membership up to it)
        self.unjudged = 0  # broadcasts up to this seq can not be judged (epochs forgotten)
        self.released: tuple[int, int] | None = None  # position when a hand-over started

    def restart(self, start: int) -> None:
        """Forget the membership history: broadcasts up to ``start`` are covered otherwise."""
        self.start = start
        self.epochs = None
        self.unjudged = 0

    def record(self, frame: bytes, seq: int, max_events: int, max_bytes: int) -> int:
        """Keep one own frame (sent after broadcast ``seq``); return how much the log grew."""
        frames = self.frames
        if frames is None:
            frames = self.frames = deque()
        before = self.cost
        frames.append((seq, frame))
        self.frames_bytes += len(frame)
        self.count += 1
        while len(frames) > max_events or self.frames_bytes > max_bytes:
            lost, old = frames.popleft()
            self.frames_bytes -= len(old)
            self.lost = lost
        return self.cost - before

    @property
    def cost(self) -> int:
        """Estimate what the session's own frames and membership history hold."""
        frames = self.frames
        cost = self.frames_bytes + FRAME_COST * len(frames) if frames else 0
        return cost + EPOCH_COST * len(self.epochs) if self.epochs else cost

    def note_membership(self, seq: int, before: Membership, oldest: int) -> None:
        """Remember the membership that held up to broadcast ``seq``, before it changes now."""
        if seq <= self.start:
            return  # no broadcast since the session started here: nothing to judge by it
        epochs = self.epochs
        if epochs is None:
            epochs = self.epochs = []
        elif epochs[-1][0] >= seq:
            return  # changed already since the last broadcast: that membership still holds
        while epochs and epochs[0][0] < oldest:
            del epochs[0]  # the broadcasts it judged are gone from the log
        if len(epochs) >= MAX_EPOCHS:
            self.unjudged = epochs.pop(0)[0]
        epochs.append((seq, before))

    def position(self, log: BroadcastLog) -> tuple[int, int]:
        """Where the session stands now: (the log's seq, own frames recorded)."""
        return log.seq, self.count

    def frames_after(
        self,
        log: BroadcastLog,
        sid: str,
        last: Mark | None,
        membership: Membership,
        offset: str | None,
        limits: tuple[int, int],
    ) -> list[bytes] | None:
        """Return the frames sent to the session after ``offset`` (all when None), or None if some are gone."""
        if self.broken:
            return None
        own = list(self.frames or ())
        if offset is None:
            if self.lost is not None:
                return None
            return self._collect(log, sid, last, membership, self.start, own, limits)
        suffix = offset_suffix(offset)
        for index in range(len(own) - 1, -1, -1):
            if own[index][1].endswith(suffix):
                return self._collect(log, sid, last, membership, own[index][0], own[index + 1 :], limits)
        seq = log.find(suffix)
        if seq is None and last is not None and last[1] == offset:
            seq = last[0]  # the newest broadcast it got, gone from the log since
        if seq is None or (self.lost is not None and self.lost >= seq):
            return None
        later = own[bisect.bisect_left(own, seq, key=lambda item: item[0]) :]
        return self._collect(log, sid, last, membership, seq, later, limits)

    def frames_since(
        self, log: BroadcastLog, sid: str, last: Mark | None, membership: Membership, position: tuple[int, int]
    ) -> list[bytes] | None:
        """Return the frames sent to the session since ``position``, or None if some are gone."""
        seq, count = position
        own = list(self.frames or ())
        skip = len(own) - (self.count - count)
        if skip < 0 or self.broken:
            return None
        return self._collect(log, sid, last, membership, seq, own[skip:], (2**62, 2**62))

    def _collect(
        self,
        log: BroadcastLog,
        sid: str,
        last: Mark | None,
        membership: Membership,
        after: int,
        own: list[tuple[int, bytes]],
        limits: tuple[int, int],
    ) -> list[bytes] | None:
        """Merge the broadcasts after seq ``after`` that reached the session with ``own``."""
        after = max(after, self.start)
        last_seq = last[0] if last is not None else 0
        shared: list[tuple[int, int, bytes]] = []
        if last_seq > after:  # a broadcast reached it since: the log must still hold them all
            if after + 1 < max(log.first_seq, self.unjudged + 1):
                return None
            epochs = self.epochs or []
            held = {_offset_of(frame) for _, frame in own}  # frames held back and sent again as its own
            index = 0
            for entry in log.after(after):
                seq = entry.mark[0]
                if seq > last_seq:
                    break
                while index < len(epochs) and epochs[index][0] < seq:
                    index += 1
                then = epochs[index][1] if index < len(epochs) else membership
                if entry.reaches(sid, then) and entry.mark[1] not in held:
                    shared.append((seq, 0, entry.frame))
        # An own frame recorded after broadcast n comes after it and before n + 1.
        mine = [(seq, 1, frame) for seq, frame in own]
        frames = [frame for _, _, frame in heapq.merge(shared, mine, key=lambda item: (item[0], item[1]))]
        max_events, max_bytes = limits
        if len(frames) > max_events or sum(map(len, frames)) > max_bytes:
            return None  # more than a session may replay
        return frames


def offset_of(frame: bytes) -> str | None:
    """Read the offset of one of our frames (it is the last field)."""
    marker = frame.rfind(b',"offset":"')
    return frame[marker + 11 : -2].decode() if marker != -1 else None


_offset_of = offset_of
