"""`puffer query --format json` prints exactly the HTTP body of the same query.

Both go through :func:`puffer_cli.search.response.render`.  The CLI runs in-process (``cli.main``), the
server through starlette's in-process ASGI client, over the same local store.  The only fields
allowed to differ are the ``performance`` timings (:data:`TIMING`): wall-clock milliseconds.
"""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import orjson
import pytest
from puffer_cli.search import response
from puffer_cli.server.app import ServeConfig, create_app
from starlette.testclient import TestClient

from .test_fuzz_cli import invoke

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
NS = "resp"

#: performance fields that legitimately differ between two runs of one query (elapsed time)
TIMING = {"query_execution_ms", "server_total_ms"}

WORDS = ["quick brown fox", "lazy dog", "quick dog", "brown cat", "fox dog"]


def make_doc(i: int) -> dict:
    d = {
        "id": i,
        "vector": [math.cos(i) * 0.7, math.sin(i) * 0.3, i / 7, 0.1],
        "tag": ["red", "green", "blue"][i % 3],
        "n": i,
        "f": i * 0.1,
        "tags": [f"t{i % 4}", f"t{i % 5}"],
        "text": f"{WORDS[i % 5]} {['alpha', 'beta'][i % 2]}",
        "at": f"2024-0{1 + i % 9}-1{i % 10}T0{i % 10}:30:00.{i:03d}Z",
    }
    if i % 4 == 0:
        del d["f"]  # nulls are omitted
    return d


QV = [0.5, -0.2, 0.3, 0.1]
QUERIES = {
    "ann": {"rank_by": ["vector", "ANN", QV], "top_k": 5},
    "knn_all": {"rank_by": ["vector", "kNN", QV], "top_k": 4, "include_attributes": True},
    "bm25": {"rank_by": ["text", "BM25", "quick fox"], "top_k": 5, "include_attributes": ["text", "f"]},
    "order": {"rank_by": ["f", "desc"], "top_k": 6, "include_attributes": ["f", "at", "vector"]},
    "filters": {
        "rank_by": ["id", "asc"],
        "filters": ["And", [["tag", "Eq", "red"], ["n", "Gt", 2]]],
        "include_attributes": ["tag", "at"],
    },
    "base64": {
        "rank_by": ["vector", "kNN", QV],
        "top_k": 3,
        "include_attributes": ["vector", "at"],
        "vector_encoding": "base64",
    },
    "exclude": {"rank_by": ["id", "desc"], "top_k": 3, "exclude_attributes": ["text"]},
    "aggregate": {"aggregate_by": {"count": ["Count"], "total": ["Sum", "f"]}},
    "group_by": {
        "aggregate_by": {"count": ["Count"], "total": ["Sum", "f"]},
        "group_by": ["tag"],
        "filters": ["n", "Lt", 15],
    },
    "multi": {
        "queries": [
            {"rank_by": ["vector", "ANN", QV], "top_k": 3, "include_attributes": ["vector"]},
            {"rank_by": ["text", "BM25", "dog"], "top_k": 3},
            {"aggregate_by": {"count": ["Count"]}},
        ]
    },
    "multi_base64": {
        "queries": [{"rank_by": ["vector", "kNN", QV], "top_k": 2, "include_attributes": ["vector"]}],
        "vector_encoding": "base64",
    },
    "rrf": {
        "queries": [
            {"rank_by": ["vector", "ANN", QV], "top_k": 4, "include_attributes": ["at"]},
            {"rank_by": ["text", "BM25", "quick"], "top_k": 4, "include_attributes": ["at"]},
        ],
        "rerank_by": ["RRF"],
    },
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("resp") / "store")
    with TestClient(
        create_app(ServeConfig(store=store, api_key=KEY, commit_window_ms=0)), raise_server_exceptions=False
    ) as c:
        r = c.post(
            f"/v2/namespaces/{NS}",
            headers=AUTH,
            json={
                "upsert_rows": [make_doc(i) for i in range(20)],
                "distance_metric": "cosine_distance",
                "schema": {"text": {"type": "string", "full_text_search": True}, "at": {"type": "datetime"}},
            },
        )
        assert r.status_code == 200, r.text
        yield c, store


def untimed(body: dict) -> dict:
    body = dict(body)
    perf = body.get("performance")
    assert isinstance(perf, dict) and set(perf) >= TIMING, body
    body["performance"] = {k: v for k, v in perf.items() if k not in TIMING}
    return body


def http(c, body: dict) -> tuple[bytes, dict]:
    path = f"/v2/namespaces/{NS}/" + ("multi-query" if "queries" in body else "query")
    r = c.post(path, headers=AUTH, json=body)
    assert r.status_code == 200, r.text
    return r.content, orjson.loads(r.content)


def cli(store: str, body: dict, fmt: str = "json") -> str:
    code, out, err = invoke(["query", NS, "--body", json.dumps(body), "--format", fmt, "--store", store])
    assert code == 0, err
    return out


@pytest.mark.parametrize("name", list(QUERIES))
def test_cli_json_is_the_http_body(env, name):
    c, store = env
    body = QUERIES[name]
    http(c, body)  # both runs below see warm caches
    cli(store, body)
    _, want = http(c, body)
    got = orjson.loads(cli(store, body))
    assert untimed(got) == untimed(want)
    if name in ("base64", "multi_base64"):
        rows = want.get("rows") or want["results"][0]["rows"]
        assert all(isinstance(r["vector"], str) for r in rows)
        v = np.frombuffer(base64.b64decode(rows[0]["vector"]), "<f4")
        assert len(v) == 4


def test_the_wire_form(env):
    """f32 quantities in their shortest form, f64 attributes left alone, RFC 3339 datetimes."""
    c, store = env
    raw, want = http(c, QUERIES["knn_all"])
    text = cli(store, QUERIES["knn_all"])
    row = want["rows"][0]

    def f32_shortest(x) -> bool:
        return isinstance(x, float) and repr(x) == str(np.float32(x))

    assert f32_shortest(row["$dist"]) and all(f32_shortest(x) for x in row["vector"])
    assert repr(row["$dist"]).encode() in raw and repr(row["$dist"]) in text
    assert row["at"].endswith("Z") and "T" in row["at"]
    f = next(r for r in want["rows"] if "f" in r)
    assert repr(f["f"]) in text and repr(f["f"]).encode() in raw  # f64 kept as is (e.g. 0.30000000000000004)
    for name in ("order", "filters"):
        for r in http(c, QUERIES[name])[1]["rows"]:
            assert set(r) >= {"id"} and all(v is not None for v in r.values())


def test_ndjson_rows_are_the_http_rows(env):
    c, store = env
    for name in ("knn_all", "group_by", "multi"):
        body = QUERIES[name]
        _, want = http(c, body)
        lines = [orjson.loads(x) for x in cli(store, body, "ndjson").splitlines()]
        expect = []
        for r in want.get("results", [want]):
            expect += r.get("rows", [])
            if "aggregations" in r:
                expect.append({"aggregations": r["aggregations"]})
            expect += r.get("aggregation_groups", [])
        assert lines == expect, name


def test_non_finite_numbers_are_null():
    out = response.render(
        {
            "rows": [{"id": 1, "$dist": float("nan"), "vector": [float("inf"), 0.7], "f": -math.inf}],
            "aggregations": {"s": float("nan")},
        },
        ["vector"],
    )
    assert orjson.loads(out) == {
        "rows": [{"id": 1, "$dist": None, "vector": [None, 0.7], "f": None}],
        "aggregations": {"s": None},
    }
