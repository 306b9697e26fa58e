"""A corpus of protocol steps for the front door's byte-for-byte differential test.

Types (and their text and binary forms), session settings that change how values are
written, command tags, errors and notices with all their fields, transactions, COPY, row
limits and prepared statements. Every step is deterministic: running the corpus twice on
one server gives the same bytes apart from BackendKeyData (tests/integration/
test_pgwire_capture.py checks that).

Use::

    await execute(target, setup_sql(schema))
    cap = await capture(target.with_params(**STARTUP_PARAMETERS), corpus(schema))
    ...
    await execute(target, teardown_sql(schema))

The objects live in their own schema (``pgwire_corpus`` unless told) so that parallel runs
do not clash; the SQL templates name it ``$schema``. Run the corpus on one connection at
a time per schema: its writes put the table back as they found it, but only when nobody
else writes to it in between. ``errors`` on a step lists the SQLSTATEs it is meant to
produce, in order.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import replace

from tests.pgwire_capture import Extended, Prepared, Simple, Step, sql_identifier

__all__ = [
    "DEFAULT_SCHEMA",
    "SETUP_SQL",
    "STARTUP_PARAMETERS",
    "TEARDOWN_SQL",
    "corpus",
    "setup_sql",
    "teardown_sql",
]

DEFAULT_SCHEMA = "pgwire_corpus"

# Pinned for the whole session (sent in the startup packet): nothing the server's or the
# database's defaults say may change a byte. TimeZone is changed again by steps (SET).
STARTUP_PARAMETERS: dict[str, str] = {
    "application_name": "pgwire_corpus",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "TimeZone": "America/New_York",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "client_min_messages": "notice",
    "search_path": "public",
}

SETUP_SQL = """
DROP SCHEMA IF EXISTS $schema CASCADE;
CREATE SCHEMA $schema;
CREATE TYPE $schema.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN $schema.posint AS integer CONSTRAINT posint_positive CHECK (VALUE > 0);
CREATE TYPE $schema.pair AS (a integer, b text);
CREATE TABLE $schema.items (
    id integer CONSTRAINT items_pkey PRIMARY KEY,
    name text NOT NULL CONSTRAINT items_name_key UNIQUE,
    price numeric(12, 2),
    mood $schema.mood,
    qty $schema.posint,
    tags text[]
);
INSERT INTO $schema.items VALUES
    (1, 'apple', 1.50, 'happy', 3, '{red,green}'),
    (2, 'pear', 2.25, 'ok', 1, '{}'),
    (3, 'plum', NULL, NULL, NULL, NULL);
"""

TEARDOWN_SQL = """
DROP SCHEMA IF EXISTS $schema CASCADE;
"""


def setup_sql(schema: str = DEFAULT_SCHEMA) -> str:
    return SETUP_SQL.replace("$schema", sql_identifier(schema))


def teardown_sql(schema: str = DEFAULT_SCHEMA) -> str:
    return TEARDOWN_SQL.replace("$schema", sql_identifier(schema))


def corpus(schema: str = DEFAULT_SCHEMA) -> list[Step]:
    """The steps, with their objects in ``schema`` (created by :func:`setup_sql`)."""
    name = sql_identifier(schema)
    return [replace(step, sql=step.sql.replace("$schema", name)) for step in _STEPS]


# ------------------------------------------------------------------ helpers

TEXT, BINARY = 0, 1
INT4, INT8, BYTEA, TEXT_OID, UUID_OID = 23, 20, 17, 25, 2950


def _typed(label: str, sql: str) -> list[Step]:
    """A query as a simple Query, and as extended with text and with binary results."""
    return [
        Simple(sql, label=f"{label}/simple"),
        Extended(sql, label=f"{label}/extended-text"),
        Extended(sql, result_formats=(BINARY,), label=f"{label}/extended-binary"),
    ]


def _i4(n: int) -> bytes:
    return struct.pack("!i", n)


def _i8(n: int) -> bytes:
    return struct.pack("!q", n)


_UUID = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")

_NUMERIC = """SELECT 'NaN'::numeric AS nan, 'Infinity'::numeric AS inf, '-Infinity'::numeric AS ninf,
    0::numeric AS zero, -0.000001::numeric AS small, 12.5::numeric(10, 3) AS scaled,
    123456789012345678901234567890.123456789012345678901234567890::numeric AS big,
    1e-120::numeric AS tiny, (2::numeric ^ 200) AS power, 1::numeric / 3 AS third"""

_INTS = """SELECT 32767::int2 AS i2max, (-32768)::int2 AS i2min, 2147483647 AS i4max,
    (-2147483648)::int4 AS i4min, 9223372036854775807 AS i8max,
    (-9223372036854775807 - 1)::int8 AS i8min, 0::int4 AS zero, NULL::int8 AS nothing"""

_FLOATS = """SELECT 0.1::float8 AS f8, (1::float8 / 3) AS third8, 3.4028235e38::float4 AS f4max,
    0.1::float4 AS f4, 'NaN'::float8 AS nan, 'Infinity'::float4 AS inf, '-Infinity'::float8 AS ninf,
    '-0'::float8 AS negzero, 4.9e-324::float8 AS denormal, 1e300::float8 * 10 AS big,
    123456789.125::float4 AS rounded"""

_TEXTS = """SELECT 'héllo wörld ✓'::text AS t, 'abc'::varchar(10) AS v, 'ab'::char(5) AS c,
    ''::text AS empty, E'tab\\there\\nnewline' AS escapes, 'quote''s "double"' AS quotes,
    'back\\slash' AS backslash, 'x'::"char" AS onechar, 'name'::name AS nm"""

_BOOLS = "SELECT true AS t, false AS f, NULL::boolean AS n, 'yes'::boolean AS yes"

_TIMESTAMPTZ = """SELECT '2024-03-10 06:30:00+00'::timestamptz AS before_dst,
    '2024-03-10 07:30:00+00'::timestamptz AS after_dst,
    '2024-11-03 05:30:00.5+00'::timestamptz AS fall_back,
    '1999-12-31 23:59:59.999999+00'::timestamptz AS y2k,
    'infinity'::timestamptz AS inf, '-infinity'::timestamptz AS ninf,
    '1883-11-18 12:00:00+00'::timestamptz AS lmt,
    '0044-03-15 12:00:00+00 BC'::timestamptz AS bc"""

_DATETIMES = """SELECT '2024-02-29 13:14:15.123456'::timestamp AS ts, '2024-02-29'::date AS d,
    'infinity'::date AS dinf, '0001-01-01 BC'::date AS dbc, '13:14:15.5'::time AS t,
    '24:00:00'::time AS midnight, '13:14:15+05:30'::timetz AS ttz,
    '00:00:01-12:59:59'::timetz AS odd_offset, '294276-12-31 23:59:59.999999'::timestamp AS maxts"""

_INTERVALS = """SELECT '1 year 2 months 3 days 04:05:06.789'::interval AS full,
    '-1 day +02:03'::interval AS mixed, '0'::interval AS zero,
    '1000000 hours'::interval AS hours, '-1 year -2 mons'::interval AS negative,
    '0.000001 seconds'::interval AS micro, '3 weeks'::interval AS weeks"""

_ARRAYS = """SELECT ARRAY[1, 2, 3]::int4[] AS ints,
    ARRAY['a', NULL, 'b c', 'quote"', 'back\\slash', '', 'NULL', '{}']::text[] AS texts,
    ARRAY[[1, 2], [3, 4], [5, NULL]]::int4[] AS matrix, '{}'::int4[] AS empty,
    '[0:1]={7,8}'::int4[] AS lower_bound, ARRAY[NULL]::int8[] AS nulls,
    ARRAY[1.5, 'NaN']::numeric[] AS nums, ARRAY['2024-01-01'::date] AS dates"""

_JSON = """SELECT '{"b": 1, "a": [1, 2.50, null, "x"]}'::json AS j,
    '{"b": 1, "a": [1, 2.50, null, "x"]}'::jsonb AS jb, 'null'::jsonb AS jnull,
    '"\\u00fc ü"'::jsonb AS unicode, '[]'::json AS empty, '  {"sp" :  1 }  '::json AS spaces"""

_BYTEA = r"""SELECT '\x00ff41'::bytea AS hex, ''::bytea AS empty, 'abc\000def'::bytea AS nul,
    decode('5c27e29c93', 'hex') AS mixed, NULL::bytea AS nothing"""

_UUIDS = """SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
    '{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}'::uuid AS braces, NULL::uuid AS nothing"""

_USER_TYPES = """SELECT 'happy'::$schema.mood AS mood, 5::$schema.posint AS dom,
    ROW(1, 'x')::$schema.pair AS pair, ROW(NULL, 'a"b,c')::$schema.pair AS tricky,
    ARRAY['sad', 'ok']::$schema.mood[] AS moods"""

_RANGES = """SELECT '[1,10)'::int4range AS r, int4range(5, 5) AS empty_by_bounds,
    '(,3]'::int4range AS unbounded, '[1,3]'::int4range AS canonical,
    '[2024-01-01 00:00+00, 2024-02-01 00:00+00)'::tstzrange AS tsr, 'empty'::tstzrange AS e,
    numrange(1.5, 2.5, '[]') AS nr"""

_NETWORK = """SELECT '192.168.1.5/24'::inet AS host, '10.0.0.0/8'::cidr AS net,
    '::1'::inet AS v6, '2001:db8::/32'::cidr AS v6net, '192.168.1.5'::inet AS plain,
    '08:00:2b:01:02:03'::macaddr AS mac"""

_MONEY_OID = """SELECT 1234.56::money AS m, '-0.01'::money AS neg, 1259::oid AS o,
    'pg_class'::regclass::oid AS regclass_oid, 4294967295::oid AS maxoid,
    'int4'::regtype AS regtype"""

_NULLS = (
    "SELECT NULL AS unknown, NULL::int4 AS i, NULL::text AS t, NULL::jsonb AS j, NULL::int4[] AS a"
)


# ------------------------------------------------------------------ the steps

_STEPS: list[Step] = [
    Simple("SELECT 1", label="select-1/simple"),
    Extended("SELECT 1", label="select-1/extended"),
    *_typed("numeric", _NUMERIC),
    *_typed("integers", _INTS),
    Simple("SET extra_float_digits = 0", label="float/digits-0"),
    *_typed("float-0", _FLOATS),
    Simple("SET extra_float_digits = 1", label="float/digits-1"),
    *_typed("float-1", _FLOATS),
    Simple("SET extra_float_digits = 3", label="float/digits-3"),
    *_typed("float-3", _FLOATS),
    Simple("SET extra_float_digits = -15", label="float/digits--15"),
    Simple(_FLOATS, label="float--15/simple"),
    Simple("RESET extra_float_digits", label="float/reset"),
    Simple("SHOW extra_float_digits", label="float/show"),
    *_typed("text", _TEXTS),
    *_typed("bool", _BOOLS),
    # TimeZone: America/New_York from the startup packet, then two SETs
    *_typed("timestamptz-new-york", _TIMESTAMPTZ),
    Simple("SET TimeZone = 'Asia/Kolkata'", label="timezone/kolkata"),
    *_typed("timestamptz-kolkata", _TIMESTAMPTZ),
    Simple("SET TIME ZONE INTERVAL '+05:45' HOUR TO MINUTE", label="timezone/interval"),
    Simple(_TIMESTAMPTZ, label="timestamptz-offset/simple"),
    Simple("SET TimeZone = 'UTC'", label="timezone/utc"),
    *_typed("timestamptz-utc", _TIMESTAMPTZ),
    *_typed("datetime", _DATETIMES),
    Simple("SET DateStyle = 'SQL, DMY'", label="datestyle/sql-dmy"),
    Simple(_DATETIMES + ", " + _TIMESTAMPTZ[7:], label="datestyle-sql-dmy/simple"),
    Simple("SET DateStyle = 'German'", label="datestyle/german"),
    Simple(_DATETIMES + ", " + _TIMESTAMPTZ[7:], label="datestyle-german/simple"),
    Simple("SET DateStyle = 'Postgres, MDY'", label="datestyle/postgres-mdy"),
    Simple(_DATETIMES + ", " + _TIMESTAMPTZ[7:], label="datestyle-postgres/simple"),
    Simple("SET DateStyle = 'ISO, MDY'", label="datestyle/iso"),
    *_typed("interval-postgres", _INTERVALS),
    Simple("SET IntervalStyle = 'postgres_verbose'", label="intervalstyle/verbose"),
    Simple(_INTERVALS, label="interval-verbose/simple"),
    Simple("SET IntervalStyle = 'sql_standard'", label="intervalstyle/sql-standard"),
    Simple(_INTERVALS, label="interval-sql-standard/simple"),
    Simple("SET IntervalStyle = 'iso_8601'", label="intervalstyle/iso-8601"),
    Simple(_INTERVALS, label="interval-iso-8601/simple"),
    Simple("SET IntervalStyle = 'postgres'", label="intervalstyle/postgres"),
    *_typed("arrays", _ARRAYS),
    *_typed("json", _JSON),
    *_typed("bytea-hex", _BYTEA),
    Simple("SET bytea_output = 'escape'", label="bytea/escape"),
    *_typed("bytea-escape", _BYTEA),
    Simple("SET bytea_output = 'hex'", label="bytea/hex"),
    *_typed("uuid", _UUIDS),
    *_typed("user-types", _USER_TYPES),
    *_typed("ranges", _RANGES),
    *_typed("network", _NETWORK),
    *_typed("money-oid", _MONEY_OID),
    *_typed("nulls", _NULLS),
    # parameters: text (types inferred or given) and binary
    Extended(
        "SELECT $1::text || $2 AS cat, $3::int4 + 1 AS inc, $4::text IS NULL AS isnull",
        params=(b"a", b"b", b"41", None),
        label="params/text",
    ),
    Extended(
        "SELECT $1 + 1 AS i4, $2 * 2 AS i8, length($3) AS len, $3 AS raw, $4 AS u",
        params=(_i4(41), _i8(1 << 40), b"\x00\x01\xff", _UUID.bytes),
        param_formats=(BINARY,),
        param_types=(INT4, INT8, BYTEA, UUID_OID),
        label="params/binary-text-results",
    ),
    Extended(
        "SELECT $1 + 1 AS i4, $2 * 2 AS i8, length($3) AS len, $3 AS raw, $4 AS u",
        params=(_i4(-7), _i8(-(1 << 62)), b"", _UUID.bytes),
        param_formats=(BINARY, BINARY, BINARY, BINARY),
        result_formats=(BINARY,),
        param_types=(INT4, INT8, BYTEA, UUID_OID),
        label="params/binary-binary-results",
    ),
    Extended(
        "SELECT $1::int4 AS a, $2::text AS b, $3::int8 AS c",
        params=(_i4(1), b"two", None),
        param_formats=(BINARY, TEXT, BINARY),
        result_formats=(TEXT, BINARY, TEXT),
        label="params/mixed-formats",
    ),
    Extended(
        "SELECT $1::int4 AS a",
        params=(b"\x00\x01",),
        param_formats=(BINARY,),
        param_types=(INT4,),
        label="params/binary-too-short",
        errors=("08P01",),
    ),
    Extended(
        "SELECT $1::int4 AS a",
        params=(b"\x00\x00\x00\x01\x02",),
        param_formats=(BINARY,),
        param_types=(INT4,),
        label="params/binary-too-long",
        errors=("22P03",),
    ),
    Extended("SELECT $1::int4", params=(b"x",), label="params/bad-text", errors=("22P02",)),
    Extended("SELECT $1, $2", params=(b"1",), label="params/missing", errors=("08P01",)),
    # command tags
    Simple(
        "INSERT INTO $schema.items (id, name, price, qty) VALUES (10, 'kiwi', 0.99, 7), (11, 'fig', NULL, 2)",
        label="tag/insert",
    ),
    Simple("UPDATE $schema.items SET price = 9.99 WHERE id >= 10", label="tag/update"),
    *_typed("tag/select", "SELECT * FROM $schema.items ORDER BY id"),
    Simple("DELETE FROM $schema.items WHERE id >= 10", label="tag/delete"),
    Extended(
        "INSERT INTO $schema.items (id, name, mood, qty) VALUES ($1, $2, $3, $4) RETURNING *",
        params=(_i4(12), b"lime", b"sad", _i4(4)),
        param_formats=(BINARY, TEXT, TEXT, BINARY),
        param_types=(INT4, 0, 0, INT4),
        label="tag/insert-returning",
    ),
    Extended(
        "UPDATE $schema.items SET qty = qty + 1 WHERE id = $1",
        params=(b"12",),
        label="tag/update-extended",
    ),
    Extended("DELETE FROM $schema.items WHERE id = $1", params=(b"12",), label="tag/delete-ext"),
    Simple("CREATE TABLE $schema.scratch (a int, b text)", label="tag/create-table"),
    Simple("CREATE INDEX scratch_a ON $schema.scratch (a)", label="tag/create-index"),
    Simple("CREATE VIEW $schema.scratch_v AS SELECT a FROM $schema.scratch", label="tag/view"),
    Simple("DROP VIEW $schema.scratch_v", label="tag/drop-view"),
    Simple("DROP TABLE $schema.scratch", label="tag/drop-table"),
    Simple("DROP TABLE IF EXISTS $schema.scratch", label="tag/drop-missing-notice"),
    Simple("SELECT * FROM $schema.items WHERE false", label="tag/select-0"),
    # empty queries, several statements, errors in between
    Simple("", label="empty/simple"),
    Simple("  ;  ", label="empty/semicolon"),
    Extended("", label="empty/extended"),
    Simple("SELECT 1 AS a; SELECT 'two' AS b, 2 AS c; VALUES (1), (2); SELECT", label="multi/ok"),
    Simple("SELECT 1; SELECT 1/0; SELECT 2", label="multi/error", errors=("22012",)),
    Simple("SELECT 1; BEGIN; SELECT 2; COMMIT", label="multi/transaction"),
    # notices
    Simple("DO $$BEGIN RAISE NOTICE 'hi'; END$$", label="notice/plain"),
    Simple(
        "DO $$BEGIN RAISE WARNING 'careful' USING DETAIL = 'some detail', HINT = 'a hint', "
        "ERRCODE = '01000'; RAISE NOTICE 'second'; END$$",
        label="notice/fields",
    ),
    Simple(
        "SELECT 1 AS before; DO $$BEGIN RAISE NOTICE 'in between'; END$$; SELECT 2 AS after",
        label="notice/between-results",
    ),
    # errors with all their fields
    Simple(
        "INSERT INTO $schema.items (id, name) VALUES (1, 'dup')",
        label="error/unique-pkey",
        errors=("23505",),
    ),
    Extended(
        "INSERT INTO $schema.items (id, name) VALUES ($1, $2)",
        params=(b"99", b"apple"),
        label="error/unique-name-extended",
        errors=("23505",),
    ),
    Simple(
        "INSERT INTO $schema.items (id) VALUES (98)",
        label="error/not-null",
        errors=("23502",),
    ),
    Simple(
        "UPDATE $schema.items SET qty = -1 WHERE id = 1", label="error/domain", errors=("23514",)
    ),
    Simple("SELECT 'angry'::$schema.mood", label="error/enum-value", errors=("22P02",)),
    Simple("SELECT * FRM $schema.items", label="error/syntax-position", errors=("42601",)),
    Extended("SELECT * FRM $schema.items", label="error/syntax-extended", errors=("42601",)),
    Simple(
        "SELECT nosuchcolumn FROM $schema.items", label="error/undefined-column", errors=("42703",)
    ),
    Simple("SELECT * FROM $schema.nosuchtable", label="error/undefined-table", errors=("42P01",)),
    Simple(
        "DO $$BEGIN RAISE EXCEPTION 'custom %', 42 USING DETAIL = 'd', HINT = 'h', "
        "ERRCODE = 'P0001', SCHEMA = 'sch', TABLE = 'tbl', COLUMN = 'col', "
        "DATATYPE = 'typ', CONSTRAINT = 'con'; END$$",
        label="error/raise-all-fields",
        errors=("P0001",),
    ),
    Simple(
        "SELECT * FROM generate_series(1, 3) g WHERE 10 / (2 - g) > 0",
        label="error/after-rows",
        errors=("22012",),
    ),
    # transactions
    Simple("BEGIN", label="tx/begin"),
    Simple("INSERT INTO $schema.items (id, name) VALUES (20, 'tx-one')", label="tx/insert"),
    Simple("SAVEPOINT sp1", label="tx/savepoint"),
    Simple("INSERT INTO $schema.items (id, name) VALUES (21, 'tx-two')", label="tx/insert-2"),
    Simple("SELECT 1/0", label="tx/fail", errors=("22012",)),
    Simple("SELECT 1", label="tx/aborted", errors=("25P02",)),
    Extended("SELECT 1", label="tx/aborted-extended", errors=("25P02",)),
    Simple("ROLLBACK TO SAVEPOINT sp1", label="tx/rollback-to"),
    Simple("SELECT id, name FROM $schema.items WHERE id >= 20 ORDER BY id", label="tx/after"),
    Simple("RELEASE SAVEPOINT sp1", label="tx/release"),
    Simple("ROLLBACK", label="tx/rollback"),
    Simple("SELECT count(*) FROM $schema.items WHERE id >= 20", label="tx/gone"),
    Simple("COMMIT", label="tx/commit-outside-warning"),
    Simple("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", label="tx/begin-ro"),
    Simple(
        "INSERT INTO $schema.items (id, name) VALUES (22, 'ro')", label="tx/ro", errors=("25006",)
    ),
    Simple("COMMIT", label="tx/commit-failed-is-rollback"),
    # row limits
    Extended(
        "SELECT g, g * 2 AS twice FROM generate_series(1, 5) g", max_rows=2, label="limit/2-of-5"
    ),
    Extended("SELECT g FROM generate_series(1, 4) g", max_rows=2, label="limit/exact"),
    Extended(
        "SELECT 10 / (3 - g) FROM generate_series(1, 5) g",
        max_rows=2,
        label="limit/error-in-second-batch",
        errors=("22012",),
    ),
    Extended("SELEC g", max_rows=2, label="limit/parse-error", errors=("42601",)),
    Extended(
        "SELECT g FROM generate_series(1, 3) g",
        max_rows=1,
        result_formats=(BINARY,),
        label="limit/binary",
    ),
    # named prepared statements
    Prepared(
        "corpus_s1",
        "SELECT id, name, price, mood FROM $schema.items WHERE id = $1",
        executions=((b"1",), (b"3",)),
        param_types=(INT4,),
        label="prepared/text",
    ),
    Prepared(
        "corpus_s2",
        "SELECT id, name, tags FROM $schema.items WHERE id = $1 OR name = $2",
        executions=((_i4(2), b"apple"), (_i4(0), None)),
        param_formats=(BINARY, TEXT),
        result_formats=(BINARY,),
        label="prepared/binary",
    ),
    Prepared("corpus_s3", "SELECT 1", label="prepared/no-params"),
    Prepared(
        "corpus_s4",
        "UPDATE $schema.items SET price = price WHERE id = $1",
        executions=((b"1",), (b"999",)),
        label="prepared/update",
    ),
    Prepared("corpus_s5", "SELEC 1", label="prepared/syntax-error", errors=("42601",)),
    # COPY
    Simple(
        "COPY (SELECT id, name, price FROM $schema.items ORDER BY id) TO STDOUT", label="copy/out"
    ),
    Simple(
        "COPY (SELECT id, name, tags FROM $schema.items ORDER BY id) TO STDOUT (FORMAT csv, HEADER)",
        label="copy/out-csv",
    ),
    Simple(
        "COPY (SELECT id, price FROM $schema.items ORDER BY id) TO STDOUT (FORMAT binary)",
        label="copy/out-binary",
    ),
    Simple(
        "COPY $schema.items (id, name) FROM STDIN",
        copy_data=b"30\tcopied-1\n31\tcopied-2\n",
        label="copy/in",
    ),
    Simple("DELETE FROM $schema.items WHERE id IN (30, 31)", label="copy/in-cleanup"),
    Simple("COPY $schema.items (id, name) FROM STDIN", label="copy/in-fail", errors=("57014",)),
    # session settings reported with ParameterStatus
    Simple("SET application_name = 'renamed'", label="params/set-application-name"),
    Simple("RESET application_name", label="params/reset-application-name"),
    Simple("SHOW TimeZone", label="params/show"),
    # bigger results, split over many reads
    Simple("SELECT repeat('x', 100000) AS wide", label="big/wide"),
    Extended(
        "SELECT g, md5(g::text) FROM generate_series(1, 2000) g",
        result_formats=(BINARY, TEXT),
        label="big/many-rows",
    ),
    Simple("SELECT 'done' AS last", label="last"),
]
