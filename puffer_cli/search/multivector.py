"""Multi-vector (late interaction) ranking: exact MaxSim over ``[][N]f32`` attributes.

A document holds a set of token vectors D, a query a set Q (``[attr, "ANN"|"kNN",
[[..], [..]]]``, turbopuffer's RankByAnnMulti / RankByKnnMulti; one plain vector is
a set of one).  ``$dist`` is a distance, lower is better, in the attribute's metric:

    $dist(Q, D) = sum over q in Q of  min over d in D of  dist(q, d)

so under ``cosine_distance`` it is ``|Q| - MaxSim(Q, D)`` with MaxSim the ColBERT
score (sum over query vectors of the best cosine similarity), and under
``euclidean_squared`` the (one-sided) Chamfer distance.  With one query vector and
one document vector it is that vector's ordinary ``$dist``.  turbopuffer does not
document the value; docs/http.md's compatibility page says what puffer chose.
Documents without the attribute (null) never rank.

The scan keeps, per frame, the flattened token matrix (float32, C-contiguous) and the
row offsets; a query is one matmul per chunk of rows, a per-row minimum
(``np.minimum.reduceat``) and a sum over query vectors; the candidates near the k-th
are then rescored in float64 from the stored vectors, so ids and distances are exact
(ties by id ascending), as in the dense scan (search/scoring.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from puffer_cli import limits as L
from puffer_cli.query import parse as Q
from puffer_cli.schema import multivec as MVS
from puffer_cli.schema import types
from puffer_cli.search import scoring as SC
from puffer_cli.text import bm25 as B

#: float32 similarity cells (tokens x query vectors) computed per chunk of a scan
CHUNK_CELLS = 8 << 20


def is_multi(schema: Mapping, rb) -> bool:
    """Does vector ranking ``rb`` rank a multi-vector attribute?"""
    return isinstance(rb, Q.VectorRank) and types.is_multi_vector(schema.get(rb.attr, {}).get("type", ""))


def query_matrix(rb: Q.VectorRank) -> np.ndarray:
    """The query vectors of ``rb`` as (m, dims) float32."""
    if isinstance(rb, Q.MultiVectorRank):
        return rb.matrix()
    return rb.array()[None, :]


@dataclass
class Tokens:
    """The token vectors of a frame's multi-vector column: ``tok`` (T, dims) float32,
    ``offsets`` (rows + 1) int64, ``inv`` (T,) float32 inverse norms (0 for a zero vector)
    and ``sqn`` (T,) squared norms."""

    tok: np.ndarray
    offsets: np.ndarray
    inv: np.ndarray
    sqn: np.ndarray


def tokens_of(tok: np.ndarray, offsets: np.ndarray) -> Tokens:
    tok = np.ascontiguousarray(tok, dtype=np.float32)
    sqn = np.einsum("ij,ij->i", tok, tok, dtype=np.float64)
    norms = np.sqrt(sqn)
    with np.errstate(divide="ignore"):
        inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)
    return Tokens(tok, offsets, inv, sqn.astype(np.float32))


def frame_tokens(docs: pl.DataFrame, attr: str) -> Tokens:
    """:class:`Tokens` of ``docs[attr]``, cached with the (immutable) frame."""

    def build() -> Tokens:
        s = docs.get_column(attr)
        inner = s.dtype.inner  # type: ignore[attr-defined]  # List(Array(Float32, N))
        dims = int(inner.size)
        return tokens_of(*MVS.flatten(s, dims))

    return B.frame_cached(docs, ("mvtok", attr), build)


def approx_distances(t: Tokens, rows: np.ndarray, qm: np.ndarray, metric: str) -> np.ndarray:
    """float32 ``$dist`` of each row in ``rows`` (every one with at least one vector)."""
    qm = np.asarray(qm, dtype=np.float32)
    m = len(qm)
    out = np.zeros(len(rows), np.float64)
    if not len(rows):
        return out
    if metric == "cosine_distance":
        qn = np.linalg.norm(qm.astype(np.float64), axis=1)
        qu = np.where(qn[:, None] > 0, qm / np.where(qn > 0, qn, 1.0)[:, None], 0.0).astype(np.float32)
    else:
        qq = np.einsum("ij,ij->i", qm, qm).astype(np.float32)
    starts, ends = t.offsets[rows], t.offsets[rows + 1]
    lens = ends - starts
    contiguous = len(rows) > 1 and bool((starts[1:] == ends[:-1]).all())
    per = max(1, CHUNK_CELLS // max(1, m))
    a = 0
    while a < len(rows):
        L.check_deadline()
        # rows [a, b) with at most ~per tokens (at least one row)
        cum = np.cumsum(lens[a:])
        b = a + max(1, int(np.searchsorted(cum, per, side="right")))
        if contiguous:
            sl = slice(int(starts[a]), int(ends[b - 1]))
            x, inv, sqn = t.tok[sl], t.inv[sl], t.sqn[sl]
        else:
            idx = np.concatenate([np.arange(s, e) for s, e in zip(starts[a:b], ends[a:b])])
            x, inv, sqn = t.tok[idx], t.inv[idx], t.sqn[idx]
        if metric == "cosine_distance":
            d = 1.0 - (x @ qu.T) * inv[:, None]
            d[inv == 0] = 1.0  # a zero vector is at distance 1 of everything
        else:
            d = sqn[:, None] - 2.0 * (x @ qm.T) + qq[None, :]
        local = np.concatenate([[0], np.cumsum(lens[a:b])[:-1]])
        out[a:b] = np.minimum.reduceat(d, local, axis=0).sum(axis=1)
        a = b
    return out


def exact_distances(t: Tokens, rows: np.ndarray, qm: np.ndarray, metric: str) -> np.ndarray:
    """The exact ``$dist`` (float64, the reference) of each row in ``rows``."""
    q64 = np.asarray(qm, dtype=np.float64)
    out = np.zeros(len(rows), np.float64)
    for j, r in enumerate(rows):
        x = t.tok[t.offsets[r] : t.offsets[r + 1]].astype(np.float64)
        out[j] = exact_pair(x, q64, metric)
    return out


def exact_pair(x: np.ndarray, q: np.ndarray, metric: str) -> float:
    """$dist of query vectors ``q`` (m, d) to document vectors ``x`` (n, d), in float64
    (cosine distances clipped to [0, 2], 1.0 for a zero vector: scoring.exact_distances)."""
    x = np.asarray(x, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if metric == "cosine_distance":
        den = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None] * np.sqrt(np.einsum("ij,ij->i", q, q))[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.clip(np.where(den > 0, 1.0 - (x @ q.T) / den, 1.0), 0.0, 2.0)
    else:
        d = np.einsum("ij,ij->i", x, x)[:, None] - 2.0 * (x @ q.T) + np.einsum("ij,ij->i", q, q)[None, :]
        d = np.maximum(d, 0.0)
    return float(d.min(axis=0).sum())


def tolerance(metric: str, dims: int, m: int, t: Tokens, qm: np.ndarray) -> float:
    """How far a float32 :func:`approx_distances` value may be from the exact one."""
    scale = float(t.sqn.max()) + float(np.einsum("ij,ij->i", qm, qm).max()) if len(t.sqn) else 0.0
    return 4.0 * m * SC.f32_tolerance(metric, dims, scale)


def rank_exact(
    rb: Q.VectorRank, docs: pl.DataFrame, metric: str, cand: np.ndarray | None, kk: int
) -> tuple[np.ndarray, np.ndarray]:
    """(positions, exact $dist) of the best ``kk`` rows of ``docs`` (``cand``: the rows
    allowed), ties by id ascending: the exact engine's multi-vector ranking."""
    t = frame_tokens(docs, rb.attr)
    has = np.diff(t.offsets) > 0  # rows with at least one vector
    rows = np.flatnonzero(has) if cand is None else cand[has[cand]]
    if not len(rows) or kk <= 0:
        return np.zeros(0, np.int64), np.zeros(0)
    qm = query_matrix(rb)
    approx = approx_distances(t, rows, qm, metric)
    near = SC.near_smallest(approx, kk, tolerance(metric, qm.shape[1], len(qm), t, qm))
    rows = rows[near]
    exact = exact_distances(t, rows, qm, metric)
    order = np.lexsort((SC.id_key(docs)[rows], exact))[:kk]
    return rows[order], exact[order]
