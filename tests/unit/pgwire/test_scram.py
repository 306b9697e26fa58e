"""SCRAM-SHA-256 for the PostgreSQL door: verifiers, the exchange, decoys, real clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import shutil
import struct
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scramp import ScramClient

from cache_edge.cli.main import main as cli_main
from cache_edge.pgwire import messages
from cache_edge.pgwire.scram import (
    MECHANISMS,
    ScramFailed,
    ScramServerExchange,
    Verifier,
    make_verifier,
    parse_verifier,
)
from cache_edge.server.config import _SCRAM_VERIFIER

pytestmark = pytest.mark.security

PG_DSN = os.environ.get("CACHE_EDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SALT = bytes(range(16))


def _login(exchange: ScramServerExchange, password: str, **client: object) -> None:
    """A whole exchange with scramp's client; ScramFailed if the server refuses."""
    c = ScramClient(client.pop("mechanisms", list(MECHANISMS)), "someone", password, **client)
    server_first = exchange.start(c.get_client_first().encode())
    c.set_server_first(server_first.decode())
    server_final = exchange.finish(c.get_client_final().encode())
    c.set_server_final(server_final.decode())  # the client checks the server's signature


# ------------------------------------------------------------------ an independent client

b64 = base64.b64encode


def _keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    """RFC 5802's ClientKey, StoredKey, ServerKey, written out with hashlib."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return client_key, hashlib.sha256(client_key).digest(), server_key


def _raw_login(exchange: ScramServerExchange, password: str, gs2: str, user: str) -> None:
    """What libpq and asyncpg send, which scramp's client cannot: an empty or unescaped
    SCRAM user name."""
    bare = f"n={user},r=clientnonce0123456789"
    server_first = exchange.start(f"{gs2}{bare}".encode()).decode()
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    client_key, stored_key, server_key = _keys(
        password, base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    without_proof = f"c={b64(gs2.encode()).decode()},r={attrs['r']}"
    auth = f"{bare},{server_first},{without_proof}".encode()
    proof = bytes(
        a ^ b for a, b in zip(client_key, hmac.digest(stored_key, auth, "sha256"), strict=True)
    )
    final = exchange.finish(f"{without_proof},p={b64(proof).decode()}".encode())
    assert final == b"v=" + b64(hmac.digest(server_key, auth, "sha256"))


# ------------------------------------------------------------------ verifiers


def test_make_verifier_is_pg_authid_format_with_rfc_5802_keys() -> None:
    text = make_verifier("pencil", 4096, SALT)
    _, stored_key, server_key = _keys("pencil", SALT, 4096)
    assert text == (
        f"SCRAM-SHA-256$4096:{b64(SALT).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )
    assert _SCRAM_VERIFIER.match(text)  # the config accepts it
    assert parse_verifier(text) == Verifier(4096, SALT, stored_key, server_key)
    assert str(parse_verifier(text)) == text


def test_make_verifier_salts_each_verifier_like_postgres() -> None:
    a, b = parse_verifier(make_verifier("pw")), parse_verifier(make_verifier("pw"))
    assert a.salt != b.salt and len(a.salt) == 16 and a.iterations == 4096
    assert parse_verifier(make_verifier("pw", iterations=10000)).iterations == 10000


@pytest.mark.parametrize(
    "kwargs", [{"iterations": 1000}, {"iterations": 10**8}, {"salt": b"short"}]
)
def test_make_verifier_refuses_what_scramp_would_refuse_at_login(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="SCRAM verifier"):
        make_verifier("pw", **kwargs)  # type: ignore[arg-type]


def test_a_verifier_repr_hides_its_keys() -> None:
    v = parse_verifier(make_verifier("pw"))
    assert b64(v.stored_key).decode() not in repr(v)
    assert repr(v.stored_key) not in repr(v) and repr(v.server_key) not in repr(v)


GOOD = make_verifier("pw", salt=SALT)
_, _GOOD_KEYS = GOOD.split("$", 1)[1].split("$")


@pytest.mark.parametrize(
    "text,says",
    [
        ("", "does not start with"),
        ("md5abcdef", "does not start with"),
        ("SCRAM-SHA-1$4096:AAAA$AA:AA", "does not start with"),
        ("SCRAM-SHA-256$", "expected"),
        ("SCRAM-SHA-256$4096:" + b64(SALT).decode(), "expected"),
        (GOOD + "$x", "expected"),
        (f"SCRAM-SHA-256$4096${_GOOD_KEYS}", "iterations>:<salt"),
        (f"SCRAM-SHA-256$4096:{b64(SALT).decode()}:x${_GOOD_KEYS}", "iterations>:<salt"),
        (GOOD.rsplit(":", 1)[0], "StoredKey>:<ServerKey"),
        (f"SCRAM-SHA-256$abc:{b64(SALT).decode()}${_GOOD_KEYS}", "not a decimal number"),
        (f"SCRAM-SHA-256$-4096:{b64(SALT).decode()}${_GOOD_KEYS}", "not a decimal number"),
        (f"SCRAM-SHA-256$\u0664096:{b64(SALT).decode()}${_GOOD_KEYS}", "not a decimal number"),
        (f"SCRAM-SHA-256$1000:{b64(SALT).decode()}${_GOOD_KEYS}", "outside"),
        (f"SCRAM-SHA-256${'9' * 5000}:{b64(SALT).decode()}${_GOOD_KEYS}", "above 10000000"),
        (f"SCRAM-SHA-256$4096:not*base64${_GOOD_KEYS}", "salt is not valid base64"),
        (f"SCRAM-SHA-256$4096:{b64(b'x' * 8).decode()}${_GOOD_KEYS}", "salt is 8 bytes"),
        (GOOD.replace("$" + _GOOD_KEYS, "$AAAA:" + _GOOD_KEYS.split(":")[1]), "StoredKey is 3"),
        (GOOD[:-4] + "!!!!", "ServerKey is not valid base64"),
        (GOOD.replace("$", "$é", 1), "not a decimal number"),
    ],
)
def test_parse_verifier_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as info:
        parse_verifier(text)
    assert _GOOD_KEYS.split(":")[0] not in str(info.value)  # never quotes a key


def test_parse_verifier_wants_a_str() -> None:
    with pytest.raises(ValueError, match="expected a str"):
        parse_verifier(b"SCRAM-SHA-256$..")  # type: ignore[arg-type]


# ------------------------------------------------------------------ the exchange


def test_round_trip_with_scramps_client() -> None:
    _login(ScramServerExchange([make_verifier("ce_key")]), "ce_key")
    _login(ScramServerExchange([parse_verifier(make_verifier("ce_key"))]), "ce_key")


def test_wrong_password_fails() -> None:
    with pytest.raises(ScramFailed, match="refused"):
        _login(ScramServerExchange([make_verifier("ce_key")]), "ce_other")


@pytest.mark.parametrize("user", ["", "tenant", "a=b", "Ünïcødé"])
@pytest.mark.parametrize("gs2", ["n,,", "y,,"])
def test_the_scram_user_name_is_ignored_as_postgres_ignores_it(gs2: str, user: str) -> None:
    """libpq sends ``n=``; asyncpg sends the startup user unescaped."""
    _raw_login(ScramServerExchange([make_verifier("pw")]), "pw", gs2, user)
    with pytest.raises(ScramFailed):
        _raw_login(ScramServerExchange([make_verifier("pw")]), "wrong", gs2, user)


def test_a_client_that_could_bind_but_sees_no_plus_mechanism_is_accepted() -> None:
    """gs2 flag 'y': we never advertise SCRAM-SHA-256-PLUS, so this is no downgrade."""
    binding = ("tls-server-end-point", b"\x01" * 32)
    _login(ScramServerExchange([make_verifier("pw")]), "pw", channel_binding=binding)


def test_a_client_demanding_channel_binding_fails() -> None:
    binding = ("tls-server-end-point", b"\x01" * 32)
    with pytest.raises(ScramFailed, match="channel binding"):
        _login(
            ScramServerExchange([make_verifier("pw")]),
            "pw",
            mechanisms=["SCRAM-SHA-256-PLUS"],
            channel_binding=binding,
        )


def test_only_the_first_verifier_is_the_door_key() -> None:
    verifiers = [make_verifier("first"), make_verifier("second")]
    _login(ScramServerExchange(verifiers), "first")
    with pytest.raises(ScramFailed):
        _login(ScramServerExchange(verifiers), "second")
    _login(ScramServerExchange(verifiers, index=1), "second")  # a caller's explicit choice


def test_every_verifier_given_must_be_valid_and_there_must_be_one() -> None:
    with pytest.raises(ValueError, match="SCRAM verifier"):
        ScramServerExchange([make_verifier("pw"), "SCRAM-SHA-256$broken"])
    with pytest.raises(ValueError, match="decoy"):
        ScramServerExchange([])
    with pytest.raises(ValueError, match="index 1"):
        ScramServerExchange([make_verifier("pw")], index=1)


def test_the_exchange_runs_once_in_order() -> None:
    exchange = ScramServerExchange([make_verifier("pw")])
    with pytest.raises(RuntimeError):
        exchange.finish(b"c=biws,r=x,p=AAAA")
    exchange.start(b"n,,n=,r=abc")
    with pytest.raises(RuntimeError):
        exchange.start(b"n,,n=,r=abc")
    with pytest.raises(ScramFailed):
        exchange.finish(b"garbage")
    with pytest.raises(RuntimeError):
        exchange.finish(b"garbage")
    failed = ScramServerExchange([make_verifier("pw")])
    with pytest.raises(ScramFailed):
        failed.start(b"garbage")
    with pytest.raises(RuntimeError):
        failed.finish(b"c=biws,r=x,p=AAAA")


@pytest.mark.parametrize(
    "client_first",
    [
        b"",
        b"\xff\xfe",
        b"n",
        b"n,,",
        b"n,,n=",
        b"n,,n=,r=",
        b"n,,r=abc",
        b"n,,n=x,r=abc\x00def",
        b"n,,n=,r=ab c",
        b"n,,n=,s=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,n=,r=abc,r=def",
        b"n,a=admin,n=,r=abc",
        b"x,,n=,r=abc",
        b"p=tls-server-end-point,,n=,r=abc",
        b"p=tls-unique,,n=,r=abc",
        b"p=tls-exporter,,n=,r=abc",
        b"p=no such,,n=,r=abc",
        b"n,,n=,r=abc,",
    ],
)
def test_a_malformed_client_first_fails_with_scram_failed(client_first: bytes) -> None:
    with pytest.raises(ScramFailed):
        ScramServerExchange([make_verifier("pw")]).start(client_first)


def _started() -> tuple[ScramServerExchange, str]:
    exchange = ScramServerExchange([make_verifier("pw")])
    server_first = exchange.start(b"n,,n=,r=abc").decode()
    return exchange, server_first.split(",")[0][2:]


@pytest.mark.parametrize(
    "template",
    [
        "",
        "\udcff",
        "c=biws",
        "c=biws,r={nonce}",
        "c=biws,r={nonce},p=",
        "c=biws,r={nonce},p=not*base64",
        "c=biws,r={nonce},p=AAAA",
        "c=biws,r={nonce},p=" + b64(b"\x00" * 32).decode(),
        "c=biws,r={nonce}x,p=" + b64(b"\x00" * 32).decode(),
        "c=biws,r=abc,p=" + b64(b"\x00" * 32).decode(),
        "c=eSws,r={nonce},p=" + b64(b"\x00" * 32).decode(),
        "c=!!,r={nonce},p=" + b64(b"\x00" * 32).decode(),
        "r={nonce},c=biws,p=" + b64(b"\x00" * 32).decode(),
        "c=biws,c=biws,r={nonce},p=" + b64(b"\x00" * 32).decode(),
        "c=biws,r={nonce},p=" + b64(b"\x00" * 32).decode() + ",x=1",
        "c=biws,r={nonce},m=1,p=" + b64(b"\x00" * 32).decode(),
    ],
)
def test_a_malformed_client_final_fails_with_scram_failed(template: str) -> None:
    exchange, nonce = _started()
    data = template.format(nonce=nonce).encode("utf-8", "surrogateescape")
    with pytest.raises(ScramFailed):
        exchange.finish(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: ("n,,n=," + t).encode()))
def test_any_client_first_is_answered_or_refused_with_scram_failed(data: bytes) -> None:
    with contextlib.suppress(ScramFailed):
        assert ScramServerExchange([GOOD]).start(data).startswith(b"r=")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_forged_client_final_is_refused_with_scram_failed(data: bytes) -> None:
    exchange, nonce = _started()
    with pytest.raises(ScramFailed):
        exchange.finish(data.replace(b"NONCE", nonce.encode()))


# ------------------------------------------------------------------ decoys


def test_a_decoy_always_fails_at_finish() -> None:
    for password in ("", "pw", "ce_key"):
        with pytest.raises(ScramFailed, match="decoy"):
            _login(ScramServerExchange.decoy("nobody"), password)
    exchange = ScramServerExchange.decoy()
    exchange.start(b"n,,n=,r=abc")
    with pytest.raises(ScramFailed, match="decoy"):
        exchange.finish(b"garbage")


def _server_first_attrs(exchange: ScramServerExchange) -> dict[str, str]:
    server_first = exchange.start(b"n,,n=,r=abc").decode()
    return dict(part.split("=", 1) for part in server_first.split(","))


def test_a_decoy_looks_like_a_real_tenant() -> None:
    real = _server_first_attrs(ScramServerExchange([make_verifier("pw")]))
    decoy = _server_first_attrs(ScramServerExchange.decoy("nobody"))
    assert list(decoy) == list(real) == ["r", "s", "i"]
    assert decoy["i"] == real["i"] == "4096"
    assert len(decoy["s"]) == len(real["s"]) and len(decoy["r"]) == len(real["r"])


def test_a_decoys_salt_is_stable_per_tenant_as_a_real_one_is() -> None:
    secret = secrets.token_bytes(32)

    def salt(tenant: str, key: bytes | None = secret) -> str:
        return _server_first_attrs(ScramServerExchange.decoy(tenant, secret=key))["s"]

    assert salt("nobody") == salt("nobody")  # another login, another node with the secret
    assert salt("nobody") != salt("somebody")
    assert salt("nobody") != salt("nobody", secrets.token_bytes(32))
    assert salt("nobody", None) == salt("nobody", None)  # the per-process default
    decoy = ScramServerExchange.decoy("nobody", iterations=10000)
    assert _server_first_attrs(decoy)["i"] == "10000"


# ------------------------------------------------------------------ cache-edge keygen


def test_keygen_prints_the_scram_verifier_of_its_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["keygen"]) == 0
    out = capsys.readouterr().out
    values = dict(
        (name.strip(), value.strip())
        for name, value in (line.split("=", 1) for line in out.splitlines() if "=" in line)
        if not name.startswith("#")
    )
    assert "scram_verifiers" in out
    _login(ScramServerExchange([values["scram_verifier"]]), values["api_key"])


# ------------------------------------------------------------------ PostgreSQL's verifiers


@contextlib.asynccontextmanager
async def _pg_role(password: str) -> AsyncIterator[str]:
    """A throwaway login role; yields the verifier PostgreSQL stored for its password."""
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_DSN, timeout=3.0)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        pytest.skip(f"PostgreSQL unreachable at {PG_DSN}: {exc}")
    role = f"tmp_scram_{uuid.uuid4().hex[:12]}"
    try:
        await conn.execute("SET password_encryption = 'scram-sha-256'")
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        try:
            yield await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
        finally:
            await conn.execute(f"DROP ROLE {role}")
    finally:
        await conn.close()


async def test_a_verifier_postgres_made_works() -> None:
    async with _pg_role("pw") as stored:
        verifier = parse_verifier(stored)
        # the same string, byte for byte, from the same password, salt and count
        assert make_verifier("pw", verifier.iterations, verifier.salt) == stored
        _login(ScramServerExchange([stored]), "pw")
        with pytest.raises(ScramFailed):
            _login(ScramServerExchange([stored]), "pw2")


# ------------------------------------------------------------------ real clients


async def _auth_only_server(
    verifier: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """The door's authentication step and nothing else: after it, an error that says how
    it went (so that clients stop there)."""
    (length,) = struct.unpack("!I", await reader.readexactly(4))
    body = await reader.readexactly(length - 4)
    if struct.unpack("!I", body[:4])[0] == messages.SSL_REQUEST:
        writer.write(b"N")
        (length,) = struct.unpack("!I", await reader.readexactly(4))
        body = await reader.readexactly(length - 4)
    user = messages.parse_startup(body[4:])["user"]
    exchange = (
        ScramServerExchange([verifier]) if user == "tenant" else ScramServerExchange.decoy(user)
    )
    writer.write(
        messages.auth_request(10, b"".join(messages.cstring(m) for m in MECHANISMS) + b"\0")
    )

    async def sasl_response() -> bytes:
        kind, length = struct.unpack("!cI", await reader.readexactly(5))
        assert kind == b"p"
        return await reader.readexactly(length - 4)

    try:
        initial = await sasl_response()
        mechanism, rest = initial.split(b"\0", 1)
        assert mechanism.decode() in MECHANISMS
        writer.write(messages.auth_request(11, exchange.start(rest[4:])))
        writer.write(messages.auth_request(12, exchange.finish(await sasl_response())))
        writer.write(messages.auth_ok())
        writer.write(messages.error_response("XX000", "scram test: authenticated"))
    except ScramFailed:
        writer.write(
            messages.error_response("28P01", f'password authentication failed for user "{user}"')
        )
    await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def _door(verifier: str) -> AsyncIterator[int]:
    server = await asyncio.start_server(
        lambda r, w: _auth_only_server(verifier, r, w), "127.0.0.1", 0
    )
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    "user,password,says",
    [
        ("tenant", "ce_key", "authenticated"),
        ("tenant", "ce_wrong", "password authentication failed"),
        ("nobody", "ce_key", "password authentication failed"),
    ],
)
async def test_libpq_logs_in(user: str, password: str, says: str) -> None:
    """psql (libpq) sends an empty SCRAM user name: what a real PostgreSQL client does."""
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("no psql on this machine")
    async with _door(make_verifier("ce_key")) as port:
        proc = await asyncio.create_subprocess_exec(
            psql,
            f"host=127.0.0.1 port={port} user={user} dbname=db sslmode=disable",
            "-c",
            "select 1",
            env={**os.environ, "PGPASSWORD": password, "PGCHANNELBINDING": "prefer"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert says in err.decode(), err.decode()


@pytest.mark.parametrize(
    "user,password,says",
    [
        ("tenant", "ce_key", "authenticated"),
        ("tenant", "ce_wrong", "password authentication failed"),
        ("no=body", "ce_key", "password authentication failed"),
    ],
)
async def test_asyncpg_logs_in(user: str, password: str, says: str) -> None:
    """asyncpg sends the startup user, unescaped, as the SCRAM user name."""
    import asyncpg

    async with _door(make_verifier("ce_key")) as port:
        with pytest.raises(asyncpg.PostgresError, match=says):
            await asyncpg.connect(
                host="127.0.0.1", port=port, user=user, password=password, database="db", ssl=False
            )
