"""The wscat session of README.md, typed into the real ``wscat`` against ``python server.py``.

wscat only shows its interactive session (``< `` before received frames, ``> `` prompts) on a
terminal: with a pipe it drops the markers and writes prompts in front of frames. So each wscat
runs on a pseudo-terminal, and :class:`Screen` renders its output the way the terminal shows it.
The session's ``> `` lines are typed in order; each ``< `` line must then appear on the screen,
equal but for the sid and the pong time.
"""

from __future__ import annotations

import codecs
import fcntl
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, ServerProcess, require

SESSION = ROOT / "README.md"
TIMEOUT = 10.0  # seconds for any expected line
CSI = re.compile(r"\x1b\[([0-9;?]*)([@-~])")
PARTIAL_CSI = re.compile(r"\x1b(\[[0-9;?]*)?$")


def find_wscat() -> str | None:
    """The project's wscat (npm install), else one on PATH."""
    local = ROOT / "node_modules" / ".bin" / "wscat"
    if local.exists():
        return str(local)
    return shutil.which("wscat")


class Screen:
    """Render terminal output: the few controls readline and wscat write (\\r, erase, cursor moves)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._line: list[str] = []
        self._col = 0
        self._rest = ""

    def feed(self, text: str) -> None:
        text, self._rest = self._rest + text, ""
        pos = 0
        while pos < len(text):
            char = text[pos]
            if char == "\x1b":
                match = CSI.match(text, pos)
                if match is None:
                    if PARTIAL_CSI.match(text, pos):
                        self._rest = text[pos:]  # the rest of the sequence is in the next read
                        return
                    pos += 1
                    continue
                self._control(match.group(1), match.group(2))
                pos = match.end()
                continue
            if char == "\r":
                self._col = 0
            elif char == "\n":
                self.lines.append("".join(self._line).rstrip())
                self._line, self._col = [], 0
            elif char == "\b":
                self._col = max(0, self._col - 1)
            elif char >= " ":
                self._put(char)
            pos += 1

    @property
    def current(self) -> str:
        """The line the cursor is on (not ended yet)."""
        return "".join(self._line)

    def _put(self, char: str) -> None:
        if self._col < len(self._line):
            self._line[self._col] = char
        else:
            self._line.extend(" " * (self._col - len(self._line)))
            self._line.append(char)
        self._col += 1

    def _control(self, params: str, final: str) -> None:
        n = int(params) if params.isdigit() else 0
        if final == "K" or final == "J":  # erase in line (0: to the end, 1: to the cursor, 2: all)
            if n == 0:
                del self._line[self._col :]
            elif n == 1:
                self._line[: self._col] = " " * min(self._col, len(self._line))
            else:
                self._line = []
        elif final == "D":
            self._col = max(0, self._col - max(n, 1))
        elif final == "C":
            self._col += max(n, 1)
        elif final == "G":
            self._col = max(n, 1) - 1
        # Anything else (colours: "m") does not move text.


class Wscat:
    """One interactive ``wscat -c URL`` on a pseudo-terminal."""

    def __init__(self, wscat: str, url: str) -> None:
        master, slave = pty.openpty()
        # A wide terminal, so that readline never wraps a long frame.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 1000, 0, 0))
        self.proc = subprocess.Popen(
            [wscat, "--no-color", "-c", url],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**os.environ, "TERM": "dumb"},
            start_new_session=True,
        )
        os.close(slave)
        self.fd = master
        self.screen = Screen()
        self.seen = 0  # screen lines already returned
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def type(self, line: str) -> None:
        """Type ``line`` and press Enter."""
        os.write(self.fd, line.encode() + b"\r")

    def next_line(self, timeout: float = TIMEOUT) -> str:
        """Return the next line the screen completes, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.seen >= len(self.screen.lines):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(remaining):
                raise AssertionError(f"no line within {timeout} s; screen so far: {self.screen.lines}")
        self.seen += 1
        return self.screen.lines[self.seen - 1]

    def expect(self, predicate: Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        """Skip lines until one satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        while not predicate(line := self.next_line(max(0.0, deadline - time.monotonic()))):
            pass
        return line

    def quit(self) -> int:
        """Press Ctrl-C, as the banner says; return the exit code."""
        os.write(self.fd, b"\x03")
        return self.proc.wait(TIMEOUT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.fd)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: wscat exited and the terminal is gone
            return False
        self.screen.feed(self._decoder.decode(data))
        return bool(data)


def session_lines(path: Path = SESSION) -> list[str]:
    """The screen of the fenced block in ``path`` that starts with ``$ wscat -c``, after that line."""
    block = re.search(r"^```[a-z]*\n\$ wscat -c [^\n]*\n(.*?)^```", path.read_text(encoding="utf-8"), re.M | re.S)
    assert block, f"no fenced block starting with '$ wscat -c' in {path}"
    return block.group(1).splitlines()


def normalized(line: str) -> str:
    """Blank out what changes from run to run: the sid, token, offsets and the pong time."""
    line = re.sub(r'"sid":"[^"]*"', '"sid":"SID"', line)
    line = re.sub(r'"token":"[^"]*"', '"token":"TOKEN"', line)
    line = re.sub(r'"offset":"[^"]*"', '"offset":"OFFSET"', line)
    return re.sub(r'"pong":[-+.eE0-9]+', '"pong":0', line)


def frame(line: str) -> dict[str, object]:
    """The JSON of a screen line such as ``< {...}`` or ``> {...}``."""
    parsed: dict[str, object] = json.loads(line[2:])
    return parsed


@pytest.fixture
def wscat() -> Iterator[Callable[[str], Wscat]]:
    """Start wscat sessions that are killed at the end of the test."""
    path = find_wscat()
    require(path is not None and shutil.which("node") is not None, "wscat and node (install wscat: npm install)")
    assert path is not None
    sessions: list[Wscat] = []

    def start(url: str) -> Wscat:
        session = Wscat(path, url)
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.close()


def join_test(session: Wscat) -> None:
    """Wait for the greeting, then join /test."""
    session.expect(lambda line: line.startswith('< {"event":"connect","namespace":"/"'))
    session.type('{"event":"connect","namespace":"/test"}')
    session.expect(
        lambda line: line.startswith('< {"event":"my response","namespace":"/test","data":{"data":"Connected"}')
    )


def test_the_documented_wscat_session(
    server_process: Callable[..., ServerProcess], wscat: Callable[[str], Wscat]
) -> None:
    """Typing the session of README.md into wscat shows exactly its replies."""
    demo = server_process()
    bystander = wscat(demo.url)  # another client in /test, to see the broadcast arrive
    join_test(bystander)

    terminal = wscat(demo.url)
    broadcasts = []
    for expected in session_lines():
        if expected.startswith("> "):
            terminal.type(expected[2:])
            if '"my broadcast event"' in expected:
                broadcasts.append(frame(expected)["data"])
        assert normalized(terminal.next_line()) == normalized(expected)
    assert terminal.quit() == 0

    assert broadcasts, "the session shows a broadcast"
    for data in broadcasts:
        reply = {"event": "my response", "namespace": "/test", "data": data}
        bystander.expect(
            lambda line, reply=reply: (
                line.startswith("< ") and {**frame(line), "offset": None} == {**reply, "offset": None}
            )
        )
