"""The offline indexer and the indexed query path (local, memory, moto S3).

The exact engine over the replayed WAL is the reference: every indexed answer
must equal it (ids, order, $dist within 1e-4, aggregations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from puffer_cli.index import builder
from puffer_cli.index.segment import GENS
from puffer_cli.jobs.recall import recall
from puffer_cli.search import engine, reader
from puffer_cli.store import layout

WORDS = (
    "alpha beta gamma delta epsilon fox dog cat lazy quick brown jumps over river stone "
    "light dark moon sun star tree leaf water fire earth"
).split()


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    from puffer_cli.store import filecache as cache

    cache.configure("")
    yield
    cache.configure("")


def make_rows(rng, start, n, dims=8):
    out = []
    for i in range(start, start + n):
        r = {
            "id": i,
            "vector": rng.normal(size=dims).round(4).tolist(),
            "text": " ".join(rng.choice(WORDS, int(rng.integers(2, 12)))),
            "title": " ".join(rng.choice(WORDS, 3)),
            "cat": int(i % 4),
            "score": round(float(rng.random()), 4),
        }
        if i % 7 == 0:
            r.pop("score")
        out.append(r)
    return out


SCHEMA = {
    "text": {"type": "string", "full_text_search": True},
    "title": {"type": "string", "full_text_search": {"stemming": True}},
}


def queries(rng, dims=8):
    v = rng.normal(size=dims).round(4).tolist()
    return [
        {"rank_by": ["vector", "ANN", v], "top_k": 7},
        {"rank_by": ["vector", "ANN", v], "top_k": 5, "filters": ["cat", "Eq", 1]},
        {
            "rank_by": ["vector", "kNN", v],
            "top_k": 5,
            "filters": ["score", "Gt", 0.5],
            "include_attributes": ["vector", "cat"],
        },
        {"rank_by": ["text", "BM25", "quick fox river"], "top_k": 10},
        {"rank_by": ["text", "BM25", "moon star"], "top_k": 5, "filters": ["cat", "In", [0, 2]]},
        {"rank_by": ["Sum", [["text", "BM25", "fox"], ["title", "BM25", "stone trees"]]], "top_k": 8},
        {"rank_by": ["score", "desc"], "top_k": 6},
        {
            "rank_by": [["cat", "asc"], ["score", "desc"]],
            "top_k": 9,
            "filters": ["text", "ContainsAnyToken", "fox dog"],
        },
        {"aggregate_by": {"n": ["Count"], "s": ["Sum", "score"]}, "group_by": ["cat"]},
        {"aggregate_by": {"n": ["Count"]}, "filters": ["score", "Lt", 0.3]},
        {"filters": ["cat", "Eq", 3], "top_k": 4, "rank_by": ["id", "asc"]},
    ]


def strip(resp):
    return {k: v for k, v in resp.items() if k not in ("performance", "billing")}


def exact(ns, body):
    """The reference: the exact engine over the replayed WAL (no index)."""
    from puffer_cli.query import parse as Q

    q = Q.parse_query(body)
    src = engine.load_source(ns, "strong")  # no queries: exact replay
    res = engine.execute(q, src.docs, src.schema, src.metric)
    return engine._result_body(q, res)


def close(a, b):
    """Equal, floats within 1e-9 relative (sums depend on the order rows are added)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    return a == b


def same(a, b):
    a, b = strip(a), strip(b)
    if a.keys() != b.keys():
        return False
    for k in a:
        if k != "rows":
            if not close(a[k], b[k]):
                return False
            continue
        if [r["id"] for r in a["rows"]] != [r["id"] for r in b["rows"]]:
            return False
        for x, y in zip(a["rows"], b["rows"]):
            if set(x) != set(y):
                return False
            for c in x:
                if c == "$dist":
                    if not math.isclose(x[c], y[c], rel_tol=1e-4, abs_tol=1e-4):
                        return False
                elif x[c] != y[c]:
                    return False
    return True


def check_all(ns, rng):
    for body in queries(rng):
        got = engine.run_query(ns, body)
        want = exact(ns, body)
        assert same(got, want), (body, strip(got), want)


def spy(monkeypatch, module, name) -> list:
    """Count calls of ``module.name`` (still calling it); returns the list calls append to."""
    calls: list = []
    orig = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **kw: calls.append(1) or orig(*a, **kw))
    return calls


def index(ns, **kw):
    kw.setdefault("gc_grace_s", 0)
    kw.setdefault("threads", 1)  # a multi-threaded HNSW build is not deterministic: tests must be
    return builder.index_namespace(ns, **kw)


def index_keys(ns):
    return set(ns.store.list(layout.index_root(ns.name)))


def current_files(ns):
    """Files GC must keep: the current generation's and those of the generations WAL retention
    keeps as snapshots (index/retention.py: the floor and the candidate)."""
    from puffer_cli.index.retention import kept_manifests

    meta, _ = ns.read_meta()
    keys = [meta["index"]["manifest"], *kept_manifests(meta)]
    return {f for k in keys for f in builder.load_manifest(ns.store, k)["files"]}


# ---------------------------------------------------------------------------- all backends
def test_index_tail_strong_eventual(db, monkeypatch):
    rng = np.random.default_rng(1)
    ns = db.open_namespace("docs")
    ns.write({"upsert_rows": make_rows(rng, 0, 150), "schema": SCHEMA})
    rep = index(ns)
    assert rep.status == "indexed" and rep.rows_indexed == 150 and rep.generation == 1
    assert index(ns).status == "up-to-date"
    check_all(ns, rng)

    # more writes: strong sees the tail at once; eventual = the index plus this process's
    # tail, whose WAL head is relisted at most every EVENTUAL_MAX_STALENESS_S
    body = {"rank_by": ["id", "desc"], "top_k": 3}
    eventual = {**body, "consistency": {"level": "eventual"}}
    assert [r["id"] for r in engine.run_query(ns, eventual)["rows"]] == [149, 148, 147]
    ns.write({"upsert_rows": make_rows(rng, 150, 30)})
    assert [r["id"] for r in engine.run_query(ns, eventual)["rows"]] == [149, 148, 147]  # listed < 60 s ago
    assert [r["id"] for r in engine.run_query(ns, body)["rows"]] == [179, 178, 177]
    assert [r["id"] for r in engine.run_query(ns, eventual)["rows"]] == [179, 178, 177]  # strong relisted it
    ns.write({"upsert_rows": make_rows(rng, 180, 1)})
    monkeypatch.setattr(reader, "EVENTUAL_MAX_STALENESS_S", 0.0)  # the bound has passed
    assert [r["id"] for r in engine.run_query(ns, eventual)["rows"]] == [180, 179, 178]
    monkeypatch.undo()
    ns.write({"deletes": [180]})

    # update + delete after indexing: never stale (strong)
    ns.write(
        {
            "upsert_rows": [{"id": 5, "text": "zebra zebra", "cat": 9, "vector": [9.0] * 8}],
            "deletes": [6, 160],
            "patch_rows": [{"id": 7, "cat": 42}],
        }
    )
    rows = engine.run_query(ns, {"rank_by": ["text", "BM25", "zebra"], "top_k": 5, "include_attributes": ["cat"]})[
        "rows"
    ]
    assert [(r["id"], r["cat"]) for r in rows] == [(5, 9)]
    got = engine.run_query(
        ns,
        {"filters": ["id", "In", [5, 6, 7, 160]], "rank_by": ["id", "asc"], "top_k": 10, "include_attributes": ["cat"]},
    )["rows"]
    assert [(r["id"], r["cat"]) for r in got] == [(5, 9), (7, 42)]
    check_all(ns, rng)

    # index again: tombstones on the old segment, a new segment; same answers
    rep = index(ns)
    assert rep.status == "indexed" and rep.rows_tombstoned == 3 and rep.segments == 2
    check_all(ns, rng)
    ev = engine.run_query(ns, {**body, "consistency": {"level": "eventual"}})
    assert [r["id"] for r in ev["rows"]] == [179, 178, 177]
    assert index_keys(ns) == current_files(ns)  # GC with grace 0: nothing else left


def test_many_runs_merge_and_bm25_global(mem_db):
    rng = np.random.default_rng(2)
    ns = mem_db.open_namespace("m")
    ns.write({"upsert_rows": make_rows(rng, 0, 40), "schema": SCHEMA})
    for run in range(12):
        ns.write({"upsert_rows": make_rows(rng, 40 + run * 10, 10)})
        ns.write({"deletes": [run * 3], "patch_rows": [{"id": run * 3 + 1, "score": 0.5}]})
        rep = index(ns)
        assert rep.status == "indexed"
        assert rep.segments <= builder.MAX_SEGMENTS
    meta, _ = ns.read_meta()
    man = builder.load_manifest(ns.store, meta["index"]["manifest"])
    for s in man["segments"]:
        assert s["dead"] <= builder.DEAD_RATIO * s["rows"]
    # data spread over several segments + a tail: BM25 scores are still the exact global ones
    ns.write({"upsert_rows": make_rows(rng, 500, 15)})
    check_all(ns, rng)
    assert sum(s["live"] for s in man["segments"]) + 15 == ns.docs()[0].height


def test_schema_change_rebuilds(mem_db):
    rng = np.random.default_rng(3)
    ns = mem_db.open_namespace("s")
    ns.write({"upsert_rows": make_rows(rng, 0, 60)})  # text is a plain string: no FTS yet
    index(ns)
    ns.write({"schema": {"text": {"type": "string", "full_text_search": True}}, "upsert_rows": make_rows(rng, 60, 5)})
    rep = index(ns)
    assert rep.segments == 1 and rep.segments_merged == 1  # old segment lacked the FTS index
    body = {"rank_by": ["text", "BM25", "quick fox"], "top_k": 10}
    assert same(engine.run_query(ns, body), exact(ns, body))


def test_multi_query_over_index(mem_db):
    rng = np.random.default_rng(4)
    ns = mem_db.open_namespace("mq")
    ns.write({"upsert_rows": make_rows(rng, 0, 80), "schema": SCHEMA})
    index(ns)
    ns.write({"upsert_rows": make_rows(rng, 80, 5)})
    qs = queries(rng)[:6]
    got = engine.run_multi(ns, {"queries": qs})
    for q, r in zip(qs, got["results"]):
        assert same(r, exact(ns, q))


def test_vector_topk_fast_path_matches_engine(mem_db, monkeypatch):
    """Plain vector queries skip the candidate frame (index/topk.py): string ids, rows
    without a vector, euclidean, several segments, a tail with updates and deletes,
    offset, filters, vectors in the output and ties all give the exact engine's answer."""
    from puffer_cli.search import topk

    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 10)  # use HNSW on these small segments
    calls = spy(monkeypatch, topk, "vector_topk")
    rng = np.random.default_rng(11)
    ns = mem_db.open_namespace("fast")

    def rows(lo, hi):
        out = []
        for i in range(lo, hi):
            r = {
                "id": f"doc-{i:04d}",
                "vector": rng.normal(size=6).round(2).tolist(),
                "cat": i % 3,
                "when": f"2024-01-{1 + i % 28:02d}T00:00:00Z",
            }
            if i % 11 == 0:
                r.pop("vector")
            if i % 13 == 0:
                r["vector"] = [1.0, 0, 0, 0, 0, 0]  # duplicates: ties broken by id
            out.append(r)
        return out

    ns.write(
        {"upsert_rows": rows(0, 120), "distance_metric": "euclidean_squared", "schema": {"when": {"type": "datetime"}}}
    )
    index(ns)
    ns.write({"upsert_rows": rows(120, 200)})
    index(ns)
    ns.write(
        {
            "upsert_rows": rows(200, 230) + [{"id": "doc-0005", "vector": [1.0, 0, 0, 0, 0, 0], "cat": 7}],
            "deletes": ["doc-0014", "doc-0150"],
            "patch_rows": [{"id": "doc-0016", "cat": 9}],
        }
    )
    v = [1.0, 0, 0, 0, 0, 0]
    bodies = [
        # many exact duplicates of v: ties broken by id (kNN: HNSW may not return every duplicate)
        {"rank_by": ["vector", "kNN", v], "top_k": 12},
        {"rank_by": ["vector", "kNN", v], "top_k": 5, "offset": 3, "include_attributes": True},
        {
            "rank_by": ["vector", "ANN", rng.normal(size=6).tolist()],
            "top_k": 5,
            "offset": 3,
            "include_attributes": True,
        },
        {
            "rank_by": ["vector", "kNN", rng.normal(size=6).tolist()],
            "top_k": 7,
            "filters": ["cat", "In", [0, 9]],
            "include_attributes": ["cat", "when"],
        },
        {
            "rank_by": ["vector", "ANN", rng.normal(size=6).tolist()],
            "top_k": 4,
            "exclude_attributes": ["when"],
            "vector_encoding": "base64",
        },
        {"rank_by": ["vector", "ANN", v], "top_k": 3, "filters": ["id", "Eq", "nope"]},
    ]
    for level in ("strong", "eventual"):
        if level == "eventual":
            index(ns)
        for body in bodies:
            got = engine.run_query(ns, {**body, "consistency": {"level": level}})
            assert same(got, exact(ns, body)), (level, body, strip(got))
    assert len(calls) == 2 * len(bodies)


def test_bm25_topk_fast_path_matches_engine(mem_db, monkeypatch):
    """Pure BM25 queries are scored from the segments' stored postings (index/topk.py):
    global statistics across segments and a tail that updates and deletes, Sum/Max/
    Product, filters, offset and attributes give the exact engine's answer; a segment
    without stored postings (an older generation) falls back to the candidate frame."""
    from puffer_cli.search import topk

    calls = spy(monkeypatch, topk, "text_topk")
    rng = np.random.default_rng(12)
    ns = mem_db.open_namespace("fastbm25")

    def rows(lo, hi):
        return [
            {
                "id": f"d{i:04d}",
                "text": " ".join(rng.choice(WORDS, int(rng.integers(1, 15)))),
                "title": " ".join(rng.choice(WORDS, 2)),
                "cat": i % 4,
            }
            for i in range(lo, hi)
        ]

    ns.write({"upsert_rows": rows(0, 150), "schema": SCHEMA})
    index(ns)
    ns.write({"upsert_rows": rows(150, 260)})
    index(ns)
    ns.write(
        {
            "upsert_rows": rows(260, 280) + [{"id": "d0003", "text": "fox fox fox river", "cat": 1}],
            "deletes": ["d0010", "d0200"],
            "patch_rows": [{"id": "d0011", "cat": 3}],
        }
    )
    bodies = [
        {"rank_by": ["text", "BM25", "quick fox river"], "top_k": 10},
        {"rank_by": ["text", "BM25", "fox fox dog"], "top_k": 5, "offset": 2, "include_attributes": True},
        {
            "rank_by": ["text", "BM25", "moon star light"],
            "top_k": 8,
            "filters": ["cat", "In", [1, 3]],
            "include_attributes": ["cat"],
        },
        {
            "rank_by": ["Sum", [["text", "BM25", "fox"], ["Product", 2.5, ["title", "BM25", "stone trees"]]]],
            "top_k": 12,
        },
        {"rank_by": ["Max", [["text", "BM25", ["lazy", "dogs"]], ["title", "BM25", "water"]]], "top_k": 6},
        {"rank_by": ["text", "BM25", "zzz unknown"], "top_k": 3},
    ]

    def check(levels):
        for level in levels:
            for body in bodies:
                got = engine.run_query(ns, {**body, "consistency": {"level": level}})
                assert same(got, exact(ns, body)), (level, body, strip(got))

    check(["strong"])
    assert len(calls) == len(bodies)
    index(ns)
    check(["strong", "eventual"])
    assert len(calls) == 3 * len(bodies)

    # a generation whose segments lack a scorable index (block format with an unknown
    # marker): same answers, other path
    meta, _ = ns.read_meta()
    man = builder.load_manifest(ns.store, meta["index"]["manifest"])
    for seg in man["segments"]:
        for f in seg["fts"].values():
            f.pop("postings", None)
            if f.get("format"):
                f["format"] = "blk-unknown"
    import json

    ns.store.write(meta["index"]["manifest"], json.dumps(man).encode())
    GENS.clear()
    calls.clear()
    check(["strong"])
    assert calls == []


def test_analyzer_change_in_tail_is_not_answered_from_stale_index(mem_db):
    """A schema write that changes a field's analyzer makes the index's tokens and BM25
    statistics stale until the next index run: strong queries answer exactly meanwhile."""
    rng = np.random.default_rng(13)
    ns = mem_db.open_namespace("analyzer")
    ns.write({"upsert_rows": make_rows(rng, 0, 100), "schema": SCHEMA})
    index(ns)
    ns.write(
        {"schema": {"text": {"type": "string", "full_text_search": {"stemming": True, "remove_stopwords": False}}}}
    )
    for body in [
        {"rank_by": ["text", "BM25", "jumps rivers"], "top_k": 5},
        {"rank_by": ["text", "BM25", "jumps rivers"], "top_k": 5, "filters": ["cat", "Eq", 1]},
    ]:
        got = engine.run_query(ns, body)
        assert same(got, exact(ns, body)), (body, strip(got))
    index(ns)
    body = {"rank_by": ["text", "BM25", "jumps rivers"], "top_k": 5}
    assert same(engine.run_query(ns, body), exact(ns, body))


F32_NEAR_TIE = (  # two vectors whose cosine distances to q tie in float32 but not in float64
    [
        [
            0.24320478737354279,
            0.6811093688011169,
            0.20887278020381927,
            -0.842538058757782,
            -0.7275294065475464,
            -0.7767218947410583,
            -1.1332892179489136,
            -0.9131417274475098,
            1.5408058166503906,
            0.3066994845867157,
            0.12531477212905884,
            0.38743361830711365,
            -0.65873122215271,
            -1.3816277980804443,
            1.3485593795776367,
            -0.605022668838501,
        ],
        [
            0.24320478737354279,
            0.6811093688011169,
            0.20887278020381927,
            -0.842538058757782,
            -0.7275294065475464,
            -0.7767218947410583,
            -1.1332892179489136,
            -0.9131417274475098,
            1.540805697441101,
            0.3066994845867157,
            0.12531477212905884,
            0.38743361830711365,
            -0.65873122215271,
            -1.3816277980804443,
            1.3485593795776367,
            -0.605022668838501,
        ],
        [
            -1.5553730726242065,
            -0.09441590309143066,
            -0.3628282845020294,
            -0.4228858947753906,
            -0.501223623752594,
            0.03458629548549652,
            2.123094320297241,
            -1.516462802886963,
            0.597086489200592,
            0.22161227464675903,
            1.8863637447357178,
            0.0877201035618782,
            -1.2031813859939575,
            -1.3479558229446411,
            0.13195690512657166,
            -1.207350254058838,
        ],
    ]
)


def test_index_edge_cases_match_engine(mem_db, monkeypatch):
    """Cases a review found where the index disagreed with the exact engine: rows
    without the FTS field (tantivy doc ids vs row positions), zero vectors under
    cosine (left out of HNSW, distance 1), a float32 near-tie in exact search, a
    Product weight <= 0 (tantivy proposes the wrong end), offset past the candidates."""
    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 2)
    ns = mem_db.open_namespace("edges")
    rows = [
        {"id": 1, "cat": 0},
        {"id": 2, "text": "fox", "vector": [1.0, 0.0]},
        {"id": 3, "text": "dog", "vector": [0.0, 0.0]},
        {"id": 4, "text": "fox fox stone", "vector": [-1.0, 0.1]},
    ]
    rows += [
        {"id": i, "text": "fox " + " ".join(["stone"] * (i % 7)), "vector": [float(i % 5) - 2, 1.0]}
        for i in range(10, 260)
    ]
    ns.write(
        {
            "upsert_rows": rows,
            "distance_metric": "cosine_distance",
            "schema": {"text": {"type": "string", "full_text_search": True}},
        }
    )
    x1, x2, q = F32_NEAR_TIE
    tie = mem_db.open_namespace("tie")
    tie.write({"upsert_rows": [{"id": 1, "vector": x1}, {"id": 2, "vector": x2}]})
    for n in (ns, tie):
        index(n)
    bodies = [
        {"rank_by": ["text", "BM25", "fox"], "top_k": 5},
        {"rank_by": ["text", "BM25", "dog"], "top_k": 5},
        {"rank_by": ["vector", "ANN", [-1.0, -1.0]], "top_k": 60, "filters": ["id", "Lt", 5]},
        {"rank_by": ["vector", "ANN", [1.0, -5.0]], "top_k": 2},  # the zero vector is 2nd
        {"rank_by": ["vector", "kNN", [1.0, -5.0]], "top_k": 3, "filters": ["id", "In", [2, 3, 4]]},
        {"rank_by": ["Product", -1, ["text", "BM25", "fox"]], "top_k": 3},
        {"rank_by": ["Sum", [["text", "BM25", "fox"], ["Product", -2, ["text", "BM25", "stone"]]]], "top_k": 3},
        {"rank_by": ["Product", 0, ["text", "BM25", "fox"]], "top_k": 3},
        {"rank_by": ["vector", "ANN", [1.0, 0.0]], "top_k": 2, "offset": 1000, "include_attributes": ["cat"]},
        {"rank_by": ["text", "BM25", "fox"], "top_k": 2, "offset": 1000, "include_attributes": True},
        # a query vector whose norm passes the f32 range (each element within it): same ranking as
        # [1, -1], no overflow warning (the suite turns puffer's RuntimeWarnings into errors)
        {"rank_by": ["vector", "ANN", [3e38, -3e38]], "top_k": 1},  # (ANN among 50 exact ties: not by id)
        {"rank_by": ["vector", "kNN", [3e38, -3e38]], "top_k": 4, "filters": ["id", "Gte", 100]},
    ]
    for body in bodies:
        for level in ("strong", "eventual"):
            got = engine.run_query(ns, {**body, "consistency": {"level": level}})
            assert same(got, exact(ns, body)), (level, body, strip(got))
    body = {"rank_by": ["vector", "kNN", q], "top_k": 1}
    assert same(engine.run_query(tie, body), exact(tie, body))


@pytest.mark.parametrize("level", ["strong", "eventual"])
def test_bad_query_on_index_is_invalid_query(mem_db, level):
    """Queries are validated against the index's schema before any candidate search
    (a wrong dimension count once reached usearch/numpy and surfaced as ValueError)."""
    from puffer_cli.errors import InvalidQuery

    ns = mem_db.open_namespace("badq")
    ns.write({"upsert_rows": make_rows(np.random.default_rng(0), 0, 30), "schema": SCHEMA})
    index(ns)
    c = {"consistency": {"level": level}}
    for body, msg in [
        ({"rank_by": ["vector", "ANN", [1, 2, 3]], **c}, "3 dimensions"),
        ({"rank_by": ["vector", "ANN", [1, 2, 3]], "filters": ["cat", "Eq", 1], **c}, "3 dimensions"),
        ({"queries": [{"rank_by": ["nope", "ANN", [1] * 8]}], **c}, "queries[0]"),
        ({"rank_by": ["cat", "BM25", "fox"], **c}, "full-text"),
    ]:
        with pytest.raises(InvalidQuery, match=msg.replace("[", r"\[")):
            engine.run(ns, body)


def test_ann_recall_clustered(mem_db, monkeypatch):
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(20, 24)) * 4
    n = 3000
    lab = rng.integers(0, 20, n)
    x = centers[lab] + rng.normal(size=(n, 24))
    ns = mem_db.open_namespace("ann")
    ns.write(
        {
            "upsert_columns": {
                "id": list(range(n)),
                "vector": x.astype(np.float32).tolist(),
                "cat": (np.arange(n) % 10).tolist(),
            },
            "distance_metric": "euclidean_squared",
        }
    )
    index(ns)
    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 0)  # force HNSW on this small set
    monkeypatch.setattr(reader, "EXACT_MAX_FRACTION", 0.0)
    r = recall(ns, num=20, top_k=10)
    assert r["avg_recall"] >= 0.9 and r["avg_ann_count"] == 10 and r["avg_exhaustive_count"] == 10
    rf = recall(ns, num=20, top_k=10, filters=["cat", "Eq", 3])  # 10% filter: over-fetch + post-filter
    assert rf["avg_recall"] >= 0.9 and rf["avg_ann_count"] == 10


def test_performance_reports_index(mem_db):
    rng = np.random.default_rng(6)
    ns = mem_db.open_namespace("p")
    ns.write({"upsert_rows": make_rows(rng, 0, 50), "schema": SCHEMA})
    index(ns)
    ns.write({"upsert_rows": make_rows(rng, 50, 4)})
    perf = engine.run_query(ns, {"rank_by": ["text", "BM25", "fox"], "top_k": 3})["performance"]
    assert perf["approx_namespace_size"] == 54
    assert perf["exhaustive_search_count"] == 4  # only the tail was scanned
    assert perf["object_store_requests"] >= 1


def test_gc_grace_keeps_previous_generation(mem_db):
    rng = np.random.default_rng(7)
    ns = mem_db.open_namespace("g")
    ns.write({"upsert_rows": make_rows(rng, 0, 20), "schema": SCHEMA})
    index(ns, gc_grace_s=600)
    meta1, _ = ns.read_meta()
    files1 = current_files(ns)
    ns.write({"deletes": list(range(10))})  # 50% dead: the old segment is merged away
    rep = index(ns, gc_grace_s=600)
    assert rep.segments_merged == 1
    keys = index_keys(ns)
    assert files1 <= keys  # a reader still on generation 1 keeps every file
    meta, _ = ns.read_meta()
    assert meta["index"]["retained"][0]["generation"] == meta1["index"]["generation"]
    # once the grace period is over (simulated), the next run collects them
    # (and with no WAL-retention snapshot pointing at it: tests/test_unattended_index.py covers those)
    ns.update_meta(
        lambda m: {
            **{k: v for k, v in m.items() if k not in ("wal_candidate", "wal_floor")},
            "index": {**m["index"], "retained": [{**r, "until": 0} for r in m["index"]["retained"]]},
        }
    )
    assert builder.gc(ns) == len(files1 - current_files(ns)) > 0
    assert index_keys(ns) == current_files(ns)


def test_recreated_namespace_is_not_served_from_the_old_index(db, tmp_path):
    """delete_all, then the same name written and indexed again: generation numbers start
    over, yet no cache (in-process or on disk) may serve the old generation's files."""
    from puffer_cli.store import filecache as cache

    cache.configure(str(tmp_path / "cache"))  # persistent: the on-disk cache must not go stale either
    body = {"rank_by": ["vector", "kNN", [1.0, 0.0]], "top_k": 3, "consistency": {"level": "eventual"}}
    ns = db.open_namespace("again")
    ns.write(
        {
            "upsert_rows": [{"id": i, "vector": [1.0, float(i)], "text": "old fox"} for i in range(5)],
            "schema": {"text": {"type": "string", "full_text_search": True}},
        }
    )
    index(ns)
    assert [r["id"] for r in engine.run_query(ns, body)["rows"]] == [0, 1, 2]
    ns.delete_all()
    ns = db.open_namespace("again")
    ns.write(
        {
            "upsert_rows": [{"id": 100 + i, "vector": [1.0, float(i)], "text": "new fox fox"} for i in range(5)],
            "schema": {"text": {"type": "string", "full_text_search": True}},
        }
    )
    index(ns)
    assert [r["id"] for r in engine.run_query(ns, body)["rows"]] == [100, 101, 102]
    got = engine.run_query(ns, {"rank_by": ["text", "BM25", "fox"], "top_k": 2, "consistency": {"level": "eventual"}})
    assert same(got, exact(ns, {"rank_by": ["text", "BM25", "fox"], "top_k": 2}))
    cache.configure("")
