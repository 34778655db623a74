"""Presence in the browser: two demo pages in one room see each other come and go."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from test_browser import ServerProcess, browser, messages, new_page, server, submit

if TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = ["browser", "new_page", "server"]  # the fixtures of test_browser, used here by name


def expect(locator: object) -> object:
    from playwright.sync_api import expect as playwright_expect  # checked by the browser fixture

    return playwright_expect(locator)  # type: ignore[arg-type]


def open_named(new_page: Callable[[], Page], server: ServerProcess, name: str) -> Page:
    page = new_page()
    page.goto(f"{server.url}/?name={name}")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    expect(messages(page)).to_have_text(["Connected"])
    return page


def present(page: Page, room: str) -> list[str]:
    return page.locator(f'#presence section[data-room="{room}"] li').all_inner_texts()


def test_two_pages_see_each_other_join_and_leave(new_page: Callable[[], Page], server: ServerProcess) -> None:
    """Alice and Bob join the lobby: each page lists both; Bob closes his page: Alice's list drops him."""
    alice = open_named(new_page, server, "alice")
    submit(alice, "join", join_room="lobby")
    heading = alice.locator('#presence section[data-room="lobby"] h3')
    expect(heading).to_have_text("lobby: 1 present (1 connections)")
    expect(alice.locator('#presence section[data-room="lobby"] li')).to_have_text(["alice"])

    bob = open_named(new_page, server, "bob")
    submit(bob, "join", join_room="lobby")
    expect(bob.locator('#presence section[data-room="lobby"] li')).to_have_text(["alice", "bob"])
    expect(alice.locator('#presence section[data-room="lobby"] li')).to_have_text(["alice", "bob"])
    expect(heading).to_have_text(re.compile(r"^lobby: 2 present"))

    second_bob = open_named(new_page, server, "bob")
    submit(second_bob, "join", join_room="lobby")
    expect(alice.locator('#presence section[data-room="lobby"] li')).to_have_text(["alice", "bob (2 tabs)"])
    second_bob.close()
    expect(alice.locator('#presence section[data-room="lobby"] li')).to_have_text(["alice", "bob"])

    submit(bob, "leave", leave_room="lobby")
    expect(alice.locator('#presence section[data-room="lobby"] li')).to_have_text(["alice"])
    submit(bob, "join", join_room="lobby")
    expect(alice.locator('#presence section[data-room="lobby"] li')).to_have_text(["alice", "bob"])
    bob.close()  # a closed tab says goodbye (1001): its session is not kept, it leaves at once
    expect(alice.locator('#presence section[data-room="lobby"] li')).to_have_text(["alice"])
    expect(heading).to_have_text("lobby: 1 present (1 connections)")
    assert present(alice, "lobby") == ["alice"]
