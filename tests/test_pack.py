"""The prefetch pack (puffer_cli/index/pack.py): on S3 a cold vector query fetches the small
routing files with the manifest as one object; a pack that is damaged or missing costs a
round trip, never an answer, and is written again by the next run."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from puffer_cli.index import pack

from .test_ivf import clustered
from .test_stack import cache_restored, cold_cache, indexed_on_s3


@settings(max_examples=40, deadline=None)
@given(
    files=st.dictionaries(
        st.text("abcz09-_./", min_size=1, max_size=30), st.binary(max_size=300), min_size=1, max_size=6
    )
)
def test_a_pack_gives_back_what_it_holds(files):
    data = pack.build(list(files), files.__getitem__)
    assert pack.unpack(data, list(files)) == files


@settings(max_examples=300, deadline=None)
@given(at=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_a_damaged_pack_is_refused(at, flip):
    """Any byte of a file's content changed, or the pack cut short: ValueError, never other bytes."""
    files = {"a/route.npz": bytes(range(256)) * 3, "b/route.npz": b"x" * 500}
    data = bytearray(pack.build(list(files), files.__getitem__))
    i = at % len(data)
    data[i] ^= flip
    try:
        got = pack.unpack(bytes(data), list(files))
    except ValueError:
        return
    assert got == files  # a header byte that does not change any content (e.g. a name's padding)
    with pytest.raises(ValueError):
        pack.unpack(bytes(data[: len(data) // 2]), list(files))


def _cold(db, name, qs, tmp_path):
    """Answers and per-key request counts of ``qs`` on a fresh cache (a cold process)."""
    from puffer_cli.search import engine

    cold_cache(tmp_path / f"cache-{uuid.uuid4().hex}")
    seen: list[str] = []
    cls = type(db.store)
    real_read, real_rr = cls.read, cls.read_ranges

    def read(self, key, *a, **kw):
        seen.append(key)
        return real_read(self, key, *a, **kw)

    def read_ranges(self, reqs, *a, **kw):
        reqs = list(reqs)
        seen.extend(r[0] for r in reqs)
        return real_rr(self, reqs, *a, **kw)

    cls.read, cls.read_ranges = read, read_ranges
    try:
        ns = db.open_namespace(name)
        out = []
        for q in qs:
            body = {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 10, "consistency": {"level": "eventual"}}
            out.append([(r["id"], round(r["$dist"], 6)) for r in engine.run_query(ns, body)["rows"]])
        return out, seen
    finally:
        cls.read, cls.read_ranges = real_read, real_rr


@pytest.fixture
def shared(monkeypatch):
    from puffer_cli.index import ivf
    from puffer_cli.search import reader

    monkeypatch.setenv("PUFFER_IVF_ROUTING", "shared")
    monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "1000")
    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(reader, "EXACT_MAX_FRACTION", 0.0)
    monkeypatch.setitem(ivf.DEFAULTS, "probe_min_rows", 400)


def test_a_cold_query_reads_the_routes_as_one_pack(s3_server, shared, tmp_path, caplog):
    from puffer_cli.index import builder

    db, ns, x = indexed_on_s3(s3_server, "packed", 51, n=3000, k=60)
    ptr = ns.read_meta()[0]["index"]
    pk = ptr["prefetch_pack"]
    routes = [k for k in ptr["prefetch_vector"] if k.endswith(".route.npz")]
    assert len(routes) == 3 and set(routes) <= set(ptr["prefetch_vector"]) - set(pk["unpacked"])
    man = builder.load_manifest(ns.store, ptr["manifest"])
    assert pk["key"] in man["files"] and man["prefetch_pack"] == pk
    qs = x[:3] + 0.01
    with cache_restored():
        want, seen = _cold(db, "packed", qs, tmp_path)
        assert pk["key"] in seen and not set(routes) & set(seen)  # the routes came in the pack
        # damaged: the same answers, each route fetched on its own, a warning naming the pack
        data = ns.store.read(pk["key"])
        ns.store.write(pk["key"], data[: len(data) // 2])
        caplog.clear()
        got, seen = _cold(db, "packed", qs, tmp_path)
        assert got == want and set(routes) <= set(seen)
        assert any(pk["key"] in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
        rep = builder.index_namespace(ns, gc_grace_s=0, repair=True)
        assert pk["key"] in rep.repaired and rep.status == "indexed"
        pk2 = ns.read_meta()[0]["index"]["prefetch_pack"]
        got, seen = _cold(db, "packed", qs, tmp_path)
        assert got == want and pk2["key"] in seen and not set(routes) & set(seen)
        # missing: found by any run (no --repair needed)
        ns.store.delete(pk2["key"])
        got, _seen = _cold(db, "packed", qs, tmp_path)
        assert got == want
        rep = builder.index_namespace(ns, gc_grace_s=0)
        assert pk2["key"] in rep.repaired and rep.status == "indexed"
        assert ns.store.exists(ns.read_meta()[0]["index"]["prefetch_pack"]["key"])


def test_a_local_store_writes_no_pack(local_db, shared):
    from puffer_cli.index import builder

    rng = np.random.default_rng(52)
    x = clustered(rng, n=2500, dims=16, k=50)
    ns = local_db.open_namespace("plain")
    ns.write({"upsert_columns": {"id": list(range(2500)), "vector": x.tolist()}})
    builder.index_namespace(ns, gc_grace_s=0)
    assert "prefetch_pack" not in ns.read_meta()[0]["index"]


def test_a_route_lost_behind_an_intact_pack_is_answered_and_repaired(s3_server, shared, tmp_path):
    """The pack is a copy: a route object deleted answers from it (cold), and the next plain
    run finds the missing file by its listing and writes the segment again."""
    from puffer_cli.index import builder

    db, ns, x = indexed_on_s3(s3_server, "lost", 53, n=3000, k=60)
    ptr = ns.read_meta()[0]["index"]
    route = [k for k in ptr["prefetch_vector"] if k.endswith(".route.npz")][0]
    qs = x[:3] + 0.01
    with cache_restored():
        want, _seen = _cold(db, "lost", qs, tmp_path)
        ns.store.delete(route)
        got, seen = _cold(db, "lost", qs, tmp_path)
        assert got == want and route not in seen
        rep = builder.index_namespace(ns, gc_grace_s=0)
        assert rep.status == "indexed" and rep.repaired
        man = builder.load_manifest(ns.store, ns.read_meta()[0]["index"]["manifest"])
        assert all(ns.store.exists(k) for k in man["files"])
        got, _seen = _cold(db, "lost", qs, tmp_path)
        assert got == want


@pytest.mark.parametrize(
    "bad",
    [
        "prefetch.zip",  # not an object
        {"key": 5},  # a key that is no string
        {"key": "elsewhere.zip", "unpacked": "book.npz"},  # unpacked not a list
        {"key": "missing/prefetch-none.zip", "unpacked": []},  # names no object
        {"key": "x.zip", "unpacked": [1, None, {"a": 1}]},  # junk in the list
    ],
)
def test_a_pointer_with_a_bad_pack_entry_still_answers(s3_server, shared, tmp_path, bad):
    """A hand-edited (or foreign) pointer's ``prefetch_pack``: the cold query reads the files
    one by one and answers as before; never a 500-style error."""
    db, ns, x = indexed_on_s3(s3_server, "badptr", 55, n=2500, k=50)
    qs = x[:2] + 0.01
    with cache_restored():
        want, _seen = _cold(db, "badptr", qs, tmp_path)

        def swap(cur):
            cur["index"]["prefetch_pack"] = bad
            return cur

        assert ns.update_meta(swap) is not None
        got, seen = _cold(db, "badptr", qs, tmp_path)
        assert got == want
        routes = [k for k in ns.read_meta()[0]["index"]["prefetch_vector"] if k.endswith(".route.npz")]
        assert set(routes) <= set(seen)  # fetched one by one
