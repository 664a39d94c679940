"""The cold read planner (issue 25 item 2): on a cold object store (moto, empty cache, no
WAL tail) every query form takes <= 4 sequential round trips (meta.json; manifest and
routing; candidates with the filter's columns; re-rank rows with the returned
attributes), the sub-queries of a multi-query run as concurrent lanes (round trips of
the longest, not the sum), ``performance`` reports requests, round trips and bytes for
every form, and the answers equal the warm index's and the exact engine's."""

from __future__ import annotations

import time

import numpy as np
import pytest
from puffer_cli import caches
from puffer_cli.index import builder, ranged
from puffer_cli.index import docs as D
from puffer_cli.search import engine
from puffer_cli.store import IOStats, io_scope, run_lanes

from tests.test_docstore import _cold, forms, make_rows
from tests.test_index import exact, same, strip

PERF = ("object_store_requests", "object_store_round_trips", "object_store_bytes_read")


def _cold_ns(db, tmp_path, monkeypatch):
    """Namespace ``v`` of ``db``: 3,000 rows indexed, docs groups of 128 rows, every file read by range."""
    monkeypatch.setattr(D, "GROUP_ROWS", 128)
    monkeypatch.setattr(D.docs_bytes, "__defaults__", (128,))
    monkeypatch.setattr(ranged, "WHOLE_FILE_MAX", 0)  # lists, vectors, ids by range, as at scale
    rng = np.random.default_rng(11)
    ns = db.open_namespace("v")
    from puffer_cli.store import filecache as cache

    cache.configure(str(tmp_path / "build"))
    ns.write(
        {
            "upsert_rows": make_rows(rng, 0, 3000),
            "schema": {"word": {"type": "string", "full_text_search": True, "filterable": True}},
        }
    )
    builder.index_namespace(ns, gc_grace_s=0)
    return db, ns, rng


@pytest.fixture
def cold_ns(s3_server, tmp_path, monkeypatch):
    import puffer_cli

    db = puffer_cli.connect("s3://puffer-test/cold-planner", s3_endpoint=s3_server)
    return _cold_ns(db, tmp_path, monkeypatch)


def _ann(rng, **kw) -> dict:
    return {"rank_by": ["vector", "ANN", rng.normal(size=8).round(3).tolist()], "top_k": 6, **kw}


def test_every_form_cold_takes_at_most_4_round_trips(db, tmp_path, monkeypatch):
    """On every store (local, memory, moto, SeaweedFS): cold = warm = the exact engine."""
    db, ns, rng = _cold_ns(db, tmp_path, monkeypatch)
    bodies = forms(rng) + [
        _ann(rng, include_attributes=["word", "tag"], filters=["tag", "In", ["red", "blue"]]),
        _ann(rng, include_attributes=True, filters=["bucket", "Lt", 12]),
        _ann(rng, include_attributes=["vector"]),  # ids and vectors the ranking read: no attribute chunk
        _ann(rng, include_attributes=["id", "vector"], filters=["bucket", "Lt", 40]),
        {"rank_by": ["word", "BM25", "w0042"], "top_k": 5, "include_attributes": ["word"]},
        {"rank_by": ["word", "BM25", "w0042"], "top_k": 5, "include_attributes": ["vector"]},  # read ahead
        # several BM25 leaves: their postings in one batch
        {
            "rank_by": ["Sum", [["word", "BM25", "w0042"], ["word", "BM25", "w0007"]]],
            "top_k": 5,
            "include_attributes": ["tag"],
        },
        {"aggregate_by": {"n": ["Count"]}},  # no column but the ids
        {"rank_by": ["score", "desc"], "top_k": 5, "include_attributes": ["word", "vector"]},
        {"rank_by": ["Max", [["word", "BM25", "w0042"], ["word", "BM25", "w0007"]]], "top_k": 5},
        {"aggregate_by": {"n": ["Count"]}, "group_by": ["tag", "bucket"], "top_k": 20},
    ]
    for j, body in enumerate(bodies):
        b = {**body, "consistency": {"level": "eventual"}}
        want = exact(ns, b)
        _cold(tmp_path, f"cold-{j}")  # an empty cache for every form ...
        caches.forget(db.store, "v")  # ... and no decoded terms or chunks of the forms before
        cold = engine.run(db.open_namespace("v"), b)
        assert same(cold, want), (b, strip(cold), strip(want))
        perf = cold["performance"]
        assert all(k in perf for k in PERF), perf
        assert perf["object_store_requests"] > 0 and perf["object_store_bytes_read"] > 0
        assert perf["object_store_round_trips"] <= 4, (b, perf)
        warm = engine.run(db.open_namespace("v"), b)  # same process: chunks and lists memoized
        assert same(warm, want), (b, strip(warm))


def test_multi_query_cold_round_trips_are_the_longest_sub_query(cold_ns, tmp_path):
    db, ns, rng = cold_ns
    subs = [
        _ann(rng, include_attributes=["word"]),
        _ann(rng, include_attributes=True, filters=["tag", "Eq", "red"]),
        {"rank_by": ["bucket", "desc"], "top_k": 9, "filters": ["tag", "Eq", "blue"], "include_attributes": True},
        {"aggregate_by": {"n": ["Count"]}, "group_by": ["bucket"], "top_k": 100},
    ]
    body = {"queries": subs, "consistency": {"level": "eventual"}}
    _cold(tmp_path, "cold-multi")
    caches.forget(db.store, "v")  # no decoded terms or chunks of a query before
    got = engine.run(db.open_namespace("v"), body)
    assert all(k in got["performance"] for k in PERF)
    assert got["performance"]["object_store_round_trips"] <= 4, got["performance"]
    for sub, res in zip(subs, got["results"]):
        want = exact(ns, {**sub, "consistency": {"level": "eventual"}})
        assert same(res, want), (sub, res, strip(want))

    # hybrid (ANN + BM25): the round trips of the longer half, not of both in turn
    hybrid = [_ann(rng, include_attributes=["word"]), {"rank_by": ["word", "BM25", "w0007"], "top_k": 5}]
    alone = []
    for sub in hybrid:
        _cold(tmp_path, "cold-half")
        caches.forget(db.store, "v")  # no decoded terms or chunks of a query before
        r = engine.run(db.open_namespace("v"), {**sub, "consistency": {"level": "eventual"}})
        alone.append(r["performance"]["object_store_round_trips"])
    _cold(tmp_path, "cold-hybrid")
    caches.forget(db.store, "v")  # no decoded terms or chunks of a query before
    got = engine.run(db.open_namespace("v"), {"queries": hybrid, "consistency": {"level": "eventual"}})
    assert got["performance"]["object_store_round_trips"] <= max(alone), (got["performance"], alone)
    for sub, res in zip(hybrid, got["results"]):
        assert same(res, exact(ns, {**sub, "consistency": {"level": "eventual"}})), sub


def test_lanes_count_the_longest_chain():
    """Two chains of 3 sequential requests, offset so that they always overlap in time: the
    overlap rule alone would count 1 round trip; lanes count the longest chain (3)."""

    def chain(offset: float):
        def go():
            from puffer_cli.store import current_io

            s = current_io()
            assert s is not None
            t = 100.0 + offset
            for _ in range(3):
                s.spans.append((t, t + 1.0))
                s.requests += 1
                t += 1.01
            return offset

        return go

    with io_scope() as io_:
        io_.spans.append((0.0, 1.0))  # the shared phase before the lanes
        assert run_lanes([chain(0.0), chain(0.5)], concurrent=True) == [0.0, 0.5]
    assert io_.requests == 6 and io_.round_trips == 1 + 3
    flat = IOStats(spans=[(100.0 + o + 1.01 * j, 101.0 + o + 1.01 * j) for o in (0.0, 0.5) for j in range(3)])
    assert flat.round_trips == 1  # what the lanes avoid reporting
    assert time.perf_counter() > 0


def test_estimate_fraction_from_statistics():
    import polars as pl
    from puffer_cli.filters import bind_filter

    schema = {"id": {"type": "uint"}, "t": {"type": "string"}, "x": {"type": "int"}, "u": {"type": "uint"}}
    df = pl.DataFrame(
        {
            "id": list(range(1000)),
            "t": [["a", "b", "c", "d"][i % 4] for i in range(1000)],
            "x": list(range(1000)),
            "u": [i * 7919 % 100 for i in range(1000)],  # 100 values in every group: none listed
        }
    )
    _data, ent = D.docs_bytes(df, schema, 100)
    est = D.estimate_fraction

    def f(filt):
        return est(ent, 1000, bind_filter(filt, schema))

    assert f(["t", "Eq", "a"]) == pytest.approx(0.25)
    assert f(["t", "In", ["a", "b"]]) == pytest.approx(0.5)
    assert f(["x", "Lt", 250]) == pytest.approx(0.25, abs=0.02)
    assert f(["And", [["t", "Eq", "a"], ["x", "Gte", 500]]]) == pytest.approx(0.125, abs=0.02)
    assert f(["t", "Eq", "zz"]) == 0.0
    # an integer's value: uniform between the group's min and max (it was 1: a 1% filter's
    # read-ahead sized for every row, so a shared-routing probe missed it and took a 5th round trip)
    assert f(["u", "Eq", 7]) == pytest.approx(0.01)
    assert f(["x", "Eq", 5]) == pytest.approx(0.001)
    assert f(["u", "Eq", 100]) == 0.0
    assert f(["t", "Glob", "a*"]) == 1.0  # no statistics for it: everything may match


def test_explain_shows_the_cold_plan(cold_ns):
    db, ns, rng = cold_ns
    lines = engine.explain(
        db.open_namespace("v"),
        _ann(rng, include_attributes=["word"], filters=["tag", "Eq", "red"], consistency={"level": "eventual"}),
    )
    text = "\n".join(lines)
    assert "round trip 1: meta.json" in text and "round trip 4: re-rank" in text, text
    assert "filter columns ['tag']" in text and "['id', 'word']" in text, text
    lines = engine.explain(
        db.open_namespace("v"),
        {
            "rank_by": ["bucket", "desc"],
            "top_k": 3,
            "filters": ["bucket", "Lt", 3],
            "consistency": {"level": "eventual"},
        },
    )
    assert any("row groups admitted by statistics" in x for x in lines), lines
    # buckets are sorted with the ids: a range keeps a few of the row groups
    got = next(x for x in lines if "admitted" in x)
    kept, total = got.split(": ")[2].split(" row groups")[0].split("/")
    assert int(kept) < int(total), got


def test_shared_routing_reads_the_books_lists_with_the_filters_columns(cold_ns, tmp_path, monkeypatch):
    """Shared routing (format 3, opt-in): a cold filtered ANN query plans the lists the
    namespace's book picks for the filter's estimated selectivity and reads them in the batch
    of the filter's columns (``IndexedView._lists_ahead``), so it takes <= 4 round trips and
    answers as the exact engine does."""
    from puffer_cli.search import reader

    db, ns, rng = cold_ns
    monkeypatch.setenv("PUFFER_IVF_ROUTING", "shared")
    builder.index_namespace(ns, gc_grace_s=0)  # the migration run: every segment follows a book
    man = builder.load_manifest(ns.store, ns.read_meta()[0]["index"]["manifest"])
    assert "vector" in man.get("ann_books", {})  # built under shared routing
    planned: list = []
    real = reader.IndexedView._lists_ahead

    def spy(self, *a, **kw):
        out = real(self, *a, **kw)
        planned.append(out)
        return out

    monkeypatch.setattr(reader.IndexedView, "_lists_ahead", spy)
    b = {**_ann(rng, filters=["bucket", "Lt", 12]), "consistency": {"level": "eventual"}}
    want = exact(ns, b)
    _cold(tmp_path, "cold-shared")
    got = engine.run(db.open_namespace("v"), b)
    assert same(got, want), (strip(got), strip(want))
    assert planned and all(p is not None and len(p[0]) for p in planned), planned
    assert got["performance"]["object_store_round_trips"] <= 4, got["performance"]


def test_queries_not_ranked_by_a_vector_skip_the_vector_routing(cold_ns, tmp_path):
    """The pointer's ``prefetch_vector`` keys (IVF routes, ...) are read with the manifest only
    by vector-ranked queries: a cold Count or order-by reads none of them, and a vector query
    after it on the open generation fetches them in its manifest batch (<= 4 round trips)."""
    db, ns, rng = cold_ns
    ptr = ns.read_meta()[0]["index"]
    vec_keys = ptr.get("prefetch_vector")
    assert vec_keys and set(vec_keys) <= set(ptr["prefetch"])
    c = _cold(tmp_path, "cold-count")
    for b in (
        {"aggregate_by": {"n": ["Count"]}, "group_by": ["bucket"], "top_k": 100},
        {"rank_by": ["bucket", "desc"], "top_k": 5, "filters": ["tag", "Eq", "red"]},
    ):
        b = {**b, "consistency": {"level": "eventual"}}
        got = engine.run(db.open_namespace("v"), b)
        assert same(got, exact(ns, b)), strip(got)
        assert not any(c.has(ns.store, k) for k in vec_keys)
    # an aggregation's candidate frame has no id column to read (the tail hides rows by position)
    from puffer_cli.query.parse import parse_query
    from puffer_cli.search import reader

    view = reader.view_for(db.open_namespace("v"), "eventual")
    assert view is not None
    count = parse_query({"aggregate_by": {"n": ["Count"]}, "group_by": ["bucket"], "top_k": 100})
    assert view.needed_columns(count) == ["bucket"]
    assert "id" in view.needed_columns(parse_query({"rank_by": ["bucket", "desc"], "top_k": 5}))
    assert view.needed_columns(parse_query({"aggregate_by": {"n": ["Count"]}})) == ["id"]
    b = {**_ann(rng), "consistency": {"level": "eventual"}}
    got = engine.run(db.open_namespace("v"), b)
    assert same(got, exact(ns, b)), strip(got)
    assert all(c.has(ns.store, k) for k in vec_keys)
    assert got["performance"]["object_store_round_trips"] <= 4, got["performance"]


def test_a_request_after_a_nested_batch_is_a_round_trip_of_its_own():
    """Lanes of a parallel batch (one per segment) that each run a nested batch (a filter's
    columns) and then one request depending on it (the lists the mask picks): two round trips,
    though the lanes' requests overlap in time (one lane's second request runs while the other's
    first is still in flight: the overlap rule alone counted 1, which hid a round trip)."""
    from puffer_cli.index import ranged
    from puffer_cli.store import current_io

    def req():
        s = current_io()
        assert s is not None
        a = time.perf_counter()
        time.sleep(0.02)
        s.spans.append((a, time.perf_counter()))
        s.requests += 1

    def lane():
        ranged.parallel([req, req], remote=True)
        req()

    with io_scope() as io_:
        ranged.parallel([lane, lane], remote=True)
    assert io_.requests == 6 and io_.round_trips == 2, io_.spans
