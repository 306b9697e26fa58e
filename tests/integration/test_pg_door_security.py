"""The PostgreSQL door under attack: TLS, login, startup-packet abuse, cancels, slow clients.

Three stacks (module scope): ``door``, plain, every tenant on cleartext passwords (allowed
from loopback); ``tls_door``, whose node has a certificate (the door then speaks TLS) and
where acme has a SCRAM verifier while globex stays on cleartext; and ``slow_door`` with
``node.pg_startup_timeout = 1`` for the slow-client tests (a separate stack: the same
timeout bounds a failed login's delay of one second, so the other tests need the default).
The servers log at debug level, so "the key appears in no log" means something.

What cannot be produced from a loopback socket, a cleartext login from a non-loopback
address, is tested one level down: :func:`cache_edge.node.pgdoor.login.authenticate`
through a real socket pair, told ``loopback=False``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from scramp import ScramClient  # type: ignore[import-untyped, unused-ignore]

from cache_edge.devtools.harness import free_port
from cache_edge.node.auth import ApiKeys
from cache_edge.node.pgdoor.login import FAIL_DELAY, authenticate
from cache_edge.node.pgdoor.startup import ClientStream, Refused, Startup
from cache_edge.pgwire.messages import (
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    PROTOCOL_3,
    SSL_REQUEST,
    cstring,
    message,
    parse_error_fields,
)
from cache_edge.pgwire.scram import make_verifier
from cache_edge.server.config import parse_settings
from tests.conftest import API_KEY_A, API_KEY_B, TEST_DB, TEST_DB_B, RedisLease, make_settings_doc
from tests.integration.door_helpers import Door, door_doc, open_door
from tests.integration.security_helpers import Certs, HttpsServer, client_ssl, make_certs
from tests.integration.stack import Stack

pytestmark = pytest.mark.security

READ_TIMEOUT = 10.0


# ------------------------------------------------------------------ stacks


def _debug_doc(pg: tuple[str, str], redis_url: str, **sections: Any) -> dict[str, Any]:
    doc = door_doc(pg, redis_url, **sections)
    doc["log_level"] = "debug"
    return doc


@pytest.fixture(scope="module")
def door(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], redis_dbs: RedisLease
) -> Iterator[Door]:
    doc = _debug_doc(pg_databases, redis_dbs("plain"))
    yield from open_door(tmp_path_factory.mktemp("door"), doc)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_door(
    tmp_path_factory: pytest.TempPathFactory,
    pg_databases: tuple[str, str],
    redis_dbs: RedisLease,
    certs: Certs,
) -> Iterator[Door]:
    """A node with a certificate (its HTTP listener and its door speak TLS); acme logs in
    with SCRAM-SHA-256, globex with a cleartext key."""
    pair = {"tls_cert": str(certs.cert), "tls_key": str(certs.key)}
    doc = _debug_doc(pg_databases, redis_dbs("tls"), node=pair)
    tenants = doc["tenants"]
    tenants[0]["scram_verifiers"] = [make_verifier(API_KEY_A)]
    stack = Stack(tmp_path_factory.mktemp("tls-door"), doc)
    port = free_port()
    try:
        origin = stack.start_origin()
        node = HttpsServer(
            "node",
            free_port(),
            stack.config,
            ["--region", "local", "--origin-url", origin.url, "--pg-listen", f"127.0.0.1:{port}"],
        )
        node.ca = certs.ca
        stack.add(node)
        yield Door(stack, "127.0.0.1", port)
    except BaseException:
        print(stack.dump_logs())
        raise
    finally:
        stack.stop_all()


@pytest.fixture(scope="module")
def slow_door(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], redis_dbs: RedisLease
) -> Iterator[Door]:
    doc = _debug_doc(pg_databases, redis_dbs("slow"), node={"pg_startup_timeout": 1.0})
    yield from open_door(tmp_path_factory.mktemp("slow-door"), doc)


# ------------------------------------------------------------------ a raw client


def _packet(code: int, body: bytes = b"") -> bytes:
    """A startup-phase packet (no type byte): SSLRequest, GSSENCRequest, CancelRequest, ..."""
    return struct.pack("!II", 8 + len(body), code) + body


def _startup(user: str, database: str, version: int = PROTOCOL_3, **params: str) -> bytes:
    body = struct.pack("!I", version)
    for name, value in {"user": user, "database": database, **params}.items():
        body += cstring(name) + cstring(value)
    body += b"\x00"
    return struct.pack("!I", len(body) + 4) + body


class Raw:
    """A protocol conversation byte by byte; every read has a timeout (a hang fails)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()

    @classmethod
    async def open(cls, door: Door) -> Raw:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(door.host, door.port), READ_TIMEOUT
        )
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _fill(self, timeout: float) -> bool:
        chunk = await asyncio.wait_for(self.reader.read(1 << 16), timeout)
        if not chunk:
            return False
        self.buf += chunk
        return True

    async def byte(self, timeout: float = READ_TIMEOUT) -> bytes:
        """One byte (the answer to SSLRequest/GSSENCRequest); b"" if the server closed."""
        if not self.buf and not await self._fill(timeout):
            return b""
        out = bytes(self.buf[:1])
        del self.buf[:1]
        return out

    async def message(self, timeout: float = READ_TIMEOUT) -> bytes | None:
        """One whole message; None if the server closed."""
        while True:
            if len(self.buf) >= 5:
                size = 1 + struct.unpack_from("!I", self.buf, 1)[0]
                if len(self.buf) >= size:
                    out = bytes(self.buf[:size])
                    del self.buf[:size]
                    return out
            if not await self._fill(timeout):
                return None

    async def until(self, kinds: bytes, timeout: float = READ_TIMEOUT) -> list[bytes]:
        """Messages up to and including the first of one of ``kinds`` (or an ErrorResponse)."""
        out: list[bytes] = []
        while True:
            msg = await self.message(timeout)
            assert msg is not None, f"closed; received {out!r}"
            out.append(msg)
            if msg[:1] in kinds or msg[:1] == b"E":
                return out

    async def closed(self, timeout: float = READ_TIMEOUT) -> bytes:
        """Read until the server closes; everything it sent meanwhile. A hang fails."""
        async with asyncio.timeout(timeout):
            while await self._fill(timeout):
                pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    async def start_tls(self, ca: Path) -> None:
        assert not self.buf
        await asyncio.wait_for(
            self.writer.start_tls(client_ssl(ca), server_hostname="127.0.0.1"), READ_TIMEOUT
        )

    async def login(self, user: str, key: str, database: str, **params: str) -> list[bytes]:
        """Startup and a cleartext password; the messages through ReadyForQuery."""
        await self.send(_startup(user, database, PROTOCOL_3, **params))
        return await self.password(key)

    async def password(self, key: str) -> list[bytes]:
        msg = await self.message()
        assert msg is not None and msg[:1] == b"R", msg
        assert struct.unpack_from("!I", msg, 5)[0] == 3, msg  # cleartext
        await self.send(message(b"p", cstring(key)))
        return await self.until(b"Z")

    async def query(self, sql: str) -> list[bytes]:
        await self.send(message(b"Q", cstring(sql)))
        return await self.until(b"Z")

    def close(self) -> None:
        self.writer.close()


def _fields(msg: bytes | None) -> Mapping[str, str]:
    assert msg is not None and msg[:1] == b"E", msg
    return parse_error_fields(msg)


def _rows(msgs: list[bytes]) -> list[bytes]:
    """The first column of each DataRow."""
    out = []
    for m in msgs:
        if m[:1] == b"D":
            size = struct.unpack_from("!i", m, 7)[0]
            out.append(m[11 : 11 + size])
    return out


def _psql(
    url: str, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", url, "-X", "-v", "ON_ERROR_STOP=1", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def _assert_not_logged(door: Door, *secrets_: str) -> None:
    for server in door.stack.servers:
        text = server.logs()
        assert text, f"{server.kind} has an empty log"
        for secret in secrets_:
            assert secret not in text, f"{secret!r} in the {server.kind}'s log"


# ------------------------------------------------------------------ TLS


def test_tls_ends_at_the_node(tls_door: Door, certs: Certs) -> None:
    """With a certificate, libpq's sslmode=verify-full checks the node's certificate and
    the session runs over TLS; cleartext keys are then accepted over it."""
    url = tls_door.url("globex", sslmode="verify-full", sslrootcert=str(certs.ca))
    out = _psql(url, "-c", r"\conninfo", "-Atc", "SELECT current_database()")
    assert out.returncode == 0, out.stderr
    assert "SSL connection (protocol: TLSv1." in out.stdout, out.stdout
    assert out.stdout.strip().endswith(TEST_DB_B)
    with psycopg.connect(tls_door.url("globex", sslmode="require"), connect_timeout=10) as conn:
        assert conn.info.pgconn.ssl_in_use
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
    # A client that trusts another CA refuses the node's certificate.
    other = make_certs(Path(certs.ca).parent / "other", name="other")
    url = tls_door.url("globex", sslmode="verify-full", sslrootcert=str(other.ca))
    out = _psql(url, "-Atc", "SELECT 1")
    assert out.returncode != 0 and "certificate verify failed" in out.stderr, out.stderr


def test_cleartext_without_tls_is_accepted_from_loopback(tls_door: Door) -> None:
    """The loopback rule: no TLS, yet a cleartext key is accepted, because the peer is
    127.0.0.1 (the non-loopback refusal is the next test)."""
    with psycopg.connect(tls_door.url("globex", sslmode="disable"), connect_timeout=10) as conn:
        assert not conn.info.pgconn.ssl_in_use
        assert conn.execute("SELECT current_database()").fetchone() == (TEST_DB_B,)


def _unit_settings() -> Any:
    """Settings for login-level tests (no servers): acme with a SCRAM verifier, globex on
    cleartext keys."""
    dsn = "postgresql://u@127.0.0.1:5432/"
    doc = make_settings_doc(dsn + TEST_DB, dsn + TEST_DB_B)
    tenants: Any = doc["tenants"]
    tenants[0]["scram_verifiers"] = [make_verifier(API_KEY_A)]
    return parse_settings(doc)


async def _login_over_pair(
    settings: Any, user: str, *, loopback: bool, tls: bool = False
) -> tuple[asyncio.Task[Any], Raw]:
    """``authenticate`` on the server end of a real socket pair, told where the peer is;
    the task and a raw client on the other end (the startup packet is taken as read)."""
    server_sock, client_sock = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=server_sock)
    creader, cwriter = await asyncio.open_connection(sock=client_sock)
    stream = ClientStream(reader, writer)
    stream.tls = tls
    database = TEST_DB_B if user == "globex" else TEST_DB
    task = asyncio.create_task(
        authenticate(
            stream,
            Startup(user, database),
            settings.tenant(user),
            ApiKeys(settings.tenants),
            loopback,
            b"the node's decoy secret",
        )
    )
    task.add_done_callback(lambda _: writer.close())
    return task, Raw(creader, cwriter)


async def _outcome(task: asyncio.Task[Any]) -> Any:
    try:
        return await asyncio.wait_for(task, FAIL_DELAY + READ_TIMEOUT)
    except Refused as refused:
        return refused


async def test_cleartext_is_refused_off_loopback_without_tls() -> None:
    """A cleartext tenant from a non-loopback address without TLS is refused (28000) before
    any password is asked for; over TLS, or from loopback, the cleartext request goes out
    and the key logs in. Off loopback an unknown tenant gets a SCRAM decoy instead."""
    settings = _unit_settings()
    task, raw = await _login_over_pair(settings, "globex", loopback=False)
    refused = await _outcome(task)
    assert isinstance(refused, Refused), refused
    assert await raw.closed() == b""  # nothing was asked: the door writes the refusal
    fields = parse_error_fields(refused.response)
    assert (fields["S"], fields["C"]) == ("FATAL", "28000"), fields
    assert "needs TLS or a loopback connection" in fields["M"]
    for loopback, tls in ((True, False), (False, True)):
        task, raw = await _login_over_pair(settings, "globex", loopback=loopback, tls=tls)
        assert await raw.message() == message(b"R", struct.pack("!I", 3))
        await raw.send(message(b"p", cstring(API_KEY_B)))
        assert await _outcome(task) is settings.tenant("globex")
        raw.close()
    task, raw = await _login_over_pair(settings, "initech", loopback=False)
    sasl = await raw.message()
    assert sasl == message(b"R", struct.pack("!I", 10) + cstring("SCRAM-SHA-256") + b"\x00")
    task.cancel()
    raw.close()


# ------------------------------------------------------------------ CVE-2021-23214


@pytest.mark.parametrize("which", ["plain", "tls"])
async def test_plaintext_pipelined_after_sslrequest_is_refused(
    which: str, door: Door, tls_door: Door
) -> None:
    """SSLRequest and a StartupMessage in one write: a man in the middle could have written
    the second, so it must not become part of the TLS session (08P01 or a close, never 'S')."""
    target = door if which == "plain" else tls_door
    raw = await Raw.open(target)
    await raw.send(_packet(SSL_REQUEST) + _startup("globex", TEST_DB_B))
    first = await raw.byte()
    assert first != b"S"
    if first:
        assert first == b"E", first
        raw.buf[:0] = first
        fields = _fields(await raw.message())
        assert (fields["S"], fields["C"]) == ("FATAL", "08P01"), fields
    assert await raw.closed() == b""


async def test_plaintext_right_behind_sslrequest_never_reaches_the_session(
    tls_door: Door, certs: Certs
) -> None:
    """The racy form: the StartupMessage in its own segment right after the SSLRequest,
    before the 'S' could have been read. Either refused, or the TLS handshake fails on the
    plaintext; a handshake that succeeds must not be followed by an answer to a startup
    packet the client never sent over TLS."""
    for delay in (None, 0.0, 0.001, 0.005):
        for _ in range(5):
            raw = await Raw.open(tls_door)
            raw.writer.write(_packet(SSL_REQUEST))
            if delay is not None:
                await asyncio.sleep(delay)
            raw.writer.write(_startup("globex", TEST_DB_B))
            await raw.writer.drain()
            first = await raw.byte()
            if first != b"S":
                assert first in (b"E", b""), first
                raw.close()
                continue
            try:
                await raw.start_tls(certs.ca)
            except (ssl.SSLError, ConnectionError, TimeoutError):
                raw.close()
                continue
            try:
                answer = await raw.closed(timeout=2.0)
            except TimeoutError:
                answer = b""  # waiting for a startup packet over TLS: fine
            except (ssl.SSLError, ConnectionError):
                answer = b""
            assert answer == b"", f"the node answered plaintext sent before TLS: {answer[:40]!r}"
            raw.close()


# ------------------------------------------------------------------ GSSAPI encryption


async def test_gssencrequest_gets_n_then_the_login_goes_on(door: Door) -> None:
    raw = await Raw.open(door)
    await raw.send(_packet(GSSENC_REQUEST))
    assert await raw.byte() == b"N"
    answer = await raw.login("acme", API_KEY_A, TEST_DB)
    assert answer[0] == message(b"R", struct.pack("!I", 0)) and answer[-1][:1] == b"Z", answer
    assert _rows(await raw.query("SELECT 'after gss'")) == [b"after gss"]
    raw.close()


async def test_gssencrequest_then_sslrequest_then_login(tls_door: Door, certs: Certs) -> None:
    """libpq's order with gssencmode=prefer and sslmode=prefer: GSSENC refused, then TLS."""
    raw = await Raw.open(tls_door)
    await raw.send(_packet(GSSENC_REQUEST))
    assert await raw.byte() == b"N"
    await raw.send(_packet(SSL_REQUEST))
    assert await raw.byte() == b"S"
    await raw.start_tls(certs.ca)
    await raw.login("globex", API_KEY_B, TEST_DB_B)
    assert _rows(await raw.query("SELECT current_database()")) == [TEST_DB_B.encode()]
    raw.close()


def test_psql_with_gssencmode_prefer(door: Door) -> None:
    """libpq without Kerberos credentials may skip the GSSENCRequest; either way it works."""
    out = _psql(door.url(gssencmode="prefer"), "-Atc", "SELECT 'gss-prefer'")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "gss-prefer"


# ------------------------------------------------------------------ SCRAM-SHA-256


def test_scram_logins_with_psql_psycopg_and_asyncpg(tls_door: Door) -> None:
    for sslmode in ("disable", "require"):
        out = _psql(tls_door.url("acme", sslmode=sslmode), "-Atc", "SELECT current_database()")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == TEST_DB
    with psycopg.connect(tls_door.url("acme", sslmode="disable"), connect_timeout=10) as conn:
        assert conn.execute("SELECT 'scram psycopg'").fetchone() == ("scram psycopg",)

    async def with_asyncpg() -> None:
        conn = await asyncpg.connect(tls_door.url("acme"), ssl=False, timeout=10)
        try:
            assert await conn.fetchval("SELECT 'scram asyncpg'") == "scram asyncpg"
        finally:
            await conn.close()

    asyncio.run(with_asyncpg())
    _assert_not_logged(tls_door, API_KEY_A, API_KEY_B)


async def _sasl(raw: Raw, user: str, key: str) -> tuple[bytes, dict[str, str], float, Any]:
    """A SCRAM exchange with ``key`` after the startup packet: the SASL request, the
    server-first attributes, the seconds from the client-final to the answer, the answer."""
    sasl = await raw.message()
    assert sasl is not None and sasl[:1] == b"R", sasl
    assert struct.unpack_from("!I", sasl, 5)[0] == 10, sasl
    client = ScramClient(["SCRAM-SHA-256"], user, key)
    first = client.get_client_first().encode()
    await raw.send(message(b"p", cstring("SCRAM-SHA-256") + struct.pack("!I", len(first)) + first))
    server_first = await raw.message()
    assert server_first is not None and server_first[:1] == b"R", server_first
    assert struct.unpack_from("!I", server_first, 5)[0] == 11, server_first
    attrs = dict(part.split("=", 1) for part in server_first[9:].decode().split(","))
    client.set_server_first(server_first[9:].decode())
    started = time.monotonic()
    await raw.send(message(b"p", client.get_client_final().encode()))
    answer = await raw.message(timeout=FAIL_DELAY + READ_TIMEOUT)
    return sasl, attrs, time.monotonic() - started, answer


async def test_scram_wrong_key_and_unknown_tenant_look_alike() -> None:
    """Where the door asks an unknown tenant for SCRAM (off loopback, no TLS) it cannot be
    told from a SCRAM tenant with a wrong key: the same mechanism list, salt size and
    iteration count, the same 28P01 (naming the user) after the same delay; and an unknown
    tenant's salt is stable across attempts, as a real one's is. (On loopback or over TLS an
    unknown tenant is asked for a cleartext key instead, and looks like a cleartext tenant:
    test_wrong_key_is_delayed_answered_alike_and_never_logged.)"""
    settings = _unit_settings()
    seen: dict[str, Any] = {}
    for user in ("acme", "initech", "initech", "acme"):
        task, raw = await _login_over_pair(settings, user, loopback=False)
        wrong = "not-the-key-" + secrets.token_hex(4)
        sasl, attrs, elapsed, answer = await _sasl(raw, user, wrong)
        assert answer is None  # closed: the door, not authenticate, writes the refusal
        assert elapsed >= FAIL_DELAY * 0.9, (user, elapsed)
        refused = await _outcome(task)
        assert isinstance(refused, Refused), refused
        fields = parse_error_fields(refused.response)
        assert (fields["S"], fields["C"]) == ("FATAL", "28P01"), fields
        assert fields["M"] == f'password authentication failed for user "{user}"'
        shape = (sasl, len(attrs["s"]), attrs["i"], sorted(attrs), sorted(fields))
        seen.setdefault("shape", shape)
        assert shape == seen["shape"], (user, shape, seen["shape"])
        seen.setdefault(user, attrs["s"])
        assert attrs["s"] == seen[user], "the salt changes between attempts"
    assert seen["acme"] != seen["initech"]
    # The right key does log in through the same harness.
    task, raw = await _login_over_pair(settings, "acme", loopback=False)
    _, _, _, answer = await _sasl(raw, "acme", API_KEY_A)
    assert answer is not None and struct.unpack_from("!I", answer, 5)[0] == 12  # SASLFinal
    assert await _outcome(task) is settings.tenant("acme")


async def test_scram_failure_over_the_network_is_delayed(tls_door: Door) -> None:
    raw = await Raw.open(tls_door)
    await raw.send(_startup("acme", TEST_DB))
    _, attrs, elapsed, answer = await _sasl(raw, "acme", "wrong-" + secrets.token_hex(4))
    assert elapsed >= FAIL_DELAY * 0.9, elapsed
    fields = _fields(answer)
    assert (fields["S"], fields["C"]) == ("FATAL", "28P01"), fields
    assert fields["M"] == 'password authentication failed for user "acme"'
    assert attrs["i"] == "4096"
    assert await raw.closed() == b""


def test_scram_wrong_key_with_real_clients(tls_door: Door) -> None:
    wrong = "wrong-scram-key-" + secrets.token_hex(8)

    async def with_asyncpg() -> None:
        with pytest.raises(asyncpg.InvalidPasswordError) as info:
            await asyncpg.connect(tls_door.url("acme", key=wrong), ssl=False, timeout=10)
        assert info.value.sqlstate == "28P01"
        assert str(info.value) == 'password authentication failed for user "acme"'

    asyncio.run(with_asyncpg())
    out = _psql(tls_door.url("acme", key=wrong, sslmode="disable"), "-Atc", "SELECT 1")
    assert out.returncode != 0
    assert 'password authentication failed for user "acme"' in out.stderr, out.stderr
    _assert_not_logged(tls_door, wrong)


# ------------------------------------------------------------------ cleartext wrong key


async def test_wrong_key_is_delayed_answered_alike_and_never_logged(door: Door) -> None:
    wrong = "wrong-cleartext-key-" + secrets.token_hex(8)
    for user, database in (("acme", TEST_DB), ("initech", TEST_DB)):
        raw = await Raw.open(door)
        await raw.send(_startup(user, database))
        request = await raw.message()
        assert request == message(b"R", struct.pack("!I", 3)), request  # the same for both
        started = time.monotonic()
        await raw.send(message(b"p", cstring(wrong)))
        fields = _fields(await raw.message(timeout=FAIL_DELAY + READ_TIMEOUT))
        elapsed = time.monotonic() - started
        assert elapsed >= 0.9, elapsed
        assert (fields["S"], fields["C"]) == ("FATAL", "28P01"), fields
        assert fields["M"] == f'password authentication failed for user "{user}"'
        assert await raw.closed() == b""
    # Another tenant's (valid) key is as wrong as any.
    raw = await Raw.open(door)
    await raw.send(_startup("acme", TEST_DB))
    await raw.message()
    await raw.send(message(b"p", cstring(API_KEY_B)))
    assert _fields(await raw.message(timeout=FAIL_DELAY + READ_TIMEOUT))["C"] == "28P01"
    out = _psql(door.url(key=wrong), "-Atc", "SELECT 1")
    assert out.returncode != 0
    assert 'password authentication failed for user "acme"' in out.stderr, out.stderr
    _assert_not_logged(door, wrong, API_KEY_A, API_KEY_B)


# ------------------------------------------------------------------ startup refusals


async def _refused(door: Door, packet: bytes) -> Mapping[str, str]:
    raw = await Raw.open(door)
    await raw.send(packet)
    fields = _fields(await raw.message())
    assert await raw.closed() == b""
    return fields


async def test_replication_connections_are_refused(door: Door) -> None:
    for mode in ("database", "true", "on"):
        fields = await _refused(door, _startup("acme", TEST_DB, replication=mode))
        assert (fields["S"], fields["C"]) == ("FATAL", "0A000"), fields
    out = _psql(door.url(replication="database"), "-Atc", "SELECT 1")
    assert out.returncode != 0 and "replication" in out.stderr, out.stderr


async def test_protocol_2_is_refused(door: Door) -> None:
    fields = await _refused(door, _startup("acme", TEST_DB, version=2 << 16))
    assert (fields["S"], fields["C"]) == ("FATAL", "0A000"), fields
    assert "unsupported frontend protocol 2.0" in fields["M"]
    fields = await _refused(door, _startup("acme", TEST_DB, version=4 << 16))
    assert fields["C"] == "0A000", fields


async def test_protocol_3_1_with_unknown_options_is_negotiated_down(door: Door) -> None:
    raw = await Raw.open(door)
    version = (3 << 16) | 1
    await raw.send(_startup("acme", TEST_DB, version=version, **{"_pq_.foo": "bar"}))
    negotiate = await raw.message()
    assert negotiate is not None and negotiate[:1] == b"v", negotiate
    newest, count = struct.unpack_from("!II", negotiate, 5)
    assert (newest, count) == (PROTOCOL_3, 1)
    assert negotiate[13:] == cstring("_pq_.foo")
    answer = await raw.password(API_KEY_A)
    assert answer[-1] == message(b"Z", b"I")
    assert _rows(await raw.query("SELECT 'negotiated'")) == [b"negotiated"]
    raw.close()


async def test_malformed_startup_packets_are_refused(door: Door) -> None:
    for packet in (
        struct.pack("!I", 4),  # shorter than a header
        struct.pack("!II", 1 << 30, PROTOCOL_3),  # a gigabyte startup packet
        _startup("acme", TEST_DB)[:-1] + b"x",  # not terminated
        _startup("", TEST_DB),  # no user
        _packet(CANCEL_REQUEST, b"\x00" * 4),  # a cancel of the wrong length
    ):
        raw = await Raw.open(door)
        await raw.send(packet)
        rest = await raw.closed()
        if rest:
            fields = parse_error_fields(rest)
            assert fields["S"] == "FATAL" and fields["C"] in ("08P01", "28000"), fields


def test_startup_values_keep_their_quoting(door: Door) -> None:
    """The origin applies a session's settings as dollar-quoted SQL: no value may end its
    quote early (one ending in the tag's "$ce" did: a syntax error, FATAL at login)."""
    for value in ("pay$ce", "$ce$", "$cex$ $ce", "it's'; SELECT 1; --", "back\\slash"):
        url = door.url(application_name=value)
        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute("SELECT current_setting('application_name')").fetchone()
            assert row == (value,)


# ------------------------------------------------------------------ cancels


async def test_random_cancel_requests_harm_nobody(door: Door) -> None:
    async with await psycopg.AsyncConnection.connect(door.url(), connect_timeout=10) as conn:
        running = asyncio.create_task(conn.execute("SELECT 'survived' FROM pg_sleep(0.5)"))
        await asyncio.sleep(0.1)
        for _ in range(20):
            raw = await Raw.open(door)
            pid, secret = secrets.randbits(31), secrets.randbits(32)
            await raw.send(_packet(CANCEL_REQUEST, struct.pack("!II", pid, secret)))
            assert await raw.closed() == b""  # no answer, then a close
        cursor = await asyncio.wait_for(running, READ_TIMEOUT)
        assert await cursor.fetchone() == ("survived",)
        cursor = await conn.execute("SELECT 'still here'")
        assert await cursor.fetchone() == ("still here",)


async def test_the_real_cancel_key_does_cancel(door: Door) -> None:
    """The control for the test above: random keys harm nobody because keys are checked,
    not because cancels do nothing."""
    async with await psycopg.AsyncConnection.connect(door.url(), connect_timeout=10) as conn:
        running = asyncio.create_task(conn.execute("SELECT pg_sleep(20)"))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await conn.cancel_safe(timeout=5)
        with pytest.raises(psycopg.errors.QueryCanceled):
            await asyncio.wait_for(running, READ_TIMEOUT)
        assert time.monotonic() - started < 10


# ------------------------------------------------------------------ slow clients


async def _dropped_within(raw: Raw, low: float, high: float) -> bytes:
    started = time.monotonic()
    rest = await raw.closed(timeout=high)
    elapsed = time.monotonic() - started
    assert elapsed >= low, f"closed after {elapsed:.2f}s, before the timeout"
    return rest


async def test_silent_and_half_startup_clients_are_dropped(slow_door: Door) -> None:
    async def silent() -> bytes:
        raw = await Raw.open(slow_door)
        return await _dropped_within(raw, 0.8, 5.0)

    async def half_startup() -> bytes:
        raw = await Raw.open(slow_door)
        await raw.send(_startup("acme", TEST_DB)[:20])
        return await _dropped_within(raw, 0.8, 5.0)

    async def ssl_then_silent() -> bytes:
        raw = await Raw.open(slow_door)
        await raw.send(_packet(SSL_REQUEST))
        assert await raw.byte() == b"N"
        return await _dropped_within(raw, 0.8, 5.0)

    async def no_password() -> bytes:
        raw = await Raw.open(slow_door)
        await raw.send(_startup("acme", TEST_DB))
        assert (await raw.message() or b"")[:1] == b"R"
        return await _dropped_within(raw, 0.8, 5.0)

    async def half_password() -> bytes:
        raw = await Raw.open(slow_door)
        await raw.send(_startup("acme", TEST_DB))
        assert (await raw.message() or b"")[:1] == b"R"
        await raw.send(message(b"p", cstring(API_KEY_A))[:8])
        return await _dropped_within(raw, 0.8, 5.0)

    results = await asyncio.gather(
        *(f() for f in (silent, half_startup, ssl_then_silent, no_password, half_password)
          for _ in range(4))
    )  # fmt: skip
    assert all(r == b"" for r in results), results


async def test_a_client_stalled_mid_message_is_dropped(slow_door: Door) -> None:
    stalled = await Raw.open(slow_door)
    await stalled.login("acme", API_KEY_A, TEST_DB)
    idle = await Raw.open(slow_door)
    await idle.login("acme", API_KEY_A, TEST_DB)
    await stalled.send(message(b"Q", cstring("SELECT 'never finished'"))[:12])
    await _dropped_within(stalled, 0.8, 5.0)
    # Idle between messages is not stalling: that client is still served.
    await asyncio.sleep(0.5)
    assert _rows(await idle.query("SELECT 'idle is fine'")) == [b"idle is fine"]
    idle.close()
