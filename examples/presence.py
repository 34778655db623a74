"""Who is in the room: presence in 30 lines. ``python examples/presence.py`` prints what it sees.

Members are keyed by the ``name`` of their connect auth, so two tabs of alice are one member
with two connections.
"""

from __future__ import annotations

import asyncio

from plainsocket import SocketServer, join_room
from plainsocket.client import Client
from plainsocket.presence import Presence

socketio = SocketServer(presence={"/chat": Presence(rooms="room:*", key=lambda member: member.auth["name"])})


@socketio.on("join", namespace="/chat")
def join(room: str) -> None:
    join_room(room)


async def main() -> None:
    await socketio.start("127.0.0.1", 0)
    url = socketio.url
    async with Client(url) as alice:
        chat = await alice.connect("/chat", auth={"name": "alice"})
        lobby = chat.presence("room:lobby")
        lobby.on("join", lambda key, entry: print("join", key, entry))
        lobby.on("update", lambda key, entry, before: print("update", key, entry))
        lobby.on("leave", lambda key, entry: print("leave", key))
        await chat.call("join", "room:lobby")
        await lobby.synced()
        async with Client(url) as tab1, Client(url) as tab2:  # bob, in two tabs
            for tab in (tab1, tab2):
                await (await tab.connect("/chat", auth={"name": "bob"})).call("join", "room:lobby")
            await asyncio.sleep(0.5)
            print("members", sorted(lobby.members), lobby.count)
        await asyncio.sleep(0.5)
        print("members", sorted(lobby.members), lobby.count)
    await socketio.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
