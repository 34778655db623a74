"""Serving the metrics: a loopback HTTP listener, a worker's private socket, a parent's merge.

- :func:`serve_http` answers ``GET /metrics`` on a port of its own (``metrics_port``), so
  that the scrape endpoint can be firewalled apart from the clients' port.
- :func:`serve_worker` is a ``--workers`` child's private Unix socket: whoever connects
  reads this process's families as JSON, then the socket closes.
- :class:`WorkerScrapes` is the ``--workers`` parent's ``/metrics``: it reads every child's
  socket at each scrape (concurrently, with a short timeout), labels each child's series
  ``worker="i"`` and adds ``plainsocket_worker_up``. Counters are never summed across
  children: a child that restarts starts its own series at zero again, which ``rate()``
  reads as a counter reset, not as a drop of the cluster's total.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .metrics import CONTENT_TYPE, PREFIX, Family, merge, render, with_labels

logger = logging.getLogger("plainsocket.metrics")

MAX_REQUEST = 8192  # bytes of request line and headers a scrape may send
REQUEST_TIMEOUT = 5.0
WORKER_TIMEOUT = 0.5  # seconds a parent waits for one child's families
MAX_WORKER_REPLY = 16 * 2**20


def socket_path(folder: str | Path, index: int) -> str:
    """Where child ``index`` of a ``--workers`` parent serves its families."""
    return str(Path(folder) / f"w{index}.sock")


# -- One process ----------------------------------------------------------------------------


async def serve_http(host: str, port: int, families: Callable[[], list[Family]]) -> asyncio.Server:
    """Listen on ``host:port`` and answer ``GET /metrics`` (404 elsewhere, 405 for other methods)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body, content_type = _route(head, families)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            status, body, content_type = HTTPStatus.BAD_REQUEST, b"bad request\n", "text/plain"
        except Exception:
            logger.exception("collecting metrics failed")
            status, body, content_type = HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", "text/plain"
        try:
            writer.write(_http_response(status, body, content_type))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port, limit=MAX_REQUEST)


def _route(head: bytes, families: Callable[[], list[Family]]) -> tuple[HTTPStatus, bytes, str]:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3:
        return HTTPStatus.BAD_REQUEST, b"bad request\n", "text/plain"
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target != b"/metrics":
        return HTTPStatus.NOT_FOUND, b"not found: scrape /metrics\n", "text/plain"
    if method not in (b"GET", b"HEAD"):
        return HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", "text/plain"
    body = render(families()).encode()
    return HTTPStatus.OK, b"" if method == b"HEAD" else body, CONTENT_TYPE


def _http_response(status: HTTPStatus, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-cache\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


async def serve_worker(path: str, families: Callable[[], list[Family]]) -> asyncio.Server:
    """Serve this process's families as JSON on the Unix socket ``path`` (its folder is private)."""

    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            payload = json.dumps([family.to_json() for family in families()], allow_nan=True)
            writer.write(payload.encode())
            await writer.drain()
        except ConnectionError:
            pass
        except Exception:
            logger.exception("collecting metrics failed")
        finally:
            writer.close()

    try:
        os.unlink(path)  # left by this worker's previous life
    except FileNotFoundError:
        pass
    return await asyncio.start_unix_server(answer, path)


# -- A --workers parent ----------------------------------------------------------------------


class WorkerScrapes:
    """The parent's ``/metrics``: every child's families, labelled by worker index."""

    def __init__(self, folder: str | Path, workers: int, *, timeout: float = WORKER_TIMEOUT) -> None:
        self.folder = Path(folder)
        self.workers = workers
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="metrics")
        self._http: ThreadingHTTPServer | None = None

    def families(self) -> list[Family]:
        replies = list(self._pool.map(self._fetch, range(self.workers)))
        up = Family(PREFIX + "worker_up", "gauge", "Whether each worker answered this scrape (1) or not (0)")
        parts: list[list[Family]] = []
        for index, families in enumerate(replies):
            up.add(0 if families is None else 1, {"worker": str(index)})
            if families is not None:
                parts.append(with_labels(families, {"worker": str(index)}))
        workers = Family(PREFIX + "workers", "gauge", "Worker processes this server runs").add(self.workers)
        return [workers, up, *merge(parts)]

    def _fetch(self, index: int) -> list[Family] | None:
        """Read child ``index``'s families, or None if it does not answer in time (dead, restarting)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(socket_path(self.folder, index))
                chunks, size = [], 0
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_WORKER_REPLY:
                        raise ValueError("reply too large")
            return [Family.from_json(item) for item in json.loads(b"".join(chunks))]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``GET /metrics`` on ``host:port`` in a thread; return the address bound."""
        scrapes = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self._answer(HTTPStatus.NOT_FOUND, b"not found: scrape /metrics\n", "text/plain")
                    return
                self._answer(HTTPStatus.OK, render(scrapes.families()).encode(), CONTENT_TYPE)

            def _answer(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape would drown the log

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type(
            "MetricsHTTPServer", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True}
        )
        self._http = server_class((host, port), Handler)
        threading.Thread(target=self._http.serve_forever, name="metrics-http", daemon=True).start()
        bound = self._http.server_address
        return str(bound[0]), int(bound[1])

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self._pool.shutdown(wait=False)
        shutil.rmtree(self.folder, ignore_errors=True)
