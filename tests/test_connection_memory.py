"""What an open connection keeps: no attribute dict of its own, whatever order connections come in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# In a fresh process (the shared key table of a class is per process): 30 connections wait in
# the listening socket's backlog while the loop is blocked, so asyncio creates all 30 connection
# objects in one iteration, before the first connection_made() runs.
BURST = r"""
import asyncio, gc, socket
from plainsocket import SocketServer
from plainsocket.server import HTTPConnection

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)

async def main():
    server = SocketServer()
    await server.start("127.0.0.1", 0)
    clients = []
    for _ in range(30):  # blocking calls: the loop does not run meanwhile
        client = socket.create_connection(("127.0.0.1", server.port))
        client.sendall(HANDSHAKE)
        clients.append(client)
    for _ in range(500):
        if server.connection_count() == 30:
            break
        await asyncio.sleep(0.01)
    assert server.connection_count() == 30, server.connection_count()
    connections = [o for o in gc.get_objects() if type(o) is HTTPConnection]
    own = [o for o in connections if any(type(r) is dict and "protocol" in r for r in gc.get_referents(o))]
    print(len(connections), len(own))
    for client in clients:
        client.close()
    await server.shutdown()

asyncio.run(main())
"""


def test_connections_arriving_at_once_share_the_attribute_key_table() -> None:
    """30 connections created in one loop iteration: none gets an attribute dict of its own (1.5 KiB each)."""
    done = subprocess.run(
        [sys.executable, "-c", BURST], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["30", "0"], done.stdout
