"""API keys at running nodes: clean refusals, and rotation and revocation without a restart."""

from __future__ import annotations

import copy
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import API_KEY_A, API_KEY_B, RedisLease, sha
from tests.integration.node_helpers import Reply, node_doc, post
from tests.integration.security_helpers import eventually, rewrite_config
from tests.integration.stack import Server, Stack, running_stack

pytestmark = pytest.mark.security

NEW_KEY_A = "ce_rotated_key_for_tenant_a_0123456789"
QUERY = {"sql": "SELECT current_database() AS db"}


@pytest.fixture
def stack(tmp_path: Path, pg_databases: tuple[str, str], redis_dbs: RedisLease) -> Iterator[Stack]:
    eu, us = redis_dbs.fresh("eu-west"), redis_dbs.fresh("us-east")
    with running_stack(
        tmp_path, node_doc(pg_databases, eu), [("eu-west", eu), ("us-east", us)]
    ) as st:
        yield st


def nodes(stack: Stack) -> list[Server]:
    return [s for s in stack.servers if s.kind == "node"]


async def ask(http: aiohttp.ClientSession, node: Server, key: str | None, **kw: Any) -> Reply:
    return await post(http, node.url, QUERY, key, fmt="json", **kw)


def with_keys(doc: dict[str, Any], tenant: int, keys: list[str]) -> dict[str, Any]:
    new = copy.deepcopy(doc)
    new["tenants"][tenant]["api_keys_sha256"] = [sha(k) for k in keys]
    return new


async def test_bad_credentials_are_refused_alike_without_naming_tenants(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    node = nodes(stack)[0]
    attempts: list[dict[str, str] | None] = [
        None,
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer    "},
        {"Authorization": "Basic " + API_KEY_A},
        {"Authorization": "bearer-" + API_KEY_A},
        {"Authorization": "Bearer " + "x" * 300},
        {"Authorization": "Bearer ce_no_such_key"},
        {"Authorization": "Bearer " + API_KEY_A[:-1]},
        {"Authorization": "Bearer " + API_KEY_A + "x"},
        {"Authorization": "Bearer acme"},
        {"Authorization": "Bearer " + sha(API_KEY_A)},  # the stored hash is not a key
    ]
    for headers in attempts:
        reply = await ask(http, node, None, headers=headers)
        assert reply.status == 401, (headers, reply.body)
        assert reply.code == "unauthorized"
        message = reply.body["error"]["message"]
        for secret_or_name in ("acme", "globex", API_KEY_A, API_KEY_B, sha(API_KEY_A)):
            assert secret_or_name not in message, (headers, message)
        assert set(reply.body["error"]) == {"code", "message", "requestId"}
    # An unknown key and another tenant's name as a key get the very same answer.
    unknown = await ask(http, node, "ce_no_such_key")
    named = await ask(http, node, "globex")
    assert unknown.body["error"]["message"] == named.body["error"]["message"]
    assert (await ask(http, node, API_KEY_A)).status == 200


async def test_revoked_key_stops_working_in_every_region_without_restart(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    eu, us = nodes(stack)
    pids = {s.proc.pid for s in stack.servers if s.proc}
    for node in (eu, us):
        assert (await ask(http, node, API_KEY_A)).status == 200
        assert (await ask(http, node, NEW_KEY_A)).status == 401

    # Step 1 of a rotation: the new key is added next to the old one.
    rewrite_config(stack, with_keys(stack.doc, 0, [API_KEY_A, NEW_KEY_A]))

    async def new_key_works_everywhere() -> bool:
        return all([(await ask(http, n, NEW_KEY_A)).status == 200 for n in (eu, us)])

    took = await eventually(new_key_works_everywhere)
    assert took < 6.0
    assert all([(await ask(http, n, API_KEY_A)).status == 200 for n in (eu, us)])

    # Step 2: the old key is revoked.
    rewrite_config(stack, with_keys(stack.doc, 0, [NEW_KEY_A]))

    async def old_key_refused_everywhere() -> bool:
        return all([(await ask(http, n, API_KEY_A)).status == 401 for n in (eu, us)])

    took = await eventually(old_key_refused_everywhere)
    assert took < 6.0
    for node in (eu, us):
        ok = await ask(http, node, NEW_KEY_A)
        assert ok.status == 200 and ok.body["rows"] == [["cache_edge_test"]]
        assert (await ask(http, node, API_KEY_B)).status == 200  # other tenants untouched
    assert {s.proc.pid for s in stack.servers if s.proc} == pids  # nothing restarted
    assert all(s.proc and s.proc.poll() is None for s in stack.servers)


async def test_sighup_reloads_even_when_the_file_looks_unchanged(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    eu = nodes(stack)[0]
    before = os.stat(stack.config)
    # Same length, same inode, same mtime: only SIGHUP can tell the node.
    text = stack.config.read_text().replace(sha(API_KEY_A), sha(NEW_KEY_A))
    with stack.config.open("r+") as f:
        f.write(text)
    os.utime(stack.config, ns=(before.st_atime_ns, before.st_mtime_ns))
    await eventually(lambda: _status_is(http, eu, API_KEY_A, 200), timeout=3)  # still the old
    assert eu.proc is not None
    eu.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: _status_is(http, eu, NEW_KEY_A, 200), timeout=5)
    assert (await ask(http, eu, API_KEY_A)).status == 401
    assert eu.proc.poll() is None


async def _status_is(http: aiohttp.ClientSession, node: Server, key: str, status: int) -> bool:
    return (await ask(http, node, key)).status == status


async def test_an_invalid_config_is_refused_and_the_old_one_kept(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    eu, us = nodes(stack)
    good = copy.deepcopy(stack.doc)
    not_a_hash = with_keys(good, 0, [])
    not_a_hash["tenants"][0]["api_keys_sha256"] = ["not-a-hash"]
    broken: list[str | dict[str, Any]] = ["node_secret = 'x'\n[[tenants]\n", not_a_hash]
    for bad in broken:
        seen = [n.logs().count("config_reload_failed") for n in (eu, us)]
        if isinstance(bad, str):
            stack.config.write_text(bad)  # not even TOML
        else:
            rewrite_config(stack, bad)  # TOML, but not a valid config

        async def refused_and_logged(seen: list[int] = seen) -> bool:
            counts = [n.logs().count("config_reload_failed") for n in (eu, us)]
            return all(c > s for c, s in zip(counts, seen, strict=True))

        await eventually(refused_and_logged)
        for node in (eu, us):
            assert (await ask(http, node, API_KEY_A)).status == 200
    for line in eu.logs().splitlines():
        if "config_reload_failed" in line:
            assert '"level": "error"' in line
            assert stack.doc["node_secret"] not in line
    # Fixed again: it is picked up as usual.
    rewrite_config(stack, with_keys(good, 0, [NEW_KEY_A]))
    await eventually(lambda: _status_is(http, us, NEW_KEY_A, 200))
    assert all(s.proc and s.proc.poll() is None for s in stack.servers)
