"""The scoring primitives every query path shares, and the result types.

The exact engine (:mod:`puffer_cli.search.engine`) and the index fast paths
(:mod:`puffer_cli.search.reader`, :mod:`puffer_cli.search.topk`) score with these
functions, so a result is the same whichever path computes it:

* :func:`filter_mask`: the rows of a frame passing a filter;
* :func:`exact_distances`: the exact ``$dist`` (float64) of float32 vectors;
  :func:`f32_tolerance`: how far a float32 distance may be from it;
* :func:`rank_vector`: a frame's top-k by vector distance (float32 pre-selection
  within :func:`f32_tolerance`, exact rescoring, ties by id ascending);
* :func:`text_eval`: a text expression's (score, matched) per row: BM25 leaves,
  ``Sum`` / ``Max`` / ``Product``, filter and attribute scores, ``Saturate`` /
  ``Decay`` / ``Dist`` (:mod:`puffer_cli.search.rankfuncs`);
* :func:`topk_order`: the k best positions by a key, ties by id.

:class:`Source` is one snapshot of a namespace as the engine sees it,
:class:`QueryResult` one query's result before response shaping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import polars as pl

from puffer_cli import filters as F
from puffer_cli import limits as L
from puffer_cli.errors import InvalidQuery
from puffer_cli.query import model
from puffer_cli.query import parse as Q
from puffer_cli.search import rankfuncs
from puffer_cli.text import bm25 as B

__all__ = [
    "QueryResult",
    "Source",
    "exact_distances",
    "f32_tolerance",
    "filter_mask",
    "id_key",
    "near_smallest",
    "rank_vector",
    "text_eval",
    "topk_order",
]


# --------------------------------------------------------------------------- snapshot and result
@dataclass
class Source:
    """One consistent snapshot of a namespace, as the engine sees it (built by
    ``engine.load_source`` or ``index.reader.indexed_source``)."""

    docs: pl.DataFrame
    schema: dict
    metric: str | None
    seq: int
    bm25_stats: B.Bm25Stats | None = None
    approx_namespace_size: int | None = None  # default: docs.height
    exhaustive_search_count: int | None = None  # default: docs.height (no index: all unindexed)
    cache_temperature: str | None = None  # default: from store traffic (hot if none)
    cache_hit_ratio: float | None = None
    extra: dict = field(default_factory=dict)
    prepared: list | None = None  # per query: a QueryResult already computed (index fast path) or None
    bytes_queried: int | None = None  # default: docs.estimated_size()

    def queried(self) -> int:
        return int(self.bytes_queried if self.bytes_queried is not None else self.docs.estimated_size())


@dataclass
class QueryResult:
    rows: pl.DataFrame | None  # selected documents in rank order (all columns); None: no rank_by
    dist: np.ndarray | None  # $dist per row (float64), None for attribute ordering
    aggregations: dict | None = None
    aggregation_groups: list | None = None
    scanned: int = 0  # documents evaluated
    matched: int = 0  # documents passing the filters
    computed: dict | None = None  # compute_attributes: name -> one value per row (None: absent)
    sparse: tuple[str, ...] = ()  # the {}f16 columns (stored as JSON text, returned as objects)


# --------------------------------------------------------------------------- primitives
def id_key(docs: pl.DataFrame) -> np.ndarray:
    """A numeric array ordering rows like their ids (for tie-breaking in numpy)."""

    def build():
        s = docs["id"]
        if s.dtype.is_integer():
            return s.to_numpy()
        return s.rank("ordinal").to_numpy().astype(np.int64)

    return B.frame_cached(docs, ("idkey",), build)


@dataclass
class VecCache:
    mat: np.ndarray  # (n, D) float32 C-contiguous; unit rows for cosine
    valid: np.ndarray | None  # bool (n,), None when every row has a vector
    sqn: np.ndarray | None  # (n,) float32 squared norms (euclidean)
    max_sqn: float
    raw: np.ndarray | None = None  # (n, D) the stored float32 vectors (exact rescoring), when cheap to keep


#: keep the stored vectors beside a cosine matrix when they cost no copy, or at most this many floats
RAW_KEEP_FLOATS = 1 << 20


def vectors(docs: pl.DataFrame, attr: str, metric: str) -> VecCache:
    def build():
        s = docs[attr]
        nulls = s.is_null()
        valid = None
        if nulls.any():
            valid = (~nulls).to_numpy()
            s = s.fill_null(pl.lit(np.zeros(cast(pl.Array, s.dtype).size, dtype=np.float32).tolist(), dtype=s.dtype))
        m = np.ascontiguousarray(s.to_numpy(), dtype=np.float32)
        if m.ndim != 2:
            m = m.reshape(docs.height, -1)
        if metric == "cosine_distance":
            raw = m if not m.flags.writeable or m.size <= RAW_KEEP_FLOATS else None  # read-only: polars' buffer
            m = m.copy()  # normalised in place below; never touch polars' buffer
            norms = np.sqrt(np.einsum("ij,ij->i", m, m, dtype=np.float64))
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = np.where(norms > 0, 1.0 / norms, 0.0).astype(np.float32)
            m *= inv[:, None]
            return VecCache(m, valid, None, 1.0, raw)
        sqn = np.einsum("ij,ij->i", m, m, dtype=np.float64)
        return VecCache(m, valid, sqn.astype(np.float32), float(sqn.max()) if len(sqn) else 0.0, m)

    return B.frame_cached(docs, ("vec", attr, metric), build)


#: filter masks of frames up to this many rows are cached with the frame (repeated filters over one snapshot)
MASK_CACHE_MAX_ROWS = 1 << 18


def filter_mask(docs: pl.DataFrame, f: Any, schema: Mapping) -> np.ndarray:
    """The rows of ``docs`` passing filter ``f`` (a parsed tree, or JSON; a read-only mask:
    it may be shared)."""
    expr = F.compile_filter(f, schema, columns=docs.columns)
    if docs.height > MASK_CACHE_MAX_ROWS:
        return F.filter_mask(docs, expr)

    def build():  # keyed by the compiled expression's identity: kept alive with the mask, so not reused
        m = F.filter_mask(docs, expr)
        m.setflags(write=False)
        return expr, m

    hit = B.frame_cached(docs, ("mask", id(expr)), build, slot="masks")
    return hit[1]


def topk_order(primary: np.ndarray, ids: np.ndarray, kk: int) -> np.ndarray:
    """Positions of the kk best (smallest ``primary``, ties by id asc), in order."""
    m = len(primary)
    if kk < m:
        part = np.argpartition(primary, kk - 1)[:kk]
        kth = primary[part].max()
        pos = np.flatnonzero(primary <= kth)
    else:
        pos = np.arange(m)
    order = np.lexsort((ids[pos], primary[pos]))
    return pos[order[:kk]]


def near_smallest(a: np.ndarray, kk: int, tol: float) -> np.ndarray:
    """Positions of every element within ``tol`` of the kk-th smallest (a superset of the top kk).

    Large arrays: the kk-th smallest of a strided sample bounds the true kk-th smallest from
    above, so one comparison pass keeps a small superset; the exact kk-th is found in it
    (cheaper than an argpartition of the whole array)."""
    m = len(a)
    if kk >= m:
        return np.arange(m)
    step = m // (kk * 64)
    if step >= 4:
        sample = a[::step]
        thr = np.partition(sample, kk - 1)[kk - 1]
        pos = np.flatnonzero(a <= thr + tol)
        sub = a[pos]
        kth = np.partition(sub, kk - 1)[kk - 1]
        return pos[sub <= kth + tol]
    part = np.argpartition(a, kk - 1)[:kk]
    return np.flatnonzero(a <= a[part].max() + tol)


def f32_tolerance(metric: str, dims: int, scale: float = 0.0) -> float:
    """How far a distance computed in float32 over ``dims`` dimensions may be from the
    exact one: a candidate within this of the k-th best may still be among the top k
    (or tie it), so every float32 pre-selection keeps those and rescores them exactly
    in float64 (:func:`exact_distances`).  Cosine distances are bounded, so the bound
    is absolute; a squared euclidean one scales with the magnitudes involved
    (``scale``: the largest squared norms, or the distance itself)."""
    eps = dims * 1.2e-7 + 1e-6
    if metric == "euclidean_squared":
        return eps * (scale + 1.0)
    return 2.0 * eps


def exact_distances(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """The exact ``$dist`` of rows ``x`` (float32 vectors) to ``q``, computed in float64:
    cosine distance clipped to [0, 2] (1.0 for a zero vector), or squared euclidean.
    Every query path (frame scan, index re-rank) returns these values."""
    x = np.asarray(x, dtype=np.float64)
    q64 = np.asarray(q, dtype=np.float64)
    if metric == "cosine_distance":
        qn = np.sqrt(q64 @ q64)
        den = np.sqrt(np.einsum("ij,ij->i", x, x)) * qn
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.clip(np.where(den > 0, 1.0 - (x @ q64) / den, 1.0), 0.0, 2.0)
    diff = x - q64
    return np.einsum("ij,ij->i", diff, diff)


def rank_vector(
    q: Q.Query, rb: Q.VectorRank, docs: pl.DataFrame, metric: str, cand: np.ndarray | None, kk: int
) -> tuple[np.ndarray, np.ndarray]:
    vc = vectors(docs, rb.attr, metric)
    qv = rb.array()
    if vc.valid is not None:
        cand = np.flatnonzero(vc.valid) if cand is None else cand[vc.valid[cand]]
    mat = vc.mat if cand is None else vc.mat[cand]
    m = mat.shape[0]
    if m == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    dims = mat.shape[1]
    if metric == "cosine_distance":
        qn = float(np.sqrt(np.dot(qv.astype(np.float64), qv.astype(np.float64))))
        qu = (qv.astype(np.float64) / qn).astype(np.float32) if qn > 0 else np.zeros_like(qv)  # |q| may pass f32
        approx = -(mat @ qu)  # = cos distance - 1
        tol = f32_tolerance(metric, dims)
    else:
        assert vc.sqn is not None  # kept for every metric but cosine
        sqn = vc.sqn if cand is None else vc.sqn[cand]
        approx = sqn - 2.0 * (mat @ qv)  # = distance - |q|^2
        tol = f32_tolerance(metric, dims, vc.max_sqn + float(np.dot(qv, qv)))
    pos = near_smallest(approx, kk, tol)
    rows = pos if cand is None else cand[pos]
    # rescore the few candidates exactly, in float64, from the stored vectors
    if vc.raw is not None:
        sub = vc.raw[rows]
    else:
        sub = docs[rb.attr].gather(rows).to_numpy().reshape(len(rows), dims)
    exact = exact_distances(sub, qv, metric)
    ids = id_key(docs)[rows]
    order = np.lexsort((ids, exact))[:kk]
    return rows[order], exact[order]


def text_eval(
    e,
    docs: pl.DataFrame | None,
    schema: Mapping,
    stats: B.Bm25Stats | None,
    postings: Mapping[str, B.Postings] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(score, matched) of text expression ``e`` per row of ``docs``.  ``postings``
    (field -> Postings of the rows) replaces analysing ``docs``: the index passes its
    stored postings of candidate rows, and then ``docs`` may be None (pure BM25 only)."""
    if isinstance(e, Q.Bm25):
        opts = schema[e.attr]["full_text_search"]
        if postings is not None:
            p = postings[e.attr]
        else:
            assert docs is not None  # no postings: the rows' text is analysed
            p = B.postings_for(docs, e.attr, opts)
        fs = stats.get(e.attr) if stats is not None else None
        return B.score(p, B.query_tokens(e.query, opts), opts, stats=fs, last_as_prefix=e.last_as_prefix)
    if isinstance(e, (model.TextSum, model.TextMax)):
        parts = []
        for c in e.children:
            L.check_deadline()
            parts.append(text_eval(c, docs, schema, stats, postings))
        m = np.logical_or.reduce([p[1] for p in parts])
        if isinstance(e, model.TextSum):
            with np.errstate(over="ignore"):  # scores past float64 are +inf, as intended
                s = np.sum([p[0] for p in parts], axis=0)
        else:
            s = np.max([p[0] for p in parts], axis=0)
        return s, m
    if isinstance(e, model.TextProduct):
        s, m = text_eval(e.child, docs, schema, stats, postings)
        with np.errstate(over="ignore"):  # a huge weight makes +inf scores: same order, no warning
            return s * e.weight, m
    if isinstance(e, (model.Saturate, model.Decay, Q.Dist)):
        s, m = text_eval(e.child, docs, schema, stats, postings)
        return rankfuncs.apply(e, s, m), m
    assert docs is not None  # only BM25 is scored from postings alone
    if isinstance(e, model.SparseKnn):
        from puffer_cli.search import sparse

        return sparse.scores(docs, e)
    n = docs.height
    if isinstance(e, Q.FilterScore):
        m = filter_mask(docs, e.node, schema).copy() if n else np.zeros(0, dtype=bool)
        return m.astype(np.float64), m
    if isinstance(e, Q.AttrScore):
        if e.attr not in docs.columns:
            return np.zeros(n), np.zeros(n, dtype=bool)
        s = docs[e.attr]
        if s.dtype == pl.Datetime("ms", "UTC") or isinstance(s.dtype, pl.Datetime):
            s = s.dt.epoch("ms")
        m = s.is_not_null().to_numpy()
        return s.cast(pl.Float64).fill_null(0.0).to_numpy(), m
    raise InvalidQuery(f"rank_by: unsupported expression {e!r}")  # pragma: no cover
