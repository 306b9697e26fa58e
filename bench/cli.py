"""``python -m bench [--quick] [--only NAME ...]``: run scenarios, write JSON, Markdown and PNGs.

A complete full run writes to bench/results/ (what the README links to). A quick
or partial run writes to bench/results/tmp/ instead, so a smoke run never replaces
the published numbers with a fragment; ``--output`` chooses any folder.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from bench.context import FULL, QUICK, Context
from bench.machine import machine_info, run_stamp
from bench.prereqs import find_tools
from bench.procs import ROOT, Pinning, raise_fd_limit
from bench.progress import Progress
from bench.scenarios import SCENARIOS
from bench.scenarios.base import ScenarioResult, Skip, timed

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="short runs (a few seconds each)")
    p.add_argument("--only", nargs="+", metavar="NAME", choices=list(SCENARIOS),
                   help=f"run only these scenarios: {', '.join(SCENARIOS)}")  # fmt: skip
    p.add_argument("--output", type=Path, help="results folder (default: see above)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    p.add_argument("--plain", action="store_true", help="plain log lines, no live display")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return p


def _pg_started(dsn: str) -> str | None:
    """When the PostgreSQL server (re)started; None if it does not answer."""
    import asyncpg

    async def ask() -> str:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return str(await conn.fetchval("SELECT pg_postmaster_start_time()"))
        finally:
            await conn.close()

    try:
        return asyncio.run(ask())
    except Exception:
        return None


def _check_postgres(dsn: str) -> str | None:
    import asyncpg

    async def attempt() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.close()

    try:
        asyncio.run(attempt())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _on_sigterm(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds every Stack, which stops its servers


def _reason(exc: BaseException) -> str:
    """One line: the error, and the last line of a child's log when it has one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return f"{first} ... {lines[-1]}" if len(lines) > 1 else first


def _run_one(ctx: Context, name: str, progress: Progress) -> ScenarioResult:
    module = SCENARIOS[name]
    progress.begin(name)
    pg_started = _pg_started(ctx.pg_admin_dsn)
    try:
        result = timed(lambda: module.run(ctx))
        progress.end(name, "ok", result.headline())
    except Skip as exc:
        result = ScenarioResult(name, module.TITLE, status="skipped", reason=str(exc))
        progress.end(name, "skipped", str(exc))
    except Exception as exc:
        result = ScenarioResult(name, module.TITLE, status="failed", reason=_reason(exc))
        result.extra["traceback"] = "".join(traceback.format_exception(exc))
        progress.end(name, "failed", result.reason)
    if _pg_started(ctx.pg_admin_dsn) != pg_started:
        # The machine is shared: someone else may restart the server under us.
        result.notes.append(
            "PostgreSQL at BENCH_PG_DSN restarted (or stopped answering) during this scenario, "
            "not by the suite: errors here (e.g. 503 database_unavailable) may come from that."
        )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name, module in SCENARIOS.items():
            print(f"{name:<10} {module.TITLE}")
        return 0
    names = args.only or list(SCENARIOS)
    complete = not args.quick and not args.only
    stamp = run_stamp()
    out_dir = args.output or (
        ROOT / "bench" / "results"
        if complete
        else ROOT / "bench" / "results" / "tmp" / ("quick" if args.quick else "partial")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = ROOT / "bench" / "results" / "tmp" / f"run-{stamp.replace(':', '')}"
    tools = find_tools()
    missing = tools.report()
    if missing:
        print("Some tools are missing; the scenarios that need them will be skipped:")
        print(missing)
    raise_fd_limit()
    ctx = Context(
        root=ROOT,
        out_dir=out_dir,
        tmp=tmp,
        quick=args.quick,
        budget=QUICK if args.quick else FULL,
        pinning=Pinning.detect(not args.no_pin),
        tools=tools,
    )
    problem = _check_postgres(ctx.pg_admin_dsn)
    if problem is not None:
        print(
            f"PostgreSQL at {ctx.pg_admin_dsn} does not answer ({problem}).\n"
            "Start it (apt-get install -y postgresql; service postgresql start) or point "
            "BENCH_PG_DSN at a server where you may create a database.",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    machine = machine_info(ROOT)
    print(
        f"cache-edge bench: {len(names)} scenario(s), {'quick' if args.quick else 'full'} run; "
        f"{ctx.pinning.describe()}; logs in {tmp.relative_to(ROOT)}"
    )
    results: list[ScenarioResult] = []
    started = time.monotonic()
    with Progress(
        [(n, SCENARIOS[n].TITLE) for n in names], live=False if args.plain else None
    ) as progress:
        ctx.step = progress.step
        for name in names:
            results.append(_run_one(ctx, name, progress))
    return _write(ctx, stamp, machine, names, results, time.monotonic() - started)


def _write(
    ctx: Context,
    stamp: str,
    machine: dict[str, object],
    names: list[str],
    results: list[ScenarioResult],
    seconds: float,
) -> int:
    from bench.charts import write_charts
    from bench.report import results_document, write_json, write_markdown

    run = {
        "quick": ctx.quick,
        "scenarios": names,
        "budget": asdict(ctx.budget),
        "pinning": ctx.pinning.describe(),
        "seconds": round(seconds, 1),
        "missing_tools": ctx.tools.missing(),
    }
    doc = results_document(stamp, machine, run, results)
    charts = write_charts(ctx.out_dir, results)
    write_json(ctx.out_dir / "latest.json", doc)
    write_markdown(ctx.out_dir / "RESULTS.md", doc, results, charts)
    rel = ctx.out_dir.relative_to(ROOT) if ctx.out_dir.is_relative_to(ROOT) else ctx.out_dir
    print(f"\nWrote {rel}/latest.json, RESULTS.md and {len(charts)} chart(s) in {seconds:.0f}s.")
    for r in results:
        for t in r.targets:
            mark = {True: "met", False: "NOT met", None: "n/a"}[t.met]
            print(f"  {r.name:<9} {t.name}: {t.measured} (goal {t.goal}) {mark}")
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"\n{r.name} failed: {r.reason}\n{r.extra.get('traceback', '')}", file=sys.stderr)
    if failed:
        print(f"Server logs: {ctx.tmp}", file=sys.stderr)
    return 1 if failed else 0
