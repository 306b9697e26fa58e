"""Property: no hostile body or header makes a running node or origin fail (5xx) or leak internals.

Hypothesis throws generated requests at real server processes: random bytes,
random JSON and msgpack structures (wrong types, huge and odd numbers, unknown
extension types, deep nesting), plausible request shapes with wrong values,
odd content types and odd Authorization headers. Every answer must be a 4xx or
a 2xx, never a 5xx or a traceback; afterwards both servers still answer a
normal query and the origin's pools are idle again.
"""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache_edge.common.signing import sign_headers
from tests.conftest import API_KEY_A, NODE_SECRET
from tests.integration.node_helpers import node_doc
from tests.integration.security_helpers import metric_value
from tests.integration.stack import Server, running_stack

LIMITS = {"max_body_bytes": 65536, "max_params": 20, "max_string_length": 2000}

pytestmark = pytest.mark.slow


@dataclass
class Target:
    server: Server
    conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes, headers: dict[str, bytes]
    ) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
            try:
                self.conn.putrequest(method, path, skip_accept_encoding=True)
                for name, value in headers.items():
                    self.conn.putheader(name, value)
                self.conn.putheader("Content-Length", str(len(body)))
                self.conn.endheaders(body)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, data
            except (TimeoutError, ConnectionError, http.client.HTTPException):
                # The server may close a connection after an error answer; reconnect once.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], flushed_redis: str
) -> Iterator[tuple[Target, Target]]:
    doc = node_doc(pg_databases, flushed_redis, limits=LIMITS)
    with running_stack(tmp_path_factory.mktemp("fuzz"), doc, [("fuzz", None)]) as stack:
        assert stack.origin is not None
        targets = (Target(stack.nodes()[0]), Target(stack.origin))
        try:
            yield targets
        finally:
            for t in targets:
                t.close()
            logs = stack.dump_logs()
    assert "Traceback" not in logs, logs[-3000:]


# ------------------------------------------------------------------------ strategies

_SQL = [
    "SELECT 1", "SELECT $1", "SELECT $1::int", "SELECT $1::int8", "SELECT $1::numeric",
    "SELECT $1::float8", "SELECT $1::text", "SELECT $1::jsonb", "SELECT $1::json",
    "SELECT $1::int[]", "SELECT $1::text[]", "SELECT $1::bool", "SELECT $1::date",
    "SELECT $1::timestamptz", "SELECT $1::timestamp", "SELECT $1::time", "SELECT $1::interval",
    "SELECT $1::uuid", "SELECT $1::bytea", "SELECT $1, $2", "SELECT $2", "", " ", "SELEC",
    "SELECT current_database()", "SELECT generate_series(1, 3)", "SELECT 1/0",
]  # fmt: skip
_KEYS = [
    "sql", "params", "cacheStrategy", "statements", "isolationLevel", "tags", "all",
    "readOnly", "minWatermark", "id", "ttl", "swr", "staleIfError", "", "\x00", "sql ",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(_SQL),
)
msgpack_scalars = st.one_of(
    scalars,
    st.binary(max_size=40),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=20)),
)


def _trees(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=6),
            st.dictionaries(
                st.one_of(st.sampled_from(_KEYS), st.text(max_size=8)), children, max_size=6
            ),
        ),
        max_leaves=30,
    )


plausible = st.fixed_dictionaries(
    {},
    optional={
        "sql": st.one_of(st.sampled_from(_SQL), scalars),
        "params": st.one_of(st.lists(_trees(msgpack_scalars), max_size=4), _trees(msgpack_scalars)),
        "cacheStrategy": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {},
                optional={
                    "ttl": st.one_of(st.integers(-5, 2**40), scalars),
                    "swr": st.one_of(st.integers(-5, 100), scalars),
                    "tags": st.one_of(st.lists(st.text(max_size=70), max_size=7), scalars),
                    "staleIfError": st.one_of(st.integers(-5, 100), scalars),
                },
            ),
            _trees(scalars),
        ),
        "statements": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"sql": st.sampled_from(_SQL)},
                    optional={"params": st.lists(msgpack_scalars, max_size=3)},
                ),
                max_size=4,
            ),
            _trees(scalars),
        ),
        "isolationLevel": st.one_of(st.sampled_from(["serializable", "read_committed"]), scalars),
        "tags": st.one_of(
            st.lists(st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True), max_size=3), scalars
        ),
        "all": st.one_of(st.booleans(), scalars),
        "readOnly": st.one_of(st.booleans(), scalars),
        "minWatermark": st.one_of(st.integers(-5, 2**40), scalars),
        "id": scalars,
    },
)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True, default=repr).encode("utf-8", "surrogatepass")


def _msgpack_bytes(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    kind = draw(
        st.sampled_from(["bytes", "json", "msgpack", "plausible-json", "plausible-msgpack"])
    )
    if kind == "bytes":
        return draw(st.binary(max_size=300)), draw(content_types)
    if kind == "json":
        return _json_bytes(draw(_trees(scalars))), "application/json"
    if kind == "msgpack":
        return _msgpack_bytes(draw(_trees(msgpack_scalars))), "application/msgpack"
    value = draw(plausible)
    if isinstance(value.get("params"), list):
        value["params"] = [p for p in value["params"]]
    if kind == "plausible-json":
        value = _jsonable(value)
        return _json_bytes(value), draw(st.sampled_from(["application/json", "text/json", ""]))
    return _msgpack_bytes(value), draw(
        st.sampled_from(["application/msgpack", "application/x-msgpack"])
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, msgpack.ExtType)):
        return repr(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**64:
        return math.inf
    return value


content_types = st.sampled_from(
    ["application/json", "application/msgpack", "text/plain", "", "application/json; charset=utf-16",
     "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "*/*", "application/msgpack;;"]
)  # fmt: skip
header_bytes = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
authorizations = st.one_of(
    st.just(f"Bearer {API_KEY_A}".encode()),
    st.just(f"Bearer {API_KEY_A}".encode()),
    st.just(f"bearer   {API_KEY_A}  ".encode()),
    header_bytes,
    header_bytes.map(lambda b: b"Bearer " + b),
    st.just(b"Bearer " + b"a" * 5000),
    st.just(b""),
    st.none(),
)
node_paths = st.one_of(
    st.sampled_from(["/v1/query"] * 4 + ["/v1/transaction", "/v1/invalidate", "/v1/query/"]),
    st.from_regex(r"/v1/invalidations/[A-Za-z0-9%._-]{0,40}", fullmatch=True),
    st.from_regex(r"/[a-z0-9/%._-]{0,30}", fullmatch=True),
)
origin_paths = st.sampled_from(
    [
        "/v1/query",
        "/v1/query",
        "/v1/transaction",
        "/v1/invalidations",
        "/v1/invalidations/status",
        "/v1/x",
    ]
)


def _check(status: int, data: bytes, what: Any) -> None:
    assert status < 500, (status, data[:500], what)
    assert b"Traceback" not in data and b'File "' not in data, (data[:500], what)


# --------------------------------------------------------------------------- the properties


@settings(
    max_examples=1000,
    deadline=None,
    database=None,  # fresh examples each run, and no .hypothesis/ in the work tree
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(
    method=st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE"]),
    path=node_paths,
    body=bodies(),
    authorization=authorizations,
    accept=st.one_of(st.none(), content_types),
    extra=st.dictionaries(st.sampled_from(["X-Request-Id", "X-Cache-Edge-Tenant", "X-Cache-Edge-Signature", "Cookie"]), header_bytes, max_size=2),
)  # fmt: skip
def test_hostile_requests_never_break_the_node(
    servers: tuple[Target, Target],
    method: str,
    path: str,
    body: tuple[bytes, str],
    authorization: bytes | None,
    accept: str | None,
    extra: dict[str, bytes],
) -> None:
    node, _ = servers
    data, ctype = body
    headers = {k: v for k, v in extra.items()}
    if ctype:
        headers["Content-Type"] = ctype.encode()
    if accept is not None:
        headers["Accept"] = accept.encode()
    if authorization is not None:
        headers["Authorization"] = authorization
    if path == "/v1/invalidate" and data.startswith(b"{"):
        data = data[:-1] + (b', "wait": 0}' if len(data) > 2 else b'"wait": 0}')  # never wait
    status, answer = node.request(method, path, data, headers)
    _check(status, answer, (method, path, data[:200], headers))


@settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(
    path=origin_paths,
    body=bodies(),
    signed=st.sampled_from([True, True, True, False]),
    tenant=st.sampled_from(["acme", "acme", "globex", "nobody", ""]),
    accept=st.one_of(st.none(), content_types),
)  # fmt: skip
def test_hostile_bodies_from_a_signing_node_never_break_the_origin(
    servers: tuple[Target, Target],
    path: str,
    body: tuple[bytes, str],
    signed: bool,
    tenant: str,
    accept: str | None,
) -> None:
    """Even a node (holding the secret) that sends garbage gets 4xx answers only."""
    _, origin = servers
    data, ctype = body
    headers: dict[str, bytes] = {}
    if ctype:
        headers["Content-Type"] = ctype.encode()
    if accept is not None:
        headers["Accept"] = accept.encode()
    if signed:
        for name, value in sign_headers(NODE_SECRET, "POST", path, tenant, data).items():
            headers[name] = value.encode()
    status, answer = origin.request("POST", path, data, headers)
    _check(status, answer, (path, data[:200], headers))


# /sql (the Neon-compatible door): Neon's body shapes with wrong values, and its headers.
_NEON_HEADERS = [
    "Neon-Array-Mode", "Neon-Raw-Text-Output", "Neon-Batch-Isolation-Level",
    "Neon-Batch-Read-Only", "Neon-Batch-Deferrable",
]  # fmt: skip
_GOOD_CONN = f"postgresql://acme:{API_KEY_A}@node.example/cache_edge_test".encode()
# Values HTTP allows in a header (malformed HTTP itself is the property above's business:
# aiohttp's parser answers it before any handler runs).
field_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(
    str.encode
)
neon_queries = st.fixed_dictionaries(
    {"query": st.one_of(st.sampled_from(_SQL), scalars)},
    optional={"params": st.one_of(st.lists(scalars, max_size=4), scalars, _trees(scalars))},
)
neon_bodies = st.one_of(
    neon_queries.map(_json_bytes),
    st.fixed_dictionaries({"queries": st.lists(neon_queries, max_size=5)}).map(_json_bytes),
    st.fixed_dictionaries({"queries": st.one_of(scalars, _trees(scalars))}).map(_json_bytes),
    _trees(scalars).map(_json_bytes),
    st.binary(max_size=300),
)
connection_strings = st.one_of(
    st.just(_GOOD_CONN),
    st.just(_GOOD_CONN),
    st.just(f"postgresql://globex:{API_KEY_A}@h/cache_edge_test_b".encode()),
    st.just(b"postgresql://acme@h/cache_edge_test"),
    st.just(b"postgresql://acme:" + b"k" * 30_000 + b"@h/db"),
    field_values,
    field_values.map(lambda b: b"postgresql://" + b),
    st.none(),
)


@settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(
    body=neon_bodies,
    connection=connection_strings,
    authorization=authorizations,
    flags=st.dictionaries(st.sampled_from(_NEON_HEADERS), st.one_of(st.sampled_from([b"true", b"false", b"Serializable", b"ReadCommitted"]), field_values), max_size=4),
    ctype=content_types,
)  # fmt: skip
def test_hostile_sql_requests_get_neon_errors(
    servers: tuple[Target, Target],
    body: bytes,
    connection: bytes | None,
    authorization: bytes | None,
    flags: dict[str, bytes],
    ctype: str,
) -> None:
    """Whatever arrives at /sql, the answer is a 2xx or a 4xx in Neon's error shape."""
    node, _ = servers
    headers = dict(flags)
    if connection is not None:
        headers["Neon-Connection-String"] = connection
    if authorization is not None and all(0x20 <= c < 0x7F for c in authorization):
        headers["Authorization"] = authorization
    if ctype:
        headers["Content-Type"] = ctype.encode()
    status, answer = node.request("POST", "/sql", body, headers)
    _check(status, answer, ("/sql", body[:200], headers))
    if status >= 400 and status != 429:
        error = json.loads(answer)
        assert isinstance(error["message"], str) and error["message"], error
        assert len(error["code"]) == 5, error  # a SQLSTATE


def test_both_still_serve_and_the_pools_are_idle(servers: tuple[Target, Target]) -> None:
    """Runs after the properties (file order): nothing broke, nothing leaked."""
    node, origin = servers
    body = json.dumps({"sql": "SELECT 41 + 1 AS answer"}).encode()
    status, answer = node.request(
        "POST", "/v1/query", body,
        {"Authorization": f"Bearer {API_KEY_A}".encode(), "Content-Type": b"application/json"},
    )  # fmt: skip
    assert status == 200 and json.loads(answer)["rows"] == [[42]]
    import time

    deadline = time.monotonic() + 15
    while True:
        status, metrics = origin.request("GET", "/metrics", b"", {})
        text = metrics.decode()
        busy = [
            (tenant, gauge)
            for tenant in ("acme", "globex")
            for gauge in ("in_use", "waiting")
            if metric_value(text, f"cache_edge_origin_pool_{gauge}", tenant=tenant) != 0
        ]
        if not busy:
            break
        assert time.monotonic() < deadline, busy
        time.sleep(0.2)
    for target in (node, origin):
        assert target.server.proc is not None and target.server.proc.poll() is None
