"""Where a tenant's keys live in the region's Redis, standalone or Redis Cluster.

A hit must cost one round trip: the entry and the purge state it is checked
against are read by a single MGET, so they must share a hash slot. Putting a
whole tenant in one slot would pile it onto one cluster node, so a tenant is
split into ``shards`` slots by the first hex digits of the entry's signature,
and its purge state (tag versions and the sync lease) is written to every shard.
That multiplies a purge's writes by ``shards`` (still O(tags), never a scan)
and keeps every hit at one command on one node.

Standalone Redis uses one shard; the braces are harmless there.
"""

from __future__ import annotations

__all__ = ["CLUSTER_SHARDS", "Layout"]

CLUSTER_SHARDS = 16


class Layout:
    def __init__(self, shards: int = 1, prefix: str = "ce") -> None:
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.shards = shards
        self._prefix = prefix

    def shard_of(self, signature: str) -> int:
        return int(signature[:4], 16) % self.shards if self.shards > 1 else 0

    def _slot(self, tenant: str, shard: int) -> str:
        return f"{self._prefix}:{{{tenant}.{shard}}}"

    def entry(self, tenant: str, signature: str) -> str:
        return f"{self._slot(tenant, self.shard_of(signature))}:e:{signature}"

    def lock(self, tenant: str, signature: str) -> str:
        return f"{self._slot(tenant, self.shard_of(signature))}:l:{signature}"

    def sync(self, tenant: str, shard: int) -> str:
        return f"{self._slot(tenant, shard)}:sync"

    def tag(self, tenant: str, shard: int, tag: str) -> str:
        return f"{self._slot(tenant, shard)}:tag:{tag}"

    def shard_generation(self, tenant: str, shard: int) -> str:
        return f"{self._slot(tenant, shard)}:gen"

    def generation(self, tenant: str) -> str:
        return f"{self._prefix}:{{{tenant}}}:gen"

    def epoch(self, tenant: str) -> str:
        return f"{self._prefix}:{{{tenant}}}:epoch"

    def tenant_patterns(self, tenant: str) -> list[str]:
        """SCAN patterns that cover every key of ``tenant`` (glob-escaped)."""
        t = "".join(f"\\{c}" if c in "*?[]\\" else c for c in tenant)
        return [f"{self._prefix}:{{{t}}}:*", f"{self._prefix}:{{{t}.*}}:*"]

    def owns(self, tenant: str, key: str) -> bool:
        """Is ``key`` one of ``tenant``'s (and not of a tenant whose id extends it)?"""
        head = f"{self._prefix}:{{{tenant}"
        if not key.startswith(head):
            return False
        rest = key[len(head) :]
        if rest.startswith("}:"):
            return True
        shard, sep, _ = rest[1:].partition("}:")
        return rest.startswith(".") and bool(sep) and shard.isdigit()

    def applied(self, tenant: str) -> str:
        return f"{self._prefix}:{{{tenant}}}:applied"

    def floor(self, tenant: str) -> str:
        return f"{self._prefix}:{{{tenant}}}:floor"

    def leader(self, region: str) -> str:
        return f"{self._prefix}:region:{region}:applier"

    def purge_channel(self, region: str) -> str:
        return f"{self._prefix}:region:{region}:purges"

    def members(self, region: str) -> str:
        return f"{self._prefix}:region:{region}:members"

    def state_keys(self, tenant: str, signature: str, tags: tuple[str, ...]) -> list[str]:
        """The sync lease and tag versions an entry is judged by, in its own slot."""
        shard = self.shard_of(signature)
        return [self.sync(tenant, shard)] + [self.tag(tenant, shard, t) for t in tags]
