"""The IVF-SQ8 vector index (puffer_cli/index/ivf.py) and the segment policy around it.

Unit level: recall of build + search against numpy's exact top-k, rows without a
vector left out, ranged reads equal to the memory-mapped file.  Namespace level
(local, memory, moto S3): segments cut during a run, size-tiered merges and
incremental runs (add, update, delete, index again) answer every query form like the
exact engine and like a fresh full build of the same writes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from puffer_cli.index import builder, ivf, paged, ranged, segment
from puffer_cli.search import engine, reader

from .test_index import SCHEMA, exact, make_rows, queries, same


def clustered(rng, n=4000, dims=16, k=40):
    centers = rng.normal(size=(k, dims)) * 3
    return (centers[rng.integers(0, k, n)] + rng.normal(size=(n, dims))).astype(np.float32)


def exact_top(x, q, k, cosine):
    if cosine:
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = 1 - xn @ (q / np.linalg.norm(q))
    else:
        d = ((x - q) ** 2).sum(1)
    return np.argsort(d)[:k], d


def search(route_b, lists_b, x, q, k, metric, probe):
    r = ivf.Route(route_b, x.shape[1], metric)
    lists = ivf.Lists(r, fetch=lambda ranges: [lists_b[a:b] for a, b in ranges])
    cand, _approx, scanned = ivf.search(r, lists, q, 10 * k, probe)
    _, d = exact_top(x, q, k, metric == "cosine_distance")
    return cand[np.argsort(d[cand])[:k]], scanned


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("metric", ["cosine_distance", "euclidean_squared"])
def test_recall_against_numpy(metric, bits):
    rng = np.random.default_rng(1)
    x = clustered(rng)
    route_b, lists_b, info = ivf.build(x, 32, metric, bits=bits)
    assert info["vectors"] == len(x) and info["lists_n"] > 20
    assert len(lists_b) == len(x) * (4 + 16 * bits // 8)  # row positions, then the codes
    hits, scanned = 0, 0
    for q in clustered(rng, n=30):
        got, s = search(route_b, lists_b, x, q, 10, metric, probe=0.15)
        want, _ = exact_top(x, q, 10, metric == "cosine_distance")
        hits += len(set(got) & set(want))
        scanned += s
    assert hits / 300 >= 0.9
    assert scanned / 30 <= 0.3 * len(x)  # the probe bounds the scan (plus the last list)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), probe=st.floats(0.01, 0.5), fill=st.floats(0.0, 4.0))
def test_fill_scans_whole_lists_between_probed_ones(seed, probe, fill):
    """``Route.runs(lists, fill)``: every probed list is covered, a run starts and ends on
    list boundaries (it covers whole lists: what is read is what is scanned), filling only
    joins runs, and rows scanned beyond the probed ones stay within the gap rule plus
    ``fill`` x the rows then wanted."""
    rng = np.random.default_rng(seed % 7)
    x = _FILL_X if seed % 7 else clustered(rng, n=1500, dims=8, k=30)
    route_b, _lists_b, _ = ivf.build(x, 16, "euclidean_squared")
    r = ivf.Route(route_b, x.shape[1], "euclidean_squared")
    probed = r.nearest_lists(np.random.default_rng(seed).normal(size=x.shape[1]).astype(np.float32), probe)
    plain, filled = r.runs(probed), r.runs(probed, fill)
    bounds = set(r.offsets.tolist())
    assert all(a in bounds and b in bounds and a < b for a, b in filled)
    assert len(filled) <= len(plain) and (fill > 0 or filled == plain)
    for a, b in plain:
        assert any(fa <= a and b <= fb for fa, fb in filled)
    want = sum(b - a for a, b in plain)
    gap_rows = ivf.FILL_GAP_BYTES // r.row_bytes
    joined = gap_rows * (len(plain) - 1)  # the gap rule's most (then fill's budget counts them too)
    assert sum(b - a for a, b in filled) - want <= joined + fill * (want + joined)


_FILL_X = clustered(np.random.default_rng(3), n=1500, dims=8, k=30)


def test_probe_one_is_exhaustive():
    rng = np.random.default_rng(2)
    x = clustered(rng, n=1000)
    route_b, lists_b, _ = ivf.build(x, 16, "euclidean_squared")
    q = rng.normal(size=16).astype(np.float32)
    got, scanned = search(route_b, lists_b, x, q, 10, "euclidean_squared", probe=1.0)
    want, _ = exact_top(x, q, 10, False)
    assert scanned == len(x) and set(got) == set(want)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from([0.0, -0.0, 1.5, -2.0, 1e-45, 3e38, np.nan, np.inf, -np.inf]), min_size=3, max_size=3),
        max_size=12,
    ),
    st.booleans(),
)
def test_rows_with_a_vector_are_those_without_nan_and_under_cosine_not_zero(rows, cosine):
    """ivf._indexable (one pass when every value is finite) against its definition: no NaN,
    and under cosine some value that is not zero (infinities and sums overflowing included)."""
    mat = np.asarray(rows, np.float32).reshape(len(rows), 3)
    want = [not any(math.isnan(v) for v in r) and (not cosine or any(v != 0 for v in r)) for r in mat.tolist()]
    assert ivf._indexable(mat, cosine).tolist() == want


def test_rows_without_a_vector_are_left_out():
    rng = np.random.default_rng(3)
    x = clustered(rng, n=500)
    x[7] = np.nan
    x[9] = 0.0  # no direction under cosine
    route_b, lists_b, info = ivf.build(x, 16, "cosine_distance")
    r = ivf.Route(route_b, 16, "cosine_distance")
    pos = np.frombuffer(lists_b[: 4 * r.rows], dtype="<u4")
    assert info["vectors"] == r.rows == 498 and 7 not in pos and 9 not in pos
    assert sorted(pos.tolist()) == [i for i in range(500) if i not in (7, 9)]
    assert r.unindexed.tolist() == [9]  # the zero vector ranks at distance 1; row 7 has no vector
    empty_r, empty_l, empty_i = ivf.build(np.full((3, 4), np.nan, np.float32), 16, "cosine_distance")
    r0 = ivf.Route(empty_r, 4, "cosine_distance")
    assert empty_i["vectors"] == 0 and r0.nlist == 0 and empty_l == b""
    assert ivf.search(r0, ivf.Lists(r0, fetch=lambda rs: []), np.ones(4, np.float32), 5, 0.1)[0].size == 0


@pytest.mark.parametrize("bits,dims", [(8, 16), (4, 16), (4, 15)])
@pytest.mark.parametrize("in_list_order", [False, True])
def test_ranged_lists_equal_memory_mapped(tmp_path, in_list_order, bits, dims):
    """Both layouts: explicit row positions, and rows written in list order (positions
    implicit, as for a segment's first vector field); int8 and int4 codes (an odd
    dimension count pads the last byte)."""
    rng = np.random.default_rng(4)
    x = clustered(rng, n=2000, dims=dims)
    if in_list_order:
        f = ivf.fit(x, 32, "euclidean_squared")
        perm = f.row_order()
        x = x[perm]
        route_b, lists_b, _ = ivf.encode(f.permuted(perm), x, bits=bits)
        assert len(lists_b) == 2000 * (dims if bits == 8 else (dims + 1) // 2)  # codes only
    else:
        route_b, lists_b, _ = ivf.build(x, 32, "euclidean_squared", bits=bits)
    path = tmp_path / "lists"
    path.write_bytes(lists_b)
    r = ivf.Route(route_b, dims, "euclidean_squared")
    assert r.bits == bits
    runs = r.runs(r.nearest_lists(rng.normal(size=dims).astype(np.float32), 0.2))
    a = ivf.Lists(r, local=path).blocks(runs)
    b = ivf.Lists(r, fetch=lambda ranges: [lists_b[s:e] for s, e in ranges]).blocks(runs)
    assert len(a) == len(b) == len(runs)
    for (pa, ca), (pb, cb) in zip(a, b):
        assert np.array_equal(pa, pb) and np.array_equal(ca, cb)
    q = x[5]
    got, _ = search(route_b, lists_b, x, q, 1, "euclidean_squared", probe=0.2)
    assert got[0] == 5  # positions map back to the rows as stored


def test_options_clamp_stored_values():
    o = ivf.options({"ann": {"list_rows": 3, "probe": 7, "rerank": "x"}})
    assert o == {
        "list_rows": 16,
        "probe": 1.0,
        "probe_min_rows": ivf.DEFAULTS["probe_min_rows"],
        "rerank": ivf.DEFAULTS["rerank"],
        "fill": ivf.DEFAULTS["fill"],
        "prune": ivf.DEFAULTS["prune"],
    }


def test_paged_ranges_equal_the_whole_file(s3_server, tmp_path, monkeypatch):
    """On a remote store a large file is written as parts; ranged reads across part
    boundaries (cached parts read locally) and the assembled whole equal the data."""
    import puffer_cli
    from puffer_cli.store import filecache

    monkeypatch.setattr(paged, "PART_BYTES", 1000)
    db = puffer_cli.connect("s3://puffer-test/paged", s3_endpoint=s3_server)
    c = filecache.Cache(str(tmp_path / "c"))
    data = np.random.default_rng(9).integers(0, 256, 10_500, dtype=np.uint8).tobytes()

    class W:
        store, cache = db.store, filecache.Cache(str(tmp_path / "w"))

        def put(self, key, b, cache=True):
            db.store.write(key, b)
            return key

    entry = paged.put(W(), "p/index/00000000000000000001/f.bin", data)
    assert len(entry["parts"]) == 11 and paged.files(entry) == entry["parts"]
    ranges = [(0, 10), (995, 1005), (990, 3010), (10_400, 10_500), (7, 7), (4000, 4001)]
    assert paged.read_ranges(c, db.store, entry, ranges) == [data[a:b] for a, b in ranges]
    c.file(db.store, entry["parts"][1])  # a cached part is read locally
    assert paged.read_ranges(c, db.store, entry, ranges) == [data[a:b] for a, b in ranges]
    assert paged.whole(c, db.store, entry).read_bytes() == data


# ---------------------------------------------------------------- namespace level
@pytest.fixture
def small_segments(monkeypatch):
    """Segments of 50 rows, every ANN query through the IVF lists, and probe = every list
    (so ANN answers equal the exact engine's and can be compared row for row)."""
    monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "50")
    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(reader, "EXACT_MAX_FRACTION", 0.0)
    monkeypatch.setitem(ivf.DEFAULTS, "probe", 1.0)
    monkeypatch.setitem(ivf.DEFAULTS, "list_rows", 16)
    monkeypatch.setattr(paged, "PART_BYTES", 1500)  # on S3, vectors/lists/ids files of several parts


def writes(rng):
    """Batches of writes: inserts, updates of rows in earlier segments, deletes."""
    return [
        [{"upsert_rows": make_rows(rng, 0, 70), "schema": SCHEMA}, {"upsert_rows": make_rows(rng, 70, 60)}],
        [
            {"upsert_rows": make_rows(rng, 130, 25)},
            {"upsert_rows": make_rows(rng, 10, 5)},  # updates rows of a cut segment
            {"deletes": [0, 1, 2, 55, 140]},
            {"patch_rows": [{"id": 60, "cat": 9}]},
        ],
        [{"upsert_rows": make_rows(rng, 155, 12)}, {"deletes": list(range(20, 45))}],
    ]


def index(ns):
    return builder.index_namespace(ns, gc_grace_s=0)


def test_incremental_runs_equal_exact_and_a_full_build(db, small_segments):
    rng = np.random.default_rng(7)
    batches = writes(rng)
    inc, full = db.open_namespace("inc"), db.open_namespace("full")
    for batch in batches:
        for body in batch:
            inc.write(body)
            full.write(body)
        rep = index(inc)
        assert rep.status == "indexed"
        for body in queries(rng):
            assert same(engine.run_query(inc, body), exact(inc, body)), body
    index(full)
    man = builder.load_manifest(full.store, full.read_meta()[0]["index"]["manifest"])
    assert len(man["segments"]) >= 3 and all(s["rows"] <= 50 for s in man["segments"])
    for body in queries(rng):
        body = {**body, "consistency": {"level": "eventual"}}
        assert same(engine.run_query(inc, body), engine.run_query(full, body)), body
    docs, _ = inc.docs()
    assert inc.read_meta()[0]["index"]["rows"] == docs.height


def test_cut_segments_bound_a_run(mem_db, small_segments):
    """One run over 130 rows writes segments of at most 50 rows, each with its own IVF."""
    ns = mem_db.open_namespace("cut")
    rng = np.random.default_rng(8)
    for body in writes(rng)[0]:
        ns.write(body)
    rep = index(ns)
    man = builder.load_manifest(ns.store, ns.read_meta()[0]["index"]["manifest"])
    rows = [s["rows"] for s in man["segments"]]
    assert sum(rows) == 130 and max(rows) <= 50 and rep.rows_indexed == 130
    assert all(s["ann"]["vector"]["kind"] == ivf.KIND for s in man["segments"])
    for body in queries(rng)[:3]:
        assert same(engine.run_query(ns, body), exact(ns, body)), body


def test_recall_measures_the_probe(mem_db, monkeypatch):
    """`recall(probe=...)` measures another probe than the schema's without changing it."""
    from puffer_cli.errors import InvalidRequest
    from puffer_cli.jobs.recall import recall

    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(reader, "EXACT_MAX_FRACTION", 0.0)
    monkeypatch.setitem(ivf.DEFAULTS, "probe_min_rows", 0)  # else a 3,000-row segment is scanned whole
    # 16-dim int8 codes rank coarsely: at rerank 2 a full probe found 0.99 of the true top 10
    monkeypatch.setitem(ivf.DEFAULTS, "rerank", 10)
    rng = np.random.default_rng(10)
    x = clustered(rng, n=3000, dims=16, k=60)
    ns = mem_db.open_namespace("probe")
    ns.write({"upsert_columns": {"id": list(range(len(x))), "vector": x.tolist()}})
    builder.index_namespace(ns, gc_grace_s=0)
    full = recall(ns, num=20, top_k=10, probe=1.0)
    low = recall(ns, num=20, top_k=10, probe=0.001)
    assert full["avg_recall"] == 1.0 and full["probe"] == 1.0
    assert low["avg_recall"] < full["avg_recall"]
    assert ivf.options(None)["probe"] == ivf.DEFAULTS["probe"]  # the override ended with the call
    for bad in (0, -1, 1.5, float("nan"), True, "0.1", 10**100):
        with pytest.raises(InvalidRequest):
            recall(ns, probe=bad)
    for bad in (-0.1, 9, float("nan"), True, "1"):
        with pytest.raises(InvalidRequest, match="fill"):
            recall(ns, fill=bad)
    seen = []
    real = ivf.search

    def spy(*a, **kw):
        seen.append(kw["fill"])
        return real(*a, **kw)

    monkeypatch.setattr(ivf, "search", spy)
    out = recall(ns, num=3, probe=0.01, fill=0)
    assert out["probe"] == 0.01 and out["fill"] == 0 and seen and set(seen) == {0.0}
    assert ivf.options(None)["fill"] == ivf.DEFAULTS["fill"]  # the override ended with the call
    for bad in (-0.1, 11, float("nan"), True, "1"):
        with pytest.raises(InvalidRequest, match="prune"):
            recall(ns, prune=bad)
    pruned = []
    monkeypatch.setattr(ivf, "search", lambda *a, **kw: pruned.append(kw["prune"]) or real(*a, **kw))
    out = recall(ns, num=3, prune=0)  # the fixed probe, this call only
    assert out["prune"] == 0 and pruned and set(pruned) == {0.0}
    assert ivf.options(None)["prune"] == ivf.DEFAULTS["prune"] > 0


@pytest.mark.parametrize("value", ["abc", "", "0", "-5", "1e9"])
def test_segment_rows_knob_takes_bad_values_safely(monkeypatch, value):
    """PUFFER_INDEX_SEGMENT_ROWS: not an integer -> the default; below 1 -> 1 row."""
    monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", value)
    got = builder.segment_rows()
    assert got == (builder.SEGMENT_MAX_ROWS if value in ("abc", "", "1e9") else 1)


def test_format1_hnsw_segment_is_searched_then_rebuilt(mem_db, monkeypatch, tmp_path):
    """A generation written before IVF (format 1: a usearch HNSW per segment) keeps
    answering ANN queries; the next run rebuilds its segment as IVF (stale signature)."""
    import json

    from usearch.index import Index

    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(reader, "EXACT_MAX_FRACTION", 0.0)
    rng = np.random.default_rng(11)
    x = clustered(rng, n=600, dims=16)
    ns = mem_db.open_namespace("old")
    ns.write({"upsert_columns": {"id": list(range(len(x))), "vector": x.tolist()}})
    builder.index_namespace(ns, gc_grace_s=0)
    meta, _ = ns.read_meta()
    man = builder.load_manifest(ns.store, meta["index"]["manifest"])
    seg = man["segments"][0]
    vec = np.frombuffer(ns.store.read(seg["vectors"]["vector"]["key"]), dtype="<f4").reshape(-1, 16)
    hnsw = Index(ndim=16, metric="cos", dtype="f32")
    hnsw.add(np.arange(len(vec), dtype=np.uint64), np.ascontiguousarray(vec))
    path = str(tmp_path / "old.usearch")
    hnsw.save(path)
    key = seg["vectors"]["vector"]["key"].rsplit("/", 1)[0] + "/ann-vector.usearch"
    ns.store.write(key, open(path, "rb").read())
    seg["ann"]["vector"] = {"key": key, "vectors": len(vec), "metric": "cos", "sig": "format-1"}
    man["format"], man["files"] = 1, sorted({*man["files"], key})
    old_key = meta["index"]["manifest"].replace("manifest-", "manifest-f1")
    ns.store.write(old_key, json.dumps(man).encode())

    def point(cur):
        cur["index"] = {**cur["index"], "manifest": old_key, "prefetch": []}
        return cur

    ns.update_meta(point)
    segment.GENS.clear()
    q = x[3].tolist()
    body = {"rank_by": ["vector", "ANN", q], "top_k": 5, "consistency": {"level": "eventual"}}
    got = engine.run_query(ns, body)
    want = exact(ns, {"rank_by": ["vector", "ANN", q], "top_k": 5})
    assert [r["id"] for r in got["rows"]] == [r["id"] for r in want["rows"]]
    assert segment.GENS and all(s.ann("vector") is not None for g in segment.GENS.values() for s in g.segments)
    ns.write({"upsert_rows": [{"id": 10_000, "vector": x[0].tolist()}]})
    rep = builder.index_namespace(ns, gc_grace_s=0)
    assert rep.status == "indexed" and rep.segments_merged == 1  # the HNSW segment was rebuilt
    man2 = builder.load_manifest(ns.store, ns.read_meta()[0]["index"]["manifest"])
    assert all(s["ann"]["vector"]["kind"] == ivf.KIND for s in man2["segments"])
    assert [r["id"] for r in engine.run_query(ns, body)["rows"]][:1] == [r["id"] for r in got["rows"]][:1]


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("metric", ["cosine_distance", "euclidean_squared"])
def test_approximate_distances_are_in_the_metrics_units(metric, bits):
    """search's approximate distances estimate the exact ones (so candidates of segments
    with different steps, int8 or int4, can be compared when choosing what to re-rank)."""
    rng = np.random.default_rng(3)
    x = clustered(rng)
    route_b, lists_b, _info = ivf.build(x, 32, metric, bits=bits)
    r = ivf.Route(route_b, x.shape[1], metric)
    lists = ivf.Lists(r, fetch=lambda ranges: [lists_b[a:b] for a, b in ranges])
    q = x[7] + rng.normal(0, 0.1, x.shape[1]).astype(np.float32)
    # int4 is coarse among near neighbours (its error ~0.03 in cosine distance): measured over
    # a quarter of the rows, where distances spread
    cand, approx, _ = ivf.search(r, lists, q, 50, 0.3) if bits == 8 else ivf.search(r, lists, q, 1000, 1.0)
    _, d = exact_top(x, q, 10, metric == "cosine_distance")
    exact = d[cand]
    assert np.corrcoef(approx, exact)[0, 1] > (0.99 if bits == 8 else 0.95)
    assert np.median(np.abs(approx - exact) / np.maximum(np.abs(exact), 1e-6)) < (0.05 if bits == 8 else 0.1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 500)), max_size=40),
    st.sampled_from([0, 16, 1024]),
    st.sampled_from([0.0, 0.25, 1.0]),
)
def test_coalesce_covers_every_range_within_its_byte_budget(spans, gap, extra):
    ranges = [(a, a + n) for a, n in spans]
    out = ranged.coalesce(ranges, gap, extra)
    assert out == sorted(out) and all(a < b for a, b in out)
    assert all(out[i][1] < out[i + 1][0] for i in range(len(out) - 1))  # disjoint, not touching
    for a, b in ranges:
        assert b <= a or any(x <= a and b <= y for x, y in out)  # every range inside one request
    by_gap = ranged.coalesce(ranges, gap, 0.0)
    assert len(out) <= len(by_gap)
    wanted = sum(b - a for a, b in by_gap)
    assert sum(b - a for a, b in out) - wanted <= extra * wanted  # extra bytes within the budget


def test_lists_are_chained_by_nearness_within_a_coarse_cluster():
    """train() stores each coarse cluster's lists in a nearest-neighbour chain: the same
    centroids, and the sum of distances between neighbours in the file is shorter than
    k-means order gives."""
    import numpy as np
    from puffer_cli.index import ivf

    rng = np.random.default_rng(3)
    c = rng.normal(size=(60, 8)).astype(np.float32)
    out = ivf._chained(c, cosine=False)
    assert sorted(map(tuple, out.tolist())) == sorted(map(tuple, c.tolist()))

    def path(m):
        return float(np.linalg.norm(np.diff(m, axis=0), axis=1).sum())

    assert path(out) < 0.8 * path(c)
    assert ivf._chained(c[:2], cosine=False) is not None


def test_scoring_run_by_run_equals_one_call(monkeypatch):
    """Few runs are scored one SIMD call each (no copy of the codes), many in one call over
    the gathered codes: the same candidates and distances, with and without a filter."""
    rng = np.random.default_rng(12)
    x = clustered(rng, n=3000, dims=16, k=60)
    route_b, lists_b, _ = ivf.build(x, 16, "euclidean_squared")
    r = ivf.Route(route_b, 16, "euclidean_squared")
    lists = ivf.Lists(r, fetch=lambda ranges: [lists_b[a:b] for a, b in ranges])
    sel = rng.random(len(x)) < 0.5
    for q in clustered(rng, n=5, dims=16, k=60):
        got = {}
        for most in (0, 10**6):
            monkeypatch.setattr(ivf, "SCORE_PER_RUN_MAX", most)
            for s in (None, sel):
                pos, d, scanned = ivf.search(r, lists, q, 40, 0.3, s, fill=0.5)
                o = np.argsort(pos)
                got.setdefault(s is None, []).append((pos[o], d[o], scanned))
        for (pa, da, sa), (pb, db, sb) in got.values():
            assert np.array_equal(pa, pb) and np.allclose(da, db) and sa == sb


# ---------------------------------------------------------------- shared routing (format 3)
@pytest.fixture
def shared(monkeypatch):
    """Shared routing on at any size (PUFFER_IVF_ROUTING=shared; auto builds it past AUTO_SHARED_ROWS)."""
    monkeypatch.setenv("PUFFER_IVF_ROUTING", "shared")


def _man(ns):
    return builder.load_manifest(ns.store, ns.read_meta()[0]["index"]["manifest"])


def _ann_query(ns, v, k=10, **kw):
    body = {"rank_by": ["vector", "ANN", v.tolist()], "top_k": k, "consistency": {"level": "eventual"}, **kw}
    return [r["id"] for r in engine.run_query(ns, body)["rows"]]


def test_shared_routing_recall_against_exact(db, monkeypatch, shared):
    """Several segments follow ONE book; a query ranks its lists once and scans those lists
    in every segment; at the defaults (with the floor lowered so the probe matters) the
    indexed top 10 finds most of the exact top 10, and at probe 1 all of it."""
    monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "1000")
    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(reader, "EXACT_MAX_FRACTION", 0.0)
    monkeypatch.setitem(ivf.DEFAULTS, "probe_min_rows", 400)
    monkeypatch.setitem(ivf.DEFAULTS, "rerank", 10)
    rng = np.random.default_rng(21)
    x = clustered(rng, n=3000, dims=16, k=60)
    ns = db.open_namespace("shared")
    ns.write({"upsert_columns": {"id": list(range(len(x))), "vector": x.tolist()}})
    builder.index_namespace(ns, gc_grace_s=0)
    man = _man(ns)
    assert man["format"] == 3 and len(man["segments"]) == 3
    book = man["ann_books"]["vector"]
    assert {s["ann"]["vector"]["book"] for s in man["segments"]} == {book["id"]}
    assert book["key"] in ns.read_meta()[0]["index"]["prefetch"]
    hits = []
    for qi in rng.integers(0, len(x), 15):
        q = x[qi] + rng.normal(size=16).astype(np.float32) * 0.3
        truth = set(exact_top(x, q, 10, True)[0].tolist())
        hits.append(len(truth & set(_ann_query(ns, q))) / 10)
        with ivf.override(probe=1.0):
            assert set(_ann_query(ns, q)) == truth
    assert np.mean(hits) >= 0.9


def test_a_small_segment_follows_the_book_when_the_probe_is_a_part(mem_db, monkeypatch, shared):
    """Unfiltered, under shared routing: a segment of few rows (an incremental run's) scans
    its share of the book's chosen lists like the others when the query probes a part of
    the namespace, and is searched exactly when the probe covers every row."""
    monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "1000")
    monkeypatch.setitem(ivf.DEFAULTS, "probe_min_rows", 400)
    rng = np.random.default_rng(33)
    x = clustered(rng, n=2100, dims=16, k=60)
    ns = mem_db.open_namespace("tail")
    ns.write({"upsert_columns": {"id": list(range(2000)), "vector": x[:2000].tolist()}})
    index(ns)
    ns.write({"upsert_columns": {"id": list(range(2000, 2100)), "vector": x[2000:].tolist()}})
    index(ns)
    assert sorted(s["rows"] for s in _man(ns)["segments"]) == [100, 1000, 1000]
    exact_rows = []
    real = reader.IndexedView._exact

    def spy(self, seg, f, pos, *a, **kw):
        exact_rows.append(len(pos))
        return real(self, seg, f, pos, *a, **kw)

    monkeypatch.setattr(reader.IndexedView, "_exact", spy)
    q = x[2050] + rng.normal(size=16).astype(np.float32) * 0.1
    got = _ann_query(ns, q)
    assert exact_rows == [] and len(got) == 10
    with ivf.override(probe=1.0):  # every row probed: the small segment exactly
        assert set(_ann_query(ns, q)) == set(exact_top(x, q, 10, True)[0].tolist())
    assert sorted(exact_rows) == [100, 1000, 1000]


def test_shared_routing_scans_the_chosen_lists_only(mem_db, monkeypatch, shared):
    """Rows scanned per query follow ivf.probe_rows of the namespace, not probe x every
    segment: with 8 segments the shared book scans about the budget, a per-segment IVF
    (format 2) at least the floor x sqrt(the segment's share of the rows) in each segment."""
    monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "1000")
    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(reader, "EXACT_MAX_FRACTION", 0.0)
    monkeypatch.setitem(ivf.DEFAULTS, "probe_min_rows", 500)
    monkeypatch.setitem(ivf.DEFAULTS, "fill", 0.0)
    monkeypatch.setitem(ivf.SHARED_DEFAULTS, "fill", 0.0)
    monkeypatch.setitem(ivf.DEFAULTS, "prune", 0.0)  # a fixed probe (the pruned one: below)
    monkeypatch.setitem(ivf.SHARED_DEFAULTS, "prune", 0.0)
    rng = np.random.default_rng(22)
    x = clustered(rng, n=8000, dims=16, k=80)
    seen = []
    real = ivf.search

    def spy(*a, **kw):
        out = real(*a, **kw)
        seen.append(out[2])
        return out

    monkeypatch.setattr(ivf, "search", spy)
    from puffer_cli.index import stack

    real_stack = stack.Stack.search

    def spy_stack(self, *a, **kw):  # shared routing's big segments: one search of their stack
        out = real_stack(self, *a, **kw)
        seen.append(out[2])
        return out

    monkeypatch.setattr(stack.Stack, "search", spy_stack)
    scanned = {}
    for mode in ("segment", "shared"):
        monkeypatch.setenv("PUFFER_IVF_ROUTING", mode)
        ns = mem_db.open_namespace(mode)
        ns.write({"upsert_columns": {"id": list(range(len(x))), "vector": x.tolist()}})
        builder.index_namespace(ns, gc_grace_s=0)
        seen.clear()
        _ann_query(ns, x[5])
        scanned[mode] = sum(seen)
    budget = ivf.probe_rows(len(x), ivf.SHARED_DEFAULTS["probe"], 500)  # ~1,789: 0.02 x sqrt(8,000 x 1M)
    # format 2: each of the 8 segments (1/8 of the rows) scans at least the floor x sqrt(1/8)
    assert 8 * int(500 * math.sqrt(1 / 8)) <= scanned["segment"] < 8 * 500
    assert budget <= scanned["shared"] < budget + 300  # + the last list's overshoot


def test_nested_overrides_keep_the_enclosing_values():
    with ivf.override(prune=0.0):
        with ivf.override(probe=0.1):
            assert dict(ivf.forced()) == {"probe": 0.1, "prune": 0.0}
            assert ivf.options(None)["prune"] == 0.0 and ivf.options(None)["probe"] == 0.1
        assert dict(ivf.forced()) == {"prune": 0.0}
    assert ivf.forced() == ()


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 50), min_size=1, max_size=60),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=60, max_size=60),
    d0=st.floats(-0.1, 3.0),
    lo=st.floats(0.0, 2000.0),
    span=st.floats(0.0, 2000.0),
    eps=st.floats(0.0, 10.0),
)
def test_pruned_takes_a_prefix_between_its_bounds(sizes, gaps, d0, lo, span, eps):
    """Whatever the distances: a prefix of the ranking, holding ``lo`` rows (or every list),
    never a list past the first that holds ``hi``, and exactly the lists within (1 + eps) x
    the nearest distance when that count falls between."""
    cand = np.arange(len(sizes))[::-1].copy()  # any list ids, nearest first
    cum = np.cumsum(np.asarray(sizes, np.int64))
    dist = d0 + np.cumsum(np.asarray(gaps[: len(sizes)]))
    hi = lo + span
    got = ivf.pruned((cand, cum), dist, lo, hi, eps)
    n = len(got)
    assert 1 <= n <= len(cand) and np.array_equal(got, cand[:n])
    a = min(len(cand), int(np.searchsorted(cum, lo)) + 1)
    b = min(len(cand), int(np.searchsorted(cum, hi)) + 1)
    assert a <= n <= max(a, b)
    near = int(np.sum(dist <= max(dist[0], 0.0) * (1 + eps)))
    if a <= near <= b:
        assert n == near


def test_pruned_probe_stops_at_the_floor_near_a_cluster_and_scans_more_among_equals():
    """ivf.pruned: the floor's lists always; past it, the lists within (1 + eps) x the
    nearest one's distance; never past the cap (cumulative rows: 10 a list)."""
    cand = np.arange(100)
    cum = 10 * np.arange(1, 101)
    near = np.concatenate([[0.1], np.linspace(1.0, 2.0, 99)])  # one list much nearer than the rest
    flat = np.linspace(1.0, 1.2, 100)  # every list at about the same distance
    assert len(ivf.pruned((cand, cum), near, 200, 600, 0.4)) == 20  # the floor: 200 rows
    assert len(ivf.pruned((cand, cum), flat, 200, 600, 0.4)) == 60  # all within 1.4x: up to the cap
    mid = np.linspace(1.0, 2.0, 100)  # within 1.4x: the first 40 lists
    assert len(ivf.pruned((cand, cum), mid, 200, 600, 0.4)) == 40
    assert ivf.probe_span(1000, 10_000, 0) == (400, 1500)
    assert ivf.probe_span(1000, 10_000, 800) == (800, 1500)  # probe_min_rows holds
    assert ivf.probe_span(1000, 1200, 0) == (400, 1200)


def test_near_tail_keeps_the_head_and_takes_near_lists_past_it():
    """ivf.near_tail: the nearest lists holding ``keep`` rows always; past them only lists
    lying within ``gap`` members of one of those in the file, nearest first, until they hold
    the rows of the ``k`` nearest; gap < 0: the ``k`` nearest."""
    sizes = np.full(100, 10)  # list l holds members [10 l, 10 l + 10)
    ends = np.cumsum(sizes)
    cand = np.array([50, 51, 90, 10, 49, 52, 53, 70])  # nearest first
    cum = np.cumsum(sizes[cand])
    got = ivf.near_tail((cand, cum), 6, ends, 20, 10)  # head: 50, 51; the next 4 lists' rows: 40
    assert got.tolist() == [50, 51, 49, 52, 53]  # 90 and 10 lie far: lists within 10 members instead
    assert ivf.near_tail((cand, cum), 6, ends, 20, 400).tolist() == cand[:6].tolist()  # every gap within 400
    assert ivf.near_tail((cand, cum), 6, ends, 20, -1).tolist() == cand[:6].tolist()
    assert ivf.near_tail((cand, cum), 2, ends, 20, 0).tolist() == [50, 51]  # no tail past the head
    # too few near lists: the near ones only (the probe's rows fall short rather than read far);
    # near the head itself, not near another list of the tail (53 touches 52, not the head)
    assert ivf.near_tail((cand, cum), 8, ends, 20, 0).tolist() == [50, 51, 49, 52]


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=60),
    seed=st.integers(0, 1000),
    k=st.integers(1, 60),
    keep=st.floats(0.0, 1500.0),
    gap=st.integers(-1, 200),
)
def test_near_tail_is_the_head_and_lists_near_it(sizes, seed, k, keep, gap):
    """Whatever the ranking: the head (the nearest lists holding ``keep`` rows) in rank
    order, then only lists within ``gap`` members of a head list, in rank order, stopping
    once they hold the ``k`` nearest lists' rows."""
    sz = np.asarray(sizes, np.int64)
    ends = np.cumsum(sz)
    cand = np.random.default_rng(seed).permutation(len(sz))
    cum = np.cumsum(sz[cand])
    k = min(k, len(cand))
    got = ivf.near_tail((cand, cum), k, ends, keep, gap)
    a = int(np.searchsorted(cum, keep)) + 1
    if gap < 0 or k <= a:
        assert np.array_equal(got, cand[:k])
        return
    assert np.array_equal(got[:a], cand[:a])
    rank = {int(c): i for i, c in enumerate(cand)}
    assert all(rank[int(x)] < rank[int(y)] for x, y in zip(got, got[1:]))  # rank order
    head = cand[:a]
    for t in got[a:]:
        st_, en_ = ends[t] - sz[t], ends[t]
        assert any(min(abs(st_ - ends[h]), abs((ends[h] - sz[h]) - en_)) <= gap for h in head)
    if len(got) > a:  # stops at the first list of the tail reaching the target
        assert sz[got[:-1]].sum() < cum[k - 1]


@pytest.mark.parametrize("routing", ["shared", "segment"])
def test_a_pruned_probe_follows_the_query(mem_db, monkeypatch, routing):
    """Unfiltered, ``prune`` (0.5 by default) scans between PRUNE_FLOOR and PRUNE_CAP
    (SEGMENT_PRUNE_CAP under format 2) x the fixed probe: a query on a tight cluster the
    floor, a query in the open, among lists at similar distances, more; prune 0 the fixed
    probe."""
    monkeypatch.setenv("PUFFER_IVF_ROUTING", routing)
    if routing == "segment":
        monkeypatch.setitem(ivf.DEFAULTS, "fill", 0.0)
        monkeypatch.setitem(ivf.DEFAULTS, "probe", 0.05)
        monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "8000")  # one segment: its own probe
    else:
        monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "2000")
    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(reader, "EXACT_MAX_FRACTION", 0.0)
    monkeypatch.setitem(ivf.DEFAULTS, "probe_min_rows", 0)
    rng = np.random.default_rng(23)
    centers = rng.normal(size=(80, 16)) * 3
    x = (centers[rng.integers(0, 80, 8000)] + 0.3 * rng.normal(size=(8000, 16))).astype(np.float32)
    seen: list[int] = []
    from puffer_cli.index import stack

    real_stack, real = stack.Stack.search, ivf.search

    def spy_stack(self, *a, **kw):
        out = real_stack(self, *a, **kw)
        seen.append(out[2])
        return out

    def spy(*a, **kw):
        out = real(*a, **kw)
        seen.append(out[2])
        return out

    monkeypatch.setattr(stack.Stack, "search", spy_stack)
    monkeypatch.setattr(ivf, "search", spy)
    ns = mem_db.open_namespace("p")
    ns.write({"upsert_columns": {"id": list(range(len(x))), "vector": x.tolist()}})
    builder.index_namespace(ns, gc_grace_s=0)
    need = ivf.probe_rows(len(x), ivf.SHARED_DEFAULTS["probe"], 0)  # 0.05 x 8,000 rows, both
    lo, hi = ivf.probe_span(need, len(x), 0, ivf.SEGMENT_PRUNE_CAP if routing == "segment" else None)

    def scanned(q):
        seen.clear()
        got = _ann_query(ns, q)
        return sum(seen), got

    on_cluster, got = scanned(x[5])
    assert got[0] == 5 and lo <= on_cluster < lo + 150  # + the last list's overshoot
    in_open, _ = scanned(np.zeros(16, np.float32) + 0.01 * rng.normal(size=16).astype(np.float32))
    assert on_cluster < in_open <= hi + 150
    with ivf.override(prune=0.0):  # what the benchmarks compare
        fixed, got0 = scanned(x[5])
    assert need <= fixed < need + 150 and got0[0] == 5


def test_incremental_runs_keep_the_book_and_equal_a_fresh_build(db, small_segments, shared):
    """add / update / delete, then index again: the book trained by the first run is kept
    (the namespace stays within GROWTH of its trained size), every segment follows it, and
    answers equal a fresh build's (probe 1: both exact over the lists)."""
    rng = np.random.default_rng(23)
    inc, full = db.open_namespace("inc"), db.open_namespace("full")
    batches = writes(rng)
    ids = []
    for batch in batches:
        for body in batch:
            inc.write(body)
            full.write(body)
        index(inc)
        man = _man(inc)
        ids.append(man["ann_books"]["vector"]["id"])
        assert {s["ann"]["vector"]["book"] for s in man["segments"]} == {ids[-1]}
    assert len(set(ids)) == 1
    index(full)
    for body in queries(rng):
        body = {**body, "consistency": {"level": "eventual"}}
        assert same(engine.run_query(inc, body), engine.run_query(full, body)), body
        assert same(engine.run_query(inc, body), exact(inc, body)), body


def test_growth_retrains_the_book_and_rebuilds_every_segment(mem_db, monkeypatch, shared):
    """A namespace grown past GROWTH x the rows its book was trained for gets a new book
    (more lists) and every segment is rewritten to follow it."""
    monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "500")
    rng = np.random.default_rng(24)
    x = clustered(rng, n=4200, dims=8)
    ns = mem_db.open_namespace("grow")
    ns.write({"upsert_columns": {"id": list(range(400)), "vector": x[:400].tolist()}})
    index(ns)
    b1 = _man(ns)["ann_books"]["vector"]
    ns.write({"upsert_columns": {"id": list(range(400, 1000)), "vector": x[400:1000].tolist()}})
    index(ns)  # 1000 < 4 x 400: kept
    assert _man(ns)["ann_books"]["vector"]["id"] == b1["id"]
    ns.write({"upsert_columns": {"id": list(range(1000, 4200)), "vector": x[1000:].tolist()}})
    rep = index(ns)
    man = _man(ns)
    b2 = man["ann_books"]["vector"]
    assert b2["id"] != b1["id"] and b2["trained_rows"] == 4200 and b2["lists_n"] > b1["lists_n"]
    assert {s["ann"]["vector"]["book"] for s in man["segments"]} == {b2["id"]}
    assert rep.rows_merged == 1000
    q = x[7]
    with ivf.override(probe=1.0):
        assert _ann_query(ns, q, 5) == [
            r["id"] for r in exact(ns, {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 5})["rows"]
        ]


def test_format2_generation_answers_then_migrates(db, monkeypatch):
    """A generation of per-segment IVFs (format 2, PUFFER_IVF_ROUTING=segment) keeps
    answering; the next run under shared routing rebuilds its segments to follow a book,
    and a query then equals the exact engine's answer as before."""
    monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "300")
    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(reader, "EXACT_MAX_FRACTION", 0.0)
    monkeypatch.setitem(ivf.DEFAULTS, "probe", 1.0)
    rng = np.random.default_rng(25)
    x = clustered(rng, n=900, dims=16)
    ns = db.open_namespace("mig")
    ns.write({"upsert_columns": {"id": list(range(len(x))), "vector": x.tolist()}})
    monkeypatch.setenv("PUFFER_IVF_ROUTING", "segment")
    index(ns)
    man = _man(ns)
    assert not man["ann_books"] and all("book" not in s["ann"]["vector"] for s in man["segments"])
    body = {"rank_by": ["vector", "ANN", x[3].tolist()], "top_k": 8}
    want = [r["id"] for r in exact(ns, body)["rows"]]
    monkeypatch.setenv("PUFFER_IVF_ROUTING", "shared")  # shared routing on: the old generation still answers
    segment.GENS.clear()
    assert [r["id"] for r in engine.run_query(ns, body)["rows"]] == want
    rep = index(ns)
    man = _man(ns)
    assert rep.status == "indexed" and rep.segments_merged == 3 and man["format"] == 3
    assert {s["ann"]["vector"]["book"] for s in man["segments"]} == {man["ann_books"]["vector"]["id"]}
    assert [r["id"] for r in engine.run_query(ns, body)["rows"]] == want


def test_auto_routing_turns_shared_past_its_threshold_and_stays(db, monkeypatch):
    """PUFFER_IVF_ROUTING unset (auto): a namespace of at most AUTO_SHARED_ROWS rows gets an
    IVF per segment; the run that takes it past them trains a book and rebuilds every segment
    to follow it (answers unchanged); it stays shared when it shrinks again; ``segment``
    still forces format 2 past the threshold."""
    monkeypatch.delenv("PUFFER_IVF_ROUTING", raising=False)
    monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "300")
    monkeypatch.setattr(ivf, "AUTO_SHARED_ROWS", 700)
    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(reader, "EXACT_MAX_FRACTION", 0.0)
    rng = np.random.default_rng(27)
    x = clustered(rng, n=900, dims=16)
    ns = db.open_namespace("auto")
    ns.write({"upsert_columns": {"id": list(range(600)), "vector": x[:600].tolist()}})
    assert index(ns).status == "indexed"
    man = _man(ns)
    assert not man["ann_books"] and all("book" not in s["ann"]["vector"] for s in man["segments"])
    ns.write({"upsert_columns": {"id": list(range(600, 900)), "vector": x[600:].tolist()}})
    body = {"rank_by": ["vector", "ANN", x[650].tolist()], "top_k": 8}
    want = [r["id"] for r in exact(ns, body)["rows"]]
    rep = index(ns)
    man = _man(ns)
    book = man["ann_books"]["vector"]["id"]
    assert rep.status == "indexed" and rep.segments_merged == 2  # every format-2 segment rebuilt
    assert {s["ann"]["vector"]["book"] for s in man["segments"]} == {book}
    with ivf.override(probe=1.0):
        assert [r["id"] for r in engine.run_query(ns, body)["rows"]] == want
    ns.write({"deletes": list(range(500))})  # 400 rows left: under the threshold, still shared
    index(ns)
    man = _man(ns)
    assert man["ann_books"]["vector"]["id"] == book
    assert all(s["ann"]["vector"].get("book") == book for s in man["segments"])
    monkeypatch.setenv("PUFFER_IVF_ROUTING", "segment")  # asked for: format 2 whatever the size
    ns.write({"upsert_columns": {"id": list(range(500)), "vector": x[:500].tolist()}})
    index(ns)
    man = _man(ns)
    assert not man["ann_books"] and all("book" not in s["ann"]["vector"] for s in man["segments"])
    body = {"rank_by": ["vector", "ANN", x[3].tolist()], "top_k": 8}
    with ivf.override(probe=1.0):
        assert [r["id"] for r in engine.run_query(ns, body)["rows"]] == [r["id"] for r in exact(ns, body)["rows"]]


def test_a_run_decides_its_routing_afresh(monkeypatch):
    """The decision of one run does not leak into the next (or outside a run)."""
    monkeypatch.delenv("PUFFER_IVF_ROUTING", raising=False)
    with ivf.routing_run():
        assert not ivf.shared_routing()  # auto, undecided: format 2
        assert ivf.decide_routing(ivf.AUTO_SHARED_ROWS + 1, False) and ivf.shared_routing()
    assert not ivf.shared_routing()
    with ivf.routing_run():
        assert not ivf.decide_routing(ivf.AUTO_SHARED_ROWS, False) and not ivf.shared_routing()
        assert ivf.decide_routing(10, True)  # a namespace that follows a book stays shared
    monkeypatch.setenv("PUFFER_IVF_ROUTING", "shared")
    assert ivf.shared_routing()
    with ivf.routing_run():
        assert ivf.decide_routing(10, False)
    monkeypatch.setenv("PUFFER_IVF_ROUTING", "segment")
    with ivf.routing_run():
        assert not ivf.decide_routing(10**9, True) and not ivf.shared_routing()


def test_a_lost_book_is_retrained_by_the_next_run(mem_db, monkeypatch, shared):
    """The book file gone (or damaged): the next run trains a new one, rebuilds every
    segment to follow it and says so in ``repaired``."""
    monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "300")
    rng = np.random.default_rng(26)
    x = clustered(rng, n=700, dims=8)
    ns = mem_db.open_namespace("lost")
    ns.write({"upsert_columns": {"id": list(range(600)), "vector": x[:600].tolist()}})
    index(ns)
    b1 = _man(ns)["ann_books"]["vector"]
    ns.store.delete(b1["key"])
    ns.write({"upsert_columns": {"id": list(range(600, 700)), "vector": x[600:].tolist()}})
    segment.GENS.clear()
    rep = index(ns)
    man = _man(ns)
    b2 = man["ann_books"]["vector"]
    assert b2["id"] != b1["id"] and b1["key"] in rep.repaired
    assert {s["ann"]["vector"]["book"] for s in man["segments"]} == {b2["id"]}
    q = x[650]
    want = [r["id"] for r in exact(ns, {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 5})["rows"]]
    with ivf.override(probe=1.0):
        assert _ann_query(ns, q, 5) == want


@pytest.mark.parametrize("metric", ["cosine_distance", "euclidean_squared"])
def test_a_book_stores_int8_centroids_and_assigns_to_them(metric):
    """A book's file holds int8 centroids (a cold query reads it whole): rows are assigned
    to exactly the centroids the file gives back, and books written with float32 centroids
    (before) still load."""
    import io

    rng = np.random.default_rng(5)
    x = clustered(rng, n=3000, dims=12)
    book = ivf.train_book(x, len(x), 16, metric)
    assert book is not None
    data = book.to_bytes()
    z = np.load(io.BytesIO(data))
    assert "centroids" not in z.files and z["centroids_i8"].dtype == np.int8
    back = ivf.Book.from_bytes(data)
    assert np.array_equal(back.c_i8, book.c_i8) and np.allclose(back.c_scale, book.c_scale)
    assert np.array_equal(back.codebook.centroids, book.codebook.centroids)
    assert np.array_equal(back.fit(x).labels, book.fit(x).labels)
    old = io.BytesIO()
    np.savez(old, **{k: z[k] for k in z.files if not k.startswith("centroid")}, centroids=book.codebook.centroids)
    assert np.array_equal(ivf.Book.from_bytes(old.getvalue()).c_i8, book.c_i8)


@pytest.mark.parametrize("metric", ["cosine_distance", "euclidean_squared"])
def test_a_books_centroid_distances_are_its_int8_dots(metric):
    """Book.distances (numkong's packed int8 dots) against the int8 arithmetic written out in
    float64: the quantised query's dot with each int8 centroid, scaled back; nearer first."""
    rng = np.random.default_rng(11)
    x = clustered(rng, n=3000, dims=12)
    book = ivf.train_book(x, len(x), 16, metric)
    assert book is not None
    for q in rng.normal(size=(5, 12)).astype(np.float32):
        qq = ivf._prepare(q[None, :], metric == "cosine_distance")[0]
        m = float(np.abs(qq).max())
        qi = np.clip(np.rint(qq * (127.0 / m)), -127, 127)
        g = (book.c_i8.astype(np.float64) @ qi) * book.c_scale * (m / 127.0)
        c = book.c_i8.astype(np.float64) * book.c_scale[:, None]
        want = -g if metric == "cosine_distance" else (c * c).sum(axis=1) - 2 * g
        got = book.distances(qq)
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        assert book.distances(qq) is got  # the last query's are kept


def test_a_route_following_a_book_stores_narrow_member_counts():
    """A format-3 route holds the member count of each book list in the narrowest unsigned
    type, deflated (every segment's route is read by a cold query); its offsets are their
    cumulative sum, and routes written with int64 offsets (before) read the same."""
    import io

    rng = np.random.default_rng(9)
    x = clustered(rng, n=3000, dims=12)
    book = ivf.train_book(x, len(x), 16, "cosine_distance")
    assert book is not None
    rb, lb, info = ivf.encode(book.fit(x[:1000]), x[:1000], book_id=book.id)
    z = np.load(io.BytesIO(rb))
    assert "offsets" not in z.files and z["counts"].dtype == np.uint8 and len(z["counts"]) == book.nlist
    r = ivf.Route(rb, 12, "cosine_distance")
    assert r.book == book.id and r.offsets[0] == 0 and r.rows == 1000 == info["vectors"]
    assert np.array_equal(np.diff(r.offsets), z["counts"])
    old = io.BytesIO()
    np.savez(old, **{k: z[k] for k in z.files if k != "counts"}, offsets=r.offsets)
    assert np.array_equal(ivf.Route(old.getvalue(), 12, "cosine_distance").offsets, r.offsets)
    assert len(rb) < 8 * book.nlist  # smaller than the int64 offsets alone


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), share=st.floats(0.0, 1.0), filtered=st.booleans())
def test_a_local_search_over_many_runs_equals_the_ranged_one(seed, share, filtered):
    """Many runs of a memory-mapped lists file are gathered by one index (``_gathered``,
    from planned runs or from the sorted lists of a shared ranking): the same candidates,
    distances and scanned count as the ranged reads run by run."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(int(rng.integers(200, 3000)), 8)).astype(np.float32)
    rb, lb, _ = ivf.build(x, 8, "euclidean_squared")
    r = ivf.Route(rb, 8, "euclidean_squared")
    chosen = rng.choice(r.nlist, size=max(1, int(share * r.nlist)), replace=False)
    sel = rng.random(len(x)) < 0.5 if filtered else None
    q = rng.normal(size=8).astype(np.float32)
    import tempfile

    with tempfile.NamedTemporaryFile() as fh:
        fh.write(lb)
        fh.flush()
        local = ivf.Lists(r, local=fh.name)
        remote = ivf.Lists(r, fetch=lambda ranges: [lb[a:b] for a, b in ranges])
        runs = r.runs(chosen)
        a = ivf.search(r, local, q, 20, 1.0, sel=sel, runs=runs)
        b = ivf.search(r, remote, q, 20, 1.0, sel=sel, runs=runs)
        c = ivf.search(r, local, q, 20, 1.0, sel=sel, chosen=chosen, sorted_chosen=np.unique(chosen))
    for got in (a, c):
        assert got[2] == b[2]
        assert sorted(zip(got[1].tolist(), got[0].tolist())) == sorted(zip(b[1].tolist(), b[0].tolist()))


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), share=st.floats(0.0, 1.0))
def test_runs_are_the_chosen_lists_merged(seed, share):
    """``Route.runs`` without fill: the chosen lists' members exactly, as maximal runs
    (sorted, neither overlapping nor touching), whatever the order or repeats of the lists."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(int(rng.integers(50, 3000)), 8)).astype(np.float32)
    rb, _lb, _ = ivf.build(x, 8, "euclidean_squared")
    r = ivf.Route(rb, 8, "euclidean_squared")
    chosen = rng.choice(r.nlist, size=int(share * r.nlist), replace=True)
    runs = r.runs(chosen)
    want = np.zeros(r.rows, bool)
    for c in chosen:
        want[int(r.offsets[c]) : int(r.offsets[c + 1])] = True
    got = np.zeros(r.rows, bool)
    for a, b in runs:
        assert a < b and not got[a:b].any()
        got[a:b] = True
    assert (got == want).all()
    assert all(runs[i][1] < runs[i + 1][0] for i in range(len(runs) - 1))


def test_format2_floor_scales_with_the_segments_share():
    """Format 2: a segment's probe floor is probe_min_rows x sqrt(its share of the rows);
    the whole floor for a namespace of one segment and for a segment of <= EXACT_MAX_ROWS."""
    from types import SimpleNamespace

    def view(*rows):
        segs = [SimpleNamespace(rows=r) for r in rows]
        return reader.IndexedView(SimpleNamespace(segments=segs, schema={}, metric=None, covers=0), None)

    assert view(2_000_000)._floor_scale(0) == 1.0
    v = view(1_000_000, 900_000, 80_000, 20_000)
    assert v._floor_scale(0) == pytest.approx(math.sqrt(0.5))
    assert v._floor_scale(2) == pytest.approx(math.sqrt(0.04))
    assert v._floor_scale(3) == 1.0  # searched exactly, or all its lists when cold


# ---------------------------------------------------------------- int4 codes
@pytest.mark.parametrize("routing", ["segment", "shared"])
def test_int4_codes_answer_like_exact_and_halve_the_lists(db, monkeypatch, routing):
    """``ann.codes: int4``: the lists hold half the bytes; at the defaults (floor lowered)
    the indexed top 10 finds most of the exact one, scanning every list with a deep
    re-rank finds all of it, filtered too; going back to int8 rebuilds the segments (the
    codes are part of the index signature) and both kinds answer."""
    monkeypatch.setenv("PUFFER_IVF_ROUTING", routing)
    monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "1500")
    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(reader, "EXACT_MAX_FRACTION", 0.0)
    monkeypatch.setitem(ivf.DEFAULTS, "probe_min_rows", 400)
    rng = np.random.default_rng(24)
    x = clustered(rng, n=3000, dims=16, k=60)
    ns = db.open_namespace("int4")
    spec = {"type": "[16]f32", "ann": {"codes": "int4"}}
    ids = np.arange(len(x))
    ns.write(
        {
            "upsert_columns": {"id": ids.tolist(), "vector": x.tolist(), "u": (ids % 7).tolist()},
            "schema": {"vector": spec},
        }
    )
    builder.index_namespace(ns, gc_grace_s=0)
    man = _man(ns)
    anns = [s["ann"]["vector"] for s in man["segments"]]
    assert len(anns) == 2 and all(a["codes"] == "int4" for a in anns)
    lists4 = sum(ns.store.size(a["lists"]["key"]) for a in anns)
    hits = []
    for qi in rng.integers(0, len(x), 12):
        q = x[qi] + rng.normal(size=16).astype(np.float32) * 0.3
        truth = exact_top(x, q, 10, True)[0]
        hits.append(len(set(truth.tolist()) & set(_ann_query(ns, q))) / 10)
        with monkeypatch.context() as m, ivf.override(probe=1.0):
            m.setattr(ivf, "INT4_RERANK", 100)  # every list scanned, a deep re-rank: exact
            assert _ann_query(ns, q) == [int(i) for i in truth]
            keep = np.flatnonzero(ids % 7 == 3)
            want = keep[exact_top(x[keep], q, 10, True)[0]]
            assert _ann_query(ns, q, filters=["u", "Eq", 3]) == [int(i) for i in want]
    assert np.mean(hits) >= 0.85
    # back to int8: the next run rebuilds every segment with int8 codes
    ns.write({"schema": {"vector": {"type": "[16]f32", "ann": {"codes": "int8"}}}})
    builder.index_namespace(ns, gc_grace_s=0)
    anns8 = [s["ann"]["vector"] for s in _man(ns)["segments"]]
    assert anns8 and all("codes" not in a for a in anns8)
    lists8 = sum(ns.store.size(a["lists"]["key"]) for a in anns8)
    assert lists4 * 2 == lists8  # 16 dims: 8 bytes a member against 16 (positions implicit)
    for qi in rng.integers(0, len(x), 3):
        with ivf.override(probe=1.0):
            q = x[qi]
            assert _ann_query(ns, q)[0] == int(qi)


def test_ann_codes_must_be_int8_or_int4():
    from puffer_cli.schema import spec as S

    assert S.check_ann("v", {"codes": "int4"}) == {"codes": "int4"}
    assert ivf.codes({"ann": {"codes": "int4"}}) == "int4" and ivf.codes({"ann": True}) == "int8"
    assert ivf.options({"ann": {"codes": "int4"}})["rerank"] == ivf.INT4_RERANK
    assert ivf.options({"ann": {"codes": "int4", "rerank": 3}})["rerank"] == 3  # the schema's value wins
    for bad in ("int2", 4, True, "INT4"):
        with pytest.raises(S.SchemaError, match="ann codes must be int8 or int4"):
            S.check_ann("v", {"codes": bad})
