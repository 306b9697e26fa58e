"""`pip install cache-edge` (no server extra) then a server command: one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# A package set to None in sys.modules cannot be imported: exactly what a machine
# without the server extra shows the CLI (a venv without it takes a minute to build).
_HIDE = "import sys\nfor m in {mods}: sys.modules[m] = None\n"


def _run(args: list[str], hidden: list[str]) -> subprocess.CompletedProcess[str]:
    code = _HIDE.format(mods=hidden) + (
        "from cache_edge.cli.main import main\nraise SystemExit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", ["origin", "node"])
def test_server_command_without_the_server_extra_says_what_to_install(
    command: str, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        'node_secret = "0123456789abcdef0123456789abcdef"\n'
        '[[tenants]]\nid = "t"\napi_keys_sha256 = ["' + "0" * 64 + '"]\n'
        'database_url = "postgresql://u@127.0.0.1:1/d"\n'
    )
    done = _run(
        [command, "--config", str(config)], ["structlog", "asyncpg", "redis", "prometheus_client"]
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'cache-edge[server]'" in lines[0]
    assert "Traceback" not in done.stderr


def test_keygen_needs_no_server_extra() -> None:
    done = _run(["keygen"], ["structlog", "asyncpg", "redis", "prometheus_client", "scramp"])
    assert done.returncode == 0 and "api_key" in done.stdout, done.stderr
    # the SCRAM verifier needs scramp (server extra): keygen says so rather than failing
    assert "scram_verifier =" not in done.stdout
    assert "# scram_verifier: needs the server extra" in done.stdout
