"""``cache-edge dev --check`` end to end: one command brings a working system up and down."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

STATUS_LINE = re.compile(
    r"^\s+(region-\d)\s+(\S+)\s+miss \(([\d.]+) ms\) -> ttl \(([\d.]+) ms\)\s+ok"
)


def free_base_port() -> int:
    """A base port whose whole layout (base, base+11..19, base+21..39) is free right now."""
    for _ in range(200):
        base = random.randrange(20_000, 60_000, 50)
        ports = [base, *range(base + 11, base + 20), *range(base + 21, base + 40)]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


def run_dev(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    workdir = tmp_path / "dev"
    cmd = [sys.executable, "-m", "cache_edge.cli", "dev", "--check", "--workdir", str(workdir)]
    return subprocess.run(
        [*cmd, "--base-port", str(free_base_port()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_all_regions_ok(out: str, regions: int) -> list[re.Match[str]]:
    matches = [m for line in out.splitlines() if (m := STATUS_LINE.match(line))]
    assert [m.group(1) for m in matches] == [f"region-{i}" for i in range(1, regions + 1)], out
    assert out.rstrip().endswith("check passed"), out
    return matches


def assert_nothing_left_running(tmp_path: Path) -> None:
    # Every child was started with the workdir's config path on its command line.
    found = subprocess.run(["pgrep", "-f", str(tmp_path / "dev")], capture_output=True, text=True)
    assert found.stdout.strip() == "", found.stdout


def test_dev_check_brings_up_regions_and_stops_them(tmp_path: Path) -> None:
    done = run_dev(
        tmp_path,
        "--regions",
        "2",
        "--wan-delay",
        "15ms",
        # An unreachable DATABASE_URL is reported, and the machine's PostgreSQL is used instead.
        env={"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for line in ("== cache-edge dev", "region-1   http://", "region-2   http://", "api key    ce_"):
        assert line in out
    assert "curl -s http://" in out and "cache-edge query --url http://" in out
    # The PostgreSQL door: a URL psql takes as is, and a query through it in every region.
    assert re.search(r"psql 'postgresql://demo:ce_[^@']+@127\.0\.0\.1:\d+/cache_edge_demo'", out)
    assert len(re.findall(r"psql door  \d+ products in [\d.]+ ms  ok", out)) == 2, out
    assert "+15 ms each way to the origin" in out
    assert "DATABASE_URL (postgresql://postgres@127.0.0.1:1/nowhere) does not answer" in out
    matches = assert_all_regions_ok(out, 2)
    # A miss crosses the relay to the origin and back: at least one emulated round trip.
    assert all(float(m.group(3)) >= 30.0 for m in matches), out
    assert (tmp_path / "dev" / "cache-edge.toml").exists()
    assert (tmp_path / "dev" / "logs" / "region-2.log").exists()
    assert_nothing_left_running(tmp_path)


def test_dev_reuses_its_workdir(tmp_path: Path) -> None:
    first = run_dev(tmp_path, "--regions", "1")
    second = run_dev(tmp_path, "--regions", "1")
    assert first.returncode == 0 and second.returncode == 0, second.stdout + second.stderr
    key = re.compile(r"api key\s+(\S+)")
    assert key.findall(first.stdout) == key.findall(second.stdout)  # copied commands keep working
    assert_all_regions_ok(second.stdout, 1)


@pytest.mark.slow
def test_dev_starts_private_servers_when_asked(tmp_path: Path) -> None:
    done = run_dev(tmp_path, "--regions", "1", "--private-servers", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(
        r"^  database   postgresql://\S+/cache_edge_demo   \(private\)$", done.stdout, re.M
    )
    assert re.search(r"^  redis      redis://\S+   \(databases 1; private\)$", done.stdout, re.M)
    assert_all_regions_ok(done.stdout, 1)
    assert_nothing_left_running(tmp_path)


def test_dev_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        base = s.getsockname()[1]
        cmd = [sys.executable, "-m", "cache_edge.cli", "dev", "--check", "--base-port", str(base)]
        done = subprocess.run(
            [*cmd, "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 1
    assert f"port {base} is in use" in done.stderr
