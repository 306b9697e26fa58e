"""idle: 10,000 idle keep-alive connections held open to one node.

A holder process (``python -m bench.load.idle``, on the load core) opens the
connections; each makes one ttl-hit request and then sits idle. Reported: the node's
RSS growth per idle connection, its open file descriptors, how many of them it kept
open to the end, and the latency of one ordinary client (a closed loop of the same
hit on its own connection) with and without the idle crowd, interleaved over rounds.
A second, smaller leg holds connections whose last answer was 100 KB: an idle
connection must not keep its last answer (cache_edge.server.serving drops it once sent).
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import msgpack

from bench.context import Context
from bench.load.rawhttp import build_request
from bench.load.run import run_loader
from bench.procs import ROOT, rss_bytes
from bench.scenarios.base import ScenarioResult, Target, ratio, summarize
from bench.scenarios.common import HIT_PARAMS, HIT_SQL, query_body, start_edge
from bench.stack import Server, Stack

__all__ = ["TITLE", "run"]

TITLE = "10,000 idle keep-alive connections to one node: memory each, and a client's latency"
_BIG = 100_000  # bytes of the answer the second leg's connections received last
_KIB = 1024


def _headers(ctx: Context) -> dict[str, str]:
    return {
        "Content-Type": "application/msgpack",
        "Accept": "application/msgpack",
        "Authorization": ctx.authorization,
    }


class _Holder:
    """The holder process: connections open from ``start`` until ``release``."""

    def __init__(
        self, ctx: Context, node: Server, count: int, body: dict[str, Any], parallel: int = 200
    ) -> None:
        request = build_request(
            "127.0.0.1", node.port, "/v1/query", _headers(ctx), msgpack.packb(body)
        )
        spec = {
            "host": "127.0.0.1",
            "port": node.port,
            "count": count,
            "parallel": parallel,
            "request_hex": request.hex(),
        }
        cmd = [*ctx.pinning.prefix(ctx.pinning.load), sys.executable, "-m", "bench.load.idle"]
        self._proc = subprocess.Popen(
            [*cmd, json.dumps(spec)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.held = self._wait_for("BENCH_HELD ", timeout=300)

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
                    result: dict[str, Any] = json.loads(line[len(mark) :])
                    return result
        except queue.Empty:
            pass
        self._proc.kill()
        raise RuntimeError(f"idle holder exited {self._proc.wait()} without {mark.strip()}")

    def release(self) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        done = self._wait_for("BENCH_JSON ", timeout=120)
        self._proc.wait(30)
        return done


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _client(ctx: Context, node: Server, body: dict[str, Any]) -> dict[str, Any]:
    """One ordinary client: a closed loop of ``body`` on its own keep-alive connection."""
    spec = {
        "host": "127.0.0.1",
        "port": node.port,
        "path": "/v1/query",
        "headers": _headers(ctx),
        "body_hex": msgpack.packb(body).hex(),
        "concurrency": 1,
        "warmup": ctx.budget.warmup,
        "duration": ctx.budget.duration,
    }
    return run_loader("http", spec, ctx.pinning, timeout=ctx.budget.duration + 120)


def run(ctx: Context) -> ScenarioResult:
    count = ctx.budget.idle_connections
    result = ScenarioResult("idle", TITLE.replace("10,000", f"{count:,}"))
    hit = query_body(HIT_SQL, HIT_PARAMS, ttl=3600)
    big = {"sql": f"SELECT repeat('x', {_BIG}) AS r", "params": [], "cacheStrategy": {"ttl": 3600}}
    with Stack(ctx, "idle") as st:
        edge = start_edge(st, ctx.bench_dsn())
        config = st.config(ctx.bench_dsn(), name="idle.toml")

        def fresh_node(name: str) -> Server:
            # RSS does not shrink when memory is freed: each measurement gets a new process.
            node = st.node(
                config,
                region="bench-1",
                redis_url=edge.redis_urls[0],
                origin_url=edge.origin.url,
                name=name,
            )
            st.prime(node, msgpack.packb(hit))
            st.prime(node, msgpack.packb(big))
            return node

        alone: list[dict[str, Any]] = []
        crowded: list[dict[str, Any]] = []
        per_conn: list[float] = []
        legs: list[dict[str, Any]] = []
        for r in range(ctx.budget.rounds):
            node = fresh_node(f"node-round-{r + 1}")
            ctx.step(f"one client alone (round {r + 1}/{ctx.budget.rounds})")
            alone.append(_client(ctx, node, hit))
            before = rss_bytes(node.proc.pid)
            ctx.step(f"opening {count:,} idle connections (round {r + 1}/{ctx.budget.rounds})")
            holder = _Holder(ctx, node, count, hit)
            time.sleep(1)  # let the node settle
            held_rss, fds = rss_bytes(node.proc.pid), _fds(node.proc.pid)
            ctx.step(f"one client beside {holder.held['held']:,} idle connections")
            crowded.append(_client(ctx, node, hit))
            done = holder.release()
            per_conn.append((held_rss - before) / max(1, done["held"]))
            growth = round((held_rss - before) / 2**20, 1)
            legs.append({**done, "node_fds": fds, "rss_growth_mib": growth})
        big_count = max(1, count // 5)
        node = fresh_node("node-big-answers")
        _client(ctx, node, big)  # the same warm-up as the other nodes had
        ctx.step(f"{big_count:,} idle connections whose last answer was {_BIG // 1000} KB")
        before = rss_bytes(node.proc.pid)
        # Few at a time: 200 answers of 100 KB in flight at once would leave their peak of
        # write buffers in the RSS, which is not what an idle connection costs.
        holder = _Holder(ctx, node, big_count, big, parallel=10)
        time.sleep(1)
        big_rss = rss_bytes(node.proc.pid)
        big_done = holder.release()
    result.measurements.append(summarize("alone", "one client, no idle connections", alone))
    result.measurements.append(
        summarize("beside-idle", f"one client beside {count:,} idle connections", crowded)
    )
    bytes_each = statistics.median(per_conn)
    big_each = (big_rss - before) / max(1, big_done["held"])
    result.extra["idle_connections"] = count
    result.extra["bytes_per_idle_connection"] = round(bytes_each)
    result.extra["bytes_per_idle_connection_after_100kb_answer"] = round(big_each)
    result.extra["rounds"] = legs
    result.extra["big_answer_leg"] = big_done
    alone_p50, crowded_p50 = result.measurements[0].p50_ms, result.measurements[1].p50_ms
    result.ratios = {"p50_beside_idle_vs_alone": ratio(crowded_p50, alone_p50)}
    result.notes.append(
        "RSS growth of the node while the connections are held, divided by their number; "
        "each measured on a fresh node process (freed memory is not returned, so a second "
        "measurement on the same process would reuse it). Before the node dropped sent "
        "answers, a connection whose last answer was 100 KB held about 119 KB while idle."
    )
    kept = min(leg["still_open"] for leg in legs)
    result.targets += [
        Target(
            "memory per idle connection",
            "≤ 16 KiB",
            f"{bytes_each / _KIB:.1f} KiB ({big_each / _KIB:.1f} KiB after a 100 KB answer)",
            bytes_each <= 16 * _KIB and big_each <= 16 * _KIB,
        ),
        Target(
            "a client's p50 beside the idle crowd",
            "≤ 1.5x alone",
            f"{crowded_p50:.2f} ms vs {alone_p50:.2f} ms",
            crowded_p50 <= 1.5 * alone_p50,
        ),
        Target("idle connections kept open", f"all {count:,}", f"{kept:,}", kept == count),
    ]
    return result
