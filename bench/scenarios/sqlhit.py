"""sqlhit: ttl hits through the Neon-compatible ``POST /sql`` against ``/v1/query`` JSON hits.

The same ~1 KB result (ten pgbench accounts) is asked for through both doors of one node,
50 connections each, interleaved: ``/v1/query`` with a JSON body and a JSON answer, and
``/sql`` exactly as the Neon driver sends it (``Neon-Connection-String``, array mode, raw
text, the cache hint in the statement). The goal: a client of the compatible door does not
pay for the compatibility (at least 0.9x the native JSON hit's throughput).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from bench.context import TENANT, Context
from bench.load.wrk import WrkPlan, wrk_command
from bench.profile import record
from bench.scenarios.base import ScenarioResult, Skip, Target, measure_rounds, ratio, wrk_variant
from bench.scenarios.common import HIT_PARAMS, HIT_SQL, query_body, start_edge
from bench.stack import Stack

CONNECTIONS = 50
TITLE = "ttl hits through /sql (Neon's protocol) vs /v1/query JSON hits, 50 connections"


def _post(plan: WrkPlan) -> tuple[str, bytes]:
    assert plan.body is not None
    headers = {"Content-Type": plan.content_type, "Accept": plan.accept, **dict(plan.headers)}
    if plan.authorization:
        headers["Authorization"] = plan.authorization
    request = urllib.request.Request(plan.url + plan.path, data=plan.body, headers=headers)
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(request, timeout=10) as reply:
        return reply.headers.get("X-Cache-Status", "none"), bytes(reply.read())


def _prime(plan: WrkPlan) -> bytes:
    """Ask until the answer is a ttl hit (a fresh region stores nothing until it synced)."""
    import time

    deadline = time.monotonic() + 20
    while True:
        status, body = _post(plan)
        if status == "ttl":
            return body
        if time.monotonic() > deadline:
            raise RuntimeError(f"{plan.path}: no ttl hit in 20 s (last {status})")
        time.sleep(0.1)


def _profile(ctx: Context, pid: int, plan: WrkPlan, name: str) -> dict[str, Any]:
    """py-spy the node while wrk keeps it busy with ``plan`` (skipped without py-spy)."""
    if not ctx.tools.has("py-spy"):
        return {"skipped": ctx.tools.missing_reason("py-spy")}
    seconds = ctx.budget.profile_seconds
    ctx.step(f"profiling the node under {plan.path} hits with py-spy ({2 * seconds} s)")
    cmd = wrk_command(
        ctx.tools.path("wrk"),
        plan,
        connections=CONNECTIONS,
        duration=2 * seconds + 3,
        workdir=ctx.tmp / "wrk" / f"profile-{name}",
        pinning=ctx.pinning,
    )
    load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stem = f"sqlhit-{name}-profile"
        svg = ctx.out_dir / f"{stem}.svg"
        summary = record(
            ctx.tools.path("py-spy"), pid, seconds, svg, ctx.tmp / f"{stem}.txt", ctx.pinning
        )
        summary["flamegraph"] = svg.name
        return summary
    except RuntimeError as exc:
        return {"skipped": str(exc)}
    finally:
        load.terminate()
        load.wait(10)


def run(ctx: Context) -> ScenarioResult:
    if not ctx.tools.has("wrk"):
        raise Skip(ctx.tools.missing_reason("wrk"))
    result = ScenarioResult("sqlhit", TITLE)
    database = urlsplit(ctx.bench_dsn()).path.lstrip("/")
    with Stack(ctx, "sqlhit") as st:
        node = start_edge(st, ctx.bench_dsn()).node
        native = WrkPlan(
            url=node.url,
            path="/v1/query",
            body=json.dumps(query_body(HIT_SQL, HIT_PARAMS, ttl=3600)).encode(),
            authorization=ctx.authorization,
            content_type="application/json",
            accept="application/json",
        )
        neon = WrkPlan(
            url=node.url,
            path="/sql",
            body=json.dumps(
                {
                    "query": "/* cache ttl=3600 */ " + HIT_SQL,
                    "params": [str(p) for p in HIT_PARAMS],
                }
            ).encode(),
            content_type="text/plain;charset=UTF-8",
            accept="*/*",
            headers=(
                (
                    "Neon-Connection-String",
                    f"postgresql://{TENANT}:{ctx.api_key}@node.example/{database}",
                ),
                ("Neon-Raw-Text-Output", "true"),
                ("Neon-Array-Mode", "true"),
            ),
        )
        native_answer, neon_answer = _prime(native), _prime(neon)
        rows = json.loads(neon_answer)["rows"]
        if len(rows) != len(json.loads(native_answer)["rows"]):
            raise RuntimeError("the two doors answered different rows")
        result.extra["response_bytes"] = {
            "v1_query_json": len(native_answer),
            "sql": len(neon_answer),
        }
        variants = [
            wrk_variant(
                ctx, "v1-json", "/v1/query, JSON (ttl hit)", native, CONNECTIONS,
                lambda: [node.proc.pid],
            ),
            wrk_variant(
                ctx, "sql", "/sql, Neon's protocol (ttl hit)", neon, CONNECTIONS,
                lambda: [node.proc.pid],
            ),
        ]  # fmt: skip
        result.measurements = measure_rounds(ctx, variants, ctx.budget.rounds)
        for m in result.measurements:
            statuses = m.error_detail.get("cache_statuses", {})
            if set(statuses) - {"ttl"}:
                result.notes.append(f"{m.label}: not every answer was a ttl hit: {statuses}")
        for name, plan in (("sql", neon), ("v1-json", native)):
            result.extra[f"profile_{name}"] = _profile(ctx, node.proc.pid, plan, name)
    native_m, sql_m = result.get("v1-json"), result.get("sql")
    assert native_m and sql_m
    result.ratios = {
        "sql_vs_v1_json_rps": ratio(sql_m.rps, native_m.rps),
        "sql_vs_v1_json_p50": ratio(sql_m.p50_ms, native_m.p50_ms),
        "sql_vs_v1_json_p99": ratio(sql_m.p99_ms, native_m.p99_ms),
    }
    vs = result.ratios["sql_vs_v1_json_rps"]
    result.targets = [
        Target("/sql hit throughput vs /v1/query JSON hit", ">= 0.9x", f"{vs:.2f}x", vs >= 0.9)
    ]
    return result


__all__ = ["TITLE", "run"]
