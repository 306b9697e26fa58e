"""The chaos run (bench/chaos): its checker on fabricated histories, and CI's short run.

The checker tests need no servers: they prove that each invariant can fail, so a green
short run means something. The short run starts its own PostgreSQL (so that it may
restart it), a Redis per region, an origin and two nodes, and injects every fault kind
once; ``CACHE_EDGE_CHAOS_SEED`` repeats another schedule.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench.chaos.checker import (
    ALL,
    CONNECTION_ERROR,
    TIMEOUT,
    Answer,
    Checker,
    FaultWindow,
    Purge,
)
from bench.chaos.faults import KINDS, plan
from bench.chaos.run import ChaosConfig, format_report, run_chaos
from cache_edge.devtools.services import pg_bindir

WALL = 1_800_000_000.0  # time.time() of the fabricated histories' monotonic 0


def _purge(
    tags: set[str], answered: float, floors: dict[str, int], applied: set[str] | None = None
) -> Purge:
    return Purge(
        tags=frozenset(tags),
        sent_wall=WALL + answered - 0.01,
        answered=answered,
        applied=frozenset(applied or {"r1", "r2"}),
        floors=floors,
        seq=1,
    )


def _read(
    started: float,
    version: int,
    produced: float,
    *,
    region: str = "r1",
    key: str = "p1",
    tags: tuple[str, ...] = ("p1", "g1"),
    status: str = "ttl",
) -> Answer:
    return Answer(
        op="read",
        region=region,
        started=started,
        ended=started + 0.001,
        status=200,
        key=key,
        tags=tags,
        strategy="sie",
        cache_status=status,
        version=version,
        produced=WALL + produced,
    )


def test_checker_flags_rows_older_than_an_applied_purge() -> None:
    c = Checker()
    assert c.observe(_read(1.0, 3, 0.9)) == []  # no purge yet: anything goes
    c.purge_answered(_purge({"p1"}, 2.0, {"p1": 4}))
    # Started before the purge was answered: not judged against it.
    assert c.observe(_read(1.99, 3, 0.9)) == []
    # After it, in a region it applied in: version 3 < 4 is a violation (served as stale).
    found = c.observe(_read(2.5, 3, 0.9, status="stale"))
    assert [v.kind for v in found] == ["purged_rows_served"]
    assert found[0].facts["sub"] == "stale" and found[0].facts["floor_version"] == 4
    # The new version, produced after the purge was sent: fine.
    assert c.observe(_read(2.6, 4, 2.1)) == []
    # Same version, but rows produced before the purge was sent: voided all the same.
    found = c.observe(_read(2.7, 4, 1.5))
    assert [v.kind for v in found] == ["purged_rows_served"]
    assert c.by_kind["purged_rows_served"] == 2


def test_checker_scopes_purges_by_tag_region_and_purge_all() -> None:
    c = Checker()
    c.purge_answered(_purge({"p2"}, 1.0, {"p1": 5, "p2": 5}, applied={"r1"}))
    assert c.observe(_read(2.0, 1, 0.5)) == []  # p1's read does not carry tag p2
    c.purge_answered(_purge({"g1"}, 3.0, {"p1": 6}, applied={"r1"}))
    assert c.observe(_read(4.0, 1, 0.5, region="r2")) == []  # not applied in r2
    assert [v.kind for v in c.observe(_read(4.0, 5, 0.5))] == ["purged_rows_served"]
    c.purge_answered(_purge({ALL}, 5.0, {"w0": 9}))
    found = c.observe(_read(6.0, 8, 5.5, region="r2", key="w0", tags=("w0",), status="miss"))
    assert [v.kind for v in found] == ["purged_rows_served"]


def test_checker_allows_only_the_documented_errors_of_the_fault_in_force() -> None:
    c = Checker()

    def err(at: float, status: int, code: str, region: str = "r1") -> list[str]:
        answer = Answer("read", region, at, at + 0.1, status, code)
        return [v.kind for v in c.observe(answer)]

    assert err(1.0, 502, "origin_unavailable") == ["unexpected_5xx"]  # no fault at all
    origin = FaultWindow("origin_kill", None, start=10.0, grace=3.0)
    c.fault_started(origin)
    assert err(11.0, 502, "origin_unavailable") == []
    assert err(11.0, 503, "database_unavailable") == ["unexpected_5xx"]
    assert err(11.0, 500, "internal") == ["unexpected_5xx"]
    assert err(11.0, 400, "query_error") == ["unexpected_4xx"]
    assert err(11.0, CONNECTION_ERROR, "ClientConnectorError") == ["connection_error"]
    origin.repaired = 14.0
    assert err(16.5, 502, "origin_unavailable") == []  # within the grace
    assert err(17.5, 502, "origin_unavailable") == ["unexpected_5xx"]  # past it
    node = FaultWindow("node_kill", "r2", start=20.0, repaired=21.0, grace=3.0)
    c.fault_started(node)
    assert err(20.5, CONNECTION_ERROR, "ServerDisconnectedError", region="r2") == []
    assert err(20.5, CONNECTION_ERROR, "ServerDisconnectedError", region="r1") == [
        "connection_error"
    ]
    assert err(22.0, TIMEOUT, "client_timeout", region="r2") == ["hang"]


def test_checker_uncached_reads_see_committed_versions_and_writes_are_counted() -> None:
    c = Checker()
    read = Answer("uncached", "r1", 1.0, 1.01, 200, key="p1", version=3, produced=WALL)
    assert c.observe(read, committed_at_start=3) == []
    assert [v.kind for v in c.observe(read, committed_at_start=4)] == ["uncached_stale_read"]
    c.writes_checked(10, ["0-7-abc"])
    assert c.by_kind["lost_write"] == 1
    fault = FaultWindow("redis_restart", "r1", start=1.0, repaired=2.0)
    c.recovery(fault, "r1", 0.4, bound=10.0)
    c.recovery(fault, "r1", None, bound=10.0)
    assert c.by_kind["slow_recovery"] == 1


def test_checker_measures_the_longest_stretch_without_an_answer() -> None:
    c = Checker()
    for t in (1.0, 2.0, 2.5, 6.0, 6.1):
        c.observe(Answer("read", "r1", t - 0.01, t, 200))
    assert c.longest_gap("r1", 2.0, 7.0) == pytest.approx(3.5)
    assert c.longest_gap("r1", 6.05, 9.0) == pytest.approx(2.9)
    assert c.longest_gap("r2", 0.0, 1.0) == pytest.approx(1.0)


def test_plan_is_seeded_and_has_every_fault_kind() -> None:
    regions = ("r1", "r2")
    a = plan(7, 50, regions, short=True, grace=3.0, sync_grace=2.0)
    assert a == plan(7, 50, regions, short=True, grace=3.0, sync_grace=2.0)
    assert {f.kind for f in a} == set(KINDS)
    outages = [f.hold for f in a if f.kind.startswith("origin")]
    assert max(outages) > 2.0  # one outage outlasts the lease


def _servers_missing() -> str | None:
    if pg_bindir() is None:
        return "PostgreSQL server binaries (initdb) not found"
    if shutil.which("redis-server") is None:
        return "redis-server not found"
    return None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_chaos_short_form(tmp_path: Path) -> None:
    missing = _servers_missing()
    if missing:
        pytest.skip(missing)
    seed = int(os.environ.get("CACHE_EDGE_CHAOS_SEED", "13"))
    report = run_chaos(ChaosConfig.ci(seed), tmp_path)
    text = format_report(report)
    print(text)
    assert set(report["faults"]["by_kind"]) == set(KINDS), text
    assert report["operations"]["writes_acknowledged"] > 0, text
    assert report["checks"]["freshness_after_purge"] > 1000, text
    assert report["violations"]["total"] == 0, f"{text}\nlogs: {tmp_path / 'logs'}"
