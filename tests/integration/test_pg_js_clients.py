"""JavaScript clients through the PostgreSQL door: node-postgres (``pg``) and Prisma 7 with
``@prisma/adapter-pg``.

Each client runs in a script of tests/js (pg_door.mjs, prisma_door.mts) that prints one JSON
object of what it saw; the test asserts on it and checks the database directly afterwards
(what committed, what rolled back). The node lends this module's sessions a pool of only
two database connections, so a client's named prepared statements, parsed once and then
only bound, land on connections that have not seen them, and its settings
(``application_name``) follow it there.

Setup: ``npm ci`` runs once (into tests/js) when node_modules lacks a package; the tests
skip only if ``node``/``npm`` are not installed. ``prisma generate`` runs once per schema
and package-lock.json, into a temporary directory (cached there between runs by their hash,
never into the checkout). Prisma's schema engine is not needed for that: a stub stands in
for it (``prisma migrate`` would need it; the test creates the tables with SQL).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import RedisLease
from tests.integration.door_helpers import Door, door_doc, open_door

JS = Path(__file__).resolve().parents[1] / "js"
PID = os.getpid()
PG_SCHEMA = f"js_pg_{PID}"
PRISMA_SCHEMA = f"js_prisma_{PID}"
NEEDED = ("pg", "prisma", "@prisma/client", "@prisma/adapter-pg", "tsx")
QUIET = {"CHECKPOINT_DISABLE": "1", "PRISMA_HIDE_UPDATE_MESSAGE": "1", "NO_COLOR": "1"}


# ------------------------------------------------------------------ node, npm, prisma


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One process at a time (two pytest runs on one machine share tests/js and the cache)."""
    path = Path(tempfile.gettempdir()) / f"cache-edge-{name}.lock"
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(
    cmd: list[str], *, timeout: float, env: dict[str, str] | None = None, cwd: Path = JS
) -> str:
    """Run a JS tool (quietly) in ``cwd``; its stdout, or the test fails with its output."""
    done = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **QUIET, **(env or {})},
    )
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd[:4])} exited {done.returncode}\n"
            f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-4000:]}"
        )
    return done.stdout


@pytest.fixture(scope="session")
def js_modules() -> Path:
    """tests/js with its node_modules (``npm ci`` once if a package is missing)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip(
            "node and npm are not installed on this machine (the JS client tests need them)"
        )
    with _locked("npm-ci"):
        if not all((JS / "node_modules" / name / "package.json").is_file() for name in NEEDED):
            _run(["npm", "ci", "--no-audit", "--no-fund"], timeout=900)
    return JS


@pytest.fixture(scope="session")
def prisma_client(js_modules: Path) -> Path:
    """The directory of the Prisma client generated from tests/js/prisma/schema.prisma."""
    schema = (js_modules / "prisma" / "schema.prisma").read_bytes()
    lock = (js_modules / "package-lock.json").read_bytes()
    key = hashlib.sha256(schema + lock + str(js_modules).encode()).hexdigest()[:20]
    root = Path(tempfile.gettempdir()) / "cache-edge-prisma"
    done = root / key
    if (done / "generated" / "client.ts").is_file():
        return done / "generated"
    root.mkdir(exist_ok=True)
    with _locked("prisma-generate"):
        if (done / "generated" / "client.ts").is_file():
            return done / "generated"
        build = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=root))
        (build / "schema.prisma").write_bytes(schema)
        # the generated client imports @prisma/client/runtime: resolve it from tests/js
        (build / "node_modules").symlink_to(js_modules / "node_modules")
        stub = build / "schema-engine-stub"
        stub.write_text("#!/bin/sh\necho 'no schema engine offline' >&2\nexit 1\n")
        stub.chmod(0o755)
        _run(
            [
                str(js_modules / "node_modules" / ".bin" / "prisma"),
                "generate",
                "--schema",
                str(build / "schema.prisma"),
            ],
            timeout=300,
            env={"PRISMA_SCHEMA_ENGINE_BINARY": str(stub)},
        )
        assert (build / "generated" / "client.ts").is_file(), list(build.iterdir())
        build.rename(done)
    return done / "generated"


def run_js(script: str, *args: str, timeout: float = 180) -> dict[str, Any]:
    """Run a tests/js script (``.mts`` through tsx) and return the JSON it printed last."""
    if script.endswith(".mts"):
        cmd = [str(JS / "node_modules" / ".bin" / "tsx"), script, *args]
    else:
        cmd = ["node", script, *args]
    out = _run(cmd, timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, out
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# ------------------------------------------------------------------ the stack and the database


@pytest.fixture(scope="module")
def small_door(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], redis_dbs: RedisLease
) -> Iterator[Door]:
    """A node whose origin lends each tenant two database connections at most."""
    doc = door_doc(pg_databases, redis_dbs(), origin={"pool_max_size": 2, "pool_min_size": 1})
    yield from open_door(tmp_path_factory.mktemp("js-door"), doc)


def sql(door: Door, statement: str) -> list[tuple[Any, ...]]:
    """Run ``statement`` straight against the tenant's database (not through the door)."""
    with psycopg.connect(door.direct(), autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def pg_table(small_door: Door) -> Iterator[str]:
    sql(small_door, f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE; CREATE SCHEMA {PG_SCHEMA}")
    sql(small_door, f"CREATE TABLE {PG_SCHEMA}.notes (id int PRIMARY KEY, note text)")
    try:
        yield f"{PG_SCHEMA}.notes"
    finally:
        sql(small_door, f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")


@pytest.fixture(scope="module")
def prisma_tables(small_door: Door) -> Iterator[str]:
    """The tables of tests/js/prisma/schema.prisma, as `prisma migrate` would make them."""
    s = PRISMA_SCHEMA
    sql(small_door, f"DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}")
    sql(
        small_door,
        f"""
        CREATE TABLE {s}."User" (
            id serial PRIMARY KEY, email text NOT NULL, name text
        );
        CREATE UNIQUE INDEX "User_email_key" ON {s}."User" (email);
        CREATE TABLE {s}."Post" (
            id serial PRIMARY KEY,
            title text NOT NULL,
            published boolean NOT NULL DEFAULT false,
            views bigint NOT NULL DEFAULT 0,
            score numeric(10, 2),
            "createdAt" timestamptz(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
            "authorId" integer NOT NULL
                REFERENCES {s}."User" (id) ON DELETE CASCADE ON UPDATE CASCADE
        )
        """,
    )
    try:
        yield s
    finally:
        sql(small_door, f"DROP SCHEMA IF EXISTS {s} CASCADE")


# ------------------------------------------------------------------ node-postgres


@pytest.fixture(scope="module")
def pg_result(js_modules: Path, small_door: Door, pg_table: str) -> dict[str, Any]:
    return run_js("pg_door.mjs", small_door.url(), small_door.direct(), pg_table)


def test_pg_plain_queries(pg_result: dict[str, Any]) -> None:
    plain = pg_result["plain"]
    assert plain["rows"] == [{"x": 1, "y": "two"}]
    assert (plain["command"], plain["rowCount"]) == ("SELECT", 1)
    assert plain["fields"] == [["x", 23], ["y", 25]]
    assert plain["many"] == [1, 2, 3, 4, 5]
    assert plain["multi"] == [[{"a": 1}], [{"b": 2}]]
    assert plain["empty"] == {"rows": [], "rowCount": 0}
    assert plain["database"] == "cache_edge_test"


def test_pg_parameterized_queries(pg_result: dict[str, Any]) -> None:
    params = pg_result["params"]
    assert params["row"] == {"sum": 42, "t": "héllo", "isnull": True, "j": {"k": [1, 2]}}
    assert params["bad"]["code"] == "22P02"
    assert 'invalid input syntax for type integer: "not a number"' in params["bad"]["message"]
    assert params["after"] == {"still": "fine"}


def test_pg_named_prepared_statements_move_between_connections(
    pg_result: dict[str, Any],
) -> None:
    """Six clients, two database connections: each client parses ``door_q`` once (with its
    own text: multiplying by 2 or by 3) and binds it fifteen times, concurrently with the
    others, so most executions land on a connection where the door must parse it first."""
    prepared = pg_result["prepared"]
    assert "error" not in prepared, prepared
    for i, seen in enumerate(prepared["seen"]):
        factor = 2 if i % 2 == 0 else 3
        assert seen == [[r * factor, f"js-prepared-{i}", 0] for r in range(15)], i
    assert prepared["bad"] == "22P02"
    assert prepared["good"] == 7


def test_pg_transactions(pg_result: dict[str, Any], small_door: Door, pg_table: str) -> None:
    tx = pg_result["transactions"]
    assert "error" not in tx, tx
    assert tx["inside"] == [{"note": "committed"}]
    assert (tx["beforeRollback"], tx["afterRollback"]) == (2, 1)
    assert (tx["failure"], tx["aborted"]) == ("22012", "25P02")
    assert tx["isolation"] == "serializable"
    assert tx["ids"] == [1, 4]
    # and in the database itself
    assert sql(small_door, f"SELECT id, note FROM {pg_table} ORDER BY id") == [
        (1, "committed"),
        (4, "prepared in tx"),
    ]


def test_pg_type_parsing_same_as_direct(pg_result: dict[str, Any]) -> None:
    types = pg_result["types"]
    assert "error" not in types, types
    door, direct = types["door"], types["direct"]
    assert door == direct
    row = door["row"]
    assert (row["i2"], row["i4"], row["i8"]) == (42, 2147483647, "9223372036854775807")
    assert row["num"] == "123456789012345678901234567890.123"
    assert (row["f4"], row["f8"], row["nan"]) == (1.5, 0.1, None)  # NaN: JSON has null
    assert (row["yes"], row["maybe"], row["txt"], row["padded"]) == (True, None, "héllo ✓", "ab  ")
    assert row["tstz"] == {"date": "2024-02-29T07:44:15.500Z"}
    assert row["js"] == {"Object": {"a": [1, 2.5, None], "b": "x"}}
    assert row["jsb"] == {"Object": {"a": True, "b": 1}}
    assert row["bin"] == {"bytes": "00ff41"}
    assert row["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert (row["ints"], row["texts"]) == ([1, None, 3], ["a", "b c", None, '"q"'])
    assert (row["ip"], row["cash"], row["t"]) == ("192.168.0.1/24", "$12.34", "13:14:15")
    assert row["iv"]["PostgresInterval"] == {
        "years": 1,
        "months": 2,
        "days": 3,
        "hours": 4,
        "minutes": 5,
        "seconds": 6,
        "milliseconds": 500,
    }
    assert door["typed"] == {"big": "9007199254740993", "at": {"date": "2024-01-02T03:04:05.678Z"}}
    assert door["fields"][:3] == [["i2", 21], ["i4", 23], ["i8", 20]]


# ------------------------------------------------------------------ Prisma


@pytest.fixture(scope="module")
def prisma_result(prisma_client: Path, small_door: Door, prisma_tables: str) -> dict[str, Any]:
    return run_js("prisma_door.mts", str(prisma_client), small_door.url(), prisma_tables)


def test_prisma_create_and_nested_create(prisma_result: dict[str, Any]) -> None:
    alice = prisma_result["create"]
    assert "error" not in alice, alice
    assert (alice["email"], alice["name"]) == ("alice@example.com", "Alice")
    assert isinstance(alice["id"], int)
    bob = prisma_result["nestedCreate"]
    assert "error" not in bob, bob
    assert bob["name"] == "Bob"
    first, second = bob["posts"]
    assert (first["title"], first["published"], first["score"]) == (
        "first",
        False,
        {"decimal": "12.5"},
    )
    assert (second["title"], second["published"], second["views"]) == (
        "second",
        True,
        {"bigint": "9007199254740993"},
    )
    assert first["authorId"] == second["authorId"] == bob["id"]
    assert first["createdAt"] is True


def test_prisma_reads(prisma_result: dict[str, Any]) -> None:
    read = prisma_result["read"]
    assert "error" not in read, read
    assert read["bob"]["posts"] == [
        {"title": "first", "published": False},
        {"title": "second", "published": True},
    ]
    assert read["withPublished"] == [{"email": "bob@example.com"}]
    assert read["counts"] == [
        {"published": False, "_count": {"_all": 1}},
        {"published": True, "_count": {"_all": 1}},
    ]
    assert read["missing"] is None
    assert read["many"] == [["Alice"] if i % 2 == 0 else ["Bob"] for i in range(20)]
    assert read["raw"][0]["n"] == 42


def test_prisma_update_and_delete(
    prisma_result: dict[str, Any], small_door: Door, prisma_tables: str
) -> None:
    update = prisma_result["update"]
    assert update == {
        "renamed": "Robert",
        "published": 2,
        "upserted": "Alice A.",
        "duplicate": "P2002",
    }
    delete = prisma_result["delete"]
    assert delete == {"deleted": "first", "orphans": 0}
    s = prisma_tables
    posts = sql(
        small_door,
        f'SELECT p.title, p.published, p.views, u.email FROM {s}."Post" p '
        f'JOIN {s}."User" u ON u.id = p."authorId" ORDER BY p.title',
    )
    assert posts == [
        ("second", True, 9007199254740994, "bob@example.com"),
        ("tx post", True, 0, "carol@example.com"),
    ]


def test_prisma_interactive_transactions(
    prisma_result: dict[str, Any], small_door: Door, prisma_tables: str
) -> None:
    tx = prisma_result["transaction"]
    assert "error" not in tx, tx
    assert tx["seen"] == 1
    assert tx["batch"] == [3, 2]  # alice, bob, carol; bob's "second" and carol's post
    rollback = prisma_result["rollback"]
    assert rollback == {
        "thrown": "thrown after insert (seen inside: 1)",
        "failed": "P2002",
        "visible": 0,
    }
    # checked in the database itself: the committed transaction is there, the others not
    users = sql(small_door, f'SELECT email, name FROM {prisma_tables}."User" ORDER BY email')
    assert users == [
        ("alice@example.com", "Alice A."),
        ("bob@example.com", "Robert"),
        ("carol@example.com", "Carol"),
    ]
