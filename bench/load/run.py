"""Start a Python load generator (bench.load) in its own pinned process and read its summary."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench.procs import ROOT, Pinning

__all__ = ["LoadError", "run_loader"]

_MARK = "BENCH_JSON "


class LoadError(RuntimeError):
    """The load generator failed; the message has its stderr tail."""


def run_loader(kind: str, spec: dict[str, Any], pinning: Pinning, timeout: float) -> dict[str, Any]:
    cmd = [*pinning.prefix(pinning.load), sys.executable, "-m", "bench.load", kind]
    cmd.append(json.dumps(spec))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"{kind} load generator ran past {timeout:.0f}s") from exc
    for line in done.stdout.splitlines():
        if line.startswith(_MARK):
            result: dict[str, Any] = json.loads(line[len(_MARK) :])
            return result
    raise LoadError(f"{kind} load generator exited {done.returncode}:\n{done.stderr[-1500:]}")
