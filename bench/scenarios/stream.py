"""stream: change-stream latency and throughput at one region with 100 SSE subscribers.

The bench tenant opts in (``change_streams = true``, set up with the real setup command,
removed at the end). One origin, one node with its redis-server; 100 subscribers of
``GET /v1/stream`` in a separate load process (aiohttp, resuming with ``Last-Event-ID``
when cut off, as the SDK does). The suite process commits with asyncpg:

- **latency**: one-row transactions every 30 ms; commit-to-event is from COMMIT returning
  to each subscriber receiving the event (wall clocks of two processes on one machine).
- **burst**: 20,000 rows in 500-row transactions, as fast as PostgreSQL takes them;
  delivered events/s counts every event every subscriber received, from the first
  INSERT to the last delivery; the latency column is from each transaction's COMMIT
  to its last event at a subscriber.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from bench.capture import capture_tenant, table
from bench.context import Context
from bench.load.stats import summarize
from bench.procs import ROOT, tree_cpu_seconds
from bench.scenarios.base import Measurement, ScenarioResult, Target
from bench.scenarios.common import start_edge
from bench.stack import Stack
from cache_edge.devtools.harness import ProcessFailed

__all__ = ["TITLE", "run"]

TITLE = "change streams: commit-to-event latency and events/s, 100 subscribers, 1 region"
SUBSCRIBERS = 100
LATENCY_TABLE = "public.ce_stream_lat"
BURST_TABLE = "public.ce_stream_burst"
DDL = """
DROP TABLE IF EXISTS ce_stream_lat, ce_stream_burst;
CREATE TABLE ce_stream_lat (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE ce_stream_burst (id int PRIMARY KEY, pad text NOT NULL);
"""
INTERVAL = 0.03
BATCH = 500


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("stream", TITLE)
    dsn = ctx.bench_dsn()
    latency_rows = 50 if ctx.quick else 300
    burst_rows = 2_000 if ctx.quick else 20_000
    table(dsn, DDL)
    flags = {"change_streams": True}
    with Stack(ctx, "stream") as st, capture_tenant(st, flags):
        edge = start_edge(st, dsn, tenant=flags)
        spec = {
            "host": "127.0.0.1",
            "port": edge.node.port,
            "api_key": ctx.api_key,
            "subscribers": SUBSCRIBERS,
            "tables": f"{LATENCY_TABLE},{BURST_TABLE}",
            "burst_table": BURST_TABLE,
            "latency_rows": latency_rows,
            "burst_rows": burst_rows,
            "timeout": 60 + latency_rows * INTERVAL * 2 + burst_rows / 100,
        }
        ctx.step(f"{SUBSCRIBERS} subscribers connecting")
        loader = _start_loader(ctx, spec, st.dir / "sse-load.log")
        try:
            _wait_ready(loader, 60)
            ctx.step(f"latency: {latency_rows} one-row commits, then a {burst_rows:,}-row burst")
            pids = [edge.node.proc.pid, edge.origin.proc.pid]
            cpu: list[list[float]] = []
            writes = asyncio.run(
                _write(dsn, latency_rows, burst_rows, lambda: cpu.append(_cpu(pids)))
            )
            ctx.step("waiting for every subscriber to receive everything")
            out, _ = loader.communicate(timeout=float(spec["timeout"]) + 30)
            cpu.append(_cpu(pids))
            node_cpu, origin_cpu = (b - a for a, b in zip(cpu[0], cpu[1], strict=True))
            writes["server_cpu_seconds"] = node_cpu + origin_cpu
            writes["node_cpu_seconds"], writes["origin_cpu_seconds"] = node_cpu, origin_cpu
        finally:
            if loader.poll() is None:
                loader.kill()
                loader.wait(5)
        summary = _parse(out, loader.returncode)
    _report(result, summary, writes, latency_rows, burst_rows)
    return result


def _start_loader(ctx: Context, spec: dict[str, Any], log: Any) -> subprocess.Popen[str]:
    cmd = [*ctx.pinning.prefix(ctx.pinning.load), sys.executable, "-m", "bench.load", "sse"]
    return subprocess.Popen(
        [*cmd, json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        cwd=ROOT,
    )


def _wait_ready(loader: subprocess.Popen[str], timeout: float) -> None:
    """The loader prints BENCH_READY once every subscriber has its ``ready`` event."""
    assert loader.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = loader.stdout.readline()
        if line.startswith("BENCH_READY"):
            return
        if not line and loader.poll() is not None:
            raise ProcessFailed(f"the SSE load generator exited {loader.returncode} early")
    raise ProcessFailed(f"the subscribers were not all ready within {timeout:.0f}s")


def _parse(out: str, code: int | None) -> dict[str, Any]:
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            parsed: dict[str, Any] = json.loads(line[len("BENCH_JSON ") :])
            return parsed
    raise ProcessFailed(f"the SSE load generator exited {code} without a summary")


def _cpu(pids: list[int]) -> list[float]:
    return [tree_cpu_seconds(p) for p in pids]


async def _write(
    dsn: str, latency_rows: int, burst_rows: int, burst_starts: Callable[[], None]
) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn, timeout=10)
    commits: dict[int, float] = {}
    batches: list[float] = []
    try:
        for i in range(latency_rows):
            await conn.execute("INSERT INTO ce_stream_lat (id) VALUES ($1)", i)
            commits[i] = time.time()
            await asyncio.sleep(INTERVAL)
        await asyncio.sleep(1.0)  # the latency phase drains before the burst starts
        burst_starts()
        burst_start = time.time()
        for lo in range(0, burst_rows, BATCH):
            hi = min(burst_rows, lo + BATCH) - 1
            await conn.execute(
                "INSERT INTO ce_stream_burst SELECT g, repeat('x', 64) "
                "FROM generate_series($1::int, $2::int) g",
                lo,
                hi,
            )
            batches.append(time.time())
    finally:
        await conn.close()
    return {"commits": commits, "batches": batches, "burst_start": burst_start}


def _report(
    result: ScenarioResult,
    summary: dict[str, Any],
    writes: dict[str, Any],
    latency_rows: int,
    burst_rows: int,
) -> None:
    subs = summary["subscribers"]
    commits: dict[int, float] = writes["commits"]
    latencies = [
        recv - commits[int(row)]
        for s in subs
        for row, recv in s["latency_recv"].items()
        if int(row) in commits
    ]
    expected = latency_rows * len(subs)
    span = max(commits.values()) - min(commits.values()) + INTERVAL if commits else 1.0
    lat = summarize(latencies, span)
    missing = expected - len(latencies)
    result.measurements.append(
        Measurement(
            name="latency",
            label=f"commit → event, {len(subs)} subscribers, 1 row per commit",
            client=summary["client"],
            rps=lat["rps"],
            p50_ms=lat["p50_ms"],
            p99_ms=lat["p99_ms"],
            mean_ms=lat["mean_ms"],
            p90_ms=lat["p90_ms"],
            max_ms=lat["max_ms"],
            requests=len(latencies),
            errors=missing,
            error_detail={"missing_deliveries": missing},
        )
    )
    start, batches = writes["burst_start"], writes["batches"]
    delivered = sum(int(s["burst"]) for s in subs)
    last = max((float(s["burst_last"]) for s in subs if s["burst"]), default=start)
    elapsed = max(1e-9, last - start)
    tx_latencies = [
        t - batches[k] for s in subs for k, t in enumerate(s["tx_last"][: len(batches)])
    ]
    tx = summarize(tx_latencies, elapsed)
    cutoffs = sum(int(s["cutoffs"]) for s in subs)
    per_sub = sorted(
        int(s["burst"]) / max(1e-9, float(s["burst_last"]) - start) for s in subs if s["burst"]
    )
    lost = burst_rows * len(subs) - delivered
    result.measurements.append(
        Measurement(
            name="burst",
            label=f"burst of {burst_rows:,} rows ({BATCH}/commit) → {len(subs)} subscribers",
            client=summary["client"],
            rps=round(delivered / elapsed, 1),
            p50_ms=tx["p50_ms"],
            p99_ms=tx["p99_ms"],
            mean_ms=tx["mean_ms"],
            p90_ms=tx["p90_ms"],
            max_ms=tx["max_ms"],
            requests=delivered,
            errors=lost,
            error_detail={"undelivered": lost, "loader_errors": summary["errors"]},
            server_cpu_us_per_request=round(writes["server_cpu_seconds"] / delivered * 1e6, 2)
            if delivered
            else None,
            extra={
                "seconds_to_deliver_all": round(elapsed, 3),
                "writer_rows_per_s": round(burst_rows / max(1e-9, batches[-1] - start), 1),
                "subscriber_rows_per_s_p50": round(per_sub[len(per_sub) // 2], 1)
                if per_sub
                else 0.0,
                "subscriber_too_slow_cutoffs": cutoffs,
                "node_cpu_seconds": round(writes["node_cpu_seconds"], 2),
                "origin_cpu_seconds": round(writes["origin_cpu_seconds"], 2),
                "load_generator_cpu_cores": summary.get("client_cpu"),
            },
        )
    )
    b = result.measurements[-1].extra
    result.notes.append(
        f"Burst: PostgreSQL took the {burst_rows:,} rows in "
        f"{batches[-1] - start:.2f} s ({b['writer_rows_per_s']:,.0f} rows/s); every subscriber "
        f"had all of them {elapsed:.2f} s after the first INSERT "
        f"({delivered / elapsed:,.0f} events/s delivered in total, "
        f"{b['subscriber_rows_per_s_p50']:,.0f} rows/s per subscriber at the median); "
        f"{cutoffs} subscriber_too_slow cut-off(s), each resumed with its cursor. "
        f"CPU during the burst: node {writes['node_cpu_seconds']:.1f} s, origin "
        f"{writes['origin_cpu_seconds']:.1f} s; the subscribers' process used "
        f"{summary.get('client_cpu', 0):.2f} core(s) while receiving it (near 1.0 would mean "
        "the load generator set the pace)."
    )
    if summary["errors"] or summary["timed_out"]:
        result.notes.append(
            f"Load generator: errors {summary['errors']}, "
            f"{summary['timed_out']} subscriber(s) still waiting at its timeout."
        )
    result.targets.append(
        Target(
            "every event delivered to every subscriber",
            f"{expected + burst_rows * len(subs):,}",
            f"{len(latencies) + delivered:,}",
            missing == 0 and lost == 0,
        )
    )
