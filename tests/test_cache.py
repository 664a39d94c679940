"""The local file cache (puffer_cli/cache.py) and `warm` / cold-query accounting."""
from __future__ import annotations

import numpy as np

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
