"""What every scenario of one run shares: the time budget, paths, tools, pinning and secrets."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.prereqs import Tools
from bench.procs import Pinning

__all__ = ["FULL", "QUICK", "TENANT", "Budget", "Context"]

TENANT = "bench"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_DB = "cache_edge_bench"


@dataclass(frozen=True)
class Budget:
    """How long and how often to measure. wrk takes whole seconds."""

    duration: int  # seconds of one measured run
    warmup: int  # seconds of load before a measured run (not measured)
    rounds: int  # interleaved repetitions of every variant; the median is reported
    profile_seconds: int
    purges: int
    memory_keys: int
    stampede_repeats: int
    clients: int = 1000  # storm and stampede
    idle_connections: int = 10_000  # held open to one node by the idle scenario


FULL = Budget(
    duration=5,
    warmup=1,
    rounds=3,
    profile_seconds=5,
    purges=1000,
    memory_keys=100_000,
    stampede_repeats=3,
)
QUICK = Budget(
    duration=2,
    warmup=1,
    rounds=1,
    profile_seconds=2,
    purges=50,
    memory_keys=5_000,
    stampede_repeats=1,
    idle_connections=2_000,
)


def _dsn_with_db(dsn: str, db: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{db}"


@dataclass
class Context:
    root: Path
    out_dir: Path  # where latest.json, RESULTS.md and the charts go
    tmp: Path  # logs and configs of this run (git-ignored)
    quick: bool
    budget: Budget
    pinning: Pinning
    tools: Tools
    pg_admin_dsn: str = field(default_factory=lambda: os.environ.get("BENCH_PG_DSN", DEFAULT_PG))
    api_key: str = field(default_factory=lambda: "ce_bench_" + secrets.token_urlsafe(18))
    node_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    step: Callable[[str], None] = print
    _bench_dsn: str | None = None

    @property
    def api_key_sha256(self) -> str:
        return hashlib.sha256(self.api_key.encode()).hexdigest()

    @property
    def authorization(self) -> str:
        return f"Bearer {self.api_key}"

    def bench_dsn(self) -> str:
        """The bench database with pgbench data at scale 10, prepared once per run."""
        if self._bench_dsn is None:
            from bench.db import prepare_database

            self.step("preparing the bench database (pgbench -i -s 10 on first use)")
            dsn = _dsn_with_db(self.pg_admin_dsn, BENCH_DB)
            asyncio.run(
                prepare_database(self.pg_admin_dsn, dsn, BENCH_DB, 10, self.tools.paths["pgbench"])
            )
            self._bench_dsn = dsn
        return self._bench_dsn
