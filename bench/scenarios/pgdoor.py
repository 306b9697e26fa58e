"""pgdoor: the PostgreSQL door (``node --pg-listen``) against PgBouncer and PostgreSQL direct.

Four measurements, all against one private PostgreSQL (``max_connections`` 1,100, so
that 1,000 direct clients fit; the machine's server has 100) with ``pgbench -i -s 10``
in a database of its own:

1. Throughput: ``pgbench -n -S -M prepared -j 2`` at 50 and at 1,000 clients, straight
   at PostgreSQL, through PgBouncer (transaction pooling, pool 20) and through a node's
   door (origin ``pool_max_size`` 20), in interleaved rounds. PgBouncer 1.18 cannot keep
   protocol-level prepared statements in transaction mode (its clients abort with
   ``prepared statement "P_0" already exists``; that is checked and reported), so its
   legs run ``-M extended``, the same protocol without named statements; the door also
   runs ``-M extended`` at 50 clients for a like-for-like ratio.
2. Added latency: the same at 1 client; p50 and p99 from pgbench's per-transaction log.
3. Connect plus first row across a WAN: node and origin 40 ms apart one way (a delay
   relay, cache_edge.devtools.delay_relay), against a direct connection to PostgreSQL
   through a 40 ms relay: a fresh connection per sample (psycopg, which sends a query
   without parameters in one round trip, and asyncpg, which prepares first). The first
   door connection after the node starts opens the node's link to the origin; it is
   reported apart ("cold"), the other samples are warm.
4. Memory per idle client connection: a fresh origin and node, ``idle_connections``
   authenticated connections held by ``python -m bench.load.pgidle``; node (and origin)
   RSS growth divided by their number; afterwards each runs ``SELECT 1``.

The node and the origin of the throughput legs are profiled with py-spy during an extra
50-client run. Besides latest.json the scenario writes ``pgdoor.md`` (its tables).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench.context import TENANT, Context
from bench.pgbench import (
    Endpoint,
    code_frames,
    cpu_per_server,
    pgbench_postgres,
    run_pgbench,
    server_pid,
    start_door,
)
from bench.procs import ROOT, rss_bytes, tree_cpu_seconds
from bench.profile import summarize_collapsed
from bench.scenarios.base import ScenarioResult, Skip, Target, Variant, measure_rounds, ratio
from bench.stack import Stack

__all__ = ["TITLE", "run"]

TITLE = (
    "PostgreSQL door: pgbench -S through a node vs PgBouncer vs direct, added latency, "
    "WAN connect, idle memory"
)
DB = "pgdoor"
SCALE = 10
POOL = 20
FEW, MANY = 50, 1000
DELAY_MS = 40
RTT_MS = 2 * DELAY_MS
FIRST_ROW_SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = 1"
_LOG_SAMPLING = 0.1  # of the throughput runs' transactions logged (for p50/p99)
# pgbench's -T clock starts before its clients connect: 1,000 fresh PostgreSQL backends
# take ~5 s, so 1,000-client runs get this much longer (its tps excludes connecting).
_CONNECT_MARGIN = 10
_CONNECT_MARGIN_QUICK = 6


# ------------------------------------------------------------------ the scenario


def _workdir(ctx: Context) -> Path:
    """Where pgbench runs and writes its per-transaction logs."""
    return ctx.tmp / "pgdoor" / "pgbench"


def run(ctx: Context) -> ScenarioResult:
    for tool in ("pgbench", "initdb"):
        if not ctx.tools.has(tool):
            raise Skip(ctx.tools.missing_reason(tool))
    result = ScenarioResult("pgdoor", TITLE)
    result.extra["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    seconds = 5 if ctx.quick else 15
    margin = _CONNECT_MARGIN_QUICK if ctx.quick else _CONNECT_MARGIN
    rounds = ctx.budget.rounds
    raw: dict[str, list[dict[str, Any]]] = {}
    work = _workdir(ctx)
    with Stack(ctx, "pgdoor") as st:
        dsn = pgbench_postgres(ctx, st, DB, max_connections=MANY + 100, scale=SCALE)
        pg_port = urlsplit(dsn).port or 5432
        config = st.config(dsn, pool_max_size=POOL)
        ctx.step(f"starting origin (pool {POOL}), node with the door, PgBouncer (pool {POOL})")
        origin = st.origin(config)
        redis_url = st.redis()
        node, door_port = start_door(st, config, redis_url, origin.url, "node")
        direct = Endpoint("direct", pg_port, "postgres", DB)
        door = Endpoint(
            "door", door_port, TENANT, DB, password=ctx.api_key,
            cpu=(("node", node.proc.pid), ("origin", origin.proc.pid)),
        )  # fmt: skip
        bouncer: Endpoint | None = None
        if ctx.tools.has("pgbouncer"):
            bport = st.pgbouncer(pg_port, POOL, MANY + 100)
            bouncer_pid = server_pid(st, "pgbouncer")
            bouncer = Endpoint(
                "pgbouncer", bport, "postgres", DB, cpu=(("pgbouncer", bouncer_pid),)
            )
        else:
            result.notes.append(f"PgBouncer legs skipped: {ctx.tools.missing_reason('pgbouncer')}")
        targets = [e for e in (direct, bouncer, door) if e is not None]

        ctx.step("warming every path (1 s at 50 clients each)")
        for ep in targets:
            mode = "extended" if ep is bouncer else "prepared"
            run_pgbench(ctx, ep, FEW, workdir=work, seconds=1, mode=mode)
        if bouncer is not None:
            ctx.step("PgBouncer with -M prepared (expected to fail in transaction mode)")
            check = run_pgbench(
                ctx, bouncer, FEW, workdir=work, seconds=2, mode="prepared", tag="-check"
            )
            result.extra["pgbouncer_prepared_check"] = {
                k: check[k] for k in ("rps", "requests", "aborted_clients", "error_lines")
            }

        def variant(ep: Endpoint, clients: int, mode: str, label: str, **kw: Any) -> Variant:
            extended = ep is door and mode != "prepared"
            name = f"{ep.name}-{clients}" + ("-extended" if extended else "")

            def go() -> dict[str, Any]:
                run_for = seconds + (margin if clients >= MANY else 0)
                summary = run_pgbench(
                    ctx, ep, clients, workdir=work, seconds=run_for, mode=mode, **kw
                )
                raw.setdefault(name, []).append(summary)
                return summary

            return Variant(name, label, go)

        def legs(clients: int, **kw: Any) -> list[Variant]:
            out = [variant(direct, clients, "prepared", f"direct, {clients} clients", **kw)]
            if bouncer is not None:
                label = f"PgBouncer (pool {POOL}), {clients} clients"
                out.append(variant(bouncer, clients, "extended", label, **kw))
            out.append(
                variant(door, clients, "prepared", f"door (pool {POOL}), {clients} clients", **kw)
            )
            return out

        throughput = [*legs(FEW, sampling=_LOG_SAMPLING), *legs(MANY, sampling=_LOG_SAMPLING)]
        for clients in (FEW, MANY):
            label = f"door -M extended, {clients} clients"
            throughput.append(variant(door, clients, "extended", label, sampling=_LOG_SAMPLING))
        ctx.step(f"throughput: {len(throughput)} legs x {rounds} round(s) of {seconds} s")
        result.measurements = measure_rounds(ctx, throughput, rounds)
        single = [variant(direct, 1, "prepared", "direct, 1 client", log=True)]
        if bouncer is not None:
            single.append(variant(bouncer, 1, "extended", "PgBouncer, 1 client", log=True))
        single.append(variant(door, 1, "prepared", "door, 1 client", log=True))
        result.measurements += measure_rounds(ctx, single, rounds)

        result.extra["profile"] = _profile(ctx, door, node.proc.pid, origin.proc.pid)

        ctx.step(f"WAN: node and origin {DELAY_MS} ms apart; direct through a {DELAY_MS} ms relay")
        to_origin = st.relay(origin.port, DELAY_MS, "relay-origin")
        to_pg = st.relay(pg_port, DELAY_MS, "relay-postgres")
        _, far_port = start_door(st, config, redis_url, to_origin.url, "node-wan")
        samples = 5 if ctx.quick else 15
        result.extra["wan"] = asyncio.run(_wan(door.dsn(far_port), direct.dsn(to_pg.port), samples))

        result.extra["idle"] = _idle(ctx, st, config, redis_url, door)
    result.extra["runs"] = raw
    result.extra["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    _judge(ctx, result, seconds, margin, bouncer is not None)
    (ctx.out_dir / "pgdoor.md").write_text(summary_markdown(result))
    return result


# ------------------------------------------------------------------ profile


def _profile(ctx: Context, door: Endpoint, node_pid: int, origin_pid: int) -> dict[str, Any]:
    """py-spy on the node and the origin at once during a 50-client door run."""
    if not ctx.tools.has("py-spy"):
        return {"skipped": ctx.tools.missing_reason("py-spy")}
    secs = 5 if ctx.quick else 10
    ctx.step(f"profiling node and origin (py-spy, {secs} s) at {FEW} clients")
    box: dict[str, Any] = {}
    load = threading.Thread(
        target=lambda: box.update(
            run_pgbench(ctx, door, FEW, workdir=_workdir(ctx), seconds=secs + 4, tag="-profile")
        )
    )
    load.start()
    time.sleep(2)
    out_dir = ctx.tmp / "pgdoor"
    procs, cpu0 = {}, {}
    for label, pid in (("node", node_pid), ("origin", origin_pid)):
        cpu0[label] = tree_cpu_seconds(pid)
        cmd = [
            *ctx.pinning.prefix(ctx.pinning.load), ctx.tools.path("py-spy"), "record",
            "--pid", str(pid), "--duration", str(secs), "--rate", "250", "--nonblocking",
            "--format", "raw", "--nolineno", "-o", str(out_dir / f"profile-{label}.txt"),
        ]  # fmt: skip
        procs[label] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    started = time.monotonic()
    outs = {label: p.communicate(timeout=secs + 60)[0] for label, p in procs.items()}
    window = time.monotonic() - started
    cpu = {label: tree_cpu_seconds(pid) - cpu0[label]
           for label, pid in (("node", node_pid), ("origin", origin_pid))}  # fmt: skip
    load.join()
    tps = float(box.get("rps", 0.0))
    txns = tps * window
    summary: dict[str, Any] = {"seconds": secs, "load_tps": tps}
    for label, proc in procs.items():
        path = out_dir / f"profile-{label}.txt"
        if proc.returncode != 0 or not path.exists():
            summary[label] = {"skipped": outs[label].decode(errors="replace")[-400:]}
            continue
        text = path.read_text()
        s = summarize_collapsed(text, top=15)
        s["top_inclusive"] = code_frames(text, s["samples"])
        s.pop("node_functions_inclusive", None)
        us = cpu[label] / txns * 1e6 if txns else 0.0
        s["cpu_share_of_one_core"] = round(cpu[label] / window, 3)
        # py-spy counts a runnable thread as busy even while another process has the CPU:
        # when this is well above the CPU share, the shares below include preemption.
        s["busy_sample_share"] = round(s["samples"] / (250 * secs), 3)
        s["cpu_us_per_txn"] = round(us, 1)
        for key in ("top_self", "top_inclusive", "by_package"):
            for row in s[key]:
                row["us_per_txn"] = round(row["pct"] / 100 * us, 1)
        s["raw"] = str(path)
        summary[label] = s
    return summary


# ------------------------------------------------------------------ WAN connect


async def _first_row_psycopg(dsn: str) -> tuple[float, float]:
    import psycopg

    t0 = time.perf_counter()
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    t1 = time.perf_counter()
    try:
        cur = await conn.execute(FIRST_ROW_SQL)
        row = await cur.fetchone()
        t2 = time.perf_counter()
        assert row is not None
    finally:
        await conn.close()
    return (t1 - t0) * 1000, (t2 - t0) * 1000


async def _first_row_asyncpg(dsn: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    t1 = time.perf_counter()
    try:
        row = await conn.fetchrow(FIRST_ROW_SQL)
        t2 = time.perf_counter()
        assert row is not None
    finally:
        await conn.close()
    return (t1 - t0) * 1000, (t2 - t0) * 1000


async def _wan(door_dsn: str, direct_dsn: str, samples: int) -> dict[str, Any]:
    clients: dict[str, Callable[[str], Any]] = {
        "psycopg": _first_row_psycopg,
        "asyncpg": _first_row_asyncpg,
    }
    cold_connect, cold_total = await _first_row_psycopg(door_dsn)
    got: dict[str, list[tuple[float, float]]] = {}
    for _ in range(samples):
        for client, fn in clients.items():
            for path, dsn in (("door", door_dsn), ("direct", direct_dsn)):
                got.setdefault(f"{path}-{client}", []).append(await fn(dsn))
    out: dict[str, Any] = {
        "one_way_delay_ms": DELAY_MS,
        "samples": samples,
        "door_cold_psycopg": {
            "connect_ms": round(cold_connect, 1),
            "first_row_ms": round(cold_total, 1),
        },
    }
    for key, values in got.items():
        totals = sorted(v[1] for v in values)
        connects = sorted(v[0] for v in values)
        out[key] = {
            "connect_p50_ms": round(statistics.median(connects), 1),
            "first_row_p50_ms": round(statistics.median(totals), 1),
            "first_row_min_ms": round(totals[0], 1),
            "first_row_max_ms": round(totals[-1], 1),
            "round_trips": round(statistics.median(totals) / RTT_MS, 2),
        }
    return out


# ------------------------------------------------------------------ idle memory


class _Holder:
    """``python -m bench.load.pgidle``: connections open from start until release."""

    def __init__(self, ctx: Context, spec: dict[str, Any]) -> None:
        cmd = [*ctx.pinning.prefix(ctx.pinning.load), sys.executable, "-m", "bench.load.pgidle"]
        self._proc = subprocess.Popen(
            [*cmd, json.dumps(spec)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.held = self._wait_for("BENCH_HELD ", 600)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _wait_for(self, mark: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        try:
            while line := self._lines.get(timeout=max(0.0, deadline - time.monotonic())):
                if line.startswith(mark):
                    found: dict[str, Any] = json.loads(line[len(mark) :])
                    return found
        except queue.Empty:
            pass
        self._proc.kill()
        raise RuntimeError(f"pgidle holder exited {self._proc.wait()} without {mark.strip()}")

    def release(self) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        done = self._wait_for("BENCH_JSON ", 600)
        self._proc.wait(60)
        return done


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _idle(ctx: Context, st: Stack, config: Path, redis_url: str, door: Endpoint) -> dict[str, Any]:
    """RSS per idle authenticated connection, on a fresh origin and node."""
    count = ctx.budget.idle_connections
    ctx.step(f"idle: fresh origin and node, then {count:,} idle authenticated connections")
    origin = st.origin(config, name="origin-idle")
    node, port = start_door(st, config, redis_url, origin.url, "node-idle")
    warm = asyncio.run(_first_row_psycopg(door.dsn(port)))
    time.sleep(1)
    before = {"node": rss_bytes(node.proc.pid), "origin": rss_bytes(origin.proc.pid)}
    fds_before = _fds(node.proc.pid)
    spec = {
        "host": "127.0.0.1", "port": port, "count": count, "user": door.user,
        "password": door.password, "database": DB, "sources": 8, "parallel": 200,
    }  # fmt: skip
    holder = _Holder(ctx, spec)
    time.sleep(2)  # let both settle
    after = {"node": rss_bytes(node.proc.pid), "origin": rss_bytes(origin.proc.pid)}
    fds_held = _fds(node.proc.pid)
    ctx.step(f"idle: SELECT 1 on each of {holder.held['held']:,} held connections")
    done = holder.release()
    held = max(1, int(holder.held["held"]))
    return {
        "connections": count,
        "held": holder.held["held"],
        "open_seconds": holder.held["seconds"],
        "open_failures": holder.held["failed"],
        "still_usable": done["still_open"],
        "probe_seconds": done["probe_seconds"],
        "warm_first_row_ms": round(warm[1], 2),
        "node_fds": {"before": fds_before, "held": fds_held},
        "rss_mib": {
            k: {"before": round(before[k] / 2**20, 1), "held": round(after[k] / 2**20, 1)}
            for k in before
        },
        "node_bytes_per_connection": round((after["node"] - before["node"]) / held),
        "origin_bytes_per_connection": round((after["origin"] - before["origin"]) / held),
    }


# ------------------------------------------------------------------ targets and summary


def _judge(
    ctx: Context, result: ScenarioResult, seconds: int, margin: int, has_bouncer: bool
) -> None:
    get = result.get
    door50, door1000 = get(f"door-{FEW}"), get(f"door-{MANY}")
    direct50, direct1000 = get(f"direct-{FEW}"), get(f"direct-{MANY}")
    b50, b1000 = get(f"pgbouncer-{FEW}"), get(f"pgbouncer-{MANY}")
    ext50, ext1000 = get(f"door-{FEW}-extended"), get(f"door-{MANY}-extended")
    d1, door1 = get("direct-1"), get("door-1")
    assert door50 and door1000 and direct50 and direct1000 and d1 and door1 and ext50 and ext1000
    r = result.ratios
    r["door_vs_direct_tps_50"] = ratio(door50.rps, direct50.rps)
    r["door_vs_direct_tps_1000"] = ratio(door1000.rps, direct1000.rps)
    # Named statements vs none through the door: what carrying prepared statements costs.
    r["door_prepared_vs_extended_tps_50"] = ratio(door50.rps, ext50.rps)
    r["door_prepared_vs_extended_tps_1000"] = ratio(door1000.rps, ext1000.rps)
    if b50 and b1000:
        r["door_vs_pgbouncer_tps_50"] = ratio(door50.rps, b50.rps)
        r["door_extended_vs_pgbouncer_tps_50"] = ratio(ext50.rps, b50.rps)
        r["door_vs_pgbouncer_tps_1000"] = ratio(door1000.rps, b1000.rps)
        r["door_extended_vs_pgbouncer_tps_1000"] = ratio(ext1000.rps, b1000.rps)
        if door50.server_cpu_us_per_request and b50.server_cpu_us_per_request:
            r["door_vs_pgbouncer_cpu_per_txn_50"] = ratio(
                door50.server_cpu_us_per_request, b50.server_cpu_us_per_request
            )
        result.targets.append(
            Target(
                "door throughput vs PgBouncer, 50 clients",
                ">= 0.5x",
                f"{r['door_vs_pgbouncer_tps_50']:.2f}x ({door50.rps:,.0f} vs {b50.rps:,.0f} tps; "
                f"-M extended both: {r['door_extended_vs_pgbouncer_tps_50']:.2f}x)",
                r["door_vs_pgbouncer_tps_50"] >= 0.5,
            )
        )
    else:
        result.targets.append(
            Target("door throughput vs PgBouncer, 50 clients", ">= 0.5x", "no PgBouncer", None)
        )
    runs = result.extra["runs"].get(f"door-{MANY}", [])
    aborted = sum(s["aborted_clients"] for s in runs)
    result.targets.append(
        Target(
            "door errors at 1,000 clients",
            "0",
            f"{door1000.errors} (failed transactions + aborted clients, {len(runs)} run(s))",
            door1000.errors == 0 and aborted == 0,
        )
    )
    added = round(door1.p50_ms - d1.p50_ms, 3)
    r["door_minus_direct_p50_ms_1_client"] = added
    result.targets.append(
        Target(
            "added p50 latency, 1 client",
            "<= +0.5 ms",
            f"+{added:.3f} ms ({door1.p50_ms:.3f} vs {d1.p50_ms:.3f} ms)",
            added <= 0.5,
        )
    )
    wan = result.extra["wan"]
    door_wan, direct_wan = wan["door-psycopg"], wan["direct-psycopg"]
    result.targets.append(
        Target(
            f"connect + first row, node and origin {DELAY_MS} ms apart (warm, psycopg)",
            f"<= 1 round trip ({RTT_MS} ms) + local",
            f"door {door_wan['first_row_p50_ms']:.0f} ms ({door_wan['round_trips']:.2f} RTT), "
            f"direct {direct_wan['first_row_p50_ms']:.0f} ms "
            f"({direct_wan['round_trips']:.2f} RTT)",
            door_wan["first_row_p50_ms"] <= RTT_MS + 20,
        )
    )
    idle = result.extra["idle"]
    result.targets.append(
        Target(
            "node memory per idle connection",
            "(no goal)",
            f"{idle['node_bytes_per_connection'] / 1024:.1f} KiB "
            f"(origin {idle['origin_bytes_per_connection'] / 1024:.1f} KiB), "
            f"{idle['still_usable']:,} of {idle['connections']:,} usable at the end",
            None,
        )
    )
    load = max(result.extra["loadavg_before"][0], result.extra["loadavg_after"][0])
    if load > 2.5:
        result.notes.append(
            f"The machine was busy with other work (load average up to {load:.1f} on "
            f"{os.cpu_count()} cores): absolute numbers and single rounds are noisy."
        )
    result.notes += [
        f"Each throughput run: pgbench -n -S -j 2 -T {seconds} (-T {seconds + margin} "
        f"at {MANY:,} clients, whose connecting counts against -T; tps excludes it), "
        "PGSSLMODE=disable, on the "
        "load CPU; node, origin and PgBouncer share the server CPU; PostgreSQL (private, "
        f"max_connections {MANY + 100}, scale {SCALE}) is not pinned. The machine's "
        "PostgreSQL has max_connections 100, too few for 1,000 direct clients.",
        "PgBouncer 1.18 runs -M extended: with -M prepared its clients abort in transaction "
        "mode (see extra.pgbouncer_prepared_check); the door keeps prepared statements.",
        f"p50/p99 of the throughput runs come from a {_LOG_SAMPLING:.0%} sample of pgbench's "
        "per-transaction log; of the 1-client runs from every transaction. "
        "'server CPU µs/req' = node + origin (door) or PgBouncer CPU per transaction, "
        "connection setup included.",
    ]


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def summary_markdown(result: ScenarioResult) -> str:
    lines = [
        f"# pgdoor — {result.title}",
        "",
        "| leg | tps | latency avg ms | p50 ms | p99 ms | failed | aborted clients | "
        "connect ms | server CPU µs/txn |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    runs = result.extra.get("runs", {})
    for m in result.measurements:
        rs = runs.get(m.name, [])
        aborted = sum(s.get("aborted_clients", 0) for s in rs)
        failed = sum(s.get("failed", 0) for s in rs)
        conn = statistics.median([s.get("connect_ms", 0.0) for s in rs]) if rs else 0.0
        cpu = cpu_per_server(rs)
        lines.append(
            f"| {m.label} | {_fmt(m.rps)} | {m.mean_ms:.3f} | {m.p50_ms:.3f} | {m.p99_ms:.3f} | "
            f"{failed} | {aborted} | {_fmt(conn)} | {cpu} |"
        )
    lines += ["", "| ratio | value |", "|---|--:|"]
    lines += [f"| {k} | {v} |" for k, v in result.ratios.items()]
    lines += ["", "| target | goal | measured | met |", "|---|---|---|:-:|"]
    mark = {True: "yes", False: "NO", None: "n/a"}
    lines += [f"| {t.name} | {t.goal} | {t.measured} | {mark[t.met]} |" for t in result.targets]
    wan = result.extra.get("wan", {})
    if wan:
        lines += [
            "",
            f"WAN: connect + first row, {wan['one_way_delay_ms']} ms one way "
            f"({wan['samples']} warm samples each; door cold first connection: "
            f"{wan['door_cold_psycopg']['first_row_ms']} ms)",
            "",
            "| path, client | connect p50 ms | first row p50 ms | min | max | round trips |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for key, v in wan.items():
            if isinstance(v, dict) and "first_row_p50_ms" in v:
                lines.append(
                    f"| {key} | {v['connect_p50_ms']} | {v['first_row_p50_ms']} | "
                    f"{v['first_row_min_ms']} | {v['first_row_max_ms']} | {v['round_trips']} |"
                )
    idle = result.extra.get("idle")
    if idle:
        lines += [
            "",
            f"Idle: {idle['held']:,} of {idle['connections']:,} connections held (opened in "
            f"{idle['open_seconds']} s), {idle['still_usable']:,} answered SELECT 1 afterwards. "
            f"Node RSS {idle['rss_mib']['node']['before']} -> {idle['rss_mib']['node']['held']} "
            f"MiB = {idle['node_bytes_per_connection']:,} bytes per connection; origin "
            f"{idle['rss_mib']['origin']['before']} -> {idle['rss_mib']['origin']['held']} MiB "
            f"= {idle['origin_bytes_per_connection']:,} bytes per session.",
        ]
    prof = result.extra.get("profile", {})
    for label in ("node", "origin"):
        p = prof.get(label)
        if not isinstance(p, dict) or "top_self" not in p:
            continue
        lines += [
            "",
            f"Profile of the {label} at {FEW} clients (py-spy {prof['seconds']} s, "
            f"{p['samples']} samples, busy in {p['busy_sample_share']:.0%} of samples but "
            f"{p['cpu_share_of_one_core']:.0%} of a core used, "
            f"{p['cpu_us_per_txn']} µs CPU per transaction at {prof['load_tps']:,.0f} tps "
            "under the profiler)",
            "",
            "| top self frames | share of busy samples | ≈ µs/txn |",
            "|---|--:|--:|",
        ]
        lines += [
            f"| `{f['function']}` | {f['pct']}% | {f['us_per_txn']} |" for f in p["top_self"][:10]
        ]
        lines += [
            "",
            "| cache-edge / origin frames, inclusive | share of busy samples | ≈ µs/txn |",
            "|---|--:|--:|",
        ]
        lines += [
            f"| `{f['function']}` | {f['pct']}% | {f['us_per_txn']} |"
            for f in p["top_inclusive"][:10]
        ]
    if prof.get("node") or prof.get("origin"):
        lines += [
            "",
            "py-spy counts a runnable thread as busy even while another process has its CPU, "
            "so where 'busy in' is well above 'of a core used' the shares include time "
            "preempted (often right after waking PostgreSQL); ≈ µs/txn = share x CPU per "
            "transaction, a guide only. Self time of `serve`/`Runner.run` is the event loop's "
            "C code (uvloop) and its syscalls.",
        ]
    lines += ["", *[f"Note: {n}" for n in result.notes]]
    return "\n".join(lines) + "\n"
