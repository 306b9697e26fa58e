"""Which faults a chaos run injects, when (from a seed), and how each is done and undone.

Faults never overlap: the next one starts only after the previous one was repaired,
every region was seen to recover, and its grace period is over, so that every error
can be pinned on exactly one fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.chaos.checker import TIMEOUT, Answer, Checker, FaultWindow
from bench.chaos.cluster import Cluster
from bench.chaos.load import RECOVERY_SQL, Load, Reply

__all__ = ["KINDS", "PlannedFault", "inject", "plan"]

KINDS = (
    "node_kill",
    "redis_restart",
    "redis_flushall",
    "redis_client_kill",
    "origin_kill",
    "origin_term",
    "pg_restart",
)
RESTART_COST = {"node_kill": 1.5, "origin_kill": 1.5, "origin_term": 1.5, "pg_restart": 1.0}
FIRST_FAULT = 4.0  # seconds of plain load before the first fault


@dataclass(frozen=True)
class PlannedFault:
    kind: str
    region: str | None  # None: shared by every region
    gap: float  # quiet seconds before it
    hold: float  # seconds the process stays down
    immediate: bool = False  # pg_restart: immediate (crash) rather than fast shutdown

    def describe(self) -> str:
        where = f" {self.region}" if self.region else ""
        how = {
            "node_kill": "SIGKILL the node, restart after",
            "redis_restart": "stop Redis (state lost), start after",
            "redis_flushall": "FLUSHALL",
            "redis_client_kill": "CLIENT KILL TYPE normal every 0.7s for",
            "origin_kill": "SIGKILL the origin, restart after",
            "origin_term": "SIGTERM the origin, restart after",
            "pg_restart": f"{'immediate' if self.immediate else 'fast'} shutdown, start after",
        }[self.kind]
        hold = "" if self.kind == "redis_flushall" else f" {self.hold:.1f}s"
        return f"{self.kind}{where}: {how}{hold}"


def plan(
    seed: int,
    seconds: float,
    regions: tuple[str, ...],
    *,
    short: bool,
    grace: float,
    sync_grace: float,
) -> list[PlannedFault]:
    """Every kind once in a seeded order, then seeded random kinds while ``seconds`` last.

    One origin outage outlasts ``sync_grace``, so that regions lose their lease.
    """
    rng = random.Random(seed)
    gap = (1.0, 3.0) if short else (5.0, 25.0)
    outage = (2.0, 4.0) if short else (3.0, 14.0)
    holds = {
        "node_kill": (0.2, 1.0) if short else (0.5, 3.0),
        "redis_restart": (0.5, 2.0) if short else (1.0, 5.0),
        "redis_flushall": (0.0, 0.0),
        "redis_client_kill": (2.0, 3.0) if short else (3.0, 10.0),
        "origin_kill": outage,
        "origin_term": outage,
        "pg_restart": (0.5, 2.0) if short else (1.0, 5.0),
    }
    kinds = list(KINDS)
    rng.shuffle(kinds)
    long_outage = next(k for k in kinds if k.startswith("origin"))
    faults: list[PlannedFault] = []
    budget = seconds - FIRST_FAULT
    while True:
        mandatory = len(faults) < len(kinds)
        kind = kinds[len(faults)] if mandatory else rng.choice(KINDS)
        lo, hi = holds[kind]
        if mandatory and kind == long_outage:
            lo, hi = sync_grace + 1.0, max(hi, sync_grace + 3.0)
        fault = PlannedFault(
            kind=kind,
            region=rng.choice(regions) if kind.startswith(("node", "redis")) else None,
            gap=round(rng.uniform(*gap), 1),
            hold=round(rng.uniform(lo, hi), 1),
            immediate=kind == "pg_restart" and rng.random() < 0.5,
        )
        if not mandatory and cost(fault, grace) > budget:
            return faults
        budget -= cost(fault, grace)
        faults.append(fault)


def cost(fault: PlannedFault, grace: float) -> float:
    """About how many seconds a fault takes, from its quiet gap to the end of its grace."""
    return fault.gap + fault.hold + RESTART_COST.get(fault.kind, 0.5) + grace


async def _hurt(cluster: Cluster, f: PlannedFault) -> None:
    """Do the fault and undo it; returns once the hurt process is healthy again."""
    if f.kind == "node_kill":
        assert f.region is not None
        await cluster.kill_node(f.region)
        await asyncio.sleep(f.hold)
        await cluster.start_node(f.region)
    elif f.kind == "redis_restart":
        assert f.region is not None
        await cluster.stop_redis(f.region)
        await asyncio.sleep(f.hold)
        await cluster.start_redis(f.region)
    elif f.kind == "redis_flushall":
        assert f.region is not None
        await cluster.flushall(f.region)
    elif f.kind == "redis_client_kill":
        assert f.region is not None
        deadline = time.monotonic() + f.hold
        while True:
            await cluster.kill_redis_clients(f.region)
            if time.monotonic() + 0.7 > deadline:
                break
            await asyncio.sleep(0.7)
    elif f.kind in ("origin_kill", "origin_term"):
        await cluster.stop_origin(signal.SIGKILL if f.kind == "origin_kill" else signal.SIGTERM)
        await asyncio.sleep(f.hold)
        await cluster.start_origin()
    elif f.kind == "pg_restart":
        await cluster.stop_postgres(f.immediate)
        await asyncio.sleep(f.hold)
        await cluster.start_postgres()
    else:  # pragma: no cover - plan() makes only the kinds above
        raise ValueError(f.kind)


async def _recovered(load: Load, region: str, deadline: float) -> float | None:
    """Seconds until ``region`` serves an uncached read, a cached read and applies a
    purge (all 200); None if not by ``deadline`` (monotonic), which no probe outlives."""
    started = time.monotonic()
    need = ["uncached", "cached", "purge"]
    while need and (left := deadline - time.monotonic()) > 0:
        what = need[0]
        if what == "purge":
            wait = min(2, int(left))
            purge = await load.purge(
                region, ["chaos_recovery"], op="recovery", wait=wait, timeout=left
            )
            ok = purge is not None and region in purge.applied
        else:
            body: dict[str, Any] = {"sql": RECOVERY_SQL, "params": [secrets.token_hex(6)]}
            if what == "cached":
                body["cacheStrategy"] = {"ttl": 5}
            reply = await load.post(region, "/v1/query", body, min(5.0, left))
            if reply.status != TIMEOUT:  # cut short by the bound: slow_recovery says it
                _observe(load, region, reply)
            ok = reply.status == 200
        if ok:
            need.pop(0)
        elif need:
            await asyncio.sleep(0.1)
    return None if need else time.monotonic() - started


def _observe(load: Load, region: str, reply: Reply) -> None:
    answer = Answer(
        op="recovery",
        region=region,
        started=reply.started,
        ended=reply.ended,
        status=reply.status,
        code=reply.code,
        request_id=reply.request_id,
        extra={"message": reply.message} if reply.message else {},
    )
    load.observe(answer)


@dataclass
class Injected:
    planned: PlannedFault
    window: FaultWindow
    recovery: dict[str, float | None]  # region -> seconds from repair to recovered


async def inject(
    cluster: Cluster,
    load: Load,
    checker: Checker,
    faults: list[PlannedFault],
    *,
    until: float,
    grace: float,
    recovery_bound: float,
    step: Callable[[str], None],
    t0: float,
) -> list[Injected]:
    """Inject ``faults`` one after another, each once the previous one's grace is over.

    The first of each kind always runs; the others only while they fit before ``until``.
    """
    done: list[Injected] = []
    kinds: set[str] = set()
    unrecovered: dict[str, str] = {}  # region -> the fault it never recovered from
    await _sleep_unless(load, FIRST_FAULT)
    for i, f in enumerate(faults, 1):
        await _sleep_unless(load, f.gap)
        late = time.monotonic() + f.hold + grace > until
        if load.stop.is_set() or (f.kind in kinds and late):
            break
        kinds.add(f.kind)
        window = FaultWindow(f.kind, f.region, time.monotonic(), grace=grace, detail=f.describe())
        checker.fault_started(window)
        step(f"[{window.start - t0:6.1f}s] fault {i}/{len(faults)}: {f.describe()}")
        await _hurt(cluster, f)
        window.repaired = time.monotonic()
        regions = [f.region] if f.region else sorted(load.regions)
        deadline = window.repaired + recovery_bound
        took = await asyncio.gather(*(_recovered(load, r, deadline) for r in regions))
        recovery = dict(zip(regions, took, strict=True))
        for region, seconds in recovery.items():
            before = unrecovered.pop(region, "") if seconds is not None else ""
            if seconds is None:
                before = unrecovered.setdefault(region, f"{f.kind} at {window.start - t0:.0f}s")
            checker.recovery(window, region, seconds, recovery_bound, since=before)
        shown = ", ".join(
            f"{r} {'never' if s is None else f'{s:.2f}s'}" for r, s in recovery.items()
        )
        down = window.repaired - window.start
        step(f"[{window.repaired - t0:6.1f}s]   repaired after {down:.1f}s; recovered: {shown}")
        done.append(Injected(f, window, recovery))
        await asyncio.sleep(max(0.0, window.repaired + grace - time.monotonic()))
    return done


async def _sleep_unless(load: Load, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(load.stop.wait(), seconds)
