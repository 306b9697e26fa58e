"""The origin's HTTP face: signatures, body limits, malformed input, request ids, clean 500s."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cache_edge.common.signing import SIGNATURE_HEADER, TENANT_HEADER, sign_headers
from cache_edge.common.wire import JSON_TYPE, MSGPACK_TYPE, json_dumps, packb
from cache_edge.server.config import parse_settings
from origin.core.app import EXECUTOR
from tests.conftest import NODE_SECRET, make_settings_doc
from tests.integration.origin_helpers import OriginClient, running_origin

QUERY = {"sql": "SELECT 1", "params": [], "readOnly": True}


@pytest.fixture
async def origin(pg_databases: tuple[str, str]) -> AsyncIterator[OriginClient]:
    doc = make_settings_doc(*pg_databases, limits={"max_body_bytes": 4096})
    async with running_origin(parse_settings(doc)) as client:
        yield client


async def test_signed_query_works(origin: OriginClient) -> None:
    reply = await origin.post("/v1/query", QUERY)
    assert reply.status == 200 and reply.body["rows"] == [[1]]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"secret": None}, "missing node signature"),
        ({"secret": "wrong-secret-wrong-secret"}, "invalid node signature"),
        ({"now": time.time() - 3600}, "outside the accepted window"),
        ({"tenant": "initech"}, "unknown tenant"),
    ],
)
async def test_bad_signatures_are_unauthorized(
    origin: OriginClient, kwargs: dict[str, Any], fragment: str
) -> None:
    reply = await origin.post("/v1/query", QUERY, **kwargs)
    assert reply.status == 401
    assert reply.error["code"] == "unauthorized"
    assert fragment in reply.error["message"]
    assert "acme" not in reply.error["message"] and "globex" not in reply.error["message"]


async def test_tampered_body_or_swapped_tenant_is_unauthorized(origin: OriginClient) -> None:
    signed = packb(QUERY)
    headers = sign_headers(NODE_SECRET, "POST", "/v1/query", "acme", signed)
    other = packb({**QUERY, "sql": "SELECT 2"})
    reply = await origin.post("/v1/query", raw=other, secret=None, headers=headers)
    assert reply.status == 401
    swapped = {**headers, TENANT_HEADER: "globex"}
    reply = await origin.post("/v1/query", raw=signed, secret=None, headers=swapped)
    assert reply.status == 401
    # A signature made for another path does not open this one.
    tx_headers = sign_headers(NODE_SECRET, "POST", "/v1/transaction", "acme", signed)
    reply = await origin.post("/v1/query", raw=signed, secret=None, headers=tx_headers)
    assert reply.status == 401 and reply.error["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("raw", "fmt", "fragment"),
    [
        (b"\xc1", "msgpack", "invalid msgpack"),
        (b"{nope", "json", "invalid JSON"),
        (b"", "json", "empty request body"),
        (json_dumps([1, 2]), "json", "must be an object"),
        (json_dumps({**QUERY, "cacheStrategy": {"ttl": 5}}), "json", "unknown field"),
        (json_dumps({"sql": 5}), "json", "sql must be a string"),
        (json_dumps({"sql": "SELECT 1", "params": "x"}), "json", "params must be an array"),
        (json_dumps({"sql": "SELECT 1", "readOnly": "yes"}), "json", "readOnly"),
        (json_dumps({"sql": "   "}), "json", "sql is empty"),
        (packb({"sql": "SELECT 1", "params": [1, 2]}), "msgpack", "parameter"),
        (packb({"sql": "SELECT 1; SELECT 2"}), "msgpack", "multiple commands"),
    ],
)
async def test_malformed_input_is_a_clear_400(
    origin: OriginClient, raw: bytes, fmt: Any, fragment: str
) -> None:
    reply = await origin.post("/v1/query", raw=raw, fmt=fmt)
    assert reply.status == 400, reply.body
    assert reply.error["code"] in ("bad_request", "query_error")
    assert fragment in reply.error["message"]


async def test_malformed_transactions(origin: OriginClient) -> None:
    for body, fragment in [
        ({"statements": []}, "non-empty"),
        ({"statements": [{"sql": "SELECT 1"}], "isolationLevel": "chaos"}, "isolationLevel"),
        ({"statements": [{"sql": "SELECT 1", "readOnly": True}]}, "unknown field"),
    ]:
        reply = await origin.post("/v1/transaction", body)
        assert reply.status == 400 and fragment in reply.error["message"], reply.body


async def test_unsupported_content_type(origin: OriginClient) -> None:
    reply = await origin.post(
        "/v1/query", raw=json_dumps(QUERY), fmt="json", headers={"Content-Type": "text/plain"}
    )
    assert reply.status == 400
    assert "unsupported Content-Type" in reply.error["message"]


async def test_oversized_body_is_413_with_or_without_content_length(origin: OriginClient) -> None:
    big = packb({"sql": "SELECT $1::text", "params": ["x" * 10_000]})
    reply = await origin.post("/v1/query", raw=big)
    assert reply.status == 413 and reply.error["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    headers = {
        "Content-Type": MSGPACK_TYPE,
        **sign_headers(NODE_SECRET, "POST", "/v1/query", "acme", big),
    }
    async with origin.session.post(
        origin.base_url + "/v1/query", data=chunks(), headers=headers
    ) as resp:
        assert resp.status == 413
        assert b"payload_too_large" in await resp.read()


async def test_request_ids(origin: OriginClient) -> None:
    reply = await origin.post("/v1/query", QUERY, headers={"X-Request-Id": "node-abc.123"})
    assert reply.headers["X-Request-Id"] == "node-abc.123"
    reply = await origin.post("/v1/query", QUERY, headers={"X-Request-Id": "bad id;" + "x" * 200})
    generated = reply.headers["X-Request-Id"]
    assert generated and " " not in generated and len(generated) <= 128
    reply = await origin.post("/v1/query", QUERY, secret=None)
    assert reply.error["requestId"] == reply.headers["X-Request-Id"]


async def test_unknown_route_and_wrong_method_get_error_bodies(origin: OriginClient) -> None:
    async with origin.session.get(origin.base_url + "/v1/nothing") as resp:
        assert resp.status == 404
        body = await resp.json()
        assert body["error"]["code"] == "not_found"
        assert resp.headers["X-Request-Id"]
    async with origin.session.get(origin.base_url + "/v1/query") as resp:
        assert resp.status == 405
        assert "POST" in resp.headers["Allow"]
        assert (await resp.json())["error"]["code"] == "bad_request"


async def test_unexpected_exception_is_a_generic_500(origin: OriginClient) -> None:
    assert origin.app is not None

    async def explode(*_args: Any) -> Any:
        raise RuntimeError("secret internals: password=hunter2")

    origin.app[EXECUTOR].query = explode  # type: ignore[method-assign, assignment]
    reply = await origin.post("/v1/query", QUERY, fmt="json")
    assert reply.status == 500
    assert reply.headers["Content-Type"].startswith(JSON_TYPE)
    assert reply.error["code"] == "internal"
    assert "hunter2" not in reply.raw.decode() and "secret" not in reply.raw.decode()


async def test_accept_header_chooses_the_answer_format(origin: OriginClient) -> None:
    reply = await origin.post("/v1/query", QUERY, fmt="msgpack", headers={"Accept": JSON_TYPE})
    assert reply.headers["Content-Type"].startswith(JSON_TYPE)
    assert reply.body["rows"] == [[1]]
    reply = await origin.post(
        "/v1/query", QUERY, fmt="msgpack", headers={"Accept": JSON_TYPE, SIGNATURE_HEADER: "00"}
    )
    assert reply.status == 401 and reply.headers["Content-Type"].startswith(JSON_TYPE)
