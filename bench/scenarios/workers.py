"""workers: hit throughput of ``cache-edge node --workers 1`` vs ``--workers 2``.

Runs only if the node has a ``--workers`` flag (read from ``--help``). The load
generator (wrk) is a third process, on the load core as everywhere else. On a machine
with two cores that is not a fair fight for two workers, so the scenario says how much
CPU each side really had:

* ``--workers 1`` is pinned to the server core: one whole core, which wrk never takes.
* ``--workers 2`` may use both cores, and shares the load core with wrk.

Each round records the cores the node's processes used and the cores wrk used (from
``/proc`` and the bench's reaped-children rusage), so the report gives throughput per
core the node used beside the raw ratio, and each worker's share of the work (SO_REUSEPORT
spreads connections by hash, not evenly). Only the raw ratio is a measurement of two free
cores' worth when the machine has more than two.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import msgpack

from bench.context import Context
from bench.procs import ROOT, tree_cpu_seconds
from bench.scenarios.base import (
    ScenarioResult,
    Skip,
    Variant,
    measure_rounds,
    ratio,
    wrk_variant,
)
from bench.scenarios.common import HIT_PARAMS, HIT_SQL, node_plan, query_body
from bench.stack import Stack
from cache_edge.devtools.harness import Child

__all__ = ["TITLE", "run", "workers_flag_exists"]

CONNECTIONS = 50
TITLE = "node hit throughput with --workers 1 vs --workers 2"


def workers_flag_exists() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "cache_edge.cli", "node", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    return "--workers" in done.stdout


def _pid_of(proc: Child) -> Callable[[], list[int]]:
    return lambda: [proc.pid]


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children (wrk runs to completion each round)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _workers(pid: int) -> list[int]:
    """The supervisor's direct children (its workers); none with ``--workers 1``."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _accounted(variant: Variant, pid: int, rounds: list[dict[str, Any]]) -> Variant:
    """The variant, with the CPU the node and the load generator used in each measured run."""
    measure = variant.run

    def run() -> dict[str, Any]:
        workers = _workers(pid)
        node_before = tree_cpu_seconds(pid)
        each_before = [tree_cpu_seconds(w) for w in workers]
        load_before = _children_cpu()
        summary = measure()
        seconds = float(summary.get("duration_s") or 0.0)
        if seconds > 0:
            node = tree_cpu_seconds(pid) - node_before
            each = [tree_cpu_seconds(w) - b for w, b in zip(workers, each_before, strict=True)]
            rounds.append(
                {
                    "rps": summary["rps"],
                    "node_cores": round(node / seconds, 3),
                    "load_cores": round((_children_cpu() - load_before) / seconds, 3),
                    "worker_shares": [round(e / sum(each), 3) for e in each] if sum(each) else [],
                }
            )
        return summary

    return dataclasses.replace(variant, run=run)


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in rounds), 3) if rounds else 0.0


def run(ctx: Context) -> ScenarioResult:
    if not workers_flag_exists():
        raise Skip("`cache-edge node` has no --workers option yet (checked `node --help`)")
    if not ctx.tools.has("wrk"):
        raise Skip(ctx.tools.missing_reason("wrk"))
    result = ScenarioResult("workers", TITLE)
    body = query_body(HIT_SQL, HIT_PARAMS, ttl=3600)
    accounts: dict[str, list[dict[str, Any]]] = {"workers-1": [], "workers-2": []}
    with Stack(ctx, "workers") as st:
        config = st.config(ctx.bench_dsn())
        origin = st.origin(config)
        redis_url = st.redis()
        variants = []
        for n in (1, 2):
            name = f"workers-{n}"
            node = st.node(
                config,
                region="bench-1",
                redis_url=redis_url,
                origin_url=origin.url,
                name=f"node-{name}",
                extra_args=("--workers", str(n)),
                pinned=n == 1,  # one worker: the server core; two: both cores
            )
            st.prime(node, msgpack.packb(body))
            variant = wrk_variant(
                ctx, name, f"node --workers {n}", node_plan(ctx, node, body), CONNECTIONS,
                _pid_of(node.proc),
            )  # fmt: skip
            variants.append(_accounted(variant, node.proc.pid, accounts[name]))
        result.measurements = measure_rounds(ctx, variants, ctx.budget.rounds)
    one, two = result.get("workers-1"), result.get("workers-2")
    assert one and two
    result.extra["cpu"] = accounts
    used = {name: _median(rounds, "node_cores") for name, rounds in accounts.items()}
    load = {name: _median(rounds, "load_cores") for name, rounds in accounts.items()}
    per_core = {
        name: ratio(m.rps, used[name]) for name, m in (("workers-1", one), ("workers-2", two))
    }
    result.ratios["workers_2_vs_1_rps"] = ratio(two.rps, one.rps)
    result.ratios["workers_2_vs_1_rps_per_node_core"] = ratio(
        per_core["workers-2"], per_core["workers-1"]
    )
    shares = [s for r in accounts["workers-2"] for s in r["worker_shares"]]
    cores = os.cpu_count() or 1
    result.notes.append(
        f"CPU in use (median of the rounds, in cores): --workers 1 node {used['workers-1']}, "
        f"wrk {load['workers-1']}; --workers 2 node {used['workers-2']}, wrk "
        f"{load['workers-2']}. Hits per second per core the node used: "
        f"{per_core['workers-1']:,.0f} with one worker, {per_core['workers-2']:,.0f} with two."
    )
    if shares:
        result.notes.append(
            f"Busiest worker's share of the two workers' CPU: {max(shares):.0%} "
            "(SO_REUSEPORT spreads connections by hash)."
        )
    if cores <= 2 and ctx.pinning.load is not None:
        result.notes.append(
            f"This machine has {cores} cores: --workers 1 ran on the server core alone, "
            "--workers 2 on both, sharing the load core with wrk (a third process). So the "
            "raw ratio is what a second, half-free core gives, not two free cores."
        )
    return result
