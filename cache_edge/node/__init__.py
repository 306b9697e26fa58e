"""The regional node: its HTTP door, the read path, the tiers, the purge applier and
mirror, rate limits, change-stream fan-out, the origin link and metrics."""
