"""tenants: does a hit cost more when the config holds 10,000 tenants instead of one?

Two nodes of one region share the origin and the region's Redis and serve the same ttl
hits (~1 KB, 50 connections, wrk) for the bench tenant: one started with a config of that
tenant alone, the other with 10,000 tenants of 2 API keys each (the bench tenant last).
Their rounds are interleaved, and their order alternates from round to round, so noise
on the shared machine falls on both alike. The goal is the 10,000-tenant node within 5%
of the single-tenant one: every per-request lookup (API key, tenant, rate limit) must be
a dict lookup, not a scan. Server CPU per hit is reported beside throughput: on a busy
machine it is the steadier of the two.

What the run deliberately leaves out: the single-tenant node starts first and holds the
region's applier leadership, so the 10,000-tenant node does not long-poll the origin's
purge log for its 9,999 extra tenants (the origin here serves the bench tenant only: it
could not open a LISTEN connection and a pool per tenant for 10,000 tenants on one
PostgreSQL). That background cost is per region and grows with the tenants; the report
names it. The scenario checks the 10,000-tenant node never led (no poll in its log).

Besides: the time to load (parse and validate) a config of that size, and what a reload
costs (load, merge with the running settings, rebuild the API keys at a node or update the
pools at the origin), measured in this process; the nodes' RSS; and in-process lookups at
both sizes. Writes ``tenants.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import statistics
import time
import timeit
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from bench.context import TENANT, Context
from bench.procs import rss_bytes
from bench.scenarios.base import (
    Measurement,
    ScenarioResult,
    Skip,
    Target,
    Variant,
    measure_rounds,
    ratio,
    summarize,
    wrk_variant,
)
from bench.scenarios.common import HIT_PARAMS, HIT_SQL, node_plan, query_body, start_edge
from bench.stack import Stack
from cache_edge.node.auth import ApiKeys
from cache_edge.server.config import Settings, load_settings
from cache_edge.server.live_settings import merge_reloadable
from origin.core.pool import TenantPools

__all__ = ["TITLE", "run", "summary_markdown"]

CONNECTIONS = 50
TENANTS = 10_000
KEYS_PER_TENANT = 2
_LOOKUPS = 20_000  # calls per timed batch of a lookup
TITLE = f"hits with {TENANTS:,} tenants x {KEYS_PER_TENANT} keys in the config vs one tenant"


def run(ctx: Context) -> ScenarioResult:
    if not ctx.tools.has("wrk"):
        raise Skip(ctx.tools.missing_reason("wrk"))
    result = ScenarioResult("tenants", TITLE)
    body = query_body(HIT_SQL, HIT_PARAMS, ttl=3600)
    with Stack(ctx, "tenants") as st:
        # First: the single-tenant node, which takes the region's applier leadership.
        edge = start_edge(st, ctx.bench_dsn())
        one = edge.node
        st.prime(one, node_plan(ctx, one, body).body or b"")
        ctx.step(f"starting a node with {TENANTS:,} tenants x {KEYS_PER_TENANT} keys")
        big_config = _big_config(st, ctx)
        many = st.node(
            big_config,
            region="bench-1",
            redis_url=edge.redis_urls[0],
            origin_url=edge.origin.url,
            name="node-10k-tenants",
        )
        st.prime(many, node_plan(ctx, many, body).body or b"")
        variants = [
            wrk_variant(
                ctx, "one-tenant", "node, config of 1 tenant", node_plan(ctx, one, body),
                CONNECTIONS, lambda: [one.proc.pid],
            ),
            wrk_variant(
                ctx, "10k-tenants", f"node, config of {TENANTS:,} tenants x {KEYS_PER_TENANT} keys",
                node_plan(ctx, many, body), CONNECTIONS, lambda: [many.proc.pid],
            ),
        ]  # fmt: skip
        # More rounds than other scenarios: the goal is a 5% difference on a shared machine.
        rounds = 4 if ctx.quick else 10
        result.measurements, paired = _alternating_rounds(ctx, variants, rounds)
        result.extra["rss_mib"] = {
            "one-tenant": round(rss_bytes(one.proc.pid) / 2**20, 1),
            "10k-tenants": round(rss_bytes(many.proc.pid) / 2**20, 1),
        }
        result.extra["10k_node_polls_in_log"] = _polls_in_log(st, "node-10k-tenants")
        ctx.step("config load and reload times at both sizes")
        reps = 3 if ctx.quick else 7
        one_config = st.dir / "cache-edge.toml"
        result.extra["config_ms"] = {
            "one-tenant": _config_costs(one_config, reps),
            "10k-tenants": _config_costs(big_config, reps),
        }
        result.extra["config_bytes"] = big_config.stat().st_size
        result.extra["lookups_ns"] = _lookup_costs(
            {"one-tenant": one_config, "10k-tenants": big_config}, ctx.authorization
        )
    _judge(result, paired)
    (ctx.out_dir / "tenants.md").write_text(summary_markdown(result))
    return result


# ---------------------------------------------------------------- the big config


def _big_config(st: Stack, ctx: Context) -> Path:
    """The bench config with 9,999 more tenants before the bench tenant, 2 keys each."""
    one = tomllib.loads((st.dir / "cache-edge.toml").read_text())
    bench = one["tenants"][0]
    bench["api_keys_sha256"] = [ctx.api_key_sha256, _hash("bench-second-key")]
    others = [
        {
            "id": f"tenant-{i:05d}",
            "api_keys_sha256": [_hash(f"tenant-{i}-key-{j}") for j in range(KEYS_PER_TENANT)],
            "database_url": bench["database_url"],
            "pool_max_size": bench["pool_max_size"],
        }
        for i in range(1, TENANTS)
    ]
    one["tenants"] = [*others, bench]  # last: where a scan would look longest
    path = st.dir / "tenants-10k.toml"
    path.write_text(tomli_w.dumps(one))
    return path


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _polls_in_log(st: Stack, name: str) -> int:
    """Purge-log polls the node logged (warning level: only failures would show)."""
    log = st.dir / f"{name}.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count("invalidation_poll_failed") + text.count("invalidation_resync")


# ---------------------------------------------------------------- measuring


def _alternating_rounds(
    ctx: Context, variants: list[Variant], rounds: int
) -> tuple[list[Measurement], list[float]]:
    """A, B, B, A, A, B, ...: medians per variant, and each round's B/A throughput ratio."""
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    for v in variants:
        v.run = _recording(v.run, runs[v.name])
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        ctx.step(f"round {r + 1}/{rounds}")
        measure_rounds(ctx, order, 1)
    a, b = (runs[v.name] for v in variants)
    paired = [ratio(y["rps"], x["rps"]) for x, y in zip(a, b, strict=True)]
    return [summarize(v.name, v.label, runs[v.name]) for v in variants], paired


def _recording(
    fn: Callable[[], dict[str, Any]], into: list[dict[str, Any]]
) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        summary = fn()
        into.append(summary)  # measure_rounds adds the CPU per request to this same dict
        return summary

    return run


def _timed(fn: Callable[[], object], reps: int) -> dict[str, float]:
    """Wall time of ``fn`` in ms: the best of ``reps`` runs and their median."""
    took = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        took.append(time.perf_counter() - started)
    return {"min": round(min(took) * 1000, 2), "median": round(statistics.median(took) * 1000, 2)}


def _config_costs(path: Path, reps: int) -> dict[str, dict[str, float]]:
    """What starting with, and reloading, this config costs (ms, best and median of ``reps``).

    A reload (cache_edge.server.reload) loads the file in a thread, then merges it into
    the running settings and rebuilds the API keys (node) or updates the pools (origin) on
    the event loop: ``*_on_loop`` is the part during which the server answers nothing.
    """
    text = path.read_text()
    running = load_settings(path, env={})
    keys = ApiKeys(running.tenants)
    loaded = load_settings(path, env={})
    # A realistic reload: one tenant's key rotated, the rest unchanged.
    changed = dataclasses.replace(loaded.tenants[0], api_keys_sha256=(_hash("new"),))
    rotated = dataclasses.replace(loaded, tenants=(changed, *loaded.tenants[1:]))

    pools = TenantPools(running)  # no connection until a tenant's first query

    def node_on_loop(new: Settings) -> None:
        effective, _ = merge_reloadable(running, new)
        keys.replace(effective.tenants)

    def origin_on_loop(new: Settings) -> None:
        effective, _ = merge_reloadable(running, new)
        pools.update(effective)

    return {
        "toml_parse": _timed(lambda: tomllib.loads(text), reps),
        "load_settings": _timed(lambda: load_settings(path, env={}), reps),
        "api_keys_build": _timed(lambda: ApiKeys(running.tenants), reps),
        "reload_merge": _timed(lambda: merge_reloadable(running, rotated), reps),
        "reload_keys_replace": _timed(lambda: keys.replace(running.tenants), reps),
        "node_reload_on_loop": _timed(lambda: node_on_loop(rotated), reps),
        "origin_reload_on_loop": _timed(lambda: origin_on_loop(rotated), reps),
        "node_reload_total": _timed(lambda: node_on_loop(load_settings(path, env={})), reps),
    }


def _lookup_costs(paths: dict[str, Path], authorization: str) -> dict[str, dict[str, float]]:
    """ns per call, in this process, of what every request looks up, per config: the best
    of 9 batches, the sizes' batches interleaved (so a burst of load elsewhere on the
    machine does not fall on one size only)."""
    calls: dict[str, dict[str, Callable[[], object]]] = {}
    for size, path in paths.items():
        settings = load_settings(path, env={})
        keys = ApiKeys(settings.tenants)
        calls[size] = {
            "authenticate": functools.partial(keys.authenticate, authorization),
            "tenant": functools.partial(settings.tenant, TENANT),
            "rate_limit_for": functools.partial(settings.rate_limit_for, TENANT),
        }
    best: dict[str, dict[str, float]] = {size: {} for size in paths}
    for _ in range(9):
        for size, fns in calls.items():
            for name, fn in fns.items():
                took = timeit.timeit(fn, number=_LOOKUPS) / _LOOKUPS * 1e9
                best[size][name] = round(min(took, best[size].get(name, took)))
    return best


# ---------------------------------------------------------------- verdict and report


def _judge(result: ScenarioResult, paired: list[float]) -> None:
    one, many = result.get("one-tenant"), result.get("10k-tenants")
    assert one is not None and many is not None
    cpu_one, cpu_many = one.server_cpu_us_per_request, many.server_cpu_us_per_request
    result.ratios = {
        "10k_vs_1_tenant_rps": ratio(many.rps, one.rps),
        "10k_vs_1_tenant_rps_paired_median": round(statistics.median(paired), 3),
        "10k_vs_1_tenant_cpu_per_request": ratio(cpu_many or 0.0, cpu_one or 0.0),
        "10k_vs_1_tenant_p99": ratio(many.p99_ms, one.p99_ms),
    }
    result.extra["paired_rps_ratios"] = paired
    cfg = {k: v["min"] for k, v in result.extra["config_ms"]["10k-tenants"].items()}
    cpu_ratio = result.ratios["10k_vs_1_tenant_cpu_per_request"]
    result.targets = [
        Target(
            f"hit throughput, {TENANTS:,} tenants vs 1",
            "within 5% (>= 0.95x)",
            f"{result.ratios['10k_vs_1_tenant_rps']:.3f}x ({many.rps:,.0f} vs {one.rps:,.0f} "
            f"req/s; round by round {', '.join(f'{p:.2f}' for p in paired)})",
            result.ratios["10k_vs_1_tenant_rps"] >= 0.95,
        ),
        Target(
            f"server CPU per hit, {TENANTS:,} tenants vs 1",
            "within 5% (<= 1.05x)",
            f"{cpu_ratio:.3f}x ({cpu_many or 0:.0f} vs {cpu_one or 0:.0f} µs)",
            cpu_ratio <= 1.05 if cpu_one and cpu_many else None,
        ),
        Target(
            f"config load, {TENANTS:,} tenants",
            "(no goal)",
            f"{cfg['load_settings']:,.0f} ms ({cfg['toml_parse']:,.0f} ms of it tomllib)",
            None,
        ),
        Target(
            f"reload, {TENANTS:,} tenants",
            "(no goal)",
            f"node: {cfg['node_reload_on_loop']:,.1f} ms on the event loop, "
            f"{cfg['node_reload_total']:,.0f} ms in all; origin: "
            f"{cfg['origin_reload_on_loop']:,.1f} ms on the event loop",
            None,
        ),
    ]
    statuses = {m.name: m.error_detail.get("cache_statuses", {}) for m in result.measurements}
    for name, seen in statuses.items():
        if set(seen) - {"ttl"}:
            result.notes.append(f"{name}: not every answer was a ttl hit: {seen}")
    result.notes.append(
        "Per-request cost only. Not measured: the region's purge applier (in one process per "
        "region, the leader) keeps one long-poll per tenant to the origin and publishes a "
        "hot-tier heartbeat per tenant every memory_lease/4 s, which every node process of "
        "the region applies; that background work grows with the number of tenants. Here the "
        "single-tenant node leads, and the origin serves the bench tenant only."
    )
    polls = result.extra["10k_node_polls_in_log"]
    if polls:
        result.notes.append(
            f"The {TENANTS:,}-tenant node logged {polls} purge-log poll failures or resyncs: it "
            "held the region's applier leadership for a while, so its numbers include polling "
            "the origin for tenants the origin does not serve."
        )


def summary_markdown(result: ScenarioResult) -> str:
    lines = [
        f"# tenants — {result.title}",
        "",
        "| variant | req/s | p50 ms | p99 ms | errors | server CPU µs/req | RSS MiB |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    rss = result.extra.get("rss_mib", {})
    for m in result.measurements:
        cpu = f"{m.server_cpu_us_per_request:.0f}" if m.server_cpu_us_per_request else ""
        lines.append(
            f"| {m.label} | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.errors} | "
            f"{cpu} | {rss.get(m.name, '')} |"
        )
    lines += ["", "| ratio | value |", "|---|--:|"]
    lines += [f"| {k} | {v} |" for k, v in result.ratios.items()]
    lines += ["", "| target | goal | measured | met |", "|---|---|---|:-:|"]
    mark = {True: "yes", False: "NO", None: "n/a"}
    lines += [f"| {t.name} | {t.goal} | {t.measured} | {mark[t.met]} |" for t in result.targets]
    config = result.extra.get("config_ms", {})
    if config:
        size = result.extra.get("config_bytes", 0)
        lines += [
            "",
            f"Config costs, ms, in the bench process (the {TENANTS:,}-tenant file is "
            f"{size / 2**20:.1f} MiB of TOML). A reload (cache_edge.server.reload) loads the "
            "file in a thread; the merge with the running settings and the new API-key index "
            "(node) or the pools' update (origin) run on the event loop (`*_on_loop`; one "
            "tenant's key rotated, the rest unchanged). Best and median of the repetitions:",
            "",
            f"| step | 1 tenant, best | {TENANTS:,} tenants, best | {TENANTS:,} tenants, median |",
            "|---|--:|--:|--:|",
        ]
        one, many = config.get("one-tenant", {}), config.get("10k-tenants", {})
        lines += [
            f"| {k} | {one.get(k, {}).get('min', '')} | {v['min']} | {v['median']} |"
            for k, v in many.items()
        ]
    lookups = result.extra.get("lookups_ns", {})
    if lookups:
        one, many = lookups.get("one-tenant", {}), lookups.get("10k-tenants", {})
        lines += [
            "",
            "Per-request lookups in the bench process, ns per call (best of 9 batches):",
            "",
            "| lookup | 1 tenant | " + f"{TENANTS:,} tenants |",
            "|---|--:|--:|",
        ]
        lines += [f"| `{k}` | {one.get(k, '')} | {many.get(k, '')} |" for k in many]
    lines += ["", *[f"Note: {n}" for n in result.notes]]
    return "\n".join(lines) + "\n"
