"""Exact query execution over a frame of live documents.

    execute(q, docs, schema, metric, bm25_stats=None) -> QueryResult   # pure
    run_query(ns, body) -> dict      # turbopuffer query response
    run_multi(ns, body) -> dict      # turbopuffer multi-query response (one snapshot)

Response bodies are shaped by :mod:`puffer_cli.search.response` (rows, RFC 3339, base64); the views
turn them into bytes with ``response.render``.

Execution order: filters (polars) -> scoring of the surviving rows -> top-k
with ties broken by id ascending -> ``offset`` / ``limit.per`` -> rows.
Aggregations are computed over every document that passes the filters.

Vector scans keep, per frame, a contiguous float32 matrix (row-normalised for
cosine, plus squared norms for euclidean) so a query is one BLAS matvec and an
``argpartition``; the few candidates near the k-th distance are then rescored
in float64, so ids and distances are exact (ties included).  BM25 uses cached
postings (:mod:`puffer_cli.text.bm25`).

All data access goes through :func:`load_source` (one function, so an index +
WAL-tail source can replace it without touching the rest).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from puffer_cli import limits as L
from puffer_cli.query import parse as Q
from puffer_cli.schema.types import SPARSE
from puffer_cli.search import attributes as C
from puffer_cli.search import multivector as MV
from puffer_cli.search import response as R
from puffer_cli.search.scoring import QueryResult, Source, filter_mask, id_key, rank_vector, text_eval, topk_order
from puffer_cli.store import io_scope
from puffer_cli.text import bm25 as B

__all__ = ["load_source", "execute", "run_query", "run_multi"]


def load_source(ns, consistency: str, queries=None, multi: bool = False) -> Source:
    """The documents a query runs over.  With an index (meta.json ``index``) and the
    ``queries`` to answer: a small candidate frame from the index segments plus
    the WAL tail after ``covers_through_seq`` (strong) or the index only
    (eventual), with namespace-global BM25 statistics (puffer_cli/index/reader.py).
    Otherwise the replayed WAL state at the head."""
    if queries is not None:
        from puffer_cli.search.reader import indexed_source

        src = indexed_source(ns, consistency, queries, multi)
        if src is not None:
            return src
    docs, head = ns.docs()  # lists the WAL head once, replays (incrementally) to it; NamespaceNotFound
    return Source(docs, head.schema, head.metric, head.seq)


def _result(src: Source, i: int, q: Q.Query) -> QueryResult:
    """Query ``i``'s result: prepared by the source (index fast path), else the exact engine over ``docs``."""
    if src.prepared is not None and src.prepared[i] is not None:
        res = src.prepared[i]
    else:
        res = execute(q, src.docs, src.schema, src.metric, bm25_stats=src.bm25_stats)
        if q.compute:
            res.computed = C.computed(q, res.rows, src.schema, src.metric)
    res.sparse = tuple(a for a, s in src.schema.items() if s.get("type") == SPARSE)
    return res


def _metric(q: Q.Query, metric: str | None) -> str:
    return q.distance_metric or metric or "cosine_distance"


def _order_positions(frame: pl.DataFrame, rb: Q.OrderBy) -> np.ndarray:
    """Every row of ``frame`` in ``rb``'s order (missing last, ties by id asc), as positions:
    sorted once per frame (polars, the key columns plus a row number) and cached with it
    (frames are immutable), so a repeated order over one snapshot is a gather.  The order is
    total (ids are unique), so a filter's survivors keep their relative order in it."""

    def build() -> np.ndarray:
        by = [a for a, _ in rb.keys]
        desc = [d for _, d in rb.keys]
        if "id" not in by:
            by.append("id")
            desc.append(False)
        cols = [c for c in by if c in frame.columns]
        keys = frame.select(*cols, pl.int_range(pl.len(), dtype=pl.Int64).alias("__r"))
        keys = keys.sort(cols, descending=[desc[by.index(c)] for c in cols], nulls_last=True, maintain_order=True)
        return keys["__r"].to_numpy()

    return B.frame_cached(frame, ("order", rb.keys), build)


def _apply_per(frame: pl.DataFrame, attrs: tuple[str, ...], limit: int) -> pl.Series:
    """Mask keeping at most ``limit`` rows per value of ``attrs`` (in frame order)."""
    keys = [pl.col(a) if a in frame.columns else pl.lit(None) for a in attrs]
    return frame.select((pl.int_range(pl.len()).over(keys) < limit).alias("k")).to_series()


def _gather(docs: pl.DataFrame, pos: np.ndarray) -> pl.DataFrame:
    return docs.gather(pl.Series(pos, dtype=pl.Int64)) if len(pos) else docs.clear()


def execute(
    q: Q.Query, docs: pl.DataFrame, schema: dict, metric: str | None, *, bm25_stats: B.Bm25Stats | None = None
) -> QueryResult:
    """Evaluate ``q`` exactly over ``docs`` (live documents, columns per ``schema``)."""
    n = docs.height
    L.check_deadline()
    mask = filter_mask(docs, q.filters, schema) if q.filters is not None and n else None
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
        pos = _order_positions(docs, rb) if n else np.zeros(0, dtype=np.int64)
        if mask is not None:
            pos = pos[mask[pos]]
        dist = None
        frame = _gather(docs, pos if per else pos[:kk])
    else:
        if isinstance(rb, Q.VectorRank) and MV.is_multi(schema, rb):
            pos, dist = MV.rank_exact(rb, docs, _metric(q, metric), cand, kk) if n else (np.zeros(0, int), np.zeros(0))
        elif isinstance(rb, Q.VectorRank):
            pos, dist = rank_vector(q, rb, docs, _metric(q, metric), cand, kk) if n else (np.zeros(0, int), np.zeros(0))
        else:
            if n:
                s, m = text_eval(rb.expr, docs, schema, bm25_stats)
                if mask is not None:
                    m &= mask
                elig = np.flatnonzero(m)
                top = topk_order(-s[elig], id_key(docs)[elig], kk)
                pos, dist = elig[top], s[elig][top]
            else:
                pos, dist = np.zeros(0, dtype=np.int64), np.zeros(0)
        frame = _gather(docs, pos)
    L.check_deadline()
    if per:
        assert q.per_attributes is not None and q.per_limit is not None  # the parser sets both
        keep = _apply_per(frame, q.per_attributes, q.per_limit)
        frame = frame.filter(keep)
        if dist is not None:
            dist = dist[keep.to_numpy()]
    frame = frame.slice(q.offset, q.limit)
    if dist is not None:
        dist = dist[q.offset : q.offset + q.limit]
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
        e = pl.col(a.attr).sum() if a.attr is not None and a.attr in cols else pl.lit(0)
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
row_columns = R.row_columns  # index.topk
shape_rows = R.result_rows  # tests/test_query_limits.py
_result_body = R.result_body  # tests/test_index.py


def _returned_bytes(src: Source, q, res: QueryResult) -> int:
    return R.returned_bytes(q, res, src.schema)


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
        "exhaustive_search_count": (
            src.exhaustive_search_count if src.exhaustive_search_count is not None else docs.height
        ),
        "query_execution_ms": int(round((now - t_exec) * 1000)),
        "server_total_ms": int(round((now - t0) * 1000)),
        "cache_temperature": temp,
        "cache_hit_ratio": ratio,
        "object_store_requests": io.requests,
        "object_store_round_trips": io.round_trips,
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
        res = _result(src, 0, q)
        L.check_deadline()
        out = R.result_body(q, res)
    out["billing"] = {
        "billable_logical_bytes_queried": src.queried(),
        "billable_logical_bytes_returned": _returned_bytes(src, q, res),
    }
    out["performance"] = _performance(src, io, t0, t_exec)
    return out


def rrf_fuse(ranked: list[list[Any]], k: int, weights: tuple[float, ...] | None = None) -> list[tuple[Any, float]]:
    """Reciprocal-rank fusion: score(d) = sum_i w_i / (k + rank_i(d)), rank from 1.
    Returns (id, score) sorted by score desc, then id asc (the one fusion: the server's
    multi-query ``rerank_by`` and the CLI's hybrid query)."""
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
            results.append(_result(src, i, q))
        enc = mq.vector_encoding if mq.vector_encoding != "float" else None
        L.check_deadline()
        if mq.rrf is None:
            out_results = [R.result_body(q, r, enc or q.vector_encoding) for q, r in zip(mq.queries, results)]
            returned = sum(_returned_bytes(src, q, r) for q, r in zip(mq.queries, results))
        else:
            k, w = mq.rrf
            per_query_rows = [R.result_rows(q, r, enc or q.vector_encoding) for q, r in zip(mq.queries, results)]
            fused = rrf_fuse([[row["id"] for row in rows] for rows in per_query_rows], k, w)
            limit = mq.limit if mq.limit is not None else max(q.limit for q in mq.queries)
            fused = fused[mq.offset : mq.offset + limit]
            first: dict[Any, dict] = {}
            for rows in per_query_rows:
                for row in rows:
                    if row["id"] not in first:
                        first[row["id"]] = {k_: v for k_, v in row.items() if k_ not in ("id", "$dist")}
            rows = [{"id": d, "$dist": s, **first[d]} for d, s in fused]
            out_results = [{"rows": rows}]
            returned = sum(_returned_bytes(src, q, r) for q, r in zip(mq.queries, results))
    return {
        "results": out_results,
        "billing": {
            "billable_logical_bytes_queried": src.queried() * len(mq.queries),
            "billable_logical_bytes_returned": returned,
        },
        "performance": _performance(src, io, t0, t_exec),
    }


def explain(ns, body: Mapping) -> list[str]:
    """The cold read plan of one query body as lines (``explain_query``; search/plan.py), or
    one line saying there is no index (every row is then scored from the WAL)."""
    from puffer_cli.search.plan import plan_lines
    from puffer_cli.search.reader import view_for

    q = Q.parse_query(body)
    view = view_for(ns, q.consistency)
    if view is None:
        return ["plan: no index: the WAL is replayed and every row scored exactly"]
    Q.check_query(q, view.schema, view.metric)
    return plan_lines(view, q)


def run(ns, body: Mapping) -> dict:
    """Dispatch: a body with ``queries`` is a multi-query."""
    if isinstance(body, Mapping) and "queries" in body:
        return run_multi(ns, body)
    return run_query(ns, body)
