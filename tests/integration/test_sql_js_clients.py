"""Real clients of the Neon-compatible ``POST /sql`` door, none written by us (issue 17).

Each client is pointed at the node with ``neonConfig.fetchEndpoint`` (scripts in tests/js):

- ``neon()`` of ``@neondatabase/serverless`` (neon_http.mjs): tagged templates and
  ``sql.query``, parameters of every common type, values PostgreSQL makes, ``fullResults``
  and ``arrayMode``, ``sql.transaction`` with its options, errors and their fields, the
  bearer token, and ``Pool.query`` with ``poolQueryViaFetch``;
- drizzle-orm's ``neon-http`` (drizzle_http.mjs): insert, select (joins, relational
  queries, prepared), update, delete, ``db.batch``;
- kysely with ``kysely-neon`` (kysely_http.mjs). kysely-neon 3 is HTTP only: its
  NeonDialect runs each query with ``neon()``'s ``sql.query`` (for WebSockets it points to
  kysely's PostgresDialect on Neon's Pool, which the node does not serve);
- Prisma 7 with ``@prisma/adapter-neon``'s ``PrismaNeonHttp`` (prisma_neon_http.mts), on
  the client generated offline by test_pg_js_clients' ``prisma_client`` fixture.

Every read is also run straight against PostgreSQL through node-postgres (the same query
builder on ``pg`` for drizzle, kysely and Prisma), and the script records both: the tests
compare what each client received through the node with what it receives from the
database. Each client also sends hinted reads (``/* cache ttl=60 */`` or sqlcommenter):
the node's ``X-Cache-Status`` (read by a ``neonConfig.fetchFunction`` that wraps
``fetch``) says miss then ttl, and ``ce_mark()`` in the statement counts how many times
PostgreSQL ran it: once.

One stack for the module (an origin and a node, tenant acme on a database and a Redis of
this module's own); the four scripts run at the same time, one Node.js process each, on
tables of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cache_edge.devtools.exec_log import count_executions
from tests.conftest import API_KEY_A
from tests.integration.door_helpers import (
    PrivateDoor,
    door_doc,
    open_door,
    private_database,
)
from tests.integration.node_helpers import marker
from tests.integration.test_pg_js_clients import (  # noqa: F401  (fixtures)
    JS,
    QUIET,
    _locked,
    js_modules,
    prisma_client,
)

PID = os.getpid()
OWN_DB = f"cache_edge_sqljs_{PID}"
NEEDED = (
    "@neondatabase/serverless",
    "drizzle-orm",
    "kysely",
    "kysely-neon",
    "@prisma/adapter-neon",
)
SCRIPT_TIMEOUT = 120.0
# neon() runs in a time zone with a half-hour offset: Date parameters go out as local
# time with that offset, and date/timestamp values are parsed in it, both ways.
NEON_TZ = "America/St_Johns"

SETUP = """
CREATE TABLE neon_items (
    id int PRIMARY KEY, name text NOT NULL, qty int CHECK (qty >= 0), note text);

CREATE TABLE drizzle_users (
    id serial PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE, age int,
    balance numeric(12, 2), visits bigint NOT NULL DEFAULT 0,
    active boolean NOT NULL DEFAULT true, tags text[], profile jsonb, born date,
    created_at timestamptz NOT NULL DEFAULT now(), uid uuid);
CREATE TABLE drizzle_posts (
    id serial PRIMARY KEY, author_id int NOT NULL REFERENCES drizzle_users (id),
    title text NOT NULL, body bytea, at timestamptz);

CREATE TABLE kysely_people (
    id serial PRIMARY KEY, first_name text NOT NULL, last_name text, age int,
    score numeric, born_at timestamptz, meta jsonb, photo bytea, nicknames text[]);
CREATE TABLE kysely_pets (
    id serial PRIMARY KEY, owner_id int NOT NULL REFERENCES kysely_people (id),
    name text NOT NULL, species text NOT NULL, UNIQUE (owner_id, name));

-- tests/js/prisma/schema.prisma's tables, as `prisma migrate` would make them, in public
-- (PrismaNeonHttp has no schema option). "User" is an updatable view whose WHERE runs
-- ce_mark() once per statement (an InitPlan): PostgreSQL's executions of Prisma's reads.
CREATE TABLE user_rows (id serial PRIMARY KEY, email text NOT NULL, name text);
CREATE UNIQUE INDEX "User_email_key" ON user_rows (email);
CREATE VIEW "User" AS
    SELECT id, email, name FROM user_rows WHERE (SELECT ce_mark('@PRISMA_MARKER@')) IS NOT NULL;
CREATE TABLE "Post" (
    id serial PRIMARY KEY,
    title text NOT NULL,
    published boolean NOT NULL DEFAULT false,
    views bigint NOT NULL DEFAULT 0,
    score numeric(10, 2),
    "createdAt" timestamptz(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "authorId" integer NOT NULL
        REFERENCES user_rows (id) ON DELETE CASCADE ON UPDATE CASCADE
);
"""

# ------------------------------------------------------------------ the stack and the scripts


@pytest.fixture(scope="module")
def neon_modules(js_modules: Path) -> Path:  # noqa: F811
    """tests/js with this module's packages too (``npm ci`` if one is missing)."""
    with _locked("npm-ci"):
        if not all((js_modules / "node_modules" / n / "package.json").is_file() for n in NEEDED):
            done = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=js_modules,
                capture_output=True,
                text=True,
                timeout=900,
                env={**os.environ, **QUIET},
            )
            if done.returncode != 0:
                pytest.fail(f"npm ci exited {done.returncode}\n{done.stderr[-4000:]}")
    return js_modules


@pytest.fixture(scope="module")
def door(
    tmp_path_factory: pytest.TempPathFactory,
    pg_databases: tuple[str, str],
    own_redis: Callable[[int], str],
) -> Iterator[PrivateDoor]:
    with private_database(OWN_DB) as dsn:
        doc = door_doc((dsn, pg_databases[1]), own_redis(0))
        for door in open_door(tmp_path_factory.mktemp("sqljs"), doc):
            yield PrivateDoor(door.stack, door.host, door.port, OWN_DB)


def db(door: PrivateDoor, statement: str) -> list[tuple[Any, ...]]:
    """Run ``statement`` straight against the module's database."""
    with psycopg.connect(door.direct(), autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def executions(door: PrivateDoor, m: str) -> int:
    return asyncio.run(count_executions(door.direct(), m))


class Runs:
    """The scripts' results by client name: the JSON each printed last, or a failure."""

    def __init__(self, done: dict[str, subprocess.CompletedProcess[str]], took: float) -> None:
        self._done = done
        self.took = took

    def __getitem__(self, client: str) -> dict[str, Any]:
        done = self._done[client]
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            pytest.fail(
                f"{client} exited {done.returncode}\nstdout:\n{done.stdout[-4000:]}\n"
                f"stderr:\n{done.stderr[-4000:]}"
            )
        result: dict[str, Any] = json.loads(lines[-1])
        return result


@pytest.fixture(scope="module")
def markers() -> dict[str, str]:
    return {name: marker(name) for name in ("neon", "drizzle", "kysely", "prisma")}


@pytest.fixture(scope="module")
def runs(
    neon_modules: Path,
    prisma_client: Path,  # noqa: F811
    door: PrivateDoor,
    markers: dict[str, str],
) -> Runs:
    """Create the tables, then run the four scripts at the same time."""
    db(door, SETUP.replace("@PRISMA_MARKER@", markers["prisma"]))
    endpoint = door.stack.nodes()[0].url + "/sql"
    # Any host: fetchEndpoint decides where the driver posts.
    connection = f"postgresql://acme:{API_KEY_A}@node.example/{OWN_DB}"
    common = [endpoint, connection, door.direct()]
    node, tsx = shutil.which("node") or "node", str(JS / "node_modules" / ".bin" / "tsx")
    commands = {
        "neon": ([node, "neon_http.mjs", *common, "neon_items", markers["neon"]], NEON_TZ),
        "drizzle": ([node, "drizzle_http.mjs", *common, markers["drizzle"]], None),
        "kysely": ([node, "kysely_http.mjs", *common, markers["kysely"]], None),
        "prisma": (
            [tsx, "prisma_neon_http.mts", str(prisma_client), *common, markers["prisma"]],
            None,
        ),
    }
    started = time.monotonic()
    children = {
        name: subprocess.Popen(
            cmd,
            cwd=neon_modules,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **QUIET, **({"TZ": tz} if tz else {})},
        )
        for name, (cmd, tz) in commands.items()
    }
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        for name, child in children.items():
            left = max(1.0, SCRIPT_TIMEOUT - (time.monotonic() - started))
            try:
                out, err = child.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                child.kill()
                out, err = child.communicate()
                err += f"\n(killed after {SCRIPT_TIMEOUT} s)"
            done[name] = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
    return Runs(done, time.monotonic() - started)


def same(pair: dict[str, Any]) -> Any:
    """The value both ways, after checking the node's equals the database's."""
    assert "error" not in pair, pair
    assert pair["door"] == pair["direct"], pair
    return pair["door"]


def ok(found: Any) -> Any:
    assert not (isinstance(found, dict) and "error" in found), found
    return found


# ------------------------------------------------------------------ neon()


def test_neon_parameters_of_every_type(runs: Runs) -> None:
    """sql.query and the tagged template, with numbers, bigint, numeric, booleans, unicode
    text, null, a Date, json and jsonb objects, a Buffer, arrays and a uuid: the same
    parsed values, the same text and the same column types as straight from PostgreSQL."""
    found = runs["neon"]
    params = ok(found["params"])
    row = same(params)[0]
    assert params["rawDoor"] == params["rawDirect"]
    assert params["fieldsDoor"] == params["fieldsDirect"]
    assert [t for _, t in params["fieldsDoor"]][:4] == [23, 20, 1700, 16]
    assert (row["i"], row["big"], row["num"], row["b"]) == (
        42,
        "9007199254740993",
        "12345678901234567890.123456789",
        True,
    )
    assert row["t"] == 'héllo ✓ 🐘 "q" \\ tab\there\nnewline' and row["nul"] is None
    assert row["ts"] == {"date": "2024-02-29T13:14:15.123Z"}
    assert row["j"] == {"a": [1, 2.5, None], "b": "é", "c": {"d": True}}
    assert row["by"] == {"bytes": "00ff10415c"}
    assert row["ia"] == [1, 2, None, -3]
    assert row["ta"] == ["a", "b c", None, '"q"', "back\\slash", "", "{}"]
    assert row["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert (row["negative"], row["no"]) == ("-9223372036854775808", False)
    # the Date went out as local time at -03:30 and came back as the same instant
    assert params["rawDoor"][0][6] == "2024-02-29 13:14:15.123+00"
    assert same(found["template"]) == [row]
    assert params["command"] == ["SELECT", "SELECT"] and params["rowCount"] == [1, 1]


def test_neon_values_postgresql_makes(runs: Runs) -> None:
    """Every parser the driver applies, on values PostgreSQL printed: the node's text is
    the database's, byte for byte, and parses to the same values."""
    constants = ok(runs["neon"]["constants"])
    row = same(constants)[0]
    assert constants["rawDoor"] == constants["rawDirect"]
    assert constants["fieldsDoor"] == constants["fieldsDirect"]
    assert row["nan"] == {"number": "NaN"} and row["tzinf"] == {"number": "Infinity"}
    assert row["matrix"] == [[1, 2], [3, 4]] and row["none"] == []
    assert row["iv"]["PostgresInterval"]["milliseconds"] == 500
    assert row["empty"] == {"bytes": ""} and row["padded"] == "ab  "
    raw = constants["rawDoor"][0]
    assert "0044-03-15 BC" in raw and "\x01 ctrl" in raw and raw[-1] is None


def test_neon_query_options_and_full_results(runs: Runs) -> None:
    query = ok(runs["neon"]["query"])
    assert query["inserted"] == {"command": "INSERT", "rowCount": 2, "rows": []}
    assert query["asArrays"] == [[1, "one"], [2, "two"]]
    full = query["full"]
    assert (full["command"], full["rowCount"], full["rowAsArray"]) == ("SELECT", 2, False)
    assert full["rows"][1] == {"id": 2, "name": "two", "qty": 2, "note": None}
    # tableID, columnID, dataTypeSize, dataTypeModifier, format: as node-postgres sees them
    assert full["fields"] == full["directFields"]
    assert query["updated"] == {"command": "UPDATE", "rowCount": 1}
    assert query["empty"] == {"command": "SELECT", "rowCount": 0, "rows": []}
    assert query["ddl"] == {"command": "CREATE", "rowCount": None}
    assert query["multiRow"] == [{"n": 1}, {"n": 2}, {"n": 3}]
    sent = query["headers"]
    assert sent["Neon-Raw-Text-Output"] == sent["Neon-Array-Mode"] == "true"
    assert "application_name=" in sent["Neon-Connection-String"]


def test_neon_hinted_reads_miss_then_hit(
    runs: Runs, door: PrivateDoor, markers: dict[str, str]
) -> None:
    found = runs["neon"]
    m = markers["neon"]
    cache = ok(found["cache"])
    first, second, other, third = (cache[k] for k in ("first", "second", "other", "third"))
    assert (first["cache"], second["cache"], other["cache"], third["cache"]) == (
        ["miss"],
        ["ttl"],
        ["miss"],  # another parameter: another entry
        ["ttl"],
    )
    assert first["value"] == second["value"] == third["value"]  # now() included
    assert first["value"][0]["m"] == f"{m}-hint" and other["value"][0]["m"] == f"{m}-other"
    assert first["value"][0]["b"] == {"bytes": "6869"}
    assert first["value"][0]["big"] == "9007199254740993"
    assert cache["firstAge"] == {"status": "miss", "age": 0}
    assert cache["secondAge"]["status"] == "ttl" and cache["secondAge"]["age"] >= 0
    assert executions(door, f"{m}-hint") == 1
    assert executions(door, f"{m}-other") == 1
    # a hit carries the same text as the miss: the same values as from PostgreSQL
    types = ok(found["cacheTypes"])
    assert (types["miss"]["cache"], types["hit"]["cache"]) == (["miss"], ["ttl"])
    assert types["miss"]["value"] == types["hit"]["value"] == types["direct"]
    commenter = ok(found["sqlcommenter"])
    assert (commenter["first"]["cache"], commenter["second"]["cache"]) == (["miss"], ["ttl"])
    assert executions(door, f"{m}-commenter") == 1
    uncached = ok(found["uncached"])
    assert uncached["first"]["cache"] == uncached["second"]["cache"] == [None]


def test_neon_concurrent_requests(runs: Runs, door: PrivateDoor, markers: dict[str, str]) -> None:
    concurrent = ok(runs["neon"]["concurrent"])
    assert concurrent["own"] == [i * 2 for i in range(40)]
    m = f"{markers['neon']}-together"
    assert concurrent["together"] == [m] * 20
    assert set(concurrent["statuses"]) <= {"miss", "ttl"}
    # twenty identical misses at once: PostgreSQL ran the statement once
    assert executions(door, m) == 1


def test_neon_transactions(runs: Runs, door: PrivateDoor) -> None:
    tx = ok(runs["neon"]["transaction"])
    assert tx["requests"] == 1  # the whole batch in one HTTP request
    assert tx["inserted"] == [] and tx["returned"] == [{"id": 11, "name": "eleven"}]
    assert tx["settings"] == [{"iso": "repeatable read", "ro": "off", "same": True}]
    assert tx["sent"]["Neon-Batch-Isolation-Level"] == "RepeatableRead"
    # a hint inside a batch is ignored: it runs in the transaction, uncached
    assert tx["hinted"] == [{"n": 4}] and tx["cache"] is None
    assert tx["full"] == [
        {"command": "UPDATE", "rowCount": 2, "rows": []},
        {"command": "SELECT", "rowCount": 2, "rows": [{"id": 10, "qty": 2}, {"id": 11, "qty": 3}]},
    ]
    assert tx["readOnly"] == [[{"iso": "serializable", "ro": "on", "d": "on"}]]
    assert tx["sentReadOnly"]["Neon-Batch-Read-Only"] == "true"
    assert tx["sentReadOnly"]["Neon-Batch-Deferrable"] == "true"
    assert tx["refused"]["code"] == "25006" and tx["refused"]["name"] == "NeonDbError"
    rolled = tx["rolledBack"]
    assert (rolled["code"], rolled["constraint"], rolled["table"]) == (
        "23505",
        "neon_items_pkey",
        "neon_items",
    )
    assert tx["levels"] == {
        "ReadUncommitted": "read uncommitted",
        "ReadCommitted": "read committed",
        "RepeatableRead": "repeatable read",
        "Serializable": "serializable",
    }
    ids = [r[0] for r in db(door, "SELECT id FROM neon_items ORDER BY id")]
    assert 12 not in ids and 99 not in ids and 60 not in ids and {10, 11} <= set(ids)


def test_neon_errors_carry_postgresql_fields(runs: Runs) -> None:
    """A 400 from the node becomes a NeonDbError whose fields (code, position, constraint,
    table, schema, column, dataType, detail, hint, where, internalQuery, file, line,
    routine...) are those node-postgres gets from PostgreSQL for the same statement."""
    errors = ok(runs["neon"]["errors"])
    expected = {
        "unique": "23505",
        "check": "23514",
        "notNull": "23502",
        "undefinedColumn": "42703",
        "syntax": "42601",
        "divisionByZero": "22012",
        "badParam": "22P02",
        "raise": "P0001",
        "internalQuery": "42703",
        "undefinedTable": "42P01",
        "unicode": "42703",
        "twoStatements": "42601",
        "hintedUndefinedColumn": "42703",
        "hintedDivision": "22012",
        "hintedBadParam": "22P02",
    }
    for name, code in expected.items():
        door, direct = errors[name]["door"], errors[name]["direct"]
        assert door["name"] == "NeonDbError" and door["isNeonDbError"], (name, door)
        assert door["status"] == 400 and door["code"] == code, (name, door)
        fields = {k: v for k, v in door.items() if k not in ("name", "isNeonDbError", "status")}
        assert fields == {k: v for k, v in direct.items() if k != "name"}, name
    unique = errors["unique"]["door"]
    assert (unique["constraint"], unique["table"], unique["schema"]) == (
        "neon_items_pkey",
        "neon_items",
        "public",
    )
    assert unique["detail"] == "Key (id)=(1) already exists."
    assert errors["check"]["door"]["constraint"] == "neon_items_qty_check"
    assert errors["notNull"]["door"]["column"] == "name"
    assert errors["undefinedColumn"]["door"]["position"] == "8"
    assert errors["unicode"]["door"]["position"] == "16"  # characters, not bytes
    # the hint comment is blanked, not cut: the position points into the text sent
    assert errors["hintedUndefinedColumn"]["door"]["position"] == "32"
    raised = errors["raise"]["door"]
    assert (raised["detail"], raised["hint"], raised["dataType"]) == (
        "the detail",
        "a hint",
        "some_type",
    )
    assert raised["where"].startswith("PL/pgSQL function inline_code_block")
    internal = errors["internalQuery"]["door"]
    assert (internal["internalQuery"], internal["internalPosition"]) == ("SELECT nope", "8")
    assert errors["badParam"]["door"]["where"].startswith("unnamed portal parameter $1")
    hinted_write = errors["hintedWrite"]
    assert hinted_write["code"] == "25006" and "remove the cache hint" in hinted_write["message"]
    assert errors["emptyBatch"] == {"noError": []}
    assert errors["after"] == [{"still": "fine"}]


def test_neon_a_nul_character_is_the_same_error_as_postgresql(runs: Runs) -> None:
    """A JS string holding U+0000 as a parameter: PostgreSQL refuses it with 22021, a data
    exception. (The node used to answer 08P01, a connection exception, which clients and
    retry wrappers take for a lost connection.)"""
    nul = ok(runs["neon"]["nul"])
    assert nul["direct"]["code"] == "22021"
    assert nul["door"]["code"] == "22021" and nul["door"]["name"] == "NeonDbError"
    assert nul["door"]["message"].startswith(nul["direct"]["message"])


def test_neon_credentials(runs: Runs) -> None:
    auth = ok(runs["neon"]["auth"])
    assert auth["wrongKey"]["code"] == "28P01" and auth["wrongKey"]["name"] == "NeonDbError"
    assert API_KEY_A not in json.dumps(auth)
    assert auth["wrongDatabase"]["code"] == "3D000"
    # neon({authToken}) sends Authorization: Bearer, which wins over the password
    assert auth["withToken"] == [{"two": 2}] and auth["sent"] == "bearer"


def test_neon_sizes_utility_statements_and_pool(runs: Runs) -> None:
    found = runs["neon"]
    sizes = ok(found["sizes"])
    assert sizes["rows"] == 20000 and sizes["same"] is True
    assert sizes["echoed"] is True and sizes["length"] == sizes["expected"] == 200000
    utility = ok(found["noticesAndUtility"])
    assert utility["notice"] == {"command": "DO", "rowCount": None, "rows": []}
    assert utility["show"] == 1 and utility["set"] == {"command": "SET", "rows": []}
    pool = ok(found["poolViaFetch"])
    assert pool["rows"] == [{"n": 5, "j": {"k": "é"}, "later": True}]
    assert (pool["command"], pool["rowCount"]) == ("SELECT", 1)
    assert pool["fields"] == [["n", 23], ["j", 3802], ["later", 16]]
    assert pool["arrays"] == [[1, "b"]]


# ------------------------------------------------------------------ drizzle-orm neon-http


def test_drizzle_insert_select_update(runs: Runs) -> None:
    found = runs["drizzle"]
    insert = ok(found["insert"])
    alice = insert["alice"][0]
    assert (alice["name"], alice["balance"], alice["visits"]) == (
        "Alice ✓",
        "1234.50",
        {"bigint": "9007199254740993"},
    )
    assert alice["tags"] == ["a", "b c", '"q"'] and alice["born"] == "1993-04-05"
    assert alice["profile"] == {"theme": "dark", "langs": ["fr", "é"], "n": 1.5}
    assert insert["many"] == [
        {"id": 2, "name": "Bob", "active": False},
        {"id": 3, "name": "Carol", "active": True},
    ]
    assert insert["plainInsert"] == {"rowCount": 1, "command": "INSERT"}
    select = ok(found["select"])
    rows = same(select["all"])
    assert [r["email"] for r in rows] == [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
    ]
    assert rows[0] == alice
    assert same(select["partial"]) == [
        {"id": 1, "upper": "ALICE ✓", "visits": {"bigint": "9007199254740993"}}
    ]
    join = same(select["join"])
    assert join[1]["body"] == {"bytes": "0001feff"}
    assert join[1]["at"] == {"date": "2024-02-29T13:14:15.123Z"}
    assert same(select["counted"]) == [{"n": 3}]
    relational = same(select["relational"])
    assert [len(u["posts"]) for u in relational] == [1, 1, 0]
    assert same(select["first"])["name"] == "Bob"
    assert same(select["prepared"]) == [{"id": 3}]
    update = ok(found["update"])
    assert update == {"updated": [{"age": 32, "profile": {"updated": True}}], "deleted": 1}


def test_drizzle_batch(runs: Runs, door: PrivateDoor) -> None:
    batch = ok(runs["drizzle"]["batch"])
    assert batch["requests"] == 1
    assert batch["inserted"] == [{"id": 4}]
    assert batch["updated"] == [{"active": False}]
    assert batch["selected"] == [{"name": "Dan", "active": False}]
    assert batch["counted"] == [{"n": 4}]
    assert batch["failed"]["code"] == "23505"
    assert batch["failed"]["constraint"] == "drizzle_users_email_key"
    assert batch["refused"] == "No transactions support in neon-http driver"  # drizzle's own
    names = [r["name"] for r in same(batch["afterBatch"])]
    assert names == ["Alice ✓", "Bob", "Carol", "Dan"]
    assert db(door, "SELECT count(*) FROM drizzle_users WHERE email = 'eve@example.com'") == [(0,)]


def test_drizzle_hinted_read(runs: Runs, door: PrivateDoor, markers: dict[str, str]) -> None:
    cache = ok(runs["drizzle"]["cache"])
    assert (cache["first"]["cache"], cache["second"]["cache"]) == (["miss"], ["ttl"])
    assert cache["first"]["value"] == cache["second"]["value"]
    row = cache["first"]["value"][0]
    assert {"name": row["name"], "visits": row["visits"]} == cache["direct"][0]
    assert executions(door, markers["drizzle"]) == 1


# ------------------------------------------------------------------ kysely-neon


def test_kysely_queries(runs: Runs) -> None:
    found = runs["kysely"]
    insert = ok(found["insert"])
    assert insert["one"] == {
        "id": 1,
        "first_name": "Zoë",
        "born_at": {"date": "1983-07-01T08:09:10.111Z"},
    }
    assert insert["many"] == {"numInsertedOrUpdatedRows": {"bigint": "2"}}
    select = ok(found["select"])
    rows = same(select["all"])
    assert rows[0]["photo"] == {"bytes": "89504e47"} and rows[0]["nicknames"] == ["z", 'zo"ë']
    assert rows[0]["meta"] == {"likes": ["tea", "✓"], "n": None}
    assert same(select["where"]) == [
        {"first_name": "Zoë", "age": 41},
        {"first_name": "Ann", "age": 30},
    ]
    aggregate = same(select["aggregate"])
    assert aggregate["n"] == "3" and aggregate["last"] == {"date": "1983-07-01T08:09:10.111Z"}
    nested = same(select["nested"])
    assert nested[0]["pets"] == [
        {"name": "Rex", "species": "dog"},
        {"name": "Tom", "species": "cat"},
    ]
    assert same(select["raw"]) == [{"t": "héllo", "a": [1, 2]}]
    update = ok(found["update"])
    assert (update["updated"], update["deleted"]) == ({"bigint": "2"}, {"bigint": "1"})
    assert update["missing"] is None
    assert same(update["after"]) == [
        {"first_name": "Zoë", "age": 41},
        {"first_name": "Ann", "age": 31},
    ]


def test_kysely_errors_and_no_transactions(runs: Runs) -> None:
    errors = ok(runs["kysely"]["errors"])
    duplicate = errors["duplicate"]
    assert (duplicate["name"], duplicate["code"], duplicate["constraint"]) == (
        "NeonDbError",
        "23505",
        "kysely_pets_owner_id_name_key",
    )
    assert duplicate["detail"] == "Key (owner_id, name)=(1, Rex) already exists."
    # kysely-neon's own refusal (HTTP has no interactive transactions), before any request
    assert "doesn't support interactive transactions" in errors["transaction"]["message"]


def test_kysely_hinted_reads(runs: Runs, door: PrivateDoor, markers: dict[str, str]) -> None:
    cache = ok(runs["kysely"]["cache"])
    for kind in ("raw", "builder"):  # a hint in raw SQL; sqlcommenter at a builder's end
        first, second = cache[kind]
        assert (first["cache"], second["cache"]) == (["miss"], ["ttl"]), kind
        assert first["value"] == second["value"], kind
        assert executions(door, f"{markers['kysely']}-{kind}") == 1, kind
    assert cache["raw"][0]["value"] == [{"m": f"{markers['kysely']}-raw", "n": 2}]
    direct = same(cache["direct"])
    assert [{k: r[k] for k in ("first_name", "score")} for r in cache["builder"][1]["value"]] == (
        direct
    )


# ------------------------------------------------------------------ Prisma 7 PrismaNeonHttp


def test_prisma_writes(runs: Runs, door: PrivateDoor) -> None:
    found = runs["prisma"]
    create = ok(found["create"])
    assert create["alice"] == {"id": 1, "email": "alice@example.com", "name": "Alice ✓"}
    assert create["bob"] == {"id": 2, "email": "bob@example.com", "name": None}
    post = create["post"]
    assert (post["views"], post["score"], post["createdAt"]) == (
        {"bigint": "9007199254740993"},
        {"decimal": "12.5"},
        {"date": "2024-02-29T13:14:15.123Z"},
    )
    assert create["many"] == 2
    update = ok(found["update"])
    assert update["renamed"] == {"name": "Robert"}
    assert update["incremented"] == {"views": {"bigint": "9007199254740994"}, "published": True}
    assert (update["many"], update["deleted"]) == (1, 1)
    # upsert is one INSERT ... ON CONFLICT here: no transaction needed
    assert update["upsert"] == {"noError": {"name": "Alice A."}}
    assert [p["title"] for p in same(update["after"])] == ["first ✓", "second"]
    assert db(door, "SELECT email, name FROM user_rows ORDER BY id") == [
        ("alice@example.com", "Alice A."),
        ("bob@example.com", "Robert"),
    ]


def test_prisma_reads_same_as_direct(runs: Runs) -> None:
    read = ok(runs["prisma"]["read"])
    users = same(read["findMany"])
    assert [len(u["posts"]) for u in users] == [2, 1]
    assert same(read["findUnique"]) == {"id": 2, "email": "bob@example.com", "name": None}
    assert same(read["findFirst"]) == {
        "title": "second",
        "score": {"decimal": "0.01"},
        "views": {"bigint": "0"},
        "author": {"email": "alice@example.com"},
    }
    assert same(read["missing"]) is None
    assert (same(read["count"]), same(read["countWhere"])) == (3, 2)
    aggregate = same(read["aggregate"])
    assert aggregate["_sum"] == {"views": {"bigint": "9007199254740993"}}
    assert aggregate["_avg"] == {"score": {"decimal": "6.255"}}
    assert same(read["groupBy"]) == [
        {"_count": {"_all": 2}, "published": False},
        {"_count": {"_all": 1}, "published": True},
    ]
    assert same(read["relationCount"]) == [
        {"email": "alice@example.com", "_count": {"posts": 2}},
        {"email": "bob@example.com", "_count": {"posts": 1}},
    ]
    assert same(read["raw"]) == [
        {
            "i": 42,
            "big": {"bigint": "9007199254740993"},
            "t": "héllo",
            "ts": {"date": "2024-01-02T03:04:05.678Z"},
            "b": True,
            "by": {"bytes": "0102ff"},
            "j": {"a": [1, "é"]},
            "n": {"decimal": "1.5"},
            "nothing": None,
        }
    ]


def test_prisma_refuses_transactions(runs: Runs, door: PrivateDoor) -> None:
    """PrismaNeonHttp refuses to start a transaction, by design; so interactive and batch
    $transaction fail, and so does a nested create (Prisma wraps it in one)."""
    found = runs["prisma"]
    refusal = "Transactions are not supported in HTTP mode"
    tx = ok(found["transactions"])
    assert tx["interactive"]["message"] == tx["batch"]["message"] == refusal
    assert found["nestedCreate"]["message"] == refusal
    assert db(door, "SELECT count(*) FROM user_rows WHERE email = 'carol@example.com'") == [(0,)]


def test_prisma_errors(runs: Runs) -> None:
    """PrismaNeonHttp passes the driver's error on without mapping it (its performIO has no
    onError, unlike PrismaNeon and PrismaPg), so Prisma's code is the SQLSTATE the node
    sent, and its message PostgreSQL's: what it does against Neon too."""
    errors = ok(runs["prisma"]["errors"])
    duplicate = errors["duplicate"]
    assert duplicate["direct"]["code"] == "P2002"
    assert duplicate["door"]["code"] == "23505"
    assert duplicate["door"]["name"] == "PrismaClientKnownRequestError"
    cause = duplicate["direct"]["meta"]["driverAdapterError"]["DriverAdapterError"]["cause"]
    assert duplicate["door"]["message"] == cause["originalMessage"]
    foreign = errors["foreignKey"]
    assert (foreign["door"]["code"], foreign["direct"]["code"]) == ("23503", "P2003")
    assert 'violates foreign key constraint "Post_authorId_fkey"' in foreign["door"]["message"]
    assert errors["notFound"]["code"] == "P2025"  # Prisma's own: no row came back


def test_prisma_hinted_reads(runs: Runs, door: PrivateDoor, markers: dict[str, str]) -> None:
    """A comments: plugin puts cache_ttl/cache_tags on reads (sqlcommenter, at the end):
    findMany and count are a miss then a hit, and PostgreSQL read "User" once for both
    findMany calls; without the hint, the node sends no cache status and it runs again."""
    cache = ok(runs["prisma"]["cache"])
    assert (cache["first"]["cache"], cache["second"]["cache"]) == (["miss"], ["ttl"])
    assert cache["first"]["value"] == cache["second"]["value"] == cache["direct"]
    assert cache["firstSql"].endswith("/*cache_tags='prisma_http',cache_ttl='60'*/")
    start, after_first, after_second, after_unhinted = cache["executions"]
    assert (after_first - start, after_second - after_first) == (1, 0)
    assert after_unhinted - after_second == 2  # count()'s miss, then the unhinted findMany
    assert [c["cache"] for c in cache["count"]] == [["miss"], ["ttl"]]
    assert cache["count"][0]["value"] == cache["count"][1]["value"] == 2
    assert cache["unhinted"]["cache"] == [None]
    first, second = cache["raw"]
    assert (first["cache"], second["cache"]) == (["miss"], ["ttl"])
    assert executions(door, markers["prisma"] + "-raw") == 1
