"""Write limits and value rules (docs/http.md, "Limits: writes"): every bad write is
refused with a SchemaError / InvalidRequest naming the row and attribute, before any
work, and changes nothing -- through ``ns.write`` (the HTTP path: writes.plan) and
through ``Namespace.write_frame`` / ``puffer ingest`` (schema.conform_frame)."""

from __future__ import annotations

import copy
import math
import time
import uuid

import polars as pl
import puffer_cli
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from puffer_cli import limits as L
from puffer_cli.cli.main import main
from puffer_cli.errors import InvalidRequest, NamespaceNotFound, PufferError, SchemaError
from puffer_cli.index import builder
from puffer_cli.schema import spec as S
from puffer_cli.schema import types
from puffer_cli.store import url as _store

from ._bodies import paths as _paths


@pytest.fixture(params=["memory", "local"])
def wdb(request, tmp_path):
    if request.param == "memory":
        url = f"memory://{uuid.uuid4().hex}"
        yield puffer_cli.connect(url)
        _store.open_store(url).clear()
    else:
        yield puffer_cli.connect(str(tmp_path / "store"))


def seeded(db, name="w"):
    ns = db.open_namespace(name)
    ns.write(
        {
            "upsert_rows": [
                {
                    "id": i,
                    "vector": [0.5, float(i)],
                    "n": i,
                    "tag": "ab"[i % 2],
                    "when": f"2024-01-0{i + 1}T00:00:00Z",
                    "big": i,
                }
                for i in range(1, 5)
            ],
            "schema": {"when": "datetime", "big": "uint"},
        }
    )
    return ns


def state(ns):
    return ns.head().seq, ns.head().schema, ns.docs(missing_ok=True)[0]  # a refused first write: still missing


def refused(ns, body, *match, exc=SchemaError):
    """``body`` is refused with ``exc`` whose message contains every ``match``; nothing changes."""
    seq, schema, docs = state(ns)
    with pytest.raises(exc) as ei:
        ns.write(body)
    text = f"{ei.value} (hint: {ei.value.hint})"
    for m in match:
        assert m in text, (m, text)
    seq2, schema2, docs2 = state(ns)
    assert (seq2, schema2) == (seq, schema) and docs2.equals(docs)
    return str(ei.value)


def frame_refused(ns, df, *match, schema=None):
    seq, sch, docs = state(ns)
    with pytest.raises(SchemaError) as ei:
        ns.write_frame(df, schema=schema)
    for m in match:
        assert m in str(ei.value), (m, str(ei.value))
    seq2, sch2, docs2 = state(ns)
    assert (seq2, sch2) == (seq, sch) and docs2.equals(docs)
    return str(ei.value)


# ------------------------------------------------------------------ attribute counts and names
def test_too_many_attributes_refused_before_any_work(wdb):
    ns = seeded(wdb)
    ns.docs()  # a warm replay cache was where the 10,000-attribute write spent minutes
    t0 = time.monotonic()
    refused(ns, {"upsert_rows": [{"id": 9, **{f"a{i}": i for i in range(10_000)}}]}, "more than 256 attributes")
    refused(ns, {"upsert_columns": {"id": [9], **{f"a{i}": [i] for i in range(257)}}}, "more than 256")
    refused(ns, {"patch_rows": [{"id": 1, f"p{i}": 1} for i in range(300)]}, "more than 256")
    refused(ns, {"upsert_rows": [{"id": 9}], "schema": {f"s{i}": "int" for i in range(300)}}, "more than 256")
    refused(
        ns, {"patch_by_filter": {"filters": ["n", "Gt", 0], "patch": {f"a{i}": 1 for i in range(257)}}}, "more than 256"
    )
    frame_refused(ns, pl.DataFrame({"id": [9], **{f"a{i}": [i] for i in range(300)}}), "more than 256")
    assert time.monotonic() - t0 < 30  # refused up front, not after building frames


def test_attributes_per_namespace(wdb):
    ns = wdb.open_namespace("wide")
    ns.write({"upsert_rows": [{"id": 1, **{f"a{i}": i for i in range(200)}}]})
    msg = refused(ns, {"upsert_rows": [{"id": 2, **{f"b{i}": i for i in range(60)}}]}, "at most 256")
    assert "200" in msg
    frame_refused(ns, pl.DataFrame({"id": [2], **{f"b{i}": [i] for i in range(60)}}), "at most 256")
    ns.write({"upsert_rows": [{"id": 2, **{f"b{i}": i for i in range(56)}}]})  # exactly 256
    assert len([k for k in ns.head().schema if k != "id"]) == 256
    refused(ns, {"upsert_rows": [{"id": 3, "one_more": 1}]}, "at most 256")
    ns.write({"upsert_rows": [{"id": 3, "a0": 5, "b0": 6}]})  # existing attributes are fine


def test_attribute_name_bytes(wdb):
    ns = seeded(wdb)
    ok = "é" * (L.MAX_ATTRIBUTE_NAME_BYTES // 2)  # 2 bytes each: exactly the limit
    ns.write({"upsert_rows": [{"id": 1, ok: 1}]})
    long = "é" * (L.MAX_ATTRIBUTE_NAME_BYTES // 2 + 1)
    refused(ns, {"upsert_rows": [{"id": 1, long: 1}]}, "invalid attribute name", "bytes")
    refused(ns, {"upsert_rows": [{"id": 1, "$x": 1}]}, "invalid attribute name")
    refused(ns, {"upsert_rows": [{"id": 1, "": 1}]}, "invalid attribute name")
    frame_refused(ns, pl.DataFrame({"id": [1], long: [1]}), "invalid attribute name")


def test_write_at_the_attribute_limit_is_fast(wdb):
    ns = seeded(wdb)
    ns.docs()
    have = len([k for k in ns.head().schema if k != "id"])
    cols = [f"c{i}" for i in range(L.MAX_ATTRIBUTES_PER_NAMESPACE - have)]
    rows = [{"id": 100 + r, **dict.fromkeys(cols, r)} for r in range(2_000)]
    t0 = time.monotonic()
    ns.write({"upsert_rows": rows})
    ns.write({"upsert_rows": [{"id": 1, "c0": 7}]})
    ns.write({"patch_rows": [{"id": 100, "c1": 8}], "patch_condition": ["c0", "Eq", 0]})
    assert time.monotonic() - t0 < 60  # was quadratic in attributes (minutes at 10,000)
    docs = ns.docs()[0]
    assert docs.height == 2_004 and docs.filter(pl.col("id") == 100)["c1"].item() == 8


# ------------------------------------------------------------------ values
@pytest.mark.parametrize(
    "bad",
    [1e20, 2**62, -(2**62), "99999-01-01T00:00:00Z", "0000-01-01", float("nan"), float("inf"), True, [1], {"a": 1}],
)
def test_datetime_out_of_range_or_wrong(wdb, bad):
    ns = seeded(wdb)
    refused(ns, {"upsert_rows": [{"id": 7, "when": bad}]}, "row 0", "'when'")
    refused(ns, {"upsert_columns": {"id": [7, 8], "when": [None, bad]}}, "row 1", "'when'")


def test_datetime_edges_accepted(wdb):
    ns = seeded(wdb)
    ns.write(
        {
            "upsert_rows": [
                {"id": 7, "when": "9999-12-31T23:59:59.999Z"},
                {"id": 8, "when": "0001-01-01T00:00:00Z"},
                {"id": 9, "when": types.DATETIME_MS[1]},
                {"id": 10, "when": -1000},
            ]
        }
    )
    got = dict(ns.docs()[0].select("id", pl.col("when").dt.year()).iter_rows())
    assert got[7] == 9999 and got[8] == 1 and got[9] == 9999 and got[10] == 1969


def test_datetime_frames(wdb):
    ns = seeded(wdb)
    frame_refused(ns, pl.DataFrame({"id": [7], "when": [2**62]}), "'when'", "out of range")
    frame_refused(ns, pl.DataFrame({"id": [7], "when": ["99999-01-01T00:00:00Z"]}), "'when'")
    far = pl.Series("when", [2**60], dtype=pl.Int64).cast(pl.Datetime("us"))  # year ~38,000
    frame_refused(ns, pl.DataFrame({"id": [7]}).with_columns(far), "out of range")
    frame_refused(ns, pl.DataFrame({"id": [7]}).with_columns(far.alias("new_dt")), "out of range")


@pytest.mark.parametrize(
    "vec,match",
    [
        ([float("nan"), 1.0], "NaN"),
        ([float("inf"), 1.0], "NaN"),
        ([1e39, 1.0], "float32"),
        (["1", "2"], "must be numbers"),
        ([True, False], "must be numbers"),
        ([[1.0], [2.0]], "must be numbers"),
        ([None, 1.0], "must be numbers"),
        ({"a": 1}, "array of numbers"),
        (7, "array of numbers"),
        ([1.0, 2.0, 3.0], "dimensions"),
        ("not base64!", "base64"),
    ],
)
def test_bad_vectors(wdb, vec, match):
    ns = seeded(wdb)
    refused(
        ns, {"upsert_rows": [{"id": 1, "vector": [0.0, 1.0]}, {"id": 7, "vector": vec}]}, "row 1", "'vector'", match
    )
    refused(ns, {"patch_columns": {"id": [1], "vector": [vec]}}, "'vector'", match)
    fresh = wdb.open_namespace("fresh")  # inferred, not declared
    refused(fresh, {"upsert_rows": [{"id": 7, "vector": vec}, {"id": 8, "vector": [1.0, 2.0]}]}, "'vector'")
    assert not fresh.exists()


def test_base64_vectors_still_accepted(wdb):
    import base64

    import numpy as np

    ns = seeded(wdb)
    b = base64.b64encode(np.array([0.25, 0.75], "<f4").tobytes()).decode()
    ns.write({"upsert_rows": [{"id": 7, "vector": b}]})
    assert ns.docs()[0].filter(pl.col("id") == 7)["vector"].to_list() == [[0.25, 0.75]]
    nan = base64.b64encode(np.array([np.nan, 0.75], "<f4").tobytes()).decode()
    refused(ns, {"upsert_rows": [{"id": 7, "vector": nan}]}, "NaN")


def test_vector_frames_nan_inf_and_non_numbers(wdb):
    """`puffer ingest` refuses what HTTP refuses."""
    ns = seeded(wdb)
    frame_refused(ns, pl.DataFrame({"id": [7, 8], "vector": [[1.0, 2.0], [float("nan"), 1.0]]}), "row 1", "NaN")
    frame_refused(ns, pl.DataFrame({"id": [7], "vector": [[float("inf"), 1.0]]}), "NaN")
    frame_refused(ns, pl.DataFrame({"id": [7], "vector": [[1e39, 1.0]]}), "float32")
    frame_refused(ns, pl.DataFrame({"id": [7], "vector": [[None, 1.0]]}), "null")
    frame_refused(ns, pl.DataFrame({"id": [7], "vector": [["1", "2"]]}), "must be numbers")
    frame_refused(ns, pl.DataFrame({"id": [7], "vector": [[True, False]]}), "must be numbers")
    arr = pl.Series("vector", [[float("nan"), 1.0]], dtype=pl.Array(pl.Float64, 2))
    frame_refused(ns, pl.DataFrame({"id": [7]}).with_columns(arr), "NaN")
    fresh = wdb.open_namespace("fresh")
    with pytest.raises(SchemaError, match="NaN"):
        fresh.write_frame(pl.DataFrame({"id": [1, 2], "vector": [[1.0, 2.0], [float("nan"), 1.0]]}))
    with pytest.raises(SchemaError, match="must be numbers"):
        fresh.write_frame(pl.DataFrame({"id": [1], "vector": [["a", "b"]]}))
    assert not fresh.exists()
    ns.write_frame(pl.DataFrame({"id": [7], "vector": [[1, 2]]}))  # integers are numbers
    assert ns.docs()[0].filter(pl.col("id") == 7)["vector"].to_list() == [[1.0, 2.0]]


def test_cli_ingest_refuses_nan_vectors(mem_db, tmp_path, capsys):
    p = tmp_path / "nan.parquet"
    pl.DataFrame({"id": [1, 2], "vector": [[1.0, 2.0], [float("nan"), 1.0]]}).write_parquet(p)
    code = main(["ingest", "n", str(p), "--store", mem_db.store.url])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("Error:") and "NaN" in err and "row 1" in err and "Traceback" not in err
    assert not mem_db.open_namespace("n").exists()


def test_integers_beyond_int64(wdb):
    ns = seeded(wdb)
    refused(ns, {"upsert_rows": [{"id": 7, "n": 2**63}]}, "row 0", "'n'", "int64")
    refused(ns, {"upsert_rows": [{"id": 7, "m": 1.5}, {"id": 8, "m": 2**70}]}, "row 1", "'m'", "int64")  # not a float
    refused(ns, {"upsert_rows": [{"id": 7, "new_int": 2**64}]}, "int64", "uint")
    refused(ns, {"upsert_rows": [{"id": 7, "n": 1e20}]}, "'n'")  # integral float, out of range
    refused(ns, {"upsert_rows": [{"id": 7, "big": 2**64}]}, "'big'", "unsigned")
    refused(ns, {"upsert_rows": [{"id": 7, "big": -1}]}, "'big'")
    refused(ns, {"upsert_rows": [{"id": 7, "arr": [1, 2**64]}]}, "'arr'", "int64")
    ns.write({"upsert_rows": [{"id": 7, "big": 2**64 - 1, "n": -(2**63), "x": 2.0}]})
    d = ns.docs()[0]
    assert d.schema["big"] == pl.UInt64 and d.filter(pl.col("id") == 7)["big"].item() == 2**64 - 1
    assert d.schema["n"] == pl.Int64


def test_integer_frames(wdb):
    ns = seeded(wdb)
    u = pl.Series("n", [2**63], dtype=pl.UInt64)
    frame_refused(ns, pl.DataFrame({"id": [7]}).with_columns(u), "'n'")
    frame_refused(ns, pl.DataFrame({"id": [7], "n": [1.5]}), "'n'", "integer")  # not truncated to 1
    frame_refused(ns, pl.DataFrame({"id": [7], "n": [True]}), "boolean")
    frame_refused(ns, pl.DataFrame({"id": [7], "x": [1.0]}).with_columns(pl.lit(float("nan")).alias("n")), "'n'")
    frame_refused(ns, pl.DataFrame({"id": [7], "f": [1.0]}).with_columns(pl.Series("f", [float("inf")])), "finite")
    ns.write_frame(
        pl.DataFrame({"id": [7], "n": [3.0]}).with_columns(pl.Series("newu", [2**64 - 1], dtype=pl.UInt64))
    )  # a uint64 column stays uint
    assert ns.head().schema["newu"]["type"] == "uint"
    assert ns.docs()[0].filter(pl.col("id") == 7)["newu"].item() == 2**64 - 1


def test_sizes(wdb):
    ns = seeded(wdb)
    big = "x" * (L.MAX_STRING_BYTES + 1)
    refused(ns, {"upsert_rows": [{"id": 7, "tag": big}]}, "'tag'", "bytes")
    refused(ns, {"upsert_rows": [{"id": 7, "tags": ["a", big]}]}, "'tags'", "bytes")
    frame_refused(ns, pl.DataFrame({"id": [7], "tag": [big]}), "'tag'", "bytes")
    refused(ns, {"upsert_rows": [{"id": 7, "arr": list(range(L.MAX_ARRAY_ITEMS + 1))}]}, "'arr'", "elements")
    frame_refused(ns, pl.DataFrame({"id": [7], "arr": [list(range(L.MAX_ARRAY_ITEMS + 1))]}), "'arr'", "elements")
    fresh = wdb.open_namespace("fresh")
    refused(fresh, {"upsert_rows": [{"id": 1, "vector": [0.5] * (L.MAX_VECTOR_DIMS + 1)}]}, "dimensions")
    refused(fresh, {"upsert_rows": [{"id": 1}], "schema": {"v": f"[{L.MAX_VECTOR_DIMS + 1}]f32"}}, "dimensions")
    fresh.write({"upsert_rows": [{"id": 1, "vector": [0.5] * L.MAX_VECTOR_DIMS}]})
    s = wdb.open_namespace("sid")
    s.write({"upsert_rows": [{"id": "a" * L.MAX_ID_BYTES}]})
    refused(s, {"upsert_rows": [{"id": "a" * (L.MAX_ID_BYTES + 1)}]}, "id", str(L.MAX_ID_BYTES))
    refused(s, {"upsert_rows": [{"id": "é" * (L.MAX_ID_BYTES // 2 + 1)}]}, "bytes")
    frame_refused(s, pl.DataFrame({"id": ["a" * (L.MAX_ID_BYTES + 1)]}), str(L.MAX_ID_BYTES))
    assert types.ID_MAX_BYTES == L.MAX_ID_BYTES


def deep(n, leaf=1, kind=list):
    v = leaf
    for _ in range(n):
        v = [v] if kind is list else {"k": v}
    return v


@pytest.mark.parametrize("n", [2, 40, 1_000, 50_000])
@pytest.mark.parametrize("kind", [list, dict])
def test_deep_values(wdb, n, kind):
    ns = seeded(wdb)
    v = deep(n, kind=kind)
    refused(ns, {"upsert_rows": [{"id": 7, "x": v}]}, "'x'" if n < L.MAX_VALUE_DEPTH else "nest")
    refused(ns, {"upsert_columns": {"id": [7], "tag": [v]}})
    refused(ns, {"patch_rows": [{"id": 1, "n": v}]})
    refused(ns, {"patch_by_filter": {"filters": ["n", "Gt", 0], "patch": {"tag": v}}})
    refused(ns, {"upsert_rows": [{"id": 7, "vector": v}]})
    refused(ns, {"deletes": [v]})
    refused(ns, {"upsert_rows": [{"id": v}]})
    refused(ns, {"upsert_rows": [{"id": 7}], "schema": {"x": v}})


def test_nested_frame_columns(wdb):
    ns = seeded(wdb)
    frame_refused(ns, pl.DataFrame({"id": [7], "x": [[[1, 2]]]}), "'x'", "unsupported")
    frame_refused(ns, pl.DataFrame({"id": [7], "x": [{"a": 1}]}), "'x'", "unsupported")
    frame_refused(ns, pl.DataFrame({"id": [7], "tag": [[[1]]]}), "'tag'")
    frame_refused(ns, pl.DataFrame({"id": [7], "vector": [[[1.0], [2.0]]]}), "'vector'")


# ------------------------------------------------------------------ ann options
@pytest.mark.parametrize(
    "ann",
    [
        {"connectivity": -5},
        {"connectivity": 10**9},
        {"expansion_add": 10**12},
        {"expansion_search": 0},
        {"connectivity": True},
        {"connectivity": 16.0},
        {"connectivity": "16"},
        {"dtype": "f64"},
        {"dtype": ["f16"]},
        {"nope": 1},
        [1],
        {"prune": -0.1},
        {"prune": 10.5},
        {"prune": float("nan")},
        {"prune": True},
        {"prune": "0.5"},
        {"prune": [0.5]},
    ],
)
def test_bad_ann_options_refused(wdb, ann):
    ns = seeded(wdb)
    refused(ns, {"upsert_rows": [{"id": 7}], "schema": {"vector": {"type": "[2]f32", "ann": ann}}}, "ann")
    with pytest.raises(SchemaError, match="ann"):
        ns.write_frame(pl.DataFrame({"id": [7]}), schema={"vector": {"type": "[2]f32", "ann": ann}})


def test_ann_options_at_bounds_build(wdb):
    ns = seeded(wdb)
    ns.write(
        {
            "upsert_rows": [{"id": 7}],
            "schema": {
                "vector": {
                    "type": "[2]f32",
                    "ann": {
                        "connectivity": L.ANN_CONNECTIVITY[0],
                        "expansion_add": L.ANN_EXPANSION_ADD[0],
                        "expansion_search": L.ANN_EXPANSION_SEARCH[1],
                        "prune": 10,  # the query-aware probe's bounds: 0 .. 10
                    },
                }
            },
        }
    )
    builder.index_namespace(ns, gc_grace_s=0)


def test_stored_bad_ann_options_are_clamped_by_index(wdb, monkeypatch, caplog):
    """A namespace written before the bounds existed may hold anything: `puffer index` clamps."""
    ns = seeded(wdb)
    monkeypatch.setattr(S, "check_ann", lambda name, ann: dict(ann))  # what an older version stored
    ns.write(
        {
            "upsert_rows": [{"id": 7}],
            "schema": {
                "vector": {
                    "type": "[2]f32",
                    "ann": {"connectivity": -5, "expansion_add": 10**12, "expansion_search": "x"},
                }
            },
        }
    )
    monkeypatch.undo()
    from puffer_cli.index import ivf

    # the format-1 (HNSW) options are no longer used: the IVF build takes its defaults
    assert ivf.options(ns.head().schema["vector"]) == ivf.DEFAULTS
    builder.index_namespace(ns, gc_grace_s=0)
    from puffer_cli.search import engine

    got = engine.run_query(ns, {"rank_by": ["vector", "ANN", [0.5, 1.0]], "top_k": 2})
    assert [r["id"] for r in got["rows"]][:1] == [1]


# ------------------------------------------------------------------ filter writes, missing namespaces
@pytest.mark.parametrize(
    "body",
    [
        {"delete_by_filter": ["x", "Eq", 1]},
        {"patch_by_filter": {"filters": ["x", "Eq", 1], "patch": {"y": 1}}},
        {"delete_by_filter": ["id", "Gt", 0], "patch_by_filter": {"filters": ["id", "Gt", 0], "patch": {"y": "a"}}},
        {"deletes": [1, 2]},
        {"deletes": ["a"], "delete_condition": ["x", "Eq", 1]},
    ],
)
def test_filter_writes_on_a_missing_namespace_are_a_no_op(wdb, body):
    ns = wdb.open_namespace("nothing_here")
    res = ns.write(body)
    assert res["rows_affected"] == 0
    assert not ns.exists() and ns.head().seq == 0
    with pytest.raises(NamespaceNotFound):
        wdb.open_namespace("nothing_here").docs()
    assert wdb.open_namespace("nothing_here").docs(missing_ok=True)[0].height == 0


def test_filter_writes_on_a_missing_namespace_still_validate(wdb):
    ns = wdb.open_namespace("nothing_here")
    with pytest.raises(InvalidRequest):
        ns.write({"delete_by_filter": ["x", "Nope", 1]})
    with pytest.raises(SchemaError):
        ns.write({"patch_by_filter": {"filters": ["x", "Eq", 1], "patch": {"y": float("nan")}}})
    with pytest.raises(SchemaError):
        ns.write({"deletes": [[1]]})
    assert not ns.exists()


def test_filters_naming_a_missing_attribute(wdb):
    ns = seeded(wdb)
    seq = ns.head().seq
    assert ns.write({"delete_by_filter": ["nope", "Eq", 1]})["rows_affected"] == 0
    assert ns.write({"patch_by_filter": {"filters": ["nope", "Eq", "x"], "patch": {"n": 1}}})["rows_affected"] == 0
    assert ns.write({"upsert_rows": [{"id": 1, "n": 2}], "upsert_condition": ["nope", "Eq", 1]})["rows_affected"] == 0
    assert ns.head().seq == seq and ns.docs()[0].height == 4


def test_patch_by_filter_values_checked_even_when_nothing_matches(wdb):
    ns = seeded(wdb)
    refused(ns, {"patch_by_filter": {"filters": ["n", "Gt", 100], "patch": {"vector": [float("nan"), 1.0]}}}, "NaN")
    refused(ns, {"patch_by_filter": {"filters": ["n", "Gt", 100], "patch": {"when": 1e20}}}, "out of range")
    ns.write({"patch_by_filter": {"filters": ["n", "Gt", 2], "patch": {"tag": "z", "vector": [1.0, 1.0]}}})
    d = ns.docs()[0].sort("id")
    assert d["tag"].to_list() == ["b", "a", "z", "z"] and d["vector"].to_list()[3] == [1.0, 1.0]


# ------------------------------------------------------------------ hypothesis: mutated bodies
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e20, 1e39, -1e300]),
    st.text(max_size=6),
    st.sampled_from(["99999-01-01T00:00:00Z", "2024-01-01", "AAAA", "", "$x", "id"]),
    st.builds(lambda n: deep(n), st.integers(30, 1_200)),
    st.builds(lambda n: deep(n, kind=dict), st.integers(30, 1_200)),
    st.lists(st.floats(allow_nan=True) | st.booleans() | st.text(max_size=2) | st.integers(), max_size=4),
    st.builds(lambda n: {f"a{i}": i for i in range(n)}, st.integers(250, 600)),
    st.fixed_dictionaries(
        {
            "type": st.just("[2]f32"),
            "ann": st.dictionaries(
                st.sampled_from(["connectivity", "expansion_add", "expansion_search", "dtype"]),
                st.integers(-10, 10**13) | st.booleans() | st.floats() | st.text(max_size=3),
                max_size=3,
            ),
        }
    ),
)

BASES = [
    {"upsert_rows": [{"id": 7, "vector": [0.5, 0.5], "tag": "b", "n": 3, "when": "2024-02-01T00:00:00Z", "big": 1}]},
    {"upsert_columns": {"id": [8, 9], "vector": [[0.1, 0.9], [0.9, 0.1]], "n": [1, 2], "when": [0, 1]}},
    {"patch_rows": [{"id": 1, "n": 5, "tag": "c"}], "deletes": [2]},
    {"patch_columns": {"id": [1, 2], "big": [3, 4]}},
    {"delete_by_filter": ["tag", "Eq", "zzz"]},
    {"patch_by_filter": {"filters": ["n", "Lt", 2], "patch": {"tag": "c", "when": 5}}},
    {"upsert_rows": [{"id": 10, "n": 9}], "schema": {"vector": {"type": "[2]f32", "ann": {"connectivity": 8}}}},
    {"upsert_rows": [{"id": 1, "n": 9}], "upsert_condition": ["n", "Lt", ["$ref_new", "n"]]},
]


@st.composite
def mutated(draw):
    body = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(body) if p]
        path = draw(st.sampled_from(paths))
        parent = body
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and draw(st.booleans()):
            parent[draw(st.sampled_from(["x", "vector", "when", "n", "big", "tag", "é" * 70]))] = draw(HOSTILE)
        else:
            parent[path[-1]] = draw(HOSTILE)
    return body


def _check_mutated(ns, body):
    seq, schema, docs = state(ns)
    try:
        ns.write(body)
    except PufferError as e:
        assert 400 <= e.status < 500, (e, body)  # write_batch turns a bug into a 500 PufferError
        seq2, schema2, docs2 = state(ns)
        assert (seq2, schema2) == (seq, schema) and docs2.equals(docs), body
        return
    d = ns.docs()[0]
    for c, t in d.schema.items():  # whatever was accepted obeys the value rules
        if isinstance(t, pl.Array):
            vals = d.get_column(c).drop_nulls()
            assert all(math.isfinite(x) for v in vals.to_list() for x in v)
        elif t == pl.Float64:
            assert not d.get_column(c).is_nan().any()


@pytest.fixture(scope="module")
def fuzz_ns():
    url = f"memory://{uuid.uuid4().hex}"
    db = puffer_cli.connect(url)
    yield seeded(db, "fuzz")
    _store.open_store(url).clear()


FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
SLOW = settings(
    max_examples=1_000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@FAST
@given(body=mutated())
def test_mutated_writes_refused_cleanly(fuzz_ns, body):
    _check_mutated(fuzz_ns, body)


@pytest.mark.slow
@SLOW
@given(body=mutated())
def test_mutated_writes_refused_cleanly_many(fuzz_ns, body):
    _check_mutated(fuzz_ns, body)
