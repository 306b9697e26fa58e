"""One chaos run from start to report: servers up, load and faults for a while, verdict.

``run_chaos(ChaosConfig(seconds=60, short=True), workdir)`` returns a JSON-able report:
operations, faults by kind, checks made, violations (the goal is none) with examples,
and the longest unavailability per fault kind. ``format_report`` prints it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.chaos.checker import Checker, Violation
from bench.chaos.cluster import API_KEY, Cluster
from bench.chaos.faults import FIRST_FAULT, Injected, PlannedFault, cost, inject, plan
from bench.chaos.load import Load

__all__ = ["ChaosConfig", "format_report", "run_chaos"]

READERS_PER_REGION = 5  # + 1 heartbeat, 1 purger, 1 writer per region, 1 purge-all: 17 clients


@dataclass(frozen=True)
class ChaosConfig:
    seconds: float = 300.0  # of load, faults included
    seed: int | None = None  # None: a new one (printed, so a run can be repeated)
    short: bool = False  # CI's form: short outages, every fault kind once
    grace: float = 5.0  # seconds after a repair in which the fault's own 5xx is still fine
    recovery_bound: float = 10.0  # seconds after a repair by which every region must recover
    think: float = 1.0  # scales the clients' pauses (lower: more load)
    regions: tuple[str, ...] = ("region-1", "region-2")
    # node.sync_grace: the short form lowers it so that its short outages outlast it too.
    sync_grace: float | None = None

    @property
    def lease(self) -> float:
        return self.sync_grace if self.sync_grace is not None else 2.0 if self.short else 10.0

    @classmethod
    def ci(cls, seed: int | None = None) -> ChaosConfig:
        """The short form CI runs: about a minute, every fault kind once."""
        return cls(seconds=50.0, seed=seed, short=True, grace=3.0)


def run_chaos(
    config: ChaosConfig, workdir: Path, step: Callable[[str], None] = print
) -> dict[str, Any]:
    seed = config.seed if config.seed is not None else secrets.randbelow(1_000_000)
    faults = plan(
        seed,
        config.seconds,
        config.regions,
        short=config.short,
        grace=config.grace,
        sync_grace=config.lease,
    )
    seconds = max(config.seconds, FIRST_FAULT + sum(cost(f, config.grace) for f in faults) + 2)
    step(
        f"chaos: seed {seed}, {seconds:.0f}s of load, {len(faults)} faults planned, "
        f"node.sync_grace {config.lease:g}s"
    )
    for i, f in enumerate(faults, 1):
        step(f"  plan {i}: after {f.gap:.1f}s quiet, {f.describe()}")
    step("starting PostgreSQL, 2 Redis, origin and 2 nodes (all private)")
    started = time.monotonic()
    node = {"sync_grace": config.lease}
    with Cluster(workdir, config.regions, node=node) as cluster:
        step(f"cluster up in {time.monotonic() - started:.1f}s; logs in {cluster.logs}")
        report = asyncio.run(_run(cluster, config, seconds, seed, faults, step))
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    report["logs"] = {"folder": str(cluster.logs), "not_json": _not_json(cluster.logs)}
    return report


def _not_json(folder: Path) -> dict[str, Any]:
    """cache-edge servers promise one JSON object per log line: count the other lines."""
    found: dict[str, Any] = {}
    for path in sorted(folder.glob("*.log")):
        if not path.name.startswith(("origin", "node")):
            continue
        bad = [
            line
            for line in path.read_text(errors="replace").splitlines()
            if line.strip() and not line.startswith("{")
        ]
        if bad:
            found[path.stem] = {"lines": len(bad), "first": bad[0][:200]}
    return found


async def _run(
    cluster: Cluster,
    config: ChaosConfig,
    seconds: float,
    seed: int,
    faults: list[PlannedFault],
    step: Callable[[str], None],
) -> dict[str, Any]:
    import asyncpg

    checker = Checker()
    shown: Counter[tuple[str, str]] = Counter()
    t0 = time.monotonic()

    def report(v: Violation) -> None:
        key = (v.kind, str(v.facts.get("sub", "")))
        shown[key] += 1
        if shown[key] <= 2:
            step(f"[{v.at - t0:6.1f}s] VIOLATION {v.kind}: {v.detail}")

    pool = await asyncpg.create_pool(cluster.dsn, min_size=0, max_size=3, command_timeout=5)
    regions = {r.name: r.url for r in cluster.regions}
    try:
        async with Load(checker, regions, API_KEY, pool, seed, think=config.think) as load:
            load.report = report
            await _all_regions_live(load)
            t0 = time.monotonic()
            until = t0 + seconds
            tasks = _clients(load)
            tasks.append(asyncio.create_task(_progress(load, checker, t0, step)))
            injector = asyncio.create_task(
                inject(
                    cluster,
                    load,
                    checker,
                    faults,
                    until=until,
                    grace=config.grace,
                    recovery_bound=config.recovery_bound,
                    step=step,
                    t0=t0,
                )
            )
            await asyncio.sleep(max(0.0, until - time.monotonic()))
            injected = await injector
            load.stop.set()
            end = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*tasks), load.timeouts.query + 30)
            missing = await _missing_writes(cluster.dsn, load.acknowledged)
            checker.writes_checked(len(load.acknowledged), missing)
            return _report(config, seed, t0, end, checker, injected, load, faults)
    finally:
        await pool.close()


def _clients(load: Load) -> list[asyncio.Task[None]]:
    tasks = []
    for n, region in enumerate(sorted(load.regions)):
        for i in range(READERS_PER_REGION):
            tasks.append(asyncio.create_task(load.reader(f"reader-{region}-{i}", region)))
        tasks.append(asyncio.create_task(load.heartbeat(f"heartbeat-{region}", region)))
        tasks.append(asyncio.create_task(load.purger(f"purger-{region}", region)))
        tasks.append(asyncio.create_task(load.writer(f"writer-{region}", region, n)))
    tasks.append(asyncio.create_task(load.purge_all("purge-all")))
    return tasks


async def _all_regions_live(load: Load, timeout: float = 30.0) -> None:
    """Regions register with the origin on their first poll: purge until all apply."""
    deadline = time.monotonic() + timeout
    first = sorted(load.regions)[0]
    while time.monotonic() < deadline:
        purge = await load.purge(first, ["chaos_warmup"], op="warmup", wait=5)
        if purge is not None and purge.applied >= set(load.regions):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"not every region applied a purge within {timeout:.0f}s")


async def _progress(load: Load, checker: Checker, t0: float, step: Callable[[str], None]) -> None:
    while not load.stop.is_set():
        try:
            await asyncio.wait_for(load.stop.wait(), 10)
        except TimeoutError:
            ops = sum(checker.ops.values())
            step(
                f"[{time.monotonic() - t0:6.1f}s] {ops:,} answers, "
                f"{len(checker.violations)} violations so far"
            )


async def _missing_writes(dsn: str, acknowledged: list[str]) -> list[str]:
    """Acknowledged writes that are not in the database (asked directly, not via the edge)."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch("SELECT id FROM chaos_writes WHERE id = ANY($1)", acknowledged)
    finally:
        await conn.close()
    present = {r["id"] for r in rows}
    return [i for i in acknowledged if i not in present]


def _report(
    config: ChaosConfig,
    seed: int,
    t0: float,
    end: float,
    checker: Checker,
    injected: list[Injected],
    load: Load,
    planned: list[PlannedFault],
) -> dict[str, Any]:
    per_kind: dict[str, dict[str, Any]] = {}
    faults = []
    for item in injected:
        w = item.window
        assert w.repaired is not None
        regions = [w.region] if w.region else sorted(load.regions)
        stop = min(w.repaired + w.grace, end)
        any_gap = max(checker.longest_gap(r, w.start, stop) for r in regions)
        origin_gap = max(checker.longest_gap(r, w.start, stop, origin=True) for r in regions)
        recovered = [s for s in item.recovery.values() if s is not None]
        kind = per_kind.setdefault(
            w.kind,
            {
                "count": 0,
                "longest_no_answer_s": 0.0,
                "longest_no_uncached_answer_s": 0.0,
                "longest_recovery_s": 0.0,
                "not_recovered": 0,  # regions that did not recover within the bound
            },
        )
        kind["count"] += 1
        kind["longest_no_answer_s"] = round(max(kind["longest_no_answer_s"], any_gap), 2)
        kind["longest_no_uncached_answer_s"] = round(
            max(kind["longest_no_uncached_answer_s"], origin_gap), 2
        )
        kind["longest_recovery_s"] = round(max([kind["longest_recovery_s"], *recovered]), 2)
        kind["not_recovered"] += len(item.recovery) - len(recovered)
        faults.append(
            {
                "kind": w.kind,
                "t": round(w.start - t0, 1),
                "region": w.region,
                "detail": w.detail,
                "down_s": round(w.repaired - w.start, 2),
                "recovery_s": {
                    r: (None if s is None else round(s, 2)) for r, s in item.recovery.items()
                },
                "no_answer_s": round(any_gap, 2),
                "no_uncached_answer_s": round(origin_gap, 2),
            }
        )
    return {
        "seed": seed,
        "config": asdict(config),
        "load_seconds": round(end - t0, 1),
        "operations": {
            "total": sum(checker.ops.values()),
            "by_op": dict(checker.ops),
            "outcomes": dict(sorted(checker.statuses.items())),
            "failed": dict(checker.failed),
            "purges_answered": len(checker.purges),
            "writes_acknowledged": len(load.acknowledged),
        },
        "faults": {
            "planned": len(planned),
            "injected": len(injected),
            "by_kind": {k: int(v["count"]) for k, v in per_kind.items()},
            "list": faults,
        },
        "unavailability": per_kind,
        "latency_ms": {op: _summary(xs) for op, xs in checker.latencies.items()},
        "checks": {"total": sum(checker.checks.values()), **dict(checker.checks)},
        "violations": {
            "total": len(checker.violations),
            "by_kind": dict(checker.by_kind),
            "by_detail": {f"{k} / {s}" if s else k: n for (k, s), n in checker.by_detail.items()},
            "examples": [
                {
                    "kind": v.kind,
                    "t": round(v.at - t0, 1) if v.at else None,
                    "detail": v.detail,
                    "facts": _jsonable(v.facts),
                }
                for v in checker.kept
            ],
        },
    }


def _summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in seconds)
    return {
        "count": len(ms),
        "p50": round(ms[len(ms) // 2], 2),
        "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
        "max": round(ms[-1], 2),
    }


def _jsonable(facts: Any) -> dict[str, Any]:
    return {
        str(k): (v if isinstance(v, (str, int, float, bool, list, type(None))) else str(v))
        for k, v in dict(facts).items()
    }


def format_report(r: dict[str, Any]) -> str:
    ops, v = r["operations"], r["violations"]
    by_op = ", ".join(f"{k} {n:,}" for k, n in ops["by_op"].items())
    lines = [
        f"chaos run: seed {r['seed']}, {r['load_seconds']}s of load "
        f"({r.get('wall_seconds', '?')}s in all)",
        f"operations: {ops['total']:,} ({by_op}); {ops['purges_answered']} purges answered, "
        f"{ops['writes_acknowledged']} writes acknowledged",
        "faults: " + ", ".join(f"{k} x{n}" for k, n in r["faults"]["by_kind"].items()),
        f"checks: {r['checks']['total']:,} "
        f"({', '.join(f'{k} {n:,}' for k, n in r['checks'].items() if k != 'total')})",
        f"violations: {v['total']}",
    ]
    lines += [f"  {k}: {n}" for k, n in sorted(v["by_detail"].items(), key=lambda x: -x[1])]
    lines.append(
        "longest unavailability per fault kind (no 200 at all / no uncached 200 / "
        "recovery after repair):"
    )
    for kind, u in r["unavailability"].items():
        never = (
            f" ({u['not_recovered']} region(s) not within the bound)" if u["not_recovered"] else ""
        )
        lines.append(
            f"  {kind:<17} {u['longest_no_answer_s']:6.2f}s / "
            f"{u['longest_no_uncached_answer_s']:6.2f}s / {u['longest_recovery_s']:6.2f}s{never}"
        )
    for server, bad in r.get("logs", {}).get("not_json", {}).items():
        lines.append(f"log lines that are not JSON: {server} {bad['lines']} ({bad['first']!r})")
    if v["examples"]:
        lines.append("examples:")
        seen: set[tuple[str, str]] = set()
        for ex in v["examples"]:
            key = (ex["kind"], str(ex["facts"].get("sub", "")))
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"  - {ex['kind']}: {ex['detail']}")
    return "\n".join(lines)
