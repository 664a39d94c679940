"""Exact SparseKNN scoring over a frame of documents (the reference every index path is
checked against, and the re-ranker of index candidates).

A ``{}f16`` column holds stored forms (puffer_cli/schema/sparse.py); per frame it is turned
once (cached with the frame) into an inverted layout: per dimension the rows holding it and
their float16 weights.  A query's score of a row is ``sum(q[d] * w[row, d])`` over the
dimensions the row shares with the query, accumulated in float64 in the query's dimension
order (code point order), so a row's score is the same bits in every frame it appears in
(an index candidate frame, the WAL tail, the whole namespace).  Rows sharing no dimension
with the query do not match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from puffer_cli.query.model import SparseKnn
from puffer_cli.schema import sparse as SV
from puffer_cli.text import bm25 as B


@dataclass(frozen=True)
class SparseColumn:
    """A frame's sparse column, inverted: dimension -> (rows ascending, float64 weights of float16 values)."""

    n: int
    dims: dict[str, int]  # dimension -> index into ptr
    ptr: np.ndarray  # int64, len(dims) + 1
    rows: np.ndarray  # int64
    weights: np.ndarray  # float64


def invert(n: int, rows: np.ndarray, keys: list[str], w16: np.ndarray) -> SparseColumn:
    vocab: dict[str, int] = {}
    setdefault = vocab.setdefault
    kid = np.fromiter((setdefault(k, len(vocab)) for k in keys), np.int64, len(keys))
    order = np.argsort(kid, kind="stable")  # rows stay ascending per dimension
    ptr = np.zeros(len(vocab) + 1, np.int64)
    np.cumsum(np.bincount(kid, minlength=len(vocab)), out=ptr[1:])
    return SparseColumn(n, vocab, ptr, rows[order], w16[order].astype(np.float64))


def column(docs: pl.DataFrame, attr: str) -> SparseColumn:
    """The inverted sparse column ``attr`` of ``docs`` (built once per frame)."""

    def build() -> SparseColumn:
        if attr not in docs.columns:
            return invert(docs.height, np.zeros(0, np.int64), [], np.zeros(0, np.float16))
        rows, keys, w = SV.parse_column(docs.get_column(attr))
        return invert(docs.height, rows, keys, w)

    return B.frame_cached(docs, ("sparse", attr), build)


def score(col: SparseColumn, e: SparseKnn) -> tuple[np.ndarray, np.ndarray]:
    """(score, matched) per row of the column's frame."""
    s = np.zeros(col.n, np.float64)
    m = np.zeros(col.n, bool)
    for d, q in zip(e.dims, e.weights):
        j = col.dims.get(d)
        if j is None:
            continue
        a, b = int(col.ptr[j]), int(col.ptr[j + 1])
        r = col.rows[a:b]
        s[r] += q * col.weights[a:b]
        m[r] = True
    return s, m


def scores(docs: pl.DataFrame, e: SparseKnn) -> tuple[np.ndarray, np.ndarray]:
    return score(column(docs, e.attr), e)
