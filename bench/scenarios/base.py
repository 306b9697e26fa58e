"""What a scenario reports, and the interleaved-rounds measuring loop every scenario uses.

A scenario measures each of its variants (the system and its baselines) in
``rounds`` interleaved rounds - A, B, C, A, B, C, ... - so that a burst of noise
from the shared machine hits all of them alike, and reports the median of each
metric over the rounds. Ratios between variants are what a reader should trust.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.context import Context
from bench.load.run import run_loader
from bench.load.wrk import WrkPlan, run_wrk
from bench.procs import tree_cpu_seconds

__all__ = [
    "Measurement",
    "ScenarioResult",
    "Skip",
    "Target",
    "Variant",
    "loader_variant",
    "measure_rounds",
    "ratio",
    "summarize",
    "wrk_variant",
]


class Skip(Exception):
    """The scenario cannot run here; the message says exactly why."""


@dataclass
class Measurement:
    name: str
    label: str
    client: str
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float = 0.0
    p90_ms: float = 0.0
    max_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    error_detail: dict[str, Any] = field(default_factory=dict)
    server_cpu_us_per_request: float | None = None
    rounds: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Target:
    """A goal printed next to a result: measured, never asserted."""

    name: str
    goal: str
    measured: str
    met: bool | None  # None: could not be judged (a leg was skipped)


@dataclass
class ScenarioResult:
    name: str
    title: str
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    seconds: float = 0.0
    measurements: list[Measurement] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Measurement | None:
        return next((m for m in self.measurements if m.name == name), None)

    def headline(self) -> str:
        if self.status != "ok":
            return f"{self.status}: {self.reason.splitlines()[0] if self.reason else ''}"
        met = [t.met for t in self.targets if t.met is not None]
        targets = f"targets {sum(met)}/{len(met)} met" if met else ""
        first = self.measurements[0] if self.measurements else None
        lead = f"{first.label}: {first.rps:,.0f} req/s, p50 {first.p50_ms:.2f} ms" if first else ""
        return " · ".join(x for x in (lead, targets) if x)


@dataclass
class Variant:
    """One thing to measure: ``run`` returns a load summary (rps, p50_ms, p99_ms, ...)."""

    name: str
    label: str
    run: Callable[[], dict[str, Any]]
    warm: Callable[[], object] | None = None
    cpu_pids: Callable[[], Sequence[int]] | None = None  # servers whose CPU time to charge


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


def measure_rounds(ctx: Context, variants: list[Variant], rounds: int) -> list[Measurement]:
    """Measure every variant ``rounds`` times, interleaved; report per-metric medians."""
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    for r in range(rounds):
        for v in variants:
            ctx.step(f"{v.label} (round {r + 1}/{rounds})")
            if v.warm is not None:
                v.warm()
            pids = list(v.cpu_pids()) if v.cpu_pids is not None else []
            cpu_before = sum(tree_cpu_seconds(p) for p in pids)
            summary = v.run()
            if pids and summary.get("requests"):
                cpu = sum(tree_cpu_seconds(p) for p in pids) - cpu_before
                summary["server_cpu_us_per_request"] = round(cpu / summary["requests"] * 1e6, 1)
            runs[v.name].append(summary)
    return [summarize(v.name, v.label, runs[v.name]) for v in variants]


def summarize(name: str, label: str, got: list[dict[str, Any]]) -> Measurement:
    """One variant's rounds as a Measurement: per-metric medians, summed counts."""
    cpu_us = [s["server_cpu_us_per_request"] for s in got if "server_cpu_us_per_request" in s]
    detail: dict[str, Any] = {}
    for s in got:
        for key in ("errors", "refused_kinds", "statuses", "cache_statuses", "outcomes"):
            value = s.get(key)
            if isinstance(value, dict):
                bucket = detail.setdefault(key, {})
                for k, n in value.items():
                    bucket[k] = bucket.get(k, 0) + n
    return Measurement(
        name=name,
        label=label,
        client=str(got[0].get("client", "")),
        rps=_median([s["rps"] for s in got]),
        p50_ms=_median([s["p50_ms"] for s in got]),
        p99_ms=_median([s["p99_ms"] for s in got]),
        mean_ms=_median([s.get("mean_ms", 0.0) for s in got]),
        p90_ms=_median([s.get("p90_ms", 0.0) for s in got]),
        max_ms=max(s.get("max_ms", 0.0) for s in got),
        requests=sum(int(s["requests"]) for s in got),
        errors=sum(int(s.get("error_count", 0)) for s in got),
        error_detail=detail,
        server_cpu_us_per_request=_median(cpu_us) if cpu_us else None,
        rounds=[
            {k: s[k] for k in ("rps", "p50_ms", "p99_ms") if k in s}
            | ({"deciles_ms": s["deciles_ms"]} if "deciles_ms" in s else {})
            for s in got
        ],
        extra={k: got[-1][k] for k in ("connected", "refused", "client_cpu") if k in got[-1]},
    )


def wrk_variant(
    ctx: Context,
    name: str,
    label: str,
    plan: WrkPlan | Callable[[], WrkPlan],
    connections: int,
    pids: Callable[[], Sequence[int]] | None = None,
    *,
    timeout: int = 10,
) -> Variant:
    """A variant driven by wrk, warmed by a short wrk run of its own.

    ``plan`` may be a function returning a new plan per run (never-seen keys each time).
    """
    workdir = ctx.tmp / "wrk" / name

    def run(duration: int) -> dict[str, Any]:
        return run_wrk(
            ctx.tools.path("wrk"),
            plan() if callable(plan) else plan,
            connections=connections,
            duration=duration,
            workdir=workdir,
            pinning=ctx.pinning,
            timeout=timeout,
        )

    return Variant(
        name,
        label,
        run=lambda: run(ctx.budget.duration),
        warm=lambda: run(ctx.budget.warmup),
        cpu_pids=pids,
    )


def loader_variant(
    ctx: Context, name: str, label: str, kind: str, spec: dict[str, Any], timeout: float = 300
) -> Variant:
    """A variant driven by a Python load generator (bench.load), warmup included in the run."""
    full = {"duration": ctx.budget.duration, "warmup": ctx.budget.warmup, **spec}
    return Variant(name, label, run=lambda: run_loader(kind, full, ctx.pinning, timeout))


def timed(fn: Callable[[], ScenarioResult]) -> ScenarioResult:
    started = time.monotonic()
    result = fn()
    result.seconds = round(time.monotonic() - started, 1)
    return result
