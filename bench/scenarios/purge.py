"""purge: how long ``POST /v1/invalidate`` takes to be applied in all of 3 regions.

Three regions (a node and a private redis-server each) and one origin. Purges are
sent one after another to region 1 with ``wait: 10``; the answer comes once every
live region has applied the purge, and must name all three in ``appliedRegions``.
"""

from __future__ import annotations

import secrets
import time

import msgpack

from bench.context import Context
from bench.load.run import run_loader
from bench.scenarios.base import Measurement, ScenarioResult, Target
from bench.scenarios.common import start_edge
from bench.stack import Server, Stack, post
from cache_edge.devtools.harness import ProcessFailed

__all__ = ["TITLE", "run"]

REGIONS = ("region-1", "region-2", "region-3")
TITLE = "purge propagation to 3 regions: call to applied-everywhere time"


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("purge", TITLE)
    with Stack(ctx, "purge") as st:
        edge = start_edge(st, ctx.bench_dsn(), regions=REGIONS)
        ctx.step("waiting until all 3 regions apply purges")
        _wait_all_regions(ctx, edge.node)
        count = ctx.budget.purges
        ctx.step(f"{count} purges, one after another, wait 10 s each")
        spec = {
            "host": "127.0.0.1",
            "port": edge.node.port,
            "api_key": ctx.api_key,
            "count": count,
            "wait": 10,
            "regions": list(REGIONS),
            "tag_prefix": f"bench_{secrets.token_hex(4)}_",
        }
        summary = run_loader("purge", spec, ctx.pinning, timeout=60 + count * 11)
    result.measurements.append(
        Measurement(
            name="purge",
            label="purge, applied in 3 regions",
            client=summary["client"],
            rps=summary["rps"],
            p50_ms=summary["p50_ms"],
            p99_ms=summary["p99_ms"],
            mean_ms=summary["mean_ms"],
            p90_ms=summary["p90_ms"],
            max_ms=summary["max_ms"],
            requests=summary["requests"],
            errors=summary["error_count"],
            error_detail={"errors": summary["errors"], "samples": summary["incomplete_samples"]},
        )
    )
    result.extra["latencies_ms"] = summary["latencies_ms"]
    result.extra["slowest"] = summary["slowest"]
    complete = summary["requests"] - summary["incomplete"]
    result.targets.append(
        Target(
            "purges answered as applied in all 3 regions",
            f"{count}/{count}",
            f"{complete}/{count}",
            complete == count and not summary["errors"],
        )
    )
    return result


def _wait_all_regions(ctx: Context, node: Server, timeout: float = 60.0) -> None:
    """Regions register with the origin on their first poll: purge until all three answer."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        body = msgpack.packb({"tags": ["bench_warmup"], "wait": 5})
        reply = post(node.url + "/v1/invalidate", body, ctx.authorization)
        if reply.status == 200:
            last = reply.decoded()
            if isinstance(last, dict) and set(last.get("appliedRegions", [])) == set(REGIONS):
                return
        else:
            last = reply.body[:300]
        time.sleep(0.2)
    raise ProcessFailed(f"not every region applied a purge within {timeout:.0f}s: {last!r}")
