"""Property: no hostile byte sequence breaks the PostgreSQL door, hangs a client, or leaks.

Hypothesis writes batches of malformed and hostile sequences; each batch is thrown at a
running node over raw sockets, a few hundred connections at once, and a logged-in
connection is reused (across batches too) for as long as the node keeps it open:

* before login: random bytes, truncated and mis-sized startup packets, a gigabyte length,
  odd protocol versions and parameters, SSL/GSSENC requests with pipelined data, cancels
  of every size, password messages of every shape (never a right key);
* logins with the right key and odd startup parameters (the origin applies them);
* after login: protocol messages out of order (Bind before Parse, Execute of an unknown
  portal, CopyData outside COPY, Sync storms, data after Terminate), right types with
  garbage bodies, unknown types, lying lengths (a gigabyte, just above
  ``node.pg_max_message_bytes``, below 4), and random bytes, split across writes anywhere.

After each sequence a logged-in connection is either closed by the node, or answers a
probe (CopyFail, Sync, ROLLBACK, then a query naming a marker) with that marker; every
read has a timeout, so a hang fails the test with the sequence that caused it. Every
answer is well-framed backend messages, every error has a SQLSTATE and none is XX000
(an internal error), and neither server logs a traceback. After each batch the node
process is alive and answers ``/healthz``; at the end none of the origin's database
connections is idle in a transaction, the door's pool holds at most ``pool_max_size`` of
them, and the node's resident memory grew by less than 50 MB.

Sequences are built from a vocabulary of whole messages and a few mutations, so that a
sequence costs hypothesis a dozen choices: generation, not the servers, would otherwise
dominate the run. ``derandomize`` makes every run send the same sequences.

FunctionCall names a function by OID and PostgreSQL runs it with the tenant's role (the
test database's superuser here): every FunctionCall the fuzzer lets through names a
harmless or non-existent function (:func:`_defuse`), never one that could end other
backends or touch the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import socket
import struct
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cache_edge.pgwire.messages import (
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    PROTOCOL_3,
    SSL_REQUEST,
    cstring,
    message,
    parse_error_fields,
)
from tests.conftest import API_KEY_A, PG_ADMIN_DSN, TEST_DB, RedisLease, dsn_for
from tests.integration.door_helpers import Door, door_doc, open_door

pytestmark = pytest.mark.slow

MAX_MESSAGE = 1 << 20  # node.pg_max_message_bytes of this stack
POOL = 8  # origin.pool_max_size
STARTUP_TIMEOUT = 1.0  # node.pg_startup_timeout (also the mid-message stall limit)
HANG = 10.0  # a read that waits longer than this is a hang
BATCH = 250  # sequences per hypothesis example, all at once
RSS_GROWTH_LIMIT = 50 << 20

# Every backend message type of protocol 3.0: nothing else may come back.
_BACKEND = frozenset(b"RSKZENTDCI123nstGHWdcAvV")
_FRONTEND = frozenset(b"QPBDEHSCFXdcf")
_HARMLESS_OIDS = (89, 177, 1257, 1299)  # version(), int4pl, textlen, now()
_T = TypeVar("_T")
_MARKERS = itertools.count()


# ------------------------------------------------------------------ the stack


@dataclass
class Fuzzed:
    door: Door
    node_pid: int
    origin_pid: int
    rss_before: int
    loop: asyncio.AbstractEventLoop  # one loop for the module: connections outlive a batch
    idle: list[Conn] = field(default_factory=list)  # logged-in connections to reuse
    sent: Counter[str] = field(default_factory=Counter)  # sequences sent, by test
    outcomes: Counter[str] = field(default_factory=Counter)
    sqlstates: Counter[str] = field(default_factory=Counter)
    logins: int = 0

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 120.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@pytest.fixture(scope="module")
def fuzzed(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], redis_dbs: RedisLease
) -> Iterator[Fuzzed]:
    asyncio.run(_admin("CREATE TABLE IF NOT EXISTS fuzz_copy (line text)"))
    asyncio.run(_admin("TRUNCATE fuzz_copy"))
    doc = door_doc(
        pg_databases,
        redis_dbs("fuzz"),
        node={"pg_startup_timeout": STARTUP_TIMEOUT, "pg_max_message_bytes": MAX_MESSAGE},
        origin={"pool_max_size": POOL, "statement_timeout": 5.0},
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="door-fuzz-loop", daemon=True)
    thread.start()
    try:
        for door in open_door(tmp_path_factory.mktemp("fuzz-door"), doc):
            node, origin = door.stack.nodes()[0], door.stack.origin
            assert node.proc is not None and origin is not None and origin.proc is not None
            fz = Fuzzed(door, node.proc.pid, origin.proc.pid, 0, loop)
            fz.run(_warm_up(fz))
            fz.rss_before = _rss(fz.node_pid)
            yield fz
            for conn in fz.idle:
                loop.call_soon_threadsafe(conn.close)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        asyncio.run(_admin("DROP TABLE IF EXISTS fuzz_copy"))


async def _admin(sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn_for(TEST_DB))
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def _warm_up(fz: Fuzzed) -> None:
    """Log in and query a few times, so the node's memory baseline includes its first use."""
    for _ in range(3):
        conn = await Conn.login(fz.door)
        assert await conn.probe("warm-up") == "answered"
        conn.close()


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _healthy(fz: Fuzzed) -> None:
    node = fz.door.stack.nodes()[0]
    assert node.proc is not None and node.proc.poll() is None, "the node process died"
    with urllib.request.urlopen(node.url + "/healthz", timeout=HANG) as answer:
        assert answer.status == 200


# ------------------------------------------------------------------ a raw connection


class Hang(AssertionError):
    pass


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.sqlstates: list[str] = []
        self.messages = 0

    @classmethod
    async def open(cls, door: Door) -> Conn:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(door.host, door.port), HANG)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    @classmethod
    async def login(cls, door: Door) -> Conn:
        """A logged-in connection. Under the fuzz's load a login may outlast this stack's
        one-second pg_startup_timeout (the node then closes it, as it should): retried."""
        for _ in range(3):
            conn = await cls.open(door)
            await conn.send([_startup([("user", "acme"), ("database", TEST_DB)])])
            msg = await conn.message()
            if msg is not None:
                assert msg == message(b"R", struct.pack("!I", 3)), msg
                await conn.send([message(b"p", cstring(API_KEY_A))])
                while (msg := await conn.message()) is not None:
                    assert msg[:1] != b"E", msg
                    if msg[:1] == b"Z":
                        return conn
            conn.close()
        raise AssertionError("three logins in a row were closed")

    async def send(self, chunks: Sequence[bytes]) -> bool:
        """Write each chunk on its own; False if the node closed the connection meanwhile."""
        try:
            for chunk in chunks:
                self.writer.write(chunk)
                await asyncio.wait_for(self.writer.drain(), HANG)
        except (ConnectionError, OSError):
            return False
        return True

    async def _fill(self, timeout: float = HANG) -> bool:
        try:
            chunk = await asyncio.wait_for(self.reader.read(1 << 16), timeout)
        except TimeoutError:
            raise Hang(
                f"nothing from the node for {timeout}s; buffered {bytes(self.buf[:80])!r}"
            ) from None
        except (ConnectionError, OSError):
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    async def message(self, timeout: float = HANG) -> bytes | None:
        """The next backend message (checked), or None once the node closed."""
        while True:
            if len(self.buf) >= 5:
                kind = self.buf[0]
                size = struct.unpack_from("!I", self.buf, 1)[0]
                assert kind in _BACKEND, f"not a backend message: {bytes(self.buf[:40])!r}"
                assert 4 <= size < (64 << 20), f"odd backend length: {bytes(self.buf[:40])!r}"
                if len(self.buf) >= 1 + size:
                    msg = bytes(self.buf[: 1 + size])
                    del self.buf[: 1 + size]
                    self.messages += 1
                    if msg[:1] == b"E":
                        fields = parse_error_fields(msg)
                        assert fields.get("S") in ("ERROR", "FATAL"), fields
                        assert len(fields.get("C", "")) == 5, fields
                        self.sqlstates.append(fields["C"])
                    return msg
            if not await self._fill(timeout):
                assert not self.buf or len(self.buf) < 5, bytes(self.buf[:40])
                return None

    async def until_closed(self, startup: bool = False) -> str:
        """Read to the end: the node must close (it may first answer, or refuse)."""
        while True:
            if startup and not self.messages:
                # SSLRequest/GSSENCRequest answers are one byte, before any message.
                if not self.buf and not await self._fill():
                    return "closed"
                if bytes(self.buf[:1]) in (b"N", b"S"):
                    assert self.buf[:1] == b"N", "the door offered TLS it does not have"
                    del self.buf[:1]
                    continue
            msg = await self.message()
            if msg is None:
                return "closed"

    async def probe(self, marker: str) -> str:
        """CopyFail, Sync, ROLLBACK, then a query of a marker: 'answered' once the marker's
        row and an idle ReadyForQuery came back ('reprobed' if that took more than one
        probe: answers to the others may still come), or 'closed'. CopyFail ends a COPY
        FROM STDIN, Sync an extended-protocol batch, ROLLBACK a transaction; outside them
        PostgreSQL ignores CopyFail and answers the rest."""
        for attempt in range(3):
            tag = f"{marker}-{attempt}"
            want = message(b"D", struct.pack("!hi", 1, len(tag)) + tag.encode())
            probe = message(b"f", cstring("probe")) + message(b"S")
            probe += message(b"Q", cstring("ROLLBACK"))
            probe += message(b"Q", cstring(f"SELECT '{tag}'"))
            if not await self.send([probe]):
                return await self.until_closed()
            seen = False
            while True:
                # Quiet can be PostgreSQL's own: the probe's bytes completed a message the
                # fuzz left unfinished, so its Sync was eaten and PostgreSQL, skipping to a
                # Sync after an error, ignores its queries (as it would directly). Probe
                # again; only the last probe's silence is a hang.
                try:
                    msg = await self.message(2.0 if attempt < 2 else HANG)
                except Hang:
                    if attempt == 2:
                        raise
                    break
                if msg is None:
                    return "closed"
                if msg == want:
                    seen = True
                elif msg[:1] == b"Z" and seen:
                    assert msg == message(b"Z", b"I"), msg
                    return "answered" if attempt == 0 else "reprobed"
        raise AssertionError(f"the probe {marker} was never answered")

    def close(self) -> None:
        self.writer.close()


def _startup(params: Sequence[tuple[str, str]], version: int = PROTOCOL_3) -> bytes:
    body = struct.pack("!I", version)
    body += b"".join(cstring(k) + cstring(v) for k, v in params) + b"\x00"
    return struct.pack("!I", len(body) + 4) + body


def _defuse(data: bytes) -> tuple[bytes, bool]:
    """Frame ``data`` as the node will after login and give every whole FunctionCall a
    harmless OID (random bytes may name any function, and PostgreSQL would run it).

    Also says whether the connection may be reused afterwards: only if ``data`` is whole
    messages, without a Terminate, and without a Query or FunctionCall that follows
    extended-protocol messages with no Sync between. If one of those fails, PostgreSQL
    skips the Query, and the origin's relay still waits for its ReadyForQuery, so the
    session keeps its database connection until the client leaves
    (test_a_query_skipped_after_an_extended_error_frees_the_pool); a trailing partial
    message can swallow the probe's Sync to the same effect. Reused, such connections
    would starve the pool for the rest of the run; closed after their probe, they free it."""
    out = bytearray(data)
    pos = 0
    unsynced = skipped = False
    while len(out) - pos >= 5:
        kind = out[pos]
        length = struct.unpack_from("!I", out, pos + 1)[0]
        if kind not in _FRONTEND or length < 4 or length > MAX_MESSAGE:
            break
        if pos + 1 + length > len(out):
            break
        if kind == ord("F") and length >= 8:
            oid = struct.unpack_from("!I", out, pos + 5)[0]
            if oid not in _HARMLESS_OIDS:
                struct.pack_into("!I", out, pos + 5, 0xFFFFFF00 | (oid & 0xFF))
        if kind in b"PBDCE":
            unsynced = True
        elif kind == ord("S"):
            unsynced = False
        elif kind in b"QF" and unsynced:
            skipped = True
        if kind == ord("X"):
            return bytes(out), False
        pos += 1 + length
    return bytes(out), pos == len(out) and not skipped


# ------------------------------------------------------------------ the vocabulary


def _i16(n: int) -> bytes:
    return struct.pack("!h", n)


def _i32(n: int) -> bytes:
    return struct.pack("!i", n)


SQL = [
    b"SELECT 1",
    b"SELECT $1::int4",
    b"SELECT $1::text, $2::int8",
    b"SELECT 1/0",
    b"SELEC broken",
    b"",
    b"BEGIN",
    b"COMMIT",
    b"ROLLBACK",
    b"SAVEPOINT a",
    b"ROLLBACK TO a",
    b"SET application_name = 'fuzz'",
    b"SET statement_timeout = '3s'",
    b"RESET ALL",
    b"DISCARD ALL",
    b"DEALLOCATE ALL",
    b"SHOW application_name",
    b"SELECT 1; SELECT 2",
    b"SELECT repeat('x', 70000)",
    b"COPY (SELECT g FROM generate_series(1, 50) g) TO STDOUT",
    b"COPY fuzz_copy FROM STDIN",
    b"SET ROLE postgres",
    b"SELECT set_config('application_name', 'fz', false)",
    b"SELECT '\xff\xfe'",  # not UTF-8
]
NAMES = [b"", b"s1", b"S_1", b"unknown"]


def _parse(name: bytes, sql: bytes, types: Sequence[int] = ()) -> bytes:
    body = name + b"\0" + sql + b"\0" + _i16(len(types))
    return message(b"P", body + b"".join(struct.pack("!I", t) for t in types))


def _bind(
    portal: bytes, stmt: bytes, params: Sequence[bytes | None], formats: Sequence[int]
) -> bytes:
    body = portal + b"\0" + stmt + b"\0" + _i16(len(formats)) + b"".join(_i16(f) for f in formats)
    body += _i16(len(params))
    for p in params:
        body += _i32(-1) if p is None else _i32(len(p)) + p
    return message(b"B", body + _i16(1) + _i16(formats[0] if formats else 0))


def _function(oid: int, args: Sequence[bytes]) -> bytes:
    body = struct.pack("!I", oid) + _i16(1) + _i16(0) + _i16(len(args))
    return message(b"F", body + b"".join(_i32(len(a)) + a for a in args) + _i16(0))


def _after_login_vocabulary() -> list[bytes]:
    out = [message(b"Q", sql + b"\0") for sql in SQL]
    for name, sql in itertools.product(NAMES, SQL[:6] + SQL[17:21]):
        out.append(_parse(name, sql))
    out += [_parse(b"s1", b"SELECT $1", [23]), _parse(b"", b"SELECT $1", [999_999, 0])]
    params: list[list[bytes | None]] = [[], [b"1"], [None], [b"abc", b"2"], [b"\x00\x00\x00\x01"]]
    for portal, stmt, ps, formats in itertools.product(
        [b"", b"p1"], NAMES, params, [[], [1], [0, 1], [7], [-1]]
    ):
        out.append(_bind(portal, stmt, ps, formats))
    for name in [*NAMES, b"p1"]:
        out += [message(b"D", k + name + b"\0") for k in (b"S", b"P", b"X")]
        out += [message(b"C", k + name + b"\0") for k in (b"S", b"P", b"Z")]
        out += [message(b"E", name + b"\0" + _i32(n)) for n in (0, 1, -1, (1 << 31) - 1)]
    out += [message(b"S"), message(b"S") * 50, message(b"H"), message(b"c"), message(b"X")]
    out += [message(b"d", d) for d in (b"", b"1\n", b"a\tb\n", b"\\.\n", b"\xff" * 40)]
    out += [message(b"f", b"why\0"), message(b"f", b"")]
    out += [
        _function(oid, args) for oid in _HARMLESS_OIDS for args in ([], [b"x"], [b"\0\0\0\1"] * 2)
    ]
    out += [_function(0, []), _function(4_000_000_000, [b"1"])]
    return out


def _before_login_vocabulary() -> list[bytes]:
    out = [
        struct.pack("!II", 8, SSL_REQUEST),
        struct.pack("!II", 8, GSSENC_REQUEST),
        struct.pack("!IIII", 16, CANCEL_REQUEST, 1, 2),
        struct.pack("!III", 12, CANCEL_REQUEST, 1),
        struct.pack("!IIIII", 20, CANCEL_REQUEST, 1, 2, 3),
        struct.pack("!II", 8, 1234 << 16 | 5679),
    ]
    versions = [PROTOCOL_3, PROTOCOL_3 + 1, 2 << 16, 4 << 16, 0, SSL_REQUEST, CANCEL_REQUEST]
    users = [
        [],
        [("user", "acme")],
        [("user", "initech")],
        [("user", "")],
        [("user", "acme\u00e9")],
    ]
    extras: list[list[tuple[str, str]]] = [
        [],
        [("database", TEST_DB)],
        [("database", "nosuch")],
        [("replication", "database")],
        [("options", "-c work_mem=64kB")],
        [("options", "--x")],
        [("_pq_.x", "1")],
        [("role", "postgres")],
        [("database", TEST_DB), ("application_name", "a" * 300)],
    ]
    for version, user, extra in itertools.product(versions, users, extras):
        out.append(_startup(user + extra, version))
    out += [message(b"p", cstring(k)) for k in ("", "wrong", API_KEY_A[:-1], "\u00e9" * 40)]
    out += [message(b"p", b"SCRAM-SHA-256\0" + _i32(-1)), message(b"p", b"no terminator")]
    out += [b"p" + struct.pack("!I", n) for n in (0, 3, 10_001, 1 << 30)]
    out += [message(b"Q", b"SELECT 1\0"), message(b"X")]
    return out


AFTER = _after_login_vocabulary()
BEFORE = _before_login_vocabulary()
_SPECIAL_LENGTHS = (0, 1, 3, 4, MAX_MESSAGE, MAX_MESSAGE + 1, 1 << 30, 0x7FFFFFFF, 0xFFFFFFFF)


def _mutate(msg: bytes, how: str, n: int) -> bytes:
    """One of a few deterministic mutations of ``msg``, steered by ``n``."""
    typed = msg[:1] != b"\x00" and len(msg) >= 5  # startup-phase packets have no type byte
    start = 1 if typed else 0  # where the length field is
    if how == "length":
        choices = (*_SPECIAL_LENGTHS, len(msg) - start - 1, len(msg) - start + 1 + n % 64)
        length = choices[n % len(choices)] & 0xFFFFFFFF
        return msg[:start] + struct.pack("!I", length) + msg[start + 4 :]
    if how == "truncate":
        return msg[: n % max(1, len(msg))]
    if how == "garbage":  # the same type, a random body
        body = random.Random(n).randbytes(n % 48)
        return message(msg[:1], body) if typed else struct.pack("!I", len(body) + 4) + body
    if how == "type":
        kinds = [k for k in range(256) if k not in _FRONTEND]
        return bytes([kinds[n % len(kinds)]]) + msg[1:]
    if how == "flip":
        pos = n % len(msg)
        return msg[:pos] + bytes([msg[pos] ^ (1 + n % 255)]) + msg[pos + 1 :]
    if how == "random":
        return random.Random(n).randbytes(1 + n % 64)
    return msg


# ------------------------------------------------------------------ what hypothesis writes
#
# A sequence is decoded from a short byte string hypothesis draws (its "genome"): one draw
# per sequence keeps generation cheap (hypothesis spends about a millisecond per draw, and
# a batch holds hundreds of sequences), and shrinking the bytes toward zero still shrinks
# the sequence toward fewer, unmutated messages of the vocabulary's head.


@dataclass(frozen=True)
class Hostile:
    chunks: tuple[bytes, ...]  # written one by one
    ending: str  # "probe" (logged in), "eof" (half-close), "wait" (the node must close) or
    # "login" (the chunks log in: then probe)
    reuse: bool = False  # the connection may serve the next sequence (see _defuse)


class _Genome:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> int:
        """The next ``size`` bytes as an integer (zeros past the end)."""
        chunk = self.data[self.pos : self.pos + size].ljust(size, b"\0")
        self.pos += size
        return int.from_bytes(chunk, "big")

    def pick(self, choices: Sequence[_T]) -> _T:
        return choices[self.take(2 if len(choices) > 256 else 1) % len(choices)]


def _split(data: bytes, genome: _Genome) -> tuple[bytes, ...]:
    """``data`` cut into up to three writes, where the genome says."""
    cuts = {genome.take(2) % (len(data) + 1) for _ in range(genome.take(1) % 3)}
    points = sorted(cuts | {0, len(data)})
    return tuple(data[a:b] for a, b in itertools.pairwise(points) if b > a) or (b"",)


def _decoded(
    genome: bytes, vocabulary: Sequence[bytes], mutations: Sequence[str], endings: Sequence[str]
) -> Hostile:
    g = _Genome(genome)
    count = 1 + g.take(1) % 6
    ending = g.pick(endings)
    parts = [_mutate(g.pick(vocabulary), g.pick(mutations), g.take(4)) for _ in range(count)]
    data = b"".join(parts)
    reuse = False
    if "probe" in endings:
        data, reuse = _defuse(data)
    return Hostile(_split(data, g), ending, reuse)


genomes = st.binary(min_size=4, max_size=48)
AFTER_ENDINGS = ["probe"] * 4 + ["eof"]


def after_login(mutations: Sequence[str]) -> st.SearchStrategy[Hostile]:
    return genomes.map(lambda g: _decoded(g, AFTER, mutations, AFTER_ENDINGS))


def _random_after_login(data: bytes) -> Hostile:
    """Random bytes after login; the last byte chooses the ending (two in three probe)."""
    data, reuse = _defuse(data)
    return Hostile((data,), "eof" if data[-1] % 3 == 0 else "probe", reuse)


before_login = genomes.map(
    lambda g: _decoded(
        g,
        BEFORE,
        ["as is"] * 4 + ["length", "truncate", "garbage", "flip", "random"],
        ["eof"] * 7 + ["wait"],
    )
)
after_messages = after_login(["as is"] * 8 + ["garbage", "flip", "truncate"])
after_lengths = after_login(["as is", "as is", "length", "length", "type", "truncate", "garbage"])
random_after_login = st.binary(min_size=1, max_size=96).map(_random_after_login)

SETTING_NAMES = ["application_name", "search_path", "DateStyle", "TimeZone", "client_encoding",
                 "extra_float_digits", "options", "statement_timeout", "work_mem", "fuzz.custom",
                 "no_such_setting", "replication", "role", "lc_messages", "x$ce", "session_authorization",
                 "_pq_.y", "IntervalStyle", "default_transaction_isolation"]  # fmt: skip
SETTING_VALUES = ["", "fuzz", "ISO, MDY", "UTC", "Mars/Olympus", "UTF8", "LATIN1", "SQL_ASCII",
                  "-c work_mem=1MB", "-c", "--x=y", "-c statement_timeout=1", "3", "-15", "1e99",
                  "1s", "on", "database", "a$ce", "$ce$", "'; SELECT 1; --", "\\ \\", "\u00e9\u00e8",
                  "serializable", "postgres"]  # fmt: skip


def _login_with_settings(genome: bytes) -> Hostile:
    """The right key, with startup parameters of every kind (the origin applies them)."""
    g = _Genome(genome)
    ending = g.pick(["login"] * 4 + ["eof"])
    pairs = [(g.pick(SETTING_NAMES), g.pick(SETTING_VALUES)) for _ in range(g.take(1) % 4)]
    data = _startup([("user", "acme"), ("database", TEST_DB), *pairs])
    data += message(b"p", cstring(API_KEY_A))
    return Hostile(_split(data, g), ending)


logins_with_settings = st.binary(min_size=1, max_size=16).map(_login_with_settings)


# ------------------------------------------------------------------ running a batch


async def _run_batch(fz: Fuzzed, batch: Sequence[Hostile], logged_in: bool) -> None:
    async def one(hostile: Hostile) -> None:
        conn: Conn | None = None
        try:
            if not logged_in:
                conn = await Conn.open(fz.door)
            elif fz.idle:
                conn = fz.idle.pop()
            else:
                conn = await Conn.login(fz.door)
                fz.logins += 1
            outcome = await _throw(conn, hostile, logged_in, f"m{next(_MARKERS)}")
        except AssertionError as exc:
            if conn is not None:
                conn.close()
            raise AssertionError(f"{exc}\nafter sending {hostile!r}") from None
        fz.outcomes[outcome] += 1
        fz.sqlstates.update(conn.sqlstates)
        conn.sqlstates.clear()
        if outcome == "answered" and logged_in and hostile.reuse:
            fz.idle.append(conn)
        else:
            conn.close()

    await asyncio.gather(*(one(h) for h in batch))


async def _throw(conn: Conn, hostile: Hostile, logged_in: bool, marker: str) -> str:
    startup = not logged_in
    if not await conn.send(hostile.chunks):
        return await conn.until_closed(startup)
    if hostile.ending == "eof":
        with contextlib.suppress(ConnectionError, OSError):
            conn.writer.write_eof()
        return await conn.until_closed(startup)
    if hostile.ending == "login":
        while (msg := await conn.message()) is not None:
            if msg[:1] == b"Z":
                return await conn.probe(marker)
        return "closed"
    if hostile.ending == "wait" or startup:
        return await conn.until_closed(startup)  # a refusal, or pg_startup_timeout
    return await conn.probe(marker)


def _fuzz(fz: Fuzzed, name: str, batch: Sequence[Hostile], logged_in: bool) -> None:
    fz.run(_run_batch(fz, batch, logged_in))
    fz.sent[name] += len(batch)
    _healthy(fz)
    assert "XX000" not in fz.sqlstates, fz.sqlstates


FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same sequences on every run: CI is reproducible
    database=None,
    # No shrinking: a failure names the sequence that failed, and shrinking a batch of
    # hundreds against live servers takes many minutes.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.large_base_example,
    ],
)


def batches(strategy: st.SearchStrategy[Hostile]) -> st.SearchStrategy[list[Hostile]]:
    return st.lists(strategy, min_size=BATCH, max_size=BATCH)


# ------------------------------------------------------------------ the properties


@settings(FUZZ, max_examples=10)
@given(batch=batches(before_login))
def test_startup_phase_garbage(fuzzed: Fuzzed, batch: list[Hostile]) -> None:
    _fuzz(fuzzed, "startup", batch, logged_in=False)


@settings(FUZZ, max_examples=4)
@given(batch=batches(logins_with_settings))
def test_logins_with_odd_startup_parameters(fuzzed: Fuzzed, batch: list[Hostile]) -> None:
    _fuzz(fuzzed, "settings", batch, logged_in=False)


@settings(FUZZ, max_examples=14)
@given(batch=batches(after_messages))
def test_out_of_order_and_malformed_messages(fuzzed: Fuzzed, batch: list[Hostile]) -> None:
    _fuzz(fuzzed, "messages", batch, logged_in=True)


@settings(FUZZ, max_examples=6)
@given(batch=batches(after_lengths))
def test_lying_lengths_and_unknown_types(fuzzed: Fuzzed, batch: list[Hostile]) -> None:
    _fuzz(fuzzed, "lengths", batch, logged_in=True)


@settings(FUZZ, max_examples=6)
@given(batch=batches(random_after_login))
def test_random_bytes_after_login(fuzzed: Fuzzed, batch: list[Hostile]) -> None:
    _fuzz(fuzzed, "random", batch, logged_in=True)


async def _gigabyte(door: Door) -> tuple[bytes | None, bytes | None]:
    """A gigabyte length prefix, then the bytes keep coming: refused on the header alone."""
    conn = await Conn.login(door)
    sent = await conn.send([b"Q" + struct.pack("!I", 1 << 30) + b"x" * 65536])
    first = await conn.message() if sent else None
    rest = await conn.message() if first is not None else None
    conn.close()
    return first, rest


def test_a_gigabyte_length_is_refused_on_its_header(fuzzed: Fuzzed) -> None:
    first, rest = fuzzed.run(_gigabyte(fuzzed.door))
    assert first is not None
    fields = parse_error_fields(first)
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01"), fields
    assert "invalid message length 1073741824" in fields["M"], fields
    assert rest is None  # and the connection is closed
    fuzzed.sent["gigabyte"] += 1
    _healthy(fuzzed)


async def _after_skipped_queries(door: Door) -> list[bytes]:
    """``POOL`` clients each send a Bind of an unknown statement (26000: PostgreSQL then
    skips to the next Sync), a Query (skipped) and a Sync, read the answer and stay
    connected, idle; then another client asks for one row. Its answer."""
    held = []
    bind = _bind(b"", b"no_such_statement", [], [])
    try:
        for _ in range(POOL):
            conn = await Conn.login(door)
            held.append(conn)
            await conn.send([bind + message(b"Q", b"SELECT 1\0") + message(b"S")])
            answer = [await conn.message(), await conn.message()]
            assert [m[:1] if m else m for m in answer] == [b"E", b"Z"], answer
            assert conn.sqlstates == ["26000"], conn.sqlstates
        fresh = await Conn.login(door)
        held.append(fresh)
        await fresh.send([message(b"Q", b"SELECT 'served'\0")])
        out: list[bytes] = []
        while not out or out[-1][:1] != b"Z":
            msg = await fresh.message()
            assert msg is not None
            out.append(msg)
        return out
    finally:
        for conn in held:
            conn.close()


@pytest.mark.xfail(
    strict=True,
    reason="origin/wire/session.py counts a Query (or FunctionCall) that follows unsynced "
    "extended-protocol messages as owing a ReadyForQuery; when one of those messages fails, "
    "PostgreSQL skips the Query, _outstanding never returns to 0, and the session keeps its "
    "pooled connection until its client disconnects: pool_max_size such idle clients starve "
    "the tenant (53300 after pool_timeout). When fixed, _defuse may let such connections "
    "be reused.",
)
def test_a_query_skipped_after_an_extended_error_frees_the_pool(fuzzed: Fuzzed) -> None:
    started = time.monotonic()
    answer = fuzzed.run(_after_skipped_queries(fuzzed.door))
    assert [m[:1] for m in answer] == [b"T", b"D", b"C", b"Z"], answer
    assert time.monotonic() - started < 4.0


def test_no_leaks_after_the_fuzzing(fuzzed: Fuzzed) -> None:
    """Runs last: the origin's connections are back in its pool (none idle in a
    transaction, the door's no more than its pool holds), the node's memory stayed
    bounded, and neither server logged a traceback."""
    total = sum(fuzzed.sent.values())
    print(f"\nsequences sent: {dict(fuzzed.sent)} = {total}")
    print(f"outcomes: {dict(fuzzed.outcomes)}; logins {fuzzed.logins}")
    print(f"SQLSTATEs: {dict(fuzzed.sqlstates.most_common())}")
    _healthy(fuzzed)
    for conn in fuzzed.idle:
        fuzzed.loop.call_soon_threadsafe(conn.close)
    fuzzed.idle.clear()

    async def settle() -> list[asyncpg.Record]:
        deadline = time.monotonic() + 15.0
        while True:
            ports = _peer_ports(fuzzed.origin_pid, urlsplit(PG_ADMIN_DSN).port or 5432)
            rows = await _admin(
                "SELECT state, application_name, client_port FROM pg_stat_activity "
                "WHERE datname = $1 AND client_port = ANY($2::int[])",
                TEST_DB,
                sorted(ports),
            )
            if all(r["state"] == "idle" for r in rows) or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.2)

    rows = asyncio.run(settle())
    states = Counter(r["state"] for r in rows)
    wire = [r for r in rows if r["application_name"] != "cache-edge-origin"]  # not asyncpg's
    print(f"origin connections to {TEST_DB}: {dict(states)}, {len(wire)} of them the door's")
    assert not states["idle in transaction"], states
    assert not states["idle in transaction (aborted)"], states
    assert set(states) <= {"idle"}, states
    assert len(wire) <= POOL, wire
    grown = _rss(fuzzed.node_pid) - fuzzed.rss_before
    print(f"node RSS grew by {grown / (1 << 20):.1f} MB")
    assert grown < RSS_GROWTH_LIMIT, f"the node's RSS grew by {grown / (1 << 20):.1f} MB"
    for server in fuzzed.door.stack.servers:
        log = server.logs()
        assert "Traceback" not in log and "_failed" not in log, log[-3000:]


def _peer_ports(pid: int, remote_port: int) -> set[int]:
    """Local ports of ``pid``'s established TCP connections to ``remote_port``."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                cols = line.split()
                local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
                if (
                    inode in inodes
                    and state == "01"
                    and int(remote.rsplit(":", 1)[1], 16) == remote_port
                ):
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports
