"""Sample a running server with py-spy and say where its CPU time goes.

Two recordings of the same load: a flame graph (SVG) for people, and collapsed
stacks (``raw``) that are summed here into the top functions by self time, by
inclusive time, and by package (aiohttp, redis-py, cache-edge, ...).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import Pinning

__all__ = ["PACKAGES", "record", "record_all", "summarize_collapsed"]

# (label, substrings of a frame's file) - the first match wins.
PACKAGES: list[tuple[str, tuple[str, ...]]] = [
    ("cache-edge (node code)", ("cache_edge/",)),
    ("cache-edge (origin code)", ("origin/",)),
    ("aiohttp (HTTP server)", ("aiohttp/", "multidict/", "yarl/")),
    ("redis-py (client)", ("redis/",)),
    ("asyncpg (PostgreSQL client)", ("asyncpg/",)),
    ("prometheus_client (metrics)", ("prometheus_client/",)),
    ("msgpack / orjson", ("msgpack/", "orjson")),
    ("logging / structlog", ("structlog/", "logging/")),
    ("asyncio / uvloop (event loop)", ("asyncio/", "uvloop", "<frozen", "selectors.py")),
]


def _package(frame: str) -> str:
    path = frame.rpartition("(")[2]
    for label, needles in PACKAGES:
        if any(n in path for n in needles):
            return label
    return "other (stdlib and the rest)"


def summarize_collapsed(text: str, top: int = 15) -> dict[str, Any]:
    """Top functions from collapsed stacks (``frame;frame;... count`` per line)."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_time[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    def pct(n: int) -> float:
        return round(100 * n / total, 1) if total else 0.0

    def skip_outer(frame: str) -> bool:
        # Frames every sample passes through say nothing about where the time goes.
        return inclusive[frame] >= total * 0.98

    return {
        "samples": total,
        "by_package": [{"package": k, "pct": pct(n)} for k, n in packages.most_common()],
        "top_self": [{"function": f, "pct": pct(n)} for f, n in self_time.most_common(top)],
        "top_inclusive": [
            {"function": f, "pct": pct(n)} for f, n in inclusive.most_common() if not skip_outer(f)
        ][:top],
        "node_functions_inclusive": [
            {"function": f, "pct": pct(n)}
            for f, n in inclusive.most_common()
            if "cache_edge/" in f and not skip_outer(f)
        ][:top],
        "origin_functions_inclusive": [
            {"function": f, "pct": pct(n)}
            for f, n in inclusive.most_common()
            if "(origin/" in f and not skip_outer(f)
        ][:top],
    }


def record(
    py_spy: str, pid: int, seconds: int, svg: Path, raw: Path, pinning: Pinning
) -> dict[str, Any]:
    """Record a flame graph, then collapsed stacks, of ``pid`` under load; summarize them."""
    base = [*pinning.prefix(pinning.load), py_spy, "record", "--pid", str(pid)]
    base += ["--duration", str(seconds), "--rate", "250"]
    for fmt, out, extra in (("flamegraph", svg, []), ("raw", raw, ["--nolineno"])):
        done = subprocess.run(
            [*base, "--format", fmt, *extra, "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy record failed: {(done.stderr or done.stdout)[-600:]}")
    return summarize_collapsed(raw.read_text())


def record_all(
    py_spy: str,
    pids: dict[str, int],
    seconds: int,
    out_dir: Path,
    raw_dir: Path,
    stem: str,
    pinning: Pinning,
) -> dict[str, Any]:
    """Record several processes at once (e.g. node and origin under the same load):
    ``{name: summary}``, with a flame graph ``<stem>-<name>.svg`` for each in ``out_dir``
    and the collapsed stacks in ``raw_dir``."""
    from concurrent.futures import ThreadPoolExecutor

    def one(name: str, pid: int) -> dict[str, Any]:
        svg = out_dir / f"{stem}-{name}.svg"
        try:
            summary = record(py_spy, pid, seconds, svg, raw_dir / f"{stem}-{name}.txt", pinning)
        except RuntimeError as exc:
            return {"skipped": str(exc)}
        summary["flamegraph"] = svg.name
        return summary

    with ThreadPoolExecutor(len(pids)) as pool:
        futures = {name: pool.submit(one, name, pid) for name, pid in pids.items()}
        return {name: f.result() for name, f in futures.items()}
