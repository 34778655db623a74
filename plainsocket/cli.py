"""The command line: run an application's :class:`SocketServer` with every option as a flag.

``plainsocket run app:socketio`` (or ``python -m plainsocket run ...``) loads the object the
way uvicorn does (``module:attribute``, ``--factory`` for a function that returns it,
``--app-dir`` for where the module lives); ``python server.py [app]`` runs the demo, or the
given app, with the same flags. A flag overrides the constructor's keyword only when given.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import ssl as ssl_module
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .server import SocketServer
from .supervisor import Supervisor, bind, inherited_socket

logger = logging.getLogger("plainsocket")

# Program-level flags: everything else on the command line is a SocketServer option.
_PROGRAM_FLAGS = ("--workers", "--reload", "--reload-dir")
# Served by a --workers parent for all its children: never handed to a child.
_PARENT_FLAGS = ("--metrics-port", "--metrics-host")
ADMIN_TOKEN = "PLAINSOCKET_ADMIN_TOKEN"  # the admin token, kept out of the process list
METRICS_DIR_VARIABLE = "PLAINSOCKET_METRICS_DIR"  # where each child serves its metrics to the parent


class AppLoadError(Exception):
    """The APP argument does not name a SocketServer."""


# -- Loading the application ------------------------------------------------------------------


def load_app(spec: str, *, factory: bool = False, app_dir: str | Path = ".") -> SocketServer:
    """Import ``module:attribute`` from ``app_dir`` and return the :class:`SocketServer` it names.

    Raises:
        AppLoadError: a malformed spec, a module or attribute that does not exist, or an
            object that is not a SocketServer.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise AppLoadError(f"APP must be 'module:attribute', like app:socketio (got {spec!r})")
    folder = str(Path(app_dir).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise AppLoadError(f"could not import module {module_name!r} from {folder}") from None
        raise  # the app's own imports fail: its traceback is the useful message
    found: Any = module
    for name in attribute.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if factory:
        if not callable(found):
            raise AppLoadError(f"--factory: {spec} is not callable")
        found = found()
    if not isinstance(found, SocketServer):
        hint = "" if factory or not callable(found) else " (a function? add --factory)"
        raise AppLoadError(f"{spec} is a {type(found).__name__}, not a SocketServer{hint}")
    return found


# -- Flags ----------------------------------------------------------------------------------------


def _server_flags(add: Callable[..., Any]) -> None:
    """One flag per SocketServer option; left out unless given, so the app's keywords stand."""
    defaults = {
        name: p.default for name, p in inspect.signature(SocketServer.__init__).parameters.items() if name != "self"
    }

    def option(flag: str, kind: Any, help: str = "", dest: str | None = None, **extra: Any) -> None:
        name = dest or flag[2:].replace("-", "_")
        text = f"{help} (default {defaults[name]!r})".strip() if name in defaults else help
        add(flag, type=kind, dest=name, default=argparse.SUPPRESS, help=text, **extra)

    positive, count, size = _at_least(float, 0.0, strict=True), _at_least(int, 1), _at_least(int, 1024)
    duration = _at_least(float, 0.0, strict=True, none=True)
    option("--ping-interval", duration, "seconds between keepalive pings ('none': off)")
    option("--ping-timeout", duration, "seconds a ping waits for its pong ('none': off)")
    option("--open-timeout", duration, "seconds a handshake may take ('none': off)")
    option("--close-timeout", positive, "seconds a closing handshake may take")
    option("--send-timeout", positive, "close a client whose writes stall this long")
    option("--max-message-size", size, "bytes per received message")
    option("--max-depth", count, "nesting levels of a frame's JSON")
    option("--max-event-length", count, "characters of an event name")
    option("--max-namespaces", count, "namespaces per client")
    option("--max-rooms", count, "rooms per client and namespace")
    option("--max-pending-acks", count, "server calls waiting for one client")
    option("--max-backlog", count, "frames queued behind a busy async handler")
    option("--max-backlog-bytes", size, "bytes queued behind a busy async handler")
    option("--rate-limit", positive, "frames per second per connection")
    option("--rate-burst", count, "frames a connection may send at once")
    option("--max-connections", count, "clients per process")
    option("--max-connections-per-address", count, "clients per IP address")
    option("--max-send-buffer", size, "bytes queued per client before it is dropped")
    option("--allowed-origins", str, "comma-separated origins, or '*' (none: same origin only)")
    option("--allowed-hosts", str, "names the server answers to besides IP addresses and localhost ('*': any)")
    option("--forwarded-allow-ips", _trusted, "proxies whose X-Forwarded-For / Forwarded are believed ('*': all)")
    option("--recovery-window", _at_least(float, 0.0), "seconds a dropped session is kept for a resume (0: off)")
    option("--recovery-max-events", count, "frames a session may replay on a resume")
    option("--recovery-max-bytes", size, "bytes a session may replay on a resume")
    option("--recovery-max-memory", size, "bytes all kept sessions and the broadcast log may hold (oldest go first)")
    option("--recovery-log-events", count, "broadcasts kept once for all sessions (default 10 x max events)")
    option("--recovery-log-bytes", size, "bytes of broadcasts kept (default 4 x max bytes, at most half the memory)")
    option("--redis", _redis_url, "scale out: redis://host:6379/0", dest="message_queue", metavar="URL")
    option("--channel", str, "Redis channel prefix shared by the cluster's nodes")
    option("--heartbeat-interval", _at_least(float, 0.05), "seconds between a node's Redis heartbeats")
    option(
        "--drain-timeout",
        _at_least(float, 0.0),
        "seconds a stopping node of a cluster waits for its clients to resume on other nodes (0: off)",
    )
    add(
        "--compression",
        action="store_true",
        default=argparse.SUPPRESS,
        help="enable permessage-deflate (~32 KiB more per connection)",
    )
    add(
        "--metrics",
        action="store_true",
        default=argparse.SUPPRESS,
        help="serve Prometheus metrics at GET /metrics",
    )
    option("--metrics-port", _port, "serve /metrics on a listener of its own (with --workers: every worker's)")
    option("--metrics-host", str, "address of the --metrics-port listener")
    option("--admin-token", str, f"serve the admin page at /admin to whoever gives this token (or ${ADMIN_TOKEN})")
    add(
        "--admin-write",
        action="store_true",
        default=argparse.SUPPRESS,
        help="let the admin page disconnect clients (read-only without it)",
    )
    add(
        "--static",
        action="append",
        type=_static_mapping,
        default=argparse.SUPPRESS,
        metavar="URL=PATH",
        help="serve a file or a folder: --static /=index.html --static /assets=public (repeatable)",
    )


def _at_least(
    kind: Callable[[str], Any], low: float, *, strict: bool = False, none: bool = False
) -> Callable[[str], Any]:
    """A flag's type: a number of ``kind`` at least (or, ``strict``, above) ``low``; 'none' if allowed."""
    relation = ">" if strict else ">="
    name = "a whole number" if kind is int else "a number"

    def parse(text: str) -> Any:
        if none and text.lower() == "none":
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name} {relation} {low:g}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < low or (strict and value == low):
            allowed = f"{relation} {low:g}" + (" or 'none'" if none else "")
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    return parse


def _trusted(text: str) -> str:
    from .forwarded import parse_trusted

    try:
        parse_trusted(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _redis_url(text: str) -> str:
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise argparse.ArgumentTypeError(f"expected redis://host:port/db, rediss:// or unix://, got {text!r}")
    return text


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: the flag, what it takes, what it got."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {text!r}")
    return int(text)


def _static_mapping(text: str) -> tuple[str, str]:
    url, sep, path = text.partition("=")
    if not sep or not url.startswith("/") or not path:
        raise argparse.ArgumentTypeError(f"expected URL=PATH with URL starting with '/', got {text!r}")
    return url, path


def build_parser(prog: str | None = None, *, default_app: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Run a plainsocket app: a SocketServer object, named module:attribute.",
    )
    add = parser.add_argument
    add(
        "app",
        nargs="?" if default_app else None,
        default=default_app,
        metavar="APP",
        help=f"module:attribute, like app:socketio (default: {default_app})" if default_app else "like app:socketio",
    )
    add("--factory", action="store_true", help="APP is a function that returns the SocketServer")
    add("--app-dir", default=".", help="folder to import APP's module from (default: the current one)")
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=_port, default=5000, help="0 picks a free port (default 5000)")
    add("--certfile", default=None, help="serve wss:// and https:// with this certificate")
    add("--keyfile", default=None)
    add("--workers", type=_at_least(int, 1), default=1, help="run N processes on one port; a cluster on --redis")
    add("--reload", action="store_true", help="restart when a source file changes (needs watchfiles)")
    add("--reload-dir", action="append", default=None, help="folder to watch with --reload (default: --app-dir)")
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _server_flags(add)
    return parser


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The SocketServer keywords given on the command line (and only those)."""
    known = inspect.signature(SocketServer.__init__).parameters
    options = {name: value for name, value in vars(args).items() if name in known and name != "self"}
    if "static" in vars(args):
        options["static_files"] = dict(args.static)
    return options


def tls_context(certfile: str | None, keyfile: str | None) -> ssl_module.SSLContext | None:
    if certfile is None:
        return None
    context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    return context


# -- Running --------------------------------------------------------------------------------------


def main(
    argv: Sequence[str] | None = None, *, default_app: str | None = None, default_app_dir: str | None = None
) -> None:
    """``plainsocket run APP [flags]``; with ``default_app``, APP may be left out (``python server.py``)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if default_app is None:
        if arguments[:1] == ["client"]:
            from .client import main as client_main

            sys.exit(client_main(arguments[1:]))
        if arguments[:1] != ["run"]:
            print("usage: plainsocket run APP [flags]   (plainsocket run --help)", file=sys.stderr)
            print("       plainsocket client URL [flags] (plainsocket client --help)", file=sys.stderr)
            sys.exit(2)
        arguments = arguments[1:]
    args = build_parser("plainsocket run" if default_app is None else None, default_app=default_app).parse_args(
        arguments
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":
        # One line per connect and disconnect is ours to write; websockets would add two more.
        logging.getLogger("websockets").setLevel(logging.WARNING)
    app_dir = default_app_dir if default_app_dir and args.app == default_app else args.app_dir
    try:
        app = load_app(args.app, factory=args.factory, app_dir=app_dir)
        app.configure(**server_options(args))
        if os.environ.get(ADMIN_TOKEN) and "admin_token" not in vars(args):
            app.configure(admin_token=os.environ[ADMIN_TOKEN])
    except (AppLoadError, TypeError) as exc:
        logger.error("%s", exc)
        sys.exit(2)
    sock = inherited_socket()
    if sock is None and (args.workers > 1 or args.reload):
        sys.exit(_supervise(args, arguments, app, app_dir))
    _serve_metrics_to_parent(app)
    _serve(app, args, sock)


def _serve_metrics_to_parent(app: SocketServer) -> None:
    """Under a --workers parent that serves metrics: hand this child's to it, on a private socket."""
    from .metrics_http import socket_path
    from .supervisor import worker_index

    folder, index = os.environ.get(METRICS_DIR_VARIABLE), worker_index()
    if folder and index is not None:
        app.configure(metrics=False, metrics_port=None, metrics_socket=socket_path(folder, index))


def _serve(app: SocketServer, args: argparse.Namespace, sock: Any) -> None:
    try:
        context = tls_context(args.certfile, args.keyfile)
        app.run(args.host, args.port, ssl=context, sock=sock)
    except Exception as exc:
        from .backplane import BackplaneError  # only now: Redis support costs memory

        # Start-up failures (Redis unreachable, port taken, a static file missing): one clear line.
        if app.port is not None or not isinstance(exc, (BackplaneError, OSError, ValueError)):
            raise  # a crash while serving, or a bug: its traceback is the message
        logger.error("can not start: %s", exc)
        sys.exit(1)


def _supervise(args: argparse.Namespace, arguments: list[str], app: SocketServer, app_dir: str) -> int:
    """Be the parent of ``--workers`` children (and their reloader): bind once, start, watch."""
    if args.workers > 1 and app.message_queue is None:
        logger.error("--workers needs --redis (or message_queue= in the app): each worker is a node of one cluster")
        return 2
    if args.workers < 1:
        logger.error("--workers must be 1 or more")
        return 2
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        logger.error("can not listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        return 1
    child_args = _without_flags(arguments, (*_PROGRAM_FLAGS, *_PARENT_FLAGS), switches=("--reload", "--metrics"))
    if args.app not in child_args:
        child_args = [args.app, *child_args]
    command = [sys.executable, "-m", "plainsocket", "run", *child_args, "--app-dir", app_dir]
    # Children import plainsocket from where this process did, installed or from a checkout.
    package_parent = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    reload_dirs = (args.reload_dir or [app_dir]) if args.reload else []
    host, port = sock.getsockname()[:2]
    mode = " with --reload" if args.reload else ""
    scrapes = _start_worker_metrics(app, args.workers)
    logger.info("supervising %d worker(s) on %s:%d%s", args.workers, host, port, mode)
    # A worker that stops may drain for drain_timeout, then close its clients within close_timeout.
    stop_timeout = getattr(args, "drain_timeout", 5.0) + 2 * getattr(args, "close_timeout", 5.0) + 5.0
    try:
        return Supervisor(
            command, sock, workers=args.workers, reload_dirs=reload_dirs, stop_timeout=stop_timeout
        ).run()
    finally:
        if scrapes is not None:
            scrapes.stop()


def _start_worker_metrics(app: SocketServer, workers: int) -> Any:
    """Serve every child's metrics on the parent's --metrics-port; None when metrics are off.

    One port answers for all children: Prometheus scrapes one target and sees each worker's
    series under ``worker="i"``. ``--metrics`` alone would make each scrape of the shared
    port land on a random child, so it is served on the parent's port only.
    """
    if app.metrics_port is None:
        if app.metrics:
            logger.warning("--metrics with --workers: serving them on --metrics-port only; none given, metrics off")
        return None
    import tempfile

    from .metrics_http import WorkerScrapes

    folder = tempfile.mkdtemp(prefix="plainsocket-metrics-")  # 0700: only this user's processes read it
    os.environ[METRICS_DIR_VARIABLE] = folder
    scrapes = WorkerScrapes(folder, workers)
    try:
        host, port = scrapes.start(app.metrics_host, app.metrics_port)
    except OSError as exc:
        scrapes.stop()
        logger.error("can not serve metrics on %s:%d: %s", app.metrics_host, app.metrics_port, exc.strerror or exc)
        sys.exit(1)
    logger.info("metrics of %d worker(s) on http://%s:%d/metrics", workers, host, port)
    return scrapes


def _without_flags(argv: list[str], flags: Sequence[str], *, switches: Sequence[str] = ()) -> list[str]:
    """Drop ``--flag value``, ``--flag=value`` (and bare ``switches``) from an argument list."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in switches:
            continue
        elif arg in flags:
            skip = True
        elif not arg.startswith(tuple(f + "=" for f in flags)):
            kept.append(arg)
    return kept

