"""What the suite adds to the process harness: pinning, open-file limits, CPU and memory.

Servers run on one core and load generators on another (``taskset``) so that a load
generator never steals the CPU of the server it measures. Starting, waiting for and
stopping children is :mod:`cache_edge.devtools.harness`, shared with the tests and
``cache-edge dev``.
"""

from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ROOT",
    "Pinning",
    "listen_overflows",
    "raise_fd_limit",
    "rss_bytes",
    "tree_cpu_seconds",
]

_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent  # the checkout: `python -m bench...` runs here


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


def rss_bytes(pid: int) -> int:
    """Resident memory (VmRSS) of a process and its descendants (a supervisor's workers)."""
    return sum(_rss(p) for p in _tree(pid))


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


def tree_cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU time of a process and its live descendants (pgpool forks); with
    ``reaped``, the exited ones too (their CPU is in their parent's cutime and cstime once
    waited for: PostgreSQL backends, recycled pgpool-II children)."""
    last = 15 if reaped else 13
    total = 0.0
    for current in _tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:last]) / _TICKS
    return total
