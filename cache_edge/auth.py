"""API key authentication: keys are known only by their SHA-256, matched in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from cache_edge.config import TenantConfig
from cache_edge.errors import Unauthorized

__all__ = ["ApiKeys"]

_MAX_KEY_LENGTH = 256


class ApiKeys:
    """Maps an API key's hash to its tenant. Rebuilt whole on config reload."""

    def __init__(self, tenants: Iterable[TenantConfig]) -> None:
        self._by_hash: dict[bytes, str] = {}
        for tenant in tenants:
            for hex_hash in tenant.api_keys_sha256:
                self._by_hash[bytes.fromhex(hex_hash)] = tenant.id

    def tenant_for(self, authorization: str | None) -> str:
        """Return the tenant id of a ``Bearer <key>`` header or raise Unauthorized.

        The message never says whether a key or tenant exists.
        """
        if not authorization:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <API key>'")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or len(key) > _MAX_KEY_LENGTH:
            raise Unauthorized("malformed Authorization header: expected 'Bearer <API key>'")
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        # Compare against every known hash, without stopping early, so the time taken
        # says nothing about which (or whether a) key matched.
        found: str | None = None
        for known, tenant in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                found = tenant
        if found is None:
            raise Unauthorized("invalid API key")
        return found
