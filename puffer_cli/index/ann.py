"""Reading format-1 segments: a usearch HNSW per vector field and segment (index
format 1, built before IVF-SQ8; the next ``puffer index`` run rebuilds such segments,
until then queries search them here).

Keys are row positions in the segment.  Opened with ``Index.restore(path, view=True)``
(memory-mapped from the cache; a view is never mutated).  Distances from an f16/i8
index are approximate: callers re-rank the candidates with the exact f32 vectors.
"""

from __future__ import annotations

import numpy as np


def open_view(path, expansion_search: int | None = None):
    from usearch.index import Index

    idx = Index.restore(str(path), view=True)
    if expansion_search and idx is not None:
        # usearch's setter is not declared right after its getter, so mypy sees a read-only property
        idx.expansion_search = int(expansion_search)  # type: ignore[misc]
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
