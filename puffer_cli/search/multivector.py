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

import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from puffer_cli import limits as L
from puffer_cli.index import npyfile
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
            idx = _spans(starts[a:b], ends[a:b])
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


# --------------------------------------------------------------------------- the index (MUVERA)
#: a segment's visible, filtered rows at or below this are ranked exactly (no FDE search)
EXACT_MAX_ROWS = 2_000
#: a read of more than this fraction of a segment's documents fetches its whole token file
WHOLE_FRACTION = 0.25


def eligible(view, q: Q.Query) -> bool:
    """A plain multi-vector query (no aggregations, per-attribute limits or computed
    attributes) on an indexed view: answered by :func:`indexed_topk`."""
    simple = q.per_attributes is None and not q.aggregate_by and not q.group_by and not q.compute
    return is_multi(view.schema, q.rank_by) and simple


class _SegIndex:
    """One segment's MUVERA files of one field, opened lazily (index/muvera.py)."""

    def __init__(self, seg, ent: dict):
        self._seg = weakref.ref(seg)  # not a strong reference: _OPEN is keyed weakly by the segment
        self.ent = ent
        self._offsets: np.ndarray | None = None
        self._ivf: tuple | None = None
        self._tok: np.ndarray | None = None
        self._all: Tokens | None = None
        self._plaid: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def seg(self):
        seg = self._seg()
        assert seg is not None  # the caller holds the segment
        return seg

    def offsets(self) -> np.ndarray:
        if self._offsets is None:
            self._offsets = npyfile.load_npy(self.seg.cache.file(self.seg.store, self.ent["offsets"]))
        return self._offsets

    def ivf(self):
        from puffer_cli.index import ivf, paged, ranged

        if self._ivf is None:
            seg, ent = self.seg, self.ent
            route = ivf.Route(
                seg.cache.file(seg.store, ent["route"]).read_bytes(), int(ent["fde_dims"]), ent["ivf_metric"]
            )
            lent = ent["lists"]
            if paged.cached(seg.cache, seg.store, lent) or ranged.lists_read_whole(route.rows, route.dims):
                lists = ivf.Lists(route, local=paged.whole(seg.cache, seg.store, lent))
            else:
                lists = ivf.Lists(route, fetch=lambda rs, e=lent: paged.read_ranges(seg.cache, seg.store, e, rs, 0.0))
            self._ivf = (route, lists)
        return self._ivf

    def plaid(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(centroids (k, dims) float32, codes (tokens,) uint16) of the token-level
        candidates, or None for a segment indexed before them (index/muvera.py)."""
        ent = self.ent.get("plaid")
        if ent is None:
            return None
        if self._plaid is None:
            z = npyfile.load_npz(self.seg.cache.file(self.seg.store, ent["key"]))
            self._plaid = (np.ascontiguousarray(z["centroids"], np.float32), np.ascontiguousarray(z["codes"]))
        return self._plaid

    def all_tokens(self) -> Tokens:
        """Every document's vectors (row i is segment position i), from the whole token file
        (memory-mapped from the cache), with their norms: computed once per segment."""
        from puffer_cli.index import paged

        if self._all is None:
            seg, ent = self.seg, self.ent
            dims = int(ent["fde"]["dims"])
            off = self.offsets()
            if self._tok is None and off[-1]:
                path = paged.whole(seg.cache, seg.store, ent["tok"])
                self._tok = np.asarray(np.memmap(path, dtype="<f4", mode="r")).reshape(-1, dims)
            tok = self._tok if self._tok is not None else np.zeros((0, dims), np.float32)
            self._all = tokens_of(tok, off)
        return self._all

    def tokens(self, pos: np.ndarray) -> Tokens:
        """The token vectors of rows ``pos`` (ascending or not), as :class:`Tokens` whose
        row j is ``pos[j]``: from the whole file when it is cached (or small), else by
        ranged reads of just those rows' bytes."""
        from puffer_cli.index import paged

        seg, ent = self.seg, self.ent
        dims = int(ent["fde"]["dims"])
        off = self.offsets()
        a, b = off[pos], off[pos + 1]
        new_off = np.concatenate([[0], np.cumsum(b - a)]).astype(np.int64)
        whole = paged.cached(seg.cache, seg.store, ent["tok"]) or int(off[-1]) * dims * 4 <= 1 << 20
        if self._tok is None and (whole or len(pos) > WHOLE_FRACTION * (len(off) - 1)):
            path = paged.whole(seg.cache, seg.store, ent["tok"])
            self._tok = np.asarray(np.memmap(path, dtype="<f4", mode="r")).reshape(-1, dims) if off[-1] else None
        if self._tok is not None:
            return tokens_of(self._tok[_spans(a, b)], new_off)
        got = paged.read_ranges(
            seg.cache, seg.store, ent["tok"], [(int(x) * 4 * dims, int(y) * 4 * dims) for x, y in zip(a, b)], 0.0
        )
        flat = np.frombuffer(b"".join(got), dtype="<f4").reshape(-1, dims)
        return tokens_of(flat, new_off)


#: segment -> field -> its opened MUVERA files (dropped with the segment's generation)
_OPEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_OPEN_LOCK = threading.Lock()


def _seg_index(seg, f: str) -> _SegIndex | None:
    ent = seg.meta.get("mv", {}).get(f)
    if ent is None:
        return None
    with _OPEN_LOCK:
        per = _OPEN.setdefault(seg, {})
        if f not in per:
            per[f] = _SegIndex(seg, ent)
        return per[f]


def _column_tokens(seg, f: str, pos: np.ndarray) -> Tokens:
    """Tokens of rows ``pos`` from the doc store (a segment without MUVERA files)."""
    s = seg.rows_at(pos, [f]).get_column(f) if len(pos) else None
    if s is None or s.dtype == pl.Null:
        return tokens_of(np.zeros((0, 1), np.float32), np.zeros(len(pos) + 1, np.int64))
    return tokens_of(*MVS.flatten(s, int(s.dtype.inner.size)))


def _ranked(
    t: Tokens, pos: np.ndarray, qm: np.ndarray, metric: str, kk: int, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Of rows ``pos`` (row j of ``t`` is ``pos[j]``; or, with ``rows``, the rows ``rows``
    of ``t``, which are the positions) with at least one vector, those that may be among
    the best ``kk`` (every one within float32 tolerance of the kk-th) and their exact $dist."""
    if rows is not None:
        pos = np.arange(len(t.offsets) - 1)
        j = rows[np.diff(t.offsets)[rows] > 0]
    else:
        j = np.flatnonzero(np.diff(t.offsets) > 0)
    if len(j) > kk:
        approx = approx_distances(t, j, qm, metric)
        j = j[SC.near_smallest(approx, kk, tolerance(metric, qm.shape[1], len(qm), t, qm))]
    return pos[j], exact_distances(t, j, qm, metric)


def centroid_candidates(
    off: np.ndarray, cent: np.ndarray, codes: np.ndarray, qm: np.ndarray, metric: str, sel: np.ndarray | None, want: int
) -> np.ndarray:
    """The ``want`` rows (of those in ``sel``, None: all) with a vector that score best by
    PLAID's centroid interaction: each token stands for its centroid (``codes``), a query
    vector's similarity to every centroid is quantised to uint8 (cosine: [-1, 1]; euclidean:
    the query's range of minus the squared distance), and a row's score is the sum over query
    vectors of its best cell.  One (tokens x query vectors) uint8 gather and a per-row maximum:
    GCIDE x GloVe (1.46M tokens, 16,384 centroids) about 30 ms for 5 query vectors."""
    rows = np.flatnonzero(np.diff(off) > 0)
    if not len(rows) or want <= 0:
        return np.zeros(0, np.int64)
    q = np.asarray(qm, np.float32)
    if metric == "cosine_distance":
        qn = np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)  # |q| may pass the f32 range
        sim = cent @ (q / np.where(qn > 0, qn, 1.0)).astype(np.float32).T  # centroids are unit (or zero)
        lo, hi = -1.0, 1.0
    else:
        sim = 2.0 * (cent @ q.T) - np.einsum("ij,ij->i", cent, cent)[:, None] - np.einsum("ij,ij->i", q, q)[None, :]
        lo, hi = float(sim.min()), float(sim.max())
    m8 = -(-len(q) // 8) * 8  # a centroid's cells padded to whole uint64 words: one 8-byte gather per token
    cells = np.zeros((len(cent), m8), np.uint8)
    cells[:, : len(q)] = np.clip((sim - lo) * (255.0 / max(hi - lo, 1e-30)), 0, 255)
    per_tok = cells.view(np.uint64).take(codes, axis=0).view(np.uint8)  # (tokens, m8)
    score = np.maximum.reduceat(per_tok, off[rows], axis=0).sum(axis=1, dtype=np.int32)
    if sel is not None:
        keep = sel[rows]
        rows, score = rows[keep], score[keep]
    if len(rows) <= want:
        return rows
    return np.sort(rows[np.argpartition(-score, want - 1)[:want]])


def _spans(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(a[i], b[i])`` over i, vectorised."""
    lens = b - a
    if not len(lens) or not lens.sum():
        return np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    return np.repeat(a - starts, lens) + np.arange(int(lens.sum()))


def indexed_topk(view, q: Q.Query) -> tuple[SC.QueryResult, int, int]:
    """(result, rows scored exactly, candidates) of an :func:`eligible` query on ``view``:
    per segment, the FDE IVF's candidates (``kk x max(rerank, RERANK_MIN)``) and as many
    by centroid interaction over the token codes (:func:`centroid_candidates`; a
    ``kNN`` query, a small filtered set or a segment without MUVERA files: every
    visible row) re-ranked by exact MaxSim from their token vectors; the WAL tail by
    the exact scan; the best ``offset + limit`` over all, ties by id."""
    from functools import partial

    from puffer_cli.index import ivf, muvera
    from puffer_cli.index import ranged as RG
    from puffer_cli.search import topk

    rb = q.rank_by
    assert isinstance(rb, Q.VectorRank)
    metric = q.distance_metric or view.metric or "cosine_distance"
    kk = q.offset + q.limit
    qm = query_matrix(rb)
    ann = (view.schema.get(rb.attr) or {}).get("ann")
    opts = ivf.options({"ann": {"probe": muvera.PROBE, **(ann if isinstance(ann, dict) else {})}})
    want = kk * max(int(opts["rerank"]), muvera.RERANK_MIN)
    out = topk.Collect(view)

    def one(i: int):
        L.check_deadline()
        seg = view.gen.segments[i]
        sel = view._filter_mask(i, q.filters)
        n_sel = int(np.count_nonzero(sel))
        if n_sel == 0 or kk <= 0:
            return None
        mi = _seg_index(seg, rb.attr)
        exact = mi is None or rb.method != "ANN" or n_sel <= EXACT_MAX_ROWS or metric != mi.ent["metric"]
        if exact:
            pos = np.flatnonzero(sel)
            if mi is not None and len(pos) > WHOLE_FRACTION * seg.rows:  # the whole token file, no copy
                p, d = _ranked(mi.all_tokens(), pos, qm, metric, kk, rows=pos)
            else:
                t = _column_tokens(seg, rb.attr, pos) if mi is None else mi.tokens(pos)
                p, d = _ranked(t, pos, qm, metric, kk)
            return p, d, n_sel, len(p)
        assert mi is not None
        route, lists = mi.ivf()
        params = muvera.Params.from_json(mi.ent["fde"])
        qf = muvera.query_fde(qm, params, metric == "cosine_distance")
        frac = n_sel / max(1, seg.rows)
        restrict = q.filters is not None or n_sel < seg.rows
        cand, _approx, scanned = ivf.search(
            route,
            lists,
            qf,
            want,
            min(1.0, opts["probe"] / frac),
            sel if restrict else None,
            min_rows=int(opts["probe_min_rows"] / frac),
            fill=opts["fill"],
        )
        plaid = mi.plaid()
        if plaid is not None:  # token-level candidates (PLAID centroid interaction), with the FDE ones
            more = centroid_candidates(mi.offsets(), *plaid, qm, metric, sel if restrict else None, want)
            cand = np.union1d(cand, more)
        cand = np.sort(cand)
        # float32 MaxSim of every candidate, float64 of those near the kk-th (the segment's best kk)
        p, d = _ranked(mi.tokens(cand), cand, qm, metric, kk)
        return p, d, scanned, len(cand)

    n = len(view.gen.segments)
    got = RG.parallel([partial(one, i) for i in range(n)], view.gen.store.is_remote)
    exhaustive = scored = 0
    for i, r in enumerate(got):
        if r is None:
            continue
        p, d, ex, sc = r
        exhaustive += ex
        scored += sc
        if len(p):
            o = np.argsort(p, kind="stable")
            out.add(i, p[o], d[o], d[o])
    tail = view.tail.docs if view.tail is not None and view.tail.docs.height else None
    if tail is not None:
        L.check_deadline()
        exhaustive += tail.height
        cand = np.flatnonzero(SC.filter_mask(tail, q.filters, view.schema)) if q.filters is not None else None
        pos, d = rank_exact(rb, tail, metric, cand, kk)
        out.add(-1, pos, d, d)
    return out.top(q), exhaustive, scored
