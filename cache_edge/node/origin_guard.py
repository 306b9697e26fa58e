"""Package origin_guard bounds what one node process waits on the origin, and fails fast
while the origin is down.

Without it a hung origin (stopped, partitioned, swapping) holds every miss for the
whole ``origin_timeout``, and a flood of misses piles up without limit. Two rules, per
process, for the calls clients wait on (queries, transactions, purges; not the
long-polls, which wait by design):

1. **A bound on waiting calls.** At most ``max_waiting`` calls at once, queued for one
   of the origin connections or in flight. One more is refused at once with
   :class:`OriginOverloaded` (503, ``Retry-After``) instead of joining a queue that is
   not draining.
2. **A circuit breaker.** After ``failures`` consecutive calls that could not reach the
   origin (refused, reset, timed out, garbage instead of an answer), the circuit opens:
   calls fail at once with :class:`OriginDown` (503, ``Retry-After`` = until the next
   probe) for ``probe_interval`` seconds. Then exactly one call goes through as a probe;
   while it runs the others still fail fast. If it reaches the origin the circuit
   closes; if not, it stays open for another interval. The interval does not grow: one
   call per interval per process is no load for an origin, and a short one means a
   node notices within about a second that the origin is back.

Any answer from the origin, an error body included (``query_error``,
``database_unavailable``...), proves it reachable: it resets the count and closes the
circuit. Both errors subclass :class:`OriginUnavailable`, so the read path serves a
stale entry in their place where the strategy allows it (``staleIfError``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from cache_edge.common.errors import CacheEdgeError, OriginDown, OriginOverloaded, OriginUnavailable
from cache_edge.server.logs import get_logger

__all__ = ["OriginGuard"]

log = get_logger(__name__)

# Failures the guard raises itself: they say nothing about the origin.
_OWN = (OriginOverloaded, OriginDown)


class OriginGuard:
    def __init__(
        self,
        *,
        max_waiting: int,
        failures: int,
        probe_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_waiting < 1 or failures < 1 or probe_interval <= 0:
            raise ValueError("max_waiting and failures must be at least 1, an interval > 0")
        self.max_waiting = max_waiting
        self._threshold = failures
        self._interval = probe_interval
        self._clock = clock
        self.waiting = 0  # calls admitted and not finished: queued or in flight
        self.shed = 0  # calls refused by the bound (for tests and diagnostics)
        self.short_circuited = 0  # calls refused while the circuit was open
        self._failures = 0  # consecutive calls that could not reach the origin
        self._open_until = 0.0  # 0: closed; else when the next probe may go
        self._probing = False  # the one probe call is in flight

    @property
    def is_open(self) -> bool:
        return self._open_until > 0

    def admit(self) -> _Admission:
        """Run one origin call under the bound and the breaker, and learn from its end:
        ``with guard.admit(): ...``.

        Raises OriginOverloaded or OriginDown before anything is sent.
        """
        return _Admission(self)

    def _admit_or_raise(self) -> bool:
        """Whether this call is the probe; raises if it may not go at all."""
        probe = False
        if self._open_until:
            now = self._clock()
            if self._probing or now < self._open_until:
                self.short_circuited += 1
                wait = self._open_until - now if now < self._open_until else self._interval
                raise OriginDown(
                    f"the origin is not answering; this node tries it again in {math.ceil(wait)} s",
                    retry_after=wait,
                )
            probe = True
        if self.waiting >= self.max_waiting:
            self.shed += 1
            raise OriginOverloaded(
                f"{self.waiting} requests of this node are already waiting for the origin",
                retry_after=1.0,
            )
        if probe:
            self._probing = True
        return probe

    def _reached(self) -> None:
        self._failures = 0
        if self._open_until:
            log.warning("origin_circuit_closed")
        self._open_until = 0.0
        self._probing = False

    def _failed(self, probe: bool) -> None:
        self._failures += 1
        if probe and self._probing:
            self._open(f"probe failed ({self._failures} consecutive failures)")
        elif not self._open_until and self._failures >= self._threshold:
            self._open(f"{self._failures} consecutive failures")

    def _abandon(self, probe: bool) -> None:
        if probe and self._probing:
            self._probing = False  # the next call probes instead

    def _open(self, why: str) -> None:
        self._open_until = self._clock() + self._interval
        self._probing = False
        log.warning("origin_circuit_open", reason=why, retry_in=self._interval)


class _Admission:
    """One admitted call (a class, not a generator: it runs for every origin call)."""

    __slots__ = ("_guard", "_probe")

    def __init__(self, guard: OriginGuard) -> None:
        self._guard = guard
        self._probe = False

    def __enter__(self) -> None:
        guard = self._guard
        self._probe = guard._admit_or_raise()
        guard.waiting += 1

    def __exit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> None:
        guard = self._guard
        guard.waiting -= 1
        if kind is None:
            guard._reached()
        elif issubclass(kind, _OWN):
            guard._abandon(self._probe)
        elif issubclass(kind, OriginUnavailable):
            guard._failed(self._probe)
        elif issubclass(kind, CacheEdgeError):
            guard._reached()  # the origin answered, if only with an error
        else:
            guard._abandon(self._probe)  # cancelled, or a bug: nothing learnt about the origin
