"""registry.py: membership and rooms, as plain state."""

from __future__ import annotations

from plainsocket.registry import Registry


def test_connect_puts_sid_in_its_own_room() -> None:
    """A connected sid is a member of the namespace and of a room named after it."""
    registry = Registry()
    registry.connect("/", "a")
    assert registry.sids("/") == {"a"}
    assert registry.rooms("/", "a") == {"a"}
    assert registry.members("/", "a") == {"a"}


def test_rooms_and_recipients() -> None:
    """Recipients are everyone, a room, a sid or a union of rooms."""
    registry = Registry()
    for sid in "abc":
        registry.connect("/t", sid)
    registry.enter_room("/t", "a", "r1")
    registry.enter_room("/t", "b", "r1")
    registry.enter_room("/t", "c", "r2")
    assert registry.recipients("/t", None) == {"a", "b", "c"}
    assert registry.recipients("/t", "r1") == {"a", "b"}
    assert registry.recipients("/t", "c") == {"c"}
    assert registry.recipients("/t", ["r1", "r2"]) == {"a", "b", "c"}
    assert registry.recipients("/t", "nope") == set()
    assert registry.recipients("/other", None) == set()


def test_leave_and_close_room() -> None:
    """Leaving or closing a room forgets empty rooms."""
    registry = Registry()
    registry.connect("/", "a")
    registry.connect("/", "b")
    registry.enter_room("/", "a", "r")
    registry.enter_room("/", "b", "r")
    registry.leave_room("/", "a", "r")
    assert registry.members("/", "r") == {"b"}
    assert registry.close_room("/", "r") == {"b"}
    assert registry.members("/", "r") == set()
    assert registry.rooms("/", "b") == {"b"}
    registry.leave_room("/", "b", "never-joined")  # no error


def test_disconnect_leaves_nothing_behind() -> None:
    """After every client leaves, the registry holds no state at all."""
    registry = Registry()
    for sid in "abc":
        registry.connect("/", sid)
        registry.connect("/x", sid)
        registry.enter_room("/", sid, "shared")
        registry.enter_room("/x", sid, f"own-{sid}")
    assert registry.count() == 6
    assert registry.count("/x") == 3
    for sid in "abc":
        assert registry.disconnect("/", sid)
        assert registry.disconnect("/x", sid)
    assert not registry.disconnect("/", "a")
    assert registry.is_empty()
    assert registry.count() == 0
