"""The Neon-compatible HTTP door (``POST /sql``): request, results, and the door itself."""
