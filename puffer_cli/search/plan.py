"""The cold read plan of a query, as text (``explain_query``): which reads each phase makes
on an empty cache, predicted from the manifest (row-group statistics, chunk sizes, IVF
lists), without running the query.  The phases are the reader's (search/reader.py,
search/topk.py):

1. ``meta.json``;
2. the manifest, with the keys it names for prefetch (IVF routes, tombstones, small lists)
   and, for a strong query, the WAL listing;
3. candidates: the filter's (and order keys' / aggregated) column chunks of the row groups
   the statistics admit, with the IVF lists the filter's estimated selectivity needs
   (read ahead of the mask), or the filtered rows' vectors for an exact search;
4. re-rank: the candidates' exact vectors and ids, with the returned attributes' chunks.

The sub-queries of a multi-query run as concurrent lanes (their round trips overlap).
"""

from __future__ import annotations

import numpy as np

from puffer_cli.index import docs as D
from puffer_cli.index import fts_hint, ivf
from puffer_cli.index import ranged as RG
from puffer_cli.schema import frames
from puffer_cli.schema import spec as S


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def plan_lines(view, q) -> list[str]:
    """Lines describing the cold read plan of parsed query ``q`` on ``view`` (reader.IndexedView)."""
    from puffer_cli.filters import bind_filter
    from puffer_cli.filters.tree import attributes
    from puffer_cli.query import parse as Q
    from puffer_cli.search import response as R
    from puffer_cli.search import topk

    rb = q.rank_by
    k = q.offset + q.limit
    segs = view.gen.segments
    fcols = sorted(a for a in attributes(q.filters) if a in view.schema) if q.filters is not None else []
    bound = bind_filter(q.filters, view.schema) if q.filters is not None else None
    returned = [
        c
        for c in R.row_columns(q, frames.column_order(view.schema))
        if not S.is_vector(view.schema.get(c, {}).get("type", ""))
    ]
    kind = (
        "vector"
        if topk.vector_eligible(view, q)
        else "BM25"
        if topk.text_eligible(view, q)
        else "order by"
        if isinstance(rb, Q.OrderBy)
        else "scan"
    )
    out = [
        f"plan ({kind}; {len(segs)} segment(s), {view.namespace_rows} rows; cold reads predicted from the manifest):",
        "  round trip 1: meta.json",
        "  round trip 2: manifest + prefetched keys (IVF routes, tombstones, small lists)"
        + (" + WAL listing" if view.tail is not None else ""),
    ]
    groups = total = fbytes = 0
    lists_ahead = exact = ivf_segs = codes4 = 0
    probe_rows = 0
    pruned = False  # an unfiltered probe sized per query (ivf.pruned): the figure is the fixed probe's
    for seg in segs:
        ent = seg.docs
        if ent is None:
            continue
        n = D.groups_of(ent, seg.rows)
        keep = D.group_mask(ent, seg.rows, bound) if bound is not None else np.ones(n, bool)
        groups += int(keep.sum())
        total += n
        cols = fcols + ([a for a, _d in rb.keys] if isinstance(rb, Q.OrderBy) else [])
        cols += [g.attr for g in q.group_by] + [a.attr for _n, a in q.aggregate_by if a.attr is not None]
        for c in dict.fromkeys(cols):
            if c in ent["columns"]:
                fbytes += sum(b - a for g in np.flatnonzero(keep) for a, b in [D.chunk_range(ent, c, int(g))])
        if kind == "vector":
            est = D.estimate_fraction(ent, seg.rows, bound) if bound is not None else 1.0
            n_sel = est * seg.live_count()
            if n_sel <= k or (bound is not None and est <= 0.05):
                exact += 1
            else:
                ivf_segs += 1
                iv = seg.meta.get("ann", {}).get(rb.attr, {})
                if iv.get("kind") == ivf.KIND:
                    shared = bool(iv.get("book"))  # format 3: the namespace-wide budget, this segment's share
                    opts = ivf.options(view.schema.get(rb.attr), shared=shared)
                    e = max(est, 1e-9)
                    if shared:
                        total = max(1, sum(s.rows for s in view.gen.segments))
                        budget = ivf.probe_rows(total, opts["probe"], opts["probe_min_rows"]) * seg.rows / total
                        want = max(budget / e, k * opts["rerank"])
                    else:
                        want = max(opts["probe"] / e * seg.rows, opts["probe_min_rows"] / e, k * opts["rerank"])
                    probe_rows += int(min(seg.rows, want))
                    pruned = pruned or (bound is None and opts["prune"] > 0)
                    ranged = view.gen.store.is_remote and not RG.lists_read_whole(seg.rows, int(iv.get("dims", 0)))
                    if bound is not None and ranged:
                        lists_ahead += 1
                    codes4 += int(bound is not None and bool(iv.get("lists4")))
    if kind == "vector":
        mid = []
        if fcols:
            mid.append(f"filter columns {fcols}: {groups}/{total} row groups admitted by statistics ({_mb(fbytes)})")
        if ivf_segs:
            mid.append(
                f"IVF lists of {ivf_segs} segment(s), ~{probe_rows:,} members probed"
                + (f" (per query {ivf.PRUNE_FLOOR:g}x to {ivf.SEGMENT_PRUNE_CAP:g}x that: ann prune)" if pruned else "")
                + (f" ({lists_ahead} read ahead of the filter's mask: estimated selectivity)" if lists_ahead else "")
                + (f" ({codes4} through their int4 filter codes)" if codes4 else "")
            )
        if exact:
            mid.append(f"{exact} segment(s) searched exactly: the filtered rows' vectors and ids")
        out.append("  round trip 3: " + "; ".join(mid or ["IVF lists"]))
        opts = ivf.options(view.schema.get(rb.attr), filter_codes=codes4 > 0)
        ret = f" + returned attributes {returned} of their row groups" if returned != ["id"] and returned else ""
        out.append(
            f"  round trip 4: re-rank <= {k * int(opts['rerank'])} candidates: exact f32 vectors + ids{ret} "
            f"(after the re-rank instead when those chunks exceed {_mb(topk.ATTR_PREFETCH_BYTES)})"
        )
    elif kind == "BM25":
        dictionary = "each segment's dictionary blocks of the terms, document lengths, the terms' df blocks"
        n = 3
        if fts_hint.pointer_hint(view.gen.man.get("segments", []), view.gen.man.get("bm25", {})) is not None:
            out[-1] += f" + {dictionary} (placed by the pointer's fts directory)"
        else:
            out.append(f"  round trip 3: {dictionary}")
            n = 4
        out.append(f"  round trip {n}: the terms' postings (decoded once per process; pruned by row windows)")
        out.append(
            f"  round trip {n + 1}: ids of the rows scoring at least the {k}th best, "
            "with their returned attributes' chunks"
        )
    else:
        what = "filter, order-key and aggregated columns" if kind == "order by" else "the columns the query reads"
        out.append(f"  round trip 3: {what}: {groups}/{total} row groups admitted by statistics ({_mb(fbytes)})")
        if isinstance(rb, Q.OrderBy):
            out.append(f"  round trip 4: returned attributes {returned} of the top {k} rows' row groups")
    return out
