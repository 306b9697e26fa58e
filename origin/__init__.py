"""The origin pooler: runs node-forwarded queries over bounded per-tenant asyncpg pools."""
