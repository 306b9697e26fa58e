"""The change-stream history against real PostgreSQL: retention, gaps, repeated batches.

These drive :class:`origin.capture.change_log.ChangeLog` directly (no servers): pruning by
retention and a replaced slot must turn old cursors into ``stream_gap``, never a silent
gap, and a batch written twice (at-least-once capture) must not duplicate events.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import pytest

from cache_edge.common.errors import BadRequest, StreamGap
from origin.capture.change_log import ChangeLog, format_cursor
from origin.capture.pgoutput import Column, Relation
from origin.capture.reader import Change, Transaction
from tests.conftest import dsn_for
from tests.integration.capture_helpers import prepare_database

DB = "cache_edge_change_log"
REL = Relation(1, "public", "cl_t", (Column("id", 23, True), Column("v", 25, False)))


@pytest.fixture
async def log() -> AsyncIterator[ChangeLog]:
    await prepare_database(DB, "DROP SCHEMA IF EXISTS cache_edge CASCADE; "
                           "DROP TABLE IF EXISTS cl_t; CREATE TABLE cl_t (id int, v text)")  # fmt: skip
    pool = await asyncpg.create_pool(dsn_for(DB), min_size=1, max_size=2)
    assert pool is not None

    @contextlib.asynccontextmanager
    async def acquire() -> AsyncIterator[asyncpg.Connection]:
        async with pool.acquire() as conn:
            yield conn

    try:
        yield ChangeLog("acme", acquire, retention=3600)
    finally:
        await pool.close()


def txn(lsn: int, age: dt.timedelta, *ids: int) -> Transaction:
    t = Transaction(xid=lsn, commit_time=dt.datetime.now(dt.UTC) - age, commit_lsn=lsn)
    t.tables.add("public.cl_t")
    t.changes.extend(Change(REL, "insert", new=(str(i), f"v{i}")) for i in ids)
    return t


async def test_history_is_served_after_a_cursor_and_repeats_are_no_ops(log: ChangeLog) -> None:
    await log.started(100)
    start = (await log.poll(None, ["public.cl_t"], None, 0))["cursor"]
    assert start == format_cursor(99, 2**31 - 1)  # before anything committed after 100
    batch = [txn(200, dt.timedelta(0), 1, 2), txn(300, dt.timedelta(0), 3)]
    await log.apply(batch)
    await log.apply(batch)  # the capture died before confirming: the same batch again
    got = await log.poll(start, None, None, 0)
    assert [e["new"] for e in got["events"]] == [
        {"id": 1, "v": "v1"},
        {"id": 2, "v": "v2"},
        {"id": 3, "v": "v3"},
    ]
    assert got["cursor"] == format_cursor(300, 0)
    assert (await log.poll(got["events"][0]["cursor"], None, ["delete"], 0))["events"] == []
    with pytest.raises(BadRequest, match="no such table"):
        await log.poll(None, ["public.nope"], None, 0)


async def test_cursors_past_retention_or_a_lost_slot_are_gaps(log: ChangeLog) -> None:
    await log.started(100)
    await log.apply([txn(200, dt.timedelta(hours=2), 1), txn(300, dt.timedelta(0), 2)])
    log._pruned_at = 0.0  # prune on the next write (normally at most every 10 s)
    await log.apply([txn(400, dt.timedelta(0), 3)])
    old = format_cursor(99, 2**31 - 1)
    with pytest.raises(StreamGap, match="older than the retained"):
        await log.poll(old, None, None, 0)
    with pytest.raises(StreamGap):  # inside the pruned transaction: its rest is gone
        await log.poll(format_cursor(200, 0), None, None, 0)
    kept = await log.poll(format_cursor(300, 0), None, None, 0)
    assert [e["new"]["id"] for e in kept["events"]] == [3]
    await log.reset("slot_lost")  # history lost: every cursor before now is a gap
    with pytest.raises(StreamGap):
        await log.poll(format_cursor(400, 0), None, None, 0)
    await log.apply([txn(500, dt.timedelta(0), 4)])
    tail = (await log.poll(None, None, None, 0))["cursor"]
    assert tail == format_cursor(500, 0)
