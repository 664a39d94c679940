"""turbopuffer parity items of issue 12 in the library (writes, schema, filters, text),
driven by the official client over a real socket (tests/serve_proc.ThreadServer)."""

from __future__ import annotations

import uuid

import pytest
import turbopuffer
from puffer_cli.server.app import ServeConfig

from .serve_proc import ThreadServer

KEY = "test-key"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    s = ThreadServer(ServeConfig(store=str(tmp_path_factory.mktemp("parity") / "store"), api_key=KEY))
    yield s
    s.stop()


@pytest.fixture
def tp(live):
    return turbopuffer.Turbopuffer(base_url=live.url, api_key=KEY, max_retries=0)


@pytest.fixture
def ns(tp):
    return tp.namespace("p-" + uuid.uuid4().hex[:10])


def test_affected_ids_only_existing_and_empty_omitted(ns):
    ns.write(upsert_rows=[{"id": 1, "n": 1}, {"id": 2, "n": 2}])
    r = ns.write(patch_rows=[{"id": 1, "n": 3}, {"id": 42, "n": 3}], deletes=[2, 43], return_affected_ids=True)
    assert r.patched_ids == [1] and r.deleted_ids == [2] and r.upserted_ids is None
    assert (r.rows_patched, r.rows_deleted) == (1, 1)


def test_schema_options_and_word_v4_and_fuzzy(ns):
    ns.write(
        upsert_rows=[
            {"id": 1, "v": [1.0, 0.0], "t": "I can't stop", "name": "turbopuffer"},
            {"id": 2, "v": [0.0, 1.0], "t": "you can stop", "name": "turbopufer"},
        ],
        schema={
            "v": {"type": "[2]f32", "ann": {"distance_metric": "euclidean_squared"}},
            "t": {"type": "string", "full_text_search": {"tokenizer": "word_v4"}, "regex": True},
            "name": {"type": "string", "glob": True, "fuzzy": True},
        },
    )
    assert ns.schema()["t"].full_text_search.tokenizer == "word_v4"
    r = ns.query(rank_by=("v", "ANN", [1.0, 1.0]), top_k=1)
    assert r.rows[0]["$dist"] == pytest.approx(1.0)  # euclidean_squared, from ann.distance_metric
    r = ns.query(rank_by=("t", "BM25", "can't"), top_k=5)
    assert [row.id for row in r.rows] == [1]
    med = {"max_edit_distance": [{"distance": 1, "min_query_chars": 6}]}
    r = ns.query(filters=("name", "Fuzzy", "turbopuffer", med), rank_by=("id", "asc"), top_k=5)
    assert [row.id for row in r.rows] == [1, 2]
    with pytest.raises(turbopuffer.BadRequestError, match="probe"):
        ns.write(schema={"v": {"type": "[2]f32", "ann": {"probe": 2}}})
    with pytest.raises(turbopuffer.BadRequestError, match="sparse_knn"):
        ns.write(schema={"s": {"type": "{}f16", "sparse_knn": {"distance_metric": "cosine_distance"}}})


def test_copy_from_namespace_keeps_metric(tp, ns):
    ns.write(upsert_rows=[{"id": 1, "v": [1.0, 0.0]}], distance_metric="euclidean_squared", schema={"v": "[2]f32"})
    dst = tp.namespace(ns.id + "-copy")
    dst.write(copy_from_namespace=ns.id)
    r = dst.query(rank_by=("v", "ANN", [1.0, 1.0]), top_k=1)
    assert r.rows[0]["$dist"] == pytest.approx(1.0)


def test_patch_by_filter_allow_partial(ns, monkeypatch):
    from puffer_cli.wal import writes

    monkeypatch.setattr(writes, "MAX_PATCH_BY_FILTER_ROWS", 2)
    ns.write(upsert_rows=[{"id": i, "n": i} for i in range(5)])
    with pytest.raises(turbopuffer.BadRequestError, match="allow_partial"):
        ns.write(patch_by_filter={"filters": ("n", "Gte", 0), "patch": {"n": -1}})
    r = ns.write(patch_by_filter={"filters": ("n", "Gte", 0), "patch": {"n": -1}}, patch_by_filter_allow_partial=True)
    assert r.rows_patched == 2 and r.rows_remaining is True
