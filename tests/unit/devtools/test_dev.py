"""``cache-edge dev`` pieces that need no servers: options, ports, config file, banner, relay."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from pathlib import Path

import pytest

from cache_edge.cli.main import build_parser
from cache_edge.devtools import services
from cache_edge.devtools.check import RegionCheck, format_checks
from cache_edge.devtools.config_file import load_or_make_secrets, write_config
from cache_edge.devtools.delay_relay import DelayRelay
from cache_edge.devtools.demo_db import dsn_with_database
from cache_edge.devtools.dev import (
    DevOptions,
    DevStack,
    Region,
    parse_delay,
    redis_url_for_region,
    render_banner,
)
from cache_edge.devtools.services import Service, ServiceError
from cache_edge.server.config import load_settings


def dev_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["dev", *argv])


@pytest.mark.parametrize(
    ("text", "seconds"), [("40ms", 0.04), ("0.04s", 0.04), ("40", 0.04), ("0ms", 0.0)]
)
def test_parse_delay(text: str, seconds: float) -> None:
    assert parse_delay(text) == pytest.approx(seconds)


def test_parse_delay_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="--wan-delay: expected a delay like 40ms"):
        parse_delay("fast")


def test_options_and_port_layout(tmp_path: Path) -> None:
    opts = DevOptions.from_args(
        dev_args("--regions", "3", "--base-port", "9000", "--wan-delay", "5ms", "--check")
    )
    assert opts.check and opts.wan_delay == pytest.approx(0.005)
    assert [opts.node_port(i) for i in (1, 2, 3)] == [9011, 9012, 9013]
    assert opts.ports() == [9000, 9011, 9012, 9013, 9031, 9032, 9033, 9021, 9022, 9023]
    no_delay = DevOptions.from_args(dev_args("--regions", "1", "--base-port", "9000"))
    assert no_delay.ports() == [9000, 9011, 9031]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--regions", "0"), "--regions: between 1 and 9"),
        (("--regions", "10"), "--regions: between 1 and 9"),
        (("--base-port", "80"), "--base-port"),
        (("--wan-delay", "11s"), "at most 10s"),
    ],
)
def test_options_are_validated(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DevOptions.from_args(dev_args(*argv))


def test_each_region_gets_its_own_redis_database() -> None:
    assert redis_url_for_region("redis://127.0.0.1:6379/0", 1) == "redis://127.0.0.1:6379/1"
    assert redis_url_for_region("redis://127.0.0.1:6379", 2) == "redis://127.0.0.1:6379/2"
    assert redis_url_for_region("redis://:pw@h:1/4", 3) == "redis://:pw@h:1/7"
    with pytest.raises(ServiceError, match="Redis database 16"):
        redis_url_for_region("redis://h/10", 6)


def test_demo_dsn_keeps_server_and_credentials() -> None:
    assert (
        dsn_with_database("postgresql://u:p@h:5/postgres?sslmode=disable", "cache_edge_demo")
        == "postgresql://u:p@h:5/cache_edge_demo?sslmode=disable"
    )


def test_written_config_is_valid_and_secrets_are_reused(tmp_path: Path) -> None:
    keys = load_or_make_secrets(tmp_path)
    assert load_or_make_secrets(tmp_path) == keys
    assert oct((tmp_path / "secrets.json").stat().st_mode & 0o777) == "0o600"
    path = tmp_path / "cache-edge.toml"
    dsn = 'postgresql://postgres:p"w@127.0.0.1:5432/cache_edge_demo'
    write_config(path, keys, dsn, "127.0.0.1:7400", "http://127.0.0.1:7400")
    settings = load_settings(path)
    assert settings.node_secret == keys.node_secret
    assert settings.tenants[0].id == "demo"
    assert settings.tenants[0].database_url == dsn
    assert settings.tenants[0].api_keys_sha256 == (keys.api_key_sha256,)
    assert str(settings.origin.listen) == "127.0.0.1:7400"


def test_banner_shows_urls_key_and_two_commands(tmp_path: Path) -> None:
    stack = DevStack(DevOptions.from_args(dev_args("--workdir", str(tmp_path), "--regions", "2")))
    stack.pg = Service("postgresql://postgres:secret@127.0.0.1:5432/postgres", "default")
    stack.redis = Service("redis://127.0.0.1:6379/0", "default")
    stack.database_url = "postgresql://postgres:secret@127.0.0.1:5432/cache_edge_demo"
    stack.api_key = "ce_dev_KEY"
    stack.regions = [
        Region(
            f"region-{i}",
            f"http://127.0.0.1:{7410 + i}",
            f"redis://127.0.0.1:6379/{i}",
            f"postgresql://demo:ce_dev_KEY@127.0.0.1:{7430 + i}/cache_edge_demo",
        )
        for i in (1, 2)
    ]
    banner = render_banner(stack)
    assert "origin     http://127.0.0.1:7400" in banner
    assert "region-2   http://127.0.0.1:7412" in banner
    assert "ce_dev_KEY" in banner
    assert "secret" not in banner  # passwords are redacted
    assert "databases 1, 2" in banner
    assert "curl -s http://127.0.0.1:7411/v1/query -H 'Authorization: Bearer ce_dev_KEY'" in banner
    assert (
        "cache-edge query --url http://127.0.0.1:7411 --api-key ce_dev_KEY --ttl 60 "
        "'SELECT id, name, price FROM products WHERE id = $1' 7" in banner
    )
    assert "psql 'postgresql://demo:ce_dev_KEY@127.0.0.1:7431/cache_edge_demo'" in banner


def test_check_report() -> None:
    good = RegionCheck("region-1", "http://a", ["miss", "ttl"], [10.0, 1.0])
    bad = RegionCheck("region-2", "http://b", ["miss", "miss"], [10.0, 9.0], retries=10)
    assert good.ok and not bad.ok
    report = format_checks([good, bad]).splitlines()
    assert report[0] == "  region-1   http://a  miss (10.0 ms) -> ttl (1.0 ms)  ok"
    assert "FAILED (expected miss -> ttl) after 10 retries" in report[1]
    assert report[-1] == "check FAILED"
    assert format_checks([good]).splitlines()[-1] == "check passed"


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_delay_relay_delays_each_way_and_keeps_bytes() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    relay = await DelayRelay("127.0.0.1", port, 0.05).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        payload = bytes(range(256)) * 1000
        started = time.perf_counter()
        writer.write(payload)
        await writer.drain()
        received = await reader.readexactly(len(payload))
        elapsed = time.perf_counter() - started
        assert received == payload
        # Handshake round trip (0.1 s) plus one way there and one back (0.1 s).
        assert 0.19 <= elapsed < 1.0
        started = time.perf_counter()
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        assert 0.09 <= time.perf_counter() - started < 0.5
        writer.close()
    finally:
        await relay.close()
        server.close()
        await server.wait_closed()


async def test_delay_relay_drops_clients_when_target_is_down() -> None:
    from cache_edge.devtools.harness import free_port

    relay = await DelayRelay("127.0.0.1", free_port(), 0.0).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
        writer.close()
    finally:
        await relay.close()


async def test_missing_redis_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(ServiceError, match=r"apt-get install redis-server.*REDIS_URL="):
        await services.find_redis(tmp_path, tmp_path, {}, private=True)


async def test_missing_postgres_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "pg_bindir", lambda: None)
    with pytest.raises(ServiceError, match=r"apt-get install postgresql.*DATABASE_URL="):
        await services.find_postgres(tmp_path, tmp_path, {}, private=True)
