"""The broadcast log and a session's own log as plain state: no sockets, no event loop."""

from __future__ import annotations

from typing import Any

from plainsocket.broadcast_log import BroadcastLog, SessionLog
from plainsocket.protocol import encode

SID = "me"
LIMITS = (1000, 2**20)


def frame(data: str, offset: str) -> bytes:
    return encode("news", data, "/", None, offset).encode()


class Node:
    """A log, one session and the frames sent: what the server does, without the server."""

    def __init__(self, **bounds: Any) -> None:
        self.log = BroadcastLog(bounds.get("events", 100), bounds.get("bytes", 2**20), 1e9)
        self.session = SessionLog(self.log.seq)
        self.rooms = {"/": frozenset({SID})}
        self.last: tuple[int, str] | None = None
        self.count = 0

    def offset(self) -> str:
        self.count += 1
        return f"n-{self.count}"

    def broadcast(self, data: str, to: Any = None, skipped: set[str] | None = None) -> str:
        offset = self.offset()
        entry = self.log.append(frame(data, offset), offset, "/", to, skipped)
        if entry.reaches(SID, self.rooms):
            self.last = entry.mark
        return offset

    def direct(self, data: str) -> str:
        offset = self.offset()
        self.session.record(frame(data, offset), self.log.seq, *LIMITS)
        return offset

    def enter(self, room: str) -> None:
        self.session.note_membership(self.log.seq, dict(self.rooms), self.log.first_seq)
        self.rooms = {"/": self.rooms["/"] | {room}}

    def leave(self, room: str) -> None:
        self.session.note_membership(self.log.seq, dict(self.rooms), self.log.first_seq)
        self.rooms = {"/": self.rooms["/"] - {room}}

    def missed(self, offset: str | None, limits: tuple[int, int] = LIMITS) -> list[str] | None:
        frames = self.session.frames_after(self.log, SID, self.last, self.rooms, offset, limits)
        return None if frames is None else [f.decode().split('"data":"')[1].split('"')[0] for f in frames]


def test_replays_in_sending_order_what_reached_the_session() -> None:
    """Broadcasts it was a recipient of and its own frames, merged by when they were sent."""
    node = Node()
    node.enter("red")
    start = node.broadcast("start")
    node.broadcast("red", to="red")
    node.direct("mine")
    node.broadcast("blue", to="blue")
    node.broadcast("skipped", skipped={SID})
    node.broadcast("listed", to=["blue", "red"])
    node.direct("mine again")
    assert node.missed(start) == ["red", "mine", "listed", "mine again"]
    assert node.missed(None) == ["start", "red", "mine", "listed", "mine again"]


def test_each_broadcast_is_judged_by_the_rooms_of_its_time() -> None:
    node = Node()
    start = node.broadcast("start")
    node.broadcast("green before", to="green")
    node.enter("green")
    node.broadcast("green after", to="green")
    node.enter("red")
    node.broadcast("red while in", to="red")
    node.leave("red")
    node.broadcast("red after leaving", to="red")
    assert node.missed(start) == ["green after", "red while in"]


def test_an_offset_found_in_its_own_frames() -> None:
    node = Node()
    node.broadcast("before")
    mine = node.direct("mine")
    node.broadcast("after")
    assert node.missed(mine) == ["after"]


def test_a_copy_held_back_and_sent_as_its_own_frame_comes_once() -> None:
    """A broadcast held behind a connect handler is sent (and kept) as the session's own frame."""
    node = Node()
    start = node.direct("start")
    held = node.broadcast("held")  # the session was not written to; the server re-sends it
    node.session.record(frame("held", held), node.log.seq, *LIMITS)
    assert node.missed(start) == ["held"]


def test_eviction_refuses_only_a_needed_range() -> None:
    node = Node(events=3)
    start = node.broadcast("start")
    for number in range(3):
        node.broadcast(f"other {number}", to="elsewhere")
    assert node.log.first_seq == 2, "start is gone"
    assert node.missed(start) == [], "no broadcast reached it since its last one"
    node.broadcast("everyone")
    node.broadcast("other 3", to="elsewhere")
    node.broadcast("other 4", to="elsewhere")
    assert node.missed(start) is None, "its offset is gone, and a broadcast reached it since"


def test_a_replay_past_the_session_bounds_is_refused() -> None:
    node = Node()
    start = node.broadcast("start")
    for number in range(5):
        node.broadcast(f"n{number}")
    assert node.missed(start, (5, 2**20)) is not None
    assert node.missed(start, (4, 2**20)) is None
    assert node.missed(start, (5, 100)) is None


def test_the_byte_bound_counts_each_entry_and_drops_the_oldest() -> None:
    node = Node(bytes=2000)
    for number in range(20):
        node.broadcast(f"n{number}")
    assert node.log.cost <= 2000 and node.log.evicted == 20 - len(node.log.entries)
    assert node.log.entries[-1].mark[1] == "n-20"


def test_own_frames_past_their_bound_make_an_older_offset_unrecoverable() -> None:
    node = Node()
    first = node.direct("first")
    for number in range(3):
        node.session.record(frame(f"d{number}", node.offset()), node.log.seq, 2, 2**20)
    assert node.missed(first) is None and node.missed(None) is None


def test_a_needed_broadcast_gone_from_the_log_refuses_an_own_offset() -> None:
    """Its offset is its own frame, still kept; a broadcast to it after that one is gone."""
    node = Node(events=2)
    mine = node.direct("mine")
    node.broadcast("to everyone")
    node.broadcast("other 1", to="elsewhere")
    assert node.missed(mine) == ["to everyone"]
    node.broadcast("other 2", to="elsewhere")
    assert node.missed(mine) is None
