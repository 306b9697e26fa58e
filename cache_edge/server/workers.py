"""Package workers runs N server processes on one port and keeps them running.

Each worker is a full `cache-edge node|origin` process binding the same port with
SO_REUSEPORT, so the kernel spreads connections over them and no byte passes
through the supervisor. The supervisor restarts a worker that dies (with a
per-slot backoff so a crash loop cannot spin), and on SIGTERM/SIGINT forwards
SIGTERM to every worker, which stops accepting, finishes in-flight requests
within its shutdown timeout and drains its pools; stragglers are killed after
``grace`` seconds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cache_edge.server.logs import get_logger

__all__ = ["Supervisor", "worker_argv"]

log = get_logger(__name__)

_POLL = 0.2
_MAX_BACKOFF = 10.0


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The supervisor's own arguments, minus ``--workers N``, plus ``--reuse-port``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return [*out, "--reuse-port"]


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    backoff: float = 0.5
    not_before: float = 0.0
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, argv: Sequence[str], workers: int, grace: float) -> None:
        self._cmd = [sys.executable, "-m", "cache_edge.cli", *worker_argv(argv)]
        self._slots = [_Slot(i) for i in range(workers)]
        self._grace = grace
        self._stopping = False

    def _spawn(self, slot: _Slot) -> None:
        slot.proc = subprocess.Popen(self._cmd)
        slot.started_at = time.monotonic()
        log.info("worker_started", slot=slot.index, pid=slot.proc.pid, restarts=slot.restarts)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            log.info("supervisor_stopping", signal=signal.Signals(signum).name)
        self._stopping = True

    def _forward_hup(self, _signum: int, _frame: object) -> None:
        # Config reload: every worker re-reads the file itself.
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGHUP)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._forward_hup)
        for slot in self._slots:
            self._spawn(slot)
        while not self._stopping:
            time.sleep(_POLL)
            now = time.monotonic()
            for slot in self._slots:
                assert slot.proc is not None
                code = slot.proc.poll()
                if code is None or self._stopping:
                    continue
                if slot.not_before == 0.0:
                    # A worker that ran a while before dying gets a fresh, short backoff.
                    if now - slot.started_at > 30:
                        slot.backoff = 0.5
                    slot.not_before = now + slot.backoff
                    slot.backoff = min(slot.backoff * 2, _MAX_BACKOFF)
                    log.error("worker_died", slot=slot.index, pid=slot.proc.pid, code=code)
                if now >= slot.not_before:
                    slot.restarts += 1
                    slot.not_before = 0.0
                    self._spawn(slot)
        return self._stop_all()

    def _stop_all(self) -> int:
        live = [s.proc for s in self._slots if s.proc is not None and s.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker_killed_after_grace", pid=proc.pid)
                proc.kill()
                proc.wait()
        log.info("supervisor_stopped")
        return 0
