"""Presence bookkeeping without sockets: views, coalesced diffs, source order, pages."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from plainsocket.client_presence import RoomPresence
from plainsocket.presence import Entry, LocalCounts, Presence, PresenceError, RoomView, check_meta


def entry(conns: int = 1, **meta: Any) -> Entry:
    return Entry(meta, conns)


def test_a_join_and_a_leave_in_one_window_cancel_out() -> None:
    """Changes between two diffs net out: join+leave is nothing, leave+join of a member is an update at most."""
    view = RoomView("r")
    view.set("a", entry())
    first = view.take_diff()
    assert first is not None and first.payload()["joins"] == {"a": {"meta": {}, "conns": 1}}
    view.set("b", entry())
    view.set("b", None)
    view.set("a", None)
    view.set("a", entry())
    assert view.take_diff() is None and view.sent_rev == first.rev, "nothing net: the next diff starts there"
    view.set("a", entry(2))
    diff = view.take_diff()
    assert diff is not None and diff.start == first.rev and diff.payload()["updates"] == {"a": {"meta": {}, "conns": 2}}


def test_changes_older_than_the_applied_one_are_ignored() -> None:
    """With source revisions, a late change of a key (and anything older than a snapshot) is ignored."""
    view = RoomView("r")
    assert view.set("a", entry(2), source_rev=10)
    assert not view.set("a", entry(1), source_rev=9)
    assert view.set("a", None, source_rev=11) and not view.set("a", entry(), source_rev=10), "a leave is remembered"
    view.reset({"b": entry()}, source_rev=20)
    assert not view.set("c", entry(), source_rev=15), "older than the snapshot"
    assert view.set("c", entry(), source_rev=21) and set(view.members) == {"b", "c"}
    view.set("d", entry(), source_rev=30)
    view.reset({"b": entry()}, source_rev=25)
    assert set(view.members) == {"b", "d"}, "a change newer than the snapshot stays"


def test_local_counts_decide_first_join_and_last_leave() -> None:
    counts = LocalCounts()
    assert counts.add("/", "r", "s1", "alice", {"n": 1}) == Entry({"n": 1}, 1)
    assert counts.add("/", "r", "s2", "alice", {"n": 1}).conns == 2
    assert counts.remove("/", "r", "s1", "alice") == Entry({"n": 1}, 1)
    assert counts.update("/", "r", "alice", {"n": 2}) == Entry({"n": 2}, 1)
    assert counts.remove("/", "r", "s2", "alice") is None and counts.is_empty()
    assert counts.update("/", "r", "alice", {}) is None


def test_options_and_metadata_checks() -> None:
    presence = Presence(rooms=["game:*", "lobby"])
    assert presence.tracks("game:1") and presence.tracks("lobby") and not presence.tracks("lobby2")
    assert Presence(rooms=lambda room: room.startswith("x")).tracks("xy")
    with pytest.raises(ValueError):
        Presence(mode="loud")
    assert check_meta({"a": 1}, 100) == '{"a":1}'
    for bad, code in (
        ({"a": "x" * 100}, "meta_too_large"),
        ([1], "invalid_meta"),
        ({"a": float("nan")}, "invalid_meta"),
    ):
        with pytest.raises(PresenceError) as raised:
            check_meta(bad, 50)
        assert raised.value.code == code


async def test_a_10000_member_room_pages_every_key_exactly_once() -> None:
    """10,000 members paged 1,000 at a time while others come and go: each key that stays is listed once."""
    view = RoomView("big")
    for i in range(10_000):
        view.set(f"k{i:05}", entry())
    rng = random.Random(7)
    churn = iter(range(10_000, 20_000))

    async def call(event: str, data: dict[str, Any]) -> dict[str, Any]:
        for _ in range(50):  # the room changes between two pages
            view.set(f"k{next(churn):05}", entry())
            view.set(f"k{rng.randrange(10_000, 20_000):05}", None)
        members, cursor = view.page(data["cursor"], 1000)
        return {"room": "big", "rev": view.rev, "count": view.count(), "members": members, "cursor": cursor}

    client = RoomPresence("big", call)
    joined: list[str] = []
    client.on("join", lambda key, _: joined.append(key))
    client.receive("presence_state", view.state(1000))
    assert len(client.members) == 1000 and client.count["users"] == 10_000 and client.cursor is not None
    pages = 1
    while await client.more():
        pages += 1
    original = [key for key in joined if key < "k10000"]
    assert sorted(original) == [f"k{i:05}" for i in range(10_000)], "every original key exactly once"
    assert len(original) == len(set(original)) and pages >= 10
    assert set(client.members) <= set(view.members) | {k for k in client.members if k >= "k10000"}


async def test_a_revision_gap_makes_the_view_resynchronise() -> None:
    """A diff whose from is past the view's revision: the view lists the room again and fires what changed."""
    view = RoomView("r")
    view.set("a", entry())
    state = view.state(1000)
    view.take_diff()

    async def call(event: str, data: dict[str, Any]) -> dict[str, Any]:
        members, cursor = view.page(data["cursor"], 1000)
        return {"room": "r", "rev": view.rev, "count": view.count(), "members": members, "cursor": cursor}

    client = RoomPresence("r", call)
    events: list[tuple[str, str]] = []
    client.on("join", lambda key, _: events.append(("join", key)))
    client.on("leave", lambda key, _: events.append(("leave", key)))
    client.receive("presence_state", state)
    view.set("b", entry())
    view.take_diff()  # lost on the way
    view.set("a", None)
    view.set("c", entry())
    diff = view.take_diff()
    assert diff is not None
    client.receive("presence_diff", diff.payload())
    await client.synced()
    assert client.resyncs == 1 and set(client.members) == {"b", "c"} and client.rev == view.rev
    assert sorted(events) == [("join", "a"), ("join", "b"), ("join", "c"), ("leave", "a")]
    await asyncio.sleep(0)
