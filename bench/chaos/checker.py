"""The invariants of a chaos run, checked after every answer against what came before it.

Pure bookkeeping, no I/O: the load tells the checker what it sent and what came back,
the fault injector tells it which fault is in force, and the checker says at once
whether an answer broke an invariant. Tests feed it fabricated histories.

Freshness is judged without trusting the system under test. A probe row carries a
version that the load bumps (and waits for the commit) *before* it purges, and every
read returns ``clock_timestamp()`` from the database. When a purge answer lists region
R in ``appliedRegions``, a later read in R of anything carrying a purged tag must

1. return a version at least the one committed before the purge was sent, and
2. return rows produced (database clock) after the purge was sent.

Both are necessary consequences of README's guarantee 1; the second also catches
entries that a purge voided although their row did not change.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ALL",
    "CONNECTION_ERROR",
    "TIMEOUT",
    "Answer",
    "Checker",
    "FaultWindow",
    "Purge",
    "Violation",
]

ALL = "*"  # the pseudo-tag of a purge-all: it covers every read
TIMEOUT = -1  # Answer.status of a request the client gave up on
CONNECTION_ERROR = 0  # Answer.status of a request that got no HTTP answer at all

# Which 5xx (status, code) each fault may cause while in force and during its grace:
# README's errors table (origin_down: the node's breaker failing fast while the origin is
# down, a kind of origin_unavailable).
_ORIGIN_GONE = frozenset({(502, "origin_unavailable"), (503, "origin_down")})
ALLOWED_5XX: Mapping[str, frozenset[tuple[int, str]]] = {
    "origin_kill": _ORIGIN_GONE,
    "origin_term": _ORIGIN_GONE,
    "pg_restart": frozenset({(503, "database_unavailable")}),
}
# Faults whose region may refuse connections (its only node is down).
REFUSES_CONNECTIONS = frozenset({"node_kill"})
CLOCK_SLACK = 0.002  # seconds: Python's and PostgreSQL's reading of the same host clock


@dataclass
class FaultWindow:
    """One injected fault: in force from ``start`` until ``repaired``, plus the grace."""

    kind: str
    region: str | None  # None: every region (origin, PostgreSQL)
    start: float  # monotonic
    repaired: float | None = None  # monotonic; None while in force
    grace: float = 5.0
    detail: str = ""

    def covers(self, started: float, ended: float) -> bool:
        """Does a request that ran from ``started`` to ``ended`` overlap this fault + grace?"""
        if ended < self.start:
            return False
        return self.repaired is None or started <= self.repaired + self.grace

    def describe(self, at: float) -> str:
        if self.repaired is None or at <= self.repaired:
            phase = f"{at - self.start:+.1f}s into it"
        else:
            phase = f"{at - self.repaired:.1f}s after repair"
        where = f" in {self.region}" if self.region else ""
        return f"{self.kind}{where} ({phase})"


@dataclass(frozen=True)
class Purge:
    """A purge that was answered 200: where it applied and what it was sent after."""

    tags: frozenset[str]  # {ALL} for a purge-all
    sent_wall: float  # time.time() when sent (same host clock as the database's)
    answered: float  # monotonic
    applied: frozenset[str]
    floors: Mapping[str, int]  # key -> version committed before the purge was sent
    seq: int = 0
    region: str = ""


@dataclass(frozen=True)
class Answer:
    """One finished request: what was asked, where, when, and what came back."""

    op: str  # read | uncached | readback | purge | write | recovery
    region: str
    started: float  # monotonic
    ended: float  # monotonic
    status: int  # HTTP status, or TIMEOUT / CONNECTION_ERROR
    code: str = ""  # error code of a non-200 answer, or the exception's name
    key: str = ""  # the versioned thing a read returns
    tags: tuple[str, ...] = ()
    strategy: str = ""
    cache_status: str = ""
    version: int | None = None
    produced: float | None = None  # database clock, seconds since the epoch
    request_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str
    at: float  # monotonic
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class _Floor:
    """Purges covering one (region, tag), in answer order, with running maxima."""

    answered: list[float] = field(default_factory=list)
    sent_wall: list[float] = field(default_factory=list)  # running max
    sent_seqs: list[int] = field(default_factory=list)  # seq of the latest-sent one
    floors: list[dict[str, int]] = field(default_factory=list)  # running max per key
    seqs: list[int] = field(default_factory=list)  # seq that set each key's floor

    def add(self, purge: Purge) -> None:
        prev_floor = self.floors[-1] if self.floors else {}
        merged = dict(prev_floor)
        for key, version in purge.floors.items():
            if version > merged.get(key, -1):
                merged[key] = version
        self.answered.append(purge.answered)
        if self.sent_wall and self.sent_wall[-1] >= purge.sent_wall:
            self.sent_wall.append(self.sent_wall[-1])
            self.sent_seqs.append(self.sent_seqs[-1])
        else:
            self.sent_wall.append(purge.sent_wall)
            self.sent_seqs.append(purge.seq)
        self.floors.append(merged)
        self.seqs.append(purge.seq)

    def before(self, started: float) -> int:
        """Index of the last purge answered before ``started``, or -1."""
        return bisect.bisect_left(self.answered, started) - 1


class Checker:
    """Judges every answer as it arrives; keeps counts, violations and availability."""

    def __init__(self, *, max_examples: int = 5) -> None:
        self.faults: list[FaultWindow] = []
        self.violations: list[Violation] = []
        self.by_kind: Counter[str] = Counter()
        self.by_detail: Counter[tuple[str, str]] = Counter()
        self.checks: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()  # op -> answers other than 200
        self.latencies: dict[str, list[float]] = {}  # op -> seconds of each answer
        self.statuses: Counter[str] = Counter()
        self.successes: dict[str, list[float]] = {}  # region -> monotonic end of each 200
        self.origin_successes: dict[str, list[float]] = {}  # the same, uncached reads only
        self.purges: list[Purge] = []
        self._index: dict[tuple[str, str], _Floor] = {}
        self._examples: Counter[tuple[str, str]] = Counter()
        self.max_examples = max_examples
        self.kept: list[Violation] = []  # up to max_examples per (kind, sub-kind)

    # ------------------------------------------------------------------ faults

    def fault_started(self, fault: FaultWindow) -> None:
        self.faults.append(fault)

    def in_force(self, started: float, ended: float) -> list[FaultWindow]:
        return [f for f in self.faults if f.covers(started, ended)]

    # ------------------------------------------------------------------ purges

    def purge_answered(self, purge: Purge) -> None:
        """Register a purge answered 200; reads that start later are judged against it."""
        self.purges.append(purge)
        for region in purge.applied:
            for tag in purge.tags:
                self._index.setdefault((region, tag), _Floor()).add(purge)

    def _bounds(
        self, region: str, key: str, tags: Iterable[str], started: float
    ) -> tuple[int, int, float, int]:
        """Over every purge applied in ``region``, answered before ``started``, covering one
        of ``tags``: the highest version floor of ``key`` and the seq of a purge that set
        it, the latest send time and that purge's seq."""
        floor, floor_seq, sent, sent_seq = -1, 0, 0.0, 0
        for tag in (*tags, ALL):
            index = self._index.get((region, tag))
            if index is None:
                continue
            i = index.before(started)
            if i < 0:
                continue
            version = index.floors[i].get(key, -1)
            if version > floor:
                floor, floor_seq = version, index.seqs[i]
            if index.sent_wall[i] > sent:
                sent, sent_seq = index.sent_wall[i], index.sent_seqs[i]
        return floor, floor_seq, sent, sent_seq

    # ------------------------------------------------------------------ answers

    def observe(self, answer: Answer, committed_at_start: int | None = None) -> list[Violation]:
        """Judge one answer; returns the violations it caused (also kept on the checker).

        ``committed_at_start``: for an uncached read, the version of its key known to be
        committed when the read was sent (it must see at least that one).
        """
        found: list[Violation] = []
        self.ops[answer.op] += 1
        self.latencies.setdefault(answer.op, []).append(answer.ended - answer.started)
        if answer.status != 200:
            self.failed[answer.op] += 1
        label = answer.cache_status if answer.status == 200 else _status_label(answer)
        self.statuses[f"{answer.op}:{label}"] += 1
        found += self._judge_status(answer)
        if answer.status == 200:
            self.successes.setdefault(answer.region, []).append(answer.ended)
            if answer.op == "uncached":
                self.origin_successes.setdefault(answer.region, []).append(answer.ended)
            if answer.version is not None:
                found += self._judge_freshness(answer, committed_at_start)
        return found

    def _judge_status(self, a: Answer) -> list[Violation]:
        self.checks["status"] += 1
        if a.status == 200:
            return []
        faults = self.in_force(a.started, a.ended)
        context = "; ".join(f.describe(a.ended) for f in faults) or "no fault in force"
        facts = {
            "op": a.op,
            "region": a.region,
            "status": a.status,
            "code": a.code,
            "faults": context,
            "request_id": a.request_id,
            "seconds": round(a.ended - a.started, 3),
            **({"key": a.key, "strategy": a.strategy} if a.key else {}),
            **({"message": a.extra["message"]} if "message" in a.extra else {}),
        }
        if a.status == TIMEOUT:
            return [
                self._violation("hang", f"{a.op} in {a.region}: no answer ({context})", a, facts)
            ]
        if a.status == CONNECTION_ERROR:
            ok = any(f.kind in REFUSES_CONNECTIONS and f.region == a.region for f in faults)
            if ok:
                return []
            detail = f"{a.op} in {a.region}: {a.code} ({context})"
            return [self._violation("connection_error", detail, a, facts, sub=a.code)]
        said = f' "{a.extra["message"]}"' if a.extra.get("message") else ""
        if a.status >= 500:
            allowed = any((a.status, a.code) in ALLOWED_5XX.get(f.kind, ()) for f in faults)
            if allowed:
                return []
            detail = f"{a.op} in {a.region}: {a.status} {a.code}{said} ({context})"
            return [self._violation("unexpected_5xx", detail, a, facts, sub=f"{a.status} {a.code}")]
        # Every request the load sends is well-formed: a 4xx is a defect too.
        detail = f"{a.op} in {a.region}: {a.status} {a.code}{said} ({context})"
        return [self._violation("unexpected_4xx", detail, a, facts, sub=f"{a.status} {a.code}")]

    def _judge_freshness(self, a: Answer, committed_at_start: int | None) -> list[Violation]:
        assert a.version is not None
        found = []
        if a.op == "uncached":
            self.checks["uncached_read_after_commit"] += 1
            if committed_at_start is not None and a.version < committed_at_start:
                facts = self._read_facts(a) | {"committed_before_send": committed_at_start}
                detail = (
                    f"uncached read of {a.key} in {a.region} returned version {a.version}, "
                    f"but {committed_at_start} was committed before it was sent"
                )
                found.append(self._violation("uncached_stale_read", detail, a, facts))
            return found
        floor, floor_seq, sent, sent_seq = self._bounds(a.region, a.key, a.tags, a.started)
        if floor < 0 and sent == 0.0:
            return found  # no purge of its tags applied in its region yet: nothing to judge
        self.checks["freshness_after_purge"] += 1
        older = a.version < floor
        before = a.produced is not None and sent > 0.0 and a.produced < sent - CLOCK_SLACK
        if older or before:
            seq = floor_seq if older else sent_seq
            why = (
                f"version {a.version} < {floor} committed before purge seq {seq}"
                if older
                else f"rows produced {sent - (a.produced or 0.0):.3f}s before applied purge "
                f"seq {seq} of their tag was sent (version {a.version})"
            )
            faults = self.in_force(a.started, a.ended)
            facts = self._read_facts(a) | {
                "floor_version": floor,
                "purge_seq": seq,
                "produced_before_purge_s": round(sent - (a.produced or 0.0), 3),
                "faults": "; ".join(f.describe(a.ended) for f in faults) or "no fault in force",
            }
            detail = f"{a.op} {a.strategy} in {a.region} served {a.cache_status}: {why}"
            found.append(self._violation("purged_rows_served", detail, a, facts, a.cache_status))
        return found

    @staticmethod
    def _read_facts(a: Answer) -> dict[str, Any]:
        return {
            "op": a.op,
            "region": a.region,
            "key": a.key,
            "tags": list(a.tags),
            "strategy": a.strategy,
            "cache_status": a.cache_status,
            "version": a.version,
            "request_id": a.request_id,
            **dict(a.extra),
        }

    def _violation(
        self, kind: str, detail: str, a: Answer, facts: Mapping[str, Any], sub: str = ""
    ) -> Violation:
        return self._add(Violation(kind, detail, a.ended, dict(facts) | {"sub": sub}))

    def _add(self, v: Violation) -> Violation:
        """Count a violation; keep it as an example unless its sub-kind has enough."""
        key = (v.kind, str(v.facts.get("sub", "")))
        self.violations.append(v)
        self.by_kind[v.kind] += 1
        self.by_detail[key] += 1
        if self._examples[key] < self.max_examples:
            self._examples[key] += 1
            self.kept.append(v)
        return v

    # ------------------------------------------------------------------ other checks

    def recovery(
        self,
        fault: FaultWindow,
        region: str,
        seconds: float | None,
        bound: float,
        since: str = "",
    ) -> None:
        """A region answered again ``seconds`` after ``fault`` was repaired (None: not
        within ``bound``); ``since``: the earlier fault it has not recovered from yet."""
        self.checks["recovery"] += 1
        if seconds is None or seconds > bound:
            took = "not" if seconds is None else f"{seconds:.1f}s after repair, not"
            still = f"; down since {since}" if since and since != fault.kind else ""
            self._add(
                Violation(
                    "slow_recovery",
                    f"{region} after {fault.kind}: recovered {took} within {bound:.0f}s{still}",
                    fault.repaired or fault.start,
                    {"fault": fault.kind, "region": region, "seconds": seconds, "sub": fault.kind},
                )
            )

    def writes_checked(self, acknowledged: int, missing: list[str]) -> None:
        self.checks["acknowledged_write_present"] += acknowledged
        for ident in missing:
            detail = f"acknowledged write {ident} is not in the database"
            self._add(Violation("lost_write", detail, 0.0, {"id": ident, "sub": ""}))

    # ------------------------------------------------------------------ availability

    def longest_gap(self, region: str, start: float, end: float, *, origin: bool = False) -> float:
        """The longest stretch overlapping [start, end] in which ``region`` answered no
        request 200 (only uncached reads when ``origin``); ``end`` closes an open gap."""
        times = (self.origin_successes if origin else self.successes).get(region, [])
        cursor, longest = start, 0.0
        for t in times[bisect.bisect_left(times, start) :]:
            longest = max(longest, t - cursor)
            cursor = t
            if cursor >= end:
                break
        else:
            longest = max(longest, end - cursor)
        return longest


def _status_label(a: Answer) -> str:
    if a.status == TIMEOUT:
        return "timeout"
    if a.status == CONNECTION_ERROR:
        return "connection_error"
    return f"{a.status}:{a.code}"
