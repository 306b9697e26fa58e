"""The Neon-compatible ``POST /sql`` door, spoken to as the Neon driver speaks it.

Real clients (``neon()``, drizzle, kysely, Prisma) are in test_sql_js_clients.py; here the
protocol itself: the answer's shape and values against PostgreSQL's own text output, the
cache status, batches as transactions, reads after writes, credentials and hostile bodies.
Counts of executions are PostgreSQL's (``ce_mark`` logs each execution in the database).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from cache_edge.devtools.exec_log import count_executions
from tests.conftest import API_KEY_A, API_KEY_B, TEST_DB_B
from tests.integration.door_helpers import (
    PrivateDoor,
    door_doc,
    open_door,
    private_database,
)
from tests.integration.node_helpers import marker

pytestmark = pytest.mark.asyncio

PID = os.getpid()
OWN_DB = f"cache_edge_sql_{PID}"
T = f"ce_sql_{PID}"


@pytest.fixture(scope="module")
def door(
    tmp_path_factory: pytest.TempPathFactory,
    pg_databases: tuple[str, str],
    own_redis: Callable[[int], str],
) -> Iterator[PrivateDoor]:
    with private_database(OWN_DB) as dsn:
        doc = door_doc((dsn, pg_databases[1]), own_redis(0))
        for door in open_door(tmp_path_factory.mktemp("sql"), doc):
            yield PrivateDoor(door.stack, door.host, door.port, OWN_DB)


def conn_string(tenant: str = "acme", key: str = API_KEY_A, database: str = OWN_DB) -> str:
    return f"postgresql://{tenant}:{key}@node.example/{database}"


async def sql(
    door: PrivateDoor,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    conn: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """POST /sql as the Neon driver does (a string body, its headers)."""
    sent = {
        "Neon-Connection-String": conn if conn is not None else conn_string(),
        "Neon-Raw-Text-Output": "true",
        "Neon-Array-Mode": "true",
        **(headers or {}),
    }

    data = raw if raw is not None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(door.stack.nodes()[0].url + "/sql", data=data, headers=sent) as response,
    ):
        text = await response.text()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        return response.status, parsed, dict(response.headers)


def psql_text(door: PrivateDoor, statement: str) -> list[list[str | None]]:
    """PostgreSQL's own text output of ``statement``, straight from the database."""
    out = subprocess.run(
        [
            "psql",
            door.direct(),
            "-XAtq",
            "-F",
            "\x1f",
            "-R",
            "\x1e",
            "-P",
            "null=\x01",
            "-c",
            statement,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    rows = out.stdout.rstrip("\n").split("\x1e") if out.stdout.strip() else []
    return [[None if v == "\x01" else v for v in row.split("\x1f")] for row in rows]


async def executions(m: str) -> int:
    from tests.conftest import dsn_for

    return await count_executions(dsn_for(OWN_DB), m)


async def direct(door: PrivateDoor, statement: str, *args: Any) -> Any:
    conn = await asyncpg.connect(door.direct())
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


TYPES = (
    "SELECT 12345.678900::numeric AS n, (-0.5)::numeric(6,2) AS n2, true AS b, 42::int8 AS i,"
    " 1.5::float8 AS f, '2024-03-01 12:34:56.789+02'::timestamptz AS ts,"
    ' \'{"a": [1, 2.5, {"b": null}], "c": "é"}\'::jsonb AS j,'
    " '\\x00ff10'::bytea AS by, ARRAY[1, 2, NULL]::int[] AS ia,"
    " ARRAY['x', 'y z', NULL]::text[] AS ta, NULL::text AS nothing,"
    " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,"
    " '1 year 2 mons 3 days 04:05:06.5'::interval AS iv, 'tab\there'::text AS t"
)


async def test_values_are_postgresql_text_output(door: PrivateDoor) -> None:
    status, body, headers = await sql(door, {"query": TYPES, "params": []})
    assert status == 200, body
    assert body["command"] == "SELECT" and body["rowCount"] == 1 and body["rowAsArray"] is True
    assert body["rows"] == psql_text(door, TYPES)
    names = [f["name"] for f in body["fields"]]
    assert names[:4] == ["n", "n2", "b", "i"]
    by_name = {f["name"]: f for f in body["fields"]}
    assert by_name["n2"]["dataTypeID"] == 1700 and by_name["n2"]["dataTypeModifier"] == 393222
    assert by_name["i"]["dataTypeSize"] == 8 and by_name["t"]["format"] == "text"
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "X-Cache-Status" not in headers  # not cached: no hint, no rule


async def test_parameters_are_text_or_null_and_bytea_is_hex(door: PrivateDoor) -> None:
    status, body, _ = await sql(
        door,
        {
            "query": "SELECT $1::int + 1, $2::text IS NULL, length($3::bytea), $4::jsonb->>'k',"
            " $5::timestamptz, $6::int[]",
            "params": ["41", None, "\\x00ff10", '{"k": "v"}', "2024-01-02T03:04:05.000Z", "{1,2}"],
        },
    )
    assert status == 200, body
    assert body["rows"] == [["42", "t", "3", "v", "2024-01-02 03:04:05+00", "{1,2}"]]


async def test_objects_mode_and_typed_values(door: PrivateDoor) -> None:
    query = {
        "query": "SELECT 1::int AS a, 't'::bool AS b, '{\"x\":1}'::json AS j, 2.5::numeric AS n"
    }
    status, body, _ = await sql(
        door, query, headers={"Neon-Array-Mode": "false", "Neon-Raw-Text-Output": "false"}
    )
    assert status == 200, body
    assert body["rowAsArray"] is False
    assert body["rows"] == [{"a": 1, "b": True, "j": {"x": 1}, "n": "2.5"}]


async def test_a_hinted_read_is_a_hit_the_second_time(door: PrivateDoor) -> None:
    m = marker()
    query = {
        "query": "/* cache ttl=60 */ SELECT ce_mark($1) AS m, $2::text AS v",
        "params": [m, "x"],
    }
    first = await sql(door, query)
    second = await sql(door, query)
    assert first[0] == second[0] == 200, first
    assert first[2]["X-Cache-Status"] == "miss"
    assert second[2]["X-Cache-Status"] == "ttl"
    assert int(second[2]["Age"]) >= 0
    # what Accelerate's withAccelerateInfo() reports, without another round trip
    assert second[2]["X-Cache-Region"] == first[2]["X-Cache-Region"] == "local"
    assert second[2]["X-Cache-Last-Modified"] == first[2]["X-Cache-Last-Modified"]
    assert second[2]["X-Cache-Last-Modified"].endswith("Z")
    assert second[2]["X-Cache-Signature"] == first[2]["X-Cache-Signature"]
    assert first[1] == second[1]
    assert first[1]["rows"] == [[m, "x"]]
    assert await executions(m) == 1
    other = await sql(door, {**query, "params": [m, "y"]})  # parameters are in the key
    assert other[2]["X-Cache-Status"] == "miss" and other[1]["rows"] == [[m, "y"]]
    assert await executions(m) == 2


async def test_sqlcommenter_hint_and_purge_by_tag(door: PrivateDoor) -> None:
    m = marker()
    query = {"query": f"SELECT ce_mark('{m}') /*cache_ttl='60',cache_tags='sqltag_{PID}'*/"}
    assert (await sql(door, query))[2]["X-Cache-Status"] == "miss"
    assert (await sql(door, query))[2]["X-Cache-Status"] == "ttl"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            door.stack.nodes()[0].url + "/v1/invalidate",
            json={"tags": [f"sqltag_{PID}"], "wait": 10},
            headers={"Authorization": f"Bearer {API_KEY_A}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
    assert (await sql(door, query))[2]["X-Cache-Status"] == "miss"
    assert await executions(m) == 2


async def test_a_batch_is_one_transaction(door: PrivateDoor) -> None:
    table = f"{T}_batch"
    await direct(door, f"CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, v text)")
    status, body, _ = await sql(
        door,
        {
            "queries": [
                {"query": f"INSERT INTO {table} VALUES ($1, $2)", "params": ["1", "a"]},
                {"query": f"INSERT INTO {table} VALUES ($1, $2) RETURNING v", "params": ["2", "b"]},
                {"query": "SELECT current_setting('transaction_isolation')", "params": []},
            ]
        },
        headers={"Neon-Batch-Isolation-Level": "Serializable"},
    )
    assert status == 200, body
    results = body["results"]
    assert [r["command"] for r in results] == ["INSERT", "INSERT", "SELECT"]
    assert results[0]["rowCount"] == 1 and results[1]["rows"] == [["b"]]
    assert results[2]["rows"] == [["serializable"]]
    # one failing statement rolls the whole batch back
    status, body, _ = await sql(
        door,
        {
            "queries": [
                {"query": f"INSERT INTO {table} VALUES (3, 'c')"},
                {"query": f"INSERT INTO {table} VALUES (1, 'dup')"},
            ]
        },
    )
    assert status == 400 and body["code"] == "23505", body
    assert body["constraint"] == f"{table}_pkey" and body["table"] == table
    rows = await direct(door, f"SELECT id FROM {table} ORDER BY id")
    assert [r["id"] for r in rows] == [1, 2]
    # a read-only batch refuses writes
    status, body, _ = await sql(
        door,
        {"queries": [{"query": f"INSERT INTO {table} VALUES (9, 'z')"}]},
        headers={"Neon-Batch-Read-Only": "true"},
    )
    assert status == 400 and body["code"] == "25006", body


async def test_sql_errors_carry_postgresql_fields(door: PrivateDoor) -> None:
    status, body, _ = await sql(door, {"query": "SELECT nope FROM pg_class"})
    assert status == 400
    assert body["code"] == "42703" and body["severity"] == "ERROR"
    assert body["position"] == "8" and "nope" in body["message"]
    status, body, _ = await sql(door, {"query": "SELECT 1/0"})
    assert status == 400 and body["code"] == "22012"


async def test_a_write_then_a_read_sees_it(door: PrivateDoor) -> None:
    table = f"{T}_ryw"
    await direct(door, f"CREATE TABLE IF NOT EXISTS {table} (v int)")
    await direct(door, f"TRUNCATE {table}")
    read = {"query": f"/* cache ttl=60 tags={T} */ SELECT count(*) FROM {table}"}
    assert (await sql(door, read))[1]["rows"] == [["0"]]
    status, body, _ = await sql(door, {"query": f"INSERT INTO {table} VALUES (1)"})
    assert status == 200 and body["command"] == "INSERT" and body["rowCount"] == 1
    # no automatic invalidation on this tenant: the entry stands until its tag is purged
    assert (await sql(door, read))[2]["X-Cache-Status"] == "ttl"


async def test_a_hinted_write_is_refused(door: PrivateDoor) -> None:
    table = f"{T}_hw"
    await direct(door, f"CREATE TABLE IF NOT EXISTS {table} (v int)")
    status, body, _ = await sql(
        door, {"query": f"/* cache ttl=60 */ INSERT INTO {table} VALUES (1) RETURNING v"}
    )
    assert status == 400 and body["code"] == "25006", body
    assert (await direct(door, f"SELECT count(*) AS c FROM {table}"))[0]["c"] == 0


@pytest.mark.parametrize(
    ("conn", "headers", "code"),
    [
        (conn_string(key="wrong"), {}, "28P01"),
        ("postgresql://acme@node.example/db", {}, "28P01"),
        (conn_string(tenant="globex"), {}, "28P01"),  # another tenant's user, acme's key
        (conn_string(database="elsewhere"), {}, "3D000"),
        ("not a url", {}, "08P01"),
        ("postgresql://acme:" + "k" * 20_000 + "@h/db", {}, "08P01"),
        (conn_string(key="wrong"), {"Authorization": f"Bearer {API_KEY_A}"}, None),
        (
            conn_string(tenant="globex", key="x", database=TEST_DB_B),
            {"Authorization": f"Bearer {API_KEY_B}"},
            None,
        ),
    ],
)
async def test_credentials(
    door: PrivateDoor, conn: str, headers: dict[str, str], code: str | None
) -> None:
    status, body, _ = await sql(door, {"query": "SELECT 1"}, conn=conn, headers=headers)
    if code is None:
        assert status == 200 and body["rows"] == [["1"]], body
    else:
        assert status == 400 and body["code"] == code, body
        assert API_KEY_A not in str(body)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"[]", "the body must be"),
        (b'{"query": 5}', "query must be a non-empty string"),
        (b'{"params": []}', "missing field 'query'"),
        (b'{"query": "SELECT 1", "extra": 1}', "unknown field 'extra'"),
        (b'{"query": "SELECT $1", "params": [{"a": 1}]}', "parameter $1 must be a string"),
        (b'{"query": "SELECT $1", "params": "x"}', "params must be an array"),
        (b'{"queries": {}}', "queries must be an array"),
        (b'{"queries": [' + b",".join([b'{"query": "SELECT 1"}'] * 10_000) + b"]}", "at most"),
        (b'{"query": "SELECT 1\\u0000"}', "NUL"),
        (b"\xff\xfe", "not JSON"),
    ],
)
async def test_hostile_bodies_get_a_clear_400(door: PrivateDoor, raw: bytes, fragment: str) -> None:
    status, body, _ = await sql(door, None, raw=raw)
    assert status in (400, 413), body
    assert isinstance(body, dict) and fragment in body["message"], body
    assert body["code"] in ("08P01", "54000") and body["cacheEdgeCode"]


async def test_bad_headers(door: PrivateDoor) -> None:
    status, body, _ = await sql(
        door, {"queries": []}, headers={"Neon-Batch-Isolation-Level": "Whenever"}
    )
    assert status == 400 and "Neon-Batch-Isolation-Level" in body["message"]
    status, body, _ = await sql(door, {"query": "SELECT 1"}, headers={"Neon-Array-Mode": "maybe"})
    assert status == 400 and "Neon-Array-Mode" in body["message"]


async def test_cors_preflight(door: PrivateDoor) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.options(
            door.stack.nodes()[0].url + "/sql",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "neon-connection-string, neon-array-mode",
            },
        ) as response,
    ):
        assert response.status == 204
        allowed = response.headers["Access-Control-Allow-Headers"].lower()
        assert "neon-connection-string" in allowed and "neon-batch-isolation-level" in allowed
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in response.headers["Access-Control-Allow-Methods"]


async def test_concurrent_requests_get_their_own_answers(door: PrivateDoor) -> None:
    async def one(i: int) -> None:
        status, body, _ = await sql(
            door, {"query": "SELECT $1::int * 2, pg_sleep(0.01)", "params": [str(i)]}
        )
        assert status == 200 and body["rows"][0][0] == str(i * 2), body

    await asyncio.gather(*(one(i) for i in range(40)))


async def test_operators_see_sql_answers_and_errors(door: PrivateDoor) -> None:
    m = marker()
    query = {"query": f"/* cache ttl=60 */ SELECT ce_mark('{m}')"}
    await sql(door, query)
    await sql(door, query)
    await sql(door, {"query": "SELECT 1/0"})
    async with (
        aiohttp.ClientSession() as session,
        session.get(door.stack.nodes()[0].url + "/metrics") as response,
    ):
        text = await response.text()
    counts = {
        line.split("{", 1)[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cache_edge_node_door_answers_total{") and 'door="sql"' in line
    }
    assert any('status="ttl"' in labels and n >= 1 for labels, n in counts.items()), counts
    assert any('status="none"' in labels and n >= 1 for labels, n in counts.items()), counts
    errors = [
        line
        for line in text.splitlines()
        if line.startswith('cache_edge_node_errors_total{code="query_error"}')
    ]
    assert errors and float(errors[0].rsplit(" ", 1)[1]) >= 1


async def test_a_nul_in_a_parameter_is_postgresql_s_data_exception(door: PrivateDoor) -> None:
    """neon() passes a JS string holding U+0000 as it is; PostgreSQL refuses it with 22021
    (a data exception), and so must the door: 08P01 is a connection exception, which
    clients and retry wrappers take for a lost connection (test_sql_js_clients.py::
    test_neon_a_nul_character_is_the_same_error_as_postgresql)."""
    status, body, _ = await sql(
        door, {"query": "SELECT $1::text, $2::text", "params": ["fine", "a\u0000b"]}
    )
    assert status == 400 and body["code"] == "22021", body
    assert body["message"].startswith('invalid byte sequence for encoding "UTF8": 0x00')
    assert "$2" in body["message"]
    status, body, _ = await sql(door, {"queries": [{"query": "SELECT $1", "params": ["\u0000"]}]})
    assert status == 400 and body["code"] == "22021", body
