"""Query side of the full-text block format ``blk-1``: decoding a term's postings, and the exact
top-k candidates of a BM25 clause by row-window upper bounds.

Decoding (:func:`decode`): every block of a term is read as 128 values at once, each value an
unaligned little-endian 64-bit load shifted and masked (no bit-by-bit unpacking), so a term of
``df`` postings costs a dozen numpy passes over ``df`` values.

Pruning (:func:`top_rows_many`): the rows of a segment are cut into windows of ``WINDOW`` rows.  For
a term, its *base score* of a posting is ``tf (k1 + 1) / (tf + k1 (1 - b + b len / avg))``
(its BM25 score divided by idf), a per-window maximum of it is kept per term (:class:`Scored`,
computed once per term and statistics, cached on the decoded term).  For a query
``sum_t c_t * bm25_t`` (``c_t`` = multiplicity x idf), a window's bound is
``S[w] = sum_t c_t * wmax_t[w]``: no row of the window scores more.  Windows are scored exactly
in decreasing ``S`` (a few first, then every window whose bound reaches the k-th best exact
score found so far, theta); a window bounded below theta holds no row of the top k.  The
bounds are exact per window (not per block's max tf and min length), and a rare term adds its
score only to the windows holding its rows, so a query mixing rare and common terms scores a
few windows of the common terms' postings.  Rows scored inside the kept windows are exact, the
candidates returned are the top k and their near-ties (the engine re-scores them).

A query's segments are pruned in one pass (:func:`top_rows_many`): their per-term windows are
joined in one row space (segment ``s`` from a row offset that is a multiple of WINDOW), so the
rounds of scoring and their numpy steps are paid once per query, not once per segment, and the
k-th best score found in one segment bounds the windows of all.
"""

from __future__ import annotations

import numpy as np

BLOCK = 128  # postings per block (fts.BLOCK: the format's)
META = 18  # bytes of block metadata per block: first, last, max_tf, min_len (u32), dw, tw (u8)
WINDOW_SHIFT = 6
WINDOW = 1 << WINDOW_SHIFT  # rows per window of the upper bounds
SPARSE_SLOTS = 8  # postings x this under the windows' slots: tallied by sorting them
REL = 1e-9  # relative margin of bounds and cuts over float rounding (candidates are re-scored)
_J = np.arange(BLOCK, dtype=np.int64)


def decode(data: bytes, nb: int, df: int):
    """(rows int32 ascending, tf float32, first, last, max_tf, min_len int64 per block, bptr)
    of a term's encoded postings (fts ``_encode_terms``: per-block metadata, then per block
    its doc deltas and tf - 1, bit-packed value-major, little-endian bit order)."""
    raw = np.frombuffer(data, np.uint8)
    if nb == 0 or df == 0:
        z = np.zeros(0, np.int64)
        return np.zeros(0, np.int32), np.zeros(0, np.float32), z, z, z, z, np.zeros(1, np.int64)
    meta = raw[: META * nb]
    first = meta[: 4 * nb].view("<u4").astype(np.int64)
    last = meta[4 * nb : 8 * nb].view("<u4").astype(np.int64)
    max_tf = meta[8 * nb : 12 * nb].view("<u4").astype(np.int64)
    min_len = meta[12 * nb : 16 * nb].view("<u4").astype(np.int64)
    dw = meta[16 * nb : 17 * nb].astype(np.int64)
    tw = meta[17 * nb : 18 * nb].astype(np.int64)
    count = np.full(nb, BLOCK, np.int64)
    count[-1] = df - BLOCK * (nb - 1)
    dbytes = (count * dw + 7) // 8
    tbytes = (count * tw + 7) // 8
    start = np.zeros(nb, np.int64)
    np.cumsum((dbytes + tbytes)[:-1], out=start[1:])
    # the body, padded so that full-width reads past a short last block stay in the buffer
    body = np.zeros(len(raw) - META * nb + BLOCK * 4 + 16, np.uint8)
    body[: len(raw) - META * nb] = raw[META * nb :]
    u64 = np.ndarray((len(body) - 7,), dtype="<u8", buffer=body, offset=0, strides=(1,))
    delta = _read(u64, start, dw)
    tf1 = _read(u64, start + dbytes, tw)
    delta[:, 0] = first
    np.cumsum(delta, axis=1, out=delta)  # in place: rows
    rows = delta.reshape(-1)[:df]
    tf = tf1.reshape(-1)[:df].astype(np.float32)
    tf += 1
    bptr = np.zeros(nb + 1, np.int64)
    np.cumsum(count, out=bptr[1:])
    return rows.astype(np.int32), tf, first, last, max_tf, min_len, bptr


def _read(u64: np.ndarray, start: np.ndarray, width: np.ndarray) -> np.ndarray:
    """(blocks, 128) values of ``width`` bits each from byte ``start`` of each block (int64;
    np.take: fancy indexing of the byte-strided view costs ~2.5x as much)."""
    bit = start[:, None] * 8 + _J[None, :] * width[:, None]
    v = np.take(u64, bit >> 3)
    bit &= 7
    v >>= bit.view(np.uint64)
    v &= ((np.uint64(1) << width.astype(np.uint64)) - np.uint64(1))[:, None]
    return v.view(np.int64)  # values under 2^32: the same bits


class Scored:
    """A term's postings in windows, under fixed BM25 parameters: base score per posting,
    the windows holding its rows (ascending), their posting ranges and maximum base score."""

    __slots__ = ("key", "s0", "wid", "wptr", "wmax", "low")

    def __init__(self, key: tuple, rows: np.ndarray, tf: np.ndarray, lens: np.ndarray, k1: float, b: float, avg: float):
        self.key = key
        t = tf.astype(np.float64)
        if avg > 0:  # t (k1 + 1) / (t + k1 (1 - b + b len / avg)), in place
            d = np.take(lens, rows)
            d *= k1 * b / avg
            d += k1 * (1.0 - b)
        else:
            d = np.full(len(rows), k1 * (1.0 - b))
        d += t
        t *= k1 + 1.0
        t /= d
        self.s0 = t
        w = rows >> WINDOW_SHIFT
        new = np.ones(len(rows), bool)  # a posting opening a window
        np.not_equal(w[1:], w[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        self.wid = w[starts].astype(np.int64)
        self.wptr = np.append(starts, len(rows)).astype(np.int64)
        # each window's maximum: ufunc.at over the postings' window ordinals (maximum.reduceat
        # pays a call per window, ~2.6 postings each here: twice the time)
        self.wmax = np.full(len(starts), -np.inf)
        if len(rows):
            np.maximum.at(self.wmax, np.cumsum(new) - 1, t)
        self.low = (rows & (WINDOW - 1)).astype(np.uint8)  # each posting's row within its window


def scored(tb, lens: np.ndarray, k1: float, b: float, avg: float) -> Scored:
    """The term's :class:`Scored` for these parameters (cached on ``tb``, a fts.TermBlocks)."""
    key = (k1, b, avg, len(lens))
    s = tb.scored
    if s is None or s.key != key:
        s = Scored(key, tb.rows, tb.tf, lens, k1, b, avg)
        tb.scored = s
    return s


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(lo[i], hi[i])``."""
    n = hi - lo
    tot = int(n.sum())
    if not tot:
        return np.zeros(0, np.int64)
    off = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
    return np.arange(tot, dtype=np.int64) + off


class _Joined:
    """A term's :class:`Scored` of several segments in one row space (segment ``s`` from row
    ``offset[s]``, a multiple of WINDOW): the same fields, window ids and posting ranges
    shifted."""

    __slots__ = ("s0", "wid", "wptr", "wmax", "low")

    def __init__(self, parts: list[tuple[Scored, int]]):
        if len(parts) == 1 and parts[0][1] == 0:
            s = parts[0][0]
            self.s0, self.wid, self.wptr, self.wmax, self.low = s.s0, s.wid, s.wptr, s.wmax, s.low
            return
        sizes = np.array([len(s.s0) for s, _o in parts], np.int64)
        base = np.concatenate([[0], np.cumsum(sizes)])
        self.s0 = np.concatenate([s.s0 for s, _o in parts])
        self.low = np.concatenate([s.low for s, _o in parts])
        self.wmax = np.concatenate([s.wmax for s, _o in parts])
        self.wid = np.concatenate([s.wid + (o >> WINDOW_SHIFT) for s, o in parts])
        self.wptr = np.concatenate([s.wptr[:-1] + base[i] for i, (s, _o) in enumerate(parts)] + [base[-1:]])


def _score_windows(win: np.ndarray, terms: list, coef: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(rows ascending, exact scores) of every row holding a query term in windows ``win``
    (sorted window ids)."""
    slots, vals = [], []
    for s, c in zip(terms, coef):
        i = np.searchsorted(s.wid, win)
        ok = i < len(s.wid)
        ok[ok] = s.wid[i[ok]] == win[ok]
        if not ok.any():
            continue
        i = i[ok]
        ix = _ranges(s.wptr[i], s.wptr[i + 1])
        j = np.repeat(np.flatnonzero(ok), s.wptr[i + 1] - s.wptr[i])
        slots.append(j * WINDOW + s.low[ix])
        vals.append(c * s.s0[ix])
    if not slots:
        return np.zeros(0, np.int64), np.zeros(0)
    sl = np.concatenate(slots)
    v = np.concatenate(vals)
    if len(sl) * SPARSE_SLOTS < len(win) * WINDOW:  # few postings per window: sort, not a dense tally
        o = np.argsort(sl, kind="stable")
        sl = sl[o]
        cut = np.flatnonzero(np.concatenate([[True], sl[1:] != sl[:-1]]))
        at = sl[cut]
        acc_at = np.add.reduceat(v[o], cut)
    else:
        acc = np.bincount(sl, weights=v, minlength=len(win) * WINDOW)
        at = np.flatnonzero(np.bincount(sl, minlength=len(win) * WINDOW))
        acc_at = acc[at]
    rows = win[at >> WINDOW_SHIFT] * WINDOW + (at & (WINDOW - 1))
    return rows, acc_at


def top_rows_many(parts, weights, idf, k: int, k1: float, b: float, avg: float) -> list[np.ndarray]:
    """The rows of each part (ascending, passing its ``sel``) holding the top ``k`` of the clause
    ``sum_t weights[t] * idf[t] * bm25_t`` over the union of several segments (``parts``:
    (posts: term -> fts.TermBlocks, lens, sel) each, statistics namespace-wide) and their
    near-ties: exact, whatever the data (see the module docstring).  One pass over their
    windows in one row space, so a query's steps are paid once, not once per segment."""
    ts = sorted({t for posts, _l, _s in parts for t in posts if weights.get(t, 0) > 0 and len(posts[t].rows)})
    empty = [np.zeros(0, np.int64) for _ in parts]
    if not ts or k <= 0:
        return empty
    sizes = [len(lens) for _p, lens, _s in parts]
    padded = [(n + WINDOW - 1) >> WINDOW_SHIFT << WINDOW_SHIFT for n in sizes]
    off = np.concatenate([[0], np.cumsum(padded)]).astype(np.int64)
    nw = int(off[-1]) >> WINDOW_SHIFT
    sc = [
        _Joined(
            [
                (scored(posts[t], lens, k1, b, avg), int(off[i]))
                for i, (posts, lens, _s) in enumerate(parts)
                if t in posts and len(posts[t].rows)
            ]
        )
        for t in ts
    ]
    coef = [float(weights[t]) * float(idf[t]) for t in ts]
    bound = np.zeros(nw)
    has = np.zeros(nw, bool)
    for s, c in zip(sc, coef):
        bound[s.wid] += max(c, 0.0) * s.wmax
        has[s.wid] = True
    bound *= 1 + REL
    sel = None
    if any(p[2] is not None and not p[2].all() for p in parts):  # windows without a selected row hold no result
        sel = np.zeros(int(off[-1]), bool)
        for i, (_p, _l, s_) in enumerate(parts):
            sel[off[i] : off[i] + sizes[i]] = True if s_ is None else s_
        has &= sel.reshape(nw, WINDOW).any(axis=1)
    live = np.flatnonzero(has)
    if any(c <= 0 or not np.isfinite(c) for c in coef):
        bound[live] = np.inf  # a term scoring <= 0 (df above N): no bound, score every window
    got_r: list[np.ndarray] = []
    got_s: list[np.ndarray] = []
    theta = -np.inf
    m = max(64, k)
    todo = live
    while len(todo):
        if len(todo) > m:
            pick = todo[np.argpartition(-bound[todo], m - 1)[:m]]
            pick.sort()
        else:
            pick = todo
        r, v = _score_windows(pick, sc, coef)
        if sel is not None:
            keep = sel[r]
            r, v = r[keep], v[keep]
        got_r.append(r)
        got_s.append(v)
        alls = np.concatenate(got_s)
        if len(alls) >= k:
            theta = float(np.partition(alls, len(alls) - k)[len(alls) - k])
        done = np.zeros(nw, bool)
        done[pick] = True
        todo = todo[~done[todo]]
        todo = todo[bound[todo] >= theta]
        m *= 4
    if not got_r:  # no window holds a selected row with a query term
        return empty
    rows, vals = np.concatenate(got_r), np.concatenate(got_s)
    if np.isfinite(theta):
        cut = theta - abs(theta) * REL * 10
        rows = rows[vals >= cut]
    rows = np.sort(rows).astype(np.int64)
    at = np.searchsorted(rows, off)
    return [rows[at[i] : at[i + 1]] - off[i] for i in range(len(parts))]
