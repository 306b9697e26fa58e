"""Who a PostgreSQL-door client is: user = tenant id, password = one of its API keys.

With SCRAM verifiers in the tenant's config the node asks for SCRAM-SHA-256 (the key never
crosses the wire); without, it asks for the key in cleartext, and only over TLS or from a
loopback address. Failures all look alike (28P01 after the same delay), whether the tenant
exists or not, and neither the key nor the password appears in any log.
"""

from __future__ import annotations

import asyncio
import struct

from cache_edge.common.errors import Unauthorized
from cache_edge.node.auth import ApiKeys
from cache_edge.node.pgdoor.startup import ClientStream, Refused, Startup
from cache_edge.pgwire.messages import auth_request, cstring, error_response
from cache_edge.pgwire.scram import MECHANISMS, ScramFailed, ScramServerExchange
from cache_edge.server.config import TenantConfig

__all__ = ["FAIL_DELAY", "authenticate"]

FAIL_DELAY = 1.0  # seconds before a failed login is answered (slows down guessing)
_MAX_PASSWORD_MESSAGE = 10_000
_SASL, _SASL_CONTINUE, _SASL_FINAL, _CLEARTEXT = 10, 11, 12, 3


async def _password_message(stream: ClientStream) -> bytes:
    await stream.need(5)
    kind = bytes(stream.buffer[:1])
    (length,) = struct.unpack_from("!I", stream.buffer, 1)
    if kind != b"p" or length < 4 or length > _MAX_PASSWORD_MESSAGE:
        raise Refused(
            error_response(
                "08P01", f"expected password response, got message type {kind!r}", "FATAL"
            )
        )
    await stream.need(1 + length)
    body = bytes(stream.buffer[5 : 1 + length])
    del stream.buffer[: 1 + length]
    return body


async def _failed(user: str) -> Refused:
    await asyncio.sleep(FAIL_DELAY)
    return Refused(
        error_response("28P01", f'password authentication failed for user "{user}"', "FATAL")
    )


async def authenticate(
    stream: ClientStream,
    startup: Startup,
    tenant: TenantConfig | None,
    keys: ApiKeys,
    loopback: bool,
    decoy_secret: bytes,
) -> TenantConfig:
    """Run the exchange; the tenant on success, else raises Refused (FATAL for the client)."""
    verifiers = tenant.scram_verifiers if tenant is not None else ()
    if verifiers or not (stream.tls or loopback):
        return await _scram(stream, startup, tenant, decoy_secret)
    stream.writer.write(auth_request(_CLEARTEXT))
    body = await _password_message(stream)
    password = body.rstrip(b"\x00").decode("utf-8", "surrogateescape")
    try:
        principal = keys.authenticate("Bearer " + password)
    except Unauthorized:
        raise await _failed(startup.user) from None
    if tenant is None or principal.tenant != tenant.id:
        raise await _failed(startup.user)
    return tenant


async def _scram(
    stream: ClientStream, startup: Startup, tenant: TenantConfig | None, decoy_secret: bytes
) -> TenantConfig:
    if tenant is not None and not tenant.scram_verifiers:
        raise Refused(
            error_response(
                "28000",
                "cleartext password authentication needs TLS or a loopback connection",
                "FATAL",
                hint="connect with sslmode=require, or add the key's SCRAM verifier "
                "(`cache-edge keygen` prints one) to the tenant's scram_verifiers",
            )
        )
    exchange = (
        ScramServerExchange(tenant.scram_verifiers)
        if tenant is not None
        else ScramServerExchange.decoy(startup.user, secret=decoy_secret)
    )
    stream.writer.write(auth_request(_SASL, b"".join(cstring(m) for m in MECHANISMS) + b"\x00"))
    body = await _password_message(stream)
    try:
        end = body.index(b"\x00")
        mechanism = body[:end].decode()
        (size,) = struct.unpack_from("!i", body, end + 1)
        first = body[end + 5 : end + 5 + size] if size >= 0 else b""
        if mechanism not in MECHANISMS:
            raise ScramFailed(f"unsupported SASL mechanism {mechanism}")
        stream.writer.write(auth_request(_SASL_CONTINUE, exchange.start(first)))
        final = await _password_message(stream)
        stream.writer.write(auth_request(_SASL_FINAL, exchange.finish(final)))
    except (ScramFailed, ValueError, struct.error, UnicodeDecodeError):
        raise await _failed(startup.user) from None
    assert tenant is not None  # a decoy never finishes
    return tenant
