"""The local file cache (puffer_cli/cache.py) and `warm` / cold-query accounting."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from puffer_cli import cache, engine, namespace
from puffer_cli.cache import Cache
from puffer_cli.index import builder, reader
from puffer_cli.store import io_scope

from .test_index import SCHEMA, make_rows


def test_cache_fetches_once_and_keys_by_store(mem_db, tmp_path):
    st = mem_db.store
    st.write("ns/index/00000000000000000001/x.bin", b"hello")
    c = Cache(tmp_path / "c")
    with io_scope() as io:
        p = c.file(st, "ns/index/00000000000000000001/x.bin")
        p2 = c.file(st, "ns/index/00000000000000000001/x.bin")
    assert p == p2 and p.read_bytes() == b"hello" and io.requests == 1
    assert c.stats.misses == 1 and c.stats.hits == 1 and c.stats.bytes_fetched == 5
    assert str(p).startswith(str(tmp_path / "c")) and p.parts[-1] == "x.bin"
    d = c.directory(st, ["ns/index/00000000000000000001/x.bin"], "ns/index/00000000000000000001/")
    assert (d / "x.bin").read_bytes() == b"hello"


def test_local_store_is_read_in_place(local_db, tmp_path):
    st = local_db.store
    st.write("a/index/00000000000000000001/f", b"abc")
    c = Cache(tmp_path / "c")
    assert c.file(st, "a/index/00000000000000000001/f") == st.local_path("a/index/00000000000000000001/f")
    d = c.directory(st, ["a/index/00000000000000000001/f"], "a/index/00000000000000000001/")
    assert (d / "f").read_bytes() == b"abc" and d != st.local_path("a/index/00000000000000000001")


def test_disabled_cache_uses_a_private_temp_dir():
    c = cache.configure("")
    assert not c.persistent and c.root.exists()
    c2 = cache.configure("")
    assert c2.root != c.root


def test_cold_then_hot_query_and_warm(mem_db, tmp_path):
    rng = np.random.default_rng(20)
    ns = mem_db.namespace("w")
    ns.write({"upsert_rows": make_rows(rng, 0, 80), "schema": SCHEMA})
    cache.configure(str(tmp_path / "build-cache"))
    builder.index_namespace(ns, gc_grace_s=0)

    def forget():
        reader._GENS.clear()
        reader._TAILS.clear()
        builder._MANIFESTS.clear()
        namespace.forget(mem_db.store, "w")

    cache.configure(str(tmp_path / "empty"))
    forget()
    body = {"rank_by": ["text", "BM25", "fox"], "top_k": 3, "consistency": {"level": "eventual"}}
    cold = engine.run_query(mem_db.namespace("w"), body)["performance"]
    assert cold["cache_temperature"] == "cold" and cold["object_store_bytes_read"] > 0
    hot = engine.run_query(mem_db.namespace("w"), body)["performance"]
    assert hot["cache_temperature"] == "hot" and hot["object_store_requests"] == 1  # meta.json only

    c = cache.configure(str(tmp_path / "warm"))
    forget()
    w = reader.warm(mem_db.namespace("w"), c)
    assert w["generation"] == 1 and w["files"] == w["fetched_files"] > 0 and w["bytes"] == w["fetched_bytes"]
    again = reader.warm(mem_db.namespace("w"), c)
    assert again["fetched_files"] == 0 and again["files"] == w["files"]
    cache.configure("")


@settings(max_examples=60, deadline=None)
@given(pos=st.lists(st.integers(0, 299), min_size=1, max_size=40), row_bytes=st.sampled_from([4, 12, 400]))
def test_ranged_row_reads_equal_the_whole_file(pos, row_bytes):
    """reader._read_rows (coalesced, parallel ranged reads) returns exactly the rows asked
    for, in the order asked, duplicates included."""
    import puffer_cli

    st_ = puffer_cli.connect("memory://ranged").store
    data = np.arange(300 * row_bytes, dtype=np.uint32).astype(np.uint8).tobytes()
    st_.write("r/index/00000000000000000001/v.f32", data)
    p = np.asarray(pos, dtype=np.int64)
    got = reader._read_rows(st_, "r/index/00000000000000000001/v.f32", p, row_bytes)
    want = np.frombuffer(data, np.uint8).reshape(300, row_bytes)[p]
    assert np.array_equal(got, want)


def test_cold_vector_query_reads_rows_by_range(s3_server, tmp_path, monkeypatch):
    """On S3 with an empty cache, an ANN query fetches the HNSW file whole but only the
    re-ranked rows of a (large) f32 vector file (ranged reads); a long-lived process
    (background_fetch, the default) then fetches that file whole for the next queries,
    a one-shot `puffer query` does not. Answers are the same either way."""
    import time

    import puffer_cli

    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 10)
    monkeypatch.setattr(reader, "WHOLE_FILE_MAX", 0)  # treat the tiny test file as large
    db = puffer_cli.connect("s3://puffer-test/cold-ranged", s3_endpoint=s3_server)
    ns = db.namespace("v")
    rng = np.random.default_rng(21)
    ns.write({"upsert_rows": [{"id": i, "vector": rng.normal(size=16).round(3).tolist()} for i in range(400)]})
    cache.configure(str(tmp_path / "build"))
    builder.index_namespace(ns, gc_grace_s=0)
    meta, _ = ns.read_meta()
    vec_key = builder.load_manifest(db.store, meta["index"]["manifest"])["segments"][0]["vectors"]["vector"]["key"]
    body = {"rank_by": ["vector", "ANN", rng.normal(size=16).tolist()], "top_k": 5, "include_attributes": ["vector"],
            "consistency": {"level": "eventual"}}
    want = engine.run_query(ns, body)["rows"]

    def fresh_cache(name):
        c = cache.configure(str(tmp_path / name))
        reader._GENS.clear()
        builder._MANIFESTS.clear()
        return c

    c = fresh_cache("cold")
    c.background_fetch = False  # as `puffer query` sets it
    perf = engine.run_query(ns, body)
    assert perf["rows"] == want and perf["performance"]["cache_temperature"] == "cold"
    assert not c.has(db.store, vec_key) and c.stats.ranged_reads >= 1
    assert c.stats.ranged_bytes < 400 * 16 * 4 / 4  # a few rows, not the file

    c = fresh_cache("serve")
    assert c.background_fetch
    assert engine.run_query(ns, body)["rows"] == want
    for _ in range(200):
        if c.has(db.store, vec_key):
            break
        time.sleep(0.05)
    assert c.has(db.store, vec_key)
    before = c.stats.ranged_reads
    assert engine.run_query(ns, body)["rows"] == want and c.stats.ranged_reads == before
    cache.configure("")
