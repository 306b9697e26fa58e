"""workers: hit throughput of ``cache-edge node --workers 1`` vs ``--workers 2``.

Runs only if the node has a ``--workers`` flag (read from ``--help``). Two workers
need two cores, so here the node is not pinned; wrk still runs on the load core
and so competes with the second worker, which the result notes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import msgpack

from bench.context import Context
from bench.procs import ROOT
from bench.scenarios.base import ScenarioResult, Skip, measure_rounds, ratio, wrk_variant
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


def run(ctx: Context) -> ScenarioResult:
    if not workers_flag_exists():
        raise Skip("`cache-edge node` has no --workers option yet (checked `node --help`)")
    if not ctx.tools.has("wrk"):
        raise Skip(ctx.tools.missing_reason("wrk"))
    result = ScenarioResult("workers", TITLE)
    body = query_body(HIT_SQL, HIT_PARAMS, ttl=3600)
    with Stack(ctx, "workers") as st:
        config = st.config(ctx.bench_dsn())
        origin = st.origin(config)
        redis_url = st.redis()
        variants = []
        for n in (1, 2):
            node = st.node(
                config,
                region="bench-1",
                redis_url=redis_url,
                origin_url=origin.url,
                name=f"node-workers-{n}",
                extra_args=("--workers", str(n)),
                pinned=False,
            )
            st.prime(node, msgpack.packb(body))
            variants.append(
                wrk_variant(
                    ctx,
                    f"workers-{n}",
                    f"node --workers {n}",
                    node_plan(ctx, node, body),
                    CONNECTIONS,
                    _pid_of(node.proc),
                )
            )
        result.measurements = measure_rounds(ctx, variants, ctx.budget.rounds)
    one, two = result.get("workers-1"), result.get("workers-2")
    assert one and two
    result.ratios["workers_2_vs_1_rps"] = ratio(two.rps, one.rps)
    result.notes.append(
        "Nodes are not pinned here (two workers need two cores); wrk shares a core with them."
    )
    return result
