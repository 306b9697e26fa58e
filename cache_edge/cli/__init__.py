"""The ``cache-edge`` command: one of the two composition roots (with devtools/) that may
import both the node and the origin."""
