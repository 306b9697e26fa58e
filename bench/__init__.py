"""Package bench runs cache-edge's benchmark suite end to end: ``python -m bench``.

Every scenario starts the servers it needs on free loopback ports, measures them
and their baseline in the same run (the machine is small and shared, so only
ratios travel), and stops them again. See bench/README.md.
"""
