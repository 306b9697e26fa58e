"""Child processes of the suite: pinned to a core, logged to a file, stopped in order.

Servers run on one core and load generators on another (``taskset``) so that a load
generator never steals the CPU of the server it measures. Every child gets its own
session, so Ctrl-C reaches only the suite, which then stops them itself.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ROOT",
    "Pinning",
    "Proc",
    "ProcessFailed",
    "free_port",
    "listen_overflows",
    "raise_fd_limit",
    "tree_cpu_seconds",
    "wait_http",
    "wait_port",
]

# Health checks go straight to loopback, whatever http_proxy says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent  # the checkout: `python -m bench...` runs here


class ProcessFailed(RuntimeError):
    """A child exited early or never became ready; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit(wanted: int = 20_000) -> int:
    """Raise our soft open-files limit (children inherit it): 1,000 clients need sockets."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@dataclass(frozen=True)
class Pinning:
    """Which CPUs servers and load generators may use (None: anywhere)."""

    server: str | None
    load: str | None

    @classmethod
    def detect(cls, enabled: bool = True) -> Pinning:
        cores = os.cpu_count() or 1
        if not enabled or cores < 2 or shutil.which("taskset") is None:
            return cls(None, None)
        return cls("0", "1")

    def prefix(self, cpus: str | None) -> list[str]:
        return ["taskset", "-c", cpus] if cpus is not None else []

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (taskset missing, one core, or --no-pin)"
        return f"servers on CPU {self.server}, load generators on CPU {self.load} (taskset)"


@dataclass
class Proc:
    """One child process whose output goes to its own log file."""

    name: str
    cmd: list[str]
    log: Path
    cpus: str | None = None
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        prefix = ["taskset", "-c", self.cpus] if self.cpus is not None else []
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*prefix, *self.cmd],
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
        assert self.proc is not None, f"{self.name} not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessFailed(
                f"{self.name} exited with code {self.proc.returncode}:\n{self.tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(self.stop_signal)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def rss_bytes(self) -> int:
        """Resident memory (VmRSS) of the process and its descendants (a supervisor's workers)."""
        return sum(_rss(p) for p in _tree(self.pid))

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _tree(pid: int) -> list[int]:
    kids = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(kids.get(current, []))
    return found


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full
    (TcpExt ListenOverflows, machine-wide)."""
    try:
        lines = [ln.split() for ln in Path("/proc/net/netstat").read_text().splitlines()]
    except OSError:
        return 0
    for names, values in itertools.pairwise(lines):
        if names and names[0] == "TcpExt:" and values[0] == "TcpExt:":
            fields = dict(zip(names[1:], values[1:], strict=True))
            return int(fields.get("ListenOverflows", 0))
    return 0


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants (pgpool forks)."""
    total = 0.0
    for current in _tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def wait_http(url: str, proc: Proc, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log, if the child dies."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            with _OPENER.open(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise ProcessFailed(f"{proc.name}: {url} did not answer in {timeout:.0f}s ({last})")


def wait_port(port: int, proc: Proc, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise ProcessFailed(f"{proc.name} did not listen on {host}:{port} in {timeout:.0f}s")


def python_cmd(module: str, *args: str) -> list[str]:
    """Run a module of this checkout with the current interpreter."""
    return [sys.executable, "-m", module, *args]
