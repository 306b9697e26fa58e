"""pgbench against PostgreSQL-protocol endpoints (PostgreSQL, a pooler or cache, a node's
door): their setup, one run's numbers and the CPU it cost the servers behind them."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import asyncpg

from bench.context import Context
from bench.db import pgbench_init
from bench.procs import tree_cpu_seconds
from bench.stack import Server, Stack
from cache_edge.devtools.harness import free_port, wait_port

__all__ = [
    "Endpoint",
    "code_frames",
    "cpu_per_server",
    "pgbench_postgres",
    "run_pgbench",
    "server_pid",
    "start_door",
]


@dataclass(frozen=True)
class Endpoint:
    """Where pgbench connects, as whom, and which servers' CPU to charge to it."""

    name: str
    port: int
    user: str
    database: str
    _: KW_ONLY
    password: str = ""
    # (label, pid); a "postgres" one is reported but not counted as the endpoint's own cost.
    cpu: tuple[tuple[str, int], ...] = ()

    def dsn(self, port: int | None = None) -> str:
        auth = self.user + (f":{quote(self.password, safe='')}" if self.password else "")
        return f"postgresql://{auth}@127.0.0.1:{port or self.port}/{self.database}?sslmode=disable"


async def _create_database(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def pgbench_postgres(
    ctx: Context, st: Stack, database: str, *, max_connections: int, scale: int
) -> str:
    """A private PostgreSQL with ``pgbench -i -s SCALE`` in ``database``; returns its DSN."""
    ctx.step(f"starting a private PostgreSQL (max_connections {max_connections})")
    admin = st.postgres(max_connections=max_connections)
    dsn = f"postgresql://postgres@127.0.0.1:{urlsplit(admin).port or 5432}/{database}"
    asyncio.run(_create_database(admin, database))
    ctx.step(f"pgbench -i -s {scale} into the private PostgreSQL")
    pgbench_init(ctx.tools.paths["pgbench"], dsn, scale)
    return dsn


def start_door(
    st: Stack, config: Path, redis_url: str, origin_url: str, name: str
) -> tuple[Server, int]:
    """A node with its PostgreSQL door (``--pg-listen``); the node and the door's port."""
    port = free_port()
    node = st.node(
        config,
        region="bench-1",
        redis_url=redis_url,
        origin_url=origin_url,
        name=name,
        extra_args=("--pg-listen", f"127.0.0.1:{port}"),
    )
    wait_port(port, node.proc)
    return node, port


def server_pid(st: Stack, name: str) -> int:
    """The pid of the stack's child called ``name`` (Stack.postgres, .pgbouncer and .pgpool
    return a DSN or a port, not the process)."""
    return next(child.pid for child in st._children if child.name == name)


_RE = {
    "requests": re.compile(r"number of transactions actually processed: (\d+)"),
    "failed": re.compile(r"number of failed transactions: (\d+)"),
    "mean_ms": re.compile(r"latency average = ([\d.]+) ms"),
    "connect_ms": re.compile(r"initial connection time = ([\d.]+) ms"),
    "rps": re.compile(r"tps = ([\d.]+) \(without initial connection time\)"),
}


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _log_latencies_ms(prefix: Path) -> list[float]:
    """Per-transaction latencies from pgbench ``--log`` files (third column, µs), sorted;
    the files are removed."""
    out: list[float] = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        with path.open() as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 2 and fields[2].isdigit():
                    out.append(int(fields[2]) / 1000)
        path.unlink()
    out.sort()
    return out


def run_pgbench(
    ctx: Context,
    ep: Endpoint,
    clients: int,
    *,
    workdir: Path,
    script: Path | None = None,
    seconds: int = 0,
    transactions: int = 0,
    mode: str = "prepared",
    sampling: float | None = None,
    log: bool = False,
    defines: tuple[str, ...] = (),
    tag: str = "",
) -> dict[str, Any]:
    """One pgbench run of ``script`` (else the built-in ``-S``) for ``seconds`` (else
    ``transactions`` per client): tps, latency, failures, aborted clients, server CPU.

    Latency percentiles come from pgbench's per-transaction log (``log``, or a ``sampling``
    share of it), written to ``workdir`` and removed once read.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"{script.stem}-" if script is not None else ""
    prefix = workdir / f"{ep.name}-{stem}{clients}-{mode}{tag}"
    for stale in workdir.glob(prefix.name + ".*"):
        stale.unlink()
    workload = ["-f", str(script)] if script is not None else ["-S"]
    cmd = [
        *ctx.pinning.prefix(ctx.pinning.load), ctx.tools.path("pgbench"), "-n", *workload,
        "-M", mode, "-c", str(clients), "-j", str(min(2, clients)),
        "-h", "127.0.0.1", "-p", str(ep.port), "-U", ep.user,
    ]  # fmt: skip
    cmd += ["-T", str(seconds)] if seconds else ["-t", str(transactions)]
    for d in defines:
        cmd += ["-D", d]
    if log or sampling:
        cmd += ["--log", f"--log-prefix={prefix}"]
        if sampling:
            cmd.append(f"--sampling-rate={sampling}")
    cmd.append(ep.database)
    env = {**os.environ, "PGPASSWORD": ep.password, "PGSSLMODE": "disable",
           "PGCONNECT_TIMEOUT": "30"}  # fmt: skip
    # Exited descendants count too: PostgreSQL backends, recycled pgpool-II children.
    cpu_before = {label: tree_cpu_seconds(pid, reaped=True) for label, pid in ep.cpu}
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=workdir, timeout=(seconds or 60) + 240
    )
    cpu = {label: tree_cpu_seconds(pid, reaped=True) - cpu_before[label] for label, pid in ep.cpu}
    found = {k: r.search(done.stdout) for k, r in _RE.items()}
    if found["rps"] is None:
        raise RuntimeError(
            f"pgbench {' '.join(workload)} against {ep.name} ({clients} clients, -M {mode}) "
            f"exited {done.returncode} without a result:\n{(done.stderr or done.stdout)[-1500:]}"
        )

    def num(key: str) -> float:
        m = found[key]
        return float(m.group(1)) if m else 0.0

    errors = [ln for ln in done.stderr.splitlines() if "error" in ln.lower()]
    aborted = len(re.findall(r"client \d+ (?:script \d+ )?aborted", done.stderr))
    summary: dict[str, Any] = {
        "client": f"pgbench -M {mode}",
        "rps": num("rps"),
        "mean_ms": num("mean_ms"),
        "connect_ms": num("connect_ms"),
        "requests": int(num("requests")),
        "failed": int(num("failed")),
        "aborted_clients": aborted,
        "run_aborted": "Run was aborted" in done.stderr,
        "exit_code": done.returncode,
        "error_lines": sorted(set(errors))[:5],
    }
    summary["error_count"] = summary["failed"] + aborted
    lat = _log_latencies_ms(prefix) if (log or sampling) else []
    if lat:
        summary |= {
            "p50_ms": round(_percentile(lat, 0.50), 3),
            "p90_ms": round(_percentile(lat, 0.90), 3),
            "p99_ms": round(_percentile(lat, 0.99), 3),
            "max_ms": round(lat[-1], 3),
            "logged": len(lat),
        }
    else:
        summary |= {"p50_ms": 0.0, "p99_ms": 0.0}
    if cpu and summary["requests"]:
        per = {k: round(v / summary["requests"] * 1e6, 1) for k, v in cpu.items()}
        summary["cpu_us_per_txn"] = per
        # The endpoint's own CPU (PostgreSQL's, behind a pooler or cache, is listed apart).
        summary["server_cpu_us_per_request"] = round(
            sum(v for k, v in per.items() if k != "postgres"), 1
        )
    return summary


def cpu_per_server(runs: list[dict[str, Any]]) -> str:
    """The servers' CPU µs per transaction over runs (medians), as ``"120 node + 80 origin"``."""
    parts = [s["cpu_us_per_txn"] for s in runs if s.get("cpu_us_per_txn")]
    if not parts:
        return ""
    return " + ".join(f"{statistics.median([p[k] for p in parts]):.0f} {k}" for k in parts[0])


def code_frames(collapsed: str, total: int, top: int = 15) -> list[dict[str, Any]]:
    """cache-edge and origin functions of a py-spy profile (collapsed stacks) by inclusive
    share, without the frames every busy sample passes through (the CLI, the event loop's
    runner), whatever the share of idle."""
    counts: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        for frame in set(stack.split(";")):
            if "cache_edge/" in frame or "origin/" in frame:
                counts[frame] = counts.get(frame, 0) + int(n)
    outer = ("cli/", "runpy", "serving.py", "run_node", "run_origin")
    rows = [
        {"function": f, "pct": round(100 * n / total, 1)}
        for f, n in sorted(counts.items(), key=lambda kv: -kv[1])
        if total and not any(o in f for o in outer)
    ]
    return rows[:top]
