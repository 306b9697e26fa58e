"""Write a run's results: ``latest.json`` for machines, ``RESULTS.md`` for the README."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.scenarios.base import ScenarioResult

__all__ = ["markdown", "results_document", "write_json", "write_markdown"]

_MARK = {True: "✅", False: "❌", None: "n/a"}
# The variant each scenario's "vs baseline" column divides by.
BASELINES = {
    "hit": "fixed-body",
    "miss": "direct",
    "heavy": "pgpool",
    "storm": "pgbouncer",
    "wan": "direct",
    "workers": "workers-1",
}


def results_document(
    stamp: str,
    machine: dict[str, Any],
    run: dict[str, Any],
    results: list[ScenarioResult],
) -> dict[str, Any]:
    return {
        "suite": "cache-edge bench",
        "date": stamp,
        "machine": machine,
        "run": run,
        "scenarios": {r.name: asdict(r) for r in results},
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def _num(value: float, digits: int = 2) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def _scenario_table(r: ScenarioResult) -> list[str]:
    base = r.get(BASELINES.get(r.name, ""))
    lines = [
        "| variant | client | req/s | p50 ms | p99 ms | errors | server CPU µs/req | "
        "req/s vs baseline |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for m in r.measurements:
        cpu = f"{m.server_cpu_us_per_request:.0f}" if m.server_cpu_us_per_request else ""
        if base is None or m is base:
            vs = "baseline" if m is base else ""
        else:
            vs = f"{m.rps / base.rps:.2f}x" if base.rps else ""
        lines.append(
            f"| {m.label} | {m.client} | {_num(m.rps, 1)} | {_num(m.p50_ms)} | "
            f"{_num(m.p99_ms)} | {m.errors} | {cpu} | {vs} |"
        )
    return lines


def _profile_section(
    profile: dict[str, Any], what: str = "a hit", heading: str | None = None
) -> list[str]:
    if "skipped" in profile:
        return ["", f"Profile skipped: {profile['skipped']}"]
    heading = heading or f"Where {what}'s CPU time goes"
    lines = [
        "",
        f"#### {heading} (py-spy, {profile['samples']} samples, "
        f"flame graph: [{profile['flamegraph']}]({profile['flamegraph']}))",
        "",
        "| package (leaf frame) | share |",
        "|---|--:|",
    ]
    lines += [f"| {p['package']} | {p['pct']:.1f}% |" for p in profile["by_package"]]
    lines += ["", "| top functions by self time | share |", "|---|--:|"]
    lines += [f"| `{f['function']}` | {f['pct']:.1f}% |" for f in profile["top_self"][:10]]
    if profile.get("node_functions_inclusive"):
        lines += ["", "| cache-edge functions, inclusive | share |", "|---|--:|"]
        lines += [
            f"| `{f['function']}` | {f['pct']:.1f}% |"
            for f in profile["node_functions_inclusive"][:10]
        ]
    if profile.get("origin_functions_inclusive"):
        lines += ["", "| origin functions, inclusive | share |", "|---|--:|"]
        lines += [
            f"| `{f['function']}` | {f['pct']:.1f}% |"
            for f in profile["origin_functions_inclusive"][:10]
        ]
    return lines


def _extra_lines(r: ScenarioResult) -> list[str]:
    e = r.extra
    lines = []
    if r.name == "hit" and "response_bytes" in e:
        json_size = e.get("response_bytes_json")
        also = f", {json_size} bytes (JSON)" if json_size else ""
        lines.append(f"Response size: {e['response_bytes']} bytes (msgpack){also}.")
    if r.name == "heavy" and "uncached_single_query_p50_ms" in e:
        single = e["uncached_single_query_p50_ms"]
        lines.append(f"The query alone (1 client, uncached): p50 {single:.1f} ms.")
    if r.name == "memory" and "rss_mib" in e:
        rss, hot = e["rss_mib"], e["hot_tier"]
        growth = e["rss_growth_mib"]
        lines.append(
            f"Node with the hot tier on (default): RSS {rss['hot-start']} MiB at start, "
            f"{rss['fill']} MiB after caching, {rss['hits']} MiB after serving the keys as hits "
            f"(+{growth['hot tier on']} MiB); its hot tier reported {hot['hits']['entries']:,.0f} "
            f"entries, {hot['hits']['mib']} MiB."
        )
        lines.append(
            f"Node with the hot tier off: RSS {rss['cold-start']} MiB at start, "
            f"{rss['redis-hits']} MiB after serving every key as a Redis hit "
            f"(+{growth['hot tier off']} MiB, "
            f"{e['rss_growth_bytes_per_key_hot_tier_off']} bytes per key)."
        )
        lines.append(f"Redis: {e['redis_keys']:,} keys, {e['redis_used_memory_mib']} MiB.")
    if r.name == "idle" and "bytes_per_idle_connection" in e:
        lines.append(
            f"Node RSS per idle connection: {e['bytes_per_idle_connection'] / 1024:.1f} KiB "
            f"({e['idle_connections']:,} held), "
            f"{e['bytes_per_idle_connection_after_100kb_answer'] / 1024:.1f} KiB when the last "
            "answer was 100 KB (each measured on a fresh node process)."
        )
    if r.name == "stampede" and "executions" in e:
        per = ", ".join(f"{k}: {v}" for k, v in e["executions"].items())
        lines.append(f"Database executions per stampede: {per}.")
    return lines


def markdown(doc: dict[str, Any], results: list[ScenarioResult], charts: dict[str, str]) -> str:
    m, run = doc["machine"], doc["run"]
    commit = m["git_commit"][:10] + (" with uncommitted changes" if m["git_dirty"] else "")
    b = run["budget"]
    pinning = run["pinning"][:1].upper() + run["pinning"][1:]
    out = [
        "# Benchmark results",
        "",
        "<!-- Written by `python -m bench` (make bench); do not edit by hand. -->",
        "",
        f"Measured {doc['date']} on {m['nproc']} x {m['cpu_model']}, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}, commit `{commit}`.",
        f"{'Quick' if run['quick'] else 'Full'} run: each variant measured in {b['rounds']} "
        f"interleaved round(s) of {b['duration']} s after {b['warmup']} s of warmup; the "
        f"median is shown. {pinning}; PostgreSQL is not pinned.",
        "The machine is small and shared, so absolute numbers drift between runs: compare "
        "each variant with its baseline from the same run.",
        "",
        "## Targets",
        "",
        "Goals printed next to the results; measured, not asserted.",
        "",
        "| scenario | target | goal | measured | met |",
        "|---|---|---|---|:-:|",
    ]
    for r in results:
        for t in r.targets:
            out.append(f"| {r.name} | {t.name} | {t.goal} | {t.measured} | {_MARK[t.met]} |")
    skipped = [r for r in results if r.status != "ok"]
    for r in results:
        out += ["", f"## {r.name} — {r.title}", ""]
        if r.status != "ok":
            out.append(f"**{r.status}**: {r.reason.strip().splitlines()[0] if r.reason else ''}")
            continue
        out += _scenario_table(r)
        if r.ratios:
            out += ["", "Ratios: " + ", ".join(f"`{k}` = {v}" for k, v in r.ratios.items()) + "."]
        extra = _extra_lines(r)
        if extra:
            out += ["", *extra]
        for note in r.notes:
            out += ["", f"Note: {note}"]
        if r.name in charts:
            out += ["", f"![{r.name}]({charts[r.name]})"]
        if r.name == "hit" and "profile" in r.extra:
            out += _profile_section(r.extra["profile"], "a msgpack hit")
        if r.name == "hit" and "profile_json" in r.extra:
            out += _profile_section(r.extra["profile_json"], "a JSON hit")
        if r.name in ("miss", "storm") and "profile" in r.extra:
            load = "uncached requests" if r.name == "miss" else "1,000 storm clients"
            profiles = r.extra["profile"]
            if "skipped" in profiles:
                out += _profile_section(profiles)
            for process in ("node", "origin"):
                if process in profiles:
                    heading = f"Where the {process}'s CPU time goes under {load}"
                    out += _profile_section(profiles[process], heading=heading)
    if skipped:
        out += ["", "## Skipped or failed", ""]
        out += [f"- **{r.name}** ({r.status}): {r.reason.strip().splitlines()[0]}" for r in skipped]
    return "\n".join(out) + "\n"


def write_markdown(
    path: Path, doc: dict[str, Any], results: list[ScenarioResult], charts: dict[str, str]
) -> None:
    path.write_text(markdown(doc, results, charts))
