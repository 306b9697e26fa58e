"""Cache tiers: where entries live (the region's Redis; an in-process hot tier)."""
