"""The Prisma migration kit (clients/prisma, ``@cache-edge/prisma``) against a real node, through
both of its doors: Prisma 7 with ``@prisma/adapter-pg`` over the PostgreSQL door, and with
``PrismaNeonHttp`` over ``POST /sql``.

Setup, once per module: ``npm ci`` in clients/prisma from its lockfile (only when
node_modules does not match package-lock.json), ``npm run build`` (tsc) and ``prisma
generate`` for the blog example's schema (a stub stands in for Prisma's schema engine, which
cannot be downloaded offline and is not needed to generate). One origin and one node with both
doors, a redis-server and three databases of this module's own, one per tenant, so that the
three scripts can run at once without one's purges (``invalidateAll`` included) reaching
another's entries: acme holds the kit's tables for the PostgreSQL door (schema ``kit_pg``),
initech the same for ``/sql`` (schema ``public``: ``PrismaNeonHttp`` knows no other), globex
the example blog. The tables are made with SQL (Prisma's ``migrate`` needs the schema engine).

**Counting executions.** In the kit's schemas ``"User"`` is a view over ``users`` whose WHERE
calls ``ce_mark('<marker>-' || id)``, which logs through dblink (a separate connection, so it
also counts inside the origin's READ ONLY transactions) once per row PostgreSQL reads. The
script reports, per user id, how many times the database really read it: a hit adds nothing.

What the scripts saw is printed as JSON (clients/prisma/test/kit.mts, examples/blog/src/main.ts)
and checked here. Skipped only if ``node``/``npm`` are not installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from tests.conftest import API_KEY_A, API_KEY_B, dsn_for, sha
from tests.integration.door_helpers import door_doc, open_door, private_database
from tests.integration.test_pg_js_clients import QUIET, _locked
from tests.integration.test_pg_js_clients import _run as run_js

KIT = Path(__file__).resolve().parents[2] / "clients" / "prisma"
BLOG = KIT / "examples" / "blog"
PID = os.getpid()
KIT_DB = f"cache_edge_kit_{PID}"  # tenant acme: the kit through the PostgreSQL door
SQL_DB = f"cache_edge_kit_sql_{PID}"  # tenant initech: the kit through POST /sql
BLOG_DB = f"cache_edge_blog_{PID}"  # tenant globex: the example blog
SQL_TENANT, SQL_KEY = "initech", "ce_test_key_tenant_initech"
USERS = 16


# ------------------------------------------------------------------ npm, tsc, prisma generate


def _run(
    cmd: list[str], *, cwd: Path = KIT, timeout: float = 120, env: dict[str, str] | None = None
) -> str:
    return run_js(cmd, timeout=timeout, env=env, cwd=cwd)


def _bin(name: str) -> str:
    return str(KIT / "node_modules" / ".bin" / name)


def _checks() -> str:
    """The kit's unit tests (node --test), and the type checks of its scripts and the example:
    the blog against the kit (src/db.ts) and, unchanged, against Accelerate (src/db.accelerate.ts)."""
    out = _run(["npm", "test"])
    _run(["npm", "run", "check"])
    before = BLOG / ".accelerate"
    shutil.rmtree(before, ignore_errors=True)
    (before / "src").mkdir(parents=True)
    try:
        shutil.copy(BLOG / "src" / "blog.ts", before / "src" / "blog.ts")
        shutil.copy(BLOG / "src" / "db.accelerate.ts", before / "src" / "db.ts")
        (before / "src" / "generated").symlink_to(BLOG / "src" / "generated")
        _run([_bin("tsc"), "-p", "examples/blog/tsconfig.accelerate.json"])
    finally:
        shutil.rmtree(before, ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def kit() -> Iterator[Future[str]]:
    """clients/prisma installed from its lockfile, built, and the blog's client generated;
    the value is the unit tests and type checks, started in the background (they take CPU
    for seconds while the scripts mostly wait on the node). Holds the lock for the whole
    module: another run must not rebuild the kit under our feet."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed on this machine (the kit's tests need them)")
    with _locked("prisma-kit"):
        lock = (KIT / "package-lock.json").read_bytes()
        stamp = KIT / "node_modules" / ".cache-edge-lock-sha256"
        wanted = hashlib.sha256(lock).hexdigest()
        if not stamp.is_file() or stamp.read_text() != wanted:
            _run(["npm", "ci", "--no-audit", "--no-fund"], timeout=600)
            stamp.write_text(wanted)
        _run(["npm", "run", "build"])  # incremental: fast when nothing changed
        generated = BLOG / "src" / "generated"
        schema = (BLOG / "prisma" / "schema.prisma").read_bytes()
        made = generated / ".cache-edge-sha256"
        wanted = hashlib.sha256(schema + lock).hexdigest()
        if not made.is_file() or made.read_text() != wanted:
            engine = KIT / "node_modules" / ".cache-edge-no-schema-engine"
            engine.write_text("#!/bin/sh\necho 'no schema engine offline' >&2\nexit 1\n")
            engine.chmod(0o755)
            _run(
                [_bin("prisma"), "generate"],
                cwd=BLOG,
                env={"PRISMA_SCHEMA_ENGINE_BINARY": str(engine)},
            )
            made.write_text(wanted)
        assert (generated / "prisma" / "client.ts").is_file()
        with ThreadPoolExecutor(1) as background:
            checks = background.submit(_checks)
            try:
                yield checks
            finally:
                checks.cancel()
                with contextlib.suppress(BaseException):
                    checks.result()  # never leave it running past the lock


# ------------------------------------------------------------------ the stack and the databases


@dataclass(frozen=True)
class World:
    host: str
    port: int  # the PostgreSQL door
    node_url: str  # the node's HTTP API (POST /sql, /v1/invalidate)

    def door_url(self, tenant: str, key: str, database: str) -> str:
        return f"postgresql://{tenant}:{quote(key, safe='')}@{self.host}:{self.port}/{database}"


def kit_tables(schema: str, marker: str) -> str:
    """The blog's tables as the kit's tests use them: "User" counts the rows it reads."""
    s = f'"{schema}"'
    return f"""
    CREATE SCHEMA IF NOT EXISTS {s};
    CREATE TABLE {s}.users (id serial PRIMARY KEY, email text NOT NULL UNIQUE, name text);
    CREATE VIEW {s}."User" AS SELECT id, email, name FROM {s}.users
        WHERE public.ce_mark('{marker}-' || id) IS NOT NULL;
    CREATE TABLE {s}."Post" (
        id serial PRIMARY KEY,
        title text NOT NULL,
        published boolean NOT NULL DEFAULT false,
        views integer NOT NULL DEFAULT 0,
        "authorId" integer NOT NULL REFERENCES {s}.users (id) ON DELETE CASCADE
    );
    INSERT INTO {s}.users (email, name)
        SELECT 'u' || g || '@example.com', 'User ' || g FROM generate_series(1, {USERS}) AS g;
    INSERT INTO {s}."Post" (title, published, views, "authorId")
        VALUES ('a', true, 3, 1), ('b', false, 5, 1), ('c', true, 7, 2);
    """


BLOG_SEED = """
INSERT INTO "User" (email, name) VALUES ('ada@example.com', 'Ada'), ('alan@example.com', 'Alan');
INSERT INTO "Post" (title, published, views, "authorId") VALUES
    ('Hello', true, 10, 1), ('Draft', false, 0, 1), ('Machines', true, 5, 2);
"""


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, own_redis: Callable[[int], str]
) -> Iterator[World]:
    with (
        private_database(KIT_DB) as kit_dsn,
        private_database(SQL_DB) as sql_dsn,
        private_database(BLOG_DB) as blog_dsn,
    ):
        with psycopg.connect(kit_dsn, autocommit=True) as conn:
            conn.execute(kit_tables("kit_pg", "pg").encode())
        with psycopg.connect(sql_dsn, autocommit=True) as conn:
            conn.execute(kit_tables("public", "neon").encode())
        with psycopg.connect(blog_dsn, autocommit=True) as conn:
            conn.execute((BLOG / "schema.sql").read_bytes())
            conn.execute(BLOG_SEED.encode())
        doc = door_doc((kit_dsn, blog_dsn), own_redis(0))
        doc["tenants"].append(
            {"id": SQL_TENANT, "api_keys_sha256": [sha(SQL_KEY)], "database_url": sql_dsn}
        )
        for door in open_door(tmp_path_factory.mktemp("kit"), doc):
            yield World(door.host, door.port, door.stack.nodes()[0].url)


# ------------------------------------------------------------------ runs


def _start(
    cmd: list[str], *, cwd: Path = KIT, env: dict[str, str] | None = None
) -> Callable[[], Any]:
    """Start a script; the value waits for it and returns the JSON it printed last."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **QUIET, **(env or {})},
    )

    def result() -> Any:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd[:4])} exited {proc.returncode}\n{out[-6000:]}\n{err[-4000:]}"
            )
        lines = [line for line in out.splitlines() if line.startswith("{")]
        assert lines, out + err
        return json.loads(lines[-1])

    return result


@pytest.fixture(scope="module")
def runs(kit: Future[str], world: World) -> dict[str, Any]:
    """The three scripts, at the same time (they wait on the node more than they compute),
    each as a tenant of its own (purges, invalidateAll included, stay within a tenant):
    test/kit.mts through the PostgreSQL door (@prisma/adapter-pg) as acme, and through POST
    /sql (PrismaNeonHttp) as initech, and the example blog as globex."""
    tsx = _bin("tsx")
    started = {
        "door": _start(
            [
                tsx,
                "test/kit.mts",
                "pg",
                world.door_url("acme", API_KEY_A, KIT_DB),
                dsn_for(KIT_DB),
                world.node_url,
                API_KEY_A,
                "kit_pg",
                "pg",
            ]
        ),
        "sql": _start(
            [
                tsx,
                "test/kit.mts",
                "neon",
                f"postgresql://{SQL_TENANT}:{quote(SQL_KEY, safe='')}@node.example/{SQL_DB}",
                dsn_for(SQL_DB),
                world.node_url,
                SQL_KEY,
                "public",
                "neon",
            ]
        ),
        "blog": _start(
            [tsx, "src/main.ts"],
            cwd=BLOG,
            env={
                "DATABASE_URL": world.door_url("globex", API_KEY_B, BLOG_DB),
                "CACHE_EDGE_URL": world.node_url,
                "CACHE_EDGE_API_KEY": API_KEY_B,
            },
        ),
    }
    return {name: result() for name, result in started.items()}


@pytest.fixture(scope="module")
def via_door(runs: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = runs["door"]
    return result


@pytest.fixture(scope="module")
def via_sql(runs: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = runs["sql"]
    return result


@pytest.fixture(params=["door", "sql"])
def kit_run(request: pytest.FixtureRequest) -> dict[str, Any]:
    fixture = "via_door" if request.param == "door" else "via_sql"
    result: dict[str, Any] = request.getfixturevalue(fixture)
    return result


def no_error(run: dict[str, Any], scenario: str) -> Any:
    found = run[scenario]
    assert not (isinstance(found, dict) and "error" in found), found.get("error")
    return found


# ------------------------------------------------------------------ 1. reads


def hint(run: dict[str, Any], body: str) -> str:
    """A hint of a run: its tags are ``kit_<transport>_<name>``."""
    return body.replace("kit_", f"kit_{run['transport']}_")


HINT = "cache_swr='30',cache_tags='kit_reads',cache_ttl='60'"
OPS = (
    "findUnique",
    "findUniqueOrThrow",
    "findFirst",
    "findFirstOrThrow",
    "findMany",
    "count",
    "aggregate",
    "groupBy",
)


def test_every_cached_read_is_a_hit_the_second_time(kit_run: dict[str, Any]) -> None:
    reads = no_error(kit_run, "reads")
    for op in OPS:
        seen = reads["ops"][op]
        assert seen["status"] == ["miss", "ttl"], (op, seen)
        assert seen["same"] is True, op
        assert seen["hints"] == [hint(kit_run, HINT)], (op, seen["hints"])
    assert reads["ops"]["findMany"]["data"] == [
        {"id": i, "email": f"u{i}@example.com", "name": f"User {i}"} for i in (1, 2, 3)
    ]
    assert reads["ops"]["count"]["data"] == 2
    assert reads["ops"]["aggregate"]["data"] == {"_count": {"_all": 3}, "_sum": {"views": 15}}
    # PostgreSQL read each of users 1-3 once per statement that reads it (findUnique,
    # findFirst..., findMany, count: the first round's misses), then never again
    executions = reads["executions"]
    assert executions["before"] == {}
    assert executions["middle"] == executions["after"] == {"1": 3, "2": 3, "3": 3}, executions
    assert reads["uncached"] == {"status": "none", "hint": None}


def test_info(via_door: dict[str, Any], via_sql: dict[str, Any]) -> None:
    """withAccelerateInfo(): the door's status via SHOW (nothing else is known there);
    /sql has every field, from its answer's headers."""
    door = no_error(via_door, "reads")["info"]
    assert door == {
        "cacheStatus": "ttl",
        "lastModified": None,
        "region": None,
        "requestId": None,
        "signature": None,
    }
    sql = no_error(via_sql, "reads")["info"]
    assert sql["cacheStatus"] == "ttl"
    assert sql["lastModified"].endswith("Z") and sql["requestId"]
    assert sql["region"] == "local" and len(sql["signature"]) >= 16
    # without cacheEdgePool the door's status cannot be seen: info is null, the hint still goes
    plain = no_error(via_door, "uninstrumented")
    assert plain == {"info": [None, None], "name": "User 15", "executions": 1}


# ------------------------------------------------------------------ 2. concurrency


def _by_id(statements: list[dict[str, Any]]) -> dict[str, tuple[str | None, bool]]:
    """{first param: (hint, IN-list form)} of the findUnique statements of a round."""
    found = {}
    for s in statements:
        params = json.loads(s["params"])
        if isinstance(params[0], int) and params[0] < 1000:
            key = ",".join(str(p) for p in params[:-1])
            assert key not in found, (key, statements)
            found[key] = (s["hint"], s["in"])
    return found


def test_concurrent_strategies_do_not_leak(kit_run: dict[str, Any]) -> None:
    """Seven findUnique calls in one tick (Prisma batches them) and two counts, each with its
    own strategy or none, five rounds: every statement carries its own call's hint, and the
    node and the database agree (status per call, reads per id)."""
    found = no_error(kit_run, "concurrent")
    rounds = found["rounds"]
    expected = {
        "4": ("cache_tags='kit_c4',cache_ttl='60'", True),
        "5": ("cache_tags='kit_c5',cache_ttl='60'", True),
        "6": (None, True),
        "7": ("cache_ttl='2'", True),
        "8": ("cache_swr='60',cache_tags='kit_c%2Ckit_c8',cache_ttl='60'", True),
        "9,10": (None, True),  # the two plain calls stay batched: one statement
    }
    for name in ("r1", "r2", "r3", "r4", "r5"):
        r = rounds[name]
        assert _by_id(r["statements"]) == {
            k: (None if h is None else hint(kit_run, h), batched)
            for k, (h, batched) in expected.items()
        }, (name, r["statements"])
        assert r["names"] == [f"User {i}" for i in range(4, 11)], name
        counts = {s["params"]: s["hint"] for s in r["statements"] if "[1000" in s["params"]}
        assert list(counts.values()) == [hint(kit_run, "cache_tags='kit_cc',cache_ttl='60'")], r[
            "statements"
        ]
        assert r["status"]["count1"] == "none"
        assert r["status"]["6"] == "none"
        assert (r["status"]["9"], r["status"]["10"]) == (None, None)
    status = {name: rounds[name]["status"] for name in ("r1", "r2", "r3", "r4", "r5")}
    assert {k: status["r1"][k] for k in "4578"} == dict.fromkeys("4578", "miss")
    assert status["r1"]["count0"] == "miss" and status["r2"]["count0"] == "ttl"
    assert {k: status["r2"][k] for k in "458"} == dict.fromkeys("458", "ttl")
    # id 7 has ttl=2: fresh right after, expired 2.5 s after round 1
    if rounds["r2"]["ms"] + rounds["r1"]["ms"] < 1500:
        assert status["r2"]["7"] == "ttl"
    assert status["r3"]["7"] == "miss"
    assert {k: status["r3"][k] for k in "458"} == dict.fromkeys("458", "ttl")
    # purge kit_c4: only id 4's entry; purge kit_c: id 8's (its second tag)
    assert status["r4"]["4"] == "miss" and status["r4"]["5"] == status["r4"]["8"] == "ttl"
    assert status["r5"]["8"] == "miss" and status["r5"]["4"] == status["r5"]["5"] == "ttl"
    for purge in (rounds["purge4"], rounds["purgeC"]):
        assert purge["appliedRegions"] == ["local"] and purge["pendingRegions"] == []
    # what PostgreSQL read, per id: the uncached every round, the cached on misses only
    reads = found["executions"]
    assert {k: reads[k] for k in ("4", "5", "6", "8", "9", "10")} == {
        "4": 2,
        "5": 1,
        "6": 5,
        "8": 2,
        "9": 5,
        "10": 5,
    }, reads
    # and in general: the database read an id exactly when the node said miss or none (id 7,
    # ttl=2, may expire again after round 3 on a slow machine: 2 reads or more)
    for i in "45678":
        fetched = sum(status[name][i] in ("miss", "none") for name in status)
        assert reads[i] == fetched, (i, reads, status)
    assert reads["7"] >= 2


def test_the_batching_is_real_and_a_naive_context_would_leak(kit_run: dict[str, Any]) -> None:
    """The control: the same two calls (id 11 cached, id 12 not) through a naive kit, a context
    per call and Prisma's batches untouched: one statement for both, with id 11's hint."""
    control = no_error(kit_run, "naiveControl")
    assert control == [
        {
            "params": '[11,12,"0"]',
            "hint": hint(kit_run, "cache_tags='kit_n11',cache_ttl='60'"),
            "in": True,
        }
    ]


# ------------------------------------------------------------------ 3. purges


def test_invalidate_purges_and_the_next_read_sees_new_data(kit_run: dict[str, Any]) -> None:
    steps = no_error(kit_run, "invalidate")
    # [name, status, times PostgreSQL read user 13]
    assert steps["first"] == ["User 13", "miss", 1]
    assert steps["second"] == ["User 13", "ttl", 1]
    assert steps["afterSqlWrite"] == ["User 13", "ttl", 1]  # the cache does not know yet
    purge = steps["purge"]
    assert purge["appliedRegions"] == ["local"] and purge["pendingRegions"] == []
    assert purge["invalidationId"] and isinstance(purge["seq"], int) and purge["requestId"]
    assert steps["afterPurge"] == ["Changed by SQL", "miss", 2]
    assert steps["again"] == ["Changed by SQL", "ttl", 2]
    assert steps["purgeAll"]["seq"] > purge["seq"]
    assert steps["purgeAll"]["appliedRegions"] == ["local"]
    name, status, reads = steps["afterPurgeAll"]
    # Prisma's UPDATE read the row through the view too: one more
    assert (name, status, reads) == ("Changed by Prisma", "miss", 4)


def test_raw_sql_carries_its_own_hint(kit_run: dict[str, Any]) -> None:
    raw = no_error(kit_run, "raw")
    assert raw["rows"] == [[{"name": "User 16"}]] * 2
    assert raw["hint"] == hint(kit_run, "cache_tags='kit_raw',cache_ttl='60'")
    assert raw["executions"] == 1  # the second came from the cache


# ------------------------------------------------------------------ 4. bad input


def test_validation_as_accelerate(kit_run: dict[str, Any]) -> None:
    found = no_error(kit_run, "validation")
    errors = found["errors"]
    fields = {
        "negativeTtl": "cacheStrategy.ttl",
        "fractionalTtl": "cacheStrategy.ttl",
        "stringTtl": "cacheStrategy.ttl",
        "nanSwr": "cacheStrategy.swr",
        "hugeTtl": "cacheStrategy.ttl",
        "sixTags": "cacheStrategy.tags",
        "dashTag": "cacheStrategy.tags",
        "longTag": "cacheStrategy.tags",
        "emptyTag": "cacheStrategy.tags",
        "tagsNotArray": "cacheStrategy.tags",
        "unknownField": "cacheStrategy.maxAge",
        "notObject": "cacheStrategy",
    }
    assert {k: (v["cls"], v["field"]) for k, v in errors.items()} == {
        k: ("CacheStrategyError", f) for k, f in fields.items()
    }
    assert "at most 5 tags, got 6" in errors["sixTags"]["message"]
    assert found["statementsSent"] == 0  # refused before anything left the process
    assert found["ok"] == {
        "fiveTags": "cache_tags='a%2Cb%2Cc%2Cd%2Ce',cache_ttl='1'",
        "tag64": f"cache_tags='{'x' * 64}',cache_ttl='1'",
        "zero": None,
        "swrOnly": "cache_swr='5',cache_ttl='0'",
        "staleIfError": "cache_stale_if_error='30',cache_ttl='1'",
    }
    purge = found["purge"]
    assert purge["badTag"]["cls"] == purge["noTags"]["cls"] == "CacheStrategyError"
    assert purge["wrongKey"] == {
        "cls": "CacheEdgeError",
        "field": None,
        "status": 401,
        "code": "unauthorized",
    }
    assert purge["noUrl"]["code"] == "not_configured"
    assert purge["badWait"] == {
        "cls": "CacheStrategyError",
        "field": "wait",
        "status": None,
        "code": None,
    }
    assert purge["noComments"]["cls"] == "Error"  # no cacheEdgeComments(): refused at $extends


def test_transactions_are_never_hinted(via_door: dict[str, Any]) -> None:
    """Inside an interactive or a batch transaction the node never serves from its cache, so
    the kit sends no hint there, and the status is none without asking."""
    tx = no_error(via_door, "transactions")
    assert tx["interactive"] == ["none", "none"]
    assert set(tx["interactiveHints"]) == {None} and set(tx["batchHints"]) == {None}
    assert tx["afterInteractive"] == 2
    assert tx["afterBatch"] == 6  # two batches of two statements, all read by PostgreSQL


# ------------------------------------------------------------------ 5. the example


def test_the_migrated_blog_runs(runs: dict[str, Any]) -> None:
    """examples/blog, the "after" app of docs/migrate-from-accelerate.md, through the door."""
    out = runs["blog"]
    assert out["feed"] == [{"posts": 2, "cacheStatus": "miss"}, {"posts": 2, "cacheStatus": "ttl"}]
    assert out["titles"] == ["Machines (Alan)", "Hello (Ada)"]
    assert out["stats"] == {"_count": {"_all": 2}, "_sum": {"views": 15}}
    assert out["postsPerAuthor"] == [[1, 1], [2, 1]]
    assert out["afterPublish"] == {"newest": True, "cacheStatus": "miss"}
    assert out["statsAfter"] == {"_count": {"_all": 3}, "_sum": {"views": 15}}
    assert out["author"] == ["Ada", "miss", "ttl"]
    assert out["renamed"] == ["Ada Lovelace", "miss"]
    with psycopg.connect(dsn_for(BLOG_DB)) as conn:
        row = conn.execute('SELECT count(*) FROM "Post" WHERE published').fetchone()
    assert row == (3,)


# ------------------------------------------------------------------ the package itself (last:
# its checks ran in the background meanwhile)


def test_unit_tests_and_type_checks(kit: Future[str]) -> None:
    """See :func:`_checks`: they ran while the other tests did."""
    out = kit.result(timeout=300)
    assert "# fail 0" in out and "# pass" in out, out[-3000:]
