"""Configuration: one TOML file, flags override it, every mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cache_edge.server.config import ConfigError, load_settings, parse_settings, redact_dsn

GOOD = """
node_secret = "0123456789abcdef0123"
[origin]
listen = "127.0.0.1:7400"
[[tenants]]
id = "acme"
api_keys_sha256 = ["%s"]
database_url = "postgresql://postgres:s3cret@127.0.0.1:5432/test"
[node]
region = "eu-west"
listen = "127.0.0.1:7410"
redis_url = "redis://127.0.0.1:6379/0"
origin_url = "http://127.0.0.1:7400"
""" % ("a" * 64)


def test_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    s = load_settings(path, {"node.region": "us-east", "origin.listen": None})
    assert s.node.region == "us-east"
    assert str(s.origin.listen) == "127.0.0.1:7400"
    assert s.tenant("acme") is not None
    assert "s3cret" not in repr(s)


def test_env_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    s = load_settings(None, env={"CACHE_EDGE_CONFIG": str(path)})
    assert s.node.region == "eu-west"


def _doc(**changes: object) -> dict[str, object]:
    import tomllib

    doc = tomllib.loads(GOOD)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        cur = doc
        for p in path:
            cur = cur[int(p)] if p.isdigit() else cur[p]
        cur[last] = value
    return doc


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"origin__listen": "nohost"}, "origin.listen"),
        ({"origin__pool_max_size": "ten"}, "origin.pool_max_size"),
        ({"origin__pool_max_size": 0}, "origin.pool_max_size"),
        ({"origin__statment_timeout": 1}, "origin.statment_timeout"),
        ({"node__redis_url": "http://x"}, "node.redis_url"),
        ({"node__region": "eu west"}, "node.region"),
        ({"tenants__0__api_keys_sha256": ["abc"]}, "tenants[0].api_keys_sha256"),
        ({"tenants__0__database_url": "mysql://x"}, "tenants[0].database_url"),
        ({"node_secret": "short"}, "node_secret"),
        ({"log_level": "loud"}, "log_level"),
    ],
)
def test_invalid_config_names_the_key(changes: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(_doc(**changes))
    assert f"'{key}'" in str(info.value)


def test_password_never_in_errors() -> None:
    doc = _doc(tenants__0__database_url="postgresql://u:hunter2@:bad/x")
    with pytest.raises(ConfigError) as info:
        parse_settings(doc)
    assert "hunter2" not in str(info.value)


def test_redact() -> None:
    assert redact_dsn("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_dsn("postgresql://u@h/db") == "postgresql://u@h/db"


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
