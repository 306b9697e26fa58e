"""Node signatures: unique per request, bound to what they sign, remembered until they expire."""

from __future__ import annotations

import pytest

from cache_edge.common.signing import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TENANT_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    sign_headers,
    signed_until,
    verify_headers,
)
from origin.core.replay import ReplayCache

pytestmark = pytest.mark.security

NEW = "new-secret-0123456789abcdef"
OLD = "old-secret-0123456789abcdef"


def test_identical_requests_in_the_same_millisecond_get_different_signatures() -> None:
    a = sign_headers(NEW, "POST", "/v1/query", "acme", b"body", now=1000.0)
    b = sign_headers(NEW, "POST", "/v1/query", "acme", b"body", now=1000.0)
    assert a[NONCE_HEADER] != b[NONCE_HEADER] and a[SIGNATURE_HEADER] != b[SIGNATURE_HEADER]


@pytest.mark.parametrize(
    "change",
    [
        {NONCE_HEADER: "0" * 24},
        {TENANT_HEADER: "globex"},
        {TIMESTAMP_HEADER: "1000.001"},
        {SIGNATURE_HEADER: "f" * 64},
        {SIGNATURE_HEADER: "zz"},
        {SIGNATURE_HEADER: "é" * 64},
        {NONCE_HEADER: "n" * 65},
        {TIMESTAMP_HEADER: "nan"},
        {TIMESTAMP_HEADER: "inf"},
    ],
)
def test_any_change_breaks_the_signature(change: dict[str, str]) -> None:
    headers = {**sign_headers(NEW, "POST", "/v1/query", "acme", b"body", now=1000.0), **change}
    with pytest.raises(SignatureError):
        verify_headers([NEW], "POST", "/v1/query", headers, b"body", 60, now=1000.0)


def test_rotation_all_secrets_verify() -> None:
    for secret in (NEW, OLD):
        headers = sign_headers(secret, "POST", "/p", "t", b"x", now=5.0)
        assert verify_headers([NEW, OLD], "POST", "/p", headers, b"x", 60, now=5.0) == "t"
    headers = sign_headers("third-secret-0123456789", "POST", "/p", "t", b"x", now=5.0)
    with pytest.raises(SignatureError):
        verify_headers([NEW, OLD], "POST", "/p", headers, b"x", 60, now=5.0)


def test_replay_cache_refuses_a_second_use_until_the_window_closes() -> None:
    now = [1000.0]
    cache = ReplayCache(clock=lambda: now[0])
    headers = sign_headers(NEW, "POST", "/p", "t", b"x", now=1000.0)
    until = signed_until(headers, 60)
    assert until == pytest.approx(1060.0)
    sig = headers[SIGNATURE_HEADER]
    assert cache.first_use(sig, until)
    assert not cache.first_use(sig, until)
    now[0] = 1059.0
    assert not cache.first_use(sig, until)
    now[0] = 1061.0  # the window check refuses it from now on; the cache may forget it
    assert cache.first_use("a" * 64, 1100.0)
    assert len(cache) == 1


def test_replay_cache_is_bounded() -> None:
    cache = ReplayCache(capacity=3, clock=lambda: 0.0)
    for i in range(5):
        assert cache.first_use(f"{i:064x}", 100.0 + i)
    assert len(cache) == 3 and cache.evicted_early == 2
    assert not cache.first_use(f"{4:064x}", 104.0)


def test_link_messages_are_sealed_in_order_and_per_link() -> None:
    from cache_edge.common.signing import LinkOpener, LinkSealer, link_key

    key = link_key("secret", "a" * 64)
    sealer, opener = LinkSealer(key), LinkOpener(key)
    first, second = sealer.seal(b"one"), sealer.seal(b"two")
    assert opener.open(first) == b"one" and opener.open(second) == b"two"
    with pytest.raises(SignatureError):
        LinkOpener(key).open(second)  # out of order (or a replay on a new link)
    with pytest.raises(SignatureError):
        LinkOpener(link_key("secret", "b" * 64)).open(first)  # another link's key
    with pytest.raises(SignatureError):
        LinkOpener(link_key("other", "a" * 64)).open(first)  # another secret
    with pytest.raises(SignatureError):
        LinkOpener(key).open(first[:-1] + b"x")  # altered
