"""Run real origin and node processes for integration tests.

Each server is a separate `python -m cache_edge.cli.main ...` process on a free loopback
port, configured by a TOML file written for the test, so tests see exactly what a
user would: sockets, status codes and bytes on the wire.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from tests.conftest import free_port


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {timeout}s: {last}")


@dataclass
class Server:
    kind: str
    port: int
    config: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Server:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.log = self.config.with_suffix(f".{self.kind}.{self.port}.log")
        out = self.log.open("ab")
        cmd = [
            sys.executable,
            "-m",
            "cache_edge.cli",
            self.kind,
            "--config",
            str(self.config),
            "--listen",
            f"127.0.0.1:{self.port}",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        if wait:
            wait_http(self.url + "/healthz", proc=self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""


class Stack:
    """An origin and any number of nodes (optionally in several regions) from one config."""

    def __init__(self, tmp: Path, doc: dict[str, Any]) -> None:
        self.tmp = tmp
        self.doc = doc
        self.config = tmp / "cache-edge.toml"
        self.config.write_text(tomli_w.dumps(doc))
        self.servers: list[Server] = []
        self.origin: Server | None = None

    def start_origin(self, port: int | None = None, **extra: str) -> Server:
        args = [a for k, v in extra.items() for a in (f"--{k.replace('_', '-')}", v)]
        srv = Server("origin", port or free_port(), self.config, args).start()
        self.servers.append(srv)
        self.origin = srv
        return srv

    def start_node(
        self,
        region: str = "local",
        redis_url: str | None = None,
        origin_url: str | None = None,
        port: int | None = None,
    ) -> Server:
        args = ["--region", region]
        if redis_url:
            args += ["--redis-url", redis_url]
        if origin_url or self.origin:
            args += ["--origin-url", origin_url or self.origin.url]  # type: ignore[union-attr]
        srv = Server("node", port or free_port(), self.config, args).start()
        self.servers.append(srv)
        return srv

    def stop_all(self) -> None:
        for srv in reversed(self.servers):
            srv.stop()

    def dump_logs(self) -> str:
        return "\n".join(f"--- {s.kind}:{s.port}\n{s.logs()[-4000:]}" for s in self.servers)
