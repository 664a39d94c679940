"""usearch HNSW per vector field and segment.

Keys are row positions in the segment; rows without a vector are not added.
Options come from the attribute's ``ann`` schema entry (all optional)::

    dtype            f16 (default) | f32 | i8 (i8 only with cosine_distance)
    connectivity     HNSW M (default 16)
    expansion_add    ef at build time (default 128)
    expansion_search ef at query time (default 256: recall@10 ~0.96 on GloVe-100)

The saved index is uploaded as one object and opened with
``Index.restore(path, view=True)`` (memory-mapped from the cache; a view is never
mutated).  Distances from an f16/i8 index are approximate: callers re-rank the
candidates with the exact f32 vectors of the doc store.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile

import numpy as np

from .. import schema as S

DEFAULTS = {"dtype": "f16", "connectivity": 16, "expansion_add": 128, "expansion_search": 256}
METRICS = {"cosine_distance": "cos", "euclidean_squared": "l2sq"}
log = logging.getLogger("puffer.index.ann")


def options(spec: dict, metric: str | None) -> dict:
    """Build/search options from the attribute's ``ann`` entry.  Writes validate them
    (``schema.check_ann``); a namespace written before that may hold anything, so an
    option that is not an integer in limits.ANN_* is clamped into range (or, if not a
    number, replaced by the default) with a warning rather than failing the build."""
    o = dict(DEFAULTS)
    ann = spec.get("ann")
    if isinstance(ann, dict):
        o.update({k: v for k, v in ann.items() if k in DEFAULTS and v is not None})
    if o["dtype"] not in S.ANN_DTYPES:
        log.warning("ann dtype %r is not one of %s; using %s", o["dtype"], S.ANN_DTYPES, DEFAULTS["dtype"])
        o["dtype"] = DEFAULTS["dtype"]
    for k, (lo, hi) in S.ANN_BOUNDS.items():
        v = o[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            log.warning("ann %s %r is not an integer; using %d", k, v, DEFAULTS[k])
            o[k] = DEFAULTS[k]
        elif not lo <= v <= hi or v != int(v):
            c = lo if v < lo else hi if v > hi else int(v)
            log.warning(
                "ann %s %r is not an integer in %d..%d (stored by an older version?); using %d", k, v, lo, hi, c
            )
            o[k] = c
    if o["dtype"] == "i8" and metric != "cosine_distance":
        o["dtype"] = "f16"  # usearch i8 L2-normalises: only valid for cosine
    o["metric"] = METRICS.get(metric or "cosine_distance", "cos")
    return o


def build(mat: np.ndarray, opts: dict, threads: int = 0) -> tuple[bytes, int]:
    """HNSW over the non-NaN rows of ``mat``; returns (saved bytes, vectors added)."""
    from usearch.index import Index

    dims = mat.shape[1]
    idx = Index(
        ndim=dims,
        metric=opts["metric"],
        dtype=opts["dtype"],
        connectivity=int(opts["connectivity"]),
        expansion_add=int(opts["expansion_add"]),
        expansion_search=int(opts["expansion_search"]),
    )
    valid = ~np.isnan(mat).any(axis=1) if len(mat) else np.zeros(0, bool)
    keys = np.nonzero(valid)[0].astype(np.uint64)
    if len(keys):
        x = np.ascontiguousarray(mat[valid], dtype=np.float32)
        if opts["metric"] == "cos":
            # zero vectors have no direction; usearch would give NaN distances
            norms = np.linalg.norm(x, axis=1)
            ok = norms > 0
            keys, x = keys[ok], x[ok]
        if len(keys):
            # threads=0 did not parallelise here (usearch 2.26): ask for every core explicitly
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            n = threads or cores
            idx.add(keys, x, threads=n)
    fd, path = tempfile.mkstemp(suffix=".usearch")
    os.close(fd)
    try:
        idx.save(path)
        with open(path, "rb") as f:
            return f.read(), len(keys)
    finally:
        os.unlink(path)


def open_view(path, expansion_search: int | None = None):
    from usearch.index import Index

    idx = Index.restore(str(path), view=True)
    if expansion_search:
        idx.expansion_search = int(expansion_search)
    return idx


def search(idx, q: np.ndarray, k: int, expansion_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(positions int64, approx distances) of the ``k`` nearest; fewer if the index is smaller."""
    if idx is None or len(idx) == 0 or k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if expansion_search and idx.expansion_search < expansion_search:
        idx.expansion_search = int(expansion_search)
    m = idx.search(np.asarray(q, dtype=np.float32), min(k, len(idx)))
    keys = np.asarray(m.keys, dtype=np.int64).reshape(-1)
    d = np.asarray(m.distances, dtype=np.float32).reshape(-1)
    n = int(m.count) if hasattr(m, "count") else len(keys)
    return keys[:n], d[:n]
