"""pgcache: cached reads through the PostgreSQL door vs pgpool-II's query cache vs direct.

Everything runs against one private PostgreSQL with ``pgbench -i -s 10`` in a database
of its own; accounts 1..1,000 get ``abalance = aid`` first, so that every cached answer
is distinct and a hit served under the wrong key would show in the correctness check.

1. Point reads, all hits: ``pgbench -M prepared -c 50 -j 2`` with a custom script,
   ``\\set id random(1, 1000)`` and ``SELECT abalance FROM pgbench_accounts WHERE aid =
   :id``, hinted ``/* cache ttl=600 */`` through a node's door (``node --pg-listen``),
   unhinted through pgpool-II (``memory_cache_enabled``, shmem) and straight at
   PostgreSQL. Both caches are warmed first (every id once, by pgbench itself, so the
   entries are the ones pgbench's own messages key), and every measured run counts its
   cache answers (the node's ``cache_edge_node_door_answers_total``, pgpool-II's
   ``SHOW POOL_CACHE``): a miss in a measured run is reported. The same legs also run
   ``-M extended`` (a Parse per transaction), door and pgpool-II alike.
2. The ``heavy`` scenario's aggregate (~100 ms uncached), cached, through the door and
   through pgpool-II at 10 clients (as ``heavy``) and at 1 client (a hit's own latency),
   against PostgreSQL uncached.
3. py-spy of the node during a 50-client hit run: where a wire hit's time goes.

Before measuring, answers through the door and pgpool-II are compared with PostgreSQL's
(libpq's extended protocol through psycopg's ``pgconn``, as pgbench sends it).
Legs run in interleaved rounds; p50/p99 come from pgbench's per-transaction log.
Besides latest.json the scenario writes ``pgcache.md`` (its tables and the profile).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import threading
import time
import urllib.request
from collections import Counter
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
from bench.procs import tree_cpu_seconds
from bench.profile import summarize_collapsed
from bench.scenarios.base import ScenarioResult, Skip, Target, Variant, measure_rounds, ratio
from bench.scenarios.common import HEAVY_SQL
from bench.stack import Server, Stack
from cache_edge.devtools.harness import ProcessFailed

__all__ = ["TITLE", "run"]

TITLE = (
    "Cached reads through the PostgreSQL door vs pgpool-II's query cache vs direct "
    "(pgbench point hits at 50 clients, heavy aggregate hits, wire-hit profile)"
)
DB = "pgcache"
SCALE = 10
CLIENTS = 50
HEAVY_CLIENTS = 10
IDS = 1000
TTL = 600
HINT = f"/* cache ttl={TTL} */"
POINT = "SELECT abalance FROM pgbench_accounts WHERE aid = :id"
_SAMPLING = 0.1  # of a busy run's transactions logged for p50/p99
_PGPOOL_CHILDREN = CLIENTS + 14  # a pgpool-II child serves one client at a time
_TICKS = os.sysconf("SC_CLK_TCK")
_RATE = 100  # py-spy samples per second (it shares the load CPU with pgbench)

# Goals of issue 16 (caching through the door), measured, not asserted.
GOAL_TPS = 1.0  # door hit throughput >= this x pgpool-II's
GOAL_P50 = 1.5  # door hit p50 <= this x pgpool-II's


# ------------------------------------------------------------------ scripts


def _scripts(workdir: Path) -> dict[str, Path]:
    """pgbench scripts: measured (random ids) and warming (ids 1..IDS, one each, by -D id=0).
    pgbench sends a script's SQL line as written, its newline included (and a ';' if there
    is one); the correctness check sends the same texts."""
    workdir.mkdir(parents=True, exist_ok=True)
    texts = {
        "point": f"\\set id random(1, {IDS})\n{POINT}\n",
        "point-hinted": f"\\set id random(1, {IDS})\n{POINT} {HINT}\n",
        "warm": f"\\set id :id + 1\n{POINT}\n",
        "warm-hinted": f"\\set id :id + 1\n{POINT} {HINT}\n",
        "heavy": f"{HEAVY_SQL}\n",
        "heavy-hinted": f"{HEAVY_SQL} {HINT}\n",
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = workdir / f"{name}.sql"
        paths[name].write_text(text)
    return paths


# ------------------------------------------------------------------ cache counters


_ANSWERS = re.compile(
    r'^cache_edge_node_door_answers_total\{door="postgres",status="(\w+)",tenant="[^"]*"\} '
    r"([\d.e+]+)$",
    re.MULTILINE,
)


def door_answers(node: Server, redis_url: str = "") -> Counter[str]:
    """The node's door answers by cache status (none, miss, ttl, swr, stale), and the
    commands the region's Redis processed (hot-tier hits need none; the node's purge-state
    sync sends a few a second). The door's read path keeps its hot-tier statistics to
    itself (/metrics shows the HTTP door's only), hence Redis's count."""
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = Counter({m.group(1): int(float(m.group(2))) for m in _ANSWERS.finditer(text)})
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
        try:
            found["redis_commands"] = int(client.info("stats")["total_commands_processed"])
        finally:
            client.close()
    return found


def pool_cache(port: int) -> Counter[str]:
    """pgpool-II's ``SHOW POOL_CACHE`` counters: hits and selects (misses). pgpool-II 4.3
    counts two hits per extended-protocol transaction (its Bind/Describe and Execute)."""
    import psycopg

    conn = psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=DB,
                           sslmode="disable", autocommit=True)  # fmt: skip
    try:
        res = conn.pgconn.exec_(b"SHOW POOL_CACHE")  # simple protocol: pgpool answers it
        names = [(res.fname(i) or b"").decode() for i in range(res.nfields)]
        row = {n: (res.get_value(0, i) or b"0").decode() for i, n in enumerate(names)}
    finally:
        conn.close()
    return Counter({"hits": int(row["num_cache_hits"]), "misses": int(row["num_selects"])})


# ------------------------------------------------------------------ correctness


def _libpq_rows(ep: Endpoint, sql: str, params: list[list[bytes]]) -> tuple[list[Any], str]:
    """Rows of a prepared statement run once per parameter list, in text, as pgbench runs
    it (Parse without types, Bind with text values, Execute without a row limit)."""
    import psycopg

    conn = psycopg.connect(host="127.0.0.1", port=ep.port, user=ep.user, password=ep.password,
                           dbname=DB, sslmode="disable", autocommit=True)  # fmt: skip
    out: list[Any] = []
    try:
        pg = conn.pgconn
        res = pg.prepare(b"check", sql.encode())
        if res.status != psycopg.pq.ExecStatus.COMMAND_OK:
            return out, (res.error_message or b"prepare failed").decode()
        for values in params:
            res = pg.exec_prepared(b"check", list(values), None, 0)
            if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
                return out, (res.error_message or b"execute failed").decode()
            out.append(
                [tuple(res.get_value(r, c) for c in range(res.nfields)) for r in range(res.ntuples)]
            )
    finally:
        conn.close()
    return out, ""


def _check_answers(
    ctx: Context, eps: list[Endpoint], direct: Endpoint, node: Server, pgpool: Endpoint | None
) -> dict[str, Any]:
    """Door and pgpool-II answers (cached by the warm-up) against PostgreSQL's."""
    # The texts exactly as pgbench sends them (a script line keeps its newline): pgpool-II
    # keys its cache by the exact text, so only these find the entries pgbench made.
    point = POINT.replace(":id", "$1")
    ids = [[str(i).encode()] for i in range(1, IDS + 1, 7)]
    want_point, err = _libpq_rows(direct, point + "\n", ids)
    want_heavy, err2 = _libpq_rows(direct, HEAVY_SQL + "\n", [[]])
    out: dict[str, Any] = {"ids_checked": len(ids), "direct_errors": [e for e in (err, err2) if e]}
    for ep in eps:
        hint = f" {HINT}" if _hinted(ep) else ""
        before_door = door_answers(node)
        before_pool = pool_cache(ep.port) if ep is pgpool else Counter[str]()
        got_point, e1 = _libpq_rows(ep, point + hint + "\n", ids)
        got_heavy, e2 = _libpq_rows(ep, HEAVY_SQL + hint + "\n", [[]])
        entry: dict[str, Any] = {
            "point_equal": got_point == want_point,
            "point_mismatches": sum(a != b for a, b in zip(got_point, want_point, strict=False)),
            "heavy_equal": got_heavy == want_heavy,
            "errors": [e for e in (e1, e2) if e],
        }
        if ep.name == "door":
            entry["cache_answers"] = dict(door_answers(node) - before_door)
        elif ep is pgpool:
            entry["cache_answers"] = dict(pool_cache(ep.port) - before_pool)
        out[ep.name] = entry
    return out


# ------------------------------------------------------------------ the scenario


def _workdir(ctx: Context) -> Path:
    """Where pgbench runs and writes its per-transaction logs."""
    return ctx.tmp / "pgcache" / "pgbench"


def _hinted(ep: Endpoint) -> bool:
    """The door gets the statements with the cache hint; pgpool-II and PostgreSQL without."""
    return ep.name == "door"


def run(ctx: Context) -> ScenarioResult:
    for tool in ("pgbench", "initdb"):
        if not ctx.tools.has(tool):
            raise Skip(ctx.tools.missing_reason(tool))
    result = ScenarioResult("pgcache", TITLE)
    result.extra["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    seconds = 5 if ctx.quick else 15
    heavy_seconds = 5 if ctx.quick else 10
    warmup = ctx.budget.warmup
    rounds = ctx.budget.rounds
    raw: dict[str, list[dict[str, Any]]] = {}
    work = _workdir(ctx)
    with Stack(ctx, "pgcache") as st:
        dsn = pgbench_postgres(
            ctx, st, DB, max_connections=CLIENTS + _PGPOOL_CHILDREN + 100, scale=SCALE
        )
        pg_port = urlsplit(dsn).port or 5432
        asyncio.run(_distinct_balances(dsn))
        pg_pid = server_pid(st, "postgres")
        config = st.config(dsn, pool_max_size=20)
        ctx.step("starting origin, node with the door")
        origin = st.origin(config)
        redis_url = st.redis()
        node, door_port = start_door(st, config, redis_url, origin.url, "node")
        direct = Endpoint("direct", pg_port, "postgres", DB, cpu=(("postgres", pg_pid),))
        door = Endpoint(
            "door", door_port, TENANT, DB, password=ctx.api_key,
            cpu=(("node", node.proc.pid), ("origin", origin.proc.pid), ("postgres", pg_pid)),
        )  # fmt: skip
        pgpool: Endpoint | None = None
        if not ctx.tools.has("pgpool"):
            result.notes.append(f"pgpool-II legs skipped: {ctx.tools.missing_reason('pgpool')}")
        else:
            try:
                ctx.step(f"starting pgpool-II (query cache in shared memory, "
                         f"{_PGPOOL_CHILDREN} children)")  # fmt: skip
                port = st.pgpool(pg_port, children=_PGPOOL_CHILDREN)
                pgpool = Endpoint(
                    "pgpool", port, "postgres", DB,
                    cpu=(("pgpool", server_pid(st, "pgpool")), ("postgres", pg_pid)),
                )  # fmt: skip
            except (ProcessFailed, LookupError, OSError) as exc:
                result.notes.append(f"pgpool-II legs skipped: it did not start: {exc}")
        caches = [e for e in (door, pgpool) if e is not None]
        scripts = _scripts(ctx.tmp / "pgcache" / "scripts")

        def sc(ep: Endpoint, name: str) -> Path:
            return scripts[name + ("-hinted" if _hinted(ep) else "")]

        ctx.step(f"warming both caches: ids 1..{IDS} once each, and the aggregate")
        warm: dict[str, Any] = {}
        for ep in caches:
            before = _counters(ep, node, redis_url)
            for mode in ("prepared", "extended"):
                run_pgbench(ctx, ep, 1, workdir=work, script=sc(ep, "warm"), transactions=IDS,
                            mode=mode, defines=("id=0",), tag="-warm")  # fmt: skip
                run_pgbench(ctx, ep, 1, workdir=work, script=sc(ep, "heavy"), transactions=2,
                            mode=mode, tag="-warm")  # fmt: skip
            warm[ep.name] = dict(_counters(ep, node, redis_url) - before)
        result.extra["warm_cache_answers"] = warm
        ctx.step("checking answers through the door and pgpool-II against PostgreSQL's")
        result.extra["correctness"] = _check_answers(ctx, caches, direct, node, pgpool)

        def variant(
            ep: Endpoint, script: str, clients: int, mode: str, label: str, secs: int,
            sampling: float | None,
        ) -> Variant:  # fmt: skip
            name = f"{ep.name}-{script}-{clients}" + ("" if mode == "prepared" else f"-{mode}")

            def go() -> dict[str, Any]:
                before = _counters(ep, node, redis_url)
                summary = run_pgbench(ctx, ep, clients, workdir=work, script=sc(ep, script),
                                      seconds=secs, mode=mode, sampling=sampling,
                                      log=not sampling)  # fmt: skip
                if ep is not direct:
                    summary["cache_statuses"] = dict(_counters(ep, node, redis_url) - before)
                raw.setdefault(name, []).append(summary)
                return summary

            def warm_run() -> None:
                run_pgbench(ctx, ep, clients, workdir=work, script=sc(ep, script),
                            seconds=warmup, mode=mode)  # fmt: skip

            return Variant(name, label, go, warm=warm_run)

        everyone = [e for e in (door, pgpool, direct) if e is not None]
        legs: list[Variant] = []
        for mode in ("prepared", "extended"):
            for ep in everyone:
                what = {"door": "door, hinted (cache hit)", "pgpool": "pgpool-II query cache hit",
                        "direct": "PostgreSQL direct"}[ep.name]  # fmt: skip
                legs.append(variant(ep, "point", CLIENTS, mode,
                                    f"point: {what}, {CLIENTS} clients, -M {mode}", seconds,
                                    _SAMPLING))  # fmt: skip
        ctx.step(f"point reads: {len(legs)} legs x {rounds} round(s) of {seconds} s")
        result.measurements = measure_rounds(ctx, legs, rounds)

        heavy: list[Variant] = []
        for clients in (HEAVY_CLIENTS, 1):
            for ep in everyone:
                what = {"door": "door, hinted (cache hit)", "pgpool": "pgpool-II query cache hit",
                        "direct": "PostgreSQL direct (uncached)"}[ep.name]  # fmt: skip
                sampling = _SAMPLING if clients > 1 and ep is not direct else None
                heavy.append(variant(ep, "heavy", clients, "prepared",
                                     f"heavy: {what}, {clients} client(s)", heavy_seconds,
                                     sampling))  # fmt: skip
        ctx.step(f"heavy aggregate: {len(heavy)} legs x {rounds} round(s) of {heavy_seconds} s")
        result.measurements += measure_rounds(ctx, heavy, rounds)

        result.extra["profile"] = _profile(ctx, door, node, redis_url, sc(door, "point"))
        result.extra["node_log_warnings"] = _log_warnings(st.dir / "node.log")
    result.extra["runs"] = raw
    result.extra["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    _judge(result, seconds, heavy_seconds, pgpool is not None)
    (ctx.out_dir / "pgcache.md").write_text(summary_markdown(result))
    return result


def _log_warnings(path: Path) -> dict[str, int]:
    """Warning and error lines of a cache-edge log (JSON lines), counted by message."""
    found: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("level") in ("warning", "error"):
                found[str(record.get("msg", "?"))] += 1
    return dict(found)


def _counters(ep: Endpoint, node: Server, redis_url: str) -> Counter[str]:
    if ep.name == "door":
        return door_answers(node, redis_url)
    if ep.name == "pgpool":
        return pool_cache(ep.port)
    return Counter()


async def _distinct_balances(dsn: str) -> None:
    """abalance = aid for the ids the point reads use: each cached answer is different."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(f"UPDATE pgbench_accounts SET abalance = aid WHERE aid <= {IDS}")
        await conn.execute("VACUUM ANALYZE pgbench_accounts")
    finally:
        await conn.close()


# ------------------------------------------------------------------ profile

# Where a sample's time goes: the first rule matching a frame, from the leaf up. A frame
# matching none (stdlib helpers, dataclass __init__) is charged to its caller.
_BUCKETS: list[tuple[str, Callable[[str, str], bool]]] = [
    ("socket I/O (StreamWriter.write, StreamReader.read)",
     lambda fn, path: path.endswith("asyncio/streams.py")),
    ("message building (replay, message framing)",
     lambda fn, path: fn in ("replay", "_messages", "message", "cstring", "show_row")
     or path.startswith("msgpack")),
    ("metrics (prometheus_client, door answer counter)",
     lambda fn, path: "prometheus_client/" in path or fn.startswith("_open_door.<locals>")),
    ("Redis / hot tier", lambda fn, path: "node/tiers/" in path or "redis/" in path),
    ("read path (QueryCache, keys, purge state, freshness)",
     lambda fn, path: any(p in path for p in (
         "node/read_path.py", "node/freshness.py", "node/entry.py", "node/purge_mirror.py",
         "common/keys.py", "common/singleflight.py", "common/protocol.py", "common/answer.py",
     ))),
    ("hints and strategy, parsed per statement (hints.py, strategy.py)",
     lambda fn, path: any(p in path for p in ("pgdoor/hints.py", "common/strategy.py",
                                              "pgdoor/rules.py"))),
    ("cache planning: plan/_shape, SessionView (caching.py)",
     lambda fn, path: "pgdoor/caching.py" in path),
    ("door session and relay (session.py, startup.py, pgwire framing)",
     lambda fn, path: any(p in path for p in ("pgdoor/", "pgwire/"))),
    ("event loop (uvloop/asyncio: scheduling, polling, syscalls)",
     lambda fn, path: "asyncio/" in path or "uvloop" in path or "server/serving.py" in path
     or path.startswith("<frozen")),
]  # fmt: skip


def _bucket(frames: list[str]) -> str:
    for frame in reversed(frames):
        fn, _, rest = frame.partition(" (")
        path = rest.rstrip(")")
        for name, match in _BUCKETS:
            if match(fn, path):
                return name
    return "other (no frame, or outside the node's code)"


def buckets(collapsed: str) -> list[dict[str, Any]]:
    counts: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[_bucket(stack.split(";"))] += int(n)
    total = sum(counts.values())
    return [{"bucket": k, "pct": round(100 * v / total, 1)} for k, v in counts.most_common()]


def _profile(
    ctx: Context, door: Endpoint, node: Server, redis_url: str, script: Path
) -> dict[str, Any]:
    """py-spy on the node during a 50-client hit run (-M prepared)."""
    if not ctx.tools.has("py-spy"):
        return {"skipped": ctx.tools.missing_reason("py-spy")}
    secs = 5 if ctx.quick else 10
    ctx.step(f"profiling the node (py-spy, {secs} s) at {CLIENTS} clients, all hits")
    box: dict[str, Any] = {}
    before = door_answers(node, redis_url)
    work = _workdir(ctx)
    load = threading.Thread(
        target=lambda: box.update(
            run_pgbench(ctx, door, CLIENTS, workdir=work, script=script, seconds=secs + 4,
                        tag="-profile")
        )
    )  # fmt: skip
    load.start()
    time.sleep(2)
    pid = node.proc.pid
    raw = ctx.tmp / "pgcache" / "profile-node.txt"
    svg = ctx.out_dir / "pgcache-profile.svg"
    cpu0 = tree_cpu_seconds(pid, reaped=True)
    started = time.monotonic()
    base = [
        *ctx.pinning.prefix(ctx.pinning.load), ctx.tools.path("py-spy"), "record",
        "--pid", str(pid), "--duration", str(secs), "--rate", str(_RATE), "--nonblocking",
    ]  # fmt: skip
    done = subprocess.run(
        [*base, "--format", "raw", "--nolineno", "-o", str(raw)],
        capture_output=True, text=True, timeout=secs + 60,
    )  # fmt: skip
    window = time.monotonic() - started
    cpu = tree_cpu_seconds(pid, reaped=True) - cpu0
    load.join()
    answers = dict(door_answers(node, redis_url) - before)
    if done.returncode != 0 or not raw.exists():
        return {"skipped": (done.stderr or done.stdout)[-400:]}
    tps = float(box.get("rps", 0.0))
    text = raw.read_text()
    s = summarize_collapsed(text, top=20)
    s.pop("node_functions_inclusive", None)
    s["top_inclusive"] = code_frames(text, s["samples"], top=20)
    s["buckets"] = buckets(text)
    us = cpu / (tps * window) * 1e6 if tps else 0.0
    for key in ("top_self", "top_inclusive", "by_package"):
        for row in s[key]:
            row["us_per_txn"] = round(row["pct"] / 100 * us, 1)
    for row in s["buckets"]:
        row["us_per_txn"] = round(row["pct"] / 100 * us, 1)
    errors = re.search(r"Errors: (\d+)", done.stderr + done.stdout)
    s |= {
        "seconds": secs,
        "load_tps": tps,
        "load_errors": box.get("error_count", 0),
        "cache_statuses": answers,
        "cpu_share_of_one_core": round(cpu / window, 3),
        "busy_sample_share": round(s["samples"] / (_RATE * secs), 3),
        "py_spy_errors": int(errors.group(1)) if errors else 0,
        "cpu_us_per_txn": round(us, 1),
        "raw": str(raw),
    }
    # A flame graph for people (a second, shorter recording: py-spy writes one format).
    load2 = threading.Thread(
        target=lambda: run_pgbench(
            ctx, door, CLIENTS, workdir=work, script=script, seconds=secs + 4, tag="-flame"
        )
    )
    load2.start()
    time.sleep(2)
    flame = subprocess.run(
        [*base, "--format", "flamegraph", "-o", str(svg)],
        capture_output=True, text=True, timeout=secs + 60,
    )  # fmt: skip
    load2.join()
    if flame.returncode == 0 and svg.exists():
        s["flamegraph"] = svg.name
    return s


# ------------------------------------------------------------------ targets and summary


def _judge(result: ScenarioResult, seconds: int, heavy_seconds: int, has_pgpool: bool) -> None:
    _notes(result, seconds, heavy_seconds)
    get = result.get
    r = result.ratios
    door = get(f"door-point-{CLIENTS}")
    direct = get(f"direct-point-{CLIENTS}")
    assert door and direct
    for suffix in ("", "-extended"):
        d, dr = get(f"door-point-{CLIENTS}{suffix}"), get(f"direct-point-{CLIENTS}{suffix}")
        mode = suffix.lstrip("-") or "prepared"
        if d and dr:
            r[f"door_vs_direct_tps_{mode}"] = ratio(d.rps, dr.rps)
            r[f"door_vs_direct_p50_{mode}"] = ratio(d.p50_ms, dr.p50_ms)
    # Misses (or uncached answers) in measured hit runs: each one is a defect to report.
    not_hits = {}
    for name, runs in result.extra["runs"].items():
        if name.startswith("door-"):
            bad = sum(s.get("cache_statuses", {}).get(k, 0) for s in runs
                      for k in ("miss", "none", "stale", "swr"))  # fmt: skip
            if bad:
                not_hits[name] = bad
        elif name.startswith("pgpool-"):
            bad = sum(s.get("cache_statuses", {}).get("misses", 0) for s in runs)
            if bad:
                not_hits[name] = bad
    result.extra["not_hits_in_measured_runs"] = not_hits
    errors = {m.name: m.errors for m in result.measurements if m.errors}
    result.targets.append(
        Target(
            "errors and non-hits in measured cache runs",
            "0",
            f"errors {sum(errors.values())}, non-hits {sum(not_hits.values())}"
            + (f" ({errors} {not_hits})" if errors or not_hits else ""),
            not errors and not not_hits,
        )
    )
    check = result.extra["correctness"]
    wrong = {k: v for k, v in check.items() if isinstance(v, dict) and not (
        v["point_equal"] and v["heavy_equal"] and not v["errors"])}  # fmt: skip
    result.targets.append(
        Target(
            "cached answers equal PostgreSQL's",
            "all",
            f"{check['ids_checked']} point ids + the aggregate: "
            + ("all equal" if not wrong else f"DIFFER: {wrong}"),
            not wrong,
        )
    )
    if not has_pgpool:
        for name in ("door hit tps vs pgpool-II, 50 clients", "door hit p50 vs pgpool-II"):
            result.targets.append(Target(name, "", "pgpool-II skipped", None))
        return
    for suffix in ("", "-extended"):
        d, p = get(f"door-point-{CLIENTS}{suffix}"), get(f"pgpool-point-{CLIENTS}{suffix}")
        mode = suffix.lstrip("-") or "prepared"
        if d and p:
            r[f"door_vs_pgpool_tps_{mode}"] = ratio(d.rps, p.rps)
            r[f"door_vs_pgpool_p50_{mode}"] = ratio(d.p50_ms, p.p50_ms)
            if d.server_cpu_us_per_request and p.server_cpu_us_per_request:
                r[f"door_vs_pgpool_cpu_per_txn_{mode}"] = ratio(
                    d.server_cpu_us_per_request, p.server_cpu_us_per_request
                )
    for clients in (HEAVY_CLIENTS, 1):
        d, p = get(f"door-heavy-{clients}"), get(f"pgpool-heavy-{clients}")
        if d and p:
            r[f"heavy_door_vs_pgpool_p50_{clients}"] = ratio(d.p50_ms, p.p50_ms)
            r[f"heavy_door_vs_pgpool_tps_{clients}"] = ratio(d.rps, p.rps)
    pool = get(f"pgpool-point-{CLIENTS}")
    assert pool
    ext = r.get("door_vs_pgpool_tps_extended")
    result.targets.append(
        Target(
            f"door hit tps vs pgpool-II, {CLIENTS} clients, -M prepared",
            f">= {GOAL_TPS}x",
            f"{r['door_vs_pgpool_tps_prepared']:.2f}x ({door.rps:,.0f} vs {pool.rps:,.0f} tps"
            + (f"; -M extended both: {ext:.2f}x" if ext is not None else "")
            + ")",
            r["door_vs_pgpool_tps_prepared"] >= GOAL_TPS,
        )
    )
    ext_p50 = r.get("door_vs_pgpool_p50_extended")
    result.targets.append(
        Target(
            f"door hit p50 vs pgpool-II hit p50, {CLIENTS} clients, -M prepared",
            f"<= {GOAL_P50}x",
            f"{r['door_vs_pgpool_p50_prepared']:.2f}x ({door.p50_ms:.3f} vs "
            f"{pool.p50_ms:.3f} ms"
            + (f"; -M extended both: {ext_p50:.2f}x" if ext_p50 is not None else "")
            + ")",
            r["door_vs_pgpool_p50_prepared"] <= GOAL_P50,
        )
    )
    for clients in (HEAVY_CLIENTS, 1):
        d, p = get(f"door-heavy-{clients}"), get(f"pgpool-heavy-{clients}")
        if d and p:
            key = f"heavy_door_vs_pgpool_p50_{clients}"
            result.targets.append(
                Target(
                    f"heavy aggregate hit p50 vs pgpool-II, {clients} client(s)",
                    f"<= {GOAL_P50}x",
                    f"{r[key]:.2f}x ({d.p50_ms:.3f} vs {p.p50_ms:.3f} ms)",
                    r[key] <= GOAL_P50,
                )
            )


def _notes(result: ScenarioResult, seconds: int, heavy_seconds: int) -> None:
    warnings = result.extra.get("node_log_warnings") or {}
    if warnings:
        result.notes.append(
            "Warnings in the node's log during the scenario (startup ones included): "
            + ", ".join(f"{k} x{v}" for k, v in sorted(warnings.items()))
            + ". cache_tier_unavailable: a lookup that needed Redis (not answered by the "
            "hot tier) could not reach it, and the read went to the origin as a miss."
        )
    pg_per_hit = {
        name: statistics.median(s["cpu_us_per_txn"].get("postgres", 0.0) for s in runs)
        for name, runs in result.extra["runs"].items()
        if name.startswith("pgpool-") and all("cpu_us_per_txn" in s for s in runs)
    }
    if any(v > 1 for v in pg_per_hit.values()):
        result.notes.append(
            "pgpool-II's hits still cost PostgreSQL CPU (µs per transaction, median: "
            + ", ".join(f"{k} {v:.0f}" for k, v in pg_per_hit.items())
            + "), with no cache misses: it passes part of each extended-protocol exchange "
            "to its backend. The door's hits cost PostgreSQL nothing; with -M extended each "
            "hit's Parse still goes to the origin (so that the origin's session knows the "
            "unnamed statement), hence its origin CPU."
        )
    load = max(result.extra["loadavg_before"][0], result.extra["loadavg_after"][0])
    if load > 2.5:
        result.notes.append(
            f"The machine was busy with other work (load average up to {load:.1f} on "
            f"{os.cpu_count()} cores): absolute numbers and single rounds are noisy."
        )
    result.notes += [
        f"Point runs: pgbench -n -f SCRIPT -c {CLIENTS} -j 2 -T {seconds}; heavy runs: "
        f"-c {HEAVY_CLIENTS} -j 2 and -c 1, -T {heavy_seconds}; PGSSLMODE=disable; pgbench "
        "on the load CPU; node, origin and pgpool-II (all its children) share the server "
        "CPU; PostgreSQL (private, scale 10) is not pinned, so 'direct' may use both cores.",
        f"pgpool-II {_PGPOOL_CHILDREN} children, max_pool 1, memqcache_method shmem, "
        "raw mode. -M prepared works through pgpool-II 4.3 (named statements are cached "
        "too), so both modes are measured for both caches. pgpool-II counts two cache hits "
        "per extended-protocol transaction; 'misses' are its num_selects. It keys entries by "
        "the exact statement text (pgbench sends a script line with its newline: another "
        "client sending the same statement without it misses); the door's key ignores the "
        "hint comment and that whitespace.",
        f"p50/p99 come from a {_SAMPLING:.0%} sample of pgbench's per-transaction log for "
        "cache legs at 10/50 clients, from every transaction otherwise. 'server CPU "
        "µs/txn' = node + origin (door) or pgpool-II (parent and children) per "
        "transaction; PostgreSQL's CPU (backends included) is listed apart.",
    ]


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def summary_markdown(result: ScenarioResult) -> str:
    lines = [
        f"# pgcache — {result.title}",
        "",
        "| leg | tps | latency avg ms | p50 ms | p90 ms | p99 ms | errors | cache answers "
        "(all rounds) | CPU µs/txn |",
        "|---|--:|--:|--:|--:|--:|--:|---|--:|",
    ]
    runs = result.extra.get("runs", {})
    for m in result.measurements:
        rs = runs.get(m.name, [])
        statuses = m.error_detail.get("cache_statuses", {})
        answers = ", ".join(f"{k} {v:,}" for k, v in sorted(statuses.items())) or "—"
        cpu = cpu_per_server(rs)
        lines.append(
            f"| {m.label} | {_fmt(m.rps)} | {m.mean_ms:.3f} | {m.p50_ms:.3f} | {m.p90_ms:.3f} | "
            f"{m.p99_ms:.3f} | {m.errors} | {answers} | {cpu} |"
        )
    lines += ["", "| ratio | value |", "|---|--:|"]
    lines += [f"| {k} | {v} |" for k, v in result.ratios.items()]
    lines += ["", "| target | goal | measured | met |", "|---|---|---|:-:|"]
    mark = {True: "yes", False: "NO", None: "n/a"}
    lines += [f"| {t.name} | {t.goal} | {t.measured} | {mark[t.met]} |" for t in result.targets]
    check = result.extra.get("correctness", {})
    if check:
        lines += ["", f"Correctness ({check['ids_checked']} point ids and the aggregate, "
                      "each answer compared with PostgreSQL's):", ""]  # fmt: skip
        for name in ("door", "pgpool"):
            c = check.get(name)
            if c:
                lines.append(
                    f"- {name}: point answers equal: {c['point_equal']}, aggregate equal: "
                    f"{c['heavy_equal']}, cache answers during the check: "
                    f"{c.get('cache_answers', {})}, errors: {c['errors'] or 'none'}"
                )
    prof = result.extra.get("profile", {})
    if "skipped" in prof:
        lines += ["", f"Profile skipped: {prof['skipped']}"]
    elif prof:
        flame = prof.get("flamegraph")
        flame = f"; flame graph: [{flame}]({flame})" if flame else ""
        lines += [
            "",
            f"## Where a wire hit's time goes (node, py-spy {prof['seconds']} s at {CLIENTS} "
            f"clients, -M prepared, {prof['load_tps']:,.0f} tps under the profiler, all "
            f"hits: {prof['cache_statuses']})",
            "",
            f"{prof['samples']} samples, busy in {prof['busy_sample_share']:.0%} of them; the "
            f"node used {prof['cpu_share_of_one_core']:.0%} of a core, "
            f"{prof['cpu_us_per_txn']} µs CPU per transaction" + flame + ".",
            "",
            "| where (first matching frame from the leaf up) | share | ≈ µs/txn |",
            "|---|--:|--:|",
        ]
        lines += [f"| {b['bucket']} | {b['pct']}% | {b['us_per_txn']} |" for b in prof["buckets"]]
        lines += ["", "| top self frames | share | ≈ µs/txn |", "|---|--:|--:|"]
        lines += [
            f"| `{f['function']}` | {f['pct']}% | {f['us_per_txn']} |" for f in prof["top_self"]
        ]
        lines += ["", "| cache-edge frames, inclusive | share | ≈ µs/txn |", "|---|--:|--:|"]
        lines += [
            f"| `{f['function']}` | {f['pct']}% | {f['us_per_txn']} |"
            for f in prof["top_inclusive"]
        ]
        lines += [
            "",
            "Shares are of py-spy's busy samples; ≈ µs/txn = share x the node's CPU per "
            "transaction, a guide only. py-spy sees Python frames: time in C (uvloop, "
            "msgpack, socket syscalls) is charged to the Python frame that called it. Self "
            "time of `serve`/`Runner.run` is the event loop's own C code.",
        ]
    lines += ["", *[f"Note: {n}" for n in result.notes]]
    return "\n".join(lines) + "\n"
