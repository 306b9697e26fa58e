"""HMAC request signing between regional nodes and the origin.

A node signs method, path, tenant, a timestamp and the SHA-256 of the body with
the shared node secret; the origin accepts a signature made with any of its
current secrets (rotation with overlap) inside a bounded time window, so a
captured request can be neither altered nor replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

__all__ = [
    "SIGNATURE_HEADER",
    "TENANT_HEADER",
    "TIMESTAMP_HEADER",
    "SignatureError",
    "sign_headers",
    "verify_headers",
]

TENANT_HEADER = "X-Cache-Edge-Tenant"
TIMESTAMP_HEADER = "X-Cache-Edge-Timestamp"
SIGNATURE_HEADER = "X-Cache-Edge-Signature"


class SignatureError(Exception):
    """The request is not signed by a holder of the node secret (message safe to return)."""


def _mac(secret: str, method: str, path: str, tenant: str, timestamp: str, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()
    msg = f"{method.upper()}\n{path}\n{tenant}\n{timestamp}\n{digest}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def sign_headers(
    secret: str, method: str, path: str, tenant: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    timestamp = f"{time.time() if now is None else now:.3f}"
    return {
        TENANT_HEADER: tenant,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: _mac(secret, method, path, tenant, timestamp, body),
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
    """Return the signed tenant id (possibly empty) or raise SignatureError."""
    signature = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    tenant = headers.get(TENANT_HEADER, "")
    if not signature or not timestamp:
        raise SignatureError("missing node signature: only cache-edge nodes may call the origin")
    try:
        sent = float(timestamp)
    except ValueError:
        raise SignatureError("malformed signature timestamp") from None
    current = time.time() if now is None else now
    if abs(current - sent) > window:
        raise SignatureError(
            "signature timestamp outside the accepted window (replayed request or clock skew)"
        )
    for secret in secrets:
        if hmac.compare_digest(_mac(secret, method, path, tenant, timestamp, body), signature):
            return tenant
    raise SignatureError("invalid node signature: check node_secret on node and origin")
