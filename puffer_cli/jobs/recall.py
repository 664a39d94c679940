"""ANN vs exact recall on query vectors sampled from the namespace itself
(turbopuffer's ``/_debug/recall``): the same query runs once with ``ANN``
(the index path: IVF lists, or exact under a selective filter) and once with
``kNN`` (exhaustive), and recall@k = |ANN ∩ exact| / |exact|, averaged."""

from __future__ import annotations

import time

import numpy as np

from puffer_cli import limits as L
from puffer_cli.errors import InvalidQuery, InvalidRequest
from puffer_cli.schema import spec as S
from puffer_cli.schema import types


def recall(
    ns,
    *,
    num: int | None = None,
    top_k: int = 10,
    filters=None,
    field: str | None = None,
    seed: int | None = 0,
    probe: float | None = None,
    fill: float | None = None,
    prune: float | None = None,
    rank_by=None,
    include_ground_truth: bool = False,
) -> dict:
    """``probe``, ``fill``, ``prune``: measure with these IVF options (fraction of rows scanned;
    lists between probed ones scanned too, at most ``fill`` x the probed rows; the query-aware
    probe's distance factor, 0 = a fixed probe) instead of the schema's.
    ``rank_by`` (turbopuffer's): one vector ranking ``[field, "ANN"|"kNN", vector]`` to measure
    instead of sampled vectors (then ``num`` is 1).  ``include_ground_truth``: add
    ``ground_truth``, per query its vector and the exact top_k rows (id, $dist, the vector)."""
    from puffer_cli.index import ivf

    if probe is not None and (isinstance(probe, bool) or not isinstance(probe, (int, float)) or not 0 < probe <= 1):
        raise InvalidRequest(f"probe must be a fraction in (0, 1], got {probe!r}")
    for name, v in (("fill", fill), ("prune", prune)):
        lo, hi = ivf.BOUNDS[name]
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi  # NaN fails too
        ):
            raise InvalidRequest(f"{name} must be a number from {lo:g} to {hi:g}, got {v!r}")
    if not isinstance(include_ground_truth, bool):
        raise InvalidRequest(f"include_ground_truth must be true or false, got {include_ground_truth!r}")
    given = None
    if rank_by is not None:
        field, given = _given_vector(rank_by, field, num)
        num = 1
    elif num is None:
        num = 25
    with ivf.override(probe=probe, fill=fill, prune=prune):
        out = _recall(ns, num=num, top_k=top_k, filters=filters, field=field, seed=seed, probe=probe, given=given)
    out["fill"] = fill
    out["prune"] = prune
    if not include_ground_truth:
        out.pop("ground_truth")
    return out


def _given_vector(rank_by, field: str | None, num) -> tuple[str, np.ndarray]:
    from puffer_cli.query import parse as Q

    if num not in (None, 1):
        raise InvalidRequest(f"recall: with rank_by, num must be null or 1, got {num!r}")
    try:
        rb = Q.parse_rank_by(rank_by)
    except InvalidQuery as e:
        raise InvalidQuery(f"recall {e.message}") from None
    if not isinstance(rb, Q.VectorRank):
        raise InvalidQuery('recall rank_by: recall is measured for vector rankings [field, "ANN", vector] only')
    if field is not None and field != rb.attr:
        raise InvalidRequest(f"recall: field {field!r} and rank_by's {rb.attr!r} differ")
    return rb.attr, rb.array()


def _recall(ns, *, num, top_k, filters, field, seed, probe, given=None) -> dict:
    from puffer_cli.search import engine

    if not 1 <= num <= L.MAX_RECALL_QUERIES or not 1 <= top_k <= L.MAX_TOP_K:
        raise InvalidRequest(
            f"num must be 1..MAX_RECALL_QUERIES = {L.MAX_RECALL_QUERIES:,} and top_k 1..MAX_TOP_K = {L.MAX_TOP_K:,}"
        )
    head = ns.require()
    vfs = [k for k, v in head.schema.items() if S.is_vector(v["type"])]
    if field is None:
        field = "vector" if "vector" in vfs else (vfs[0] if vfs else None)
    if field is None or field not in vfs:
        raise InvalidRequest(f"namespace {ns.name!r} has no vector attribute {field or ''}".strip())
    if given is not None:
        if len(given) != types.vector_dims(head.schema[field]["type"]):
            raise InvalidQuery(
                f"recall rank_by: query vector has {len(given)} dimensions; {field!r} has "
                f"{types.vector_dims(head.schema[field]['type'])}"
            )
        sample = [given]
    else:
        sample = _sample_vectors(ns, field, num or 25, seed)
    truth = []
    t0 = time.perf_counter()
    recalls, ann_counts, ex_counts = [], [], []
    ann_ms, ex_ms = [], []
    for v in sample:
        L.check_deadline("recall")
        base = {"top_k": top_k, "include_attributes": ["id"]}
        if filters is not None:
            base["filters"] = filters
        t = time.perf_counter()
        a = engine.run_query(ns, {**base, "rank_by": [field, "ANN", v.tolist()]})
        ann_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        e = engine.run_query(ns, {**base, "include_attributes": [field], "rank_by": [field, "kNN", v.tolist()]})
        truth.append({"query_vector": [float(x) for x in v], "nearest_neighbors": e["rows"]})
        ex_ms.append((time.perf_counter() - t) * 1000)
        aid = [r["id"] for r in a["rows"]]
        eid = [r["id"] for r in e["rows"]]
        ann_counts.append(len(aid))
        ex_counts.append(len(eid))
        recalls.append(len(set(aid) & set(eid)) / len(eid) if eid else 1.0)
    n = max(1, len(sample))
    return {
        "namespace": ns.name,
        "field": field,
        "num": len(sample),
        "top_k": top_k,
        "avg_recall": float(sum(recalls) / n) if sample else 1.0,
        "avg_ann_count": float(sum(ann_counts) / n) if sample else 0.0,
        "avg_exhaustive_count": float(sum(ex_counts) / n) if sample else 0.0,
        "p50_ann_ms": float(np.median(ann_ms)) if ann_ms else 0.0,
        "p50_exhaustive_ms": float(np.median(ex_ms)) if ex_ms else 0.0,
        "probe": probe,
        "seconds": time.perf_counter() - t0,
        "ground_truth": truth,
    }


def _sample_vectors(ns, field: str, num: int, seed) -> list[np.ndarray]:
    from puffer_cli.search.reader import view_for

    rng = np.random.default_rng(seed)
    view = view_for(ns, "eventual")
    out: list[np.ndarray] = []
    if view is not None and view.gen.segments:
        segs = [s for s in view.gen.segments if s.vectors(field) is not None]
        weights = np.array([s.rows for s in segs], dtype=float)
        if len(segs) and weights.sum() > 0:
            for _ in range(num * 3):
                s = segs[rng.choice(len(segs), p=weights / weights.sum())]
                pos = int(rng.integers(s.rows))
                if not s.alive()[pos]:
                    continue
                vecs = s.vectors(field)
                assert vecs is not None  # segs are the segments with vectors of field
                v = np.asarray(vecs[pos], dtype=np.float32)
                if not np.isnan(v).any():
                    out.append(v)
                if len(out) >= num:
                    return out
    docs, _h = ns.docs()
    col = docs.get_column(field).drop_nulls()
    if col.len():
        idx = rng.choice(col.len(), size=min(num - len(out), col.len()), replace=False)
        mat = np.asarray(col.gather(idx).to_numpy(), dtype=np.float32).reshape(len(idx), -1)
        out.extend(mat)
    return out
