"""The query side of the full-text blocks (issue 25): window-bounded top-k pruning keeps the
exact top k of exhaustive BM25 on larger skewed corpora (many windows, repeated query terms,
filters, statistics that change between queries); the df table in blocks (``df-1``) round-trips
and is read by block; the process cache of decoded terms is bounded by bytes; several segments
pruned in one pass (``prune_many``) keep the exact top k of their union, ties across segments
included, also over many rounds of windows; terms decoded in batches equal their postings, and
a damaged term is reported through its segment; the terms' window bounds are cached per
namespace and forgotten with it; segments' candidates scored over their joined postings get
their own scores, bit for bit."""

from __future__ import annotations

from unittest.mock import patch

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from puffer_cli import caches
from puffer_cli.index import dfblocks, fts, fts_topk
from puffer_cli.text import analyzer as T
from puffer_cli.text import bm25 as B

OPTS = T.normalize_fts_options(True)
WORDS = [f"w{i}" for i in range(60)]


def _corpus(seed: int, n: int, skew: float) -> list[str | None]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(WORDS) + 1) ** skew
    p /= p.sum()
    out: list[str | None] = []
    for _ in range(n):
        ln = int(rng.integers(0, 25))
        out.append(None if ln == 0 and rng.random() < 0.3 else " ".join(rng.choice(WORDS, size=ln, p=p)))
    return out


def _top(rows: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    return rows[np.lexsort((rows, -scores))][:k]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 4000),
    skew=st.sampled_from([0.0, 1.0, 1.6]),
    qw=st.lists(st.integers(0, 59), min_size=1, max_size=8),
    k=st.integers(1, 60),
    filt=st.integers(0, 40),
    avg_shift=st.sampled_from([1.0, 0.7]),
    first=st.sampled_from([64, 1]),
    docs_scale=st.sampled_from([1.0, 1.0, 0.25]),
)
def test_window_pruning_keeps_the_exact_top_k(seed, n, skew, qw, k, filt, avg_shift, first, docs_scale):
    with patch.object(fts_topk, "FIRST_WINDOWS", first):  # 1: many rounds of windows on a small corpus
        _window_pruning_exact(seed, n, skew, qw, k, filt, avg_shift, docs_scale)


def _window_pruning_exact(seed, n, skew, qw, k, filt, avg_shift, docs_scale=1.0, opts=OPTS):
    """``docs_scale`` < 1: statistics counting fewer documents than a common term's df (its
    idf <= 0: no window bound, every window scored)."""
    vals = _corpus(seed, n, skew)
    data, ent, _all, _new = fts.build_blocks(vals, OPTS)
    bi = fts.BlockIndex(ent, lambda rs: [data[a:b] for a, b in rs])
    p = B._build_postings(pl.Series(vals, dtype=pl.String), OPTS)
    base = p.stats()
    toks = [WORDS[i] for i in qw]
    sel = np.ones(n, bool) if filt == 0 else (np.arange(n) % (filt + 1) == seed % (filt + 1))
    k1, b = float(opts["k1"]), float(opts["b"])
    # twice: the second query over the same decoded terms with other statistics (a WAL tail)
    for shift in (1.0, avg_shift):
        stats = B.FieldStats(max(1, int(base.n_docs * docs_scale)), int(base.total_tokens * shift), base.df)
        if stats.avg_len <= 0:
            return
        s_all, m_all = B.score(p, toks, opts, stats=stats)
        m_all &= sel
        posts = bi.postings(toks)
        w: dict = {}
        for t in toks:
            w[t] = w.get(t, 0.0) + 1.0
        idf = {t: float(np.log1p((stats.n_docs - stats.doc_freq(t) + 0.5) / (stats.doc_freq(t) + 0.5))) for t in posts}
        rows = fts.prune(posts, w, idf, bi.lengths(), sel, k, k1, b, stats.avg_len)
        assert np.all(sel[rows]) and np.all(np.diff(rows) > 0) and rows.dtype == np.int64
        assert np.all(m_all[rows])  # only matching rows
        want = np.flatnonzero(m_all)
        want = _top(want, s_all[want], k)
        got = _top(rows, s_all[rows], k)
        assert np.array_equal(want, got), (want, got)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 4000),
    skew=st.sampled_from([0.0, 1.0, 1.6]),
    qw=st.lists(st.integers(0, 59), min_size=1, max_size=8),
    k=st.integers(1, 40),
    filt=st.integers(0, 20),
    cuts=st.lists(st.floats(0, 1), max_size=4),
    first=st.sampled_from([64, 1]),
)
def test_segments_pruned_in_one_pass_keep_the_exact_top_k(seed, n, skew, qw, k, filt, cuts, first):
    with patch.object(fts_topk, "FIRST_WINDOWS", first):
        _segments_pruned_exact(seed, n, skew, qw, k, filt, cuts)


@pytest.mark.parametrize("k1", [0.0, 1e250])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_window_pruning_keeps_the_exact_top_k_at_extreme_k1(k1, seed):
    """k1 = 0 (tf ignored) and a k1 past 1e200 (where a base score could overflow, so every
    window is scored): the pruning still returns exhaustive BM25's top k."""
    opts = {**OPTS, "k1": k1}
    _window_pruning_exact(seed, 3000, 1.0, [0, 1, 7, 30], 10, 0, 1.0, 1.0, opts)


def _segments_pruned_exact(seed, n, skew, qw, k, filt, cuts):
    vals = _corpus(seed, n, skew)
    if seed % 3 == 0:  # copies: ties across segments
        vals = (vals[: n // 3 + 1] * 3)[:n]
    edges = sorted({0, n, *(int(c * n) for c in cuts)})
    sel = np.ones(n, bool) if filt == 0 else (np.arange(n) % (filt + 1) == seed % (filt + 1))
    toks = [WORDS[i] for i in qw]
    p = B._build_postings(pl.Series(vals, dtype=pl.String), OPTS)
    stats = p.stats()
    if stats.avg_len <= 0:
        return
    s_all, m_all = B.score(p, toks, OPTS, stats=stats)
    m_all &= sel
    want = np.flatnonzero(m_all)
    want = _top(want, s_all[want], k)
    w: dict = {}
    for t in toks:
        w[t] = w.get(t, 0.0) + 1.0
    k1, b = float(OPTS["k1"]), float(OPTS["b"])
    parts = []
    for a, z in zip(edges[:-1], edges[1:]):
        data, ent, _all, _new = fts.build_blocks(vals[a:z], OPTS)
        bi = fts.BlockIndex(ent, lambda rs, data=data: [data[x:y] for x, y in rs])
        posts = bi.postings(toks)
        idf = {t: float(np.log1p((stats.n_docs - stats.doc_freq(t) + 0.5) / (stats.doc_freq(t) + 0.5))) for t in posts}
        parts.append(fts.PrunePart(posts, bi.lengths(), None if filt == 0 else sel[a:z], w, idf, k1, b, stats.avg_len))
    got_parts = fts.prune_many(parts, k)
    assert len(got_parts) == len(parts)
    for (a, z), rows in zip(zip(edges[:-1], edges[1:]), got_parts):
        assert np.all(sel[a:z][rows]) and np.all(np.diff(rows) > 0) and np.all(rows < z - a)
    got = np.concatenate([a + r for a, r in zip(edges[:-1], got_parts)])
    got = got[m_all[got]]
    assert np.array_equal(want, _top(got, s_all[got], k)), (want, got)


def test_decode_matches_the_blocks_written():
    rng = np.random.default_rng(3)
    vals = [" ".join(rng.choice(WORDS[:5], size=int(rng.integers(1, 400)))) for _ in range(3000)]
    data, ent, _all, _new = fts.build_blocks(vals, OPTS)
    bi = fts.BlockIndex(ent, lambda rs: [data[a:b] for a, b in rs])
    p = B._build_postings(pl.Series(vals, dtype=pl.String), OPTS)
    got = bi.postings(p.terms)
    for t in p.terms:
        i = p.vocab[t]
        assert np.array_equal(got[t].rows, p.rows[p.indptr[i] : p.indptr[i + 1]])
        assert np.array_equal(got[t].tf, p.tf[p.indptr[i] : p.indptr[i + 1]])  # tf up to hundreds


def _blobs(vals):
    """Every term's encoded postings of a block index of ``vals``: (term, (bytes, blocks, df))."""
    data, ent, _all, _new = fts.build_blocks(vals, OPTS)
    bi = fts.BlockIndex(ent, lambda rs: [data[a:b] for a, b in rs])
    p = B._build_postings(pl.Series(vals, dtype=pl.String), OPTS)
    ents = bi.entries(p.terms)
    return p, [(t, (data[ents[t][1] : ents[t][1] + ents[t][2]], ents[t][3], ents[t][0])) for t in p.terms]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3000), batch=st.sampled_from([1, 300, 1 << 17]))
def test_terms_decoded_in_batches_equal_their_postings(seed, n, batch):
    p, blobs = _blobs(_corpus(seed, n, 1.0))
    with patch.object(fts_topk, "BATCH_POSTINGS", batch):  # 1: a batch a term; 300: a few terms each
        got = fts_topk.decode_many([b for _t, b in blobs] + [(b"", 0, 0)])
    assert len(got) == len(blobs) + 1 and len(got[-1][0]) == 0
    for (t, _b), (rows, tf) in zip(blobs, got):
        i = p.vocab[t]
        assert rows.dtype == np.int32 and tf.dtype == np.float32
        assert np.array_equal(rows, p.rows[p.indptr[i] : p.indptr[i + 1]])
        assert np.array_equal(tf, p.tf[p.indptr[i] : p.indptr[i + 1]])
        assert rows.base is None  # its own memory: a cached term does not hold a batch's


def test_a_damaged_term_is_named_through_its_segment_and_spares_the_others():
    vals = [" ".join(["w1"] * (i % 5 + 1) + ["w2"] * (i % 3)) for i in range(1000)]
    _p, blobs = _blobs(vals)
    (_t1, (d1, nb1, df1)), (_t2, good) = blobs[0], blobs[1]
    assert nb1 > 1
    reported = []

    def damage(e, missing):
        reported.append((e, missing))
        return RuntimeError(f"segment damaged: {e}")

    bad_width = bytearray(d1)
    bad_width[16 * nb1] = 40  # the first block's doc-delta bit width
    for broken in (d1[:-1], bytes(bad_width), d1 + b"x"):
        tbs = [fts.TermBlocks(*good, damage), fts.TermBlocks(broken, nb1, df1, damage)]
        reported.clear()
        with pytest.raises(RuntimeError, match="segment damaged"):
            fts.decode_terms(tbs)
        assert len(reported) == 1 and reported[0][1] is False
        assert len(tbs[0].rows) == good[2]  # the intact term still decodes (on its own)


terms_st = st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=3000)


@settings(max_examples=40, deadline=None)
@given(terms_st, st.integers(0, 2**32 - 1))
def test_df_blocks_round_trip_and_read_by_block(terms, seed):
    terms = sorted(terms)
    rng = np.random.default_rng(seed % 1000)
    df = rng.integers(1, 2**32 - 1, len(terms))
    data, first, off = dfblocks.encode(terms, df)
    assert len(first) == (len(terms) + dfblocks.DF_TERMS - 1) // dfblocks.DF_TERMS and off[-1] == len(data)
    reads: list[list[tuple[int, int]]] = []

    def read(ranges):
        reads.append(ranges)
        return [data[a:b] for a, b in ranges]

    m = dfblocks.RangedDf({"first": first, "off": off}, read)
    ask = terms[::7][:20]
    m.prefetch(ask + ["\x00", "zzz-not-there"])
    assert len(reads) <= 1
    assert all(m.get(t) == int(d) for t, d in zip(terms[::7][:20], df[::7][:20]))
    assert len(reads) <= 1  # prefetched: no further read
    absent = [t for t in ("\x00", "\U0010ffff" * 3) if t not in terms]  # hypothesis may generate "\x00"
    assert all(m.get(t) == 0 for t in absent)
    assert dict(m.items()) == {t: int(d) for t, d in zip(terms, df)}
    assert len(m) == len(terms)


def test_decoded_terms_cache_is_bounded_by_bytes():
    c = caches.LRU("test.bytes", 1000, maxbytes=100, weigh=len)
    for i in range(10):
        c.put(i, b"x" * 30)
    assert c.nbytes <= 100 and len(c) == 3 and c.evictions == 7
    c.put(9, b"x" * 10)  # replacing a value re-weighs it
    assert c.nbytes == 70
    assert c.pop(9) is not None and c.nbytes == 60
    c.put("big", b"x" * 500)  # one value over the bound stays (the newest), the rest go
    assert list(c) == ["big"] and c.nbytes == 500
    c.clear()
    assert c.nbytes == 0
    assert fts.TERMS.maxbytes is not None


def _cold_process(tmp_path, name):
    """An empty file cache and no decoded index state: as a new process would be."""
    from puffer_cli.index import fts_hint

    from tests.test_docstore import _cold

    _cold(tmp_path, name)
    fts.TERMS.clear()
    fts_hint.STASH.clear()


def test_cold_bm25_reads_its_dictionary_with_the_manifest(s3_server, tmp_path):
    import puffer_cli
    from puffer_cli.index import builder
    from puffer_cli.search import engine
    from puffer_cli.store import filecache as cache

    from tests.test_index import exact, same

    db = puffer_cli.connect("s3://puffer-test/fts-hint", s3_endpoint=s3_server)
    ns = db.open_namespace("h")
    cache.configure(str(tmp_path / "build"))
    vals = _corpus(5, 3000, 1.0)
    ns.write(
        {
            "upsert_rows": [{"id": i, "text": v} for i, v in enumerate(vals)],
            "schema": {"text": {"type": "string", "full_text_search": True}},
        }
    )
    builder.index_namespace(ns, gc_grace_s=0)
    ptr = ns.read_meta()[0]["index"]
    assert set(ptr["fts"]["text"]) == {"sig", "df", "segs"}
    trips = {}
    for hinted in (True, False):
        if not hinted:  # the same generation without the hint (a pointer published before it)

            def strip(cur):
                cur["index"].pop("fts", None)
                return cur

            ns.update_meta(strip)
        for q in ("w1 w7 w30", "w0 w2"):
            b = {"rank_by": ["text", "BM25", q], "top_k": 10, "consistency": {"level": "eventual"}}
            want = exact(ns, b)
            _cold_process(tmp_path, f"cold-{hinted}-{q}")
            got = engine.run_query(db.open_namespace("h"), b)
            assert same(got, want)
            trips[(hinted, q)] = got["performance"]["object_store_round_trips"]
    assert all(trips[(True, q)] <= 4 for q in ("w1 w7 w30", "w0 w2")), trips
    assert all(trips[(True, q)] < trips[(False, q)] for q in ("w1 w7 w30", "w0 w2")), trips


def test_window_bounds_are_kept_per_namespace_and_forgotten_with_it(mem_db):
    from puffer_cli.index import builder
    from puffer_cli.search import engine

    ns = mem_db.open_namespace("sc")
    rows = [{"id": i, "text": f"w{i % 7} w{i % 3} fox"} for i in range(300)]
    ns.write({"schema": {"text": {"type": "string", "full_text_search": True}}, "upsert_rows": rows})
    builder.index_namespace(ns, gc_grace_s=0)
    body = {"rank_by": ["text", "BM25", "w1 fox"], "top_k": 3, "consistency": {"level": "eventual"}}
    first = engine.run_query(ns, body)["rows"]
    scope = (mem_db.store.url, "sc")
    assert [k for k in fts_topk.SCORED if k[:2] == scope]  # the query terms' window bounds
    hits = fts_topk.SCORED.hits
    assert engine.run_query(ns, body)["rows"] == first and fts_topk.SCORED.hits > hits  # reused warm
    caches.forget(mem_db.store, "sc")
    assert not [k for k in fts_topk.SCORED if k[:2] == scope]


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 300),
    cuts=st.lists(st.floats(0, 1), max_size=4),
    qw=st.lists(st.integers(0, 59), min_size=1, max_size=6),
)
def test_joined_postings_score_each_row_as_its_part_does(seed, n, cuts, qw):
    """Segments' candidates are scored in one pass over their joined postings: under the same
    statistics every row gets its part's score and match, bit for bit."""
    vals = _corpus(seed, n, 1.0)
    edges = sorted({0, n, *(int(c * n) for c in cuts)})
    parts = [B._build_postings(pl.Series(vals[a:z], dtype=pl.String), OPTS) for a, z in zip(edges[:-1], edges[1:])]
    stats = B._build_postings(pl.Series(vals, dtype=pl.String), OPTS).stats()
    toks = [WORDS[i] for i in qw]
    one = [B.score(p, toks, OPTS, stats=stats) for p in parts]
    s, m = B.score(B.join(parts), toks, OPTS, stats=stats)
    assert np.array_equal(s, np.concatenate([x[0] for x in one]))
    assert np.array_equal(m, np.concatenate([x[1] for x in one]))
