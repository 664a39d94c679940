"""The column store (docs format ``cols-1``, issue 25): attributes by column and row
group with statistics in the manifest.  Cold (moto, empty cache), warm and the exact
engine give the same rows for every query form that reads attributes; row-group
pruning never skips a group holding a match; ``attrs.arrow`` segments of older
generations are still read; a cold query reads only the chunks it needs."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from puffer_cli.filters import bind_filter, compile_filter, filter_mask
from puffer_cli.index import builder, ranged, segwrite
from puffer_cli.index import docs as D
from puffer_cli.index.segment import GENS
from puffer_cli.search import engine
from puffer_cli.store import filecache as cache
from puffer_cli.store import io_scope

from tests.test_index import exact, same, strip

TAGS = ["red", "green", "blue", "cyan"]


def make_rows(rng, lo: int, hi: int) -> list[dict]:
    out = []
    for i in range(lo, hi):
        r = {
            "id": i,
            "vector": rng.normal(size=8).round(3).tolist(),
            "word": f"w{(i * 7919) % 1000:04d}",
            "bucket": i // 100,  # sorted with the id: prunable
            "tag": TAGS[(i * 31) % 4],
        }
        if i % 5:
            r["score"] = float(rng.normal())
        out.append(r)
    return out


def forms(rng) -> list[dict]:
    v = rng.normal(size=8).round(3).tolist()
    ann = ["vector", "ANN", v]
    return [
        {"rank_by": ann, "top_k": 7, "include_attributes": True},
        {"rank_by": ann, "top_k": 7, "include_attributes": ["word", "score"], "filters": ["tag", "Eq", "red"]},
        {"rank_by": ann, "top_k": 5, "filters": ["And", [["bucket", "Gte", 3], ["bucket", "Lt", 6]]]},
        {"rank_by": ann, "top_k": 5, "filters": ["Not", ["bucket", "NotEq", 4]], "include_attributes": ["tag"]},
        {"rank_by": ["bucket", "desc"], "top_k": 9, "filters": ["tag", "Eq", "blue"], "include_attributes": True},
        {"rank_by": ["word", "asc"], "top_k": 6, "filters": ["bucket", "In", [2, 9, 11]]},
        {"rank_by": ["score", "asc"], "top_k": 6, "filters": ["score", "Gt", 0.5], "include_attributes": ["score"]},
        {"aggregate_by": {"n": ["Count"]}, "group_by": ["bucket"], "top_k": 100},
        {"aggregate_by": {"n": ["Count"], "s": ["Sum", "bucket"]}, "filters": ["tag", "In", ["red", "cyan"]]},
        {"rank_by": ["id", "desc"], "filters": ["bucket", "Eq", 7], "top_k": 500, "include_attributes": ["word"]},
        {"rank_by": ["id", "asc"], "top_k": 10, "filters": ["Or", [["bucket", "Eq", 1], ["word", "Glob", "w00*"]]]},
    ]


def _cold(tmp_path, name):
    c = cache.configure(str(tmp_path / name))
    c.background_fetch = False
    GENS.clear()
    builder._MANIFESTS.clear()
    return c


def _build(ns, tmp_path, rng):
    """Two index runs (two segments, the second updating rows of the first) + a WAL tail."""
    cache.configure(str(tmp_path / "build"))
    ns.write({"upsert_rows": make_rows(rng, 0, 1500)})
    builder.index_namespace(ns, gc_grace_s=0)
    ns.write({"upsert_rows": make_rows(rng, 1400, 2200)})
    builder.index_namespace(ns, gc_grace_s=0)
    ns.write({"upsert_rows": make_rows(rng, 2100, 2150)})


@pytest.fixture
def small_groups(monkeypatch):
    monkeypatch.setattr(D, "GROUP_ROWS", 128)
    monkeypatch.setattr(ranged, "WHOLE_FILE_MAX", 0)  # the test's small files count as large


def test_cold_warm_and_exact_agree(s3_server, tmp_path, monkeypatch, small_groups):
    import puffer_cli

    monkeypatch.setattr(D.docs_bytes, "__defaults__", (128,))
    monkeypatch.setattr(builder, "TIER_FANIN", 1)  # the second run's rows stay a segment of their own
    rng = np.random.default_rng(25)
    db = puffer_cli.connect("s3://puffer-test/docstore-forms", s3_endpoint=s3_server)
    ns = db.open_namespace("v")
    _build(ns, tmp_path, rng)
    man = builder.load_manifest(db.store, ns.read_meta()[0]["index"]["manifest"])
    assert all(s["docs"]["format"] == D.DOCS_FORMAT and "attrs" not in s for s in man["segments"])
    assert len(man["segments"]) >= 2 and D.groups_of(man["segments"][0]["docs"], man["segments"][0]["rows"]) > 4
    for body in forms(rng):
        for level in ("strong", "eventual"):
            b = {**body, "consistency": {"level": level}}
            want = exact(ns, b)
            _cold(tmp_path, f"cold-{level}")
            cold = engine.run_query(db.open_namespace("v"), b)
            assert same(cold, want), (b, strip(cold), strip(want))
            hot = engine.run_query(db.open_namespace("v"), b)  # same process: memoized chunks
            assert same(hot, want), (b, strip(hot))
    from puffer_cli.index.warm import warm

    _cold(tmp_path, "warm")
    warm(db.open_namespace("v"))
    for body in forms(rng):
        b = {**body, "consistency": {"level": "strong"}}
        got = engine.run_query(db.open_namespace("v"), b)
        assert same(got, exact(ns, b)), (b, strip(got))


def test_cold_include_attributes_reads_few_chunks(s3_server, tmp_path, small_groups, monkeypatch):
    """A cold ANN query returning every attribute of its top-k reads those rows' row groups'
    chunks (one batch), not the doc store."""
    import puffer_cli

    monkeypatch.setattr(D.docs_bytes, "__defaults__", (128,))
    rng = np.random.default_rng(3)
    db = puffer_cli.connect("s3://puffer-test/docstore-io", s3_endpoint=s3_server)
    ns = db.open_namespace("v")
    cache.configure(str(tmp_path / "build"))
    ns.write({"upsert_rows": make_rows(rng, 0, 4000)})
    builder.index_namespace(ns, gc_grace_s=0)
    seg = builder.load_manifest(db.store, ns.read_meta()[0]["index"]["manifest"])["segments"][0]
    size = seg["docs"]["columns"][list(seg["docs"]["columns"])[-1]]["off"][-1]
    body = {
        "rank_by": ["vector", "ANN", rng.normal(size=8).tolist()],
        "top_k": 3,
        "include_attributes": True,
        "consistency": {"level": "eventual"},
    }
    want = exact(ns, body)
    c = _cold(tmp_path, "cold")
    with io_scope() as io_:
        got = engine.run_query(db.open_namespace("v"), body)
    assert same(got, want)
    assert io_.round_trips <= 4 and io_.requests <= 16, (io_.round_trips, io_.requests)
    assert not c.has(db.store, seg["docs"]["key"])
    # the chunks of the re-rank candidates' row groups only (fetched with the re-rank reads,
    # search/topk.py ATTR_PREFETCH_BYTES), not the doc store
    assert c.stats.ranged_bytes < size / 2, (c.stats.ranged_bytes, size)
    # every form without a WAL tail: <= 4 round trips (meta.json, manifest, candidates,
    # re-rank rows with the returned attributes; the filter's columns with the candidates)
    for b in forms(rng):
        b = {**b, "consistency": {"level": "eventual"}}
        want = exact(ns, b)
        _cold(tmp_path, "cold-forms")
        with io_scope() as io_:
            got = engine.run_query(db.open_namespace("v"), b)
        assert same(got, want), (b, strip(got))
        assert io_.round_trips <= 4, (b, io_.round_trips)


def test_old_attrs_arrow_segments_still_read(mem_db, monkeypatch):
    """A generation written before the column store (attrs.arrow) answers as before, also
    next to column-store segments of a later run."""
    rng = np.random.default_rng(7)
    ns = mem_db.open_namespace("old")

    def old_docs(w, key, frame, schema):
        return {"attrs": w.put(key(D.ATTRS), D.attrs_bytes(frame, schema))}

    monkeypatch.setattr(segwrite, "write_docs", old_docs)
    ns.write({"upsert_rows": make_rows(rng, 0, 600)})
    builder.index_namespace(ns, gc_grace_s=0)
    monkeypatch.undo()
    monkeypatch.setattr(D, "GROUP_ROWS", 64)
    monkeypatch.setattr(builder, "TIER_FANIN", 1)  # a later run's segment beside the old one, not merged into it
    checked = 0
    for stage in range(2):
        man = builder.load_manifest(mem_db.store, ns.read_meta()[0]["index"]["manifest"])
        kinds = {"attrs" if "attrs" in s else "docs" for s in man["segments"]}
        assert "attrs" in kinds and (stage == 0 or "docs" in kinds)
        for body in forms(rng):
            got = engine.run_query(ns, body)
            assert same(got, exact(ns, body)), (body, strip(got))
            checked += 1
        ns.write({"upsert_rows": make_rows(rng, 550, 900)})
        builder.index_namespace(ns, gc_grace_s=0)
    assert checked


# ---------------------------------------------------------------- pruning property
SCHEMA = {
    "id": {"type": "uint"},
    "i": {"type": "int"},
    "f": {"type": "float"},
    "s": {"type": "string"},
    "b": {"type": "bool"},
}
_ints = st.integers(-5, 5)
_floats = st.sampled_from([-1.5, 0.0, 0.5, 2.0, math.inf, -math.inf, math.nan])
_strs = st.sampled_from(["", "a", "ab", "b", "ba", "z", "é"])


def _leaf():
    cmp = st.sampled_from(["Eq", "NotEq", "Lt", "Lte", "Gt", "Gte"])
    return st.one_of(
        st.tuples(st.just("i"), cmp, st.one_of(_ints, st.sampled_from([1.5, -0.5]))),
        st.tuples(st.just("f"), cmp, _floats.filter(lambda x: not math.isnan(x))),
        st.tuples(st.just("s"), cmp, _strs),
        st.tuples(st.just("b"), st.sampled_from(["Eq", "NotEq"]), st.booleans()),
        st.tuples(st.sampled_from(["i", "f", "s", "b"]), st.sampled_from(["Eq", "NotEq"]), st.none()),
        st.tuples(st.just("i"), st.sampled_from(["In", "NotIn"]), st.lists(_ints, max_size=3)),
        st.tuples(st.just("s"), st.sampled_from(["In", "NotIn"]), st.lists(_strs, max_size=3)),
        st.tuples(st.just("s"), st.just("Glob"), st.sampled_from(["a*", "*b"])),
    ).map(list)


_filters = st.recursive(
    _leaf(),
    lambda kids: st.one_of(
        st.tuples(st.sampled_from(["And", "Or"]), st.lists(kids, max_size=3)).map(list),
        st.tuples(st.just("Not"), kids).map(list),
    ),
    max_leaves=6,
)


@st.composite
def _frames(draw):
    n = draw(st.integers(0, 40))

    def col(values):
        return draw(st.lists(st.one_of(st.none(), values), min_size=n, max_size=n))

    return pl.DataFrame(
        {
            "id": pl.Series(list(range(n)), dtype=pl.UInt64),
            "i": pl.Series(col(_ints), dtype=pl.Int64),
            "f": pl.Series(col(_floats), dtype=pl.Float64),
            "s": pl.Series(col(_strs), dtype=pl.String),
            "b": pl.Series(col(st.booleans()), dtype=pl.Boolean),
        }
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=_frames(), filt=_filters, group_rows=st.integers(1, 8))
def test_pruning_never_skips_a_group_with_a_match(df, filt, group_rows):
    import json

    data, ent = D.docs_bytes(df, SCHEMA, group_rows)
    ent = json.loads(json.dumps(ent))  # as the manifest stores it
    keep = D.group_mask(ent, df.height, bind_filter(filt, SCHEMA))
    match = filter_mask(df, compile_filter(filt, SCHEMA))
    for r in np.flatnonzero(match):
        assert keep[r // group_rows], (filt, r, ent)
    # and the chunks decode to the frame
    for c in df.columns:
        parts = [
            D.decode_chunk(data[slice(*D.chunk_range(ent, c, g))], "t") for g in range(D.groups_of(ent, df.height))
        ]
        assert pl.concat(parts).equals(df[c]), c


def test_a_nan_group_is_kept_for_gt():
    """NaN compares above every number in the filters (polars' order): a group whose only
    non-null value is NaN may match Gt/Gte, and is not skipped (found by the property above)."""
    df = pl.DataFrame({"id": pl.Series(range(4), dtype=pl.UInt64), "f": [None, 1.0, None, float("nan")]})
    _, ent = D.docs_bytes(df, SCHEMA, 2)
    for filt in (["f", "Gt", -1.5], ["f", "Gte", 5.0]):
        match = filter_mask(df, compile_filter(filt, SCHEMA))
        keep = D.group_mask(ent, 4, bind_filter(filt, SCHEMA))
        assert match[3] and keep[1], filt
    assert not D.group_mask(ent, 4, bind_filter(["f", "Lt", 0.5], SCHEMA))[0]  # 1.0 < 0.5: skipped


def test_pruning_skips_groups():
    df = pl.DataFrame(
        {"id": pl.Series(range(100), dtype=pl.UInt64), "i": list(range(100)), "s": ["x"] * 50 + ["y"] * 50}
    )
    _, ent = D.docs_bytes(df, SCHEMA, 10)
    m = D.group_mask(ent, 100, bind_filter(["And", [["i", "Gte", 35], ["s", "Eq", "x"]]], SCHEMA))
    assert m.tolist() == [False] * 3 + [True] * 2 + [False] * 5
    m = D.group_mask(ent, 100, bind_filter(["Not", ["s", "In", ["x"]]], SCHEMA))
    assert m.tolist() == [False] * 5 + [True] * 5
