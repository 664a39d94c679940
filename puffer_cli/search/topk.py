"""Index-only top-k of plain vector and BM25 queries, in numpy end to end.

A query ranked by a vector (``ANN`` / ``kNN``) or by pure BM25 (``BM25`` leaves
under ``Sum`` / ``Max`` / ``Product``), with or without a filter, and with no
aggregations or per-attribute limits, does not need the candidate frame of
:meth:`IndexedView.candidates`:

1. per segment, the same candidate positions are scored exactly: vectors with
   :func:`scoring.exact_distances` from the segment's f32 vectors; BM25 with
   :func:`bm25.score` on namespace-global statistics, its inputs (term
   frequencies, document lengths) read from the segment's stored postings
   (``post-*.arrow``) instead of re-analysing the candidates' text;
2. the WAL tail (strong consistency) is ranked by the exact engine;
3. the best ``offset + limit`` (distance ascending or score descending, ties by
   id) are kept, and only those rows' attributes are read.

The candidates, the scores and the tie-break are the engine's, so the result is
the one ``engine.execute`` gives over the candidate frame
(``tests/test_index.py`` compares both with the exact engine over the WAL).
Skipping that frame saves about half of an indexed query's time outside the
HNSW / tantivy search itself.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import polars as pl

from puffer_cli import cores
from puffer_cli import limits as L
from puffer_cli.index import docs as D
from puffer_cli.index import fts, ivf
from puffer_cli.index import ranged as RG
from puffer_cli.index.manifest import fts_sig_of
from puffer_cli.query import parse as Q
from puffer_cli.schema import frames, types
from puffer_cli.schema import spec as S
from puffer_cli.search import response as R
from puffer_cli.search import scoring as SC
from puffer_cli.text import bm25 as B

#: the re-rank candidates' returned-attribute chunks are fetched with the re-rank reads
#: (one round trip) when they total at most this many bytes ...
ATTR_PREFETCH_BYTES = 4 << 20
#: ... or at most this many times the chunks the top-k rows alone could touch
ATTR_PREFETCH_RATIO = 4
#: a returned vector field (not the ranked one) is read ahead for at most this many candidate
#: rows in all (and ATTR_PREFETCH_RATIO x the rows returned): a request a row
VECTOR_PREFETCH_ROWS = 256


def _simple(q: Q.Query) -> bool:
    return q.per_attributes is None and not q.aggregate_by and not q.group_by and not q.compute


def vector_eligible(view, q: Q.Query) -> bool:
    """True for a plain vector query (see module docstring)."""
    rb = q.rank_by
    return isinstance(rb, Q.VectorRank) and S.is_vector(view.schema.get(rb.attr, {}).get("type", "")) and _simple(q)


def text_eligible(view, q: Q.Query) -> bool:
    """True for a pure BM25 query whose fields every segment can score from stored postings
    under the analyzer in force (else the candidate-frame path handles it)."""
    rb = q.rank_by
    if not (isinstance(rb, Q.TextRank) and _simple(q) and view.pure_bm25(rb.expr)):
        return False
    for f in {lf.attr for lf in view.bm25_leaves(rb.expr)}:
        sig = fts_sig_of(view.schema.get(f))
        if sig is None or sig != fts_sig_of(view.gen.schema.get(f)) or f not in view.gen.man.get("bm25", {}):
            return False
        for seg in view.gen.segments:
            m = seg.meta.get("fts", {}).get(f)
            if not m or m.get("sig") != sig or not (m.get("postings") or m.get("format") == fts.BLK):
                return False
    return True


class _Collect:
    """Scored candidates from segments and the tail; ``top`` keeps the best by (key asc, id asc)."""

    def __init__(self, view):
        self.view = view
        self.keys, self.vals, self.ids, self.srcs, self.poss = [], [], [], [], []
        #: (segment, vector field) -> (sorted positions, their f32 vectors) read by the
        #: re-rank: a returned vector column of those rows needs no second read
        self.known: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}

    def add(self, src: int, pos: np.ndarray, key: np.ndarray, val: np.ndarray, ids=None) -> None:
        if not len(pos):
            return
        v = self.view
        if ids is not None:
            pass
        elif src >= 0:
            seg = v.gen.segments[src]
            idv = seg.id_values()
            ids = idv[pos] if idv is not None else seg.attrs().get_column("id").gather(pos)
        else:
            ids = v.tail.docs.get_column("id").gather(pos)
        self.keys.append(key)
        self.vals.append(val)
        self.ids.append(ids)
        self.srcs.append(np.full(len(pos), src, np.int32))
        self.poss.append(pos)

    @property
    def count(self) -> int:
        return int(sum(len(k) for k in self.keys))

    def top(self, q: Q.Query) -> SC.QueryResult:
        L.check_deadline()
        v, n, kk = self.view, self.count, q.offset + q.limit
        if not n:
            return SC.QueryResult(_empty(v, q), np.zeros(0), scanned=0, matched=0)
        key, val = np.concatenate(self.keys), np.concatenate(self.vals)
        idt = S.dtype_of(v.schema["id"]["type"])
        if all(isinstance(x, np.ndarray) for x in self.ids):  # integer ids from segments only: stay in numpy
            idk = np.concatenate(self.ids)
            order = np.lexsort((idk, key))[q.offset : kk]
            picked = pl.Series("id", idk[order], dtype=idt)
        else:
            id_s = pl.concat([(pl.Series("id", x) if isinstance(x, np.ndarray) else x).cast(idt) for x in self.ids])
            idk = id_s.to_numpy() if id_s.dtype.is_integer() else id_s.rank("ordinal").to_numpy()
            order = np.lexsort((idk, key))[q.offset : kk]
            picked = id_s.gather(pl.Series(order))
        src, pos = np.concatenate(self.srcs)[order], np.concatenate(self.poss)[order]
        return SC.QueryResult(_rows(v, q, src, pos, picked, self.known), val[order], scanned=n, matched=n)


Collect = _Collect  # the public name (search/multivector.py collects its candidates the same way)


def _tail(view):
    t = view.tail.docs if view.tail is not None else None
    return t if t is not None and t.height else None


def _best_overall(cands: list[tuple[np.ndarray, np.ndarray | None]], want: int) -> list[np.ndarray]:
    """Per segment, the candidates to re-rank: all exact ones (few: the segment's exact
    top k), and of the approximate ones only those among the ``want`` best over all
    segments, so a query re-ranks ``rerank * k`` rows however many segments there are."""
    approx = [d for _p, d in cands if d is not None and len(d)]
    if not approx or sum(len(d) for d in approx) <= want:
        return [p for p, _d in cands]
    allx = np.concatenate(approx)
    cut = np.partition(allx, want - 1)[want - 1]
    return [p if d is None else p[d <= cut] for p, d in cands]


#: a cold filtered ANN query re-ranks fewer candidates (down to the unfiltered ``rerank``) when
#: reading theirs would take its requests past this (issue 24: <= 200 a query; its lists took
#: most), less REQUESTS_SLACK for what the estimate misses (ranges split at file parts: moto,
#: 2M, 20 queries a filter, budgeted at 200: up to 203)
REQUESTS_MAX = 200
REQUESTS_SLACK = 8


def _within_requests(view, f: str, pairs, keep: list[np.ndarray], kk: int) -> list[np.ndarray]:
    """``keep`` (the re-rank candidates per segment), cut by ``kk`` at a time in approximate
    distance order, down to the unfiltered ``rerank x kk``, while their reads
    (``Segment.rerank_requests``) and the query's requests so far exceed REQUESTS_MAX."""
    from puffer_cli.store import current_io

    io = current_io()
    if io is None:
        return keep
    segs = view.gen.segments
    floor = kk * ivf.options(view.schema.get(f))["rerank"]
    want = sum(len(p) for p in keep)

    def over(k: list[np.ndarray]) -> bool:
        left = REQUESTS_MAX - REQUESTS_SLACK - io.requests
        return sum(segs[i].rerank_requests(f, np.sort(p)) for i, p in enumerate(k)) > left

    while want > floor and over(keep):
        want = max(floor, want - kk)
        keep = _best_overall(pairs, want)
    return keep


def vector_topk(view, q: Q.Query) -> tuple[SC.QueryResult, int, int]:
    """(result, rows scored exactly, candidates) of a :func:`vector_eligible` query on ``view``."""
    rb = q.rank_by
    assert isinstance(rb, Q.VectorRank)  # vector_eligible
    metric = q.distance_metric or view.metric or "cosine_distance"
    kk = q.offset + q.limit
    qv = rb.array()
    out = _Collect(view)

    def candidates(i: int):
        L.check_deadline()
        return view.vector_candidates(
            i, rb, q.filters, kk, metric, lambda pos: _attribute_prefetch(view, q, [pos], [i])[0]
        )

    def rerank(i: int, pos: np.ndarray, also=()):
        """Segment i's candidates re-ranked with their exact f32 vectors (``also``: calls
        run in the same batch of requests: the returned attributes' chunks)."""
        if not len(pos):
            return pos, None, None, None
        L.check_deadline()
        sub, ids = view.gen.segments[i].rerank_rows(rb.attr, pos, also)
        ok = ~np.isnan(sub).any(axis=1)  # rows without this vector never rank
        if not ok.all():
            pos, sub, ids = pos[ok], sub[ok], ids[ok] if isinstance(ids, np.ndarray) else ids.filter(pl.Series(ok))
        return pos, SC.exact_distances(sub, qv, metric), ids, sub

    # on an object store the segments' reads overlap: one round trip for every segment's
    # lists, one for every segment's re-rank rows
    n = len(view.gen.segments)
    remote = view.gen.store.is_remote
    # the segments a list-major stack covers: one search of it, in the batch of the others' lists
    plan = view.stack_plan(rb, q.filters, kk, metric)
    covered = set(plan[0]) if plan is not None else set()
    rest = [i for i in range(n) if i not in covered]
    # local: the segments' searches on the machine's cores at once (their scans release the GIL)
    lanes = partial(RG.parallel, remote=True) if remote else cores.run
    got = lanes(([plan[1]] if plan is not None else []) + [partial(candidates, i) for i in rest])
    by_seg = dict(got[0]) if plan is not None else {}
    by_seg.update(zip(rest, got[1:] if plan is not None else got))
    cands = [by_seg[i] for i in range(n)]
    pairs = [(c[0], c[3]) for c in cands]
    codes4 = q.filters is not None and any(
        s.meta.get("ann", {}).get(rb.attr, {}).get("lists4") for s in view.gen.segments
    )
    keep = _best_overall(pairs, kk * ivf.options(view.schema.get(rb.attr), filter_codes=codes4)["rerank"])
    if codes4 and remote:
        keep = _within_requests(view, rb.attr, pairs, keep, kk)
    also = _attribute_prefetch(view, q, keep)
    done = RG.parallel([partial(rerank, i, keep[i], also[i]) for i in range(n)], remote)
    exhaustive = sum(c[1] for c in cands)
    for i, (pos, d, ids, sub) in enumerate(done):
        if d is not None:
            out.add(i, pos, d, d, ids)
            o = np.argsort(pos, kind="stable")
            out.known[(i, rb.attr)] = (pos[o], sub[o])
    tail = _tail(view)
    if tail is not None:
        L.check_deadline()
        exhaustive += tail.height
        cand = np.flatnonzero(SC.filter_mask(tail, q.filters, view.schema)) if q.filters is not None else None
        pos, d = SC.rank_vector(q, rb, tail, metric, cand, kk)
        out.add(-1, pos, d, d)
    return out.top(q), exhaustive, out.count


def _attribute_prefetch(view, q: Q.Query, keep: list[np.ndarray], segs: list[int] | None = None) -> list[list]:
    """Per segment, the calls that fetch the returned attributes of every re-rank candidate
    (``keep``), to run in the re-rank batch: one round trip fewer than fetching the top-k
    rows' after the re-rank.  Their column chunks when few enough: at most
    ``ATTR_PREFETCH_BYTES`` in all, or ``ATTR_PREFETCH_RATIO`` x the bytes of the chunks
    the top-k alone could need (k groups of each column); else none (``_rows`` reads the
    top-k rows' chunks after the re-rank: one more round trip, fewer bytes).  Returned vector
    fields (:func:`_vector_prefetch`) likewise."""
    idx = list(range(len(keep)) if segs is None else segs)
    vecs = _vector_prefetch(view, q, keep, idx)
    cols = _columns(view, q)
    # not the ids (ranking reads them, :func:`_rows` takes them from there) nor vectors
    skip = {"id", *_vector_columns(view, cols)}
    names = [c for c in cols if c not in skip]
    if not names:
        return vecs
    plans = []
    total = 0
    for i, pos in zip(idx, keep):
        seg = view.gen.segments[i]
        want, cost = seg.rows_cost(pos, names) if len(pos) else ([], 0)
        plans.append((seg, want))
        total += cost
    kk = q.offset + q.limit
    per_group = total / max(1, sum(len({g for _c, g in w}) for _s, w in plans))  # bytes of one group's chunks
    if not total or total > max(ATTR_PREFETCH_BYTES, ATTR_PREFETCH_RATIO * kk * per_group):
        return vecs
    return [([partial(seg.prefetch_rows, want)] if want else []) + v for (seg, want), v in zip(plans, vecs)]


def _vector_prefetch(view, q: Q.Query, keep: list[np.ndarray], idx: list[int]) -> list[list]:
    """Per segment, calls reading the returned vector fields' rows of the candidates ``keep``
    by range and keeping them (``Segment.keep_ahead``), so ``_rows`` reads none: not the
    ranked field (the re-rank reads it), not where the vectors are at hand, and only when the
    candidates are at most ``ATTR_PREFETCH_RATIO`` x the rows returned and ``VECTOR_PREFETCH_ROWS``
    (a request a row: beyond, the top rows' after ranking, one round trip more)."""
    ranked = q.rank_by.attr if isinstance(q.rank_by, Q.VectorRank) else None
    fields = [c for c in _vector_columns(view, _columns(view, q)) if c != ranked]
    out: list[list] = [[] for _ in keep]
    n = sum(len(p) for p in keep)
    if not fields or n > min(VECTOR_PREFETCH_ROWS, ATTR_PREFETCH_RATIO * (q.offset + q.limit)):
        return out
    for j, (i, pos) in enumerate(zip(idx, keep)):
        seg = view.gen.segments[i]
        for f in fields:
            if len(pos) and not seg.vectors_at_hand(f):
                out[j].append(partial(_keep_vectors, seg, f, np.unique(np.asarray(pos, np.int64))))
    return out


def _vector_columns(view, cols: list[str]) -> list[str]:
    """The vector fields among the columns ``cols``."""
    return [c for c in cols if S.is_vector(view.schema.get(c, {}).get("type", ""))]


def _keep_vectors(seg, f: str, pos: np.ndarray) -> None:
    rows = seg.vector_rows(f, pos)
    if rows is not None:
        seg.keep_ahead(f, pos, rows)


def text_topk(view, q: Q.Query) -> tuple[SC.QueryResult, int, int]:
    """(result, rows scored exactly, candidates) of a :func:`text_eligible` query on ``view``."""
    rb = q.rank_by
    assert isinstance(rb, Q.TextRank)  # text_eligible
    kk = q.offset + q.limit
    leaves = list(view.bm25_leaves(rb.expr))
    fields = sorted({lf.attr for lf in leaves})
    terms = {
        f: [t for lf in leaves if lf.attr == f for t in B.query_tokens(lf.query, view.schema[f]["full_text_search"])]
        for f in fields
    }
    out = _Collect(view)
    exhaustive = 0
    n = len(view.gen.segments)
    remote = view.gen.store.is_remote
    blocks = [view.bm25_blocks(i, leaves) for i in range(n)]

    def first(i: int):
        """Phase 1 (with the statistics): the filter, the dictionary blocks and lengths."""
        L.check_deadline()
        sel = view._filter_mask(i, q.filters)
        if blocks[i] is not None and sel.any():  # every field's at once
            RG.parallel([partial(bi.prefetch, terms[f]) for f, bi in blocks[i].items()], remote)
        return sel

    # the query terms' document frequencies with the statistics (ranged df blocks)
    pre = [partial(view.gen.prefetch_df, f, terms[f]) for f in fields]
    got = RG.parallel(pre + [partial(view.bm25_stats, fields)] + [partial(first, i) for i in range(n)], remote)
    stats, sels = got[len(pre)], got[len(pre) + 1 :]

    clause = view.bm25_clause(leaves, stats)  # what every segment's share has in common

    def second(i: int):
        """Phase 2: the candidates (block segments: their query terms' postings, pruned below
        all together)."""
        L.check_deadline()
        if blocks[i] is not None:
            part = view.block_part(i, leaves, sels[i], stats, clause)
            return part if part is not None else view.block_union(i, leaves, sels[i])
        return view.bm25_candidates(i, leaves, q.filters, kk)  # ascending, filtered, visible

    cands = RG.parallel([partial(second, i) for i in range(n)], remote)
    joint = [i for i, c in enumerate(cands) if isinstance(c, fts.PrunePart)]
    held = {i: cands[i].posts for i in joint}  # the pruned field's query terms (block_part)
    pruned = clause.attr if clause is not None else None
    L.check_deadline()
    for i, rows in zip(joint, fts.prune_many([cands[i] for i in joint], kk)):  # one pass, every segment
        cands[i] = rows

    def third(i: int):
        """The candidates' postings (from those phase 2 read)."""
        pos = cands[i]
        if pos is None or not len(pos):
            return None
        seg = view.gen.segments[i]
        bi = {f: seg.blocks(f) for f in fields}
        return {
            f: b.candidates(pos, terms[f], held.get(i) if f == pruned else None)
            if b is not None
            else seg.postings(f).candidates(pos, terms[f])
            for f, b in bi.items()
        }

    scored = _exact_scores(
        view, rb.expr, stats, fields, cands, RG.parallel([partial(third, i) for i in range(n)], remote)
    )
    tail = _tail(view)
    tail_scored = None
    if tail is not None:
        L.check_deadline()
        exhaustive += tail.height
        s, m = SC.text_eval(rb.expr, tail, view.schema, stats)
        if q.filters is not None:
            m &= SC.filter_mask(tail, q.filters, view.schema)
        keep = np.flatnonzero(m)
        tail_scored = (keep, s[keep])
    count = sum(len(r[0]) for r in scored if r is not None) + (len(tail_scored[0]) if tail_scored else 0)
    # Phase 3: only rows scoring at least the kk-th best can rank (ties are broken by id):
    # their ids and returned attributes' chunks in one batch of requests
    cut = _kth_best([r[1] for r in scored if r is not None] + ([tail_scored[1]] if tail_scored else []), kk)
    top = {i: (r[0][r[1] >= cut], r[1][r[1] >= cut]) for i, r in enumerate(scored) if r is not None}
    segs = sorted(top)
    also = _attribute_prefetch(view, q, [top[i][0] for i in segs], segs)
    id_calls = [partial(view.gen.segments[i].id_rows, top[i][0]) if blocks[i] is not None else _none for i in segs]
    got = RG.parallel(id_calls + [c for a in also for c in a], remote)
    for i, ids in zip(segs, got[: len(segs)]):
        pos, s = top[i]
        out.add(i, pos, -s, s, ids)
    if tail_scored is not None:
        out.add(-1, tail_scored[0], -tail_scored[1], tail_scored[1])
    return out.top(q), exhaustive, count


def _exact_scores(view, expr, stats, fields: list[str], cands: list, posts: list) -> list:
    """Per segment, (candidates matching ``expr``, their exact scores) or None: every
    segment's candidates scored in one pass over their joined postings (namespace-wide
    statistics: a row's score does not depend on the rows beside it), else segment by segment."""
    live = [i for i, p in enumerate(posts) if p is not None]
    out: list = [None] * len(posts)
    joint = stats is not None and all(stats.get(f) is not None for f in fields)
    groups = [live] if joint and live else [[i] for i in live]
    for g in groups:
        s, m = SC.text_eval(expr, None, view.schema, stats, {f: B.join([posts[i][f] for i in g]) for f in fields})
        at = 0
        for i in g:
            pos = cands[i]
            keep = np.flatnonzero(m[at : at + len(pos)])
            out[i] = (pos[keep], s[at : at + len(pos)][keep])
            at += len(pos)
    return out


def _kth_best(scores: list[np.ndarray], k: int) -> float:
    """The k-th highest of ``scores`` (-inf when there are at most k)."""
    n = sum(len(s) for s in scores)
    if n <= k or k <= 0:
        return float("-inf")
    allv = np.concatenate(scores)
    return float(np.partition(allv, n - k)[n - k])


def _columns(view, q: Q.Query) -> list[str]:
    return R.row_columns(q, frames.column_order(view.schema))


def _empty(view, q: Q.Query) -> pl.DataFrame:
    return frames.align(pl.DataFrame(), view.schema, _columns(view, q))


def _rows(view, q: Q.Query, src: np.ndarray, pos: np.ndarray, ids: pl.Series, known=None) -> pl.DataFrame:
    """The response rows' columns for (segment or -1 for the tail, position) in rank order
    (``known``: vectors the re-rank read, see ``_Collect.known``)."""
    cols = _columns(view, q)
    if cols == ["id"]:
        return ids.alias("id").to_frame()
    if not len(src):  # offset past every candidate
        return _empty(view, q)

    def part(s: int) -> pl.DataFrame:
        at = np.flatnonzero(src == s)
        p = pos[at]
        if s < 0:
            f = view.tail.docs.select([c for c in cols if c in view.tail.docs.columns])[pl.Series(p)]
        else:
            seg = view.gen.segments[int(s)]
            vecs = _vector_columns(view, cols)
            # the returned attributes of these rows only (a column store reads their row groups'
            # chunks); not their ids, which ranking read: a query returning only ids and vectors
            # reads no attribute chunk (a cold ANN + include ["vector"]: 4 round trips, not 5)
            names = [c for c in cols if c not in vecs and c != "id"]
            fns = [partial(seg.rows_at, p, names)] if names else []
            fns += [partial(_vector_column, seg, c, p, view.schema, (known or {}).get((int(s), c))) for c in vecs]
            got = RG.parallel(fns, view.gen.store.is_remote)  # attributes and vectors at once
            idc = ids[at].alias("id")  # (indexing by numpy: 2.5x faster than gather here)
            f = got.pop(0).hstack([idc]) if names else idc.to_frame()
            if got:
                f = f.with_columns(got)
        return frames.align(f, view.schema, cols).with_columns(pl.Series("__rank", at))

    # every segment's rows in one batch of requests on an object store
    parts = RG.parallel([partial(part, int(s)) for s in np.unique(src)], view.gen.store.is_remote)
    out = parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical").sort("__rank")
    return out.drop("__rank")


def _vector_column(seg, f: str, pos: np.ndarray, schema: dict, known=None) -> pl.Series:
    dims = types.vector_dims(schema[f]["type"])
    assert dims is not None  # f is a vector field
    if known is not None:  # the re-rank read these rows' vectors already
        at = np.searchsorted(known[0], pos)
        if len(pos) and (at < len(known[0])).all() and (known[0][np.minimum(at, len(known[0]) - 1)] == pos).all():
            return D.vector_series(f, known[1][at], dims)
    rows = seg.vector_rows(f, pos)
    if rows is None:
        rows = np.full((len(pos), dims), np.nan, np.float32)
    return D.vector_series(f, rows, dims)


def _none() -> None:
    """No ids read (segments without block postings: ``_Collect.add`` takes them whole)."""
    return None
