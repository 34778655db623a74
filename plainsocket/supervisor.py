"""Run a server program as child processes on one listening socket: ``--workers`` and ``--reload``.

The parent binds the socket once and every child serves on it (uvicorn's model): connections
that arrive while a child restarts wait in the kernel's backlog instead of being refused. A
child that dies is started again, with a log line; with ``--reload`` every child is restarted
(clients see close code 1012, "service restart", and reconnect) when a watched file changes,
and SIGHUP to the parent does the same on demand, one child at a time (a rolling restart: in
a cluster each child hands its sessions to the others before it exits).

Children find the socket's descriptor in ``PLAINSOCKET_FD``, their index in
``PLAINSOCKET_WORKER``, and in ``PLAINSOCKET_READY_FD`` a pipe on which they say that they
listen (:func:`tell_ready`): a rolling restart retires a worker only once its successor does.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("plainsocket.supervisor")

FD_VARIABLE = "PLAINSOCKET_FD"
WORKER_VARIABLE = "PLAINSOCKET_WORKER"
READY_VARIABLE = "PLAINSOCKET_READY_FD"
READY_TIMEOUT = 30.0  # seconds a new worker of a rolling restart has to start listening
CRASH_WINDOW = 2.0  # a child that dies sooner than this after its start is crashing
MAX_QUICK_CRASHES = 5  # in a row: give up instead of restarting it forever
STOP_TIMEOUT = 15.0  # seconds children get to close their clients and exit


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket the children share (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


def inherited_socket() -> socket.socket | None:
    """Return the listening socket a supervisor handed to this process, if any."""
    fd = os.environ.pop(FD_VARIABLE, None)
    if fd is None:
        return None
    return socket.socket(fileno=int(fd))


def tell_ready() -> None:
    """Tell the supervisor, if any, that this worker listens now."""
    fd = os.environ.pop(READY_VARIABLE, None)
    if fd is None or not fd.isdigit():
        return
    try:
        os.write(int(fd), b".")
        os.close(int(fd))
    except OSError:
        pass  # the supervisor is gone: nobody waits


def worker_index() -> int | None:
    """This process's stable worker index under a supervisor (0, 1, ...), or None."""
    value = os.environ.get(WORKER_VARIABLE)
    return int(value) if value is not None and value.isdigit() else None


class Supervisor:
    """Start ``workers`` copies of ``command`` on ``sock``; restart them when they die or files change."""

    def __init__(
        self,
        command: Sequence[str],
        sock: socket.socket,
        *,
        workers: int = 1,
        reload_dirs: Iterable[str | Path] = (),
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.command = list(command)
        self.sock = sock
        self.workers = workers
        self.reload_dirs = [str(Path(d).resolve()) for d in reload_dirs]
        self.stop_timeout = max(STOP_TIMEOUT, stop_timeout)
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.quick_crashes: dict[int, int] = {}
        self.ready_pipes: dict[int, int] = {}  # pid -> read end of its readiness pipe
        self.stopping = threading.Event()
        self.rolling = threading.Event()  # SIGHUP or a changed file: replace the workers
        self.roll: Iterator[None] | None = None  # the rolling restart under way, one step a tick
        self.replacing: int | None = None  # the index whose successor is starting
        self.retiring: list[subprocess.Popen[bytes]] = []  # replaced workers still draining
        self.exit_code = 0

    def run(self) -> int:
        """Supervise until SIGTERM or SIGINT (forwarded to the children); return the exit code.

        SIGHUP replaces the children one at a time (a rolling restart, as for a deploy).
        """
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        for index in range(self.workers):
            self._start(index)
        if self.reload_dirs:
            self._watch()
        else:
            while not self.stopping.wait(0.2):
                self._tick()
        return self._stop_all()

    def _tick(self) -> None:
        """Restart dead workers, then take the next step of a rolling restart, if one is due."""
        self._restart_dead()
        if self.rolling.is_set() and self.roll is None:
            self.rolling.clear()
            logger.info("replacing the workers one at a time")
            self.roll = self._rolling_restart()
        if self.roll is not None:
            try:
                next(self.roll)
            except StopIteration:
                self.roll = None

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stopping.set()

    def _on_hangup(self, signum: int, _frame: Any) -> None:
        self.rolling.set()

    def _start(self, index: int) -> None:
        ready, tell = os.pipe()
        env = {
            **os.environ,
            FD_VARIABLE: str(self.sock.fileno()),
            WORKER_VARIABLE: str(index),
            READY_VARIABLE: str(tell),
        }
        try:
            child = subprocess.Popen(self.command, env=env, pass_fds=[self.sock.fileno(), tell])
        finally:
            os.close(tell)
        self.ready_pipes[child.pid] = ready
        self.children[index] = child
        self.started[index] = time.monotonic()

    def _ready(self, child: subprocess.Popen[bytes]) -> bool | None:
        """Whether ``child`` listens (True), never will (False: it exited first), or not yet (None)."""
        pipe = self.ready_pipes.get(child.pid)
        if pipe is None:
            return child.poll() is None
        if not select.select([pipe], [], [], 0)[0]:
            return None
        said = os.read(pipe, 1)
        os.close(pipe)
        del self.ready_pipes[child.pid]
        return said == b"." and child.poll() is None

    def _forget_pipe(self, child: subprocess.Popen[bytes]) -> None:
        pipe = self.ready_pipes.pop(child.pid, None)
        if pipe is not None:
            os.close(pipe)

    def _rolling_restart(self) -> Iterator[None]:
        """Replace the workers one at a time, yielding between steps (the main loop goes on).

        Each worker's successor starts first, with the same index; only once it listens is the
        old one SIGHUPed (it stops accepting at once, closes its clients with 1012 and, in a
        cluster, hands their sessions over) and waited for. A successor that does not start
        stops the roll: the workers not replaced yet keep running the code they have.
        """
        for index in sorted(self.children):
            old, old_start = self.children[index], self.started[index]
            self.replacing = index
            self._start(index)
            new = self.children[index]
            deadline = time.monotonic() + READY_TIMEOUT
            while (ready := self._ready(new)) is None and time.monotonic() < deadline:
                yield
            self.replacing = None
            if not ready:
                logger.error(
                    "the new worker %d did not start (code %s): rolling restart stopped, the others keep running",
                    index,
                    new.poll(),
                )
                if new.poll() is None:
                    new.kill()
                new.wait()
                self._forget_pipe(new)
                self.children[index], self.started[index] = old, old_start
                return
            if old.poll() is None:
                old.send_signal(signal.SIGHUP)
                self.retiring.append(old)
                deadline = time.monotonic() + self.stop_timeout
                while old.poll() is None and time.monotonic() < deadline:
                    yield
                if old.poll() is None:
                    old.kill()
                    old.wait()
                self.retiring.remove(old)
            self._forget_pipe(old)

    def _restart_dead(self) -> None:
        for index, child in list(self.children.items()):
            code = child.poll()
            if code is None or self.stopping.is_set() or index == self.replacing:
                continue
            self._forget_pipe(child)
            quick = time.monotonic() - self.started[index] < CRASH_WINDOW
            self.quick_crashes[index] = self.quick_crashes.get(index, 0) + 1 if quick else 0
            if self.quick_crashes[index] >= MAX_QUICK_CRASHES:
                logger.error("worker %d keeps exiting at start (code %s): giving up", index, code)
                self.exit_code = 1
                self.stopping.set()
                return
            logger.error("worker %d (pid %d) exited with code %s: starting it again", index, child.pid, code)
            self._start(index)

    def _watch(self) -> None:
        """Restart every child when a source file changes (watchfiles, as uvicorn does)."""
        try:
            from watchfiles import watch
        except ImportError:
            logger.error("--reload needs watchfiles: pip install 'plainsocket[reload]'")
            self.exit_code = 2
            self.stopping.set()
            return
        logger.info("watching %s for changes", ", ".join(self.reload_dirs))
        for changes in watch(
            *self.reload_dirs,
            watch_filter=_source_file,
            stop_event=self.stopping,
            yield_on_timeout=True,
            rust_timeout=200,
        ):
            if changes:
                names = sorted({Path(path).name for _, path in changes})
                logger.info("%s changed: restarting", ", ".join(names))
                self.rolling.set()
            self._tick()

    def _stop_all(self) -> int:
        everyone = [*self.children.values(), *self.retiring]
        for child in everyone:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        codes = []
        for child in everyone:
            try:
                code = child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
            # Stopped by our SIGTERM before it could handle it (still starting): as asked.
            codes.append(0 if code == -signal.SIGTERM else code)
        self.sock.close()
        return self.exit_code or max(codes, key=abs, default=0)


def _source_file(_change: Any, path: str) -> bool:
    """Watch what a server app is made of: Python, pages and their assets; not caches."""
    name = Path(path).name
    if "__pycache__" in path or "/." in path or name.startswith("."):
        return False
    return name.endswith((".py", ".html", ".js", ".css", ".json"))
