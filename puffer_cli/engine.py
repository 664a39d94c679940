"""Exact query execution over a frame of live documents.

    execute(q, docs, schema, metric, bm25_stats=None) -> QueryResult   # pure
    run_query(ns, body) -> dict      # turbopuffer query response
    run_multi(ns, body) -> dict      # turbopuffer multi-query response (one snapshot)

Response bodies are shaped by :mod:`puffer_cli.response` (rows, RFC 3339, base64); the views
turn them into bytes with ``response.render``.

Execution order: filters (polars) -> scoring of the surviving rows -> top-k
with ties broken by id ascending -> ``offset`` / ``limit.per`` -> rows.
Aggregations are computed over every document that passes the filters.

Vector scans keep, per frame, a contiguous float32 matrix (row-normalised for
cosine, plus squared norms for euclidean) so a query is one BLAS matvec and an
``argpartition``; the few candidates near the k-th distance are then rescored
in float64, so ids and distances are exact (ties included).  BM25 uses cached
postings (:mod:`puffer_cli.bm25`).

All data access goes through :func:`load_source` (one function, so an index +
WAL-tail source can replace it without touching the rest).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import polars as pl

from . import bm25 as B
from . import filters as F
from . import limits as L
from . import query as Q
from . import response as R
from .errors import InvalidQuery
from .store import io_scope

__all__ = ["Source", "QueryResult", "load_source", "execute", "run_query", "run_multi"]


# --------------------------------------------------------------------------- data source
@dataclass
class Source:
    """One consistent snapshot of a namespace, as the engine sees it."""

    docs: pl.DataFrame
    schema: dict
    metric: str | None
    seq: int
    bm25_stats: B.Bm25Stats | None = None
    approx_namespace_size: int | None = None     # default: docs.height
    exhaustive_search_count: int | None = None   # default: docs.height (no index: all unindexed)
    cache_temperature: str | None = None         # default: from store traffic (hot if none)
    cache_hit_ratio: float | None = None
    extra: dict = field(default_factory=dict)
    prepared: list | None = None                 # per query: a QueryResult already computed (index fast path) or None
    bytes_queried: int | None = None             # default: docs.estimated_size()

    def result(self, i: int, q: "Q.Query") -> "QueryResult":
        """Query ``i``'s result: prepared by the source, else the exact engine over ``docs``."""
        if self.prepared is not None and self.prepared[i] is not None:
            return self.prepared[i]
        return execute(q, self.docs, self.schema, self.metric, bm25_stats=self.bm25_stats)

    def queried(self) -> int:
        return int(self.bytes_queried if self.bytes_queried is not None else self.docs.estimated_size())


def load_source(ns, consistency: str, queries=None, multi: bool = False) -> Source:
    """The documents a query runs over.  With an index (meta.json ``index``) and the
    ``queries`` to answer: a small candidate frame from the index segments plus
    the WAL tail after ``covers_through_seq`` (strong) or the index only
    (eventual), with namespace-global BM25 statistics (puffer_cli/index/reader.py).
    Otherwise the replayed WAL state at the head."""
    if queries is not None:
        from .index.reader import indexed_source

        src = indexed_source(ns, consistency, queries, multi)
        if src is not None:
            return src
    docs, head = ns.docs()  # lists the WAL head once, replays (incrementally) to it
    if head.seq == 0:
        ns.require()  # raises NamespaceNotFound
    return Source(docs, head.schema, head.metric, head.seq)


# --------------------------------------------------------------------------- results
@dataclass
class QueryResult:
    rows: pl.DataFrame | None           # selected documents in rank order (all columns); None: no rank_by
    dist: np.ndarray | None             # $dist per row (float64), None for attribute ordering
    aggregations: dict | None = None
    aggregation_groups: list | None = None
    scanned: int = 0                    # documents evaluated
    matched: int = 0                    # documents passing the filters


def _metric(q: Q.Query, metric: str | None) -> str:
    return q.distance_metric or metric or "cosine_distance"


def _id_key(docs: pl.DataFrame) -> np.ndarray:
    """A numeric array ordering rows like their ids (for tie-breaking in numpy)."""
    def build():
        s = docs["id"]
        if s.dtype.is_integer():
            return s.to_numpy()
        return s.rank("ordinal").to_numpy().astype(np.int64)
    return B.frame_cached(docs, ("idkey",), build)


@dataclass
class _VecCache:
    mat: np.ndarray          # (n, D) float32 C-contiguous; unit rows for cosine
    valid: np.ndarray | None  # bool (n,), None when every row has a vector
    sqn: np.ndarray | None   # (n,) float32 squared norms (euclidean)
    max_sqn: float


def _vectors(docs: pl.DataFrame, attr: str, metric: str) -> _VecCache:
    def build():
        s = docs[attr]
        nulls = s.is_null()
        valid = None
        if nulls.any():
            valid = (~nulls).to_numpy()
            s = s.fill_null(pl.lit(np.zeros(s.dtype.size, dtype=np.float32).tolist(), dtype=s.dtype))
        m = np.ascontiguousarray(s.to_numpy(), dtype=np.float32)
        if m.ndim != 2:
            m = m.reshape(docs.height, -1)
        if metric == "cosine_distance":
            m = m.copy()  # normalised in place below; never touch polars' buffer
            norms = np.sqrt(np.einsum("ij,ij->i", m, m, dtype=np.float64))
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = np.where(norms > 0, 1.0 / norms, 0.0).astype(np.float32)
            m *= inv[:, None]
            return _VecCache(m, valid, None, 1.0)
        sqn = np.einsum("ij,ij->i", m, m, dtype=np.float64)
        return _VecCache(m, valid, sqn.astype(np.float32), float(sqn.max()) if len(sqn) else 0.0)
    return B.frame_cached(docs, ("vec", attr, metric), build)


def _filter_mask(docs: pl.DataFrame, f: Any, schema: Mapping) -> np.ndarray:
    return F.filter_mask(docs, F.compile_filter(f, schema, columns=docs.columns))


def _topk_order(primary: np.ndarray, ids: np.ndarray, kk: int) -> np.ndarray:
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


def _near_smallest(a: np.ndarray, kk: int, tol: float) -> np.ndarray:
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


def _rank_vector(q: Q.Query, rb: Q.VectorRank, docs: pl.DataFrame, metric: str,
                 cand: np.ndarray | None, kk: int) -> tuple[np.ndarray, np.ndarray]:
    vc = _vectors(docs, rb.attr, metric)
    qv = rb.array()
    if vc.valid is not None:
        cand = np.flatnonzero(vc.valid) if cand is None else cand[vc.valid[cand]]
    mat = vc.mat if cand is None else vc.mat[cand]
    m = mat.shape[0]
    if m == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    dims = mat.shape[1]
    eps = dims * 1.2e-7 + 1e-6
    if metric == "cosine_distance":
        qn = float(np.sqrt(np.dot(qv.astype(np.float64), qv.astype(np.float64))))
        qu = (qv / qn).astype(np.float32) if qn > 0 else np.zeros_like(qv)
        approx = -(mat @ qu)           # = cos distance - 1
        tol = 2.0 * eps
    else:
        sqn = vc.sqn if cand is None else vc.sqn[cand]
        approx = sqn - 2.0 * (mat @ qv)  # = distance - |q|^2
        tol = eps * (vc.max_sqn + float(np.dot(qv, qv)) + 1.0)
    pos = _near_smallest(approx, kk, tol)
    rows = pos if cand is None else cand[pos]
    # rescore the few candidates exactly, in float64, from the stored vectors
    sub = docs[rb.attr].gather(rows).to_numpy().reshape(len(rows), dims)
    exact = exact_distances(sub, qv, metric)
    ids = _id_key(docs)[rows]
    order = np.lexsort((ids, exact))[:kk]
    return rows[order], exact[order]


def _text_eval(e, docs: pl.DataFrame | None, schema: Mapping, stats: B.Bm25Stats | None,
               postings: Mapping[str, B.Postings] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(score, matched) of text expression ``e`` per row of ``docs``.  ``postings``
    (field -> Postings of the rows) replaces analysing ``docs``: the index passes its
    stored postings of candidate rows, and then ``docs`` may be None (pure BM25 only)."""
    if isinstance(e, Q.Bm25):
        opts = schema[e.attr]["full_text_search"]
        p = postings[e.attr] if postings is not None else B.postings_for(docs, e.attr, opts)
        fs = stats.get(e.attr) if stats is not None else None
        return B.score(p, B.query_tokens(e.query, opts), opts, stats=fs, last_as_prefix=e.last_as_prefix)
    if isinstance(e, (Q.TextSum, Q.TextMax)):
        parts = []
        for c in e.children:
            L.check_deadline()
            parts.append(_text_eval(c, docs, schema, stats, postings))
        m = np.logical_or.reduce([p[1] for p in parts])
        if isinstance(e, Q.TextSum):
            s = np.sum([p[0] for p in parts], axis=0)
        else:
            s = np.max([p[0] for p in parts], axis=0)
        return s, m
    if isinstance(e, Q.TextProduct):
        s, m = _text_eval(e.child, docs, schema, stats, postings)
        return s * e.weight, m
    n = docs.height
    if isinstance(e, Q.FilterScore):
        m = _filter_mask(docs, e.filter, schema) if n else np.zeros(0, dtype=bool)
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


def _order_frame(frame: pl.DataFrame, rb: Q.OrderBy, kk: int | None = None) -> pl.DataFrame:
    """Rows sorted by the keys (missing last, ties by id asc); the first kk if given.
    Sorts only the key columns plus a row number, then gathers the winners."""
    by = [a for a, _ in rb.keys]
    desc = [d for _, d in rb.keys]
    if "id" not in by:
        by.append("id")
        desc.append(False)
    cols = [c for c in by if c in frame.columns]
    keys = frame.lazy().select(*cols, pl.int_range(pl.len(), dtype=pl.Int64).alias("__r"))
    keys = keys.sort(cols, descending=[desc[by.index(c)] for c in cols], nulls_last=True, maintain_order=True)
    if kk is not None:
        keys = keys.head(kk)
    return frame.gather(keys.select("__r").collect().to_series())


def _apply_per(frame: pl.DataFrame, attrs: tuple[str, ...], limit: int) -> pl.Series:
    """Mask keeping at most ``limit`` rows per value of ``attrs`` (in frame order)."""
    keys = [pl.col(a) if a in frame.columns else pl.lit(None) for a in attrs]
    return frame.select((pl.int_range(pl.len()).over(keys) < limit).alias("k")).to_series()


def execute(q: Q.Query, docs: pl.DataFrame, schema: dict, metric: str | None, *,
            bm25_stats: B.Bm25Stats | None = None) -> QueryResult:
    """Evaluate ``q`` exactly over ``docs`` (live documents, columns per ``schema``)."""
    n = docs.height
    L.check_deadline()
    mask = _filter_mask(docs, q.filter, schema) if q.filters is not None and n else None
    cand = np.flatnonzero(mask) if mask is not None else None
    matched = n if cand is None else len(cand)
    res = QueryResult(None, None, scanned=n, matched=matched)

    if q.aggregate_by:
        sub = docs if mask is None else docs.filter(pl.Series(mask))
        if q.group_by:
            res.aggregation_groups = _grouped(sub, q, schema)
        else:
            res.aggregations = {label: _agg_value(sub, a, schema) for label, a in q.aggregate_by}

    rb = q.rank_by
    if rb is None:
        return res
    L.check_deadline()
    kk = q.offset + q.limit
    per = q.per_attributes is not None
    if per:
        kk = max(matched, 1)
    if isinstance(rb, Q.OrderBy):
        frame = docs if mask is None else docs.filter(pl.Series(mask))
        frame = _order_frame(frame, rb, None if per else kk)
        dist = None
    else:
        if isinstance(rb, Q.VectorRank):
            pos, dist = _rank_vector(q, rb, docs, _metric(q, metric), cand, kk) if n else (np.zeros(0, int), np.zeros(0))
        else:
            if n:
                s, m = _text_eval(rb.expr, docs, schema, bm25_stats)
                if mask is not None:
                    m &= mask
                elig = np.flatnonzero(m)
                top = _topk_order(-s[elig], _id_key(docs)[elig], kk)
                pos, dist = elig[top], s[elig][top]
            else:
                pos, dist = np.zeros(0, dtype=np.int64), np.zeros(0)
        frame = docs.gather(pl.Series(pos, dtype=pl.Int64)) if len(pos) else docs.clear()
    L.check_deadline()
    if per:
        keep = _apply_per(frame, q.per_attributes, q.per_limit)
        frame = frame.filter(keep)
        if dist is not None:
            dist = dist[keep.to_numpy()]
    frame = frame.slice(q.offset, q.limit)
    if dist is not None:
        dist = dist[q.offset:q.offset + q.limit]
    res.rows, res.dist = frame, dist
    return res


# --------------------------------------------------------------------------- aggregations
def _agg_value(frame: pl.DataFrame, a: Q.Aggregate, schema: Mapping):
    if a.kind == "Count":
        if a.attr is None:
            return frame.height
        return int(frame[a.attr].count()) if a.attr in frame.columns else 0
    if a.attr not in frame.columns:
        return 0
    v = frame[a.attr].sum()
    t = schema[a.attr]["type"]
    return (int(v) if v is not None else 0) if t in ("int", "uint") else float(v or 0.0)


def _agg_expr(label: str, a: Q.Aggregate, schema: Mapping, cols) -> pl.Expr:
    if a.kind == "Count":
        e = pl.len() if a.attr is None else (pl.col(a.attr).count() if a.attr in cols else pl.lit(0))
    else:
        e = pl.col(a.attr).sum() if a.attr in cols else pl.lit(0)
    return e.alias(label)


def _grouped(sub: pl.DataFrame, q: Q.Query, schema: Mapping) -> list[dict]:
    cols = set(sub.columns)
    frame = sub
    sel = []
    for g in q.group_by:
        src = pl.col(g.attr) if g.attr in cols else pl.lit(None)
        sel.append(src.alias(f"__g_{g.name}"))
    needed = {a.attr for _, a in q.aggregate_by if a.attr is not None and a.attr in cols}
    frame = sub.select(*sel, *[pl.col(c) for c in sorted(needed)])
    for g in q.group_by:
        if g.for_each_unique:
            c = f"__g_{g.name}"
            frame = frame.with_columns(pl.col(c).list.unique()).explode(c).filter(pl.col(c).is_not_null())
    keys = [f"__g_{g.name}" for g in q.group_by]
    out = frame.group_by(keys).agg([_agg_expr(label, a, schema, frame.columns) for label, a in q.aggregate_by])
    out = out.sort(keys, nulls_last=True)
    limit = q.limit if q.limit_given else L.MAX_TOP_K
    out = out.head(limit)
    out = R.jsonable(out)
    groups = []
    for r in out.iter_rows(named=True):
        grp = {}
        for g in q.group_by:
            v = r[f"__g_{g.name}"]
            if v is not None:
                grp[g.name] = v
        for label, a in q.aggregate_by:
            v = r[label]
            if a.kind == "Sum" and schema.get(a.attr, {}).get("type") == "float":
                v = float(v or 0.0)
            grp[label] = v if v is not None else 0
        groups.append(grp)
    return groups


# --------------------------------------------------------------------------- response shaping: puffer_cli.response
# the old names, for callers not yet moved to puffer_cli.response:
row_columns = R.row_columns    # index.topk
shape_rows = R.result_rows     # tests/test_query_limits.py
_result_body = R.result_body   # tests/test_index.py


def _returned_bytes(res: QueryResult) -> int:
    return int(res.rows.estimated_size()) if res.rows is not None else 0


def _performance(src: Source, io, t0: float, t_exec: float) -> dict:
    now = time.perf_counter()
    docs = src.docs
    if src.cache_temperature is not None:
        temp, ratio = src.cache_temperature, (src.cache_hit_ratio if src.cache_hit_ratio is not None else 1.0)
    else:
        cold = io.bytes_read > 0
        temp, ratio = ("cold", 0.0) if cold else ("hot", 1.0)
    return {
        "approx_namespace_size": src.approx_namespace_size if src.approx_namespace_size is not None else docs.height,
        "exhaustive_search_count": (src.exhaustive_search_count if src.exhaustive_search_count is not None
                                    else docs.height),
        "query_execution_ms": int(round((now - t_exec) * 1000)),
        "server_total_ms": int(round((now - t0) * 1000)),
        "cache_temperature": temp,
        "cache_hit_ratio": ratio,
        "object_store_requests": io.requests,
        "object_store_bytes_read": io.bytes_read,
    }


def run_query(ns, body: Mapping) -> dict:
    """Run one turbopuffer query body against namespace ``ns``; the response JSON."""
    t0 = time.perf_counter()
    q = Q.parse_query(body)
    with io_scope() as io:
        L.check_deadline()
        src = load_source(ns, q.consistency, [q])
        L.check_deadline()
        t_exec = time.perf_counter()
        Q.check_query(q, src.schema, src.metric)
        res = src.result(0, q)
        L.check_deadline()
        out = R.result_body(q, res)
    out["billing"] = {"billable_logical_bytes_queried": src.queried(),
                      "billable_logical_bytes_returned": _returned_bytes(res)}
    out["performance"] = _performance(src, io, t0, t_exec)
    return out


def rrf_fuse(ranked: list[list[Any]], k: int, weights: tuple[float, ...] | None) -> list[tuple[Any, float]]:
    """Reciprocal-rank fusion: score(d) = sum_i w_i / (k + rank_i(d)), rank from 1.
    Returns (id, score) sorted by score desc, then id asc."""
    scores: dict[Any, float] = {}
    for i, ids in enumerate(ranked):
        w = weights[i] if weights else 1.0
        for r, d in enumerate(ids, start=1):
            scores[d] = scores.get(d, 0.0) + w / (k + r)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def run_multi(ns, body: Mapping) -> dict:
    """Up to 16 queries over ONE snapshot; optional RRF fusion (``rerank_by``)."""
    t0 = time.perf_counter()
    mq = Q.parse_multi(body)
    with io_scope() as io:
        L.check_deadline()
        src = load_source(ns, mq.consistency, mq.queries, multi=True)
        t_exec = time.perf_counter()
        results = []
        returned = 0
        for i, q in enumerate(mq.queries):
            L.check_deadline()
            Q.check_query(q, src.schema, src.metric, where=f"queries[{i}]")
            results.append(src.result(i, q))
        enc = mq.vector_encoding if mq.vector_encoding != "float" else None
        L.check_deadline()
        if mq.rrf is None:
            out_results = [R.result_body(q, r, enc or q.vector_encoding) for q, r in zip(mq.queries, results)]
            returned = sum(_returned_bytes(r) for r in results)
        else:
            k, w = mq.rrf
            per_query_rows = [R.result_rows(q, r, enc or q.vector_encoding) for q, r in zip(mq.queries, results)]
            fused = rrf_fuse([[row["id"] for row in rows] for rows in per_query_rows], k, w)
            limit = mq.limit if mq.limit is not None else max(q.limit for q in mq.queries)
            fused = fused[mq.offset:mq.offset + limit]
            first: dict[Any, dict] = {}
            for rows in per_query_rows:
                for row in rows:
                    if row["id"] not in first:
                        first[row["id"]] = {k_: v for k_, v in row.items() if k_ not in ("id", "$dist")}
            rows = [{"id": d, "$dist": s, **first[d]} for d, s in fused]
            out_results = [{"rows": rows}]
            returned = sum(_returned_bytes(r) for r in results)
    return {
        "results": out_results,
        "billing": {"billable_logical_bytes_queried": src.queried() * len(mq.queries),
                    "billable_logical_bytes_returned": returned},
        "performance": _performance(src, io, t0, t_exec),
    }


def run(ns, body: Mapping) -> dict:
    """Dispatch: a body with ``queries`` is a multi-query."""
    if isinstance(body, Mapping) and "queries" in body:
        return run_multi(ns, body)
    return run_query(ns, body)
