#!/usr/bin/env python3
"""Write the runtime config file: ``node_secret`` from the environment, then the shared TOML.

cache-edge reads everything, ``node_secret`` included, from one TOML file. The shared file
(``deploy/config/cache-edge.toml``, or the Kubernetes ConfigMap) holds no secret. This step
runs before the servers start (a one-shot compose service, a Kubernetes init container),
reads the secret from ``$CACHE_EDGE_NODE_SECRET`` or from the file named by
``$CACHE_EDGE_NODE_SECRET_FILE``, puts it in front of the shared TOML (a top-level key must
come before the first table) and writes the result, mode 0600, where the servers read it.

Usage: ``cache-edge-render-config SRC DEST`` (installed under that name in the image).
Exit status 2, with a message, when the secret is missing or the result is not a valid
configuration; an unrendered shared file fails at server start too ("node_secret is
missing"), never silently.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

SECRET_ENV = "CACHE_EDGE_NODE_SECRET"
SECRET_FILE_ENV = "CACHE_EDGE_NODE_SECRET_FILE"


class RenderError(ValueError):
    """The secret or the shared config is unusable; the message says which and why."""


def read_secret(environ: Mapping[str, str]) -> str:
    """The node secret from ``$CACHE_EDGE_NODE_SECRET_FILE`` (preferred) or the env itself."""
    path = environ.get(SECRET_FILE_ENV)
    if path:
        try:
            secret = Path(path).read_text().strip()
        except OSError as exc:
            raise RenderError(f"cannot read {SECRET_FILE_ENV}={path}: {exc.strerror}") from None
    else:
        secret = environ.get(SECRET_ENV, "").strip()
    if not secret:
        raise RenderError(f"set {SECRET_ENV} (or {SECRET_FILE_ENV}) to the node secret")
    return secret


def render(shared_toml: str, secret: str) -> str:
    """The shared TOML with ``node_secret`` in front; the shared part must not carry one."""
    try:
        shared = tomllib.loads(shared_toml)
    except tomllib.TOMLDecodeError as exc:
        raise RenderError(f"the shared config is not valid TOML: {exc}") from None
    if "node_secret" in shared:
        raise RenderError("the shared config must not contain node_secret: it comes from a secret")
    # A JSON string (ASCII-escaped) is a valid TOML basic string, whatever the secret holds.
    return f"node_secret = {json.dumps(secret)}\n" + shared_toml


def check(rendered: str) -> None:
    """Validate with the servers' own parser when it is importable (it is, in the image)."""
    try:
        from cache_edge.server.config import ConfigError, parse_settings
    except ImportError:  # pragma: no cover - only outside the image
        return
    try:
        parse_settings(tomllib.loads(rendered))
    except ConfigError as exc:
        raise RenderError(f"invalid configuration: {exc}") from None


def write_private(dest: Path, text: str) -> None:
    """Write ``text`` to ``dest`` atomically, readable by this user only."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, dest)


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    if len(argv) != 2:
        print("usage: cache-edge-render-config SRC DEST", file=sys.stderr)
        return 2
    src, dest = Path(argv[0]), Path(argv[1])
    try:
        secret = read_secret(environ)
        rendered = render(src.read_text(), secret)
        check(rendered)
    except (RenderError, OSError) as exc:
        print(f"cache-edge-render-config: {exc}", file=sys.stderr)
        return 2
    if "placeholder" in secret.lower():
        print(
            "cache-edge-render-config: WARNING: the node secret is the repository's placeholder; "
            "set a real one (`cache-edge keygen`) before exposing this deployment",
            file=sys.stderr,
        )
    write_private(dest, rendered)
    print(f"cache-edge-render-config: wrote {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], os.environ))
