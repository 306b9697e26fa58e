"""The raw protocol capture client and its corpus (tests/pgwire_capture.py,
tests/pgwire_corpus.py), against the machine's PostgreSQL directly.

They are the measuring instrument of the front door's differential test, so they are tested
first: the corpus is deterministic (two runs are identical apart from BackendKeyData), every
step succeeds or fails as it is meant to, well-known messages have the bytes the protocol
says, and every authentication method works against a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Iterator

import pytest

from cache_edge.devtools.services import Service
from cache_edge.pgwire.messages import parse_error_fields
from tests.pgwire_capture import (
    Capture,
    CaptureError,
    Extended,
    Prepared,
    ServerError,
    Simple,
    Target,
    as_step,
    capture,
    capture_both,
    compare,
    describe,
    error_codes,
    execute,
    format_diffs,
    normalize_messages,
)
from tests.pgwire_corpus import STARTUP_PARAMETERS, corpus, setup_sql, teardown_sql

SCHEMA = f"pgwire_corpus_{os.getpid()}"


@pytest.fixture(scope="module")
def target(pg_databases: tuple[str, str]) -> Iterator[Target]:
    """The test database, with the corpus's objects in this run's own schema."""
    base = Target.from_dsn(pg_databases[0])
    asyncio.run(execute(base, setup_sql(SCHEMA)))
    try:
        yield base.with_params(**STARTUP_PARAMETERS)
    finally:
        asyncio.run(execute(base, teardown_sql(SCHEMA)))


@pytest.fixture(scope="module")
def two_runs(target: Target) -> tuple[Capture, Capture]:
    """The corpus, run twice, one run after the other, on two connections."""

    async def both() -> tuple[Capture, Capture]:
        first = await capture(target, corpus(SCHEMA))
        second = await capture(target, corpus(SCHEMA))
        return first, second

    return asyncio.run(both())


# ------------------------------------------------------------------ the corpus


def test_corpus_is_deterministic(two_runs: tuple[Capture, Capture]) -> None:
    first, second = two_runs
    diffs = compare(first, second)
    assert not diffs, format_diffs(diffs, ("run 1", "run 2"))
    # ... and BackendKeyData is all that normalisation took away
    raw = [
        (i, a, b)
        for i, (a, b) in enumerate(zip(first.startup, second.startup, strict=True))
        if a != b
    ]
    assert [a[:1] for _, a, _ in raw] == [b"K"], raw
    assert first.steps == second.steps


def test_every_step_succeeds_or_fails_as_intended(two_runs: tuple[Capture, Capture]) -> None:
    cap = two_runs[0]
    assert len(cap.steps) == len(cap.script) > 150
    wrong = []
    for step, messages in zip(cap.script, cap.steps, strict=True):
        assert messages[-1][:1] == b"Z", step.label
        assert sum(m[:1] == b"Z" for m in messages) == 1, step.label
        fatal = [m for m in messages if m[:1] == b"E" and b"SFATAL\x00" in m]
        assert not fatal, (step.label, fatal)
        if tuple(error_codes(messages)) != step.errors:
            wrong.append((step.label, step.errors, [describe(m) for m in messages]))
    assert not wrong, "\n".join(map(str, wrong))


def test_corpus_labels_are_unique() -> None:
    labels = [step.label for step in corpus()]
    assert all(labels)
    assert len(labels) == len(set(labels))


def test_corpus_covers_what_it_promises(two_runs: tuple[Capture, Capture]) -> None:
    cap = two_runs[0]
    every = [m for messages in cap.steps for m in messages]
    kinds = {m[:1] for m in every}
    # RowDescription DataRow CommandComplete ReadyForQuery ParseComplete BindComplete
    # CloseComplete NoData EmptyQueryResponse ErrorResponse NoticeResponse ParameterStatus
    # ParameterDescription PortalSuspended CopyIn/OutResponse CopyData CopyDone
    assert kinds >= {bytes([kind]) for kind in b"TDCZ123nIENStsGHdc"}
    tags = {m[5:-1].decode().split(" ")[0] for m in every if m[:1] == b"C"}
    assert tags >= {"INSERT", "UPDATE", "DELETE", "SELECT", "CREATE", "DROP", "COPY", "BEGIN"}
    statuses = {m[5:6] for m in every if m[:1] == b"Z"}
    assert statuses == {b"I", b"T", b"E"}
    formats = {
        type(step).__name__ + ("-binary" if 1 in getattr(step, "result_formats", ()) else "")
        for step in cap.script
    }
    assert formats >= {"Simple", "Extended", "Extended-binary", "Prepared", "Prepared-binary"}


def test_error_fields_reach_the_client(two_runs: tuple[Capture, Capture]) -> None:
    cap = two_runs[0]
    by_label = dict(zip((s.label for s in cap.script), cap.steps, strict=True))
    (unique,) = [m for m in by_label["error/unique-pkey"] if m[:1] == b"E"]
    fields = parse_error_fields(unique)
    assert (fields["S"], fields["V"], fields["C"]) == ("ERROR", "ERROR", "23505")
    assert fields["M"] == 'duplicate key value violates unique constraint "items_pkey"'
    assert fields["D"] == "Key (id)=(1) already exists."
    assert (fields["s"], fields["t"], fields["n"]) == (SCHEMA, "items", "items_pkey")
    assert {"F", "L", "R"} <= fields.keys()
    (syntax,) = [m for m in by_label["error/syntax-position"] if m[:1] == b"E"]
    assert parse_error_fields(syntax)["P"] == "10"
    (notice,) = by_label["notice/plain"][:1]
    assert notice[:1] == b"N" and b"Mhi\x00" in notice


def test_row_limit_suspends_the_portal(two_runs: tuple[Capture, Capture]) -> None:
    cap = two_runs[0]
    by_label = dict(zip((s.label for s in cap.script), cap.steps, strict=True))
    kinds = b"".join(m[:1] for m in by_label["limit/2-of-5"])
    assert kinds == b"12TDDsDDsDCZ"
    assert by_label["limit/2-of-5"][-2] == b"C\x00\x00\x00\x0dSELECT 1\x00"


def test_timezone_from_startup_and_from_set(two_runs: tuple[Capture, Capture]) -> None:
    cap = two_runs[0]
    assert b"STimeZone\x00America/New_York\x00" in [m[:1] + m[5:] for m in cap.startup]
    by_label = dict(zip((s.label for s in cap.script), cap.steps, strict=True))
    new_york = by_label["timestamptz-new-york/simple"][1]
    kolkata = by_label["timestamptz-kolkata/simple"][1]
    assert b"2024-03-10 01:30:00-05" in new_york
    assert b"2024-03-10 12:00:00+05:30" in kolkata
    assert b"S\x00\x00\x00\x1aTimeZone\x00Asia/Kolkata\x00" in by_label["timezone/kolkata"]


# ------------------------------------------------------------------ well-known bytes


async def test_select_1_bytes(target: Target) -> None:
    cap = await capture(
        target,
        [
            Simple("SELECT 1"),
            Extended("SELECT 1"),
            Extended("SELECT 1", result_formats=(1,)),
            Simple(""),
            Prepared("p", "SELECT 1", executions=((),)),
        ],
    )
    row_description = b"T\x00\x00\x00\x21\x00\x01?column?\x00" + struct.pack(
        "!IhIhih", 0, 0, 23, 4, -1, 0
    )
    data_row = b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x011"
    select_1 = b"C\x00\x00\x00\x0dSELECT 1\x00"
    idle = b"Z\x00\x00\x00\x05I"
    parse_complete, bind_complete = b"1\x00\x00\x00\x04", b"2\x00\x00\x00\x04"
    simple, extended, binary, empty, prepared = cap.steps
    assert simple == [row_description, data_row, select_1, idle]
    assert extended == [parse_complete, bind_complete, row_description, data_row, select_1, idle]
    assert binary == [
        parse_complete,
        bind_complete,
        row_description[:-2] + b"\x00\x01",
        b"D\x00\x00\x00\x0e\x00\x01\x00\x00\x00\x04\x00\x00\x00\x01",
        select_1,
        idle,
    ]
    assert empty == [b"I\x00\x00\x00\x04", idle]
    assert prepared == [
        parse_complete,
        b"t\x00\x00\x00\x06\x00\x00",
        row_description,
        bind_complete,
        data_row,
        select_1,
        b"3\x00\x00\x00\x04",
        idle,
    ]
    assert cap.startup[0] == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert cap.startup[-1] == idle
    (key,) = [m for m in cap.startup if m[:1] == b"K"]
    assert len(key) == 13


async def test_tuple_steps_and_binary_parameters(target: Target) -> None:
    steps = [
        ("simple", "SELECT 2"),
        ("extended", "SELECT $1 + 1", [struct.pack("!i", 41)], [1], [0], [23], 0),
        ("prepared", "p2", "SELECT $1::int8 * 2", [[b"21"], [None]], [], [1], []),
    ]
    assert [type(as_step(s)).__name__ for s in steps] == ["Simple", "Extended", "Prepared"]
    cap = await capture(target, steps)
    assert b"D\x00\x00\x00\x0c\x00\x01\x00\x00\x00\x0242" in cap.steps[1]
    rows = [m for m in cap.steps[2] if m[:1] == b"D"]
    assert rows == [
        b"D\x00\x00\x00\x12\x00\x01\x00\x00\x00\x08" + struct.pack("!q", 42),
        b"D\x00\x00\x00\x0a\x00\x01\xff\xff\xff\xff",
    ]


# ------------------------------------------------------------------ comparing


async def test_capture_both_same_server_has_no_differences(target: Target) -> None:
    assert await capture_both(target, target, corpus(SCHEMA)[:40]) == []


async def test_differences_are_reported_readably(target: Target) -> None:
    script = [Simple("SHOW TimeZone"), Simple("SELECT 1")]
    utc = await capture(target.with_params(TimeZone="UTC"), script)
    tokyo = await capture(target.with_params(TimeZone="Asia/Tokyo"), script)
    diffs = compare(utc, tokyo)
    assert [d.step for d in diffs] == [-1, 0]
    assert diffs[0].left == b"S\x00\x00\x00\x11TimeZone\x00UTC\x00"
    assert diffs[0].right == b"S\x00\x00\x00\x18TimeZone\x00Asia/Tokyo\x00"
    assert diffs[1].index == 1  # RowDescription is the same, the DataRow differs
    text = format_diffs(diffs, ("direct", "front door"))
    assert "ParameterStatus TimeZone='UTC'" in text
    assert "ParameterStatus TimeZone='Asia/Tokyo'" in text
    assert "step 0: simple [simple] 'SHOW TimeZone'" in text
    assert "DataRow b'UTC'" in text and "DataRow b'Asia/Tokyo'" in text
    assert "44 00 00 00 0d 00 01 00 00 00 03 55 54 43" in text  # the hex of both sides
    # the caller chooses which parameters may differ; the rows still do
    assert [d.step for d in compare(utc, tokyo, ignore_parameters=("timezone",))] == [0]
    # a missing message on one side
    shorter = Capture(utc.auth, utc.startup, [utc.steps[0], utc.steps[1][:-1]], utc.script)
    (missing,) = compare(utc, shorter)
    assert missing.right is None and missing.left == b"Z\x00\x00\x00\x05I"
    assert "(none)" in str(missing)


def test_normalize_drops_backend_key_data_only_unless_told() -> None:
    key = b"K\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x02"
    app = b"S\x00\x00\x00\x19application_name\x00x\x00\x00"[:-1]
    ready = b"Z\x00\x00\x00\x05I"
    assert normalize_messages([key, app, ready]) == [app, ready]
    assert normalize_messages([key, app, ready], ignore_parameters=("Application_Name",)) == [ready]
    assert normalize_messages([key, app, ready], drop_kinds=()) == [key, app, ready]


# ------------------------------------------------------------------ authentication


async def test_authentication_methods_against_a_real_postgres(own_postgres: Service) -> None:
    """Cleartext (3), MD5 (5) and SCRAM-SHA-256 (10), each against PostgreSQL itself: a private
    server (the machine's trusts everyone, and is not ours to reconfigure)."""
    admin = Target.from_dsn(own_postgres.url)
    hba_file = (await execute(admin, "SHOW hba_file"))[1][11:].decode()
    rules = [
        "host all pw_clear 127.0.0.1/32 password",
        "host all pw_md5 127.0.0.1/32 md5",
        "host all pw_scram 127.0.0.1/32 scram-sha-256",
        "host all all 127.0.0.1/32 trust",
        "local all all trust",
    ]
    lines = ", ".join(f"('{rule}')" for rule in rules)
    await execute(
        admin,
        "SET password_encryption = 'md5';"
        "CREATE ROLE pw_md5 LOGIN PASSWORD 'md5 secret';"
        "SET password_encryption = 'scram-sha-256';"
        "CREATE ROLE pw_clear LOGIN PASSWORD 'clear secret';"
        "CREATE ROLE pw_scram LOGIN PASSWORD 'scram secret';"
        f"COPY (SELECT * FROM (VALUES {lines}) AS r) TO '{hba_file}';"
        "SELECT pg_reload_conf();",
    )
    await asyncio.sleep(0.5)  # the postmaster reloads pg_hba.conf asynchronously
    # SCRAM: AuthenticationSASL, SASLContinue, SASLFinal before AuthenticationOk
    for user, codes in (("pw_clear", [3]), ("pw_md5", [5]), ("pw_scram", [10, 11, 12])):
        secret = user.removeprefix("pw_") + " secret"
        login = Target(admin.host, admin.port, user, "postgres", secret)
        cap = await capture(login, [Simple("SELECT current_user")])
        assert [struct.unpack_from("!i", m, 5)[0] for m in cap.auth] == codes, user
        assert cap.startup[0] == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
        row = struct.pack("!IhI", 4 + 2 + 4 + len(user), 1, len(user)) + user.encode()
        assert b"D" + row in cap.steps[0], user
        with pytest.raises(ServerError) as failed:
            await capture(Target(admin.host, admin.port, user, "postgres", "wrong"), [])
        assert failed.value.fields["C"] == "28P01", user
    with pytest.raises(CaptureError, match="asks for a password"):
        await capture(Target(admin.host, admin.port, "pw_scram", "postgres"), [])


async def test_a_silent_or_closing_server_is_an_error_not_a_hang() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(5)
        writer.close()

    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        writer.close()

    for handler, expected in ((silent, "no ReadyForQuery within"), (closing, "closed")):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(CaptureError, match=expected):
                await capture(Target("127.0.0.1", port), [], timeout=0.5)
        finally:
            server.close()
            await server.wait_closed()


async def test_a_step_that_does_not_finish_in_time(target: Target) -> None:
    # PostgreSQL holds back results until ReadyForQuery, but flushes a notice at once
    slow = Simple("DO $$BEGIN RAISE NOTICE 'early'; PERFORM pg_sleep(5); END$$")
    with pytest.raises(CaptureError, match="no ReadyForQuery within") as failed:
        await capture(target, [slow], timeout=1.0)
    assert [m[:1] for m in failed.value.received] == [b"N"]
