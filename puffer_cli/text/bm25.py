"""Exact BM25 over a frame of documents, with turbopuffer's options.

Tokens come from :mod:`puffer_cli.text.analyzer` (the one analyzer shared with filters
and the tantivy index).  For a field with options ``opts`` (``k1``/``b`` from
the field's ``full_text_search``)::

    score(d, q) = sum over query tokens t (with multiplicity) of
                  idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * len(d) / avg_len))
    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

``N`` is the number of live documents in the namespace (all of them, as in
tantivy, including documents where the field is missing), ``avg_len`` the
total number of tokens of the field divided by ``N``, ``len(d)`` the exact
token count of the document's field (no fieldnorm quantisation), ``df(t)``
the number of documents containing ``t``.  These statistics are
namespace-global: a query with a filter scores the surviving documents with
the same statistics as an unfiltered one.  ``last_as_prefix``: the last query
token matches every term it prefixes; that clause scores the best of those
terms for each document (a dis-max).

Per (frame, field, analyzer) the tokenised postings are built once (CSR:
term -> (rows, tf)) and cached while the frame is alive, so a query costs a
few numpy gathers per query term.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import polars as pl

from puffer_cli import caches
from puffer_cli.limits import check_deadline
from puffer_cli.text import analyzer as T

__all__ = [
    "FieldStats",
    "Bm25Stats",
    "Postings",
    "join",
    "merge",
    "stats_from_frame",
    "postings_for",
    "query_tokens",
    "score",
    "frame_cached",
]

CHUNK_DOCS = 8192


# --------------------------------------------------------------------------- per-frame cache
#: per-frame derived structures, in two registered LRUs keyed (frame identity, *key):
#: "derived" (postings, vector matrices, sort orders: costly to rebuild; 16) and "masks" (filter
#: masks: many per frame, so they do not evict the others; 32).  Their keys name a frame, not a
#: namespace: a frame's entries go when it dies (a finalizer), so ``caches.forget`` reaches them
#: by dropping the namespace's state and generations, which hold its frames.
_CACHES = {"derived": caches.lru("text.frame_derived", 16), "masks": caches.lru("text.frame_masks", 32)}
_CACHE_LOCK = threading.RLock()
_FINALIZERS: dict[int, Any] = {}
_BUILDING: dict[tuple, threading.Lock] = {}
_MISSING = object()


def _drop_frame(fid: int) -> None:
    with _CACHE_LOCK:
        for c in _CACHES.values():
            for k in c:  # a snapshot of the keys
                if isinstance(k, tuple) and k[0] == fid:
                    c.pop(k)
        _FINALIZERS.pop(fid, None)


def frame_cached(docs: pl.DataFrame, key: tuple, build: Callable[[], Any], slot: str = "derived") -> Any:
    """``build()`` once per (frame identity, key) while ``docs`` is alive (LRU per ``slot``:
    16 derived structures, 32 filter masks).  Frames are immutable, so a value built from
    one stays right for as long as it lives."""
    fid = id(docs)
    k = (fid, *key)
    c = _CACHES[slot]
    with _CACHE_LOCK:
        v = c.get(k, _MISSING)
        if v is not _MISSING:
            return v
        lock = _BUILDING.setdefault(k, threading.Lock())
    with lock:  # one build per key at a time; concurrent callers wait for it
        with _CACHE_LOCK:
            v = c.get(k, _MISSING)
            if v is not _MISSING:
                return v
        try:
            val = build()
            _store(docs, fid, k, val, slot)
        finally:
            with _CACHE_LOCK:
                _BUILDING.pop(k, None)
    return val


def _store(docs: pl.DataFrame, fid: int, k: tuple, val: Any, slot: str) -> None:
    with _CACHE_LOCK:
        if fid not in _FINALIZERS:
            _FINALIZERS[fid] = weakref.finalize(docs, _drop_frame, fid)
        _CACHES[slot].put(k, val)


# --------------------------------------------------------------------------- statistics
@dataclass
class FieldStats:
    """Collection statistics of one FTS field: documents, tokens, doc frequencies."""

    n_docs: int
    total_tokens: int
    df: Mapping[str, int] = field(default_factory=dict)

    @property
    def avg_len(self) -> float:
        return self.total_tokens / self.n_docs if self.n_docs else 0.0

    def doc_freq(self, term: str) -> int:
        return int(self.df.get(term, 0))


class _SumDf(Mapping):
    """Doc-frequency view summing two lookups (lazy; no copy of big vocabularies)."""

    def __init__(self, a: Mapping[str, int], b: Mapping[str, int]):
        self.a, self.b = a, b

    def get(self, k, default=0):
        return self.a.get(k, 0) + self.b.get(k, 0) or default

    def __getitem__(self, k):
        v = self.a.get(k, 0) + self.b.get(k, 0)
        if not v:
            raise KeyError(k)
        return v

    def __iter__(self):
        seen = set(self.a)
        yield from self.a
        yield from (k for k in self.b if k not in seen)

    def __len__(self):
        return sum(1 for _ in self)


@dataclass
class Bm25Stats:
    """Namespace-global BM25 statistics, per FTS field. Mergeable (:func:`merge`)."""

    fields: dict[str, FieldStats] = field(default_factory=dict)

    def get(self, name: str) -> FieldStats | None:
        return self.fields.get(name)

    def merge(self, other: Bm25Stats) -> Bm25Stats:
        return merge(self, other)


def merge(a: Bm25Stats | None, b: Bm25Stats | None) -> Bm25Stats:
    """Statistics of the union of two disjoint document sets."""
    if a is None:
        return b or Bm25Stats()
    if b is None:
        return a
    out: dict[str, FieldStats] = {}
    for name in set(a.fields) | set(b.fields):
        x, y = a.fields.get(name), b.fields.get(name)
        if x is None or y is None:
            out[name] = cast(FieldStats, x or y)  # name is in a or b, so one of them is set
            continue
        df: Mapping[str, int]
        if isinstance(x.df, dict) and isinstance(y.df, dict) and len(x.df) + len(y.df) < 100_000:
            df = dict(x.df)
            for t, n in y.df.items():
                df[t] = df.get(t, 0) + n
        else:
            df = _SumDf(x.df, y.df)
        out[name] = FieldStats(x.n_docs + y.n_docs, x.total_tokens + y.total_tokens, df)
    return Bm25Stats(out)


# --------------------------------------------------------------------------- postings
class _VocabDf(Mapping):
    """df lookup backed by a Postings' vocabulary (no per-term dict copy)."""

    def __init__(self, p: Postings):
        self.p = p

    def get(self, k, default=0):
        i = self.p.vocab.get(k)
        return default if i is None else int(self.p.indptr[i + 1] - self.p.indptr[i])

    def __getitem__(self, k):
        i = self.p.vocab[k]
        return int(self.p.indptr[i + 1] - self.p.indptr[i])

    def __iter__(self):
        return iter(self.p.terms)

    def __len__(self):
        return len(self.p.terms)


@dataclass
class Postings:
    """Tokenised field of one frame. Term i's postings: rows[indptr[i]:indptr[i+1]] with tf."""

    n_docs: int
    terms: list[str]  # sorted (code point order)
    vocab: dict[str, int]
    indptr: np.ndarray  # int64, len(terms) + 1
    rows: np.ndarray  # int32 row positions in the frame
    tf: np.ndarray  # float64
    doc_len: np.ndarray  # float64, per row
    total_tokens: int

    def stats(self) -> FieldStats:
        return FieldStats(self.n_docs, self.total_tokens, _VocabDf(self))

    def prefixed(self, prefix: str) -> range:
        lo = bisect.bisect_left(self.terms, prefix)
        hi = bisect.bisect_left(self.terms, prefix + "\U0010ffff")
        while hi < len(self.terms) and self.terms[hi].startswith(prefix):
            hi += 1
        return range(lo, hi)


def join(parts: list[Postings]) -> Postings:
    """The postings of several disjoint row sets as one (part ``j``'s rows after those of the
    parts before it): scoring the join under given statistics gives each row the score its
    part gives it, bit for bit (every step of :func:`score` is per row, terms in query order)."""
    if len(parts) == 1:
        return parts[0]
    base = np.zeros(len(parts) + 1, np.int64)
    np.cumsum([p.n_docs for p in parts], out=base[1:])
    terms = sorted({t for p in parts for t in p.terms})
    rows: list[np.ndarray] = []
    tfs: list[np.ndarray] = []
    sizes = np.zeros(len(terms), np.int64)
    for k, t in enumerate(terms):
        for j, p in enumerate(parts):
            i = p.vocab.get(t)
            if i is not None:
                a, z = int(p.indptr[i]), int(p.indptr[i + 1])
                rows.append(p.rows[a:z] + np.int32(base[j]))
                tfs.append(p.tf[a:z])
                sizes[k] += z - a
    indptr = np.zeros(len(terms) + 1, np.int64)
    np.cumsum(sizes, out=indptr[1:])
    return Postings(
        int(base[-1]),
        terms,
        {t: k for k, t in enumerate(terms)},
        indptr,
        np.concatenate(rows) if rows else np.zeros(0, np.int32),
        np.concatenate(tfs) if tfs else np.zeros(0, np.float64),
        np.concatenate([p.doc_len for p in parts]),
        sum(p.total_tokens for p in parts),
    )


def _build_postings(values: pl.Series, opts: Mapping) -> Postings:
    n = values.len()
    doc_len = np.zeros(n, dtype=np.float64)
    vocab: dict[str, int] = {}
    setdefault = vocab.setdefault
    tid_parts: list[np.ndarray] = []
    doc_parts: list[np.ndarray] = []
    for start in range(0, n, CHUNK_DOCS):
        check_deadline("query")  # analysing a large frame's text: between chunks
        toks = T.tokenize_many(values.slice(start, CHUNK_DOCS).to_list(), opts)
        lens = np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(toks))
        doc_len[start : start + len(toks)] = lens
        total = int(lens.sum())
        if not total:
            continue
        tid_parts.append(
            np.fromiter((setdefault(t, len(vocab)) for tl in toks for t in tl), dtype=np.int64, count=total)
        )
        doc_parts.append(np.repeat(np.arange(start, start + len(toks), dtype=np.int64), lens))
    if not tid_parts:
        return Postings(
            n,
            [],
            {},
            np.zeros(1, dtype=np.int64),
            np.zeros(0, dtype=np.int32),
            np.zeros(0, dtype=np.float64),
            doc_len,
            0,
        )
    # term ids in code point order of the terms (prefix search bisects the sorted list)
    first = list(vocab)
    order = sorted(range(len(first)), key=first.__getitem__)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(first), dtype=np.int64)
    keys = rank[np.concatenate(tid_parts)] * max(n, 1) + np.concatenate(doc_parts)
    ukeys, tf = np.unique(keys, return_counts=True)  # sorted by (term, doc)
    tids = ukeys // max(n, 1)
    rows = (ukeys - tids * max(n, 1)).astype(np.int32)
    indptr = np.zeros(len(first) + 1, dtype=np.int64)
    np.cumsum(np.bincount(tids, minlength=len(first)), out=indptr[1:])
    terms = [first[i] for i in order]
    return Postings(
        n, terms, {t: i for i, t in enumerate(terms)}, indptr, rows, tf.astype(np.float64), doc_len, int(doc_len.sum())
    )


def postings_for(docs: pl.DataFrame, field_name: str, opts: Mapping) -> Postings:
    """Cached postings of ``docs[field_name]`` under analyzer ``opts``."""
    opts = T.normalize_fts_options(opts)

    def build() -> Postings:
        if field_name not in docs.columns:
            return _build_postings(pl.Series([None] * docs.height, dtype=pl.String), opts)
        return _build_postings(docs[field_name], opts)

    return frame_cached(docs, ("bm25", field_name, T.analyzer_name(opts)), build)


def stats_from_frame(docs: pl.DataFrame, field_name: str, opts: Mapping) -> Bm25Stats:
    """BM25 statistics of one field over ``docs`` (e.g. an index segment or the WAL tail)."""
    return Bm25Stats({field_name: postings_for(docs, field_name, opts).stats()})


def query_tokens(query: str | Iterable[str], opts: Mapping) -> list[str]:
    """Tokens of a BM25 query: the text analysed like the field; a token list has each
    element analysed (for ``pre_tokenized_array`` each element is one token)."""
    if isinstance(query, str):
        return T.tokenize(query, opts)
    return T.tokenize(list(query), opts)


def score(
    p: Postings, tokens: list[str], opts: Mapping, *, stats: FieldStats | None = None, last_as_prefix: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(scores[float64 n_docs], matched[bool n_docs]) for the query tokens over the frame."""
    opts = T.normalize_fts_options(opts)
    k1, b = float(opts["k1"]), float(opts["b"])
    st = stats if stats is not None else p.stats()
    n_docs = st.n_docs
    avg = st.avg_len
    scores = np.zeros(p.n_docs, dtype=np.float64)
    matched = np.zeros(p.n_docs, dtype=bool)
    if not tokens or n_docs == 0:
        return scores, matched
    norm = k1 * (1.0 - b + b * (p.doc_len / avg)) if avg > 0 else np.full(p.n_docs, k1 * (1.0 - b))

    def term_score(i: int, term: str) -> tuple[np.ndarray, np.ndarray]:
        s, e = p.indptr[i], p.indptr[i + 1]
        rows = p.rows[s:e]
        tf = p.tf[s:e]
        df = st.doc_freq(term) if stats is not None else int(e - s)
        idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
        return rows, idf * tf * (k1 + 1.0) / (tf + norm[rows])

    plain = tokens[:-1] if last_as_prefix else tokens
    counts: dict[str, int] = {}
    for t in plain:
        counts[t] = counts.get(t, 0) + 1
    for t, mult in counts.items():
        i = p.vocab.get(t)
        if i is None:
            continue
        rows, sc = term_score(i, t)
        scores[rows] += mult * sc
        matched[rows] = True
    if last_as_prefix:
        best = np.zeros(p.n_docs, dtype=np.float64)
        for i in p.prefixed(tokens[-1]):
            rows, sc = term_score(i, p.terms[i])
            best[rows] = np.maximum(best[rows], sc)  # rows are unique per term
            matched[rows] = True
        scores += best
    return scores, matched
