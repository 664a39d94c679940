"""Reading an index generation, and the indexed query fast path.

``open_generation(ns, pointer)`` opens the manifest's segments lazily (each file
is fetched into the local cache the first time a query needs it).
``IndexedView`` = a generation + (strong consistency) the WAL tail after
``covers_through_seq`` folded onto the index rows it touches.  For one query,
``IndexedView.candidates(q)`` returns a small frame of candidate documents
(index rows minus tombstones minus rows superseded by the tail, plus every live
tail row) and the namespace-global BM25 statistics; the exact engine then ranks
that frame, so results, distances and scores are the exact engine's:

* vector rank: per segment, the IVF probe (with a filter: the nearest lists holding
  rows that pass, scoring only those; ``search/filtered.py``), or exact search over
  the filtered rows when the cost model finds it cheaper (or the rank is ``kNN``);
  format-1 segments: HNSW over-fetch + post-filter; the exact f32 vectors of the
  candidates go to the engine for exact distances;
* BM25 (and Sum/Max/Product of BM25): per segment the block index gives the rows
  that can reach the top k (block-max pruning on global statistics; older
  generations: tantivy over-fetches); the engine re-scores them exactly;
* order by attribute: polars top-k per segment on the doc store;
* anything else (aggregations, filter-only, per-attribute limits): every
  filtered row of the doc store (attributes only unless vectors are asked for).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from puffer_cli import cores
from puffer_cli import limits as L
from puffer_cli.index import ann, fts_hint, ivf
from puffer_cli.index import docs as D
from puffer_cli.index import ranged as RG
from puffer_cli.index.manifest import fts_sig_of
from puffer_cli.index.segment import GENS, DfCombo, Generation, Segment, generation_open, open_generation_with
from puffer_cli.index.tail import Tail, cached_tail, tail_for
from puffer_cli.query import model
from puffer_cli.schema import frames as frames_mod
from puffer_cli.schema import spec as S
from puffer_cli.schema import types
from puffer_cli.search.postings import seed_postings
from puffer_cli.search.scoring import f32_tolerance
from puffer_cli.store import run_lanes
from puffer_cli.store.filecache import get_cache

if TYPE_CHECKING:
    from puffer_cli.text.bm25 import Bm25Stats, FieldStats

EVENTUAL_MAX_STALENESS_S = 60.0  # eventual queries see writes at most this old (turbopuffer: 1 minute)
EXACT_MAX_ROWS = 20_000  # filtered rows at or below this: exact vector search
EXACT_MAX_FRACTION = 0.05  # ... or a filter keeping at most this fraction of a segment
HNSW_OVERFETCH = 2  # HNSW candidates kept per requested result (exact re-rank)
LISTS_AHEAD_STATS = 0.7  # ... from per-list statistics (index/liststats.py): this share of their estimate
LISTS_AHEAD_MARGIN = 0.9  # lists read ahead of a filter's mask: for a fraction this much below the estimate
BM25_MIN_CANDIDATES = 100  # tantivy candidates per segment at least
BM25_OVERFETCH = 10  # ... and at least this many per requested result


# ---------------------------------------------------------------- the view
@dataclass
class Candidates:
    docs: pl.DataFrame
    schema: dict
    metric: str | None
    bm25_stats: Bm25Stats | None
    namespace_rows: int
    exhaustive: int = 0  # rows scored exactly (exact vector search, full scans, tail)
    ann_probed: int = 0
    tokens: dict = field(default_factory=dict)  # FTS field -> analysed tokens per row of docs
    query_terms: dict = field(default_factory=dict)  # FTS field -> terms the query looks up


@dataclass
class Bm25Clause:
    """A pruned BM25 clause of one leaf, shared by a query's segments (IndexedView.bm25_clause):
    its field (``attr``), query tokens, weight per token (its multiplicity), namespace-global statistics
    of the field, BM25 parameters, and the idf of the tokens found so far in a segment."""

    attr: str
    tokens: list[str]
    weights: dict[str, float]
    stats: FieldStats
    k1: float
    b: float
    idf: dict[str, float] = field(default_factory=dict)


class IndexedView:
    """A generation (+ tail) ready to answer queries."""

    def __init__(self, gen: Generation, tail: Tail | None):
        self.gen = gen
        self.tail = tail
        self.schema = tail.schema if tail else gen.schema
        self.metric = (tail.metric if tail else None) or gen.metric
        self.seq = tail.seq if tail else gen.covers

    @property
    def namespace_rows(self) -> int:
        n = self.gen.live_rows
        if self.tail is not None:
            n -= sum(len(v) for v in self.tail.hidden.values())
            n += self.tail.docs.height
        return n

    # -- masks ----------------------------------------------------------------
    def _visible(self, i: int) -> np.ndarray:
        seg = self.gen.segments[i]
        al = seg.alive()
        if self.tail is not None and i in self.tail.hidden:
            al = al.copy()
            al[self.tail.hidden[i]] = False
        return al

    def _filter_mask(self, i: int, filt, also: list[str] | None = None) -> np.ndarray:
        """Visible rows of segment ``i`` passing ``filt``.  ``also``: columns a column-store
        segment reads with the filter's (same row groups, same round trip) for later use."""
        L.check_deadline()  # called once per segment by every query path
        vis = self._visible(i)
        if filt is None:
            return vis
        from puffer_cli.filters import compile_filter, filter_mask

        seg = self.gen.segments[i]
        if seg.docs is not None:
            key = self._mask_key(filt)
            return vis & seg.memo_mask(key, partial(self._column_filter_mask, seg, filt, also or []))
        a = seg.attrs()
        sch = {k: v for k, v in self.schema.items() if not S.is_vector(v["type"])}
        missing = [c for c in sch if c not in a.columns]
        if missing:
            a = frames_mod.align(a, sch)
        return vis & filter_mask(a, compile_filter(filt, self.schema))

    def _mask_key(self, filt) -> str:
        """A filter's memo key: its JSON and the schema of the attributes it names (a type
        change in the WAL tail changes how it binds)."""
        import json

        from puffer_cli.filters.tree import attributes

        types_ = {a: self.schema.get(a) for a in sorted(attributes(filt))}
        return json.dumps([filt, types_], sort_keys=True, default=repr)

    def _column_filter_mask(self, seg: Segment, filt, also: list[str]) -> np.ndarray:
        """The filter over a column-store segment: only the filter's columns, only the row
        groups whose statistics admit a match (the others are all false)."""
        from puffer_cli.filters import bind_filter, compile_filter, filter_mask
        from puffer_cli.filters.tree import attributes

        assert seg.docs is not None
        groups = D.group_mask(seg.docs, seg.rows, bind_filter(filt, self.schema))
        names = sorted(a for a in attributes(filt) if a in self.schema and not S.is_vector(self.schema[a]["type"]))
        if not groups.any():
            return np.zeros(seg.rows, bool)
        expr = compile_filter(filt, self.schema)
        names = names + [c for c in also if c not in names]
        if groups.all():
            return filter_mask(seg.columns(names), expr)
        rows = seg.group_rows_mask(groups)
        out = np.zeros(seg.rows, bool)
        out[rows] = filter_mask(seg.columns(names, groups), expr)
        return out

    # -- statistics ---------------------------------------------------------------
    def bm25_stats(self, fields: list[str]):
        from puffer_cli.text.bm25 import Bm25Stats, FieldStats, stats_from_frame

        out = {}
        for f in fields:
            L.check_deadline()
            spec = self.schema.get(f)
            if not spec or not spec.get("full_text_search"):
                continue
            opts = spec["full_text_search"]
            base = self.gen.field_stats(f)
            if base is None:  # field not indexed in this generation: no global stats here
                return None
            if self.tail is None or (self.tail.docs.height == 0 and self.tail.superseded is None):
                out[f] = base
                continue
            add = stats_from_frame(self.tail.docs, f, opts).fields[f]
            sub = (
                stats_from_frame(self.tail.superseded, f, opts).fields[f]
                if self.tail.superseded is not None and self.tail.superseded.height
                else None
            )
            out[f] = FieldStats(
                base.n_docs + add.n_docs - (sub.n_docs if sub else 0),
                base.total_tokens + add.total_tokens - (sub.total_tokens if sub else 0),
                DfCombo(base.df, add.df, sub.df if sub else None),
            )
        return Bm25Stats(out)

    # -- candidates -------------------------------------------------------------------
    def needed_columns(self, q) -> list[str] | None:
        """The attribute columns the exact engine reads from query ``q``'s candidate frame
        (the response's, the filter's, order keys, groups, aggregates, per-attribute
        limits), or None for every column (text ranking, highlights: read all)."""
        from puffer_cli.filters.tree import attributes
        from puffer_cli.query import parse as Q
        from puffer_cli.search.response import row_columns

        if isinstance(q.rank_by, Q.TextRank) or any(not hasattr(e, "vector") for _n, e in q.compute):
            return None
        order = frames_mod.column_order(self.schema)
        # an aggregation returns no rows and the WAL tail hides replaced rows by position
        # (``_visible``): it reads no id column
        want = set() if q.aggregate_by else {"id", *row_columns(q, order)}
        if q.filters is not None:
            want |= attributes(q.filters)
        if isinstance(q.rank_by, Q.OrderBy):
            want |= {a for a, _d in q.rank_by.keys}
        want |= {g.attr for g in q.group_by}
        want |= {a.attr for _n, a in q.aggregate_by if a.attr is not None}
        want |= set(q.per_attributes or ())
        if not want:  # a frame of no column has no rows: a plain Count reads the ids
            want.add("id")
        if isinstance(q.rank_by, Q.VectorRank):
            want.add(q.rank_by.attr)  # a multi-vector attribute is a column of the doc store (no-op for vectors)
        return [c for c in order if c in want and not S.is_vector(self.schema[c]["type"])]

    def candidates(self, q, columns: list[str] | None | bool = True) -> Candidates:
        """``columns``: the attribute columns the frame needs (None: all; True: from ``q``)."""
        from puffer_cli.query import parse as Q

        rb = q.rank_by
        k = q.limit + q.offset
        filt = q.filters
        need_vecs = self._included_vectors(q)
        cols_needed = self.needed_columns(q) if columns is True else columns
        assert not isinstance(cols_needed, bool)
        bm25_fields: list[str] = []
        simple = q.per_attributes is None and not q.aggregate_by and not q.group_by
        metric = q.distance_metric or self.metric

        def seg_vector(i: int):
            pos, ex, pr, _approx = self.vector_candidates(i, rb, filt, k, metric)
            return pos, ex, pr, sorted(set(need_vecs) | {rb.attr})

        def seg_bm25(i: int):
            pos = self.bm25_candidates(i, leaves, filt, k)
            ex = 0
            if pos is None:  # segment cannot answer from tantivy: scan it
                pos = np.nonzero(self._filter_mask(i, filt))[0]
                ex = len(pos)
            return pos, ex, 0, need_vecs

        def seg_order(i: int):
            return self._order_candidates(i, rb, filt, k), 0, 0, need_vecs

        def seg_sparse(i: int):
            pos = self.sparse_candidates(i, rb.expr, filt, k)
            ex = 0
            if pos is None:  # no sparse index in this segment: scan it
                pos = np.nonzero(self._filter_mask(i, filt))[0]
                ex = len(pos)
            return pos, ex, 0, need_vecs

        def seg_scan(i: int):  # every filtered row: its columns come with the filter's
            also = list(self.gen.segments[i]._attr_schema()) if cols_needed is None else cols_needed
            pos = np.nonzero(self._filter_mask(i, filt, also))[0]
            dense = isinstance(rb, Q.VectorRank) and S.is_vector(self.schema.get(rb.attr, {}).get("type", ""))
            vf = sorted(set(need_vecs) | ({rb.attr} if dense else set()))
            return pos, len(pos), 0, vf

        if simple and isinstance(rb, Q.VectorRank) and S.is_vector(self.schema.get(rb.attr, {}).get("type", "")):
            one = seg_vector
        elif simple and isinstance(rb, Q.TextRank) and self.pure_bm25(rb.expr):
            leaves = list(self.bm25_leaves(rb.expr))
            bm25_fields = sorted({lf.attr for lf in leaves})
            one = seg_bm25
        elif simple and isinstance(rb, Q.TextRank) and isinstance(rb.expr, Q.SparseKnn):
            one = seg_sparse
        elif simple and isinstance(rb, Q.OrderBy):
            one = seg_order
        else:
            if isinstance(rb, Q.TextRank):
                bm25_fields = sorted({lf.attr for lf in self.bm25_leaves(rb.expr)})
            one = seg_scan

        def run(i: int):
            L.check_deadline()
            pos, ex, pr, vf = one(i)
            seg = self.gen.segments[i]
            return pos, ex, pr, seg.frame(pos, vf, cols_needed) if len(pos) else None

        # on an object store the segments' reads overlap (one round trip per phase, not per segment)
        got = RG.parallel([partial(run, i) for i in range(len(self.gen.segments))], self.gen.store.is_remote)
        exhaustive = sum(g[1] for g in got)
        probed = sum(g[2] for g in got)
        parts = [g[3] for g in got if g[3] is not None]
        where = [(i, g[0]) for i, g in enumerate(got) if g[3] is not None]
        cols = frames_mod.column_order(self.schema)
        frames = [
            frames_mod.align(p.select([c for c in p.columns if c in self.schema]), self.schema, cols) for p in parts
        ]
        if self.tail is not None and self.tail.docs.height:
            frames.append(frames_mod.align(self.tail.docs, self.schema, cols))
            exhaustive += self.tail.docs.height
        docs = pl.concat(frames, how="vertical") if frames else frames_mod.align(pl.DataFrame(), self.schema, cols)
        stats = self.bm25_stats(bm25_fields) if bm25_fields else None
        toks = {f: t for f in bm25_fields if (t := self._tokens(f, where)) is not None}
        c = Candidates(docs, self.schema, self.metric, stats, self.namespace_rows, exhaustive, probed, toks)
        if isinstance(rb, Q.TextRank) and self.pure_bm25(rb.expr):
            from puffer_cli.text.bm25 import query_tokens

            for lf in self.bm25_leaves(rb.expr):
                spec = self.schema.get(lf.attr) or {}
                if spec.get("full_text_search"):
                    c.query_terms.setdefault(lf.attr, set()).update(
                        query_tokens(
                            lf.query if isinstance(lf.query, str) else list(lf.query), spec["full_text_search"]
                        )
                    )
        else:
            c.tokens = {}  # other text expressions (prefix) need every term: let the engine analyse
        return c

    def _tokens(self, f: str, where) -> list[list[str]] | None:
        """Analysed tokens of field f for the candidate rows (segments' stored tokens +
        the tail's, analysed once per tail), or None if some segment has none."""
        from puffer_cli.index.fts import SEP

        spec = self.schema.get(f)
        if not spec or not spec.get("full_text_search"):
            return None
        out: list[list[str]] = []
        for i, pos in where:
            col = self.gen.segments[i].tokens(f)
            if col is None:
                return None
            vals = col.gather(pl.Series(pos)).to_list()
            out.extend([] if v is None or v == "" else v.split(SEP) for v in vals)
        if self.tail is not None and self.tail.docs.height:
            key = ("tok", f, fts_sig_of(spec))
            cached = self.tail.extra.get(key)
            if cached is None:
                from puffer_cli.text import analyzer as T

                col = (
                    self.tail.docs.get_column(f)
                    if f in self.tail.docs.columns
                    else pl.Series([None] * self.tail.docs.height)
                )
                cached = self.tail.extra[key] = T.tokenize_many(col.to_list(), spec["full_text_search"])
            out.extend(cached)
        return out

    def _included_vectors(self, q) -> list[str]:
        """Vector fields the candidate frame needs: the included ones and those of VectorDist."""
        vf = D.vector_fields(self.schema)
        if not vf:
            return []
        computed = {e.attr for _n, e in q.compute if hasattr(e, "vector")}
        inc = q.include
        if q.exclude is not None:
            return [f for f in vf if f not in q.exclude or f in computed]
        if inc is True:
            return vf
        if isinstance(inc, tuple):
            return [f for f in vf if f in inc or f in computed]
        return [f for f in vf if f in computed]

    def vector_candidates(
        self, i: int, rb, filt, k: int, metric, ahead_also=None
    ) -> tuple[np.ndarray, int, int, np.ndarray | None]:
        """(row positions of segment ``i``'s candidates, rows scored exactly, rows scanned in
        IVF lists, the candidates' approximate distances or None when they are exact).
        ``ahead_also(pos)``: calls to run with a cold exact search's read of rows ``pos``
        (the returned attributes' chunks)."""
        seg = self.gen.segments[i]
        if rb.attr not in seg.meta.get("vectors", {}) or k <= 0:
            return np.zeros(0, np.int64), 0, 0, None
        ahead = None
        if filt is not None and seg.docs is not None and rb.method == "ANN" and not seg.docs_at_hand():
            # cold: the filter's column chunks and the IVF lists its selectivity probably
            # needs in one batch (one round trip); lists it did not foresee come after
            sel, ahead = RG.parallel(
                [partial(self._filter_mask, i, filt), partial(self._lists_ahead, seg, rb, filt, k)],
                self.gen.store.is_remote,
            )
        else:
            sel = self._filter_mask(i, filt)
        if filt is None:  # visible rows: live minus superseded by the tail (all of which are live)
            n_sel = seg.live_count() - (len(self.tail.hidden.get(i, ())) if self.tail is not None else 0)
        else:
            n_sel = int(np.count_nonzero(sel))
        if n_sel == 0:
            return np.zeros(0, np.int64), 0, 0, None
        from puffer_cli.search import filtered as FL

        q = rb.array()
        filtered_ann = filt is not None and rb.method == "ANN"
        iv = seg.ivf(rb.attr, filtered_ann)  # a filter: the filter codes, where the segment has them
        index = seg.ann(rb.attr) if iv is None else None
        frac = n_sel / max(1, seg.rows)
        few = filt is not None and n_sel <= max(EXACT_MAX_ROWS, EXACT_MAX_FRACTION * seg.rows)
        warm = not self.gen.store.is_remote or seg.vectors_at_hand(rb.attr)
        warm_exact = filt is not None and warm and n_sel <= EXACT_MAX_ROWS  # unplanned (filtered.py)
        plan = None
        if iv is not None:
            route, lists = iv
            opts = self._ivf_options(rb.attr, route.book is not None, route.filter_codes)
            if ahead is not None and (fetch := lists.fetcher()) is not None:
                lists = ivf.Lists(route, fetch=ivf.served(ahead, fetch))
            if filt is not None and rb.method == "ANN" and not warm_exact and self._ranks_lists(rb.attr, route):
                base = self._unfiltered_rows(rb.attr, seg, route, opts)
                plan = FL.plan(route, lists, q, sel, opts, frac, k * opts["rerank"], ahead, base)
        unindexed = rb.method != "ANN" or (iv is None and index is None) or metric != self.gen.metric
        if unindexed or n_sel <= k or warm_exact:
            exact = True
        elif plan is not None:  # filtered, cold: exact if few rows pass and their vectors cost less
            exact = few and not warm and FL.exact_cheaper(np.flatnonzero(sel), route, plan, ahead)
        else:
            # a few rows: exact, unless a cold remote segment would have to fetch its whole
            # vector file for them (its IVF lists are a quarter of that), or the segment follows
            # the book of a namespace the query probes only a part of (unfiltered): then its
            # share of the book's chosen lists, like every other segment (an incremental run's
            # small segments scanned whole cost bench_incremental's 2M namespace ~0.5 ms a query)
            exact = (
                n_sel <= EXACT_MAX_ROWS
                and (iv is None or seg.vectors_at_hand(rb.attr))
                and not (filt is None and iv is not None and self._book_probes_a_part(rb, iv[0], opts))
            ) or (filt is not None and n_sel <= EXACT_MAX_FRACTION * seg.rows)
        if exact:
            return self._exact(seg, rb.attr, np.flatnonzero(sel), q, k, metric, ahead_also), n_sel, 0, None
        if iv is not None:
            restrict = filt is not None or n_sel < seg.live_count() or seg.live_count() < seg.rows
            # shared routing (format 3): the lists the namespace-wide ranking picks; a filter:
            # the nearest lists holding rows that pass (FL.plan)
            if plan is not None:
                chosen, srt = plan.chosen, None
            elif route.book is not None:
                chosen, srt = self._shared_lists(rb, route, opts, frac, filt is None)
            else:
                chosen, srt = None, None
            # a filter keeping a fraction of the rows: scan that much more to find as many
            keep, approx, scanned = ivf.search(
                route,
                lists,
                q,
                k * opts["rerank"],
                min(1.0, opts["probe"] / frac),
                sel if restrict else None,
                min_rows=int(opts["probe_min_rows"] * (self._floor_scale(i) if route.book is None else 1.0) / frac),
                fill=opts["fill"],
                chosen=chosen,
                runs=plan.runs if plan is not None else None,
                sorted_chosen=srt,
                prune=opts["prune"] if filt is None else 0.0,
            )
            z = seg.unindexed_vectors(rb.attr)
            if len(z):  # zero vectors under cosine: exactly at distance 1
                z = z[sel[z]]
                keep, approx = np.concatenate([keep, z]), np.concatenate([approx, np.ones(len(z))])
            return keep, 0, scanned, approx
        return (*self._hnsw_candidates(seg, index, rb, sel, q, k, frac, metric, n_sel), None)

    def _floor_scale(self, i: int) -> float:
        """Under per-segment IVF (format 2) segment ``i`` scans at least ``probe_min_rows`` x
        sqrt(its share of the generation's rows): a segment holding a share s of the rows holds
        about s of the global top k, found with fewer rows than a whole namespace's, but a small
        segment needs a larger fraction of its rows for the same recall (the sqrt, as in
        :func:`ivf.probe_rows`).  A flat floor per segment scanned the small segments that
        incremental runs leave almost whole (bench_incremental at 2M: rows scanned x1.48 a
        fresh build's; x1.12 with the sqrt, x1.05 with the share itself at -0.010 recall).
        1 for a namespace of one segment, and for a segment of at most EXACT_MAX_ROWS rows
        (searched exactly when its vectors are at hand; through its lists, all of them, when
        a cold remote query would have to read its whole vector file)."""
        rows = self.gen.segments[i].rows
        if rows <= EXACT_MAX_ROWS:
            return 1.0
        total = self.__dict__.get("_rows_total")
        if total is None:
            total = self.__dict__["_rows_total"] = sum(int(s.rows) for s in self.gen.segments)
        return math.sqrt(min(1.0, rows / max(1, total)))

    def _lists_ahead(self, seg: Segment, rb, filt, k: int):
        """(byte ranges, bytes) of the IVF lists a filtered ANN query of ``seg`` probably
        probes (:func:`filtered.plan`), read before the filter's mask is known: the rows
        that can pass are those of the row groups whose statistics admit a match
        (``docs.group_mask``), a fraction ``docs.estimate_fraction`` of them (with
        ``LISTS_AHEAD_MARGIN`` to spare) is assumed to pass in each list, or, where the route
        holds per-list statistics covering the filter (index/liststats.py), each list's own
        expected share.  None when the segment would likely be searched exactly (few rows
        pass), or has no ranged lists.  Planning only: the search runs as it would without
        it.  Returns (byte ranges, bytes, whether per-list statistics placed them)."""
        from puffer_cli.filters import bind_filter
        from puffer_cli.search import filtered as FL

        iv = seg.ivf(rb.attr, True)  # the filter codes, where the segment has them
        if iv is None or iv[1].fetcher() is None or seg.rows == 0 or seg.docs is None:
            return None
        route = iv[0]
        bound = bind_filter(filt, self.schema)
        est = D.estimate_fraction(seg.docs, seg.rows, bound) * seg.live_count() / seg.rows
        if not self._ranks_lists(rb.attr, route):  # follows a book other than the generation's
            return None
        if est * seg.rows <= max(k, FL.EXACT_RANGES_MAX):  # so few rows: exact, by range
            return None
        groups = D.group_mask(seg.docs, seg.rows, bound)
        can = seg.group_rows_mask(groups)
        share = float(np.count_nonzero(can)) / seg.rows
        if share == 0:
            return None
        est *= LISTS_AHEAD_MARGIN
        opts = self._ivf_options(rb.attr, route.book is not None, route.filter_codes)
        matches = ivf.list_matches(route, None, can)
        if matches is None:
            return None
        sizes = np.diff(route.offsets)
        fr = None if route.stats is None else route.stats.estimate(bound, self._types(), sizes)
        if fr is not None:  # per-list statistics (index/liststats.py): where the passing rows lie
            matches = sizes * fr * LISTS_AHEAD_STATS
        else:  # matching rows per list expected: the admitted rows times the share of them passing
            matches = matches * min(1.0, est / share)
        need = ivf.filtered_need(self._unfiltered_rows(rb.attr, seg, route, opts), est, k * opts["rerank"])
        chosen = route.matching_lists(route.prepare_query(rb.array()), matches, need)
        runs = ivf.bounded_runs(route, route.runs(chosen, min(opts["fill"], ivf.FILTER_FILL_MAX)))
        ranges = ivf.Lists.ranges(route, runs)
        fetch = iv[1].fetcher()
        return (ranges, fetch(ranges), fr is not None) if ranges and fetch is not None else None

    def _types(self) -> dict[str, str]:
        """Attribute -> its type name (scalar types are strings), once per query."""
        got = self.__dict__.get("_type_names")
        if got is None:
            got = self.__dict__["_type_names"] = {a: str(v.get("type")) for a, v in self.schema.items()}
        return got

    def _unfiltered_rows(self, f: str, seg: Segment, route, opts: dict) -> float:
        """Rows an unfiltered query scans in ``seg`` (what a filtered probe scales,
        ``ivf.filtered_need``): its own IVF's ``ivf.unfiltered_rows`` (format 2), or its share
        of the rows the namespace's book probes (format 3, ``ivf.probe_rows``)."""
        got = None if route.book is None else self._followed_book(f, route)
        if got is None:
            return ivf.unfiltered_rows(seg.rows, opts)
        total = self._book_total(f)
        return ivf.probe_rows(total, opts["probe"], opts["probe_min_rows"]) * seg.rows / max(1, total)

    def _ivf_options(self, f: str, shared: bool, filter_codes: bool = False) -> dict:
        """``ivf.options`` of field ``f``, once per query (a 30M namespace has 30 segments)."""
        cache = self.__dict__.setdefault("_opts", {})
        key = (f, shared, filter_codes, ivf.forced())
        got = cache.get(key)
        if got is None:
            got = cache[key] = ivf.options(self.schema.get(f), shared=shared, filter_codes=filter_codes)
        return got

    def _ranks_lists(self, f: str, route) -> bool:
        """Can ``route`` rank its lists for a query (its own centroids, or the generation's
        book attached: format 3), as the filtered planner needs?"""
        if route.book is None:
            return True
        got = self._followed_book(f, route)
        return got is not None and route.attach(got[0])

    def _followed_book(self, f: str, route) -> tuple[ivf.Book, np.ndarray] | None:
        """The generation's book of field ``f`` and its members per list, if ``route``
        follows it (None: no book, or a segment still following an older one)."""
        got = self.gen.book(f)
        return got if got is not None and got[0].id == route.book else None

    def _book_total(self, f: str) -> int:
        """Members of every list of field ``f``'s book (where its last list ends)."""
        ends = self.gen.book_ends(f)
        return int(ends[-1]) if len(ends) else 0

    def stack_plan(self, rb, filt, k: int, metric) -> tuple[list[int], Callable[[], dict]] | None:
        """ANN under shared routing with a list-major stack (index/stack.py): the segments it
        covers and a call giving their candidates from one search of the stack, as
        :meth:`vector_candidates` would give each ({segment: (row positions, 0 rows scored
        exactly, rows scanned: the stack's on the first, approximate distances)}); run in the
        batch of the other segments' list reads (cold: the stack's ranged reads are that
        round trip's).  A filtered query uses it warm (the stack memory-mapped) when more
        than EXACT_MAX_ROWS rows pass in a covered segment (:meth:`_stack_filtered`); cold,
        each segment plans its own lists.  None when the query does not use one."""
        if rb.method != "ANN" or metric != self.gen.metric or k <= 0:
            return None
        got = self.gen.stack(rb.attr)
        if got is None:
            return None
        st, covered = got
        opts = self._ivf_options(rb.attr, True)
        if opts["fill"] > 0 or not self._book_probes_a_part(rb, st.route, opts):
            return None  # fill: lists between the chosen ones scanned too, each segment's own (ivf.Route.runs)
        if filt is None:
            return covered, partial(self._stack_candidates, st, covered, rb, k * opts["rerank"], opts)
        if not st.local:
            return None  # cold: each segment's planned lists, read by range (search/filtered.py)
        routes = [iv[0] if (iv := self.gen.segments[i].ivf(rb.attr)) is not None else None for i in covered]
        if any(r is None or not r.implicit or r.book != st.book for r in routes):
            return None  # (a stack's segments store their rows in list order: never, short of damage)
        # the masks of the covered segments: a remote store's column reads (not cached yet) at once
        lanes = partial(RG.parallel, remote=True) if self.gen.store.is_remote else cores.run
        hits = lanes([partial(self._passing_rows, i, filt) for i in covered])
        if all(len(h) <= max(k, EXACT_MAX_ROWS) for h in hits):
            return None  # few rows pass in every segment: each is searched exactly (vector_candidates)
        offsets = [r.offsets for r in routes if r is not None]
        return covered, partial(self._stack_filtered, st, covered, rb, offsets, hits, k * opts["rerank"], opts)

    def _passing_rows(self, i: int, filt) -> np.ndarray:
        """The visible rows of segment ``i`` passing ``filt``, ascending."""
        return np.flatnonzero(self._filter_mask(i, filt))

    def _stack_filtered(
        self, st, covered: list[int], rb, offsets: list[np.ndarray], hits: list[np.ndarray], want: int, opts: dict
    ) -> dict:
        """:meth:`_stack_candidates` of a filtered query, warm: one filtered probe of the stack
        (``stack.Stack.filtered_search``; ``hits``: each covered segment's visible passing
        rows), sized as ``filtered.plan`` sizes a segment's (``ivf.filtered_need`` of the
        covered rows' share of the namespace's probe)."""
        L.check_deadline()
        got = self._followed_book(rb.attr, st.route)
        assert got is not None  # stack_plan: the stack follows the generation's book
        book, sizes = got
        total = self._book_total(rb.attr)
        rows = int(st.bases[-1])
        frac = sum(len(h) for h in hits) / max(1, rows)
        base = ivf.probe_rows(total, opts["probe"], opts["probe_min_rows"]) * rows / total
        need = ivf.filtered_need(base, frac, want)
        q = rb.array()
        route = st.route
        if not route.attach(book):
            raise ValueError("the stack's route does not follow the generation's book")
        qq = route.prepare_query(q)
        try:
            g, d, scanned = st.filtered_search(
                q,
                lambda m: ivf.prefix(book.ranked(q, sizes, m), m),
                lambda matches: route.matching_lists(qq, matches, need),
                offsets,
                hits,
                need,
                want,
            )
        except ValueError as e:  # its records disagree with the segments' routes: damage
            raise self.gen.stack_damaged(rb.attr, e) from e
        s, r = st.segment_rows(g)
        segs = self.gen.segments
        out = {}
        for j, i in enumerate(covered):
            pos, approx = r[s == j], d[s == j]
            z = segs[i].unindexed_vectors(rb.attr)
            if len(z):  # zero vectors under cosine: exactly at distance 1
                z = z[np.isin(z, hits[j])]
                pos, approx = np.concatenate([pos, z]), np.concatenate([approx, np.ones(len(z))])
            out[i] = (pos.astype(np.int64), 0, scanned if j == 0 else 0, approx)
        return out

    def _stack_candidates(self, st, covered: list[int], rb, want: int, opts: dict) -> dict:
        L.check_deadline()
        _chosen, srt = self._shared_lists(rb, st.route, opts, 1.0)
        segs = self.gen.segments
        hidden = any(segs[i].live_count() < segs[i].rows for i in covered) or (
            self.tail is not None and any(i in self.tail.hidden for i in covered)
        )

        def visible(g: np.ndarray) -> np.ndarray:
            s, r = st.segment_rows(g)
            ok = np.ones(len(g), bool)
            for j in np.unique(s).tolist():
                m = s == j
                ok[m] = self._visible(covered[j])[r[m]]
            return ok

        g, d, scanned = st.search(rb.array(), srt, want, visible if hidden else None)
        s, r = st.segment_rows(g)
        out = {}
        for j, i in enumerate(covered):
            pos, approx = r[s == j], d[s == j]
            z = segs[i].unindexed_vectors(rb.attr)
            if len(z):  # zero vectors under cosine: exactly at distance 1
                z = z[self._visible(i)[z]]
                pos, approx = np.concatenate([pos, z]), np.concatenate([approx, np.ones(len(z))])
            out[i] = (pos.astype(np.int64), 0, scanned if j == 0 else 0, approx)
        return out

    def _book_probes_a_part(self, rb, route, opts: dict) -> bool:
        """Does ``route`` follow the generation's book, and does a query probe fewer than all
        of the namespace's rows (``ivf.probe_rows``)?"""
        got = None if route.book is None else self._followed_book(rb.attr, route)
        if got is None:
            return False
        total = self._book_total(rb.attr)
        return ivf.probe_rows(total, opts["probe"], opts["probe_min_rows"]) < total

    def _shared_lists(
        self, rb, route, opts: dict, frac: float, unfiltered: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """The lists a segment following the shared ``ivf.Book`` scans: the namespace's
        lists nearest the query (ranked once per query and field, whichever segment asks
        first) until they hold ``ivf.probe_rows`` of its rows (over every segment; divided
        by ``frac``, the share of this segment's rows a filter keeps; ``unfiltered``, with
        ``prune`` > 0: between 0.4x and 1.5x that, as far as ``ivf.pruned`` takes them, and
        past ``ivf.TAIL_KEEP`` x that only lists near the nearer ones in the file,
        ``ivf.near_tail``); nearest first, and sorted (once per query and share)."""
        got = self._followed_book(rb.attr, route)
        if got is None:  # not the generation's book: every list
            every = np.arange(route.nlist)
            return every, every
        book, sizes = got
        total = self._book_total(rb.attr)
        need = min(total, ivf.probe_rows(total, opts["probe"], opts["probe_min_rows"]) / max(frac, 1e-9))
        prune = opts["prune"] if unfiltered else 0.0  # a filter's share: a fixed probe (FL.plan's sizing)
        lo, deep = ivf.probe_span(need, total, opts["probe_min_rows"]) if prune > 0 else (need, need)
        key = (rb.attr, rb.array().tobytes())
        cache = self.__dict__.setdefault("_ranked", {})
        ent = cache.get(key)  # (the ranking, {(lists, near tail): those lists sorted})
        if ent is None or (len(ent[0][1]) and ent[0][1][-1] < deep and len(ent[0][0]) < book.nlist):
            ent = cache[key] = (book.ranked(rb.array(), sizes, int(math.ceil(deep))), {})
        tail = prune > 0 and ivf.TAIL_GAP_BYTES >= 0
        if prune > 0:
            cand = ent[0][0][: int(np.searchsorted(ent[0][1], deep)) + 1]
            chosen = ivf.pruned(ent[0], book.metric_distances(rb.array(), cand), lo, deep, prune)
            if tail:  # past the head, only lists near it in the file (a cold read: no far runs)
                top = (cand, ent[0][1][: len(cand)])
                gap = ivf.TAIL_GAP_BYTES // max(1, route.row_bytes)
                keep = max(ivf.TAIL_KEEP * need, lo)  # never under the pruned probe's floor
                chosen = ivf.near_tail(top, len(chosen), self.gen.book_ends(rb.attr), keep, gap)
        else:
            chosen = ivf.prefix(ent[0], need)
        srt = ent[1].get((len(chosen), tail))  # a prefix, or the near tail's lists: not the same set
        if srt is None:
            srt = ent[1][(len(chosen), tail)] = np.sort(chosen)
        return chosen, srt

    def _hnsw_candidates(self, seg, index, rb, sel, q, k, frac, metric, n_sel) -> tuple[np.ndarray, int, int]:
        """HNSW over-fetch + post-filter (format-1 segments, until the next run rebuilds them)."""
        want = k * HNSW_OVERFETCH
        fetch = int(math.ceil(want / frac * 1.2)) + 8
        total = len(index)
        while True:
            L.check_deadline()
            keys, _d = ann.search(index, q, min(fetch, total))
            keep = keys[sel[keys]]
            if len(keep) >= want or fetch >= total:
                keep = keep[:want]
                z = seg.unindexed_vectors(rb.attr)
                if len(z):
                    keep = np.concatenate([keep, z[sel[z]]])
                return keep, 0, len(keys)
            if fetch * 4 > total:
                pos = np.nonzero(sel)[0]  # post-filter keeps too few: exact is cheaper now
                return self._exact_top(seg, rb.attr, pos, q, k, metric), n_sel, len(keys)
            fetch *= 4

    def _exact(self, seg: Segment, f: str, pos: np.ndarray, q: np.ndarray, k: int, metric, ahead_also) -> np.ndarray:
        """The exact top ``k`` of rows ``pos`` (with float32 ties).  Cold and remote: a few
        rows' vectors, ids (and returned attributes) in one batch, so the re-rank reads
        nothing; many rows' vectors and ids in a bounded number of coalesced ranges
        (``Segment.rows_bounded``), of which the top rows' are kept for the re-rank."""
        from puffer_cli.search import filtered as FL

        if seg.vectors_at_hand(f) or not self.gen.store.is_remote:
            return self._exact_top(seg, f, pos, q, k, metric)
        if len(pos) <= FL.EXACT_RANGES_MAX and seg.rows_ahead_fit(f, len(pos)):
            seg.read_rows_ahead(f, pos, ahead_also(pos) if ahead_also is not None else ())
            return self._exact_top(seg, f, pos, q, k, metric)
        x, ids = seg.rows_bounded(f, pos, FL.EXACT_RANGES_MAX)
        top = np.sort(self._exact_top(seg, f, pos, q, k, metric, x))
        at = np.searchsorted(pos, top)
        if x is not None:
            seg.keep_ahead(f, top, x[at])
        if ids is not None:
            seg.keep_ahead("id", top, ids[at])
        return top

    def _exact_top(
        self, seg: Segment, f: str, pos: np.ndarray, q: np.ndarray, k: int, metric, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """``rows``: the vectors of ``pos`` when already read."""
        at_hand = rows is None and seg.vectors_at_hand(f)
        if rows is not None:
            x = rows
        elif at_hand:
            mat = seg.vectors(f)
            assert mat is not None  # f is a vector field of the segment
            x = np.asarray(mat[pos]) if len(pos) < seg.rows else np.asarray(mat)
        else:  # cold and large: the rows by range, not the file
            rows = seg.vector_rows(f, pos)
            assert rows is not None  # f is a vector field of the segment
            x = rows
        dims = x.shape[1] if x.ndim == 2 else 0
        if metric == "euclidean_squared":
            diff = x - q
            d = np.einsum("ij,ij->i", diff, diff)
        else:
            if at_hand:
                norms = seg.norms(f)
                nn = norms[pos] if len(pos) < seg.rows else norms
            else:
                nn = np.linalg.norm(x, axis=1)
            qd = np.asarray(q, np.float64)
            qn = float(np.sqrt(qd @ qd))  # in f64: |q| may pass the f32 range though each element does not
            qu = (qd / qn if qn > 0 else qd).astype(x.dtype)
            with np.errstate(invalid="ignore", divide="ignore"):
                # einsum, not BLAS: a threaded sgemv here took 10 ms for 20k rows under load
                dots = np.einsum("ij,j->i", x, qu)
                d = np.where((nn > 0) & (qn > 0), 1.0 - dots / nn, 1.0)  # a zero vector is at distance 1 (engine)
        d = np.where(np.isnan(d), np.inf, d)  # rows without this vector
        kk = min(k, len(d))
        if kk == 0:
            return np.zeros(0, np.int64)
        part = np.argpartition(d, kk - 1)[:kk] if kk < len(d) else np.arange(len(d))
        cut = d[part].max()
        if not np.isfinite(cut):
            return pos[part[np.isfinite(d[part])]]
        # keep everything within float32 error of the k-th (and its ties): the caller
        # re-scores these exactly in float64 and breaks ties by id
        tol = f32_tolerance(metric, dims, abs(float(cut)))
        return pos[np.flatnonzero(d <= cut + tol)]

    # -- BM25 -------------------------------------------------------------------------
    def bm25_leaves(self, e):
        from puffer_cli.query import parse as Q

        if isinstance(e, Q.Bm25):
            yield e
        for c in Q.text_children(e):  # Sum, Max, Product, Saturate, Decay, Dist
            yield from self.bm25_leaves(c)

    def pure_bm25(self, e) -> bool:
        from puffer_cli.query import parse as Q

        if isinstance(e, Q.Bm25):
            return not e.last_as_prefix
        if isinstance(e, (model.TextSum, model.TextMax)):
            return all(self.pure_bm25(c) for c in e.children)
        if isinstance(e, model.TextProduct):  # a weight <= 0 makes the lowest BM25 best: tantivy cannot propose
            return e.weight > 0 and self.pure_bm25(e.child)
        return False

    def bm25_blocks(self, i: int, leaves) -> dict | None:
        """Segment ``i``'s block indexes (fts.BlockIndex) of the leaves' FTS fields, or None
        when one of them has none (an older generation: tantivy)."""
        seg = self.gen.segments[i]
        out = {}
        for lf in leaves:
            spec = self.schema.get(lf.attr) or {}
            if not spec.get("full_text_search"):
                continue
            bi = seg.blocks(lf.attr)
            if bi is None:
                return None
            out[lf.attr] = bi
        return out

    def bm25_terms(self, leaves) -> list[tuple[str, list[str]]]:
        """(field, query tokens) per BM25 leaf on an FTS field."""
        from puffer_cli.text.bm25 import query_tokens

        out = []
        for lf in leaves:
            spec = self.schema.get(lf.attr) or {}
            if spec.get("full_text_search"):
                q = lf.query if isinstance(lf.query, str) else list(lf.query)
                out.append((lf.attr, query_tokens(q, spec["full_text_search"])))
        return out

    def bm25_clause(self, leaves, stats) -> Bm25Clause | None:
        """What every segment's share of a pruned pure BM25 expression of one leaf has in common
        (:class:`Bm25Clause`: its field, tokens, weights, idf and parameters, on namespace-global
        statistics), or None when it is not pruned (several leaves, no statistics or average
        length: :meth:`block_union`)."""
        from puffer_cli.text import analyzer as T

        lt = self.bm25_terms(leaves)
        if len(lt) != 1 or stats is None or stats.get(lt[0][0]) is None:
            return None
        f, toks = lt[0]
        st = stats.get(f)
        opts = T.normalize_fts_options(self.schema[f]["full_text_search"])
        w: dict[str, float] = {}
        for t in toks:
            w[t] = w.get(t, 0.0) + 1.0
        return Bm25Clause(f, toks, w, st, float(opts["k1"]), float(opts["b"]))

    def block_part(self, i: int, leaves, sel: np.ndarray, stats, clause: Bm25Clause | None = None):
        """Segment ``i``'s share of the block-max pruning of a pure BM25 expression of one leaf
        (fts.PrunePart: its query terms' postings, read here; exact on namespace-global
        statistics), or None when its candidates are every row holding a query term
        (:meth:`bm25_clause` is None, or no average length: :meth:`block_union`).  ``clause``:
        :meth:`bm25_clause` of ``leaves`` and ``stats`` when the caller holds it (a query's
        segments share it)."""
        from puffer_cli.index import fts as F

        c = clause if clause is not None else self.bm25_clause(leaves, stats)
        if c is None:
            return None
        st = c.stats
        blk = self.bm25_blocks(i, leaves)
        assert blk is not None
        posts = blk[c.attr].postings(c.tokens) if sel.any() and st.n_docs else {}
        if posts and st.avg_len <= 0:
            return None
        new = [t for t in posts if t not in c.idf]
        pre = getattr(st.df, "prefetch", None)
        if pre is not None and new:  # ranged df blocks: the terms' blocks in one batch
            pre(new)
        for t in new:
            df = st.doc_freq(t)
            c.idf[t] = float(np.log1p((st.n_docs - df + 0.5) / (df + 0.5)))
        lens = blk[c.attr].lengths() if posts else np.zeros(0)
        seg = self.gen.segments[i]
        every = sel is seg.alive() and seg.live_count() == seg.rows  # no filter, no deletes
        return F.PrunePart(posts, lens, None if every else sel, c.weights, c.idf, c.k1, c.b, st.avg_len)

    def block_candidates(self, i: int, leaves, sel: np.ndarray, k: int, stats) -> np.ndarray:
        """Rows of segment ``i`` (ascending, in ``sel``) holding the exact top ``k`` of the pure
        BM25 expression over ``leaves``, from the block indexes: one leaf is pruned block-max
        (:meth:`block_part`, fts.prune_many); else :meth:`block_union`."""
        from puffer_cli.index import fts as F

        part = self.block_part(i, leaves, sel, stats)
        return F.prune_many([part], k)[0] if part is not None else self.block_union(i, leaves, sel)

    def block_union(self, i: int, leaves, sel: np.ndarray) -> np.ndarray:
        """Every row of segment ``i`` in ``sel`` holding a query term of ``leaves`` (ascending):
        the candidates of several BM25 leaves, or of one without statistics."""
        from puffer_cli.index import fts as F

        blk = self.bm25_blocks(i, leaves)
        assert blk is not None
        lt = self.bm25_terms(leaves)
        if not sel.any() or not lt:
            return np.zeros(0, np.int64)
        # the fields' postings in one batch of reads (a round trip, not one a field)
        got = RG.parallel([partial(blk[f].postings, toks) for f, toks in lt], self.gen.store.is_remote)
        F.decode_terms([tb for posts in got for tb in posts.values()])  # one batch, not a term at a time
        rows = [tb.rows for posts in got for tb in posts.values()]
        out = np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
        return out[sel[out]]

    def bm25_candidates(self, i: int, leaves, filt, k: int) -> np.ndarray | None:
        from puffer_cli.text.bm25 import query_tokens

        seg = self.gen.segments[i]
        sel = self._filter_mask(i, filt)
        if not sel.any():
            return np.zeros(0, np.int64)
        if self.bm25_blocks(i, leaves) is not None:
            fields = sorted({lf.attr for lf in leaves})
            return self.block_candidates(i, leaves, sel, k, self.bm25_stats(fields))
        want = max(BM25_MIN_CANDIDATES, BM25_OVERFETCH * k)
        out = []
        for lf in leaves:
            spec = self.schema.get(lf.attr) or {}
            if not spec.get("full_text_search"):
                continue
            r = seg.fts(lf.attr)
            if r is None:
                return None
            toks = query_tokens(lf.query if isinstance(lf.query, str) else list(lf.query), spec["full_text_search"])
            limit = want
            while True:
                L.check_deadline()
                pos = r.search(toks, limit)
                keep = pos[sel[pos]]
                if len(keep) >= want or len(pos) < limit:
                    break
                limit *= 4
            out.append(keep)
        return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)

    # -- sparse vectors ----------------------------------------------------------------
    def sparse_candidates(self, i: int, e, filt, k: int) -> np.ndarray | None:
        """Rows of segment ``i`` that can hold the top ``k`` of SparseKNN ``e`` (index.sparse.prune,
        exact), or None when the segment has no sparse index of the field."""
        from puffer_cli.index import sparse as SP

        si = self.gen.segments[i].sparse(e.attr)
        if si is None:
            return None
        sel = self._filter_mask(i, filt)
        if not sel.any():
            return np.zeros(0, np.int64)
        posts = si.postings(list(e.dims))
        L.check_deadline()
        return SP.prune(posts, dict(zip(e.dims, e.weights)), sel, k)

    # -- order by ----------------------------------------------------------------------
    def _order_candidates(self, i: int, rb, filt, k: int) -> np.ndarray:
        seg = self.gen.segments[i]
        keys = [a_ for a_, _d in rb.keys]
        m = self._filter_mask(i, filt, keys + ["id"])  # the sort keys with the filter's columns
        have = seg.attrs().columns if seg.docs is None else list(seg.docs["columns"])
        if any(c not in have for c in keys) or any(S.is_vector(self.schema.get(c, {}).get("type", "")) for c in keys):
            return np.nonzero(m)[0]
        names = keys + (["id"] if "id" not in keys else [])
        if seg.docs is None:
            df = seg.attrs().select(names).with_row_index("__pos").filter(pl.Series(m))
        else:  # only the key columns of the row groups holding filtered rows
            gr = int(seg.docs["group_rows"])
            groups = np.zeros(seg.groups(), bool)
            groups[np.unique(np.flatnonzero(m) // gr)] = True
            at = np.flatnonzero(seg.group_rows_mask(groups))
            df = seg.columns(names, groups).with_columns(pl.Series("__pos", at, dtype=pl.UInt32))
            df = df.filter(pl.Series(m[at]))
        desc = [d for _a, d in rb.keys]
        by = keys + (["id"] if "id" not in keys else [])
        dsc = desc + ([False] if "id" not in keys else [])
        try:
            p1 = df.sort(by, descending=dsc, nulls_last=True).head(k)["__pos"]
            p2 = df.sort(by, descending=dsc, nulls_last=False).head(k)["__pos"]
        except Exception:  # unsortable column (lists): give the engine every row
            return np.nonzero(m)[0]
        return np.unique(np.concatenate([p1.to_numpy(), p2.to_numpy()])).astype(np.int64)


def view_for(ns, consistency: str, head=None, fresh_meta: bool = False, queries=()) -> IndexedView | None:
    """The indexed view of ``ns`` for a query, or None if it has no index.  ``queries``
    (parsed): a cold BM25 query's dictionary reads go with the manifest's (fts_hint)."""
    meta = ns.query_meta(fresh=fresh_meta)
    ptr = (meta or {}).get("index")
    if not ptr:
        return None
    # eventual: the index plus this process's WAL tail, relisted at most every
    # EVENTUAL_MAX_STALENESS_S (turbopuffer's bound), so writes show within that
    fresh = cached_tail(ns, ptr["manifest"], EVENTUAL_MAX_STALENESS_S) if consistency == "eventual" else None

    def listing():  # a WAL entry vanishing under the listing is not a missing index: re-raised below
        try:
            return ns.head(meta=meta)
        except FileNotFoundError as e:
            return e

    also = [listing] if fresh is None and head is None else []
    if queries and not generation_open(ns.store, ptr, ns.cache):
        also += fts_hint.hint_calls(ns.store, ns.cache or get_cache(), ptr, (meta or {}).get("schema") or {}, queries)
    # a query not ranked by a vector skips the vector routing the pointer prefetches
    vectors = not queries or any(isinstance(getattr(q, "rank_by", None), model.VectorRank) for q in queries)
    try:  # the WAL listing in the same batch as the manifest read (one round trip)
        gen, more = open_generation_with(ns.store, ptr, also, ns.cache, vectors)
    except FileNotFoundError:
        return None  # the generation was collected: no index view (the caller retries once)
    if more and isinstance(more[0], FileNotFoundError):
        raise more[0]
    tail = fresh if fresh is not None else tail_for(ns, gen, head or more[0])
    if any(fts_sig_of(tail.schema.get(f)) != fts_sig_of(gen.schema.get(f)) for f in {*tail.schema, *gen.schema}):
        return None  # the tail changed an analyzer: the index's tokens and statistics no longer apply
    return IndexedView(gen, tail)


@dataclass
class _Answers:
    """What the index gives for a list of queries: answered fast-path results (None for
    the queries that need the engine) and the candidate frames of those."""

    prepared: list = field(default_factory=list)
    parts: list = field(default_factory=list)
    toks: list = field(default_factory=list)
    qterms: dict = field(default_factory=dict)
    stats: Bm25Stats | None = None
    exhaustive: int = 0
    scored: int = 0


def _answer(view: IndexedView, queries, multi: bool) -> _Answers:
    from puffer_cli.query import parse as Q
    from puffer_cli.search import multivector as MV
    from puffer_cli.search import topk

    out = _Answers()
    columns: list[str] | None | bool = True  # one query: the columns it needs
    for i, q in enumerate(queries):
        L.check_deadline()
        Q.check_query(q, view.schema, view.metric, where=f"queries[{i}]" if multi else "")
    if len(queries) > 1:  # candidate frames are merged by id: every frame has the union of their columns
        needs = [view.needed_columns(q) for q in queries]
        union = {c for n in needs if n is not None for c in n}
        order = frames_mod.column_order(view.schema)
        columns = None if any(n is None for n in needs) else [c for c in order if c in union]

    def one(q):
        fast = (
            MV.indexed_topk
            if MV.eligible(view, q)
            else topk.vector_topk
            if topk.vector_eligible(view, q)
            else topk.text_topk
            if topk.text_eligible(view, q)
            else None
        )
        return (True, fast(view, q)) if fast is not None else (False, view.candidates(q, columns))

    # the sub-queries of a multi-query at once on an object store: their k-th round trips
    # overlap, so the batch takes the longest sub-query's round trips, not their sum
    got = run_lanes([partial(one, q) for q in queries], view.gen.store.is_remote)
    for fast, r in got:
        if fast:
            res, ex, n = r
            out.prepared.append(res)
            out.exhaustive += ex
            out.scored += n
            continue
        out.prepared.append(None)
        c = r
        out.parts.append(c.docs)
        out.toks.append(c.tokens)
        for f, ts in c.query_terms.items():
            out.qterms.setdefault(f, set()).update(ts)
        out.exhaustive += c.exhaustive
        if c.bm25_stats is not None:  # same view: per-field stats are identical, union the fields
            if out.stats is None:
                out.stats = c.bm25_stats
            else:
                out.stats.fields.update(c.bm25_stats.fields)
    return out


def _candidate_frame(view: IndexedView, ans: _Answers) -> tuple[pl.DataFrame, dict]:
    """One frame of the candidates of every engine-answered query (deduplicated by id), and
    the analysed tokens of its rows per FTS field."""
    parts, toks = ans.parts, ans.toks
    if not parts:
        return frames_mod.align(pl.DataFrame(), view.schema), {}
    if len(parts) == 1:
        return parts[0], toks[0]
    allf = set.intersection(*[set(t) for t in toks]) if all(toks) else set()
    both = pl.concat(parts, how="vertical").with_row_index("__r")
    first = both.unique(subset="id", keep="first", maintain_order=True)
    keep_rows = first["__r"].to_list()
    tokens = {}
    for f in allf:
        flat = [t for tk in toks for t in tk[f]]
        tokens[f] = [flat[r] for r in keep_rows]
    return first.drop("__r"), tokens


def indexed_source(ns, consistency: str, queries, multi: bool = False):
    """engine.Source for ``queries`` from the index (+ WAL tail when strong), or None
    when the namespace has no index (the engine then replays the WAL).  Plain vector
    and BM25 queries are answered here already (``Source.prepared``, see index/topk.py);
    the others get a candidate frame for the engine."""
    from puffer_cli.search.scoring import Source

    cache = ns.cache or get_cache()
    misses0 = cache.stats.misses + cache.stats.ranged_reads
    for attempt in range(2):
        try:
            view = view_for(ns, consistency, fresh_meta=attempt > 0, queries=queries)
            if view is None:
                return None
            ans = _answer(view, queries, multi)
            break
        except FileNotFoundError as e:
            if attempt:
                raise (getattr(e, "corrupt", None) or e) from e  # segment.MissingIndexFile: a damaged generation
            GENS.clear()  # a generation collected under us: re-read meta.json once
    assert view is not None  # the loop above breaks with a view, or returns or raises
    docs, tokens = _candidate_frame(view, ans)
    seed_postings(docs, {f: t for f, t in tokens.items() if f in ans.qterms}, view.schema, ans.qterms)
    fetched = cache.stats.misses + cache.stats.ranged_reads - misses0
    row_bytes = (
        int(docs.estimated_size() / docs.height)
        if docs.height
        else 8 + 4 * sum(types.vector_dims(v["type"]) or 0 for v in view.schema.values())
    )
    return Source(
        docs,
        view.schema,
        view.metric,
        view.seq,
        bm25_stats=ans.stats,
        prepared=ans.prepared if any(r is not None for r in ans.prepared) else None,
        bytes_queried=int(docs.estimated_size()) + ans.scored * row_bytes,
        approx_namespace_size=view.namespace_rows,
        exhaustive_search_count=ans.exhaustive,
        cache_temperature="cold" if fetched else "hot",
        cache_hit_ratio=0.0 if fetched else 1.0,
        extra={
            "index_generation": view.gen.generation,
            "index_covers_through_seq": view.gen.covers,
            "files_fetched": fetched,
        },
    )
