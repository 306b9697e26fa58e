"""API key authentication: keys are known only by their SHA-256, matched in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from cache_edge.common.errors import Unauthorized
from cache_edge.server.config import TenantConfig

__all__ = ["ApiKeys", "Principal"]

_MAX_KEY_LENGTH = 256
_MALFORMED = "malformed Authorization header: expected 'Bearer <API key>'"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant, and which of its keys (by hash prefix, never the key)."""

    tenant: str
    key_id: str  # first 16 hex digits of the key's sha256: a rate-limit bucket, a log field


def _index(tenants: Iterable[TenantConfig]) -> dict[bytes, str]:
    return {
        bytes.fromhex(hex_hash): tenant.id
        for tenant in tenants
        for hex_hash in tenant.api_keys_sha256
    }


class ApiKeys:
    """Maps an API key's hash to its tenant. Rebuilt whole on config reload."""

    def __init__(self, tenants: Iterable[TenantConfig]) -> None:
        self._by_hash = _index(tenants)

    def replace(self, tenants: Iterable[TenantConfig]) -> None:
        """Swap in the keys of a reloaded config in one step (no request sees a mix)."""
        self._by_hash = _index(tenants)

    def tenant_for(self, authorization: str | None) -> str:
        return self.authenticate(authorization).tenant

    def authenticate(self, authorization: str | None) -> Principal:
        """Return who sent a ``Bearer <key>`` header or raise Unauthorized.

        The message never says whether a key or tenant exists.
        """
        if not authorization:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <API key>'")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or len(key) > _MAX_KEY_LENGTH:
            raise Unauthorized(_MALFORMED)
        try:
            raw = key.encode("utf-8", "surrogateescape")  # the header's original bytes
        except UnicodeEncodeError:
            raise Unauthorized(_MALFORMED) from None
        digest = hashlib.sha256(raw).digest()
        # Compare against every known hash, without stopping early, so the time taken
        # says nothing about which (or whether a) key matched.
        found: str | None = None
        for known, tenant in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                found = tenant
        if found is None:
            raise Unauthorized("invalid API key")
        return Principal(found, digest[:8].hex())
