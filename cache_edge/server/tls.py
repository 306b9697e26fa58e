"""TLS contexts for the listeners (node, origin) and for the node's client to the origin.

Servers: TLS 1.2 or newer with the standard library's default ciphers; the
certificate and key can be re-read into the live context (new handshakes use
them, open connections keep theirs), so a renewed certificate needs no restart.
Client: verifies the origin's certificate and host name, against the system's
trust store or a private CA bundle (``node.origin_ca``).
"""

from __future__ import annotations

import ssl

__all__ = ["client_context", "reload_server_context", "server_context"]


def server_context(cert: str, key: str) -> ssl.SSLContext | None:
    """A server context for the PEM ``cert`` chain and ``key``; None when TLS is off."""
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def reload_server_context(ctx: ssl.SSLContext | None, cert: str, key: str) -> None:
    """Load a renewed certificate into a running context (same paths, new contents)."""
    if ctx is not None and cert:
        ctx.load_cert_chain(cert, key)


def client_context(ca_file: str) -> ssl.SSLContext | bool:
    """Verification for https to the origin: a private CA, or (True) the system's defaults."""
    if not ca_file:
        return True
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
