"""The program: ``plainsocket run module:attr`` with flags, --factory, --workers, --reload, installing."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, until
from wire import Wire

from plainsocket.client import Client

LISTENING = re.compile(r"listening on https?://[\d.]+:(\d+)")


class Program:
    """``python -m plainsocket ARGS`` (or any command) in a subprocess, its stderr collected."""

    def __init__(self, *command: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            list(command),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: workers included, nothing outlives the test
        )
        self.lines: list[str] = []

    def wait_listening(self, count: int = 1) -> int:
        """Read stderr until ``count`` processes said they listen; return the port."""
        assert self.proc.stderr is not None
        ports = []
        for line in self.proc.stderr:
            self.lines.append(line)
            found = LISTENING.search(line)
            if found:
                ports.append(int(found.group(1)))
                if len(ports) == count:
                    return ports[0]
        raise AssertionError(f"exited with {self.proc.wait()} before listening:\n{''.join(self.lines)}")

    def wait_for_line(self, text: str) -> str:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r}:\n{''.join(self.lines)}")

    def finish(self, timeout: float = 20) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, "".join(self.lines) + err

    def stop(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGTERM)
        return self.finish()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def program() -> Iterator[Any]:
    started: list[Program] = []

    def start(*args: str, **options: Any) -> Program:
        process = Program(*args, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        for stream in (process.proc.stdout, process.proc.stderr):
            if stream is not None:
                stream.close()


def plainsocket(*args: str) -> list[str]:
    return [sys.executable, "-m", "plainsocket", *args]


async def test_run_a_user_app_with_flags_overriding_its_keywords(program: Any) -> None:
    """plainsocket run tests.apps.echo:app: a given flag wins, a keyword stands, an untouched default stays."""
    server = program(*plainsocket("run", "tests.apps.echo:app", "--port", "0", "--ping-interval", "3"))
    port = server.wait_listening()
    client = await Wire.open(f"ws://127.0.0.1:{port}")
    options = (await client.call("options", id=1))["data"]
    assert options == {"ping_interval": 3.0, "max_rooms": 5, "rate_limit": 100.0, "recovery_window": 0.0}
    code, _, err = server.stop()
    assert code == 0 and "Traceback" not in err


async def test_factory_and_app_dir(program: Any, tmp_path: Path) -> None:
    """--factory calls the function; --app-dir finds a module elsewhere; python server.py APP does the same."""
    server = program(*plainsocket("run", "tests.apps.echo:create_app", "--factory", "--port", "0"))
    client = await Wire.open(f"ws://127.0.0.1:{server.wait_listening()}")
    assert (await client.call("options", id=1))["data"]["max_rooms"] == 9
    (tmp_path / "myapp.py").write_text(
        "from plainsocket import SocketServer\nsocketio = SocketServer()\nsocketio.on_event('hi', lambda: 'there')\n"
    )
    elsewhere = program(sys.executable, "server.py", "myapp:socketio", "--app-dir", str(tmp_path), "--port", "0")
    client = await Wire.open(f"ws://127.0.0.1:{elsewhere.wait_listening()}")
    assert (await client.call("hi", id=2))["data"] == "there"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.apps.echo", "APP must be 'module:attribute'"),
        ("tests.apps.nowhere:app", "could not import module 'tests.apps.nowhere'"),
        ("tests.apps.echo:missing", "has no attribute 'missing'"),
        ("tests.apps.echo:not_a_server", "is a int, not a SocketServer"),
        ("tests.apps.echo:create_app", "not a SocketServer (a function? add --factory)"),
    ],
)
def test_a_wrong_app_is_one_line_and_exit_2(program: Any, spec: str, message: str) -> None:
    """A mistyped APP: one clear line on stderr, exit code 2, no traceback."""
    code, _, err = program(*plainsocket("run", spec, "--port", "0")).finish()
    assert code == 2 and message in err and "Traceback" not in err, err


def test_unknown_subcommand_prints_usage(program: Any) -> None:
    """plainsocket with no subcommand says how to use it."""
    code, _, err = program(*plainsocket()).finish()
    assert code == 2 and "plainsocket run APP" in err


async def test_workers_of_a_user_app_form_one_cluster(program: Any, redis_server: Any) -> None:
    """--workers 2 --redis: two processes of the user's app on one port; a broadcast from one reaches the other."""
    server = program(
        *plainsocket("run", "tests.apps.echo:app", "--port", "0", "--workers", "2", "--redis", redis_server.url)
    )
    port = server.wait_listening(count=2)
    by_pid: dict[int, Wire] = {}
    for _ in range(60):
        client = await Wire.open(f"ws://127.0.0.1:{port}")
        pid = (await client.call("whoami", id=1))["data"]
        by_pid.setdefault(pid, client)
        if len(by_pid) == 2:
            break
    assert len(by_pid) == 2, "both workers accept connections on the one port"
    a, b = by_pid.values()
    await a.send("shout", "across workers")
    frame = await b.expect("heard")
    assert frame["data"] == "across workers"
    code, _, err = server.stop()
    assert code == 0 and "Traceback" not in err


async def test_a_dead_worker_is_started_again(program: Any, redis_server: Any) -> None:
    """A worker killed with SIGKILL: the parent logs it and starts another; the port keeps serving."""
    server = program(
        *plainsocket("run", "tests.apps.echo:app", "--port", "0", "--workers", "2", "--redis", redis_server.url)
    )
    port = server.wait_listening(count=2)
    client = await Wire.open(f"ws://127.0.0.1:{port}")
    victim = (await client.call("whoami", id=1))["data"]
    os.kill(victim, signal.SIGKILL)
    line = await asyncio.to_thread(server.wait_for_line, "exited with code -9: starting it again")
    assert "worker" in line
    await asyncio.to_thread(server.wait_listening)
    fresh = await Wire.open(f"ws://127.0.0.1:{port}")
    assert (await fresh.call("whoami", id=1))["data"] != victim
    assert server.stop()[0] == 0


async def test_reload_restarts_on_an_edit_and_clients_come_back(program: Any, tmp_path: Path) -> None:
    """--reload: edit a handler; a connected client is told 1012, reconnects, and gets the new behaviour."""
    source = tmp_path / "reloading.py"
    template = textwrap.dedent(
        """
        from plainsocket import SocketServer
        socketio = SocketServer()

        @socketio.on("version")
        def version():
            return {version}
        """
    )
    source.write_text(template.format(version=1))
    server = program(*plainsocket("run", "reloading:socketio", "--app-dir", str(tmp_path), "--port", "0", "--reload"))
    server.wait_for_line("watching")  # the supervisor watches, then its child listens
    port = server.wait_listening()
    reconnects: list[Any] = []
    async with Client(f"ws://127.0.0.1:{port}", reconnect_delay=0.05, reconnect_delay_max=0.2) as client:
        client.on("reconnect", lambda *args: reconnects.append(args))
        assert await client.root.call("version", timeout=5) == 1
        source.write_text(template.format(version=2))
        await until(lambda: bool(reconnects), timeout=15)
        assert await client.root.call("version", timeout=5) == 2
    code, _, err = server.stop()
    assert code == 0 and "changed: restarting" in err


def test_installed_in_a_fresh_venv_outside_the_checkout(tmp_path: Path) -> None:
    """pip install <checkout>: one package and one command land; they import and run the user's app."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=True)
    python = str(env_dir / "bin" / "python")
    site = Path(
        subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True)
        .strip()
    )
    before = {p.name for p in site.iterdir()}
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    landed = sorted({p.name for p in site.iterdir()} - before)
    assert landed == ["plainsocket", "plainsocket-0.2.0.dist-info"], "nothing else at the top of site-packages"
    assert (site / "plainsocket" / "py.typed").is_file() and (site / "plainsocket" / "static" / "client.html").is_file()
    app_dir = tmp_path / "project"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(
        "from plainsocket import SocketServer, emit\n"
        "socketio = SocketServer()\n"
        "@socketio.event\n"
        "def hello(data):\n"
        "    return {'hello': data}\n"
    )
    check = (
        "import asyncio, sys\n"
        "from plainsocket.client import test_client\n"
        "sys.path.insert(0, '.')\n"
        "from app import socketio\n"
        "async def main():\n"
        "    async with test_client(socketio) as root:\n"
        "        print(await root.call('hello', 'world', timeout=5))\n"
        "asyncio.run(main())\n"
    )
    ran = subprocess.run([python, "-c", check], cwd=app_dir, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and ran.stdout.strip() == "{'hello': 'world'}", ran.stderr
    usage = subprocess.run([str(env_dir / "bin" / "plainsocket")], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "plainsocket run APP" in usage.stderr
