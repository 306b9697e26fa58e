"""Security settings: node secret sources, rate limits, TLS pairs, what a reload may change."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cache_edge.server.config import ConfigError, RateLimit, load_settings, parse_settings
from cache_edge.server.live_settings import merge_reloadable

pytestmark = pytest.mark.security

SECRET = "a-node-secret-of-enough-length"
OLD = "the-old-node-secret-still-valid"


def doc(**top: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tenants": [
            {"id": "acme", "api_keys_sha256": ["a" * 64], "database_url": "postgresql://u:pw@h/a"},
            {"id": "globex", "api_keys_sha256": ["b" * 64], "database_url": "postgresql://u@h/b"},
        ]
    }
    base.update(top)
    return base


def test_node_secrets_list_first_signs_all_verify() -> None:
    s = parse_settings(doc(node_secrets=[SECRET, OLD]))
    assert s.node_secret == SECRET
    assert s.node_secrets == (SECRET, OLD)
    assert SECRET not in repr(s) and OLD not in repr(s)


def test_node_secret_file_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text(f"\n  {SECRET}  \n\n{OLD}\n")
    s = parse_settings(doc(node_secret_file=str(path)))
    assert s.node_secrets == (SECRET, OLD) and s.node_secret_file == str(path)


def test_environment_is_the_fallback(tmp_path: Path) -> None:
    s = parse_settings(doc(), env={"CACHE_EDGE_NODE_SECRET": f" {SECRET}\n"})
    assert s.node_secrets == (SECRET,)
    path = tmp_path / "s"
    path.write_text(OLD)
    s = parse_settings(doc(), env={"CACHE_EDGE_NODE_SECRET_FILE": str(path)})
    assert s.node_secrets == (OLD,) and s.node_secret_file == str(path)
    # The file's own key wins over the environment.
    s = parse_settings(doc(node_secret=SECRET), env={"CACHE_EDGE_NODE_SECRET": OLD})
    assert s.node_secrets == (SECRET,)
    # parse_settings without env never looks at the process environment.
    with pytest.raises(ConfigError, match="'node_secret' is missing"):
        parse_settings(doc())


def test_load_settings_reads_the_environment_and_remembers_its_source(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[tenants]]\nid = "acme"\ndatabase_url = "postgresql://h/a"\n')
    s = load_settings(path, {"node.region": "eu"}, env={"CACHE_EDGE_NODE_SECRET": SECRET})
    assert s.node_secret == SECRET and s.node.region == "eu"
    assert s.source is not None and s.source.path == str(path)
    assert s.source.load() == s


@pytest.mark.parametrize(
    ("top", "words"),
    [
        ({"node_secret": SECRET, "node_secrets": [SECRET]}, "set only one"),
        ({"node_secrets": []}, "non-empty list"),
        ({"node_secrets": [SECRET, 12345678901234567]}, "non-empty list"),
        ({"node_secrets": [SECRET, "short-secret"]}, "entry 2"),
        ({"node_secret": 12345678901234567890}, "expected a string"),
        ({"node_secret_file": "/nonexistent/secret"}, "cannot read"),
    ],
)
def test_bad_secrets_are_named_but_never_shown(top: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(doc(**top))
    message = str(info.value)
    assert words in message
    assert "short-secret" not in message and "12345678901234567" not in message
    assert SECRET not in message


def test_rate_limits_global_and_per_tenant() -> None:
    d = doc(node_secret=SECRET, rate_limit={"rate": 100.0, "burst": 200})
    d["tenants"][0]["rate_limit"] = {"rate": 2.5}
    s = parse_settings(d)
    assert s.rate_limit == RateLimit(100.0, 200)
    assert s.rate_limit_for("acme") == RateLimit(2.5, 3)  # burst defaults to ceil(rate)
    assert s.rate_limit_for("globex") == RateLimit(100.0, 200)
    assert parse_settings(doc(node_secret=SECRET)).rate_limit.unlimited
    for bad, key in (
        ({"rate": -1}, "rate_limit.rate"),
        ({"rate": 1, "burst": 0}, "rate_limit.burst"),
        ({"burst": 5}, "rate_limit.rate"),
        ({"rate": 1, "per": "minute"}, "rate_limit.per"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_settings(doc(node_secret=SECRET, rate_limit=bad))


def test_tls_options_go_in_pairs_and_must_be_readable(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        parse_settings(doc(node_secret=SECRET, node={"tls_cert": str(cert)}))
    with pytest.raises(ConfigError, match=r"origin\.tls_key': cannot read"):
        parse_settings(
            doc(node_secret=SECRET, origin={"tls_cert": str(cert), "tls_key": str(tmp_path / "k")})
        )
    with pytest.raises(ConfigError, match=r"node\.origin_ca"):
        parse_settings(doc(node_secret=SECRET, node={"origin_ca": str(tmp_path / "ca.pem")}))


def test_a_reload_takes_credentials_and_limits_and_names_the_rest() -> None:
    running = parse_settings(doc(node_secret=OLD))
    new_doc = doc(node_secrets=[SECRET, OLD], rate_limit={"rate": 5.0, "burst": 5})
    new_doc["tenants"][0]["api_keys_sha256"] = ["c" * 64]
    new_doc["tenants"][0]["database_url"] = "postgresql://u:pw2@elsewhere/a"
    new_doc["tenants"][0]["max_concurrency"] = 7
    new_doc["tenants"].pop(1)  # globex removed
    new_doc["tenants"].append({"id": "initech", "database_url": "postgresql://h/i"})
    new_doc["node"] = {"listen": "0.0.0.0:9999"}
    new_doc["origin"] = {"max_concurrency": 50}
    loaded = parse_settings(new_doc)
    effective, restart = merge_reloadable(running, loaded)
    assert effective.node_secrets == (SECRET, OLD)
    assert effective.rate_limit == RateLimit(5.0, 5)
    acme, globex = effective.tenants
    assert acme.api_keys_sha256 == ("c" * 64,) and acme.max_concurrency == 7
    assert acme.database_url == "postgresql://u:pw@h/a"  # not without a restart
    assert globex.id == "globex" and globex.api_keys_sha256 == ()  # revoked at once
    assert [t.id for t in effective.tenants] == ["acme", "globex"]  # initech: restart
    assert effective.node.listen == running.node.listen
    assert effective.origin.max_concurrency == 50
    assert "tenants[acme].database_url" in restart and "node.listen" in restart
    assert any("initech" in r for r in restart) and any("globex" in r for r in restart)
    assert not any("pw2" in r or "elsewhere" in r for r in restart)  # names, never values


def test_an_unchanged_file_reloads_to_the_same_settings() -> None:
    running = parse_settings(doc(node_secret=SECRET))
    effective, restart = merge_reloadable(running, dataclasses.replace(running))
    assert effective == running and restart == []
