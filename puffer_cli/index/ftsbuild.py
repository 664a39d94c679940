"""The inverted lists of one FTS field of a segment, built in bounded memory on both cores.

:func:`inverted` analyses the column in chunks of about ``CHUNK_BYTES`` of text
(:class:`puffer_cli.text.batch.TermIds`: polars splits and numbers the words without the
GIL, in helper threads up to SPLITTERS chunks ahead of the main thread, which maps words to
terms and sorts the chunk's (term, row) pairs).  Each chunk leaves one sorted run of postings (term
id, row, tf: 12 bytes a posting, no Python object per token or row); when every chunk is
done the runs are placed by a counting sort (term order is code point order, rows
ascending within a term) into the two arrays the block encoder reads.  Peak memory: the
runs plus the final arrays (~20 bytes a posting) and one chunk's text and words.

The result is exactly what analysing every row with ``text.tokenize_many`` gives (the
blk-1 files are byte-identical: tests/test_fts_build.py).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np
import polars as pl

from puffer_cli.text.batch import TermIds

CHUNK_BYTES = 8 << 20  # text analysed per step
CHUNK_ROWS_MAX = 262_144  # rows per step at most (short texts)
SPLITTERS = 2  # chunks split ahead, each in its own thread (polars runs them without the GIL)


@dataclass
class Inverted:
    """A column's inverted lists: ``terms`` sorted (code point order); term ``i``'s postings
    are ``docs[tptr[i]:tptr[i+1]]`` (ascending rows, uint32) with counts ``tfs`` (uint32);
    ``lens``: tokens per row (int64)."""

    terms: list[str]
    tptr: np.ndarray
    docs: np.ndarray
    tfs: np.ndarray
    lens: np.ndarray


def chunks(values, n: int) -> list[tuple[int, int]]:
    """Row ranges of about CHUNK_BYTES of text each (at most CHUNK_ROWS_MAX rows)."""
    if isinstance(values, pl.Series) and values.dtype == pl.String:
        size = values.str.len_bytes().fill_null(0).to_numpy().astype(np.int64)
        cum = np.cumsum(size)
        out, a = [], 0
        while a < n:
            base = int(cum[a - 1]) if a else 0
            b = int(np.searchsorted(cum, base + CHUNK_BYTES, side="right"))
            b = min(max(b, a + 1), a + CHUNK_ROWS_MAX, n)
            out.append((a, b))
            a = b
        return out
    step = 16_384
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _slice(values, a: int, b: int):
    if isinstance(values, pl.Series):
        return values.slice(a, b - a)
    return list(values[a:b])


def _run(tid: np.ndarray, row: np.ndarray, start: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chunk's postings sorted by (term id, row): (tid int32, row uint32, tf uint32)."""
    key = np.sort(tid.astype(np.int64) * max(m, 1) + row)
    if not len(key):
        return np.zeros(0, np.int32), np.zeros(0, np.uint32), np.zeros(0, np.uint32)
    edge = np.flatnonzero(np.diff(key)) + 1
    first = np.concatenate([[0], edge])
    tf = np.diff(np.concatenate([first, [len(key)]]))
    uk = key[first]
    return (uk // max(m, 1)).astype(np.int32), (uk % max(m, 1) + start).astype(np.uint32), tf.astype(np.uint32)


def inverted(values, opts: dict) -> Inverted:
    """The inverted lists of ``values`` (one per row: str, list[str] or None; a polars Series
    or a list) under the analyzer ``opts``."""
    n = len(values)
    ids = TermIds(opts)
    lens = np.zeros(n, np.int64)
    runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    ranges = chunks(values, n)
    with ThreadPoolExecutor(SPLITTERS, thread_name_prefix="puffer-fts-split") as pool:
        ahead: deque = deque()
        todo = iter(ranges)
        for r in islice(todo, SPLITTERS):
            ahead.append((r, pool.submit(ids.split, _slice(values, *r))))
        while ahead:
            (a, b), fut = ahead.popleft()
            part = fut.result()
            for r in islice(todo, 1):
                ahead.append((r, pool.submit(ids.split, _slice(values, *r))))
            tid, row, ln = ids.finish(part)
            del part
            lens[a:b] = ln
            runs.append(_run(tid, row, a, b - a))
            del tid, row
    return _merge(ids.terms, runs, lens)


def _merge(terms_first: list[str], runs: list, lens: np.ndarray) -> Inverted:
    """Counting sort of the chunks' runs into term order (rows stay ascending: chunks are in
    row order and each run is sorted by row within a term)."""
    order = sorted(range(len(terms_first)), key=terms_first.__getitem__)
    terms = [terms_first[i] for i in order]
    rank = np.empty(len(terms_first), np.int64)
    rank[np.asarray(order, np.int64)] = np.arange(len(terms_first), dtype=np.int64)
    df = np.zeros(len(terms), np.int64)
    for tid, _r, _f in runs:
        df += np.bincount(rank[tid], minlength=len(terms))
    tptr = np.zeros(len(terms) + 1, np.int64)
    np.cumsum(df, out=tptr[1:])
    total = int(tptr[-1])
    docs = np.empty(total, np.uint32)
    tfs = np.empty(total, np.uint32)
    cursor = tptr[:-1].copy()
    while runs:
        tid, row, tf = runs.pop(0)
        if not len(tid):
            continue
        edge = np.flatnonzero(np.diff(tid)) + 1
        first = np.concatenate([[0], edge])
        cnt = np.diff(np.concatenate([first, [len(tid)]]))
        r = rank[tid[first]]
        dst = np.repeat(cursor[r] - first, cnt) + np.arange(len(tid))
        docs[dst] = row
        tfs[dst] = tf
        cursor[r] += cnt
        del tid, row, tf, dst
    return Inverted(terms, tptr, docs, tfs, lens)
