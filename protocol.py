"""Check frames against plainsocket's wire protocol, as the server would read them.

For anyone writing a client in another language, or typing frames into wscat: each line of
input (or each argument) is one frame; the answer is the frame as the server understands it,
or the ``error`` frame the server would send back, with its machine code::

    $ python protocol.py '{"event":"my event","namespace":"/test","data":{"data":"hi"},"id":7}'
    ok     {"event":"my event","namespace":"/test","data":{"data":"hi"},"id":7}
    $ echo '{"event":""}' | python protocol.py
    error  {"event":"error","namespace":"/","data":{"code":"invalid_event","message":"event must be ..."}}

Exits 1 when any frame is invalid. The rules themselves live in ``plainsocket.protocol``
(the library's pure protocol module) and docs/protocol.md.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from plainsocket.protocol import ProtocolError, decode, encode, error_frame


def check(frame: str) -> tuple[bool, str]:
    """Return whether ``frame`` is valid, and the frame as parsed or the server's error frame."""
    try:
        envelope = decode(frame)
    except ProtocolError as exc:
        return False, error_frame(exc)
    return True, encode(envelope.event, envelope.data, envelope.namespace, envelope.id)


def main(frames: Iterable[str]) -> int:
    valid = True
    for frame in frames:
        if not frame.strip():
            continue
        ok, answer = check(frame.rstrip("\r\n"))
        valid = valid and ok
        print(f"{'ok' if ok else 'error':<6} {answer}")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or sys.stdin))
