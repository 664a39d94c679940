"""Reading ``.npy`` and ``.npz`` files from several threads at once.

numpy parses every array's header with ``ast.literal_eval``, and CPython 3.11 cannot run the
parser in two threads at once: a cold query that opened two segments' routes in parallel lanes
failed with ``SystemError: AST constructor recursion depth mismatch`` (2M, bench_filtered's cold
run, 1 in ~500 queries).  So every load here holds one lock while it parses the headers and
reads the arrays (small files: routes, books, stacks' routes, tombstones, offsets).
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np

_LOCK = threading.Lock()


class Arrays(dict):
    """The arrays of an ``.npz`` file, read whole, by name (``files``: their names, as numpy's
    ``NpzFile`` has them)."""

    @property
    def files(self) -> list[str]:
        return list(self)


def load_npz(src: bytes | str | os.PathLike) -> Arrays:
    """Every array of an ``.npz`` file (its bytes, or a path); no pickles."""
    with _LOCK, np.load(io.BytesIO(src) if isinstance(src, bytes) else src, allow_pickle=False) as z:
        return Arrays((k, z[k]) for k in z.files)


def load_npy(src: bytes | str | os.PathLike) -> np.ndarray:
    """The array of an ``.npy`` file (its bytes, or a path); no pickles."""
    with _LOCK:
        out = np.load(io.BytesIO(src) if isinstance(src, bytes) else src, allow_pickle=False)
    if not isinstance(out, np.ndarray):
        raise ValueError("not a .npy file")
    return out
