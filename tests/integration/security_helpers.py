"""Shared by the security tests: certificates made on the spot, https servers, log checks."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.integration.stack import Server, Stack


@dataclass(frozen=True)
class Certs:
    ca: Path  # the private CA that signed the server certificate
    cert: Path  # server certificate for 127.0.0.1 and localhost
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(directory: Path, name: str = "server") -> Certs:
    """A private CA and a server certificate it signed (EC P-256, valid two days)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem",
        "-days", "2", "-subj", f"/CN={name} test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    ext = directory / f"{name}.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{name}-ca.pem", "-CAkey", f"{name}-ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name,
        cwd=directory,
    )  # fmt: skip
    return Certs(directory / f"{name}-ca.pem", directory / f"{name}.pem", directory / f"{name}.key")


def client_ssl(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


class HttpsServer(Server):
    """A Server whose listener speaks TLS; ``ca`` verifies it."""

    ca: Path | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def health_context(self) -> ssl.SSLContext | None:
        return client_ssl(self.ca) if self.ca else ssl.create_default_context()


def rewrite_config(stack: Stack, doc: dict[str, Any]) -> None:
    """Replace the running servers' config file (what an operator's deploy would do)."""
    stack.doc = doc
    tmp = stack.config.with_suffix(".new")
    tmp.write_text(tomli_w.dumps(doc))
    tmp.replace(stack.config)  # atomic: a watcher never reads half a file


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, every: float = 0.2
) -> float:
    """Await ``check`` until it is true; return how long that took, or fail after ``timeout``."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}}" if want else name
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
