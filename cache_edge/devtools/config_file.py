"""The files ``cache-edge dev`` keeps in its workdir: generated secrets and the TOML config."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEMO_TENANT", "DevSecrets", "load_or_make_secrets", "toml_string", "write_config"]

DEMO_TENANT = "demo"


@dataclass(frozen=True)
class DevSecrets:
    api_key: str
    node_secret: str

    @property
    def api_key_sha256(self) -> str:
        return hashlib.sha256(self.api_key.encode()).hexdigest()


def load_or_make_secrets(workdir: Path) -> DevSecrets:
    """Reuse the workdir's key across runs, so the commands a developer copied keep working."""
    path = workdir / "secrets.json"
    try:
        raw = json.loads(path.read_text())
        return DevSecrets(str(raw["api_key"]), str(raw["node_secret"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # first run, or a damaged file: make new ones
    made = DevSecrets("ce_dev_" + secrets.token_urlsafe(24), secrets.token_urlsafe(32))
    path.write_text(json.dumps({"api_key": made.api_key, "node_secret": made.node_secret}))
    os.chmod(path, 0o600)
    return made


def toml_string(value: str) -> str:
    # A JSON string without ASCII escaping is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=False)


def write_config(
    path: Path,
    keys: DevSecrets,
    database_url: str,
    origin_listen: str,
    origin_url: str,
    captured: bool = False,
) -> None:
    """Write the one config file that the origin and every node read (regions come as flags)."""
    lines = [
        "# Written by `cache-edge dev`; rewritten on every start.",
        f"node_secret = {toml_string(keys.node_secret)}",
        'log_level = "info"',
        'log_format = "console"',
        "",
        "[[tenants]]",
        f"id = {toml_string(DEMO_TENANT)}",
        f"api_keys_sha256 = [{toml_string(keys.api_key_sha256)}]",
        f"database_url = {toml_string(database_url)}",
        *(["auto_invalidation = true", "change_streams = true"] if captured else []),
        "",
        "[origin]",
        f"listen = {toml_string(origin_listen)}",
        "",
        "[node]",
        f"origin_url = {toml_string(origin_url)}",
        "",
    ]
    path.write_text("\n".join(lines))
    os.chmod(path, 0o600)  # it holds the node secret and maybe a database password
