"""hit: one node serving ttl hits of a ~1 KB result, against two bare aiohttp handlers.

Baselines: (a) a handler that answers the node's own hit bytes without any work,
the ceiling of aiohttp on this core; (b) a handler doing one redis-py GET per
request, the least a Redis-backed cache must do. The node as configured by default
answers a repeated key from its in-process hot tier; a second node with the hot
tier off (``memory_cache_mb = 0``) shows a hit from the region's Redis. The same
key is asked for in msgpack and in JSON (request body, ``Accept`` and answer), in the
same run: the targets judge the default node in both, against the same baselines
(which answer the msgpack bytes), and the node is then profiled with py-spy under
each load. A third handler answers the fixed bytes from aiohttp's low-level server
(no Application, router or middleware): how much a leaner path inside aiohttp saves.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import urllib.request

import msgpack
import redis

from bench.context import Context
from bench.load.wrk import WrkPlan, wrk_command
from bench.profile import record
from bench.scenarios.base import (
    ScenarioResult,
    Skip,
    Target,
    measure_rounds,
    ratio,
    wrk_variant,
)
from bench.scenarios.common import HIT_PARAMS, HIT_SQL, node_plan, query_body, start_edge
from bench.stack import Stack, metrics

CONNECTIONS = 50
TITLE = "ttl hits of a ~1 KB result, 50 connections, vs bare aiohttp handlers"


def run(ctx: Context) -> ScenarioResult:
    if not ctx.tools.has("wrk"):
        raise Skip(ctx.tools.missing_reason("wrk"))
    result = ScenarioResult("hit", TITLE)
    with Stack(ctx, "hit") as st:
        edge = start_edge(st, ctx.bench_dsn())
        node = edge.node
        body = query_body(HIT_SQL, HIT_PARAMS, ttl=3600)
        answer = st.prime(node, _packed(body))
        result.extra["response_bytes"] = len(answer)
        json_plan = _json_plan(node_plan(ctx, node, body), body)
        result.extra["response_bytes_json"] = len(_json_answer(json_plan))
        ctx.step("starting a node with the hot tier off, and the baseline handlers")
        cold_config = st.config(ctx.bench_dsn(), node={"memory_cache_mb": 0}, name="no-hot.toml")
        redis_node = st.node(
            cold_config,
            region="bench-1",
            redis_url=edge.redis_urls[0],
            origin_url=edge.origin.url,
            name="node-hot-tier-off",
        )
        st.prime(redis_node, _packed(body))
        fixed = st.baseline_fixed(answer)
        lean = st.baseline_fixed(answer, "fixed-body-lowlevel", mode="fixed-lowlevel")
        client = redis.Redis.from_url(edge.redis_urls[0])
        client.set("bench:hit", answer)
        client.close()
        redis_get = st.baseline_redis(edge.redis_urls[0], "bench:hit")

        def plan_for(url: str) -> WrkPlan:
            return WrkPlan(url=url, path="/v1/query", body=_packed(body), authorization="")

        variants = [
            wrk_variant(
                ctx, "node", "cache-edge node (ttl hit)", node_plan(ctx, node, body),
                CONNECTIONS, lambda: [node.proc.pid],
            ),
            wrk_variant(
                ctx, "node-json", "cache-edge node (ttl hit), JSON", json_plan,
                CONNECTIONS, lambda: [node.proc.pid],
            ),
            wrk_variant(
                ctx, "node-redis", "cache-edge node, hot tier off (Redis hit)",
                node_plan(ctx, redis_node, body), CONNECTIONS, lambda: [redis_node.proc.pid],
            ),
            wrk_variant(
                ctx, "fixed-body", "bare aiohttp, fixed body", plan_for(fixed.url),
                CONNECTIONS, lambda: [fixed.proc.pid],
            ),
            wrk_variant(
                ctx, "redis-get", "bare aiohttp + one redis-py GET", plan_for(redis_get.url),
                CONNECTIONS, lambda: [redis_get.proc.pid],
            ),
            wrk_variant(
                ctx, "fixed-lowlevel", "bare aiohttp low-level server (no Application), fixed body",
                plan_for(lean.url), CONNECTIONS, lambda: [lean.proc.pid],
            ),
        ]  # fmt: skip
        result.measurements = measure_rounds(ctx, variants, ctx.budget.rounds)
        for m in result.measurements[:3]:
            statuses = m.error_detail.get("cache_statuses", {})
            if set(statuses) - {"ttl"}:
                result.notes.append(f"{m.label}: not every answer was a ttl hit: {statuses}")
        served = {
            name: metrics(server).get("cache_edge_node_memory_hits", 0.0)
            for name, server in (("node", node), ("node-redis", redis_node))
        }
        result.extra["hot_tier_hits"] = served
        total = result.measurements[0].requests
        result.notes.append(
            f"The default node answered {served['node']:,.0f} hits from its hot tier "
            f"(of {total:,} measured, plus warmup); the node with the hot tier off answered "
            f"{served['node-redis']:,.0f} from it: every one of its hits read Redis."
        )
        _profile(ctx, result, node.proc.pid, node_plan(ctx, node, body))
        _profile(ctx, result, node.proc.pid, json_plan, "json")

    n, nj, nr, f, r = (
        result.get(x) for x in ("node", "node-json", "node-redis", "fixed-body", "redis-get")
    )
    assert n and nj and nr and f and r
    result.ratios = {
        "node_vs_fixed_rps": ratio(n.rps, f.rps),
        "node_vs_redis_get_rps": ratio(n.rps, r.rps),
        "node_vs_fixed_p99": ratio(n.p99_ms, f.p99_ms),
        "json_node_vs_fixed_rps": ratio(nj.rps, f.rps),
        "json_node_vs_redis_get_rps": ratio(nj.rps, r.rps),
        "json_node_vs_fixed_p99": ratio(nj.p99_ms, f.p99_ms),
        "json_vs_msgpack_rps": ratio(nj.rps, n.rps),
        "redis_hit_node_vs_redis_get_rps": ratio(nr.rps, r.rps),
        "redis_hit_node_vs_fixed_rps": ratio(nr.rps, f.rps),
    }
    lean = result.get("fixed-lowlevel")
    if lean is not None:
        # What the leanest path inside aiohttp saves on the same answer (issue 18).
        result.ratios["fixed_lowlevel_vs_fixed_rps"] = ratio(lean.rps, f.rps)
    result.targets = []
    for fmt, m, prefix in (("msgpack", n, ""), ("JSON", nj, "json_")):
        vs_get, vs_fixed = (
            result.ratios[f"{prefix}node_vs_redis_get_rps"],
            result.ratios[f"{prefix}node_vs_fixed_rps"],
        )
        p99 = result.ratios[f"{prefix}node_vs_fixed_p99"]
        result.targets += [
            Target(
                f"{fmt} hit throughput vs redis-py GET handler",
                ">= 1.5x",
                f"{vs_get:.2f}x",
                vs_get >= 1.5,
            ),
            Target(
                f"{fmt} hit throughput vs fixed-body handler",
                ">= 0.7x",
                f"{vs_fixed:.2f}x",
                vs_fixed >= 0.7,
            ),
            Target(
                f"{fmt} hit p99 vs fixed-body p99",
                "<= 2x",
                f"{p99:.2f}x ({m.p99_ms:.2f} vs {f.p99_ms:.2f} ms)",
                p99 <= 2.0,
            ),
        ]
    result.targets.append(
        Target(
            "JSON hit throughput vs msgpack hit throughput",
            ">= 0.9x",
            f"{result.ratios['json_vs_msgpack_rps']:.2f}x",
            result.ratios["json_vs_msgpack_rps"] >= 0.9,
        )
    )
    return result


def _packed(body: dict[str, object]) -> bytes:
    return bytes(msgpack.packb(body))


def _json_plan(plan: WrkPlan, body: dict[str, object]) -> WrkPlan:
    """The same request as JSON: a JSON body, and a JSON answer asked for."""
    return dataclasses.replace(
        plan,
        body=json.dumps(body).encode(),
        content_type="application/json",
        accept="application/json",
    )


def _json_answer(plan: WrkPlan) -> bytes:
    """One JSON answer (its size goes in the report); it must be a hit, like every other."""
    assert plan.body is not None
    request = urllib.request.Request(
        plan.url + plan.path,
        data=plan.body,
        headers={
            "Content-Type": plan.content_type,
            "Accept": plan.accept,
            "Authorization": plan.authorization,
        },
    )
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(request, timeout=10) as reply:
        status = reply.headers.get("X-Cache-Status")
        if status != "ttl":
            raise RuntimeError(f"a JSON request was not a hit: {status}")
        return bytes(reply.read())


def _profile(ctx: Context, result: ScenarioResult, pid: int, plan: WrkPlan, fmt: str = "") -> None:
    """py-spy the node while wrk keeps it busy; skipped (with the reason) without py-spy.

    ``fmt`` names a second profile (``json``): ``extra["profile_json"]``, its own SVG."""
    key = f"profile_{fmt}" if fmt else "profile"
    if not ctx.tools.has("py-spy"):
        result.extra[key] = {"skipped": ctx.tools.missing_reason("py-spy")}
        return
    seconds = ctx.budget.profile_seconds
    ctx.step(f"profiling the node{' (' + fmt + ')' if fmt else ''} with py-spy ({2 * seconds} s)")
    cmd = wrk_command(
        ctx.tools.path("wrk"),
        plan,
        connections=CONNECTIONS,
        duration=2 * seconds + 3,
        workdir=ctx.tmp / "wrk" / "profile",
        pinning=ctx.pinning,
    )
    load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stem = f"hit-{fmt}-profile" if fmt else "hit-profile"
        svg = ctx.out_dir / f"{stem}.svg"
        summary = record(
            ctx.tools.path("py-spy"), pid, seconds, svg, ctx.tmp / f"{stem}.txt", ctx.pinning
        )
        summary["flamegraph"] = svg.name
        result.extra[key] = summary
    except RuntimeError as exc:
        result.extra[key] = {"skipped": str(exc)}
    finally:
        load.terminate()
        load.wait(10)


__all__ = ["TITLE", "run"]
