"""Run wrk with post.lua against one URL and return its JSON summary.

Bodies are msgpack. A templated body carries one integer parameter encoded as a
fixed-width msgpack uint32, so the Lua side can make a new, valid body per request
(random point lookups, or a sequence of never-seen keys) without a msgpack library.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from bench.procs import Pinning

__all__ = ["WrkError", "WrkPlan", "run_wrk", "split_template", "wrk_command"]

_SCRIPT = Path(__file__).with_name("post.lua")
_SENTINEL = 0xDEADBEEF  # packs as b"\xce\xde\xad\xbe\xef": a uint32 we can cut out
_MARK = "BENCH_JSON "


class WrkError(RuntimeError):
    """wrk failed or printed no summary."""


def split_template(body_with_sentinel: dict[str, Any]) -> tuple[bytes, bytes]:
    """Pack a request whose one parameter is the sentinel; return the bytes around it."""
    packed = msgpack.packb(body_with_sentinel)
    token = b"\xce" + _SENTINEL.to_bytes(4, "big")
    if packed.count(token) != 1:
        raise ValueError("the template must contain the sentinel parameter exactly once")
    prefix, _, suffix = packed.partition(token)
    return prefix, suffix


@dataclass(frozen=True)
class WrkPlan:
    """What every request of a run looks like."""

    url: str  # base URL, e.g. http://127.0.0.1:7410
    path: str
    body: bytes | None = None  # fixed mode
    template: tuple[bytes, bytes] | None = None  # random / sequence mode
    mode: str = "fixed"  # fixed | random | sequence
    lo: int = 1
    hi: int = 1
    authorization: str = ""
    content_type: str = "application/msgpack"
    accept: str = "application/msgpack"
    headers: tuple[tuple[str, str], ...] = ()  # more request headers (the /sql door's)

    SENTINEL = _SENTINEL

    def write(self, path: Path, threads: int) -> None:
        lines = {
            "path": self.path,
            "content_type": self.content_type,
            "accept": self.accept,
            "authorization": self.authorization,
            "mode": self.mode,
            "lo": str(self.lo),
            "hi": str(self.hi),
            "threads": str(threads),
        }
        if self.headers:
            lines["headers"] = "".join(f"{k}: {v}\n" for k, v in self.headers).encode().hex()
        if self.mode == "fixed":
            assert self.body is not None, "fixed mode needs a body"
            lines["body"] = self.body.hex()
        else:
            assert self.template is not None, f"{self.mode} mode needs a template"
            lines["prefix"] = self.template[0].hex()
            lines["suffix"] = self.template[1].hex()
        path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))


def wrk_command(
    wrk: str,
    plan: WrkPlan,
    *,
    connections: int,
    duration: int,
    workdir: Path,
    pinning: Pinning,
    threads: int = 1,
    timeout: int = 10,
) -> list[str]:
    """The wrk command line for ``plan`` (its plan file is written into ``workdir``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    plan_file = workdir / "wrk-plan.txt"
    plan.write(plan_file, threads)
    return [
        *pinning.prefix(pinning.load),
        wrk,
        f"-t{threads}",
        f"-c{max(connections, threads)}",
        f"-d{duration}s",
        f"--timeout={timeout}s",
        "-s",
        str(_SCRIPT),
        plan.url + plan.path,
        "--",
        str(plan_file),
    ]


def run_wrk(
    wrk: str,
    plan: WrkPlan,
    *,
    connections: int,
    duration: int,
    workdir: Path,
    pinning: Pinning,
    threads: int = 1,
    timeout: int = 10,
) -> dict[str, Any]:
    """One wrk run; the summary has requests, rps, latency percentiles (ms) and errors."""
    cmd = wrk_command(
        wrk,
        plan,
        connections=connections,
        duration=duration,
        workdir=workdir,
        pinning=pinning,
        threads=threads,
        timeout=timeout,
    )
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout + 30)
    for line in done.stdout.splitlines():
        if line.startswith(_MARK):
            summary: dict[str, Any] = json.loads(line[len(_MARK) :])
            break
    else:
        raise WrkError(
            f"wrk exited {done.returncode} without a summary:\n{done.stdout[-800:]}"
            f"\n{done.stderr[-800:]}"
        )
    errors = summary["errors"]
    summary["error_count"] = sum(errors.values())
    summary["rps"] = round(summary["requests"] / summary["duration_s"], 1)
    summary["client"] = f"wrk -t{threads} -c{connections}"
    return summary
