"""The list-major stack of a namespace's shared-routing lists (puffer_cli/index/stack.py):
written in bounded steps, read back, and searched: the same members and approximate distances as
every covered segment searched on its own over the book's chosen lists."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from puffer_cli.index import ivf, stack

from .test_ivf import clustered

DIMS = 12


def _segments(tmp_path, metric, sizes=(700, 0, 1300, 500), bits=8, seed=21, ordered=False):
    """A book trained on all rows and segments of ``sizes`` rows following it (one empty):
    (book, [(route, lists)] in order, the rows' vectors).  ``ordered``: each segment's rows
    put in list order first, as `puffer index` writes them (its route's positions implicit)."""
    rng = np.random.default_rng(seed)
    x = clustered(rng, n=sum(sizes), dims=DIMS)
    book = ivf.train_book(x, len(x), 16, metric)
    assert book is not None
    parts, base = [], 0
    for i, n in enumerate(sizes):
        xs = x[base : base + n]
        fit = book.fit(xs)
        if ordered:
            perm = fit.row_order()
            xs, fit = xs[perm], fit.permuted(perm)
            x[base : base + n] = xs
        rb, lb, _info = ivf.encode(fit, xs, book_id=book.id, bits=bits)
        path = tmp_path / f"seg{seed}-{i}.lists"
        path.write_bytes(lb)
        route = ivf.Route(rb, DIMS, metric)
        parts.append((route, ivf.Lists(route, local=str(path))))
        base += n
    return book, parts, x


def _stack(tmp_path, parts, **kw) -> stack.Stack:
    out = io.BytesIO()
    route_file = stack.write(parts, out, **kw)
    path = tmp_path / "stack.lists"
    path.write_bytes(out.getvalue())
    return stack.Stack(route_file, str(path), parts[0][0])


def _per_segment(parts, q, chosen, want):
    """Every segment searched on its own over ``chosen``: (global rows, distances), best first."""
    rows, dist, base = [], [], 0
    for r, lists in parts:
        if r.rows:
            pos, d, _n = ivf.search(r, lists, q, r.rows, 0.0, sorted_chosen=chosen)
            rows.append(pos + base)
            dist.append(d)
        base += r.rows
    g, d = np.concatenate(rows), np.concatenate(dist)
    o = np.lexsort((g, d))[:want]
    return g[o], d[o]


@pytest.mark.parametrize("metric", ["cosine_distance", "euclidean_squared"])
def test_a_stack_scans_what_its_segments_scan(tmp_path, metric):
    book, parts, x = _segments(tmp_path, metric)
    st = _stack(tmp_path, parts)
    assert st.members == len(x) == int(st.bases[-1])
    sizes = np.sum([np.diff(r.offsets) for r, _l in parts], axis=0)
    rng = np.random.default_rng(2)
    for q in rng.normal(size=(6, DIMS)).astype(np.float32):
        chosen = np.sort(ivf.prefix(book.ranked(q, sizes, 600), 600))
        every, every_d = _per_segment(parts, q, chosen, len(x))
        g, d, scanned = st.search(q, chosen, len(x))
        assert scanned == len(every)  # the same members: those of the chosen lists in every segment
        assert sorted(g.tolist()) == sorted(every.tolist())
        assert np.allclose(np.sort(d), np.sort(every_d))
        top, top_d, _n = st.search(q, chosen, 20)
        assert np.allclose(top_d, every_d[:20]) and np.all(np.diff(top_d) >= 0)
        assert set(top.tolist()) <= set(every.tolist())


def test_a_stack_keeps_each_members_global_row_and_codes(tmp_path):
    """A record is the member's segment base + row, then the codes its segment's file holds."""
    _book, parts, _x = _segments(tmp_path, "cosine_distance")
    st = _stack(tmp_path, parts)
    s, row = st.segment_rows(st.rows)
    for i, (r, lists) in enumerate(parts):
        mine = np.flatnonzero(s == i)
        assert len(mine) == r.rows
        if not r.rows:
            continue
        assert lists._pos is not None and lists._codes is not None
        at = {int(p): k for k, p in enumerate(lists._pos)}
        k = np.array([at[int(p)] for p in row[mine]])
        assert np.array_equal(st.codes[mine], lists._codes[k])
        # within a list, a segment's members keep their own order
        lab = np.searchsorted(st.offsets, mine, side="right") - 1
        assert np.all(np.diff(lab) >= 0)


@pytest.mark.parametrize("metric", ["cosine_distance", "euclidean_squared"])
def test_a_filtered_probe_of_the_stack_scores_the_passing_members_of_its_lists(tmp_path, metric):
    """Stack.filtered_search knows which members pass from the segments' routes alone (rows in
    list order): asked for every passing member, it returns exactly the best passing members
    of the whole stack; asked for some, the lists it picks are the nearest holding a passing
    member (a prefix of the ranking, or ``choose`` when that prefix holds too few), and its
    results are the best passing members of those lists."""
    book, parts, x = _segments(tmp_path, metric, ordered=True)
    st = _stack(tmp_path, parts)
    routes = [r for r, _l in parts]
    sizes = np.sum([np.diff(r.offsets) for r in routes], axis=0)
    rng = np.random.default_rng(8)
    for trial in range(6):
        q = rng.normal(size=DIMS).astype(np.float32)
        rate = (0.02, 0.2, 0.6)[trial % 3]
        hits = [np.flatnonzero(rng.random(r.rows) < rate) for r in routes]
        passing = np.zeros(st.members, bool)
        passing[np.concatenate([h + st.bases[j] for j, h in enumerate(hits)])] = True
        every = np.arange(st.members)
        g_all, d_all = _per_segment(parts, q, np.arange(book.nlist), st.members)
        keep = passing[g_all]
        want_g, want_d = g_all[keep], d_all[keep]
        offs = [r.offsets for r in routes]

        def ranked(m, q=q):
            return ivf.prefix(book.ranked(q, sizes, m), m)

        def choose(matches, q=q):
            return routes[0].matching_lists(routes[0].prepare_query(q), matches, float("inf"))

        assert routes[0].attach(book)
        g, d, scanned = st.filtered_search(q, ranked, choose, offs, hits, float("inf"), len(every))
        assert sorted(g.tolist()) == sorted(want_g.tolist()) and np.allclose(d, np.sort(want_d))
        need = 40.0  # ivf.filtered_need's floor for 10 results at rerank 2: 4 x 20
        g, d, scanned = st.filtered_search(q, ranked, choose, offs, hits, need, 10)
        # the nearest lists holding a passing member until they hold ``need`` of them
        order = ranked(st.members)
        per = np.array([passing[st.rows[st.offsets[c] : st.offsets[c + 1]]].sum() for c in order])
        lists = order[: int(np.searchsorted(np.cumsum(per), need)) + 1]
        members = np.concatenate([np.arange(st.offsets[c], st.offsets[c + 1]) for c in lists])
        cand = st.rows[members].astype(np.int64)
        cand = set(cand[passing[cand]].tolist())
        best = [(dd, gg) for gg, dd in zip(want_g.tolist(), want_d.tolist()) if gg in cand][:10]
        assert len(g) == min(10, len(want_g)) and passing[g].all() and np.all(np.diff(d) >= 0)
        assert np.allclose(d, [dd for dd, _g in best]) and set(g.tolist()) <= cand
        size = {int(c): int(st.offsets[c + 1] - st.offsets[c]) for c in lists}  # (lists without a match
        held = sum(size[int(c)] for c, m in zip(lists, per) if m)  # may count: the ranking's prefix holds them)
        assert held <= scanned <= sum(size.values())


def test_writing_in_small_steps_gives_the_same_file(tmp_path, monkeypatch):
    _book, parts, _x = _segments(tmp_path, "cosine_distance")
    whole = io.BytesIO()
    route_file = stack.write(parts, whole)
    for step in (1, 7, 300):
        monkeypatch.setattr(stack, "CHUNK_MEMBERS", step)
        out = io.BytesIO()
        assert stack.write(parts, out) == route_file and out.getvalue() == whole.getvalue()


def test_hidden_rows_are_skipped_and_the_search_widens(tmp_path):
    book, parts, x = _segments(tmp_path, "cosine_distance")
    st = _stack(tmp_path, parts)
    sizes = np.sum([np.diff(r.offsets) for r, _l in parts], axis=0)
    q = np.random.default_rng(4).normal(size=DIMS).astype(np.float32)
    chosen = np.sort(ivf.prefix(book.ranked(q, sizes, 800), 800))
    best, _d, _n = st.search(q, chosen, 30)
    gone = set(best[:25].tolist())  # most of the best deleted: the search looks further
    g, d, _n = st.search(q, chosen, 10, visible=lambda rows: np.array([r not in gone for r in rows.tolist()]))
    assert len(g) == 10 and not gone & set(g.tolist())
    every, every_d = _per_segment(parts, q, chosen, len(x))
    keep = np.array([r not in gone for r in every.tolist()])
    assert np.allclose(d, every_d[keep][:10])


def test_int4_codes_stack_too(tmp_path):
    book, parts, x = _segments(tmp_path, "cosine_distance", bits=4)
    st = _stack(tmp_path, parts)
    sizes = np.sum([np.diff(r.offsets) for r, _l in parts], axis=0)
    q = np.random.default_rng(6).normal(size=DIMS).astype(np.float32)
    chosen = np.sort(ivf.prefix(book.ranked(q, sizes, 500), 500))
    every, every_d = _per_segment(parts, q, chosen, len(x))
    g, d, _n = st.search(q, chosen, len(x))
    assert sorted(g.tolist()) == sorted(every.tolist()) and np.allclose(np.sort(d), np.sort(every_d))


def test_a_stack_refuses_what_it_cannot_hold(tmp_path):
    _book, parts, _x = _segments(tmp_path, "cosine_distance")
    _other, theirs, _y = _segments(tmp_path, "cosine_distance", seed=22)
    with pytest.raises(ValueError, match="at least one segment"):
        stack.write([], io.BytesIO())
    with pytest.raises(ValueError, match="one book"):
        stack.write([parts[0], theirs[0]], io.BytesIO())
    out = io.BytesIO()
    route_file = stack.write(parts, out)
    path = tmp_path / "short.lists"
    path.write_bytes(out.getvalue()[:-1])
    with pytest.raises(ValueError, match="records"):
        stack.Stack(route_file, str(path), parts[0][0])
    with pytest.raises(ValueError, match="does not follow"):
        stack.Stack(route_file, str(tmp_path / "stack.lists"), theirs[0][0])


# ---------------------------------------------------------------- in a namespace
@pytest.fixture
def stacked(monkeypatch):
    """Shared routing, segments of 1,000 rows (those of 500 or more in the stack), every ANN
    query through the IVF with a probe that takes a part of the namespace."""
    from puffer_cli.search import reader

    monkeypatch.setenv("PUFFER_IVF_ROUTING", "shared")
    monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "1000")
    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(reader, "EXACT_MAX_FRACTION", 0.0)
    monkeypatch.setitem(ivf.DEFAULTS, "probe_min_rows", 400)


def _answers(ns, qs, **kw):
    from puffer_cli.search import engine

    out = []
    for q in qs:
        body = {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 10, "consistency": {"level": "eventual"}, **kw}
        rows = engine.run_query(ns, body)["rows"]
        out.append([(r["id"], round(r["$dist"], 6)) for r in rows])
    return out


def _without_stack(monkeypatch, ns, qs):
    from puffer_cli.index import segment

    with monkeypatch.context() as m:
        m.setattr(segment.Generation, "stack", lambda self, f: None)
        return _answers(ns, qs)


def _manifest(ns):
    from puffer_cli.index import builder

    return builder.load_manifest(ns.store, ns.read_meta()[0]["index"]["manifest"])


def indexed_on_s3(s3_server, name: str, seed: int, n: int = 2500, k: int = 50):
    """(db, ns, vectors): ``n`` clustered 16-dim rows written to a fresh S3 prefix and indexed
    (under the caller's fixtures: ``stacked`` or test_pack's ``shared``)."""
    import uuid

    import puffer_cli
    from puffer_cli.index import builder

    db = puffer_cli.connect(f"s3://puffer-test/{uuid.uuid4().hex}", s3_endpoint=s3_server)
    x = clustered(np.random.default_rng(seed), n=n, dims=16, k=k)
    ns = db.open_namespace(name)
    ns.write({"upsert_columns": {"id": list(range(n)), "vector": x.tolist()}})
    builder.index_namespace(ns, gc_grace_s=0)
    return db, ns, x


@contextlib.contextmanager
def cache_restored():
    """Restores the process's file cache (and forgets open generations) after a test that
    configures cold caches of its own."""
    from puffer_cli.index import segment
    from puffer_cli.store import filecache

    old = filecache.get_cache()
    try:
        yield
    finally:
        filecache.configure(str(old.root) if old is not None and old.root else "")
        segment.GENS.clear()


def cold_cache(path, background: bool = False):
    """A fresh, empty file cache at ``path`` for this process (a cold process), open
    generations and manifests forgotten."""
    from puffer_cli.index import manifest, segment
    from puffer_cli.store import filecache

    c = filecache.configure(str(path))
    c.background_fetch = background
    segment.GENS.clear()
    manifest.MANIFESTS.clear()
    return c


def test_a_namespace_answers_the_same_with_its_stack(db, monkeypatch, stacked, tmp_path):
    """Three 1,000-row segments share one stack (named by the manifest, among its files); ANN
    answers equal those of the per-segment lists, with deletes and a WAL tail on top; an
    incremental run of a small segment keeps the stack, a query still equals the per-segment
    path; GC removes no file of the current generation."""
    from puffer_cli.index import builder

    rng = np.random.default_rng(31)
    x = clustered(rng, n=3000, dims=16, k=60)
    ns = db.open_namespace("stacked")
    ns.write({"upsert_columns": {"id": list(range(3000)), "vector": x.tolist()}})
    builder.index_namespace(ns, gc_grace_s=0)
    man = _manifest(ns)
    ent = man["ann_stacks"]["vector"]
    assert ent["segments"] == [s["name"] for s in man["segments"]] and ent["members"] == 3000
    assert ent["route"] in man["files"] and set(paged_files(ent["lists"])) <= set(man["files"])
    qs = x[rng.integers(0, 3000, 8)] + rng.normal(size=(8, 16)).astype(np.float32) * 0.3
    used = []
    real = stack.Stack.search
    monkeypatch.setattr(stack.Stack, "search", lambda self, *a, **kw: used.append(1) or real(self, *a, **kw))
    assert _answers(ns, qs) == _without_stack(monkeypatch, ns, qs)
    assert len(used) == len(qs)  # every query through the stack (and none without it)
    # deletes and an unindexed tail: the stack's rows are checked against both
    ns.write({"deletes": list(range(0, 3000, 7))})
    ns.write({"upsert_columns": {"id": list(range(1, 200, 3)), "vector": (x[1:200:3] * -1).tolist()}})
    assert _answers(ns, qs) == _without_stack(monkeypatch, ns, qs)
    builder.index_namespace(ns, gc_grace_s=0)
    ns.write({"upsert_columns": {"id": list(range(3000, 3100)), "vector": x[:100].tolist()}})
    builder.index_namespace(ns, gc_grace_s=0)
    man2 = _manifest(ns)
    small = [s for s in man2["segments"] if s["rows"] < 500]
    assert small and all(s["name"] not in man2["ann_stacks"]["vector"]["segments"] for s in small)
    used.clear()
    assert _answers(ns, qs) == _without_stack(monkeypatch, ns, qs)
    assert len(used) == len(qs)
    assert all(ns.store.exists(k) for k in man2["files"])
    if ns.store.is_remote:  # a cold process reads the stack by ranges; after `puffer warm`, memory-mapped
        from puffer_cli.index import manifest, segment
        from puffer_cli.index.warm import warm
        from puffer_cli.store import filecache

        old_cache = filecache.get_cache()
        try:
            c = filecache.configure(str(tmp_path / "cold-cache"))
            c.background_fetch = False
            segment.GENS.clear()
            manifest.MANIFESTS.clear()
            cold_ns = db.open_namespace("stacked")
            used.clear()
            assert _answers(cold_ns, qs[:2]) == _without_stack(monkeypatch, cold_ns, qs[:2]) and len(used) == 2
            lists = man2["ann_stacks"]["vector"]["lists"]
            assert not c.has(cold_ns.store, lists["key"])  # read by ranges, not fetched whole
            warm(cold_ns)
            segment.GENS.clear()
            used.clear()
            assert _answers(cold_ns, qs[:2]) == _without_stack(monkeypatch, cold_ns, qs[:2]) and len(used) == 2
            assert c.has(cold_ns.store, lists["key"])
        finally:
            filecache.configure(str(old_cache.root) if old_cache is not None and old_cache.root else "")
            segment.GENS.clear()
    with ivf.override(fill=0.5):  # fill scans each segment's lists between the chosen ones: not the stack
        used.clear()
        assert _answers(ns, qs[:2]) == _without_stack(monkeypatch, ns, qs[:2]) and not used


def test_a_filtered_query_probes_the_stack_warm(local_db, monkeypatch, stacked):
    """Warm, a filtered ANN query over stacked segments probes the stack once: the passing
    members of the lists nearest the query that hold one. Scanning every passing member, it
    equals the exact engine's answer, with deletes and a WAL tail on top; at the defaults it
    finds most of it; when few rows pass in every segment, each segment is searched exactly."""
    from puffer_cli.index import builder
    from puffer_cli.search import reader

    from .test_index import exact

    rng = np.random.default_rng(43)
    x = clustered(rng, n=3000, dims=16, k=60)
    u = rng.integers(0, 100, 3000)
    ns = local_db.open_namespace("fstack")
    ns.write({"upsert_columns": {"id": list(range(3000)), "vector": x.tolist(), "u": u.tolist()}})
    builder.index_namespace(ns, gc_grace_s=0)
    assert len(_manifest(ns)["ann_stacks"]["vector"]["segments"]) == 3
    calls = []
    real = stack.Stack.filtered_search
    monkeypatch.setattr(stack.Stack, "filtered_search", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    qs = x[rng.integers(0, 3000, 6)] + rng.normal(size=(6, 16)).astype(np.float32) * 0.3
    filters = (["u", "Lt", 30], ["Or", [["u", "Lt", 5], ["u", "Gte", 90]]])

    def want(filt):
        body = {"rank_by": ["vector", "ANN", None], "top_k": 10, "filters": filt}
        return [[r["id"] for r in exact(ns, {**body, "rank_by": ["vector", "ANN", q.tolist()]})["rows"]] for q in qs]

    def ids(filt):
        return [[i for i, _d in a] for a in _answers(ns, qs, filters=filt, consistency={"level": "strong"})]

    with monkeypatch.context() as m:  # every passing member of the namespace scanned
        m.setattr(ivf, "filtered_need", lambda base, frac, want: float("inf"))
        for filt in filters:
            assert ids(filt) == want(filt)
        assert len(calls) == len(qs) * len(filters)
        ns.write({"deletes": list(range(0, 3000, 5))})  # hidden rows and an unindexed tail
        ns.write({"upsert_columns": {"id": list(range(1, 300, 3)), "vector": x[1:300:3].tolist(), "u": [1] * 100}})
        for filt in filters:
            assert ids(filt) == want(filt)
    calls.clear()
    hits = sum(len(set(a) & set(b)) for filt in filters for a, b in zip(ids(filt), want(filt)))
    assert hits >= 0.8 * 10 * len(qs) * len(filters) and len(calls) == len(qs) * len(filters)
    calls.clear()
    monkeypatch.setattr(reader, "EXACT_MAX_ROWS", 100)  # u == 7: ~30 rows, ~10 a segment: exact, no stack
    assert ids(["u", "Eq", 7]) == want(["u", "Eq", 7]) and not calls


def test_a_stack_disagreeing_with_its_segments_is_reported(local_db, monkeypatch, stacked):
    """A stack whose records' global rows do not match the segments' routes (same size, other
    bytes): a filtered query reports the damage with the repair hint, not wrong rows."""
    from puffer_cli.errors import CorruptIndex
    from puffer_cli.index import builder, segment

    rng = np.random.default_rng(44)
    x = clustered(rng, n=2500, dims=16, k=50)
    ns = local_db.open_namespace("fbad")
    ns.write({"upsert_columns": {"id": list(range(2500)), "vector": x.tolist(), "u": (np.arange(2500) % 4).tolist()}})
    builder.index_namespace(ns, gc_grace_s=0)
    ent = _manifest(ns)["ann_stacks"]["vector"]
    path = ns.store.local_path(ent["lists"]["key"])
    rec = 4 + 16
    raw = np.fromfile(path, np.uint8).reshape(-1, rec)
    rows = raw[:, :4].copy().view("<u4")
    raw[:, :4] = ((rows + 1) % 2500).astype("<u4").view(np.uint8).reshape(-1, 4)  # every member's row shifted
    raw.tofile(path)
    segment.GENS.clear()
    body = {"rank_by": ["vector", "ANN", x[5].tolist()], "top_k": 10, "filters": ["u", "Lt", 2]}
    from puffer_cli.search import engine

    with pytest.raises(CorruptIndex, match="stack") as e:
        engine.run_query(ns, body)
    assert "--repair" in (e.value.hint or "")


def paged_files(entry):
    from puffer_cli.index import paged

    return paged.files(entry)


def test_reading_files_by_range_writes_the_same_stack(tmp_path):
    """stack.files_chunks (the builder's: positioned reads, no memory map) == stack.write."""
    _book, parts, _x = _segments(tmp_path, "cosine_distance")
    a = io.BytesIO()
    ra = stack.write(parts, a)
    paths = [str(tmp_path / f"seg21-{i}.lists") for i in range(len(parts))]
    routes = [r for r, _l in parts]
    route_file, size = stack.plan(routes)
    assert route_file == ra and size == len(a.getvalue())
    assert b"".join(stack.files_chunks(routes, paths)) == a.getvalue()


def test_a_damaged_stack_is_reported_and_the_next_run_writes_it_again(local_db, monkeypatch, stacked):
    """A truncated stack file: a query fails with the file named and the repair hint (not a
    wrong answer); `index --repair` finds it by its size and writes the stack again; a deleted
    one is found by any run (a generation with nothing else new)."""
    from puffer_cli.errors import CorruptIndex
    from puffer_cli.index import builder, manifest, segment

    rng = np.random.default_rng(41)
    x = clustered(rng, n=2500, dims=16, k=50)
    ns = local_db.open_namespace("dmg")
    ns.write({"upsert_columns": {"id": list(range(2500)), "vector": x.tolist()}})
    builder.index_namespace(ns, gc_grace_s=0)
    qs = x[:3] + 0.01
    want = _answers(ns, qs)
    ent = _manifest(ns)["ann_stacks"]["vector"]
    key = ent["lists"]["key"]
    data = ns.store.read(key)
    ns.store.write(key, data[:-7])
    segment.GENS.clear()
    manifest.MANIFESTS.clear()
    ns.cache.clear() if hasattr(ns.cache, "clear") else None
    with pytest.raises(CorruptIndex, match="stack") as e:
        _answers(ns, qs)
    assert "--repair" in (e.value.hint or "")
    rep = builder.index_namespace(ns, gc_grace_s=0, repair=True)
    assert ent["route"] in rep.repaired
    new = _manifest(ns)["ann_stacks"]["vector"]
    assert new["lists"]["key"] != key and len(ns.store.read(new["lists"]["key"])) == len(data)
    segment.GENS.clear()
    assert _answers(ns, qs) == want
    for k in [new["lists"]["key"], new["route"]]:
        ns.store.delete(k)
    rep = builder.index_namespace(ns, gc_grace_s=0)
    assert rep.status == "indexed" and "stack" in _manifest(ns)["ann_stacks"]["vector"]["route"]
    segment.GENS.clear()
    assert _answers(ns, qs) == want


def _requests(ranges, part_bytes):
    """Requests of reading byte ranges of a file stored in parts of ``part_bytes`` (None: whole):
    one per part each range touches (paged.read_ranges)."""
    pb = part_bytes
    return sum((y - 1) // pb - x // pb + 1 if pb else 1 for x, y in ranges if y > x)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("cap,part_bytes", [(3, None), (96, None), (8, 2000), (5, 700)])
def test_a_stack_read_by_ranges_answers_as_memory_mapped(tmp_path, monkeypatch, bits, cap, part_bytes):
    """A cold reader's stack (``fetch``: byte ranges of the lists file) scores the same members
    as the memory-mapped one, whatever the cap on its ranges (gaps read through, not scanned),
    in one batch of at most ``RUNS_MAX`` requests inside the file (a range counted once per
    part of the stored file it touches)."""
    monkeypatch.setattr(stack, "RUNS_MAX", cap)
    book, parts, x = _segments(tmp_path, "cosine_distance", bits=bits)
    st = _stack(tmp_path, parts)
    raw = (tmp_path / "stack.lists").read_bytes()
    calls: list[list[tuple[int, int]]] = []

    def fetch(ranges):
        calls.append(list(ranges))
        return [raw[a:b] for a, b in ranges]

    out = io.BytesIO()
    cold = stack.Stack(stack.write(parts, out), None, parts[0][0], fetch=fetch, part_bytes=part_bytes)
    assert not cold.local and st.local
    sizes = np.sum([np.diff(r.offsets) for r, _l in parts], axis=0)
    rng = np.random.default_rng(5)
    for q in rng.normal(size=(6, DIMS)).astype(np.float32):
        for need in (50, 400, len(x)):
            chosen = np.sort(ivf.prefix(book.ranked(q, sizes, need), need))
            calls.clear()
            g, d, n = cold.search(q, chosen, 25)
            g2, d2, n2 = st.search(q, chosen, 25)
            assert n == n2 and np.array_equal(g, g2) and np.allclose(d, d2)
            a, b = ivf.list_runs(cold.offsets, chosen)
            pb = part_bytes or len(raw) + 1  # stored whole: one part
            touched = {
                i
                for x, y in zip(a.tolist(), b.tolist())
                for i in range(x * st.record // pb, (y * st.record - 1) // pb + 1)
            }
            assert len(calls) == 1 and len(calls[0]) >= 1
            assert len(calls[0]) == _requests(calls[0], part_bytes) <= max(cap, len(touched))
            if part_bytes:  # the count: each range cut at the parts' boundaries, a piece a request
                pieces = 0
                for a, b in calls[0]:
                    while a < b:
                        a = min(b, (a // part_bytes + 1) * part_bytes)
                        pieces += 1
                assert _requests(calls[0], part_bytes) == pieces
            # each range starts at a record, or at a part's first byte (a run cut there)
            assert all(0 <= a < b <= len(raw) and (a % st.record == 0 or a % pb == 0) for a, b in calls[0])
            hidden = set(g2[:10].tolist())

            def keep(rows, hidden=hidden):
                return np.array([r not in hidden for r in rows.tolist()])

            assert np.array_equal(cold.search(q, chosen, 10, keep)[0], st.search(q, chosen, 10, keep)[0])


def test_a_cold_reader_meeting_a_missing_stack_part_reports_it(s3_server, monkeypatch, stacked, tmp_path):
    """On S3, a stack stored in parts and read by ranges: a part gone is reported as the
    stack's damage with the repair hint (not a wrong answer, not a transport error), and
    `index --repair` writes it again."""
    import uuid

    from puffer_cli.errors import CorruptIndex
    from puffer_cli.index import builder

    monkeypatch.setattr(stack, "PART_BYTES", 4096)
    db, ns, x = indexed_on_s3(s3_server, "cold-dmg", 43)
    ent = _manifest(ns)["ann_stacks"]["vector"]
    assert len(ent["lists"]["parts"]) > 3
    qs = x[:3] + 0.01

    def cold():
        cold_cache(tmp_path / f"cache-{uuid.uuid4().hex}")
        return _answers(db.open_namespace("cold-dmg"), qs)

    with cache_restored():
        want = cold()
        for k in ent["lists"]["parts"]:
            ns.store.delete(k)
        with pytest.raises(CorruptIndex, match="stack") as e:
            cold()
        assert "--repair" in (e.value.hint or "")
        rep = builder.index_namespace(ns, gc_grace_s=0, repair=True)
        assert ent["route"] in rep.repaired
        assert cold() == want


def test_a_stack_whose_parts_the_cache_fetched_is_memory_mapped(s3_server, monkeypatch, stacked, tmp_path):
    """On S3 a cold query reads the stack by ranges and the cache fetches the parts it touched
    in the background; once every part is cached, the next query maps one file joined from them
    (not ~100 ranges copied out of cached parts per query), with the same answers."""
    import time

    from puffer_cli.index import paged

    monkeypatch.setattr(stack, "PART_BYTES", 8192)
    db, ns, x = indexed_on_s3(s3_server, "parts", 47)
    ent = _manifest(ns)["ann_stacks"]["vector"]["lists"]
    assert len(ent["parts"]) > 2
    qs = x[:2] + 0.01
    with cache_restored():
        c = cold_cache(tmp_path / "cache", background=True)
        cold_ns = db.open_namespace("parts")
        mapped = []
        real = stack.Stack.search
        monkeypatch.setattr(
            stack.Stack, "search", lambda self, *a, **kw: mapped.append(self.local) or real(self, *a, **kw)
        )
        want = _answers(cold_ns, qs)
        assert mapped and not any(mapped)  # cold: by ranges
        for k in ent["parts"]:  # the parts no query touched: fetched as a later query would
            c.note_ranged(cold_ns.store, k, 0)
        end = time.monotonic() + 30
        while not paged.at_hand(c, cold_ns.store, ent) and time.monotonic() < end:
            time.sleep(0.05)
        assert paged.at_hand(c, cold_ns.store, ent) and not c.has(cold_ns.store, ent["key"])
        mapped.clear()
        assert _answers(cold_ns, qs) == want and mapped and all(mapped)
        assert c.has(cold_ns.store, ent["key"])  # joined from the cached parts
