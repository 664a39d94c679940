"""Malformed requests to `puffer serve`: each is a 4xx with {"status":"error","error":...}, never a 500,
logs no traceback, and leaves the store byte for byte as it was.

The home of malformed requests with one exact expected status (routes, auth, bodies that are not
JSON, sizes, ordinary schema errors). Hostile input (huge/deep filters, regex cost, limits at their
boundary, generated bodies) is in tests/test_fuzz_http.py."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import uuid

import orjson
import pytest
from puffer_cli.server.app import ServeConfig, create_app
from puffer_cli.store import url as _store
from starlette.testclient import TestClient

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 64 * 1024
URL = f"memory://{uuid.uuid4().hex}"


def store_state() -> dict[str, bytes]:
    st = _store.open_store(URL)
    return {k: st.read(k) for k in st.list("")}


@pytest.fixture(scope="module")
def client():
    url = URL
    app = create_app(ServeConfig(store=url, api_key=KEY, max_body_bytes=LIMIT, commit_window_ms=0))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post(
            "/v2/namespaces/ex",
            headers=AUTH,
            json={
                "upsert_rows": [{"id": 1, "vector": [0.1, 0.2], "tag": "a", "n": 1, "body": "hello world"}],
                "schema": {"body": {"type": "string", "full_text_search": True}},
            },
        )
        assert r.status_code == 200, r.text
        # the same document in an indexed namespace: bad queries must fail the same way there
        import puffer_cli
        from puffer_cli.index import builder

        ns = puffer_cli.connect(url).open_namespace("exi")
        ns.write(
            {
                "upsert_rows": [{"id": 1, "vector": [0.1, 0.2], "tag": "a", "n": 1, "body": "hello world"}],
                "schema": {"body": {"type": "string", "full_text_search": True}},
            }
        )
        assert builder.index_namespace(ns, gc_grace_s=0).status == "indexed"
        yield c
    _store.open_store(url).clear()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


W = "/v2/namespaces/ex"  # write path of an existing namespace
N = "/v2/namespaces/new-ns"  # write path of a namespace that does not exist yet

# (method, path, body (dict/list -> JSON, bytes -> raw), extra headers, expected status)
CASES = [
    # -- null / non-id ids in every write form, on a new namespace (no id type yet) and an existing one
    *[
        ("POST", path, body, {}, 400)
        for path in (N, W)
        for body in (
            {"upsert_rows": [{"id": None}]},
            {"upsert_rows": [{"id": None, "tag": "a"}]},
            {"upsert_rows": [{"id": 1}, {"id": None}]},
            {"upsert_columns": {"id": [None]}},
            {"upsert_columns": {"id": [1, None], "tag": ["a", "b"]}},
            {"patch_rows": [{"id": None, "n": 1}]},
            {"patch_columns": {"id": [None], "n": [1]}},
            {"deletes": [None]},
            {"deletes": [1, None]},
            {"upsert_rows": [{"id": 1.5}]},
            {"upsert_rows": [{"id": True}]},
        )
    ],
    ("PATCH", "/v1/namespaces/ex/metadata", b"", {}, 422),  # an empty body (docs/http.md, "Errors")
    # -- paths and methods
    ("GET", "/v2/namespaces/ex/nope", None, {}, 404),
    ("GET", "/nope", None, {}, 404),
    ("PUT", W, {}, {}, 405),
    ("GET", W, None, {}, 405),
    ("PATCH", "/v2/namespaces/ex/query", {}, {}, 405),
    ("POST", "/v2/namespaces/bad%20name%21", {"upsert_rows": [{"id": 1}]}, {}, 400),
    ("POST", "/v2/namespaces/" + "a" * 129, {"upsert_rows": [{"id": 1}]}, {}, 400),
    ("POST", "/v2/namespaces/a%00b", {"upsert_rows": [{"id": 1}]}, {}, 400),
    ("POST", "/v2/namespaces/a%0Ab", {"upsert_rows": [{"id": 1}]}, {}, 400),
    ("POST", "/v2/namespaces/%F0%9F%90%8D", {"upsert_rows": [{"id": 1}]}, {}, 400),
    ("POST", "/v2/namespaces/a%5Cb", {"upsert_rows": [{"id": 1}]}, {}, 400),
    ("POST", "/v2/namespaces/a:b", {"upsert_rows": [{"id": 1}]}, {}, 400),
    ("POST", "/v2/namespaces/bad%20name/query", {"rank_by": ["id", "asc"]}, {}, 400),
    ("GET", "/v2/namespaces/bad%20name/metadata", None, {}, 400),
    ("DELETE", "/v2/namespaces/bad%20name", None, {}, 400),
    ("GET", "/v1/namespaces?page_size=abc", None, {}, 400),
    ("GET", "/v1/namespaces?page_size=-1", None, {}, 400),
    ("GET", "/v1/namespaces?page_size=1e3", None, {}, 400),
    ("GET", "/v1/namespaces?page_size=99999999999999999999999", None, {}, 400),
    ("GET", "/v1/namespaces?page_size=0", None, {}, 400),
    ("GET", "/v1/namespaces?page_size=100000", None, {}, 400),
    ("GET", "/v2/namespaces/missing/metadata", None, {}, 404),
    ("GET", "/v1/namespaces/missing/schema", None, {}, 404),
    ("DELETE", "/v2/namespaces/missing", None, {}, 404),
    ("GET", "/v1/namespaces/missing/hint_cache_warm", None, {}, 404),
    ("POST", "/v1/namespaces/missing/schema", {"a": "int"}, {}, 404),
    # -- auth
    ("GET", "/v1/namespaces", None, {"Authorization": ""}, 401),
    ("GET", "/v1/namespaces", None, {"Authorization": "Bearer nope"}, 401),
    ("GET", "/v1/namespaces", None, {"Authorization": f"Basic {KEY}"}, 401),
    # -- bodies that are not a JSON object (422)
    ("POST", W, b"{", {}, 422),
    ("POST", W, b"", {}, 422),
    ("POST", W, b"[]", {}, 422),
    ("POST", W, b'"x"', {}, 422),
    ("POST", W, b"null", {}, 422),
    ("POST", W, b"\xff\xfe\x00", {}, 422),
    ("POST", W, b"not gzip", {"Content-Encoding": "gzip"}, 422),
    ("POST", W, gzip.compress(b'{"upsert_rows": [')[:-4], {"Content-Encoding": "gzip"}, 422),
    ("POST", W, b"{}", {"Content-Encoding": "br"}, 422),
    ("POST", "/v1/namespaces/ex/schema", b"[]", {}, 422),
    ("POST", "/v1/namespaces/ex/schema", {}, {}, 422),
    ("POST", "/v2/namespaces/ex/query", b"{oops", {}, 422),
    ("POST", W, b'{"upsert_rows": [{"id": 3}]} trailing', {}, 422),
    ("POST", W, b" \n\t ", {}, 422),
    ("POST", W, b"[" * 5000 + b"]" * 5000, {}, 422),  # deeper than any JSON parser's limit
    ("POST", W, b'{"upsert_rows": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}, 422),
    ("POST", W, b'{"upsert_rows": [{"id": 3, "v": NaN}]}', {}, 422),
    ("POST", W, b'{"upsert_rows": [{"id": 3, "v": Infinity}]}', {}, 422),
    ("POST", W, b'{"upsert_rows": [{"id": 3, "v": "\xff"}]}', {}, 422),  # invalid UTF-8 inside a string
    ("POST", W, b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 422),
    ("POST", W, gzip.compress(b"not json"), {"Content-Encoding": "gzip"}, 422),
    ("POST", W, b"{}", {"Content-Encoding": "deflate"}, 422),
    ("POST", "/v2/namespaces/ex/query", b"", {}, 422),
    ("POST", "/v2/namespaces/ex/query", b"[]", {}, 422),
    ("POST", "/v2/namespaces/ex/query", b"\x1f\x8bgarbage", {"Content-Encoding": "gzip"}, 422),
    ("POST", "/v1/namespaces/ex/_debug/recall", b"{", {}, 422),
    # -- size limit (413)
    ("POST", W, b'{"upsert_rows": [' + b'{"id": 1},' * (LIMIT // 10) + b'{"id": 2}]}', {}, 413),
    ("POST", W, gzip.compress(b" " * (LIMIT * 4) + b"{}"), {"Content-Encoding": "gzip"}, 413),
    # -- write bodies the library rejects (400)
    ("POST", W, {"upsert": []}, {}, 400),
    ("POST", W, {"upsert_rows": {}}, {}, 422),  # a field of the wrong JSON type
    ("POST", W, {"upsert_rows": [{"tag": "no id"}]}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": -1}]}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": 1.5}]}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": "string-id-in-uint-ns"}]}, {}, 400),
    ("POST", W, {"upsert_rows": [1, 2]}, {}, 422),  # a field of the wrong JSON type
    ("POST", W, {"upsert_rows": [{"id": 2, "vector": [0.1, 0.2, 0.3]}]}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": 2, "vector": "!!not base64!!"}]}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": 2, "vector": b64(b"\x00" * 7)}]}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": 2, "vector": ["a", "b"]}]}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": 2, "vector": [True, False]}]}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": 2, "vector": ["0.1", "0.2"]}]}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": 2, "vector": [None, 0.2]}]}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": 2, "vector": b64(b"\x00\x00\xc0\x7f" * 2)}]}, {}, 400),  # f32 NaN
    ("POST", W, {"upsert_rows": [{"id": 2, "n": 2**63}]}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": 2**64}]}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": 2}], "unknown_key": 1}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": 2, "n": "not an int"}]}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": 2, "$bad": 1}]}, {}, 400),
    ("POST", N, {"upsert_rows": [{"id": "x" * 65}]}, {}, 400),
    ("POST", W, {"upsert_columns": [1]}, {}, 422),  # a field of the wrong JSON type
    ("POST", W, {"upsert_columns": {"id": [1, 2], "tag": ["a"]}}, {}, 400),
    ("POST", W, {"patch_rows": {"id": 1}}, {}, 422),  # a field of the wrong JSON type
    ("POST", W, {"patch_rows": [{"id": 1, "n": "x"}]}, {}, 400),
    ("POST", W, {"deletes": 5}, {}, 422),  # a field of the wrong JSON type
    ("POST", W, {"deletes": ["not-a-uint"]}, {}, 400),
    ("POST", W, {"distance_metric": "dot_product", "upsert_rows": [{"id": 3}]}, {}, 400),
    ("POST", W, {"distance_metric": "euclidean_squared"}, {}, 400),  # metric cannot change
    ("POST", W, {"schema": {"a": "complex128"}}, {}, 400),
    ("POST", W, {"schema": {"tag": "int"}}, {}, 400),  # type change
    ("POST", W, {"schema": [1]}, {}, 422),  # a field of the wrong JSON type
    ("POST", W, {"delete_by_filter": ["tag", "Foo", 1]}, {}, 400),
    ("POST", W, {"delete_by_filter": ["n", "In", 1]}, {}, 400),
    ("POST", W, {"delete_by_filter": "tag = a"}, {}, 422),  # a field of the wrong JSON type
    ("POST", W, {"patch_by_filter": {"filters": ["tag", "Eq", "a"]}}, {}, 400),
    ("POST", W, {"patch_by_filter": {"filters": ["tag", "Eq", "a"], "patch": {"id": 9}}}, {}, 400),
    ("POST", W, {"upsert_rows": [{"id": 1}], "upsert_condition": ["n", "Gt"]}, {}, 400),
    ("POST", W, {"copy_from_namespace": 5}, {}, 422),  # a field of the wrong JSON type
    ("POST", W, {"copy_from_namespace": "does-not-exist"}, {}, 404),
    ("POST", W, {"copy_from_namespace": {"source_namespace": "ex", "source_region": "gcp-us"}}, {}, 400),
    ("POST", W, {"branch_from_namespace": "ex", "deletes": [1]}, {}, 400),
    ("POST", "/v1/namespaces/ex/schema", {"n": "string"}, {}, 400),
    ("POST", "/v1/namespaces/ex/schema", {"x": {"type": "int", "bogus": 1}}, {}, 400),
]

QUERY_CASES = [
    {"rank_by": "nonsense"},
    {"rank_by": ["vector", "ANN"]},
    {"rank_by": ["vector", "ANN", [0.1, 0.2, 0.3]]},
    {"rank_by": ["vector", "ANN", "@@@"]},
    {"rank_by": ["vector", "Foo", [0.1, 0.2]]},
    {"rank_by": ["tag", "BM25", "hello"]},  # tag has no full-text search
    {"rank_by": ["body", "BM25", 5]},
    {"rank_by": ["Sum", "x"]},
    {"rank_by": ["n", "sideways"]},
    {"rank_by": ["n", "asc"], "top_k": 0},
    {"rank_by": ["n", "asc"], "top_k": "ten"},
    {"rank_by": ["n", "asc"], "top_k": 10**9},
    {"rank_by": ["n", "asc"], "filters": ["tag", "Eq"]},
    {"rank_by": ["n", "asc"], "filters": ["And", "x"]},
    {"rank_by": ["n", "asc"], "filters": ["n", "Glob", 5]},
    {"rank_by": ["n", "asc"], "include_attributes": 5},
    {"rank_by": ["n", "asc"], "consistency": {"level": "sometimes"}},
    {"rank_by": ["n", "asc"], "vector_encoding": "hex"},
    {"rank_by": ["n", "asc"], "bogus_key": 1},
    {"aggregate_by": {"c": ["Median", "n"]}},
    {"aggregate_by": {"c": ["Count"]}, "group_by": [5]},
    {"queries": "not a list"},
    {"queries": [{"rank_by": ["n", "asc"]}] * 100},
    {"queries": [{"rank_by": ["n", "asc"], "top_k": -1}]},
    {"rank_by": ["vector", "ANN", [0.1, 0.2, 0.3]], "consistency": {"level": "eventual"}},
    {"rank_by": ["vector", "kNN", [0.1, 0.2, 0.3]], "filters": ["tag", "Eq", "a"]},
    {"rank_by": ["vector", "ANN", [1e300, 0.2]]},
    {"rank_by": ["body", "BM25", "hello"], "filters": ["n", "Eq", "x"]},
    {"rank_by": ["Sum", [["body", "BM25", "hello"], ["tag", "BM25", "a"]]]},
    {"queries": [{"rank_by": ["vector", "ANN", [0.1]]}, {"rank_by": ["body", "BM25", "hello"]}]},
    {"rank_by": ["vector", "ANN", [True, False]]},
    {"rank_by": ["vector", "ANN", ["0.1", "0.2"]]},
    {"rank_by": ["vector", "ANN", [None, 0.2]]},
    {"rank_by": ["vector", "ANN", b64(b"\x00\x00\xc0\x7f" * 2)]},  # f32 NaN
    {"rank_by": ["n", "asc"], "top_k": 2**64},
    {"rank_by": ["n", "asc"], "top_k": 1.5},
    {"rank_by": ["n", "asc"], "top_k": True},
    {"rank_by": ["n", "asc"], "filters": ["n", "Regex", "(unclosed"]},
    {"rank_by": ["n", "asc"], "include_attributes": [5]},
    {"rank_by": ["n", "asc"], "queries": [{"rank_by": ["n", "asc"]}]},  # both a query and a multi-query
    {"queries": [5]},
    {"queries": [{"rank_by": ["n", "asc"], "bogus_key": 1}]},
]


def _dumps(body) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(body).encode()


def _send(client, method, path, body, headers):
    h = {**AUTH, **headers}
    if h.get("Authorization") == "":
        del h["Authorization"]
    if body is None:
        return client.request(method, path, headers=h)
    raw = body if isinstance(body, bytes) else _dumps(body)
    return client.request(method, path, content=raw, headers=h)


def _check(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"status", "error"} and body["status"] == "error"
    assert isinstance(body["error"], str) and body["error"]


def _no_traceback(caplog):
    bad = [
        f"{r.name} {r.levelname}: {r.getMessage()[:200]}"
        for r in caplog.records
        if r.exc_info or r.levelno >= logging.ERROR
    ]
    assert not bad, bad


@pytest.mark.parametrize(
    "method,path,body,headers,status", CASES, ids=[f"{i}-{c[0]}-{c[1][:30]}" for i, c in enumerate(CASES)]
)
def test_bad_request(client, caplog, method, path, body, headers, status):
    before = store_state()
    with caplog.at_level(logging.DEBUG):
        _check(_send(client, method, path, body, headers), status)
    _no_traceback(caplog)
    assert store_state() == before, "a refused request changed the store"


@pytest.mark.parametrize("ns", ["ex", "exi"])  # replayed WAL, and an index
@pytest.mark.parametrize("body", QUERY_CASES, ids=[str(i) for i in range(len(QUERY_CASES))])
def test_bad_query(client, caplog, body, ns):
    before = store_state()
    with caplog.at_level(logging.DEBUG):
        r = _send(client, "POST", f"/v2/namespaces/{ns}/query", body, {})
    assert 400 <= r.status_code < 500, r.text
    _check(r, r.status_code)
    _no_traceback(caplog)
    assert store_state() == before, "a refused query changed the store"


def test_namespace_untouched_by_bad_writes(client):
    r = client.get("/v2/namespaces/ex/metadata", headers=AUTH)
    assert r.status_code == 200 and r.json()["approx_row_count"] == 1
    assert client.get("/v2/namespaces/new-ns/metadata", headers=AUTH).status_code == 404
