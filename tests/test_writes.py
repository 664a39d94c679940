"""turbopuffer write semantics through Namespace.write (all three backends)."""

import polars as pl
import pytest
from puffer_cli.errors import NamespaceNotFound


def rows(ns):
    docs, _ = ns.docs()
    return {r["id"]: r for r in docs.sort("id").to_dicts()}


def test_upsert_patch_delete(db):
    ns = db.open_namespace("w")
    r = ns.write(
        {
            "upsert_rows": [{"id": 1, "vector": [1, 0], "a": "x", "n": 1}, {"id": 2, "vector": [0, 1], "a": "y"}],
            "distance_metric": "euclidean_squared",
        }
    )
    assert r["rows_upserted"] == 2 and r["status"] == "OK"
    ns.write({"patch_rows": [{"id": 1, "a": "z"}, {"id": 99, "a": "ghost"}]})
    got = rows(ns)
    assert got[1]["a"] == "z" and got[1]["n"] == 1
    assert 99 not in got  # a patch never creates a document
    ns.write({"deletes": [2]})
    assert set(rows(ns)) == {1}
    ns.write({"upsert_rows": [{"id": 1, "vector": [2, 2]}]})  # upsert replaces the whole document
    assert rows(ns)[1]["a"] is None
    assert ns.head().metric == "euclidean_squared"


def test_columns_forms(db):
    ns = db.open_namespace("c")
    ns.write({"upsert_columns": {"id": [1, 2, 3], "vector": [[1, 1], [2, 2], [3, 3]], "k": ["a", "b", "c"]}})
    ns.write({"patch_columns": {"id": [2, 3], "k": ["B", None]}})
    got = rows(ns)
    assert [got[i]["k"] for i in (1, 2, 3)] == ["a", "B", None]


def test_ops_in_one_entry_keep_order(mem_db):
    ns = mem_db.open_namespace("o")
    # upsert then delete of the same id in one batch leaves it deleted
    ns.write({"upsert_rows": [{"id": 5, "x": 1}], "deletes": [5]})
    assert rows(ns) == {}
    assert ns.head().seq == 1


def test_filter_writes_and_affected_ids(db):
    ns = db.open_namespace("f")
    ns.write({"upsert_rows": [{"id": i, "lang": "en" if i % 2 else "de", "n": i} for i in range(1, 11)]})
    r = ns.write({"delete_by_filter": ["lang", "Eq", "de"], "return_affected_ids": True})
    assert sorted(r["deleted_ids"]) == [2, 4, 6, 8, 10] and r["rows_deleted"] == 5
    r = ns.write({"patch_by_filter": {"filters": ["n", "Gt", 6], "patch": {"lang": "fr"}}})
    assert r["rows_patched"] == 2
    got = rows(ns)
    assert sorted(got) == [1, 3, 5, 7, 9]
    assert got[7]["lang"] == "fr" and got[9]["lang"] == "fr" and got[5]["lang"] == "en"


def test_conditional_writes(db):
    ns = db.open_namespace("cond")
    ns.write({"upsert_rows": [{"id": 1, "version": 3, "v": "old"}, {"id": 2, "version": 1, "v": "old"}]})
    r = ns.write(
        {
            "upsert_rows": [
                {"id": 1, "version": 2, "v": "stale"},
                {"id": 2, "version": 2, "v": "new"},
                {"id": 3, "version": 1, "v": "fresh"},
            ],
            "upsert_condition": ["version", "Lt", {"$ref_new": "version"}],
        }
    )
    assert r["rows_upserted"] == 2  # id 1 refused (3 < 2 is false), id 3 absent -> applied
    got = rows(ns)
    assert got[1]["v"] == "old" and got[2]["v"] == "new" and got[3]["v"] == "fresh"
    r = ns.write(
        {
            "patch_rows": [{"id": 1, "v": "p"}, {"id": 2, "v": "p"}, {"id": 9, "v": "p"}],
            "patch_condition": ["version", "Eq", 3],
        }
    )
    assert r["rows_patched"] == 1 and rows(ns)[1]["v"] == "p" and rows(ns)[2]["v"] == "new"
    r = ns.write({"deletes": [1, 2, 3], "delete_condition": ["v", "Eq", "fresh"]})
    assert r["rows_deleted"] == 1 and sorted(rows(ns)) == [1, 2]


def test_schema_declared_and_inferred(mem_db):
    ns = mem_db.open_namespace("s")
    ns.write(
        {
            "upsert_rows": [{"id": "a", "t": "hello world", "when": "2024-01-02T03:04:05Z"}],
            "schema": {"t": {"type": "string", "full_text_search": True}, "when": "datetime"},
        }
    )
    sch = ns.head().schema
    assert sch["id"]["type"] == "string"
    assert sch["t"]["full_text_search"]["language"] == "english"
    assert sch["when"]["type"] == "datetime"
    d = rows(ns)["a"]["when"]
    assert d.year == 2024 and d.hour == 3


def test_uuid_ids(mem_db):
    ns = mem_db.open_namespace("u")
    ns.write({"upsert_rows": [{"id": "6F9619FF-8B86-D011-B42D-00CF4FC964FF", "x": 1}], "schema": {"id": "uuid"}})
    assert list(rows(ns)) == ["6f9619ff-8b86-d011-b42d-00cf4fc964ff"]
    ns.write({"deletes": ["6f9619ff-8b86-d011-b42d-00cf4fc964ff"]})
    assert rows(ns) == {}


def test_base64_vectors(mem_db):
    import base64

    import numpy as np

    ns = mem_db.open_namespace("b")
    v = np.array([0.7, -1.5, 2.0], dtype="<f4")
    ns.write({"upsert_rows": [{"id": 1, "vector": base64.b64encode(v.tobytes()).decode()}]})
    assert rows(ns)[1]["vector"] == pytest.approx([0.7, -1.5, 2.0])


def test_replay_at_seq_and_fresh_process_cache(db):
    from puffer_cli.wal import namespace as N

    ns = db.open_namespace("r")
    for i in range(5):
        ns.write({"upsert_rows": [{"id": i, "x": i}], "deletes": [i - 1] if i else None})
    N.forget(db.store, "r")
    fresh = db.open_namespace("r")
    assert list(rows(fresh)) == [4]
    assert fresh.docs(3)[0]["id"].to_list() == [2]


def test_delete_all_and_missing(mem_db):
    ns = mem_db.open_namespace("gone")
    with pytest.raises(NamespaceNotFound):
        ns.require()
    ns.write({"upsert_rows": [{"id": 1}]})
    assert ns.delete_all() >= 2
    assert not mem_db.open_namespace("gone").exists()


def test_namespaces_listing(mem_db):
    for n in ("b1", "a1", "a2"):
        mem_db.open_namespace(n).write({"upsert_rows": [{"id": 1}]})
    assert mem_db.namespaces_page()[0] == ["a1", "a2", "b1"]
    page, cur = mem_db.namespaces_page(page_size=2)
    assert page == ["a1", "a2"] and cur == "a2"
    assert mem_db.namespaces_page(cursor=cur)[0] == ["b1"]
    assert mem_db.namespaces_page(prefix="a")[0] == ["a1", "a2"]


def test_large_replay_in_batches(mem_db, monkeypatch):
    from puffer_cli.wal import namespace as N
    from puffer_cli.wal import replay

    monkeypatch.setattr(replay, "BATCH_ROWS", 7)
    ns = mem_db.open_namespace("big")
    for i in range(10):
        ns.write({"upsert_columns": {"id": list(range(i * 5, i * 5 + 10)), "g": [i] * 10}})
    N.forget(mem_db.store, "big")
    docs, _ = mem_db.open_namespace("big").docs()
    assert docs.height == 55
    assert docs.filter(pl.col("id") == 7)["g"].item() == 1


def test_meta_hint_failure_after_commit_does_not_fail_the_write(mem_db, monkeypatch):
    """meta.json is a hint: once the WAL entry exists the write is acknowledged even if
    advancing meta.json fails (a failure reported to the client would invite a retry
    that applies the write twice)."""
    from puffer_cli.store import layout

    ns = mem_db.open_namespace("hint")
    ns.write({"upsert_rows": [{"id": 1}]})
    real = type(ns.store).cas

    def flaky(self, key, data, version):
        if key == layout.meta("hint"):
            raise OSError(5, "transient store error")
        return real(self, key, data, version)

    monkeypatch.setattr(type(ns.store), "cas", flaky)
    assert ns.write({"upsert_rows": [{"id": 2}]})["rows_affected"] == 1
    monkeypatch.setattr(type(ns.store), "cas", real)
    assert ns.head().seq == 2
    assert sorted(ns.docs()[0]["id"].to_list()) == [1, 2]


def test_head_notices_namespace_deleted_and_recreated_elsewhere(db):
    """Process A knows head seq 3; process B deletes the namespace and writes seq 1.
    A must not commit seq 4 (a gap every reader would trip on) nor serve the old rows."""
    from puffer_cli.wal import namespace as nsmod

    a = db.open_namespace("re")
    for i in range(3):
        a.write({"upsert_rows": [{"id": i, "x": i}]})
    assert a.head().seq == 3 and a.docs()[0].height == 3
    nsmod._CACHES.pop((db.store.url, "re"))  # B: another process, with caches of its own
    b = db.open_namespace("re")
    b.delete_all()
    b.write({"upsert_rows": [{"id": 100, "x": 1}]})
    assert a.head().seq == 1
    assert a.docs()[0]["id"].to_list() == [100]
    a.write({"upsert_rows": [{"id": 7, "x": 7}]})
    assert [layout_seq for layout_seq, _ in a.wal_keys()] == [1, 2]
    nsmod._CACHES.pop((db.store.url, "re"))
    assert sorted(db.open_namespace("re").docs()[0]["id"].to_list()) == [7, 100]


def test_retried_create_whose_first_attempt_landed_is_not_committed_twice(db, monkeypatch):
    """An S3 PUT whose response is lost is retried by the client and then fails its
    If-None-Match: the writer must recognise its own entry instead of committing again."""
    ns = db.open_namespace("retry")
    ns.write({"upsert_rows": [{"id": 1, "n": 1}]})
    real = type(db.store).create

    def lost_response(self, key, data):
        real(self, key, data)
        return False  # as if the retry saw 412 Precondition Failed

    monkeypatch.setattr(type(db.store), "create", lost_response)
    ns.write({"patch_rows": [{"id": 1, "n": 2}]})
    monkeypatch.setattr(type(db.store), "create", real)
    assert ns.head().seq == 2
    assert ns.docs()[0]["n"].to_list() == [2]


def test_group_commit_isolates_a_body_that_hits_a_bug(mem_db, monkeypatch):
    """A non-validation failure planning one body fails that request alone (500);
    the other bodies of the batch still commit, in one entry."""
    from puffer_cli.errors import PufferError
    from puffer_cli.wal import writes

    real = writes.plan

    def plan(body, snap, **kw):
        if body.get("boom"):
            raise RuntimeError("bug")
        return real(body, snap, **kw)

    monkeypatch.setattr(writes, "plan", plan)
    ns = mem_db.open_namespace("iso")
    out = ns.write_batch([{"upsert_rows": [{"id": 1}]}, {"boom": True}, {"upsert_rows": [{"id": 2}]}])
    assert isinstance(out[1], PufferError) and out[1].status == 500 and "RuntimeError" in str(out[1])
    assert out[0]["status"] == out[2]["status"] == "OK"
    assert ns.head().seq == 1 and sorted(ns.docs()[0]["id"].to_list()) == [1, 2]


def test_affected_ids_count_only_existing_and_omit_empty(db):
    ns = db.open_namespace("aff")
    ns.write({"upsert_rows": [{"id": 1, "n": 1}, {"id": 2, "n": 2}]})
    r = ns.write(
        {"patch_rows": [{"id": 1, "n": 5}, {"id": 99, "n": 5}], "deletes": [2, 77], "return_affected_ids": True}
    )
    assert r["patched_ids"] == [1] and r["deleted_ids"] == [2]
    assert (r["rows_patched"], r["rows_deleted"], r["rows_affected"]) == (1, 1, 2)
    assert "upserted_ids" not in r  # empty lists are omitted
    r = ns.write({"patch_columns": {"id": [2, 3], "n": [0, 0]}, "deletes": [2], "return_affected_ids": True})
    assert r["rows_affected"] == 0 and not {"upserted_ids", "patched_ids", "deleted_ids"} & set(r)
    assert rows(ns) == {1: {"id": 1, "n": 5}}


def test_copy_from_namespace_keeps_the_metric(db):
    src = db.open_namespace("src-euc")
    src.write({"upsert_rows": [{"id": 1, "vector": [1.0, 0.0]}], "distance_metric": "euclidean_squared"})

    def source(name):
        docs, head = db.open_namespace(name).docs()
        return head.schema, docs, head.metric

    dst = db.open_namespace("dst-euc")
    r = dst.write({"copy_from_namespace": "src-euc"}, copy_source=source)
    assert r["rows_upserted"] == 1 and dst.head().metric == "euclidean_squared"
    other = db.open_namespace("dst-cos")
    other.write({"upsert_rows": [{"id": 5, "vector": [0.0, 1.0]}], "distance_metric": "cosine_distance"})
    with pytest.raises(Exception, match="distance_metric"):
        other.write({"copy_from_namespace": "src-euc"}, copy_source=source)
    with pytest.raises(Exception, match="distance_metric"):
        db.open_namespace("dst-x").write(
            {"copy_from_namespace": "src-euc", "distance_metric": "cosine_distance"}, copy_source=source
        )


def test_schema_options_as_turbopuffer(db):
    from puffer_cli.index import ivf
    from puffer_cli.schema import spec as S

    assert S.IVF_BOUNDS == ivf.BOUNDS  # schema repeats the index's bounds (layers)
    ns = db.open_namespace("opts")
    r = ns.write(
        {
            "upsert_rows": [{"id": 1, "v": [1.0, 0.0], "t": "hello"}],
            "schema": {
                "v": {
                    "type": "[2]f32",
                    "ann": {"distance_metric": "euclidean_squared", "probe": 0.2, "rerank": 5, "fill": 0.5},
                },
                "t": {"type": "string", "glob": True, "regex": True, "fuzzy": True},
            },
        }
    )
    assert r["rows_upserted"] == 1
    h = ns.head()
    assert h.metric == "euclidean_squared"
    assert h.schema["v"]["ann"] == {"distance_metric": "euclidean_squared", "probe": 0.2, "rerank": 5, "fill": 0.5}
    assert (h.schema["t"]["glob"], h.schema["t"]["regex"], h.schema["t"]["fuzzy"]) == (True, True, True)
    assert ivf.options(h.schema["v"])["probe"] == 0.2 and ivf.options(h.schema["v"])["fill"] == 0.5
    bad = [
        ({"v": {"type": "[2]f32", "ann": {"distance_metric": "cosine_distance"}}}, "differs"),
        ({"v": {"type": "[2]f32", "ann": {"probe": 0}}}, "probe"),
        ({"v": {"type": "[2]f32", "ann": {"probe": 1.5}}}, "probe"),
        ({"v": {"type": "[2]f32", "ann": {"list_rows": 8}}}, "list_rows"),
        ({"v": {"type": "[2]f32", "ann": {"rerank": True}}}, "rerank"),
        ({"v": {"type": "[2]f32", "ann": {"probe_min_rows": -1}}}, "probe_min_rows"),
        ({"v": {"type": "[2]f32", "ann": {"probe_min_rows": 1 << 30}}}, "probe_min_rows"),
        ({"v": {"type": "[2]f32", "ann": {"probe_min_rows": 1.5}}}, "probe_min_rows"),
        ({"v": {"type": "[2]f32", "ann": {"probe_min_rows": "16384"}}}, "probe_min_rows"),
        ({"v": {"type": "[2]f32", "ann": {"fill": -0.5}}}, "fill"),
        ({"v": {"type": "[2]f32", "ann": {"fill": 9}}}, "fill"),
        ({"v": {"type": "[2]f32", "ann": {"fill": True}}}, "fill"),
        ({"v": {"type": "[2]f32", "ann": {"fill": "1"}}}, "fill"),
        ({"v": {"type": "[2]f32", "ann": {"distance_metric": "dot"}}}, "distance_metric"),
        ({"v": {"type": "[2]f32", "ann": {"late_interaction": True}}}, "late_interaction"),
        ({"s": {"type": "{}f16", "sparse_knn": {"distance_metric": "cosine_distance"}}}, "sparse_knn"),
        ({"s": {"type": "[2]f32", "sparse_knn": {"distance_metric": "dot_product"}}}, "sparse_knn"),
        ({"s": {"type": "{}f16", "filterable": True}}, "filterable"),
        ({"t": {"type": "string", "embed": "model"}}, "embed"),
        ({"n": {"type": "int", "glob": True}}, "glob"),
        ({"t": {"type": "string", "fuzzy": 1}}, "fuzzy"),
    ]
    for schema, msg in bad:
        with pytest.raises(Exception, match=msg):
            ns.write({"schema": schema})


def test_filter_write_limits_and_allow_partial(db, monkeypatch):
    from puffer_cli.wal import writes

    monkeypatch.setattr(writes, "MAX_PATCH_BY_FILTER_ROWS", 3)
    monkeypatch.setattr(writes, "MAX_DELETE_BY_FILTER_ROWS", 4)
    ns = db.open_namespace("lim")
    ns.write({"upsert_rows": [{"id": i, "n": i} for i in range(10)]})
    pbf = {"filters": ["n", "Gte", 0], "patch": {"tag": "x"}}
    with pytest.raises(Exception, match="patch_by_filter_allow_partial"):
        ns.write({"patch_by_filter": pbf})
    r = ns.write({"patch_by_filter": pbf, "patch_by_filter_allow_partial": True})
    assert r["rows_patched"] == 3 and r["rows_remaining"] is True
    assert [i for i, d in rows(ns).items() if d["tag"] == "x"] == [0, 1, 2]
    r = ns.write({"patch_by_filter": {**pbf, "filters": ["n", "Gte", 8]}, "patch_by_filter_allow_partial": True})
    assert r["rows_patched"] == 2 and r["rows_remaining"] is False
    with pytest.raises(Exception, match="delete_by_filter_allow_partial"):
        ns.write({"delete_by_filter": ["n", "Gte", 0]})
    r = ns.write({"delete_by_filter": ["n", "Gte", 0], "delete_by_filter_allow_partial": True})
    assert r["rows_deleted"] == 4 and r["rows_remaining"] is True
    assert sorted(rows(ns)) == [4, 5, 6, 7, 8, 9]
    assert "rows_remaining" not in ns.write({"delete_by_filter": ["n", "Eq", 9]})
