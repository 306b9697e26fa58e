"""HMAC request signing between regional nodes and the origin.

A node signs method, path, tenant, a timestamp, a random nonce and the SHA-256
of the body with the shared node secret; the origin accepts a signature made
with any of its current secrets (rotation with overlap) inside a bounded time
window, so a captured request can be neither altered nor replayed later. The
nonce makes every signature unique, even for two identical requests signed in
the same millisecond, so the origin can refuse any signature it has seen before
(:mod:`origin.core.replay`) without ever refusing a legitimate request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _random
import time
from collections.abc import Mapping, Sequence

__all__ = [
    "LINK_MAC_BYTES",
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "TENANT_HEADER",
    "TIMESTAMP_HEADER",
    "LinkOpener",
    "LinkSealer",
    "SignatureError",
    "link_key",
    "sign_headers",
    "signing_secret",
    "verify_headers",
]

TENANT_HEADER = "X-Cache-Edge-Tenant"
TIMESTAMP_HEADER = "X-Cache-Edge-Timestamp"
SIGNATURE_HEADER = "X-Cache-Edge-Signature"
NONCE_HEADER = "X-Cache-Edge-Nonce"
_MAX_NONCE = 64


class SignatureError(Exception):
    """The request is not signed by a holder of the node secret (message safe to return)."""


def _mac(
    secret: str, method: str, path: str, tenant: str, timestamp: str, nonce: str, digest: str
) -> str:
    msg = f"{method.upper()}\n{path}\n{tenant}\n{timestamp}\n{nonce}\n{digest}"
    return hmac.new(secret.encode(), msg.encode("utf-8", "surrogateescape"), "sha256").hexdigest()


def sign_headers(
    secret: str,
    method: str,
    path: str,
    tenant: str,
    body: bytes,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    timestamp = f"{time.time() if now is None else now:.3f}"
    nonce = _random.token_hex(12) if nonce is None else nonce
    digest = hashlib.sha256(body).hexdigest()
    return {
        TENANT_HEADER: tenant,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: _mac(secret, method, path, tenant, timestamp, nonce, digest),
    }


def verify_headers(
    secrets: Sequence[str],
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    window: float,
    now: float | None = None,
) -> str:
    """Return the signed tenant id (possibly empty) or raise SignatureError.

    Only proves the signature; refusing a second use of it is the caller's job
    (see :func:`signed_until` for how long it must be remembered).
    """
    signing_secret(secrets, method, path, headers, body, window, now)
    return headers.get(TENANT_HEADER, "")


def signing_secret(
    secrets: Sequence[str],
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    window: float,
    now: float | None = None,
) -> str:
    """Which of ``secrets`` signed the request (or SignatureError), for a caller that must
    notice when that secret is withdrawn (a link proven once, then kept open)."""
    signature = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    nonce = headers.get(NONCE_HEADER)
    tenant = headers.get(TENANT_HEADER, "")
    if not signature or not timestamp or not nonce:
        raise SignatureError("missing node signature: only cache-edge nodes may call the origin")
    if len(nonce) > _MAX_NONCE or len(signature) != 64:
        raise SignatureError("malformed node signature")
    try:
        sent = float(timestamp)
    except ValueError:
        raise SignatureError("malformed signature timestamp") from None
    current = time.time() if now is None else now
    if not abs(current - sent) <= window:  # written so that NaN is refused too
        raise SignatureError(
            "signature timestamp outside the accepted window (replayed request or clock skew)"
        )
    digest = hashlib.sha256(body).hexdigest()
    # Try every secret without stopping early, like the API key check.
    matched: str | None = None
    for secret in secrets:
        expected = _mac(secret, method, path, tenant, timestamp, nonce, digest)
        if hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            matched = secret
    if matched is not None:
        return matched
    raise SignatureError("invalid node signature: check node_secret on node and origin")


def signed_until(headers: Mapping[str, str], window: float) -> float:
    """The epoch second after which a verified request's signature is refused anyway."""
    return float(headers[TIMESTAMP_HEADER]) + window


# -- the node's link: signed once when it opens, then every node -> origin message sealed

LINK_MAC_BYTES = 16


def link_key(secret: str, signature: str) -> bytes:
    """The key that seals a link's messages: derived from the node secret and the (unique,
    single-use) signature of the link's opening, so every link has its own."""
    return hmac.new(secret.encode(), b"cache-edge link\n" + signature.encode(), "sha256").digest()


def _seal_mac(key: bytes, number: int, data: bytes) -> bytes:
    return hmac.digest(key, number.to_bytes(8, "big") + data, "sha256")[:LINK_MAC_BYTES]


class LinkSealer:
    """Prefixes each message with a MAC over its number on the link and its bytes. The
    number is not sent: messages arrive in the order they were written (one TCP stream),
    so one removed, replayed, reordered or altered fails the check at the other end."""

    __slots__ = ("_key", "_number")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._number = 0

    def seal(self, data: bytes) -> bytes:
        self._number += 1
        return _seal_mac(self._key, self._number, data) + data


class LinkOpener:
    """Checks and strips :class:`LinkSealer`'s MACs, in order; raises SignatureError."""

    __slots__ = ("_key", "_number")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._number = 0

    def open(self, message: bytes) -> bytes:
        mac, data = message[:LINK_MAC_BYTES], message[LINK_MAC_BYTES:]
        self._number += 1
        if not hmac.compare_digest(mac, _seal_mac(self._key, self._number, data)):
            raise SignatureError("link message not sealed by this link's node")
        return data
