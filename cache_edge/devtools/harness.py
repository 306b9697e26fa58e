"""The one process harness: ``cache-edge dev``, the tests and ``bench/`` start servers with it.

Free loopback ports, one child process per server with its own log file, waiting until a
child answers (failing at once, with its log's tail, if it dies first), and stopping in
order, newest first. Waiting is synchronous (the tests and bench/ orchestrate from plain
code) except :func:`wait_ready` / :func:`wait_healthy` and :meth:`Child.astop`, which
``cache-edge dev`` awaits in its event loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Child",
    "Children",
    "ProcessFailed",
    "cache_edge_cmd",
    "free_port",
    "http_ok",
    "port_in_use",
    "python_cmd",
    "wait_healthy",
    "wait_http",
    "wait_port",
    "wait_ready",
    "wait_until",
]

# Health checks go straight to loopback, whatever http_proxy says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProcessFailed(RuntimeError):
    """A child exited or never became ready; the message ends with its log's tail."""


def free_port() -> int:
    """A loopback port nothing listens on right now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether our servers could not listen on ``port``.

    Binds as they do, with SO_REUSEADDR (asyncio's default): connections of a stopped
    ``cache-edge dev`` linger in TIME_WAIT for a minute and would make a plain bind fail,
    though only a live listener keeps a server from starting there.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def python_cmd(module: str, *args: str) -> list[str]:
    """Run a module of this checkout with the current interpreter."""
    return [sys.executable, "-m", module, *args]


def cache_edge_cmd(command: str, config: Path, *args: str) -> list[str]:
    """``cache-edge <command> --config <config> <args>``, as a user runs it."""
    return python_cmd("cache_edge.cli", command, "--config", str(config), *args)


@dataclass(eq=False)
class Child:
    """One server process whose output (stdout and stderr) goes to its own log file.

    It runs in its own session, so Ctrl-C reaches only the parent, which stops its
    children itself, in order. ``start`` may be called again after a stop (a restart):
    the log is appended to.
    """

    name: str
    cmd: list[str]
    log: Path
    user: str | None = None  # run as this user (PostgreSQL refuses to run as root)
    stop_signal: signal.Signals = signal.SIGTERM
    cleanup: Path | None = None  # a directory to delete once the process has stopped
    env: Mapping[str, str] = field(default_factory=dict)  # added to our environment
    cwd: Path | None = None
    cpus: str | None = None  # pin with ``taskset -c <cpus>``
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Child:
        assert not self.running, f"{self.name} is already running"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        pin = ["taskset", "-c", self.cpus] if self.cpus is not None else []
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*pin, *self.cmd],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                user=self.user,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exited(self) -> bool:
        """Started, and no longer running."""
        return self.proc is not None and self.proc.poll() is not None

    def check_alive(self) -> None:
        """Raise :class:`ProcessFailed`, with the log's tail, if the child has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessFailed(
                f"{self.name} exited with code {self.proc.returncode}:\n{self.tail()}"
            )

    def stop(self, timeout: float = 10.0, sig: int | None = None) -> None:
        """Signal (``stop_signal`` unless told), wait, kill after ``timeout``; then clean up."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(self.stop_signal if sig is None else sig)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            except ProcessLookupError:
                pass
        if self.cleanup is not None:
            shutil.rmtree(self.cleanup, ignore_errors=True)

    async def astop(self, timeout: float = 10.0, sig: int | None = None) -> None:
        """:meth:`stop` without blocking the event loop."""
        await asyncio.to_thread(self.stop, timeout, sig)

    def text(self) -> str:
        """The whole log so far ("" before the first start)."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-lines:])


class Children:
    """Children stopped together, newest first: nodes before their origin, the origin
    before the database it talks to."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    def add(self, child: Child) -> Child:
        """Take charge of stopping ``child`` (started or not) with the others."""
        self._children.append(child)
        return child

    def start(self, child: Child) -> Child:
        """Start ``child`` and take charge of stopping it (even if the start fails)."""
        return self.add(child).start()

    def stop(self, child: Child, sig: int | None = None) -> None:
        """Stop one child now; it is no longer stopped with the others."""
        child.stop(sig=sig)
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        while self._children:
            self._children.pop().stop()

    def __iter__(self) -> Iterator[Child]:
        return iter(list(self._children))


def http_ok(url: str, timeout: float = 1.0, context: ssl.SSLContext | None = None) -> bool:
    """Whether ``url`` answers 200 right now (https verified by ``context``)."""
    opener = _OPENER
    if context is not None:
        https = urllib.request.HTTPSHandler(context=context)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), https)
    try:
        with opener.open(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _not_ready(child: Child | None, what: str, timeout: float) -> ProcessFailed:
    if child is None:
        return ProcessFailed(f"{what} within {timeout:g}s")
    return ProcessFailed(f"{child.name}: {what} within {timeout:g}s:\n{child.tail()}")


def wait_until(
    ready: Callable[[], bool],
    child: Child | None,
    what: str,
    timeout: float = 30.0,
    interval: float = 0.05,
) -> None:
    """Poll ``ready`` until it is true; fail early, with the log, if ``child`` exits.

    ``what`` completes "<child>: <what> within <timeout>s", e.g. "did not answer <url>".
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None:
            child.check_alive()
        if ready():
            return
        time.sleep(interval)
    if child is not None:
        child.check_alive()
    raise _not_ready(child, what, timeout)


def wait_http(
    url: str, child: Child | None, timeout: float = 30.0, context: ssl.SSLContext | None = None
) -> None:
    """Wait until ``url`` answers 200 (a server's ``/healthz``)."""
    wait_until(lambda: http_ok(url, context=context), child, f"did not answer {url}", timeout)


def wait_port(
    port: int, child: Child | None, timeout: float = 30.0, host: str = "127.0.0.1"
) -> None:
    """Wait until something accepts TCP connections on ``host:port``."""
    wait_until(lambda: _accepts(host, port), child, f"did not listen on {host}:{port}", timeout)


async def wait_ready(
    child: Child,
    ready: Callable[[], Awaitable[bool]],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.1,
) -> None:
    """:func:`wait_until` for an event loop: ``ready`` is awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        child.check_alive()
        if await ready():
            return
        await asyncio.sleep(interval)
    child.check_alive()
    raise _not_ready(child, what, timeout)


async def wait_healthy(child: Child, url: str, timeout: float = 30.0) -> None:
    """Wait, in an event loop, until ``url`` answers 200."""
    await wait_ready(
        child, lambda: asyncio.to_thread(http_ok, url), f"did not answer {url}", timeout
    )
