"""Queries through `puffer serve` with the official turbopuffer client (real socket)."""

from __future__ import annotations

import base64
import math
import re
import uuid

import httpx
import numpy as np
import pytest
import turbopuffer
from puffer_cli.server.app import ServeConfig

from .test_server import KEY, LiveServer

pytest.importorskip("puffer_cli.search.engine")

WORDS = ["quick brown fox", "lazy dog", "quick dog", "brown cat", "fox dog"]
N = 20


def make_doc(i: int) -> dict:
    return {
        "id": i,
        "vector": [math.cos(i), math.sin(i), i / 20, 1.0],
        "tag": ["red", "green", "blue"][i % 3],
        "n": i,
        "f": i * 0.5,
        "name": f"Item-{i:02d}",
        "tags": [f"t{i % 4}", f"t{i % 5}"],
        "nums": [i, i + 10],
        "text": f"{WORDS[i % 5]} {['alpha', 'beta'][i % 2]}",
    }


DOCS = [make_doc(i) for i in range(N)]
SCHEMA = {"text": {"type": "string", "full_text_search": True}, "name": {"type": "string", "regex": True}}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    s = LiveServer(ServeConfig(store=str(tmp_path_factory.mktemp("q") / "store"), api_key=KEY))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ns(live):
    tp = turbopuffer.Turbopuffer(base_url=live.url, api_key=KEY, max_retries=0)
    ns = tp.namespace("q-" + uuid.uuid4().hex[:8])
    ns.write(upsert_rows=DOCS, distance_metric="cosine_distance", schema=SCHEMA)
    return ns


def ids(resp) -> list:
    return [r.id for r in resp.rows]


def tokens(text: str) -> list[str]:
    return text.lower().split()


def where(pred) -> list[int]:
    return [d["id"] for d in DOCS if pred(d)]


FILTERS = [
    (["tag", "Eq", "red"], lambda d: d["tag"] == "red"),
    (["tag", "NotEq", "red"], lambda d: d["tag"] != "red"),
    (["n", "In", [1, 2, 3]], lambda d: d["n"] in (1, 2, 3)),
    (["n", "NotIn", [1, 2, 3]], lambda d: d["n"] not in (1, 2, 3)),
    (["n", "Lt", 5], lambda d: d["n"] < 5),
    (["n", "Lte", 5], lambda d: d["n"] <= 5),
    (["f", "Gt", 7.5], lambda d: d["f"] > 7.5),
    (["f", "Gte", 7.5], lambda d: d["f"] >= 7.5),
    (["name", "Glob", "Item-1*"], lambda d: d["name"].startswith("Item-1")),
    (["name", "NotGlob", "Item-1*"], lambda d: not d["name"].startswith("Item-1")),
    (["name", "IGlob", "item-0*"], lambda d: d["name"].lower().startswith("item-0")),
    (["name", "NotIGlob", "item-0*"], lambda d: not d["name"].lower().startswith("item-0")),
    (["name", "Regex", "^Item-0[0-4]$"], lambda d: re.match(r"^Item-0[0-4]$", d["name"]) is not None),
    (["tags", "Contains", "t1"], lambda d: "t1" in d["tags"]),
    (["tags", "NotContains", "t1"], lambda d: "t1" not in d["tags"]),
    (["tags", "ContainsAny", ["t1", "t2"]], lambda d: bool({"t1", "t2"} & set(d["tags"]))),
    (["tags", "NotContainsAny", ["t1", "t2"]], lambda d: not ({"t1", "t2"} & set(d["tags"]))),
    (["nums", "AnyLt", 3], lambda d: any(x < 3 for x in d["nums"])),
    (["nums", "AnyLte", 3], lambda d: any(x <= 3 for x in d["nums"])),
    (["nums", "AnyGt", 25], lambda d: any(x > 25 for x in d["nums"])),
    (["nums", "AnyGte", 25], lambda d: any(x >= 25 for x in d["nums"])),
    (["text", "ContainsAllTokens", "quick fox"], lambda d: {"quick", "fox"} <= set(tokens(d["text"]))),
    (["text", "ContainsAnyToken", "cat lazy"], lambda d: bool({"cat", "lazy"} & set(tokens(d["text"])))),
    (["text", "ContainsTokenSequence", "brown fox"], lambda d: "brown fox" in d["text"]),
    (["And", [["tag", "Eq", "red"], ["n", "Gt", 5]]], lambda d: d["tag"] == "red" and d["n"] > 5),
    (["Or", [["tag", "Eq", "red"], ["n", "Lt", 2]]], lambda d: d["tag"] == "red" or d["n"] < 2),
    (["Not", ["tag", "Eq", "red"]], lambda d: d["tag"] != "red"),
]


@pytest.mark.parametrize(
    "flt,pred", FILTERS, ids=[f[0][1] if f[0][0] not in ("And", "Or", "Not") else f[0][0] for f in FILTERS]
)
def test_filters_every_operator(ns, flt, pred):
    r = ns.query(rank_by=["n", "asc"], filters=flt, top_k=100)
    assert ids(r) == where(pred)


def test_order_by_attribute(ns):
    r = ns.query(rank_by=["f", "desc"], top_k=5, include_attributes=["f", "tag"])
    assert ids(r) == [19, 18, 17, 16, 15]
    assert r.rows[0].f == 9.5 and r.rows[0].tag == "green"
    r = ns.query(rank_by=["tag", "asc"], top_k=3)
    assert ids(r) == [2, 5, 8]  # "blue", ties broken by id


def _cos_dist(q):
    X = np.array([d["vector"] for d in DOCS], dtype=np.float32)
    q = np.asarray(q, dtype=np.float32)
    return 1 - (X @ q) / (np.linalg.norm(X, axis=1) * np.linalg.norm(q))


@pytest.mark.parametrize("kind", ["kNN", "ANN"])
def test_vector_search(ns, kind):
    q = [0.3, -0.2, 0.5, 1.0]
    r = ns.query(rank_by=["vector", kind, q], top_k=5, include_attributes=True)
    d = _cos_dist(q)
    want = list(np.argsort(d, kind="stable")[:5])
    assert ids(r) == want
    assert np.allclose([row["$dist"] for row in r.rows], d[want], atol=1e-5)
    assert r.rows[0].tag == DOCS[want[0]]["tag"] and len(r.rows[0].vector) == 4
    assert r.performance.approx_namespace_size == N
    r = ns.query(rank_by=["vector", kind, q], top_k=3, filters=["tag", "Eq", "blue"])
    assert ids(r) == [int(i) for i in np.argsort(d, kind="stable") if DOCS[i]["tag"] == "blue"][:3]


def test_f32_floats_and_base64_vectors_on_the_wire(live, ns):
    name = ns.id + "-f32"
    hdr = {"Authorization": f"Bearer {KEY}"}
    tp = turbopuffer.Turbopuffer(base_url=live.url, api_key=KEY, max_retries=0)
    tp.namespace(name).write(upsert_rows=[{"id": 1, "vector": [0.7, 0.1, 0.3], "score": 0.1}])
    raw = httpx.post(
        f"{live.url}/v2/namespaces/{name}/query",
        headers=hdr,
        json={"rank_by": ["vector", "kNN", [0.7, 0.1, 0.3]], "top_k": 1, "include_attributes": True},
    )
    assert raw.status_code == 200
    assert '"vector":[0.7,0.1,0.3]' in raw.text, raw.text
    assert '"score":0.1' in raw.text
    dist = raw.json()["rows"][0]["$dist"]
    assert abs(dist) < 1e-6
    raw = httpx.post(
        f"{live.url}/v2/namespaces/{name}/query",
        headers=hdr,
        json={"rank_by": ["id", "asc"], "include_attributes": ["vector"], "vector_encoding": "base64"},
    )
    v = raw.json()["rows"][0]["vector"]
    assert isinstance(v, str)
    assert np.frombuffer(base64.b64decode(v), "<f4").tolist() == np.float32([0.7, 0.1, 0.3]).tolist()


def _bm25_ids(text):
    q = set(tokens(text))
    return {d["id"] for d in DOCS if q & set(tokens(d["text"]))}


def test_bm25_and_text_combinators(ns):
    r = ns.query(rank_by=["text", "BM25", "quick fox"], top_k=N)
    assert set(ids(r)) == _bm25_ids("quick fox")
    scores = [row["$dist"] for row in r.rows]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    both = {d["id"] for d in DOCS if {"quick", "fox"} <= set(tokens(d["text"]))}
    assert set(ids(r)[: len(both)]) == both  # docs with both terms rank first

    quick = {row.id: row["$dist"] for row in ns.query(rank_by=["text", "BM25", "quick"], top_k=N).rows}
    fox = {row.id: row["$dist"] for row in ns.query(rank_by=["text", "BM25", "fox"], top_k=N).rows}
    s = ns.query(rank_by=["Sum", [["text", "BM25", "quick"], ["text", "BM25", "fox"]]], top_k=N)
    for row in s.rows:
        assert row["$dist"] == pytest.approx(quick.get(row.id, 0) + fox.get(row.id, 0), rel=1e-5)
    m = ns.query(rank_by=["Max", [["text", "BM25", "quick"], ["text", "BM25", "fox"]]], top_k=N)
    for row in m.rows:
        assert row["$dist"] == pytest.approx(max(quick.get(row.id, 0), fox.get(row.id, 0)), rel=1e-5)
    p = ns.query(rank_by=["Product", 2.0, ["text", "BM25", "quick"]], top_k=N)
    assert {row.id: row["$dist"] for row in p.rows} == pytest.approx({k: 2 * v for k, v in quick.items()}, rel=1e-5)
    f = ns.query(rank_by=["text", "BM25", "quick fox"], filters=["tag", "Eq", "red"], top_k=N)
    assert set(ids(f)) == _bm25_ids("quick fox") & set(where(lambda d: d["tag"] == "red"))


def test_aggregations_and_group_by(ns):
    r = ns.query(aggregate_by={"count": ["Count"], "total": ["Sum", "n"]}, filters=["n", "Lt", 10])
    assert r.aggregations == {"count": 10, "total": 45}
    assert r.rows is None
    r = ns.query(aggregate_by={"count": ["Count"], "total": ["Sum", "n"]}, group_by=["tag"])
    groups = {g["tag"]: (g["count"], g["total"]) for g in r.aggregation_groups}
    for tag in ("red", "green", "blue"):
        members = where(lambda d, t=tag: d["tag"] == t)
        assert groups[tag] == (len(members), sum(members))


def test_multi_query(ns):
    r = ns.multi_query(
        queries=[
            {"rank_by": ["vector", "ANN", [1.0, 0.0, 0.0, 1.0]], "top_k": 3},
            {"rank_by": ["text", "BM25", "lazy"], "top_k": 3},
            {"aggregate_by": {"c": ["Count"]}, "filters": ["tag", "Eq", "red"]},
        ]
    )
    assert len(r.results) == 3
    assert len(r.results[0].rows) == 3
    assert {x.id for x in r.results[1].rows} <= _bm25_ids("lazy")
    assert r.results[2].aggregations == {"c": 7}
    # the same over the alias endpoint
    raw = httpx.post(
        f"{ns._client.base_url}".rstrip("/") + f"/v2/namespaces/{ns.id}/multi-query",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"queries": [{"rank_by": ["n", "asc"], "top_k": 2}]},
    )
    assert raw.status_code == 200 and [x["id"] for x in raw.json()["results"][0]["rows"]] == [0, 1]


def test_query_404_and_bad_query(live, ns):
    tp = turbopuffer.Turbopuffer(base_url=live.url, api_key=KEY, max_retries=0)
    with pytest.raises(turbopuffer.NotFoundError):
        tp.namespace("missing-" + uuid.uuid4().hex[:6]).query(rank_by=["id", "asc"])
    with pytest.raises(turbopuffer.BadRequestError) as e:
        ns.query(rank_by=["vector", "ANN", [1.0, 2.0]], top_k=3)
    assert e.value.body["status"] == "error"


def test_hint_cache_warm(ns):
    r = ns.hint_cache_warm()
    assert r.status == "ACCEPTED"


def test_recall(live, ns):
    r = ns.recall(num=3, top_k=5)
    assert 0.0 <= r.avg_recall <= 1.0
    assert r.avg_exhaustive_count >= 0 and r.avg_ann_count >= 0
