"""The inverted lists of one FTS field of a segment, built in bounded memory on both cores.

:func:`inverted` analyses the column in chunks of about ``CHUNK_BYTES`` of text
(:class:`puffer_cli.text.batch.TermIds`: polars splits and numbers the words without the
GIL, in helper threads up to SPLITTERS chunks ahead of the main thread, which maps words to
terms and sorts the chunk's (term, row) pairs).  Each chunk leaves one sorted run of postings (term
id, row, tf: 12 bytes a posting, no Python object per token or row), spilled to an unlinked
temporary file past SPILL_BYTES; when every chunk is done the runs are read back one by one
and placed by a counting sort (term order is code point order, rows ascending within a
term) into the two arrays the block encoder reads.  Peak memory: those arrays (8 bytes a
posting), SPILL_BYTES and a few chunks' text and words.

The result is exactly what analysing every row with ``text.tokenize_many`` gives (the
blk-1 files are byte-identical: tests/test_fts_build.py).
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import IO

import numpy as np
import polars as pl

from puffer_cli.text.batch import TermIds

CHUNK_BYTES = 8 << 20  # text analysed per step
CHUNK_ROWS_MAX = 262_144  # rows per step at most (short texts)
SPILL_BYTES = 64 << 20  # runs kept in memory before they go to a temporary file
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


class _Runs:
    """The chunks' sorted runs: in memory up to SPILL_BYTES, then appended to an unlinked
    temporary file (gone with the process, SIGKILL included) and read back one at a time."""

    def __init__(self) -> None:
        self.mem: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.size = 0
        self.file: IO[bytes] | None = None
        self.spilled: list[tuple[int, int]] = []  # (offset, postings) of each run in the file
        self.df = np.zeros(0, np.int64)  # postings per term id

    def add(self, run: tuple[np.ndarray, np.ndarray, np.ndarray], n_terms: int) -> None:
        tid = run[0]
        if n_terms > len(self.df):
            self.df = np.concatenate([self.df, np.zeros(n_terms - len(self.df), np.int64)])
        self.df += np.bincount(tid, minlength=len(self.df))
        self.mem.append(run)
        self.size += 12 * len(tid)
        if self.size > SPILL_BYTES or self.file is not None:
            self._spill()

    def _spill(self) -> None:
        if self.file is None:
            self.file = tempfile.TemporaryFile(prefix="puffer-fts-runs-")  # noqa: SIM115 (closed by __iter__)
        for run in self.mem:
            off = self.file.seek(0, os.SEEK_END)
            for a in run:
                self.file.write(np.ascontiguousarray(a).tobytes())
            self.spilled.append((off, len(run[0])))
        self.mem, self.size = [], 0

    def __iter__(self):
        """Every run, in order (memory freed as it goes)."""
        if self.file is not None:
            with self.file:
                for off, k in self.spilled:
                    self.file.seek(off)
                    raw = self.file.read(12 * k)
                    yield (
                        np.frombuffer(raw, np.int32, k, 0),
                        np.frombuffer(raw, np.uint32, k, 4 * k),
                        np.frombuffer(raw, np.uint32, k, 8 * k),
                    )
            self.file = None
        while self.mem:
            yield self.mem.pop(0)


def inverted(values, opts: dict) -> Inverted:
    """The inverted lists of ``values`` (one per row: str, list[str] or None; a polars Series
    or a list) under the analyzer ``opts``."""
    n = len(values)
    ids = TermIds(opts)
    lens = np.zeros(n, np.int64)
    runs = _Runs()
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
            runs.add(_run(tid, row, a, b - a), ids.n_terms)
            del tid, row
    return _merge(ids.terms, runs, lens)


def _merge(terms_first: list[str], runs: _Runs, lens: np.ndarray) -> Inverted:
    """Counting sort of the chunks' runs into term order (rows stay ascending: chunks are in
    row order and each run is sorted by row within a term)."""
    order = np.asarray(pl.Series(terms_first, dtype=pl.String).arg_sort().to_numpy(), np.int64)  # UTF-8 byte order
    terms = [terms_first[i] for i in order]
    rank = np.empty(len(terms_first), np.int64)
    rank[order] = np.arange(len(terms_first), dtype=np.int64)
    df = np.zeros(len(terms), np.int64)
    df[rank[: len(runs.df)]] = runs.df
    tptr = np.zeros(len(terms) + 1, np.int64)
    np.cumsum(df, out=tptr[1:])
    total = int(tptr[-1])
    docs = np.empty(total, np.uint32)
    tfs = np.empty(total, np.uint32)
    cursor = tptr[:-1].copy()
    for tid, row, tf in runs:
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
