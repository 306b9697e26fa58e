"""Run real origin and node processes for integration tests.

Each server is a ``python -m cache_edge.cli ...`` process (a child of the one process
harness, :mod:`cache_edge.devtools.harness`) on a free loopback port, configured by a
TOML file written for the test, so tests see exactly what a user would: sockets, status
codes and bytes on the wire. :func:`running_stack` is the one way a fixture starts an
origin and its nodes; the ``start_stack`` fixture (``tests/integration/conftest.py``)
does the same for a single test.
"""

from __future__ import annotations

import contextlib
import signal
import ssl
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from cache_edge.devtools.harness import Child, cache_edge_cmd, free_port, wait_http

__all__ = ["Server", "Stack", "running_stack", "started"]

# (region, Redis URL or None for the config's [node] redis_url)
Regions = Sequence[tuple[str, str | None]]


@dataclass(eq=False)
class Server:
    kind: str  # "origin" or "node"
    port: int
    config: Path
    extra_args: list[str] = field(default_factory=list)
    child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def health_context(self) -> ssl.SSLContext | None:
        """How ``/healthz`` is verified when the server speaks TLS (None: plain http)."""
        return None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.child.proc if self.child is not None else None

    @property
    def log(self) -> Path | None:
        return self.child.log if self.child is not None else None

    def start(self, wait: bool = True) -> Server:
        if self.child is None:
            listen = ["--listen", f"127.0.0.1:{self.port}", *self.extra_args]
            self.child = Child(
                f"{self.kind}:{self.port}",
                cache_edge_cmd(self.kind, self.config, *listen),
                self.config.with_suffix(f".{self.kind}.{self.port}.log"),
            )
        self.child.start()
        if wait:
            wait_http(self.url + "/healthz", self.child, 15.0, self.health_context)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.child is not None:
            self.child.stop(sig=sig)

    def logs(self) -> str:
        return self.child.text() if self.child is not None else ""


class Stack:
    """An origin and any number of nodes (optionally in several regions) from one config."""

    def __init__(self, tmp: Path, doc: dict[str, Any]) -> None:
        self.tmp = tmp
        self.doc = doc
        self.config = tmp / "cache-edge.toml"
        self.write_config()
        self.servers: list[Server] = []
        self.origin: Server | None = None

    def write_config(self) -> None:
        """Write ``doc`` (changed by the test) to the config file the servers read."""
        self.config.write_text(tomli_w.dumps(self.doc))

    def add(self, server: Server) -> Server:
        """Start a server built by the test (own config, own flags); it stops with the rest."""
        self.servers.append(server)
        return server.start()

    def start_origin(self, port: int | None = None, **extra: str) -> Server:
        args = [a for k, v in extra.items() for a in (f"--{k.replace('_', '-')}", v)]
        srv = self.add(Server("origin", port or free_port(), self.config, args))
        self.origin = srv
        return srv

    def start_node(
        self,
        region: str = "local",
        redis_url: str | None = None,
        origin_url: str | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> Server:
        args = ["--region", region]
        if redis_url:
            args += ["--redis-url", redis_url]
        upstream = origin_url or (self.origin.url if self.origin else None)
        if upstream:
            args += ["--origin-url", upstream]
        return self.add(Server("node", port or free_port(), self.config, [*args, *extra_args]))

    def nodes(self) -> list[Server]:
        return [s for s in self.servers if s.kind == "node"]

    def stop_all(self) -> None:
        for srv in reversed(self.servers):
            srv.stop()

    def dump_logs(self) -> str:
        return "\n".join(f"--- {s.kind}:{s.port}\n{s.logs()[-4000:]}" for s in self.servers)


@contextlib.contextmanager
def started(
    st: Stack, regions: Regions = (("local", None),), *, origin: Mapping[str, str] | None = None
) -> Iterator[Stack]:
    """Start ``st``'s origin (``origin``: extra flags, e.g. ``{"workers": "2"}``) and one node
    per (region, Redis URL); stop them all on exit, nodes first. If anything fails (a server
    that does not start, the code in the ``with``), the servers' logs are printed: pytest
    shows them with the failure."""
    try:
        st.start_origin(None, **(origin or {}))
        for region, redis_url in regions:
            st.start_node(region, redis_url)
        yield st
    except BaseException:
        print(st.dump_logs())
        raise
    finally:
        st.stop_all()


def running_stack(
    tmp: Path,
    doc: dict[str, Any],
    regions: Regions = (("local", None),),
    *,
    origin: Mapping[str, str] | None = None,
) -> contextlib.AbstractContextManager[Stack]:
    """The one way a fixture runs servers: a :class:`Stack` for ``doc`` in ``tmp``,
    :func:`started` (see there)."""
    return started(Stack(tmp, doc), regions, origin=origin)
