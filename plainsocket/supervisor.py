"""Run a server program as child processes on one listening socket: ``--workers`` and ``--reload``.

The parent binds the socket once and every child serves on it (uvicorn's model): connections
that arrive while a child restarts wait in the kernel's backlog instead of being refused. A
child that dies is started again, with a log line; with ``--reload`` every child is restarted
(clients see close code 1012, "service restart", and reconnect) when a watched file changes,
and SIGHUP to the parent does the same on demand, one child at a time (a rolling restart: in
a cluster each child hands its sessions to the others before it exits).

Children find the socket's descriptor in ``PLAINSOCKET_FD`` and their index in
``PLAINSOCKET_WORKER``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("plainsocket.supervisor")

FD_VARIABLE = "PLAINSOCKET_FD"
WORKER_VARIABLE = "PLAINSOCKET_WORKER"
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
    ) -> None:
        self.command = list(command)
        self.sock = sock
        self.workers = workers
        self.reload_dirs = [str(Path(d).resolve()) for d in reload_dirs]
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.quick_crashes: dict[int, int] = {}
        self.stopping = threading.Event()
        self.rolling = threading.Event()  # SIGHUP: replace the workers one at a time
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
                self._restart_dead()
                if self.rolling.is_set():
                    self.rolling.clear()
                    logger.info("SIGHUP: replacing the workers one at a time")
                    self._restart_all()
        return self._stop_all()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stopping.set()

    def _on_hangup(self, signum: int, _frame: Any) -> None:
        self.rolling.set()

    def _start(self, index: int) -> None:
        env = {**os.environ, FD_VARIABLE: str(self.sock.fileno()), WORKER_VARIABLE: str(index)}
        child = subprocess.Popen(self.command, env=env, pass_fds=[self.sock.fileno()])
        self.children[index] = child
        self.started[index] = time.monotonic()

    def _restart_dead(self) -> None:
        for index, child in list(self.children.items()):
            code = child.poll()
            if code is None or self.stopping.is_set():
                continue
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
                self._restart_all()
            self._restart_dead()

    def _restart_all(self) -> None:
        """Replace the children one at a time: SIGHUP one, start its successor, wait for it to exit.

        A SIGHUPed child stops accepting at once and closes its clients with 1012; in a
        cluster it first hands their sessions over (``--drain-timeout``). Its successor
        starts meanwhile (it has the same worker index), so the port never lacks a server.
        """
        for index, child in list(self.children.items()):
            if self.stopping.is_set():
                return
            running = child.poll() is None
            if running:
                child.send_signal(signal.SIGHUP)
            self.quick_crashes[index] = 0
            self._start(index)
            if running:
                try:
                    child.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()

    def _stop_all(self) -> int:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        codes = []
        for child in self.children.values():
            try:
                codes.append(child.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                child.kill()
                codes.append(child.wait())
        self.sock.close()
        return self.exit_code or max(codes, key=abs, default=0)


def _source_file(_change: Any, path: str) -> bool:
    """Watch what a server app is made of: Python, pages and their assets; not caches."""
    name = Path(path).name
    if "__pycache__" in path or "/." in path or name.startswith("."):
        return False
    return name.endswith((".py", ".html", ".js", ".css", ".json"))
