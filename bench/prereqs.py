"""Which outside tools the suite found, and exactly what to install for the missing ones.

A missing tool never stops the whole suite: the scenarios (or the legs of a
scenario) that need it are reported as skipped, naming the package to install.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from cache_edge.devtools.services import pg_bindir

__all__ = ["SETUP_HINT", "Tools", "find_tools"]

SETUP_HINT = (
    "run `sudo bench/setup.sh` (Debian/Ubuntu: apt-get install -y wrk pgbouncer pgpool2 "
    "postgresql redis-server) and `.venv/bin/pip install -e '.[dev]'`"
)

# tool -> (Debian package or pip extra that provides it, what it is used for)
_WHAT = {
    "wrk": ("apt-get install -y wrk", "HTTP load generator (hit, miss, heavy, wan)"),
    "redis-server": ("apt-get install -y redis-server", "private Redis per scenario"),
    "pgbench": ("apt-get install -y postgresql-client", "loads the pgbench tables"),
    "initdb": ("apt-get install -y postgresql", "private PostgreSQL for the storm scenario"),
    "pgbouncer": ("apt-get install -y pgbouncer", "storm baseline"),
    "pgpool": ("apt-get install -y pgpool2", "heavy baseline (pgpool-II query cache)"),
    "taskset": ("apt-get install -y util-linux", "pins servers and load to different cores"),
    "py-spy": ("pip install py-spy (in the dev extra)", "hit-path profile"),
    "matplotlib": ("pip install matplotlib (in the dev extra)", "PNG charts"),
    "rich": ("pip install rich (in the dev extra)", "live progress display"),
}


def _which(name: str) -> str | None:
    # pgbouncer and pgpool live in /usr/sbin, which a non-root PATH may lack; py-spy in the
    # venv's bin, which is not on PATH when the venv is not activated.
    extra = f"{Path(sys.executable).parent}:/usr/sbin:/usr/local/sbin:/sbin"
    return shutil.which(name) or shutil.which(name, path=extra)


@dataclass(frozen=True)
class Tools:
    paths: dict[str, str | None]
    pg_bindir: Path | None

    def has(self, name: str) -> bool:
        return self.paths.get(name) is not None

    def path(self, name: str) -> str:
        found = self.paths.get(name)
        if found is None:
            raise LookupError(self.missing_reason(name))
        return found

    def missing_reason(self, name: str) -> str:
        install, _ = _WHAT.get(name, ("?", ""))
        return f"{name} not found: {install} (or {SETUP_HINT})"

    def missing(self) -> list[str]:
        return [name for name, path in self.paths.items() if path is None]

    def report(self) -> str:
        lines = []
        for name in self.missing():
            install, used = _WHAT[name]
            lines.append(f"  missing {name:<13} {used}: {install}")
        if lines:
            lines.append(f"  to get everything: {SETUP_HINT}")
        return "\n".join(lines)


def find_tools() -> Tools:
    bindir = pg_bindir()
    paths: dict[str, str | None] = {
        name: _which(name)
        for name in ("wrk", "redis-server", "pgbench", "pgbouncer", "pgpool", "taskset", "py-spy")
    }
    if paths["pgbench"] is None and bindir is not None and (bindir / "pgbench").exists():
        paths["pgbench"] = str(bindir / "pgbench")
    paths["initdb"] = str(bindir / "initdb") if bindir is not None else None
    for module in ("matplotlib", "rich"):
        paths[module] = module if importlib.util.find_spec(module) is not None else None
    return Tools(paths, bindir)
