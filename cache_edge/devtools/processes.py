"""Child processes of ``cache-edge dev``: start with a log, wait until healthy, stop in order."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["Child", "ChildFailed", "free_port", "port_in_use", "wait_healthy"]

# Health checks go straight to loopback, whatever http_proxy says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ChildFailed(RuntimeError):
    """A child exited or never became healthy; the message ends with its log's tail."""


def free_port() -> int:
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


class Child:
    """One server process whose output goes to its own log file."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log: Path,
        *,
        user: str | None = None,
        stop_signal: str = "SIGTERM",
        cleanup: Path | None = None,
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.log = log
        self.user = user
        self.stop_signal = signal.Signals[stop_signal]
        self.cleanup = cleanup  # a directory to delete once the process has stopped
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                user=self.user,
                # Its own session: Ctrl-C reaches only us, and we stop children in order.
                start_new_session=True,
            )

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    async def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(self.stop_signal)
            try:
                await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 5.0)
        if self.cleanup is not None:
            shutil.rmtree(self.cleanup, ignore_errors=True)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _get_ok(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def wait_healthy(child: Child, url: str, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log, if the child dies."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if child.exited:
            code = child.proc.returncode if child.proc else "?"
            raise ChildFailed(f"{child.name} exited with code {code}:\n{child.tail()}")
        if await asyncio.to_thread(_get_ok, url):
            return
        await asyncio.sleep(0.1)
    raise ChildFailed(f"{child.name} did not answer {url} within {timeout:.0f}s:\n{child.tail()}")
