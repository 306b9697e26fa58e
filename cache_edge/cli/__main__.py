"""`python -m cache_edge.cli`: the same as the `cache-edge` command."""

from cache_edge.cli.main import main

raise SystemExit(main())
