"""The local file cache (puffer_cli/cache.py) and `warm` / cold-query accounting."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from puffer_cli.index import builder, ivf, ranged
from puffer_cli.index.segment import GENS
from puffer_cli.index.tail import TAILS
from puffer_cli.search import engine, reader
from puffer_cli.store import filecache as cache
from puffer_cli.store import fileops, io_scope
from puffer_cli.store.filecache import Cache
from puffer_cli.wal import namespace

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
    ns = mem_db.open_namespace("w")
    ns.write({"upsert_rows": make_rows(rng, 0, 80), "schema": SCHEMA})
    cache.configure(str(tmp_path / "build-cache"))
    builder.index_namespace(ns, gc_grace_s=0)

    def forget():
        GENS.clear()
        TAILS.clear()
        builder._MANIFESTS.clear()
        namespace.forget(mem_db.store, "w")

    cache.configure(str(tmp_path / "empty"))
    forget()
    body = {"rank_by": ["text", "BM25", "fox"], "top_k": 3, "consistency": {"level": "eventual"}}
    cold = engine.run_query(mem_db.open_namespace("w"), body)["performance"]
    assert cold["cache_temperature"] == "cold" and cold["object_store_bytes_read"] > 0
    hot = engine.run_query(mem_db.open_namespace("w"), body)["performance"]
    assert hot["cache_temperature"] == "hot" and hot["object_store_requests"] == 1  # meta.json only

    c = cache.configure(str(tmp_path / "warm"))
    forget()
    w = warm.warm(mem_db.open_namespace("w"), c)
    assert w["generation"] == 1 and w["files"] == w["fetched_files"] > 0 and w["bytes"] == w["fetched_bytes"]
    again = warm.warm(mem_db.open_namespace("w"), c)
    assert again["fetched_files"] == 0 and again["files"] == w["files"]
    cache.configure("")


@settings(max_examples=60, deadline=None)
@given(pos=st.lists(st.integers(0, 299), min_size=1, max_size=40), row_bytes=st.sampled_from([4, 12, 400]))
def test_ranged_row_reads_equal_the_whole_file(pos, row_bytes):
    """ranged.read_rows (coalesced, parallel ranged reads) returns exactly the rows asked
    for, in the order asked, duplicates included."""
    import puffer_cli

    st_ = puffer_cli.connect("memory://ranged").store
    data = np.arange(300 * row_bytes, dtype=np.uint32).astype(np.uint8).tobytes()
    st_.write("r/index/00000000000000000001/v.f32", data)
    p = np.asarray(pos, dtype=np.int64)
    got = ranged.read_rows(st_, "r/index/00000000000000000001/v.f32", p, row_bytes)
    want = np.frombuffer(data, np.uint8).reshape(300, row_bytes)[p]
    assert np.array_equal(got, want)


def _indexed_on_s3(s3_server, tmp_path, name, rows, **write):
    """Namespace ``v`` in a fresh S3 prefix ``name`` with ``rows`` written and indexed (build
    cache under tmp_path); returns (db, ns, its meta.json)."""
    import puffer_cli

    db = puffer_cli.connect(f"s3://puffer-test/{name}", s3_endpoint=s3_server)
    ns = db.open_namespace("v")
    ns.write({"upsert_rows": rows, **write})
    cache.configure(str(tmp_path / "build"))
    builder.index_namespace(ns, gc_grace_s=0)
    return db, ns, ns.read_meta()[0]


def _cold(tmp_path, name, background_fetch=False):
    """A fresh, empty cache and no opened generations or manifests: the next query is cold."""
    c = cache.configure(str(tmp_path / name))
    c.background_fetch = background_fetch
    GENS.clear()
    builder._MANIFESTS.clear()
    return c


def test_cold_vector_query_reads_rows_by_range(s3_server, tmp_path, monkeypatch):
    """On S3 with an empty cache, an ANN query fetches the IVF route whole but only the probed lists and the
    re-ranked rows of a (large) f32 vector file (ranged reads); a long-lived process
    (background_fetch, the default) then fetches that file whole for the next queries,
    a one-shot `puffer query` does not. Answers are the same either way."""
    import time

    import puffer_cli

    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 10)
    monkeypatch.setattr(ranged, "WHOLE_FILE_MAX", 0)  # treat the tiny test file as large
    monkeypatch.setitem(ivf.DEFAULTS, "probe_min_rows", 0)  # ... and its segment (probe a fraction of it)
    db = puffer_cli.connect("s3://puffer-test/cold-ranged", s3_endpoint=s3_server)
    ns = db.open_namespace("v")
    rng = np.random.default_rng(21)
    ns.write({"upsert_rows": [{"id": i, "vector": rng.normal(size=16).round(3).tolist()} for i in range(400)]})
    cache.configure(str(tmp_path / "build"))
    builder.index_namespace(ns, gc_grace_s=0)
    meta, _ = ns.read_meta()
    vec_key = builder.load_manifest(db.store, meta["index"]["manifest"])["segments"][0]["vectors"]["vector"]["key"]
    body = {
        "rank_by": ["vector", "ANN", rng.normal(size=16).tolist()],
        "top_k": 5,
        "include_attributes": ["vector"],
        "consistency": {"level": "eventual"},
    }
    want = engine.run_query(ns, body)["rows"]

    def fresh_cache(name):
        c = cache.configure(str(tmp_path / name))
        GENS.clear()
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


# ---------------------------------------------------------------- the size bound (issue 9)
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import puffer_cli  # noqa: E402
import pytest  # noqa: E402
from puffer_cli import limits  # noqa: E402
from puffer_cli.cli import main as cli  # noqa: E402
from puffer_cli.errors import InvalidRequest, StoreError  # noqa: E402
from puffer_cli.index import warm  # noqa: E402

K = "ns/index/00000000000000000001/"


def _settled(c: Cache) -> None:
    """Wait until the whole-file fetches a query started in the background are done (each
    evicts after it adds its file): a usage read in the middle of one sees its file added and
    the eviction it triggers not yet done."""
    deadline = time.monotonic() + 30
    while c._fetching and time.monotonic() < deadline:
        time.sleep(0.005)


def _forget_all():
    GENS.clear()
    TAILS.clear()
    builder._MANIFESTS.clear()


def _age(c: Cache, st_, key: str, t: float) -> None:
    os.utime(c.path_for(st_, key), (t, t))


def test_eviction_is_lru_by_last_use(mem_db, tmp_path):
    st_ = mem_db.store
    for k in "abcd":
        st_.write(K + k, k.encode() * 100)
    c = Cache(tmp_path / "c", max_bytes=350)
    c.grace_s = 0
    for k in "abc":
        c.file(st_, K + k)
    for i, k in enumerate("abc"):
        _age(c, st_, K + k, 1_000_000 + i)  # a oldest, then b, then c
    assert c.file(st_, K + "a").read_bytes() == b"a" * 100  # a hit: a is now the most recent
    c.file(st_, K + "d")  # 400 > 350: evict down to 315
    assert not c.has(st_, K + "b") and all(c.has(st_, K + k) for k in "acd")
    assert c.usage().bytes == 300 and c.stats.evictions == 1
    # evicted files are fetched again, transparently
    assert c.file(st_, K + "b").read_bytes() == b"b" * 100 and c.stats.misses == 5


def test_files_in_use_are_not_evicted(mem_db, tmp_path):
    st_ = mem_db.store
    for k in "abcd":
        st_.write(K + k, np.arange(256, dtype="<f4").tobytes())
    c = Cache(tmp_path / "c", max_bytes=10**9)
    c.grace_s = 0
    mapped = np.memmap(c.file(st_, K + "a"), dtype="<f4", mode="r")  # mapped (like reader.py's vectors)
    f = open(c.file(st_, K + "b"), "rb")  # open
    c.pin([c.file(st_, K + "c")])  # pinned
    c.file(st_, K + "d")
    c.max_bytes = 0
    u = c.evict()
    assert [c.has(st_, K + k) for k in "abcd"] == [True, True, True, False]
    assert u.kept_in_use == 3 and u.evicted_files == 1
    assert float(mapped[255]) == 255.0
    # within the grace period a file is kept too (another process may just have been given it)
    c.grace_s = 3600
    c.file(st_, K + "d")
    c.evict()
    assert c.has(st_, K + "d")
    c.grace_s = 0
    del mapped
    f.close()
    gc.collect()
    c.unpin([c.path_for(st_, K + "c")])
    c.evict()
    assert c.usage().files == 0 and not any(c.root.rglob("*"))  # empty directories pruned too


def test_cache_stays_under_its_bound_across_namespaces_and_generations(mem_db, tmp_path):
    rng = np.random.default_rng(30)
    bound = 60_000
    c = cache.configure(str(tmp_path / "bounded"), max_bytes=bound)
    c.grace_s = 0
    try:
        answers = {}
        for g in range(2):  # two generations of each of three namespaces
            for n in range(3):
                ns = mem_db.open_namespace(f"n{n}")
                ns.write({"upsert_rows": make_rows(rng, g * 30, 30), "schema": SCHEMA})
                builder.index_namespace(ns, gc_grace_s=0)
        _forget_all()
        for rep in range(2):
            for n in range(3):
                body = {"rank_by": ["text", "BM25", "fox"], "top_k": 5, "consistency": {"level": "eventual"}}
                got = engine.run_query(mem_db.open_namespace(f"n{n}"), body)["rows"]
                if rep == 0:
                    answers[n] = got
                assert got == answers[n]  # evicted files are fetched again
                _settled(c)
                in_use = sum(os.path.getsize(p) for p in fileops.open_paths(str(c.root) + os.sep))
                assert c.usage().bytes <= bound + in_use
                _forget_all()  # the server's namespace LRU does this
        gc.collect()
        c.evict()
        assert c.usage().bytes <= bound and c.stats.evictions > 0
    finally:
        cache.configure("", max_bytes=None)


def test_local_store_gc_frees_index_files(local_db, tmp_path):
    """Files the cache materialises from a local store are copies (reflink or copy), never
    hard links: every index file of the store has one link, so when the indexer's GC (or a
    namespace delete) unlinks it, its space is really freed; the cache's copies (if a query
    made any: the full-text blocks of a local store are read in place) are bounded and
    evicted like any other file, or dropped at once with Cache.discard."""
    rng = np.random.default_rng(31)
    c = cache.configure(str(tmp_path / "lc"))
    try:
        ns = local_db.open_namespace("g")
        ns.write({"upsert_rows": make_rows(rng, 0, 60), "schema": SCHEMA})
        builder.index_namespace(ns, gc_grace_s=0)
        body = {"rank_by": ["text", "BM25", "fox"], "top_k": 3, "consistency": {"level": "eventual"}}
        want = engine.run_query(ns, body)["rows"]
        store_files = [p for p in local_db.store.local_path("g/index").rglob("*") if p.is_file()]
        copies = [p for p in c.root.rglob("*") if p.is_file() and not p.name.startswith(".tantivy")]
        assert store_files
        assert all(p.stat().st_nlink == 1 for p in store_files + copies)
        assert not {p.stat().st_ino for p in store_files} & {p.stat().st_ino for p in copies}
        _forget_all()
        gc.collect()
        c.grace_s = 0
        gen = local_db.store.local_path("g/index")
        assert c.discard(local_db.store, "g/index/") >= len(copies)  # (and tantivy lock files)
        assert not [p for p in c.root.rglob("*") if p.is_file() and not p.name.startswith(".tantivy")]
        assert engine.run_query(ns, body)["rows"] == want  # copied again on use
        ns.delete_all()
        assert not [p for p in gen.rglob("*") if p.is_file()]
    finally:
        cache.configure("", max_bytes=None)


def test_copy_file_is_exact(tmp_path):
    src = tmp_path / "s"
    src.write_bytes(os.urandom(3 << 20) + b"tail")
    how = cache.copy_file(src, tmp_path / "d")
    assert how in ("reflink", "copy_file_range", "copy")
    assert (tmp_path / "d").read_bytes() == src.read_bytes() and os.stat(tmp_path / "d").st_nlink == 1


_READER = r"""
import json, sys, numpy as np
import puffer_cli
from puffer_cli.store.filecache import Cache
root, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
st = puffer_cli.connect("memory://shared-cache-test").store
want = {}
for i in range(n):
    data = np.full(16384, i, dtype="<i4").tobytes()
    st.write(f"ns/index/00000000000000000001/f{i}", data)
    want[i] = data
c = Cache(root, max_bytes=10**12)
ok = bad = 0
maps = []
for r in range(rounds):
    for i in range(n):
        with c.open(st, f"ns/index/00000000000000000001/f{i}") as f:
            data = f.read()
        ok += data == want[i]
        bad += data != want[i]
        if r % 10 == 0 and i % 5 == 0:
            with c.open(st, f"ns/index/00000000000000000001/f{i}") as f:   # map the open file: no race
                maps.append((i, np.memmap(f, dtype="<i4", mode="r")))
bad += sum(int(m.size != 16384 or m.min() != i or m.max() != i) for i, m in maps)
print(json.dumps({"ok": ok, "bad": bad, "misses": c.stats.misses}))
"""


@pytest.mark.slow
def test_concurrent_readers_during_eviction_get_correct_bytes(tmp_path):
    """Two processes read (and map) files of a shared cache while a third evicts
    everything it can as fast as it can (no grace period): each read through
    ``Cache.open`` returns the right bytes (an evicted file is fetched again), mapped
    files stay intact after their unlink."""
    root = tmp_path / "shared"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _READER, str(root), "10", "40"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    ev = Cache(root, max_bytes=0)
    ev.grace_s = 0
    evicted = 0
    t0 = time.monotonic()
    while any(p.poll() is None for p in procs) and time.monotonic() - t0 < 120:
        evicted += ev.evict(target=0).evicted_files
        time.sleep(0.002)
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        rep = json.loads(out)
        assert rep["bad"] == 0 and rep["ok"] == 10 * 40
    assert evicted > 0


def test_unwritable_cache_dir_degrades_with_one_warning(mem_db, tmp_path, caplog):
    st_ = mem_db.store
    st_.write(K + "x", b"x" * 10)
    st_.write(K + "y", b"y" * 10)
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    c = Cache(blocker / "cache")  # cannot be created: a file is in the way
    with caplog.at_level(logging.WARNING, logger="puffer.cache"):
        assert c.file(st_, K + "x").read_bytes() == b"x" * 10
        assert c.file(st_, K + "y").read_bytes() == b"y" * 10
        c.directory(st_, [K + "x", K + "y"], K)
    warnings = [r for r in caplog.records if "not writable" in r.getMessage()]
    assert len(warnings) == 1 and str(blocker / "cache") in warnings[0].getMessage()
    assert not c.persistent and c.degraded and not str(c.root).startswith(str(blocker))


def test_unwritable_temp_dir_too_is_a_store_error(mem_db, tmp_path, monkeypatch):
    import tempfile

    st_ = mem_db.store
    st_.write(K + "x", b"x")
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    c = Cache(blocker / "cache")
    monkeypatch.setattr(tempfile, "tempdir", str(blocker))  # as TMPDIR=<a file> would
    with pytest.raises(StoreError) as e:
        c.file(st_, K + "x")
    assert "temporary directory" in e.value.message


@pytest.mark.slow
def test_cli_with_unwritable_cache_dir_answers(tmp_path, s3_server):
    """`puffer warm` (a process of its own) of an S3 namespace (a local store is read in place,
    with no cache) with a cache dir that cannot be created: it works, with one warning line
    on stderr and no traceback."""
    store = "s3://puffer-test/unwritable-cache"
    s3 = ["--store", store, "--s3-endpoint", s3_server]
    db = puffer_cli.connect(store, s3_endpoint=s3_server)
    db.open_namespace("q").write({"upsert_rows": make_rows(np.random.default_rng(32), 0, 20), "schema": SCHEMA})
    try:
        assert cli.main(["index", "q", *s3, "--cache-dir", str(tmp_path / "ok")]) == 0
    finally:
        cache.configure("", max_bytes=None)
    blocker = tmp_path / "f"
    blocker.write_bytes(b"")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run(
        [sys.executable, "-m", "puffer_cli.cli.main", "warm", "q", *s3, "--cache-dir", str(blocker / "c"), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("not writable") == 1 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    rep = json.loads(r.stdout)
    assert rep["generation"] == 1 and rep["cache_dir"] == ""


def test_cache_max_gb_is_read_at_the_boundary(monkeypatch, tmp_path):
    c = cache.configure(str(tmp_path / "b"))
    try:
        monkeypatch.setenv("PUFFER_CACHE_MAX_GB", "0.5")
        puffer_cli.connect("memory://cmx")
        assert c.max_bytes == 500_000_000 and cache.configure(str(tmp_path / "b2")).max_bytes == 500_000_000
        # connect(cache_max_gb=) bounds that DB's cache only: the process-wide one and other DBs keep theirs
        db2 = puffer_cli.connect("memory://cmx", cache_max_gb=2)
        assert db2.cache is not None and db2.cache.max_bytes == 2_000_000_000
        assert db2.cache.root == cache.get_cache().root and cache.get_cache().max_bytes == 500_000_000
        assert puffer_cli.connect("memory://cmx").cache is None
        assert db2.open_namespace("n").cache is db2.cache
        for bad in ("-1", "abc", "nan", "inf"):
            monkeypatch.setenv("PUFFER_CACHE_MAX_GB", bad)
            with pytest.raises(InvalidRequest):
                puffer_cli.connect("memory://cmx")
        monkeypatch.delenv("PUFFER_CACHE_MAX_GB")
        assert cli.main(["warm", "x", "--store", "memory://cmx", "--cache-max-gb", "-1"]) != 0
    finally:
        cache.configure("", max_bytes=None)


def test_default_bound_is_a_fraction_of_the_disk(tmp_path):
    sv = os.statvfs(tmp_path)
    want = int(min(limits.CACHE_MAX_BYTES_CAP, limits.CACHE_DISK_FRACTION * sv.f_blocks * sv.f_frsize))
    assert cache.default_max_bytes(tmp_path / "not" / "yet") == want == Cache(tmp_path / "c").max_bytes
    assert Path(tmp_path).exists()


@pytest.mark.parametrize("level", ["eventual", "strong"])
def test_cold_small_lists_come_with_the_manifest(s3_server, tmp_path, monkeypatch, level):
    """A lists file small enough to be read whole, of a segment whose vectors are not, is
    named in the index pointer's prefetch, so a cold ANN query fetches it with the manifest
    and the route (and, strong, the WAL listing): meta.json, then that batch, then the
    re-rank rows and ids; three round trips, where a separate lists read made four."""
    monkeypatch.setattr(ranged, "WHOLE_FILE_MAX", 4096)  # lists 300 x 12 B read whole; vectors 300 x 32 B not
    rng = np.random.default_rng(8)
    rows = [{"id": i, "vector": rng.normal(size=8).round(3).tolist()} for i in range(300)]
    db, ns, meta = _indexed_on_s3(s3_server, tmp_path, f"cold-prefetch-{level}", rows)
    seg = builder.load_manifest(db.store, meta["index"]["manifest"])["segments"][0]
    lists_key = seg["ann"]["vector"]["lists"]["key"]
    assert lists_key in meta["index"]["prefetch"] and seg["ann"]["vector"]["route"] in meta["index"]["prefetch"]
    body = {"rank_by": ["vector", "ANN", rng.normal(size=8).tolist()], "top_k": 5, "consistency": {"level": level}}
    want = engine.run_query(ns, body)["rows"]
    c = _cold(tmp_path, "cold")
    got = engine.run_query(ns, body)
    assert got["rows"] == want and got["performance"]["cache_temperature"] == "cold"
    assert got["performance"]["object_store_round_trips"] == 3
    assert c.has(db.store, lists_key)
    cache.configure("")


def test_cold_small_segment_reads_lists_not_its_vector_file(s3_server, tmp_path, monkeypatch):
    """A segment small enough for exact search, whose vector file is not at hand (remote,
    not cached, over WHOLE_FILE_MAX), is searched through its IVF lists cold, and a filter
    keeping a few rows reads just those rows: neither fetches the vector file whole, and
    both answer as the warm query does."""
    monkeypatch.setattr(ranged, "WHOLE_FILE_MAX", 0)
    rng = np.random.default_rng(5)
    rows = [{"id": i, "vector": rng.normal(size=16).round(3).tolist(), "g": i % 80} for i in range(400)]
    db, ns, meta = _indexed_on_s3(s3_server, tmp_path, "cold-small", rows, distance_metric="euclidean_squared")
    vec_key = builder.load_manifest(db.store, meta["index"]["manifest"])["segments"][0]["vectors"]["vector"]["key"]
    q = rng.normal(size=16).tolist()
    bodies = [
        {"rank_by": ["vector", "ANN", q], "top_k": 5, "consistency": {"level": "eventual"}},
        {"rank_by": ["vector", "ANN", q], "top_k": 3, "filters": ["g", "Eq", 7], "consistency": {"level": "eventual"}},
    ]
    want = [engine.run_query(ns, b)["rows"] for b in bodies]
    for body, rows_want in zip(bodies, want):
        c = _cold(tmp_path, f"cold-{len(body)}")
        got = engine.run_query(ns, body)
        assert [r["id"] for r in got["rows"]] == [r["id"] for r in rows_want]
        assert not c.has(db.store, vec_key) and c.stats.ranged_reads >= 1
    cache.configure("")
