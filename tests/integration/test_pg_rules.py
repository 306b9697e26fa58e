"""Cache rules through the PostgreSQL door with automatic invalidation (issue 16), and the
clients that ask for caching without hand-written SQL: Prisma 7 through its ``comments:``
plugins, and pgbench with a hinted custom script.

One origin and two regions (a node and its door each, each with a database of its own in
a redis-server of this module's own), tenant acme in a database of this run's own, set up
for automatic invalidation with the real setup command. acme's config::

    cache_all_reads = { ttl = 300, swr = 60 }
    [[tenants.cache_rules]]
    tables = ["public.rule_items"]
    ttl = 300

**Counting executions.** ``ce_mark()`` (tests/conftest.py) cannot count here: it is a
volatile PL/pgSQL function, so the origin's plan reading marks every statement calling it
as depending on more than table contents (rules never cache it) and as reading tables it
cannot see (its entries carry the any-table tag, so with automatic invalidation on, every
write purges them, including ce_mark's own insert into ce_exec_log). ``ce_tick(m)`` logs to
the same ce_exec_log through dblink, but is dblink's C function declared STABLE behind an
inlined SQL wrapper: the plan shows a stable C function, so a statement calling it is
cached by rules and tagged with the tables it reads, like the statement without it. Called
in a WHERE clause without columns, it is a one-time filter: one log row per execution.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cache_edge.devtools.exec_log import libpq_dsn
from cache_edge.devtools.harness import free_port
from tests.conftest import API_KEY_A, dsn_for
from tests.integration.capture_helpers import origin_cli
from tests.integration.door_helpers import (
    Door,
    PrivateDoor,
    door_doc,
    private_database,
)
from tests.integration.node_helpers import marker
from tests.integration.security_helpers import rewrite_config
from tests.integration.stack import Stack, started
from tests.integration.test_pg_caching import logs_if_failed, psql
from tests.integration.test_pg_js_clients import (  # noqa: F401  (fixtures)
    js_modules,
    prisma_client,
    run_js,
)

PID = os.getpid()
OWN_DB = f"cache_edge_pgr_{PID}"
PRISMA_SCHEMA = "prisma_cache"
PRISMA_MARKER = "prisma-users"
PGBENCH = ("pgbench", "-n", "-M", "prepared", "-c", "4", "-j", "2", "-t", "200")
RULES = {
    "cache_all_reads": {"ttl": 300, "swr": 60},
    "cache_rules": [{"tables": ["public.rule_items"], "ttl": 300}],
}

SCHEMA = """
CREATE FUNCTION ce_tick_c(text, text) RETURNS text LANGUAGE c STABLE STRICT
    AS '$libdir/dblink', 'dblink_exec';
CREATE FUNCTION ce_tick(m text) RETURNS text LANGUAGE sql STABLE
    AS $fn$ SELECT ce_tick_c('@DSN@', format('INSERT INTO ce_exec_log(marker) VALUES (%L)', m)) $fn$;

CREATE TABLE rule_items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO rule_items VALUES (1, 'ann'), (2, 'bob'), (3, 'cid');
CREATE TABLE rule_writes (id serial PRIMARY KEY, note text NOT NULL);
CREATE TABLE pgb_items (id int PRIMARY KEY, v text NOT NULL);
INSERT INTO pgb_items SELECT g, 'v' || g FROM generate_series(1, 100) AS g;

-- Prisma's User model (tests/js/prisma/schema.prisma) over a view that counts executions.
CREATE SCHEMA prisma_cache;
CREATE TABLE prisma_cache.users (id serial PRIMARY KEY, email text NOT NULL UNIQUE, name text);
INSERT INTO prisma_cache.users (email, name) VALUES ('alice@example.com', 'Alice'),
    ('bob@example.com', 'Bob');
CREATE VIEW prisma_cache."User" AS
    SELECT id, email, name FROM prisma_cache.users WHERE ce_tick('@PRISMA_MARKER@') IS NOT NULL;
"""


# ------------------------------------------------------------------ the world


@dataclass(frozen=True)
class World:
    stack: Stack
    doors: tuple[PrivateDoor, PrivateDoor]  # region-a, region-b

    @property
    def a(self) -> PrivateDoor:
        return self.doors[0]


@pytest.fixture(scope="module")
def own_database(pg_databases: tuple[str, str]) -> Iterator[str]:
    with private_database(OWN_DB) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            schema = SCHEMA.replace("@DSN@", libpq_dsn(dsn))
            conn.execute(schema.replace("@PRISMA_MARKER@", PRISMA_MARKER).encode())
        yield dsn


@pytest.fixture(scope="module")
def world(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg_databases: tuple[str, str],
    own_database: str,
    own_redis: Callable[[int], str],
) -> Iterator[World]:
    a, b = own_redis(1), own_redis(2)
    doc = door_doc((own_database, pg_databases[1]), a, node={"sync_grace": 2.0})
    doc["tenants"][0].update({"auto_invalidation": True, **copy.deepcopy(RULES)})
    stack = Stack(tmp_path_factory.mktemp("rules"), doc)
    setup = origin_cli(stack.config, "setup-auto-invalidation", "--tenant", "acme")
    assert setup.returncode == 0, setup.stderr
    try:
        with started(stack, regions=()) as st, logs_if_failed(request, st):
            doors = []
            for region, redis_url in (("region-a", a), ("region-b", b)):
                port = free_port()
                st.start_node(region, redis_url, extra_args=["--pg-listen", f"127.0.0.1:{port}"])
                doors.append(PrivateDoor(st, "127.0.0.1", port, OWN_DB))
            yield World(st, (doors[0], doors[1]))
    finally:
        removed = origin_cli(stack.config, "remove-auto-invalidation", "--tenant", "acme")
        assert removed.returncode == 0, removed.stderr


# ------------------------------------------------------------------ helpers


def connect(door: Door) -> psycopg.Connection[Any]:
    """A psycopg session through ``door``. Never prepared: psycopg prepares a statement at
    its sixth execution, and the prepared form (a Bind that names its result format) is
    another protocol form than the unprepared one (a simple Query, when there are no
    parameters), so it has its own entry: one more miss, in the middle of a count."""
    return psycopg.connect(door.url(), autocommit=True, prepare_threshold=None)


def last_status(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SHOW cache_edge.last_status").fetchone()
    assert row is not None
    return str(row[0])


def read(conn: psycopg.Connection[Any], sql: str, *params: Any) -> tuple[list[Any], str]:
    """The rows of ``sql`` and how the door served them."""
    rows = conn.execute(sql, params or None).fetchall()
    return rows, last_status(conn)


def executions(m: str) -> int:
    """How many times PostgreSQL ran ce_tick(m) (or ce_mark(m)) in this run's database."""
    with psycopg.connect(dsn_for(OWN_DB)) as conn:
        row = conn.execute("SELECT count(*) FROM ce_exec_log WHERE marker = %s", (m,)).fetchone()
    assert row is not None
    return int(row[0])


def direct(sql: str) -> list[Any]:
    """``sql`` straight against PostgreSQL, by a psql session of its own."""
    out = psql(dsn_for(OWN_DB), "-c", sql)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def items_read(m: str) -> str:
    return f"SELECT id, name FROM rule_items WHERE ce_tick('{m}') IS NOT NULL ORDER BY id"


def learned(conn: psycopg.Connection[Any], sql: str, timeout: float = 5.0) -> int:
    """Read ``sql`` until a rule caches it; how many reads ran uncached before. The node
    learns a statement's tables in the background, from the first execution on."""
    uncached = 0
    deadline = time.monotonic() + timeout
    while True:
        _, status = read(conn, sql)
        if status == "miss":
            return uncached
        assert status == "none", status
        uncached += 1
        assert time.monotonic() < deadline, f"no rule cached {sql!r} in {timeout} s"
        time.sleep(0.05)


# ------------------------------------------------------------------ 1. rules


def test_a_rule_caches_a_read_once_the_node_learned_it(world: World) -> None:
    m = marker("rule")
    sql = items_read(m)
    expected = [(1, "ann"), (2, "bob"), (3, "cid")]
    with connect(world.a) as conn:
        assert read(conn, sql) == (expected, "none")  # new text: run, learned meanwhile
        uncached = 1 + learned(conn, sql)  # then a miss stores it
        for _ in range(3):
            assert read(conn, sql) == (expected, "ttl")
    assert executions(m) == uncached + 1
    with connect(world.a) as other:  # another session: the same entry
        assert read(other, sql) == (expected, "ttl")
    assert executions(m) == uncached + 1


def test_a_write_by_psql_is_seen_in_both_regions(world: World) -> None:
    m = marker("both")
    sql = items_read(m)
    conns = [connect(door) for door in world.doors]
    try:
        before = []
        for conn in conns:
            learned(conn, sql)
            rows, status = read(conn, sql)
            assert status == "ttl"
            before.append(rows)
        assert before[0] == before[1]
        counted = executions(m)
        direct("INSERT INTO rule_items VALUES (10, 'from psql')")
        expected = [*before[0], (10, "from psql")]
        wrote = time.monotonic()
        for region, conn in zip(("region-a", "region-b"), conns, strict=True):
            seen: list[tuple[list[Any], str]] = []
            while True:
                rows, status = read(conn, sql)
                seen.append((rows, status))
                if rows != before[0]:
                    break
                assert status == "ttl", seen
                assert time.monotonic() - wrote < 10.0, f"{region}: write not seen in 10 s"
                time.sleep(0.1)
            assert (rows, status) == (expected, "miss"), (region, seen)
            assert read(conn, sql) == (expected, "ttl")  # cached again, with the write
        assert executions(m) == counted + 2  # once per region
    finally:
        for conn in conns:
            conn.close()


@pytest.mark.parametrize(
    "expression", ["now() > '2000-01-01'", "random() < 2"], ids=["now", "random"]
)
def test_now_and_random_are_never_cached_by_a_rule(world: World, expression: str) -> None:
    m = marker("volatile")
    sql = (
        f"SELECT {expression} AS v, id FROM rule_items WHERE ce_tick('{m}') IS NOT NULL ORDER BY id"
    )
    with connect(world.a) as conn:
        for _ in range(6):  # long enough for the node to learn it (the rule test: ~1 read)
            rows, status = read(conn, sql)
            assert status == "none" and rows[0][0] is True
            time.sleep(0.1)
        assert executions(m) == 6
        # an explicit hint caches them all the same
        hinted = f"{sql} /* cache ttl=60 */"
        assert read(conn, hinted)[1] == "miss"
        assert read(conn, hinted)[1] == "ttl"
        assert read(conn, sql)[1] == "none"  # the rule still does not
    assert executions(m) == 8


def test_a_write_matched_by_cache_all_reads_runs_uncached(world: World) -> None:
    note = marker("write")
    with connect(world.a) as conn:
        for i in range(5):  # extended protocol, one text: learned after the first
            rows, status = read(
                conn, "INSERT INTO rule_writes (note) VALUES (%s) RETURNING note", f"{note}-{i}"
            )
            assert (rows, status) == ([(f"{note}-{i}",)], "none")
            time.sleep(0.1)
    for _ in range(3):  # simple protocol, a new psql session each time
        out = psql(
            world.a.url(),
            "-c",
            f"UPDATE rule_writes SET note = note || '!' WHERE note LIKE '{note}-%'",
            "-c",
            "SHOW cache_edge.last_status",
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["UPDATE 5", "none"]
        time.sleep(0.1)
    assert direct(f"SELECT note FROM rule_writes WHERE note LIKE '{note}-%' ORDER BY id") == [
        f"{note}-{i}!!!" for i in range(5)
    ]


def test_rules_do_not_apply_inside_a_transaction(world: World) -> None:
    m = marker("tx")
    sql = items_read(m)
    with connect(world.a) as conn:
        learned(conn, sql)
        expected, status = read(conn, sql)
        assert status == "ttl"
        counted = executions(m)
        with conn.transaction():
            assert read(conn, sql) == (expected, "none")
        conn.execute("BEGIN READ ONLY")  # opts hinted reads in, not rules
        assert read(conn, sql) == (expected, "none")
        conn.execute("COMMIT")
        assert executions(m) == counted + 2
        # Outside again, the rule applies. (This session's next read is a miss: a COMMIT
        # fences a session like a write, and ce_tick's own log rows were purges since.)
        assert read(conn, sql)[1] in ("miss", "ttl")
    with connect(world.a) as other:
        assert read(other, sql) == (expected, "ttl")


def test_rules_follow_a_config_reload(world: World) -> None:
    """The nodes watch their config file: rules removed there stop caching, and come back."""
    m = marker("reload")
    sql = items_read(m)
    stack = world.stack
    conns = [connect(door) for door in world.doors]
    original = copy.deepcopy(stack.doc)

    def until(status: str, conn: psycopg.Connection[Any], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while (got := read(conn, sql)[1]) != status:
            assert time.monotonic() < deadline, f"still {got!r} after {timeout} s, not {status!r}"
            time.sleep(0.2)

    try:
        for conn in conns:
            learned(conn, sql)
            assert read(conn, sql)[1] == "ttl"
        without = copy.deepcopy(original)
        for name in RULES:
            del without["tenants"][0][name]
        rewrite_config(stack, without)
        for conn in conns:
            until("none", conn)
        counted = executions(m)
        for conn in conns:
            assert read(conn, sql)[1] == "none"
        assert executions(m) == counted + 2
        rewrite_config(stack, original)
        for conn in conns:
            until("ttl", conn)  # the rule's entry is still there
    finally:
        rewrite_config(stack, original)
        for conn in conns:
            conn.close()


# ------------------------------------------------------------------ 2. Prisma 7


@pytest.fixture(scope="module")
def prisma_result(prisma_client: Path, world: World) -> dict[str, Any]:  # noqa: F811
    return run_js(
        "prisma_cache.mts",
        str(prisma_client),
        world.a.url(),
        world.a.direct(),
        PRISMA_SCHEMA,
        PRISMA_MARKER,
    )


def test_prisma_comments_plugin_emits_the_cache_keys(prisma_result: dict[str, Any]) -> None:
    sent = prisma_result["firstSql"]
    assert sent is not None and sent.endswith(" /*cache_tags='prisma_users',cache_ttl='60'*/")
    assert "/*" not in (prisma_result["createSql"] or "")  # writes: no hint


def test_prisma_find_many_is_cached(prisma_result: dict[str, Any]) -> None:
    everyone = [
        {"email": "alice@example.com", "name": "Alice"},
        {"email": "bob@example.com", "name": "Bob"},
    ]
    first, second = prisma_result["first"], prisma_result["second"]
    assert first == {"value": everyone, "status": "miss", "executions": 1}, first
    assert second == {"value": everyone, "status": "ttl", "executions": 1}, second


def test_prisma_reads_its_writes(prisma_result: dict[str, Any]) -> None:
    """With automatic invalidation on, a write through Prisma, then a read (its session
    waits until the origin names the purge covering the write): the new row, a miss."""
    everyone = [
        {"email": "alice@example.com", "name": "Alice"},
        {"email": "bob@example.com", "name": "Bob"},
        {"email": "carol@example.com", "name": "Carol"},
    ]
    create = prisma_result["create"]
    assert create == {"value": "carol@example.com", "status": "none", "executions": 1}, create
    after, again = prisma_result["afterWrite"], prisma_result["again"]
    # "none": the origin did not name the purge within the door's wait (a loaded machine),
    # so the read went to the database instead; never "ttl", the entry from before.
    assert after["status"] in ("miss", "none"), after
    assert after == {"value": everyone, "status": after["status"], "executions": 2}, after
    assert again == {"value": everyone, "status": "ttl", "executions": 2}, again


def test_prisma_transactions_are_not_cached(prisma_result: dict[str, Any]) -> None:
    interactive, batch = prisma_result["interactive"], prisma_result["batch"]
    assert interactive == {
        "value": {"rows": 3, "status": "none"},
        "status": "none",
        "executions": 3,
    }, interactive
    assert batch == {"value": [3, 1], "status": "none", "executions": 5}, (
        batch,
        prisma_result["batchSql"],
    )


# ------------------------------------------------------------------ 3. pgbench


def test_pgbench_prepared_hinted_point_selects(world: World, tmp_path: Path) -> None:
    run = marker("pgb")
    script = tmp_path / "points.sql"
    script.write_text(
        "\\set id random(1, 100)\n"
        f"SELECT ce_tick('{run}-' || :id) AS m, v FROM pgb_items WHERE id = :id"
        " /* cache ttl=60 */;\n"
    )
    out = subprocess.run(
        [*PGBENCH, "-f", str(script), world.a.url()],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "number of transactions actually processed: 800/800" in out.stdout, out.stdout
    assert "number of failed transactions: 0 " in out.stdout, out.stdout
    with psycopg.connect(dsn_for(OWN_DB)) as conn:
        counts = conn.execute(
            "SELECT marker, count(*) FROM ce_exec_log WHERE marker LIKE %s GROUP BY marker",
            (f"{run}-%",),
        ).fetchall()
    ran: dict[str, int] = dict(counts)
    assert ran and set(ran) <= {f"{run}-{i}" for i in range(1, 101)}
    assert max(ran.values()) == 1, sorted(ran.items(), key=lambda kv: -kv[1])[:5]
    assert len(ran) > 90  # 800 draws of 100 ids


# ------------------------------------------------------------------ the /sql door


def sql_post(door: PrivateDoor, query: str) -> tuple[dict[str, Any], dict[str, str]]:
    """POST /sql as the Neon driver does, at ``door``'s node."""
    conn = f"postgresql://acme:{API_KEY_A}@node.example/{OWN_DB}"
    request = urllib.request.Request(
        door.stack.nodes()[0].url + "/sql",
        data=json.dumps({"query": query, "params": []}).encode(),
        headers={
            "Neon-Connection-String": conn,
            "Neon-Array-Mode": "true",
            "Neon-Raw-Text-Output": "true",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read()), dict(response.headers)


def test_sql_door_reads_its_writes_at_once(world: World) -> None:
    """A write through /sql answers once its region applied the purge that covers it, so
    the caller's next read there (a rule caches it) already sees the write."""
    door = world.a
    read = f"SELECT count(*) FROM rule_writes WHERE note = 'sql-{PID}'"
    body, headers = sql_post(door, read)
    before = body["rows"]
    for _ in range(50):  # the rule applies once the node learned the statement
        body, headers = sql_post(door, read)
        if headers.get("X-Cache-Status") == "ttl":
            break
        time.sleep(0.1)
    assert headers.get("X-Cache-Status") == "ttl" and body["rows"] == before
    body, headers = sql_post(door, f"INSERT INTO rule_writes (note) VALUES ('sql-{PID}')")
    assert body["command"] == "INSERT" and headers["X-Cache-Invalidation"] == "applied"
    body, headers = sql_post(door, read)
    assert body["rows"] == [[str(int(before[0][0]) + 1)]], (body, headers)
    assert headers["X-Cache-Status"] == "miss"
