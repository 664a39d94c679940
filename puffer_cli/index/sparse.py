"""The sparse vector index of a ``{}f16`` attribute with ``sparse_knn``, per segment
(``sparse-{tag}.blk``, format spk-1; docs/format-index.md): an inverted index over
dimensions laid out for ranged reads like the full-text block index, whose codecs it
reuses (puffer_cli/index/fts.py: bit packing, dictionary blocks).

File: the postings of every dimension (code point order), then the dictionary blocks
(DICT_TERMS dimensions each: dimension, postings count, byte offset, length, blocks).  A
dimension's postings are blocks of BLOCK rows: a head of per-block columns (first row u32,
last row u32, max weight f32, min weight f32, delta width u8), then per block the row
deltas bit-packed and the weights as float16 (exact: the stored weights are float16).

Query (:func:`prune`, exact): short postings (DIRECT_POSTINGS in all) are decoded and every
row scored.  Otherwise MaxScore with block-max bounds: a block's bound is ``q * max`` (or ``q *
min`` for a negative query weight) clamped at 0, a dimension's the largest of its blocks'.
theta = the k-th best exact score of the rows of the best-bounded dimensions; the dimensions of
smallest bound whose bounds sum below theta are non-essential (a row holding only those cannot
reach theta), so candidates are the rows of the essential dimensions (decoded whole); each
candidate is bounded by its exact essential contributions plus the bounds of the non-essential
blocks covering it (not decoded), those below theta are dropped, and the rest scored exactly
(decoding only the blocks that cover them).  Every row of the segment's top k survives (its
score >= theta, every bound >= its score), and the engine re-scores the survivors from their
stored vectors, so the answer is the exhaustive one.
"""

from __future__ import annotations

import threading

import numpy as np
import polars as pl

from puffer_cli.index import fts as F
from puffer_cli.schema import sparse as SV

SPK = "spk-1"
DIRECT_POSTINGS = 65_536  # query postings up to this: decode them all and score every row (no bounds)
SAMPLE = 4  # theta from the rows of the best-bounded dimensions: at least this many per requested row
META = 17  # head bytes per block


def build(values) -> tuple[bytes, dict]:
    """The index of one segment's ``{}f16`` column (stored forms or None, one per row):
    (file bytes, manifest entry fields)."""
    n = len(values)
    rows, keys, w16 = SV.parse_column(values if isinstance(values, pl.Series) else list(values))
    first_seen: dict[str, int] = {}
    setdefault = first_seen.setdefault
    kid0 = np.fromiter((setdefault(k, len(first_seen)) for k in keys), np.int64, len(keys))
    dims = sorted(first_seen)
    rank = np.empty(len(dims), np.int64)
    for r, d in enumerate(dims):
        rank[first_seen[d]] = r
    kid = rank[kid0] if len(kid0) else kid0
    o = np.argsort(kid, kind="stable")  # rows stay ascending per dimension
    kid, rows, w16 = kid[o], rows[o], w16[o]
    tptr = np.zeros(len(dims) + 1, np.int64)
    np.cumsum(np.bincount(kid, minlength=len(dims)), out=tptr[1:])
    data, off, ln, nb = _encode(rows, w16, tptr)
    pieces = [data.tobytes()]
    pos = len(pieces[0])
    df = np.diff(tptr)
    firsts, doffs = [], [pos]
    for a in range(0, len(dims), F.DICT_TERMS):
        b = min(a + F.DICT_TERMS, len(dims))
        blob = F._dict_block(dims[a:b], df[a:b], off[a:b], ln[a:b], nb[a:b])
        pieces.append(blob)
        pos += len(blob)
        firsts.append(dims[a])
        doffs.append(pos)
    entry = {"format": SPK, "block": F.BLOCK, "rows": n, "dict": {"first": firsts, "off": doffs}, "dims": len(dims)}
    return b"".join(pieces), entry


def _encode(rows: np.ndarray, w16: np.ndarray, tptr: np.ndarray):
    """Postings of consecutive dimensions (dimension i: rows[tptr[i]:tptr[i+1]]) -> (bytes,
    per dimension offset, length, blocks)."""
    nd = len(tptr) - 1
    df = np.diff(tptr)
    nblk = (df + F.BLOCK - 1) // F.BLOCK
    bptr = np.zeros(nd + 1, np.int64)
    np.cumsum(nblk, out=bptr[1:])
    nb = int(bptr[-1])
    dim_of = np.repeat(np.arange(nd), nblk)
    k = np.arange(nb) - bptr[dim_of]
    bstart = tptr[dim_of] + k * F.BLOCK
    bend = np.minimum(bstart + F.BLOCK, tptr[dim_of + 1])
    count = bend - bstart
    delta = np.zeros(len(rows), np.int64)
    delta[1:] = rows[1:] - rows[:-1]
    delta[bstart] = 0
    wf = w16.astype(np.float32)
    if nb:
        maxd = np.maximum.reduceat(delta, bstart)
        maxw, minw = np.maximum.reduceat(wf, bstart), np.minimum.reduceat(wf, bstart)
    else:
        maxd, maxw, minw = np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32)
    dw = F._widths(maxd)
    dbytes, ddata = F._pack(delta, bstart, count, dw)
    blkbytes = dbytes + 2 * count
    databytes = np.add.reduceat(blkbytes, bptr[:-1]) if nb else np.zeros(nd, np.int64)
    databytes = np.where(nblk > 0, databytes, 0)
    tlen = META * nblk + databytes
    toff = np.zeros(nd + 1, np.int64)
    np.cumsum(tlen, out=toff[1:])
    out = np.zeros(int(toff[-1]), np.uint8)
    cols = [
        (rows[bstart].astype("<u4"), 4),
        (rows[bend - 1].astype("<u4"), 4),
        (maxw.astype("<f4"), 4),
        (minw.astype("<f4"), 4),
        (dw.astype("u1"), 1),
    ]
    F.put_block_heads(out, toff[dim_of], nblk[dim_of], k, cols)
    cum = np.zeros(nb + 1, np.int64)
    np.cumsum(blkbytes, out=cum[1:])
    dstart = toff[dim_of] + META * nblk[dim_of] + (cum[:-1] - cum[bptr[dim_of]])
    F.scatter(out, ddata, dbytes, dstart)
    wbytes = w16.astype("<f2").view(np.uint8)
    F.scatter(out, wbytes, 2 * count, dstart + dbytes)
    return out, toff[:-1], tlen, nblk


class DimBlocks:
    """One dimension's postings in a segment: the block heads decoded, blocks decoded on
    demand (:meth:`decode`) into flat arrays (``rows``: every posting's row, the block's first
    row standing in until the block is decoded, so the array stays sorted; ``weights``)."""

    def __init__(self, data: bytes, nblocks: int, df: int):
        raw = np.frombuffer(data, np.uint8)
        nb = nblocks
        p = 0

        def col(dt: str, size: int) -> np.ndarray:
            nonlocal p
            a = np.frombuffer(raw[p : p + size * nb].tobytes(), dt)
            p += size * nb
            return a

        self.first = col("<u4", 4).astype(np.int64)
        self.last = col("<u4", 4).astype(np.int64)
        self.maxw = col("<f4", 4).astype(np.float64)
        self.minw = col("<f4", 4).astype(np.float64)
        self.dw = col("u1", 1).astype(np.int64)
        self.count = np.full(nb, F.BLOCK, np.int64)
        if nb:
            self.count[-1] = df - F.BLOCK * (nb - 1)
        self.bptr = np.zeros(nb + 1, np.int64)
        np.cumsum(self.count, out=self.bptr[1:])
        dbytes = (self.count * self.dw + 7) // 8
        cum = np.zeros(nb + 1, np.int64)
        np.cumsum(dbytes + 2 * self.count, out=cum[1:])
        self.boff = cum[:-1]
        self.dbytes = dbytes
        self.body = raw[p:]
        self.decoded = np.zeros(nb, bool)
        self._lock = threading.Lock()
        self.rows = np.repeat(self.first, self.count)
        self.weights = np.zeros(df, np.float64)

    def decode(self, blocks: np.ndarray) -> None:
        """Decode ``blocks`` (indices) not decoded yet."""
        m = np.zeros(len(self.count), bool)
        m[np.asarray(blocks, np.int64)] = True
        need = np.flatnonzero(m & ~self.decoded)
        if not len(need):
            return
        with self._lock:
            self._decode(need)

    def _decode(self, need: np.ndarray) -> None:
        need = need[~self.decoded[need]]
        if not len(need):
            return
        cnt = self.count[need]
        deltas = F._unpack(self.body, self.boff[need], cnt, self.dw[need]).astype(np.int64)
        owner = np.repeat(np.arange(len(need)), cnt)
        start = np.zeros(len(need) + 1, np.int64)
        np.cumsum(cnt, out=start[1:])
        cs = np.cumsum(deltas)
        base = cs[start[:-1]] - deltas[start[:-1]]  # cumulative sum before each block
        dst = self.bptr[need][owner] + (np.arange(len(deltas)) - start[owner])
        self.rows[dst] = self.first[need][owner] + (cs - base[owner])
        wsrc = (self.boff[need] + self.dbytes[need])[owner] + 2 * (np.arange(len(deltas)) - start[owner])
        wb = self.body[np.stack([wsrc, wsrc + 1], axis=1)].reshape(-1)
        self.weights[dst] = np.frombuffer(wb.tobytes(), "<f2").astype(np.float64)
        self.decoded[need] = True

    def rows_of(self, blocks: np.ndarray) -> np.ndarray:
        """The rows of (decoded) ``blocks``."""
        m = np.zeros(len(self.count), bool)
        m[blocks] = True
        return self.rows[np.repeat(m, self.count)]

    def block_of(self, rows: np.ndarray) -> np.ndarray:
        """The block whose row range covers each of ``rows`` (-1: none)."""
        b = np.searchsorted(self.last, rows, side="left")
        ok = b < len(self.last)
        ok[ok] &= self.first[b[ok]] <= rows[ok]
        return np.where(ok, b, -1)

    def lookup(self, rows: np.ndarray) -> np.ndarray:
        """The weight of each of ``rows`` (0 where absent); their covering blocks are decoded."""
        j = np.searchsorted(self.rows, rows).clip(0, max(len(self.rows) - 1, 0))
        hit = self.rows[j] == rows if len(self.rows) else np.zeros(len(rows), bool)
        return np.where(hit, self.weights[j] if len(self.rows) else 0.0, 0.0)


class SparseIndex:
    """Reader of a segment's ``sparse-{tag}.blk``: dictionary blocks and the postings of the
    dimensions a query names, by ranged reads (memoized)."""

    MAX_DIMS = 4096  # decoded dimensions kept

    def __init__(self, entry: dict, read_ranges, damage):
        from collections import OrderedDict
        from threading import RLock

        self.entry, self.read, self.damage = entry, read_ranges, damage
        self.rows = int(entry["rows"])
        self._dict: dict[int, F.DictBlock] = {}
        self._dims: OrderedDict = OrderedDict()
        self._lock = RLock()

    def _dict_ids(self, dims) -> list[int]:
        import bisect

        first = self.entry["dict"]["first"]
        return sorted({i for d in dims if (i := bisect.bisect_right(first, d) - 1) >= 0})

    def postings(self, dims) -> dict[str, DimBlocks]:
        """The postings of ``dims`` present in the segment (two batches of reads at most:
        dictionary blocks, then postings)."""
        import zlib

        try:
            offs = self.entry["dict"]["off"]
            with self._lock:
                need = [i for i in self._dict_ids(dims) if i not in self._dict]
            if need:
                got = self.read([(offs[i], offs[i + 1]) for i in need])
                with self._lock:
                    for i, blob in zip(need, got):
                        self._dict[i] = F._read_dict_block(blob)
            ent = {}
            with self._lock:
                for d in dims:
                    ids = self._dict_ids([d])
                    if ids and d in self._dict[ids[0]]:
                        ent[d] = self._dict[ids[0]][d]
                out = {d: self._dims[d] for d in ent if d in self._dims}
            miss = [d for d in ent if d not in out]
            if miss:
                got = self.read([(ent[d][1], ent[d][1] + ent[d][2]) for d in miss])
                with self._lock:
                    for d, blob in zip(miss, got):
                        out[d] = self._dims[d] = DimBlocks(blob, ent[d][3], ent[d][0])
                    while len(self._dims) > self.MAX_DIMS:
                        self._dims.popitem(last=False)
            return out
        except FileNotFoundError as e:
            raise self.damage(e, True) from e
        except (zlib.error, ValueError, IndexError, EOFError, OSError) as e:
            raise self.damage(e, False) from e


def _exact(posts: dict[str, DimBlocks], q: dict[str, float], rows: np.ndarray, decode: bool):
    """(score, exact) of ``rows``: the contributions of every query dimension from decoded
    blocks (``decode``: decode the covering blocks first); where a covering block is not
    decoded, its non-negative bound instead (``exact`` false)."""
    s = np.zeros(len(rows), np.float64)
    exact = np.ones(len(rows), bool)
    for d in sorted(posts):
        db = posts[d]
        blk = db.block_of(rows)
        cov = blk >= 0
        if decode:
            db.decode(blk[cov])
        done = cov & db.decoded[np.where(cov, blk, 0)]
        s[done] += q[d] * db.lookup(rows[done])
        und = cov & ~done
        if und.any():
            bb = blk[und]
            s[und] += np.maximum(q[d] * (db.maxw[bb] if q[d] > 0 else db.minw[bb]), 0.0)
            exact[und] = False
    return s, exact


def _kth(scores: np.ndarray, k: int) -> float:
    return float(np.partition(scores, len(scores) - k)[len(scores) - k]) if 0 < k <= len(scores) else -np.inf


def _below(x: float) -> float:
    """A little below ``x`` (float slack: bounds and scores are summed in different orders)."""
    return x - 1e-9 * abs(x) - 1e-12


def _direct(posts: dict[str, DimBlocks], ds: list[str], q: dict[str, float], sel: np.ndarray, k: int) -> np.ndarray:
    """Short postings: every block decoded, every matching row scored exactly; the rows
    scoring at least the k-th best (ties kept)."""
    s = np.zeros(len(sel), np.float64)
    m = np.zeros(len(sel), bool)
    for d in ds:
        db = posts[d]
        db.decode(np.arange(len(db.first)))
        s[db.rows] += q[d] * db.weights
        m[db.rows] = True
    rows = np.flatnonzero(m & sel)
    if len(rows) <= k:
        return rows.astype(np.int64)
    return rows[s[rows] >= _below(_kth(s[rows], k))].astype(np.int64)


def prune(posts: dict[str, DimBlocks], q: dict[str, float], sel: np.ndarray, k: int) -> np.ndarray:
    """The rows (ascending, passing ``sel``) that can be in the segment's top ``k`` by the dot
    product with query weights ``q`` (MaxScore with block-max bounds; why it is exact: module
    docstring)."""
    ds = sorted(d for d in posts if len(posts[d].first))
    if not ds or k <= 0 or not sel.any():
        return np.zeros(0, np.int64)
    if sum(len(posts[d].rows) for d in ds) <= DIRECT_POSTINGS:
        return _direct(posts, ds, q, sel, k)
    top = {}
    for d in ds:
        db = posts[d]
        b = np.maximum(q[d] * (db.maxw if q[d] > 0 else db.minw), 0.0)
        top[d] = float(b.max()) * (1 + 1e-9) + 1e-12
    # theta: the k-th best exact score of the rows of the best-bounded dimensions (whole lists)
    seed: list[np.ndarray] = []
    got = 0
    for d in sorted(ds, key=lambda d: (-top[d], len(posts[d].rows))):
        db = posts[d]
        db.decode(np.arange(len(db.first)))
        seed.append(db.rows)
        got += len(db.rows)
        if got >= SAMPLE * k:
            break
    r0 = np.unique(np.concatenate(seed))
    r0 = r0[sel[r0]]
    s0, _ = _exact(posts, q, r0, decode=True)
    theta = _kth(s0, k)
    if theta == -np.inf:
        return _direct(posts, ds, q, sel, k)
    cut = _below(theta)
    # non-essential dimensions: together they cannot reach theta, so a row needs an essential one
    acc = 0.0
    essential: list[str] = []
    for d in sorted(ds, key=lambda d: top[d]):
        if not essential and acc + top[d] < cut:
            acc += top[d]
        else:
            essential.append(d)
    cand: list[np.ndarray] = []
    for d in essential:
        db = posts[d]
        db.decode(np.arange(len(db.first)))
        cand.append(db.rows)
    rows = np.unique(np.concatenate(cand)) if cand else np.zeros(0, np.int64)
    rows = rows[sel[rows]]
    # block-max bounds of the other dimensions, then exact scores of the rows still in reach
    ub, _ = _exact(posts, q, rows, decode=False)
    rows = rows[ub >= cut]
    s, _ = _exact(posts, q, rows, decode=True)
    theta = max(theta, _kth(s, k))
    return rows[s >= _below(theta)].astype(np.int64)
