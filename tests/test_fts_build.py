"""The streaming full-text build (issue 25): ``text.batch.TermIds`` gives exactly the
analyzer's tokens (polars path for ASCII rows, the reference for the others) for every
tokenizer and option set; ``ftsbuild.inverted`` gives the inverted lists, lengths and
statistics of ``tokenize_many`` whatever the chunking; the blk-1 file of ``build_blocks``
is the file the previous (one token list per row) build wrote."""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from puffer_cli.index import fts, ftsbuild
from puffer_cli.text import analyzer as T
from puffer_cli.text import batch

# words that exercise the filters: case, stop words, stems, long tokens, mid-word marks
VOCAB = [
    "The",
    "the",
    "THE",
    "a",
    "running",
    "Runs",
    "ran",
    "x" * 39,
    "y" * 40,
    "can't",
    "3.14",
    "1,000",
    "a.b",
    "foo_bar",
    "x:y",
    "über",
    "Straße",
    "naïve",
    "ΣΊΣΥΦΟΣ",
    "İstanbul",
    "日本語",
    "ひらがな",
    "カタカナ",
    "👍🏽",
    "🇫🇷",
    "e\u0301",
    "٣٤",
    "",
]
SEPS = [" ", "  ", ", ", ". ", "-", "\n", "\t", "!", "'", "_", "/"]

word_st = st.one_of(st.sampled_from(VOCAB), st.text(st.characters(codec="ascii"), max_size=12), st.text(max_size=6))
text_st = st.lists(st.tuples(word_st, st.sampled_from(SEPS)), max_size=12).map(lambda ws: "".join(a + b for a, b in ws))
value_st = st.one_of(st.none(), text_st, st.text(max_size=30))
opts_st = st.fixed_dictionaries(
    {
        "tokenizer": st.sampled_from([t for t in T.TOKENIZERS if t != "pre_tokenized_array"]),
        "language": st.sampled_from(["english", "german", "french", "russian", "arabic", "greek", "tamil"]),
        "stemming": st.booleans(),
        "remove_stopwords": st.booleans(),
        "case_sensitive": st.booleans(),
        "ascii_folding": st.booleans(),
        "max_token_length": st.sampled_from([3, 39, 255]),
    }
).map(T.normalize_fts_options)


def _tokens(ids: batch.TermIds, parts: list[list]) -> list[list[str]]:
    """Token lists of every row of ``parts`` (consecutive chunks) as TermIds numbers them."""
    out: list[list[str]] = []
    got = [ids.pairs(pl.Series(p, dtype=pl.String)) for p in parts]
    terms = ids.terms
    for p, (tid, row, lens) in zip(parts, got):
        rows: list[list[str]] = [[] for _ in p]
        for k in np.argsort(row, kind="stable"):
            rows[row[k]].append(terms[tid[k]])
        assert lens.tolist() == [len(r) for r in rows]
        out += rows
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(value_st, max_size=40), st.integers(0, 40), opts_st)
def test_term_ids_are_the_analyzer_tokens(vals, cut, opts):
    cut = min(cut, len(vals))
    ids = batch.TermIds(opts)
    assert _tokens(ids, [vals[:cut], vals[cut:]]) == T.tokenize_many(vals, opts)
    assert len(set(ids.terms)) == len(ids.terms)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(st.characters(codec="ascii", exclude_characters=" \t\n\r\x0b\x0c"), min_size=1), max_size=30))
def test_normalizer_words_in_one_call(words):
    for lang in T.LANGUAGES:
        opts = T.normalize_fts_options({"language": lang, "stemming": True})
        norm = T.normalizer(opts)
        want = [(norm.analyze(w) or [None])[0] for w in words]
        assert batch._normalize(pl.Series(words, dtype=pl.String), opts).to_list() == want


def test_lists_and_pre_tokenized_take_the_reference_path():
    vals = [["Foo bar", None, "BAZ"], None, [], ["x"]]
    for opts in (T.normalize_fts_options(True), T.normalize_fts_options({"tokenizer": "pre_tokenized_array"})):
        tid, row, lens = batch.TermIds(opts).pairs(vals)
        ref = T.tokenize_many(vals, opts)
        assert lens.tolist() == [len(t) for t in ref]


def _reference(vals, opts):
    toks = T.tokenize_many(vals, opts)
    post: dict[str, dict[int, int]] = {}
    for r, tl in enumerate(toks):
        for t, c in Counter(tl).items():
            post.setdefault(t, {})[r] = c
    return toks, post


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(value_st, max_size=60), opts_st, st.sampled_from([1, 40, 200, 1 << 20]), st.booleans(), st.data())
def test_inverted_lists_whatever_the_chunks(vals, opts, chunk, spill, data):
    new = np.array(data.draw(st.lists(st.booleans(), min_size=len(vals), max_size=len(vals))), bool)
    old = ftsbuild.CHUNK_BYTES, ftsbuild.SPILL_BYTES, fts.ENCODE_POSTINGS
    ftsbuild.CHUNK_BYTES = chunk
    ftsbuild.SPILL_BYTES = 0 if spill else old[1]  # runs through the temporary file
    fts.ENCODE_POSTINGS = 7  # many encoding groups
    try:
        inv = ftsbuild.inverted(pl.Series(vals, dtype=pl.String), opts)
        _, ent, st_all, st_new = fts.build_blocks(pl.Series(vals, dtype=pl.String), opts, new)
    finally:
        ftsbuild.CHUNK_BYTES, ftsbuild.SPILL_BYTES, fts.ENCODE_POSTINGS = old
    toks, post = _reference(vals, opts)
    assert inv.terms == sorted(post)
    assert inv.lens.tolist() == [len(t) for t in toks]
    for i, t in enumerate(inv.terms):
        a, b = inv.tptr[i], inv.tptr[i + 1]
        assert dict(zip(inv.docs[a:b].tolist(), inv.tfs[a:b].tolist())) == post[t]
        assert inv.docs[a:b].tolist() == sorted(post[t])
    assert st_all == fts.stats_of_tokens(toks)
    assert st_new == fts.stats_of_tokens([t for t, k in zip(toks, new) if k])
    assert ent["terms"] == len(post)


def _previous_build(vals, opts):
    """The inverted lists as the build before the streaming one made them (one token list
    per row, a dict of terms, one argsort)."""
    vocab: dict[str, int] = {}
    toks = T.tokenize_many(vals, opts)
    lens = np.array([len(t) for t in toks], np.int64)
    tid = np.array([vocab.setdefault(t, len(vocab)) for tl in toks for t in tl], np.int64)
    doc = np.repeat(np.arange(len(toks)), lens)
    uk, cnt = np.unique(tid * max(len(toks), 1) + doc, return_counts=True)
    first = list(vocab)
    order = sorted(range(len(first)), key=first.__getitem__)
    rank = np.empty(len(first), np.int64)
    rank[np.asarray(order, np.int64)] = np.arange(len(first))
    t = rank[uk // max(len(toks), 1)]
    o = np.argsort(t, kind="stable")
    tptr = np.zeros(len(first) + 1, np.int64)
    np.cumsum(np.bincount(t, minlength=len(first)), out=tptr[1:])
    return [first[i] for i in order], tptr, (uk % max(len(toks), 1))[o], cnt[o], lens


@pytest.mark.parametrize("opts", [{}, {"language": "english", "stemming": True, "remove_stopwords": False}])
def test_same_lists_as_the_previous_build(opts, monkeypatch):
    monkeypatch.setattr(ftsbuild, "CHUNK_BYTES", 5000)
    monkeypatch.setattr(ftsbuild, "SPILL_BYTES", 20000)
    rng = np.random.default_rng(5)
    words = np.array(VOCAB + [f"w{i}" for i in range(300)], dtype=object)
    vals = [" ".join(rng.choice(words, rng.integers(0, 30))) if i % 17 else None for i in range(3000)]
    opts = T.normalize_fts_options(opts)
    inv = ftsbuild.inverted(pl.Series(vals, dtype=pl.String), opts)
    terms, tptr, docs, tfs, lens = _previous_build(vals, opts)
    assert inv.terms == terms
    for a, b in ((inv.tptr, tptr), (inv.docs, docs), (inv.tfs, tfs), (inv.lens, lens)):
        assert np.array_equal(a, b)


def test_global_statistics_of_segments_cut_in_the_run_that_lose_rows_later(mem_db, monkeypatch):
    """A first index run (no statistics before it) cuts segments as it folds; rows of a cut
    segment updated or deleted later in the same run leave the namespace's BM25 statistics,
    which come from the build's own counts (no second pass over the text) less those rows."""
    from puffer_cli.index import builder
    from puffer_cli.search import engine

    from tests.test_index import exact, same, strip

    monkeypatch.setenv("PUFFER_INDEX_SEGMENT_ROWS", "20")
    monkeypatch.setattr(builder, "BATCH_ROWS", 10)
    rng = np.random.default_rng(5)
    words = ["fox", "dog", "quick", "lazy", "brown", "jumps", "over", "river"]

    def text() -> str:
        return " ".join(rng.choice(words, size=int(rng.integers(1, 9))))

    ns = mem_db.open_namespace("cut")
    schema = {"t": {"type": "string", "full_text_search": True}}
    live: dict[int, str] = {}
    for lo in range(0, 60, 10):
        rows = [{"id": i, "t": text()} for i in range(lo, lo + 10)]
        ns.write({"upsert_rows": rows, **({"schema": schema} if lo == 0 else {})})
        live.update((r["id"], r["t"]) for r in rows)
    upd = [{"id": i, "t": "river river " + text()} for i in (1, 3, 25)]
    ns.write({"upsert_rows": upd, "deletes": [2, 30]})
    live.update((r["id"], r["t"]) for r in upd)
    for i in (2, 30):
        live.pop(i)
    rep = builder.index_namespace(ns, gc_grace_s=0)
    assert rep.status == "indexed" and rep.segments >= 3
    man = builder.load_manifest(ns.store, ns.read_meta()[0]["index"]["manifest"])
    got = man["bm25"]["t"]
    want = fts.term_stats(list(live.values()), T.normalize_fts_options(True))
    assert (got["n_rows"], got["n_docs"], got["total_len"]) == (want["n_rows"], want["n_docs"], want["total_len"])
    assert any(s.get("tombstones") for s in man["segments"])  # a cut segment lost rows in the run
    for w in ("river", "fox", "quick dog"):
        body = {"rank_by": ["t", "BM25", w], "top_k": 60, "consistency": {"level": "eventual"}}
        got_rows = engine.run_query(ns, body)
        assert same(got_rows, exact(ns, body)), strip(got_rows)  # scores on the global statistics
        assert {r["id"] for r in got_rows["rows"]} == {i for i, t in live.items() if set(w.split()) & set(t.split())}
