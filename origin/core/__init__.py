"""The origin's core: its HTTP door, the per-tenant connection pools, the executor and
result encoding."""
