"""Where the node secrets come from: the config file, a secret file, or the environment.

Nodes sign origin requests with the first secret; the origin accepts a signature
made with any of them, so a secret can be rotated with overlap:
``node_secrets = ["new", "old"]`` on the origins first, then on the nodes.

Sources, first match wins (the file is explicit, the environment a fallback):

1. one of the config keys ``node_secrets`` (list), ``node_secret`` (string) or
   ``node_secret_file`` (path; setting more than one of the three is an error);
2. ``$CACHE_EDGE_NODE_SECRET_FILE`` (path), then ``$CACHE_EDGE_NODE_SECRET`` (one secret).

A secret file holds one secret per line, the signing one first; blank lines and
surrounding whitespace are ignored. Error messages never contain a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MIN_SECRET_LENGTH",
    "SECRET_ENV",
    "SECRET_FILE_ENV",
    "NodeSecrets",
    "SecretsError",
    "resolve_node_secrets",
]

SECRET_ENV = "CACHE_EDGE_NODE_SECRET"
SECRET_FILE_ENV = "CACHE_EDGE_NODE_SECRET_FILE"
MIN_SECRET_LENGTH = 16
_KEYS = ("node_secrets", "node_secret", "node_secret_file")


class SecretsError(ValueError):
    """The node secrets are missing or unusable; the message names the key, never a value."""


@dataclass(frozen=True, slots=True)
class NodeSecrets:
    secrets: tuple[str, ...]  # the first signs, all verify
    file: str = ""  # the secret file they were read from, if any (watched for changes)


def _read_file(path: str, key: str) -> tuple[str, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretsError(f"config key '{key}': cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SecretsError(f"config key '{key}': {path} is not UTF-8 text") from None
    secrets = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not secrets:
        raise SecretsError(f"config key '{key}': {path} holds no secret")
    return secrets


def _checked(secrets: tuple[str, ...], key: str) -> tuple[str, ...]:
    for index, secret in enumerate(secrets):
        if len(secret) < MIN_SECRET_LENGTH:
            which = "" if len(secrets) == 1 else f" (entry {index + 1})"
            raise SecretsError(
                f"config key '{key}'{which}: must be at least {MIN_SECRET_LENGTH} characters"
            )
    return secrets


def resolve_node_secrets(table: dict[str, Any], env: Mapping[str, str]) -> NodeSecrets:
    """Pop the secret keys from the top-level ``table`` and return the secrets to use."""
    given = [k for k in _KEYS if k in table]
    if len(given) > 1:
        raise SecretsError(f"config keys {', '.join(repr(k) for k in given)}: set only one of them")
    if given == ["node_secret"]:
        value = table.pop("node_secret")
        if not isinstance(value, str):
            raise SecretsError("config key 'node_secret': expected a string")
        return NodeSecrets(_checked((value,), "node_secret"))
    if given == ["node_secrets"]:
        value = table.pop("node_secrets")
        if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
            raise SecretsError(
                "config key 'node_secrets': expected a non-empty list of strings "
                '(["new", "old"]: the first signs, all are accepted)'
            )
        return NodeSecrets(_checked(tuple(value), "node_secrets"))
    if given == ["node_secret_file"]:
        path = table.pop("node_secret_file")
        if not isinstance(path, str) or not path:
            raise SecretsError("config key 'node_secret_file': expected a file path")
        return NodeSecrets(_checked(_read_file(path, "node_secret_file"), "node_secret_file"), path)
    if env.get(SECRET_FILE_ENV):
        path = env[SECRET_FILE_ENV]
        return NodeSecrets(_checked(_read_file(path, SECRET_FILE_ENV), SECRET_FILE_ENV), path)
    if env.get(SECRET_ENV, "").strip():
        return NodeSecrets(_checked((env[SECRET_ENV].strip(),), SECRET_ENV))
    raise SecretsError(
        "config key 'node_secret' is missing: nodes authenticate to the origin with it "
        f"(set node_secret, node_secrets or node_secret_file, or ${SECRET_ENV}; "
        "generate one with `cache-edge keygen`)"
    )
