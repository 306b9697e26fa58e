"""Package bench.scenarios holds one module per scenario, each with ``TITLE`` and ``run(ctx)``."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from bench.context import Context
from bench.scenarios import (
    autoinv,
    chaos,
    heavy,
    hit,
    idle,
    memory,
    miss,
    pgcache,
    pgdoor,
    purge,
    sqlhit,
    stampede,
    storm,
    stream,
    tenants,
    wan,
    workers,
)
from bench.scenarios.base import ScenarioResult

__all__ = ["SCENARIOS", "Runner"]

Runner = Callable[[Context], ScenarioResult]

# In the order they run and are reported.
SCENARIOS: dict[str, ModuleType] = {
    "hit": hit,
    "miss": miss,
    "heavy": heavy,
    "storm": storm,
    "pgdoor": pgdoor,
    "pgcache": pgcache,
    "sqlhit": sqlhit,
    "stampede": stampede,
    "wan": wan,
    "purge": purge,
    "autoinv": autoinv,
    "stream": stream,
    "memory": memory,
    "idle": idle,
    "workers": workers,
    "tenants": tenants,
    "chaos": chaos,
}
