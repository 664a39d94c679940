"""Namespace-global BM25 document frequencies in blocks (format ``df-1``, docs/format-index.md).

A generation's df table of a full-text field, ``bm25-{tag}-{run}.dfb``: the terms in code point
order cut into blocks of ``DF_TERMS``; each block zlib-compressed: ``n`` (u32), ``n`` term byte
lengths (u32), the UTF-8 terms, ``n`` document frequencies (u32).  The manifest's ``bm25`` entry
of the field holds ``df_blocks``: the file's entry (``paged``: whole or in parts), ``first``
(each block's first term) and ``off`` (block offsets, one more than blocks: the file size), so a
cold query reads the blocks of its terms by range (a few kilobytes) instead of the whole table
(generations before it: ``terms``, an Arrow table read whole).
"""

from __future__ import annotations

import bisect
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

FORMAT = "df-1"
DF_TERMS = 1024  # terms per block


def encode(terms: list[str], df) -> tuple[bytes, list[str], list[int]]:
    """(file bytes, first term of each block, block offsets + the size) of sorted ``terms``."""
    dfa = np.asarray(df, dtype=np.int64)
    if len(dfa) and (dfa.min() < 0 or dfa.max() >= 1 << 32):
        raise ValueError("document frequency out of u32 range")
    pieces, firsts, offs = [], [], [0]
    for a in range(0, len(terms), DF_TERMS):
        b = min(a + DF_TERMS, len(terms))
        enc = [t.encode() for t in terms[a:b]]
        raw = b"".join(
            [
                np.array([b - a], "<u4").tobytes(),
                np.fromiter((len(e) for e in enc), np.uint32, len(enc)).astype("<u4").tobytes(),
                b"".join(enc),
                dfa[a:b].astype("<u4").tobytes(),
            ]
        )
        blob = zlib.compress(raw, 1)
        pieces.append(blob)
        firsts.append(terms[a])
        offs.append(offs[-1] + len(blob))
    return b"".join(pieces), firsts, offs


def decode_block(data: bytes) -> dict[str, int]:
    """term -> df of one block."""
    raw = zlib.decompress(data)
    n = int(np.frombuffer(raw, "<u4", 1)[0])
    tl = np.frombuffer(raw, "<u4", n, 4).astype(np.int64)
    p = 4 + 4 * n
    tb = int(tl.sum())
    blob = raw[p : p + tb]
    df = np.frombuffer(raw, "<u4", n, p + tb).tolist()
    ends = np.cumsum(tl).tolist()
    out, s = {}, 0
    for i, e in enumerate(ends):
        out[blob[s:e].decode()] = df[i]
        s = e
    if len(out) != n or len(raw) != p + tb + 4 * n:
        raise ValueError("df block: sizes do not add up")
    return out


class RangedDf(Mapping):
    """df lookup reading the blocks it needs (memoized): ``prefetch(terms)`` fetches the blocks
    of several terms in one batch; a lookup of a term whose block is not read yet reads it.
    ``read_ranges([(start, end)]) -> [bytes]``."""

    def __init__(self, entry: dict, read_ranges: Callable[[list[tuple[int, int]]], list[bytes]]):
        self.first: list[str] = list(entry["first"])
        self.off: list[int] = [int(x) for x in entry["off"]]
        self.read = read_ranges
        self._blocks: dict[int, dict[str, int]] = {}
        self._lock = threading.Lock()

    def _block_of(self, t: str) -> int:
        return bisect.bisect_right(self.first, t) - 1

    def prefetch(self, terms: Iterable[str]) -> None:
        with self._lock:
            need = sorted({i for t in terms if (i := self._block_of(t)) >= 0 and i not in self._blocks})
        if not need:
            return
        got = self.read([(self.off[i], self.off[i + 1]) for i in need])
        blocks = {i: decode_block(b) for i, b in zip(need, got)}
        with self._lock:
            self._blocks.update(blocks)

    def get(self, k, default=0):
        i = self._block_of(k)
        if i < 0:
            return default
        blk = self._blocks.get(i)
        if blk is None:
            self.prefetch([k])
            blk = self._blocks[i]
        v = blk.get(k)
        return default if v is None else v

    def __getitem__(self, k):
        v = self.get(k, None)
        if v is None:
            raise KeyError(k)
        return v

    def _all(self) -> None:
        self.prefetch(self.first)

    def __iter__(self) -> Iterator[str]:
        self._all()
        for i in range(len(self.first)):
            yield from self._blocks[i]

    def __len__(self) -> int:
        self._all()
        return sum(len(b) for b in self._blocks.values())
