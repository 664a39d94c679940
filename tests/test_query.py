"""Exact query engine: kNN vs numpy brute force, BM25 vs an independent
implementation, malformed bodies, paging, multi-query/RRF, aggregations, CLI."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import puffer_cli
import pytest
from puffer_cli.cli.main import main
from puffer_cli.errors import InvalidFilter, InvalidQuery, InvalidRequest, UnprocessableBody
from puffer_cli.query import parse as Q
from puffer_cli.search import engine
from puffer_cli.text import analyzer as T
from puffer_cli.text import bm25 as B

DATA = Path(os.environ.get("PUFFER_BENCH_DATA", Path.home() / ".cache" / "puffer-bench"))


# --------------------------------------------------------------------------- helpers
def brute(mat: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    m = mat.astype(np.float64)
    q = q.astype(np.float64)
    if metric == "cosine_distance":
        den = np.linalg.norm(m, axis=1) * np.linalg.norm(q)
        return np.where(den > 0, 1.0 - (m @ q) / np.where(den > 0, den, 1.0), 1.0)
    d = m - q
    return np.einsum("ij,ij->i", d, d)


def assert_knn(rows: list[dict], ids: np.ndarray, dist: np.ndarray, k: int, tol: float = 1e-5):
    """rows equal the brute-force top-k: same distances (1e-5, relative for large values)
    and the same ids, except where two distances tie within tolerance."""
    order = np.lexsort((ids, dist))[:k]
    want_ids, want_d = ids[order], dist[order]
    assert len(rows) == len(order)
    got_d = np.array([r["$dist"] for r in rows])
    scale = np.maximum(1.0, np.abs(want_d))
    assert np.all(np.abs(got_d - want_d) <= tol * scale), (got_d, want_d)
    got_ids = np.array([r["id"] for r in rows])
    for i in np.flatnonzero(got_ids != want_ids):
        # allowed only inside a tie
        assert abs(got_d[i] - want_d[i]) <= tol * scale[i]
        d_of = dist[ids == got_ids[i]][0]
        assert abs(d_of - want_d[i]) <= tol * scale[i]


def ns_from_frame(db, name: str, df: pl.DataFrame, metric: str, schema=None):
    ns = db.open_namespace(name)
    ns.write_frame(df, distance_metric=metric, schema=schema)
    return ns


# --------------------------------------------------------------------------- kNN
@pytest.mark.parametrize("metric", ["cosine_distance", "euclidean_squared"])
def test_knn_matches_numpy_synthetic(mem_db, metric):
    rng = np.random.default_rng(7)
    n, d = 3000, 24
    mat = rng.normal(size=(n, d)).astype(np.float32)
    mat[5] = 0.0  # zero vector (cosine: distance 1)
    mat[10] = mat[11]  # exact duplicates -> ties broken by id
    ids = rng.permutation(np.arange(100, 100 + n)).astype(np.uint64)
    cat = rng.integers(0, 10, n)
    df = pl.DataFrame(
        {
            "id": ids,
            "vector": pl.Series(mat.tolist(), dtype=pl.Array(pl.Float32, d)),
            "cat": cat,
            "s": [f"s{x % 7}" for x in range(n)],
        }
    )
    ns = ns_from_frame(mem_db, "syn", df, metric)
    qs = rng.normal(size=(8, d)).astype(np.float32)
    qs[0] = mat[10]
    for i, qv in enumerate(qs):
        dist = brute(mat, qv, metric)
        for k in (1, 10, 100):
            out = engine.run_query(ns, {"rank_by": ["vector", "kNN" if i % 2 else "ANN", qv.tolist()], "top_k": k})
            assert_knn(out["rows"], ids, dist, k)
        # with filters
        f = ["And", [["cat", "In", [1, 3, 4]], ["s", "NotEq", "s2"]]]
        keep = np.isin(cat, [1, 3, 4]) & (np.array([x % 7 for x in range(n)]) != 2)
        out = engine.run_query(ns, {"rank_by": ["vector", "ANN", qv.tolist()], "top_k": 25, "filters": f})
        assert_knn(out["rows"], ids[keep], dist[keep], 25)


def test_knn_more_than_matches_and_null_vectors(mem_db):
    ns = mem_db.open_namespace("nv")
    ns.write(
        {
            "upsert_rows": [{"id": 1, "vector": [1.0, 0.0]}, {"id": 2, "vector": [0.0, 1.0]}, {"id": 3, "x": 1}],
            "distance_metric": "euclidean_squared",
        }
    )
    out = engine.run_query(ns, {"rank_by": ["vector", "ANN", [1.0, 0.0]], "top_k": 10})
    assert [r["id"] for r in out["rows"]] == [1, 2]
    assert out["rows"][1]["$dist"] == pytest.approx(2.0)
    # base64 query vector
    import base64

    b = base64.b64encode(np.array([0.0, 1.0], dtype="<f4").tobytes()).decode()
    out = engine.run_query(ns, {"rank_by": ["vector", "ANN", b], "top_k": 1})
    assert out["rows"][0]["id"] == 2


def _real(name):
    d = DATA / name
    if not (d / "base.parquet").exists():
        pytest.skip(f"benchmark data {d} not present")
    return d


@pytest.mark.parametrize(
    "name,metric,fcol,fval",
    [
        ("fashion-mnist-784-euclidean", "euclidean_squared", "category", "boot"),
        ("glove-100-angular", "cosine_distance", "length", 6),
    ],
)
def test_knn_matches_numpy_real(mem_db, name, metric, fcol, fval):
    d = _real(name)
    df = pl.read_parquet(d / "base.parquet", n_rows=8_000)
    qs = np.load(d / "queries.npy")[:10]
    ns = ns_from_frame(mem_db, "real", df, metric)
    mat = df["vector"].to_numpy()
    ids = df["id"].to_numpy()
    keep = (df[fcol] == fval).to_numpy()
    for qv in qs:
        dist = brute(mat, qv, metric)
        out = engine.run_query(ns, {"rank_by": ["vector", "kNN", qv.tolist()], "top_k": 10})
        assert_knn(out["rows"], ids, dist, 10)
        out = engine.run_query(
            ns, {"rank_by": ["vector", "ANN", qv.tolist()], "top_k": 10, "filters": [fcol, "Eq", fval]}
        )
        assert_knn(out["rows"], ids[keep], dist[keep], 10)


# --------------------------------------------------------------------------- BM25
def ref_bm25(docs_tokens: list[list[str]], q_tokens: list[str], k1=1.2, b=0.75) -> dict[int, float]:
    """Textbook BM25 (Lucene idf), independent of puffer_cli.text.bm25."""
    n = len(docs_tokens)
    avg = sum(len(t) for t in docs_tokens) / n
    dfc = Counter()
    for t in docs_tokens:
        dfc.update(set(t))
    out = {}
    for i, toks in enumerate(docs_tokens):
        tf = Counter(toks)
        s, hit = 0.0, False
        for t in q_tokens:
            if tf[t]:
                hit = True
                idf = math.log(1 + (n - dfc[t] + 0.5) / (dfc[t] + 0.5))
                s += idf * tf[t] * (k1 + 1) / (tf[t] + k1 * (1 - b + b * len(toks) / avg))
        if hit:
            out[i] = s
    return out


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu the a of running runs ran".split()


def _corpus(n=400, seed=3):
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        if i % 37 == 0:
            texts.append(None)
            continue
        w = rng.choice(
            WORDS, size=rng.integers(1, 25), p=np.linspace(2, 1, len(WORDS)) / np.linspace(2, 1, len(WORDS)).sum()
        )
        texts.append(" ".join(w).capitalize() + ("!" if i % 5 else ""))
    return texts


@pytest.mark.parametrize(
    "opts", [True, {"stemming": True, "language": "english"}, {"remove_stopwords": False, "k1": 2.0, "b": 0.3}]
)
def test_bm25_matches_reference(mem_db, opts):
    texts = _corpus()
    ns = mem_db.open_namespace("bm")
    ns.write(
        {
            "upsert_rows": [{"id": i, "text": t, "grp": i % 3} for i, t in enumerate(texts)],
            "schema": {"text": {"type": "string", "full_text_search": opts}},
        }
    )
    norm = T.normalize_fts_options(opts)
    toks = [T.tokenize(t, norm) for t in texts]
    for qtext in ["alpha beta", "the running mu mu", "kappa", "zzz", "Gamma, DELTA; eta iota"]:
        qt = T.tokenize(qtext, norm)
        want = ref_bm25(toks, qt, norm["k1"], norm["b"])
        out = engine.run_query(ns, {"rank_by": ["text", "BM25", qtext], "top_k": 1000})
        got = {r["id"]: r["$dist"] for r in out["rows"]}
        assert set(got) == set(want)
        for i, s in want.items():
            assert abs(got[i] - s) < 1e-4
        order = sorted(want, key=lambda i: (-want[i], i))
        assert [r["id"] for r in out["rows"]] == order
        # filtered: same (global) statistics, fewer documents
        out = engine.run_query(ns, {"rank_by": ["text", "BM25", qtext], "top_k": 5, "filters": ["grp", "Eq", 1]})
        order_f = [i for i in order if i % 3 == 1][:5]
        assert [r["id"] for r in out["rows"]] == order_f


def test_bm25_token_list_prefix_sum_max_product(mem_db):
    ns = mem_db.open_namespace("hy")
    rows = [
        {"id": 1, "title": "quick fox", "body": "a lazy dog", "tag": "x", "pop": 3},
        {"id": 2, "title": "slow fox", "body": "quick quick brown fox", "tag": "y", "pop": 1},
        {"id": 3, "title": "turtle", "body": "nothing here", "tag": "x"},
        {"id": 4, "title": "foxes den", "body": "quickly", "tag": "z", "pop": 2},
    ]
    ns.write(
        {
            "upsert_rows": rows,
            "schema": {
                "title": {"type": "string", "full_text_search": True},
                "body": {"type": "string", "full_text_search": True},
            },
        }
    )
    docs, head = ns.docs()

    def run(rb, **kw):
        return engine.run_query(ns, {"rank_by": rb, "top_k": 10, **kw})["rows"]

    t = {r["id"]: r["$dist"] for r in run(["title", "BM25", "fox"])}
    bd = {r["id"]: r["$dist"] for r in run(["body", "BM25", "quick"])}
    assert set(t) == {1, 2} and set(bd) == {2}
    assert {r["id"]: r["$dist"] for r in run(["title", "BM25", ["fox"]])} == t
    s = {r["id"]: r["$dist"] for r in run(["Sum", [["title", "BM25", "fox"], ["body", "BM25", "quick"]]])}
    assert s[2] == pytest.approx(t[2] + bd[2]) and s[1] == pytest.approx(t[1])
    m = {r["id"]: r["$dist"] for r in run(["Max", [["title", "BM25", "fox"], ["body", "BM25", "quick"]]])}
    assert m[2] == pytest.approx(max(t[2], bd[2]))
    for rb in (
        ["Product", 2.5, ["title", "BM25", "fox"]],
        ["Product", ["title", "BM25", "fox"], 2.5],
        ["Product", [2.5, ["title", "BM25", "fox"]]],
    ):
        p = {r["id"]: r["$dist"] for r in run(rb)}
        assert p == pytest.approx({k: 2.5 * v for k, v in t.items()})
    # filter boost: 1.0 per matching document, and it makes the document eligible
    fb = {r["id"]: r["$dist"] for r in run(["Sum", [["title", "BM25", "fox"], ["tag", "Eq", "x"]]])}
    assert fb[1] == pytest.approx(t[1] + 1) and fb[3] == pytest.approx(1.0) and 4 not in fb
    at = {r["id"]: r["$dist"] for r in run(["Sum", [["title", "BM25", "fox"], ["Attribute", "pop"]]])}
    assert at[4] == pytest.approx(2.0) and at[1] == pytest.approx(t[1] + 3)
    # last_as_prefix: "fox" prefixes "foxes"
    pre = {r["id"] for r in run(["title", "BM25", "fox", {"last_as_prefix": True}])}
    assert pre == {1, 2, 4}
    assert {r["id"] for r in run(["body", "BM25", "quick", {"last_as_prefix": True}])} == {2, 4}


def test_bm25_stats_merge_and_external_stats(mem_db):
    texts = _corpus(300)
    opts = T.normalize_fts_options(True)
    df = pl.DataFrame({"id": np.arange(len(texts), dtype=np.uint64), "text": texts})
    schema = {
        "id": {"type": "uint", "filterable": True},
        "text": {"type": "string", "filterable": False, "full_text_search": opts},
    }
    a, b = df.slice(0, 120), df.slice(120)
    merged = B.merge(B.stats_from_frame(a, "text", opts), B.stats_from_frame(b, "text", opts))
    full = B.stats_from_frame(df, "text", opts).get("text")
    mt = merged.get("text")
    assert (mt.n_docs, mt.total_tokens) == (full.n_docs, full.total_tokens)
    for w in WORDS:
        assert mt.doc_freq(w) == full.doc_freq(w)
    q = Q.parse_query({"rank_by": ["text", "BM25", "alpha kappa the"], "top_k": 1000})
    whole = engine.execute(q, df, schema, None)
    part = engine.execute(q, b, schema, None, bm25_stats=merged)
    want = {i: d for i, d in zip(whole.rows["id"].to_list(), whole.dist) if i >= 120}
    got = dict(zip(part.rows["id"].to_list(), part.dist))
    assert got.keys() == want.keys()
    assert all(abs(got[i] - want[i]) < 1e-9 for i in got)


def test_bm25_gcide_matches_reference():
    d = DATA / "gcide"
    if not (d / "docs.parquet").exists():
        pytest.skip("gcide data not present")
    docs = pl.read_parquet(d / "docs.parquet").slice(0, 5_000).select("id", "text")
    queries = pl.read_parquet(d / "queries.parquet")["text"].to_list()[:200]
    opts = T.normalize_fts_options({"stemming": True, "language": "english"})
    schema = {
        "id": {"type": "uint", "filterable": True},
        "text": {"type": "string", "filterable": False, "full_text_search": opts},
    }
    toks = T.tokenize_many(docs["text"].to_list(), opts)
    n = len(toks)
    avg = sum(map(len, toks)) / n
    dfc = Counter()
    tfs = [Counter(t) for t in toks]
    for c in tfs:
        dfc.update(c.keys())
    index: dict[str, list[int]] = {}
    for i, c in enumerate(tfs):
        for t in c:
            index.setdefault(t, []).append(i)
    ids = docs["id"].to_list()
    for qt in queries:
        qtok = T.tokenize(qt, opts)
        want: dict[int, float] = {}
        for t in qtok:
            for i in index.get(t, ()):
                tf = tfs[i][t]
                idf = math.log(1 + (n - dfc[t] + 0.5) / (dfc[t] + 0.5))
                want[i] = want.get(i, 0.0) + idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(toks[i]) / avg))
        q = Q.parse_query({"rank_by": ["text", "BM25", qt], "top_k": 10})
        res = engine.execute(q, docs, schema, None)
        top = sorted(want.items(), key=lambda kv: (-kv[1], ids[kv[0]]))[:10]
        assert len(res.dist) == len(top)
        assert np.allclose(res.dist, [s for _, s in top], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- ordering, paging, aggregations
@pytest.fixture
def people(mem_db):
    ns = mem_db.open_namespace("people")
    rows = []
    for i in range(1, 61):
        r = {
            "id": i,
            "age": (i * 7) % 23,
            "city": ["paris", "oslo", "rome"][i % 3],
            "tags": [["a"], ["a", "b"], [], ["b", "b", "c"]][i % 4],
            "score": i / 4,
            "born": f"2020-01-{(i % 28) + 1:02d}T00:00:00Z",
        }
        if i % 10 == 0:
            r.pop("age")
        rows.append(r)
    ns.write({"upsert_rows": rows, "schema": {"born": "datetime"}})
    return ns, rows


def test_order_by_attributes_and_rows_shape(people):
    ns, rows = people
    out = engine.run_query(
        ns, {"rank_by": [["age", "desc"], ["city", "asc"]], "top_k": 100, "include_attributes": ["age", "city", "born"]}
    )
    got = out["rows"]
    with_age = sorted((r for r in rows if "age" in r), key=lambda r: (-r["age"], r["city"], r["id"]))
    no_age = [r["id"] for r in sorted((r for r in rows if "age" not in r), key=lambda r: (r["city"], r["id"]))]
    assert [r["id"] for r in got] == [r["id"] for r in with_age] + no_age  # nulls last
    assert all("$dist" not in r for r in got)
    assert all("age" not in r for r in got[-len(no_age) :])  # nulls omitted
    assert got[0]["born"].endswith("Z") and "T" in got[0]["born"]
    assert set(got[0]) == {"id", "age", "city", "born"}
    ex = engine.run_query(ns, {"rank_by": ["id", "asc"], "top_k": 1, "exclude_attributes": ["tags", "born"]})
    assert set(ex["rows"][0]) == {"id", "age", "city", "score"}
    assert set(engine.run_query(ns, {"rank_by": ["id", "asc"], "top_k": 1})["rows"][0]) == {"id"}
    perf = out["performance"]
    assert perf["approx_namespace_size"] == 60 and perf["exhaustive_search_count"] == 60
    assert set(perf) >= {
        "query_execution_ms",
        "server_total_ms",
        "cache_temperature",
        "cache_hit_ratio",
        "object_store_requests",
        "object_store_bytes_read",
    }
    assert set(out["billing"]) == {"billable_logical_bytes_queried", "billable_logical_bytes_returned"}


def test_export_by_query_paging(people, mem_db):
    ns, rows = people
    ns.write({"deletes": [7, 8]})
    seen, last = [], None
    while True:
        body = {"rank_by": ["id", "asc"], "top_k": 7, "include_attributes": True}
        if last is not None:
            body["filters"] = ["id", "Gt", last]
        page = engine.run_query(ns, body)["rows"]
        if not page:
            break
        seen.extend(page)
        last = page[-1]["id"]
    from puffer_cli.jobs import export

    snap, _ = export.snapshot(ns)
    assert [r["id"] for r in seen] == snap["id"].to_list()
    assert len(seen) == 58


def test_offset_and_limit_per(people):
    ns, rows = people
    full = [r["id"] for r in engine.run_query(ns, {"rank_by": ["score", "desc"], "top_k": 60})["rows"]]
    page = [r["id"] for r in engine.run_query(ns, {"rank_by": ["score", "desc"], "limit": 5, "offset": 10})["rows"]]
    assert page == full[10:15]
    per = engine.run_query(
        ns,
        {
            "rank_by": ["score", "desc"],
            "include_attributes": ["city"],
            "limit": {"total": 5, "per": {"attributes": ["city"], "limit": 2}},
        },
    )["rows"]
    assert len(per) == 5
    assert max(Counter(r["city"] for r in per).values()) <= 2
    want, cnt = [], Counter()
    for i in full:
        c = next(r["city"] for r in rows if r["id"] == i)
        if cnt[c] < 2:
            want.append(i)
            cnt[c] += 1
    assert [r["id"] for r in per] == want[:5]


def test_aggregations(people):
    ns, rows = people
    out = engine.run_query(
        ns,
        {
            "aggregate_by": {"n": ["Count"], "ages": ["Count", "age"], "s": ["Sum", "age"], "f": ["Sum", "score"]},
            "filters": ["city", "NotEq", "rome"],
        },
    )
    sel = [r for r in rows if r["city"] != "rome"]
    assert "rows" not in out
    assert out["aggregations"] == {
        "n": len(sel),
        "ages": sum("age" in r for r in sel),
        "s": sum(r.get("age", 0) for r in sel),
        "f": pytest.approx(sum(r["score"] for r in sel)),
    }
    g = engine.run_query(ns, {"aggregate_by": {"n": ["Count"]}, "group_by": ["city"]})["aggregation_groups"]
    assert g == [{"city": c, "n": sum(r["city"] == c for r in rows)} for c in ("oslo", "paris", "rome")]
    g = engine.run_query(ns, {"aggregate_by": {"n": ["Count"]}, "group_by": [{"tag": ["ForEachUnique", "tags"]}]})
    want = Counter(t for r in rows for t in set(r["tags"]))
    assert g["aggregation_groups"] == [{"tag": t, "n": want[t]} for t in sorted(want)]
    both = engine.run_query(ns, {"rank_by": ["id", "asc"], "top_k": 2, "aggregate_by": {"n": ["Count"]}})
    assert [r["id"] for r in both["rows"]] == [1, 2] and both["aggregations"] == {"n": 60}


def test_multi_query_and_rrf(people):
    ns, rows = people
    body = {
        "queries": [
            {"rank_by": ["score", "desc"], "top_k": 5},
            {"rank_by": ["age", "asc"], "top_k": 5, "filters": ["city", "Eq", "oslo"]},
            {"aggregate_by": {"n": ["Count"]}},
        ]
    }
    out = engine.run_multi(ns, body)
    assert len(out["results"]) == 3
    for q, r in zip(body["queries"], out["results"]):
        assert r == {k: v for k, v in engine.run_query(ns, q).items() if k not in ("billing", "performance")}
    fused = engine.run_multi(
        ns, {"queries": body["queries"][:2], "rerank_by": ["RRF", {"rank_constant": 10}], "limit": 4}
    )
    a = [r["id"] for r in out["results"][0]["rows"]]
    b = [r["id"] for r in out["results"][1]["rows"]]
    sc = Counter()
    for lst in (a, b):
        for rank, i in enumerate(lst, 1):
            sc[i] += 1 / (10 + rank)
    want = sorted(sc, key=lambda i: (-sc[i], i))[:4]
    rows_f = fused["results"][0]["rows"]
    assert [r["id"] for r in rows_f] == want
    assert rows_f[0]["$dist"] == pytest.approx(sc[want[0]])
    with pytest.raises(InvalidQuery, match="at most 16"):
        engine.run_multi(ns, {"queries": [{"rank_by": ["id", "asc"]}] * 17})


def test_namespace_not_found(mem_db):
    from puffer_cli.errors import NamespaceNotFound

    with pytest.raises(NamespaceNotFound):
        engine.run_query(mem_db.open_namespace("nope"), {"rank_by": ["id", "asc"]})


def test_query_model_roundtrip():
    bodies = [
        {"rank_by": ["vector", "ANN", [0.5, 1.0]], "limit": 3, "filters": ["a", "Eq", 1], "include_attributes": True},
        {
            "rank_by": [
                "Sum",
                [["Product", 2.0, ["t", "BM25", "x y"]], ["b", "BM25", ["p", "q"], {"last_as_prefix": True}]],
            ],
            "limit": 10,
        },
        {
            "rank_by": [["a", "asc"], ["b", "desc"]],
            "limit": {"total": 4, "per": {"attributes": ["c"], "limit": 1}},
            "offset": 2,
            "exclude_attributes": ["v"],
            "consistency": {"level": "eventual"},
            "vector_encoding": "base64",
        },
        {"aggregate_by": {"n": ["Count"], "s": ["Sum", "x"]}, "group_by": ["g", {"u": ["ForEachUnique", "tags"]}]},
    ]
    for b in bodies:
        q = Q.parse_query(b)
        assert Q.parse_query(q.to_json()) == q
        assert json.loads(json.dumps(q.to_json())) == q.to_json()


# --------------------------------------------------------------------------- malformed bodies
V = [0.1, 0.2]
BAD = [
    ("x", "JSON object"),
    ({}, "rank_by"),
    ({"rank_by": "vector"}, "rank_by"),
    ({"rank_by": []}, "rank_by"),
    ({"rank_by": ["vector", "ANN"]}, "got 2 elements"),
    ({"rank_by": ["vector", "ANN", []]}, "empty"),
    ({"rank_by": ["vector", "ANN", [1, "x"]]}, "element 1"),
    ({"rank_by": ["vector", "ANN", [[1.0, 2.0]]]}, "multi-vector"),
    ({"rank_by": ["vector", "ANN", "!!notbase64"]}, "base64"),
    ({"rank_by": ["vector", "ANN", "AAA="]}, "multiple of 4"),
    ({"rank_by": ["vector", "ann", V]}, "did you mean"),
    ({"rank_by": ["vector", "ANN", [1.0, 2.0, 3.0]]}, "dimensions"),
    ({"rank_by": ["nosuch", "ANN", V]}, "no vector attribute"),
    ({"rank_by": ["name", "ANN", V]}, "not a vector"),
    ({"rank_by": ["name", "BM25", 5]}, "string or a list of strings"),
    ({"rank_by": ["name", "BM25", "x"]}, "full-text search"),
    ({"rank_by": ["text", "BM25", "x", {"prefix": True}]}, "last_as_prefix"),
    ({"rank_by": ["text", "BM25"]}, "BM25 is [attr"),
    ({"rank_by": ["Sum", "x"]}, "Sum takes one list"),
    ({"rank_by": ["Sum", []]}, "at least one"),
    ({"rank_by": ["Max", [["text", "BM25", "x"], 3]]}, "rank_by[1][1]"),
    ({"rank_by": ["Product", "a", ["text", "BM25", "x"]]}, "one finite number"),
    ({"rank_by": ["Product", 2]}, "Product is"),
    ({"rank_by": ["Saturate", ["text", "BM25", "x"], {}]}, "midpoint"),
    ({"rank_by": ["n", "ascending"]}, "did you mean"),
    ({"rank_by": ["n", "ASC"]}, "lowercase"),
    ({"rank_by": [["n", "asc"], ["n", "desc"]]}, "twice"),
    ({"rank_by": [["n", "asc"], "x"]}, "rank_by[1]"),
    ({"rank_by": ["missing", "asc"]}, "unknown attribute"),
    ({"rank_by": ["vector", "asc"]}, "cannot order"),
    ({"rank_by": ["id", "asc"], "top_k": 0}, "top_k"),
    ({"rank_by": ["id", "asc"], "top_k": 10_001}, "10,000"),
    ({"rank_by": ["id", "asc"], "top_k": "5"}, "integer"),
    ({"rank_by": ["id", "asc"], "top_k": 5, "limit": 5}, "not both"),
    ({"rank_by": ["id", "asc"], "limit": {"per": {}}}, "total"),
    ({"rank_by": ["id", "asc"], "limit": {"total": 5, "per": {"attributes": [], "limit": 1}}}, "non-empty"),
    ({"rank_by": ["id", "asc"], "limit": {"total": 5, "per": {"attributes": ["nope"], "limit": 1}}}, "limit.per"),
    ({"rank_by": ["id", "asc"], "offset": -1}, "offset"),
    ({"aggregate_by": {"n": ["Count"]}, "offset": 1}, "explicit rank_by"),
    ({"rank_by": ["id", "asc"], "include_attributes": "name"}, "include_attributes"),
    ({"rank_by": ["id", "asc"], "include_attributes": ["name"], "exclude_attributes": ["n"]}, "not both"),
    ({"rank_by": ["id", "asc"], "exclude_attributes": "n"}, "exclude_attributes"),
    ({"rank_by": ["id", "asc"], "filters": ["n", "Eqq", 1]}, 'did you mean "Eq"'),
    ({"rank_by": ["id", "asc"], "filters": ["n", "Eq", "seven"]}, "filters"),
    ({"rank_by": ["id", "asc"], "filters": "n = 1"}, "filters"),
    ({"aggregate_by": {"n": ["Avg", "n"]}}, "unknown aggregate"),
    ({"aggregate_by": {"n": ["Sum"]}}, "Sum takes one attribute"),
    ({"aggregate_by": {"n": ["Sum", "name"]}}, "numeric"),
    ({"aggregate_by": {"n": ["Count", "zzz"]}}, "unknown attribute"),
    ({"aggregate_by": []}, "aggregate_by"),
    ({"aggregate_by": {"n": ["Count"]}, "group_by": "name"}, "group_by"),
    ({"aggregate_by": {"n": ["Count"]}, "group_by": ["tags"]}, "ForEachUnique"),
    ({"aggregate_by": {"n": ["Count"]}, "group_by": [{"t": ["ForEachUnique", "name"]}]}, "array attribute"),
    ({"aggregate_by": {"n": ["Count"]}, "group_by": ["n", "n"]}, "twice"),
    ({"rank_by": ["id", "asc"], "group_by": ["name"]}, "needs aggregate_by"),
    ({"rank_by": ["id", "asc"], "consistency": {"level": "weak"}}, "consistency"),
    ({"rank_by": ["id", "asc"], "consistency": "sometimes"}, "consistency"),
    ({"rank_by": ["id", "asc"], "vector_encoding": "hex"}, "vector_encoding"),
    ({"rank_by": ["id", "asc"], "distance_metric": "dot"}, "distance_metric"),
    ({"rank_by": ["id", "asc"], "topk": 5}, 'did you mean "top_k"'),
    ({"vector": V, "top_k": 5}, 'rank_by ["vector"'),
    ({"queries": []}, "multi-query"),
]
BAD_MULTI = [
    ({"queries": []}, "non-empty"),
    ({"queries": [{"rank_by": ["id", "asc"]}], "rerank_by": ["RRF", {"rank_constant": 0}]}, "rank_constant"),
    ({"queries": [{"rank_by": ["id", "asc"]}], "rerank_by": ["RRF", {"weights": [1, 2]}]}, "weights"),
    ({"queries": [{"rank_by": ["id", "asc"]}], "rerank_by": ["Cohere"]}, "RRF"),
    ({"queries": [{"rank_by": ["id", "asc"], "consistency": {"level": "strong"}}]}, "queries[0]"),
    ({"queries": [{"rank_by": ["id", "asc"]}], "limit": 5}, "needs rerank_by"),
    ({"queries": [{"rank_by": ["id", "zz"]}]}, "queries[0].rank_by"),
    ({"queries": [{"aggregate_by": {"n": ["Count"]}}], "rerank_by": ["RRF"]}, "rank_by"),
]


@pytest.fixture
def bad_ns(mem_db):
    ns = mem_db.open_namespace("bad")
    ns.write(
        {
            "upsert_rows": [{"id": 1, "vector": V, "name": "a", "n": 1, "tags": ["x"], "text": "hello"}],
            "schema": {"text": {"type": "string", "full_text_search": True}},
        }
    )
    return ns


def test_at_least_40_bad_bodies():
    assert len(BAD) + len(BAD_MULTI) >= 40


@pytest.mark.parametrize("body,msg", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_malformed_query(bad_ns, body, msg):
    with pytest.raises((InvalidQuery, InvalidFilter)) as ei:
        engine.run_query(bad_ns, body)
    assert msg in ei.value.message, ei.value.message
    assert ei.value.status == (422 if isinstance(ei.value, UnprocessableBody) else 400)  # 422: a wrong JSON type


@pytest.mark.parametrize("body,msg", BAD_MULTI, ids=[f"badm{i}" for i in range(len(BAD_MULTI))])
def test_malformed_multi(bad_ns, body, msg):
    with pytest.raises(InvalidRequest) as ei:
        engine.run_multi(bad_ns, body)
    assert msg in ei.value.message, ei.value.message


# --------------------------------------------------------------------------- CLI
@pytest.fixture
def cli_store(tmp_path):
    url = str(tmp_path / "store")
    ns = puffer_cli.connect(url).open_namespace("docs")
    ns.write(
        {
            "upsert_rows": [
                {"id": i, "vector": [float(i), 1.0], "text": ["red fox", "blue whale", "red whale"][i % 3], "n": i}
                for i in range(12)
            ],
            "schema": {"text": {"type": "string", "full_text_search": True}},
            "distance_metric": "euclidean_squared",
        }
    )
    return url, ns


def _cli(capsys, *args):
    rc = main(["query", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_json_is_response_body(cli_store, capsys, tmp_path):
    url, ns = cli_store
    rc, out, err = _cli(capsys, "docs", "--store", url, "--vector", "[3, 1]", "--top-k", "3", "--format", "json")
    assert rc == 0
    body = json.loads(out)
    want = engine.run_query(ns, {"rank_by": ["vector", "ANN", [3, 1]], "top_k": 3})
    assert body["rows"] == want["rows"] and set(body) == set(want)
    np.save(tmp_path / "q.npy", np.array([[3.0, 1.0]], dtype=np.float32))
    rc, out2, _ = _cli(
        capsys,
        "docs",
        "--store",
        url,
        "--vector",
        f"@{tmp_path / 'q.npy'}",
        "--top-k",
        "3",
        "--exact",
        "--format",
        "json",
    )
    assert rc == 0 and json.loads(out2)["rows"] == body["rows"]
    # @file.npy:ROW picks one row of a matrix (negative counts from the end); bad rows are one-line errors
    np.save(tmp_path / "m.npy", np.array([[0.0, 9.0], [3.0, 1.0], [7.0, 7.0]], dtype=np.float32))
    for spec in (":1", ":-2"):
        rc, out3, _ = _cli(capsys, "docs", "--store", url, "--vector", f"@{tmp_path / 'm.npy'}{spec}", "--top-k", "3")
        assert rc == 0 and json.loads(out3)["rows"] == body["rows"]
    for spec, msg in (("", "pick a row"), (":3", "out of range"), (":x", "does not exist")):
        rc, _, err = _cli(capsys, "docs", "--store", url, "--vector", f"@{tmp_path / 'm.npy'}{spec}")
        assert rc == 1 and msg in err and err.count("\n") == 1, err
    rc, out, _ = _cli(
        capsys,
        "docs",
        "--store",
        url,
        "--bm25",
        "text",
        "red",
        "--filter",
        '["n","Lt",6]',
        "--include",
        "text,n",
        "--format",
        "ndjson",
    )
    lines = [json.loads(x) for x in out.splitlines()]
    assert [r["id"] for r in lines] == [0, 2, 3, 5] or {r["id"] for r in lines} == {0, 2, 3, 5}
    assert all(set(r) == {"id", "$dist", "text", "n"} for r in lines)
    (tmp_path / "b.json").write_text(json.dumps({"rank_by": ["n", "desc"], "top_k": 2, "include_attributes": ["n"]}))
    rc, out, _ = _cli(capsys, "docs", "--store", url, "--body", f"@{tmp_path / 'b.json'}", "--format", "json")
    assert [r["n"] for r in json.loads(out)["rows"]] == [11, 10]
    rc, out, _ = _cli(
        capsys,
        "docs",
        "--store",
        url,
        "--body",
        json.dumps(
            {"queries": [{"rank_by": ["n", "asc"], "top_k": 2}, {"rank_by": ["text", "BM25", "whale"], "top_k": 2}]}
        ),
        "--format",
        "json",
    )
    assert len(json.loads(out)["results"]) == 2
    rc, out, err = _cli(
        capsys,
        "docs",
        "--store",
        url,
        "--format",
        "table",
        "--include-all",
        "--top-k",
        "2",
        "--consistency",
        "eventual",
    )
    assert rc == 0 and "red fox" in out and "2 rows" in out
    rc, out, _ = _cli(capsys, "docs", "--store", url, "--format", "json")  # default: list by id
    assert [r["id"] for r in json.loads(out)["rows"]] == list(range(10))


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--vector", "[1, 2, 3]"], "dimensions"),
        (["--vector", "[1, "], "not valid JSON"),
        (["--vector", "@/nonexistent.npy"], "does not exist"),
        (["--bm25", "n", "red"], "full-text search"),
        (["--rank-by", '["n","sideways"]'], "rank_by"),
        (["--filter", '["n","Eq"]'], "needs a value"),
        (["--top-k", "0"], "top_k"),
        (["--top-k", "many"], "--top-k"),
        (["--format", "xml"], "--format"),
        (["--consistency", "maybe"], "--consistency"),
        (["--vector", "[1,1]", "--rank-by", '["id","asc"]'], "only one of"),  # --vector + --bm25 is hybrid (RRF)
        (["--body", "[1]"], "JSON object"),
        (["--include", "n", "--include-all"], "either"),
    ],
)
def test_cli_errors_one_line(cli_store, capsys, args, msg):
    url, _ = cli_store
    rc, out, err = _cli(capsys, "docs", "--store", url, *args)
    assert rc == (2 if msg == "--top-k" else 1)  # a value click cannot parse is a usage error
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and msg in lines[0], err
    assert "Traceback" not in err and out == ""


def test_cli_missing_namespace(tmp_path, capsys):
    rc, out, err = _cli(capsys, "nope", "--store", str(tmp_path / "s"))
    assert rc == 1 and err.startswith("Error: ") and "not found" in err
