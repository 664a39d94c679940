"""Query side of the full-text block format ``blk-1``: decoding a term's postings, and the exact
top-k candidates of a BM25 clause by row-window upper bounds.

Decoding (:func:`decode_many`): every block is read as 128 values at once, each value an
unaligned little-endian 64-bit load shifted and masked (no bit-by-bit unpacking), and the terms
a query needs decoded go through those passes together (every segment's, in batches of about
BATCH_POSTINGS postings): one numpy pass costs ~1-2 us before its data, so decoding ~40 terms
and segments one by one paid ~70 us each, more than their few thousand postings.

Pruning (:func:`top_rows_many`): the rows of a segment are cut into windows of ``WINDOW`` rows.  For
a term, its *base score* of a posting is ``tf (k1 + 1) / (tf + k1 (1 - b + b len / avg))``
(its BM25 score divided by idf), a per-window maximum of it is kept per term (:class:`Scored`,
computed over the query's segments in one row space, the query's new terms in one batch, and
cached by the decoded terms and statistics: :data:`SCORED`).  For a query
``sum_t c_t * bm25_t`` (``c_t`` = multiplicity x idf), a window's bound is
``S[w] = sum_t c_t * wmax_t[w]``: no row of the window scores more.  Windows are scored exactly
in decreasing ``S`` (a few first, then every window whose bound reaches the k-th best exact
score found so far, theta); a window bounded below theta holds no row of the top k.  The
bounds are exact per window (not per block's max tf and min length), and a rare term adds its
score only to the windows holding its rows, so a query mixing rare and common terms scores a
few windows of the common terms' postings.  Rows scored inside the kept windows are exact, the
candidates returned are the top k and their near-ties (the engine re-scores them).

A query's segments are pruned in one pass (:func:`top_rows_many`): a term's windows are
computed in one row space (segment ``s`` from a row offset that is a multiple of WINDOW), so the
rounds of scoring and their numpy steps are paid once per query, not once per segment, and the
k-th best score found in one segment bounds the windows of all.
"""

from __future__ import annotations

import numpy as np

from puffer_cli import caches, cores

BLOCK = 128  # postings per block (fts.BLOCK: the format's)
META = 18  # bytes of block metadata per block: first, last, max_tf, min_len (u32), dw, tw (u8)
WINDOW_SHIFT = 6
WINDOW = 1 << WINDOW_SHIFT  # rows per window of the upper bounds
FIRST_WINDOWS = 64  # windows scored in the first round (then 4x more a round)
SPARSE_SLOTS = 8  # postings x this under the windows' slots: tallied by sorting them
REL = 1e-9  # relative margin of bounds and cuts over float rounding (candidates are re-scored)
_J = np.arange(BLOCK, dtype=np.int64)
BATCH_POSTINGS = 1 << 17  # postings per batch of decoding or scoring (bounded temporaries)


class Damaged(ValueError):
    """Term ``at`` of a :func:`decode_many` batch does not decode (its bytes disagree with
    its block metadata)."""

    def __init__(self, at: int, why: str):
        super().__init__(why)
        self.at = at


def decode_many(items: list[tuple[bytes, int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows int32 ascending, tf float32) of each of several terms' encoded postings
    ((bytes, blocks, df) each; fts ``_encode_terms``: per-block metadata, then per block its
    doc deltas and tf - 1, bit-packed value-major, little-endian bit order), decoded in one
    batch: the numpy passes are paid once per query, not once per term and segment (~70 us
    each, more than a few thousand postings cost).  Raises :class:`Damaged` naming the first
    term whose bytes disagree with its metadata."""
    out: list = [(np.zeros(0, np.int32), np.zeros(0, np.float32))] * len(items)
    live = [i for i, (_d, nb, df) in enumerate(items) if nb and df]
    # batches of about BATCH_POSTINGS (temporaries stay in cache)
    for one in _batches(live, [items[i][2] for i in live]):
        _decode_batch(items, one, out)
    return out


def _batches(keys: list, sizes: list[int]) -> list[list]:
    """``keys`` in consecutive runs of about BATCH_POSTINGS (their ``sizes``) each."""
    out: list[list] = []
    n = 0
    for key, size in zip(keys, sizes):
        if not out or n + size > BATCH_POSTINGS:
            out.append([])
            n = 0
        out[-1].append(key)
        n += size
    return out


def _decode_batch(items: list[tuple[bytes, int, int]], live: list[int], out: list) -> None:
    """:func:`decode_many` of the terms ``live`` (indexes into ``items``, each with a block),
    into ``out``."""
    nbs = np.array([items[i][1] for i in live], np.int64)
    dfs = np.array([items[i][2] for i in live], np.int64)
    sizes = np.array([len(items[i][0]) for i in live], np.int64)
    if np.any(dfs > nbs * BLOCK) or np.any(dfs <= (nbs - 1) * BLOCK) or np.any(sizes < META * nbs):
        bad = int(np.flatnonzero((dfs > nbs * BLOCK) | (dfs <= (nbs - 1) * BLOCK) | (sizes < META * nbs))[0])
        raise Damaged(live[bad], f"{sizes[bad]} bytes for {dfs[bad]} postings in {nbs[bad]} blocks")
    toff = np.zeros(len(live) + 1, np.int64)
    np.cumsum(sizes, out=toff[1:])
    # the bytes, padded so that full-width reads past a short last block stay in the buffer
    body = np.zeros(int(toff[-1]) + BLOCK * 4 + 16, np.uint8)
    body[: int(toff[-1])] = np.frombuffer(b"".join(items[i][0] for i in live), np.uint8)
    term = np.repeat(np.arange(len(live)), nbs)  # each block's term
    bfirst = np.zeros(len(live) + 1, np.int64)
    np.cumsum(nbs, out=bfirst[1:])
    k = np.arange(int(bfirst[-1])) - bfirst[term]  # each block's index within its term
    base, nbt = toff[term], nbs[term]
    u32 = np.ndarray((len(body) - 3,), dtype="<u4", buffer=body, offset=0, strides=(1,))
    first = np.take(u32, base + 4 * k).astype(np.int64)
    dw = body[base + 16 * nbt + k].astype(np.int64)
    tw = body[base + 17 * nbt + k].astype(np.int64)
    if dw.max() > 32 or tw.max() > 32:
        bad = int(term[np.flatnonzero((dw > 32) | (tw > 32))[0]])
        raise Damaged(live[bad], "a block's bit width is over 32")
    count = np.full(len(k), BLOCK, np.int64)
    count[bfirst[1:] - 1] = dfs - BLOCK * (nbs - 1)
    dbytes = (count * dw + 7) // 8
    blk = dbytes + (count * tw + 7) // 8
    cum = np.zeros(len(k) + 1, np.int64)
    np.cumsum(blk, out=cum[1:])
    used = META * nbs + cum[bfirst[1:]] - cum[bfirst[:-1]]
    if np.any(used != sizes):
        bad = int(np.flatnonzero(used != sizes)[0])
        raise Damaged(live[bad], f"{sizes[bad]} bytes where the blocks' widths give {used[bad]}")
    start = base + META * nbt + cum[:-1] - cum[bfirst[term]]
    u64 = np.ndarray((len(body) - 7,), dtype="<u8", buffer=body, offset=0, strides=(1,))
    vals = _read(u64, np.concatenate([start, start + dbytes]), np.concatenate([dw, tw]))
    delta, tf1 = vals[: len(k)], vals[len(k) :]
    delta[:, 0] = first
    np.cumsum(delta, axis=1, out=delta)  # in place: rows
    keep = _J[None, :] < count[:, None]  # the last block of a term may be short
    rows = delta[keep].astype(np.int32)
    tf = tf1[keep].astype(np.float32)
    tf += 1
    pptr = np.zeros(len(live) + 1, np.int64)
    np.cumsum(dfs, out=pptr[1:])
    for j, i in enumerate(live):
        a, z = int(pptr[j]), int(pptr[j + 1])
        out[i] = (rows[a:z].copy(), tf[a:z].copy())  # copies: a cached term holds only its own


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
    """A query term's postings over a query's segments in one row space (segment ``s`` from
    row ``off[s]``, a multiple of WINDOW), under fixed BM25 parameters: base score per
    posting, the windows holding its rows (ascending), their posting ranges and maximum base
    score, each posting's row within its window."""

    __slots__ = ("s0", "wid", "wptr", "wmax", "low")

    def __init__(self, s0: np.ndarray, wid: np.ndarray, wptr: np.ndarray, wmax: np.ndarray, low: np.ndarray):
        self.s0, self.wid, self.wptr, self.wmax, self.low = s0, wid, wptr, wmax, low

    def nbytes(self) -> int:
        return 9 * len(self.s0) + 24 * len(self.wid) + 200


#: window bounds of the terms of recent queries, by (store url, namespace, BM25 parameters, and
#: per segment the decoded term's serial number, the segment's rows and row offset): a warm
#: query joins a term's segments once
SCORED = caches.lru("index.fts_scored", 1 << 16, maxbytes=512 << 20, weigh=Scored.nbytes)


def scored_many(terms: list, k1: float, b: float, avg: float) -> list[Scored]:
    """Each query term's :class:`Scored` (``terms``: per term, its (fts.TermBlocks, the
    segment's document lengths, the segment's row offset) parts), from :data:`SCORED`; the
    others are computed in batches of about BATCH_POSTINGS postings (the numpy passes paid
    once per batch, not once per term and segment)."""
    keys = [
        (*parts[0][0].scope, k1, b, avg, tuple((tb.serial, len(lens), off) for tb, lens, off in parts))
        for parts in terms
    ]
    out = [SCORED.get(key) for key in keys]
    need = [i for i, sc in enumerate(out) if sc is None]
    for one in _batches(need, [sum(tb.df for tb, _l, _o in terms[i]) for i in need]):
        for i, sc in zip(one, _score_batch([terms[i] for i in one], k1, b, avg)):
            SCORED.put(keys[i], sc)
            out[i] = sc
    return out


def _score_batch(terms: list, k1: float, b: float, avg: float) -> list[Scored]:
    """:class:`Scored` of each of ``terms`` (as :func:`scored_many` takes them)."""
    parts = [p for one in terms for p in one]
    n = np.array([tb.df for tb, _l, _o in parts], np.int64)
    ptr = np.zeros(len(parts) + 1, np.int64)
    np.cumsum(n, out=ptr[1:])
    r = np.empty(int(ptr[-1]), np.int64)  # rows in the joined row space
    d = np.empty(len(r))
    for j, (tb, lens, off) in enumerate(parts):
        np.add(tb.rows, off, out=r[ptr[j] : ptr[j + 1]])
        if avg > 0:
            d[ptr[j] : ptr[j + 1]] = np.take(lens, tb.rows)  # lengths as stored: u1 / u2 / u4
    t = np.concatenate([tb.tf for tb, _l, _o in parts]).astype(np.float64)
    if avg > 0:  # t (k1 + 1) / (t + k1 (1 - b + b len / avg)), in place
        d *= k1 * b / avg
        d += k1 * (1.0 - b)
    else:
        d[:] = k1 * (1.0 - b)
    d += t
    t *= k1 + 1.0
    t /= d
    tptr = np.zeros(len(terms) + 1, np.int64)  # each term's postings
    np.cumsum([sum(tb.df for tb, _l, _o in one) for one in terms], out=tptr[1:])
    w = r >> WINDOW_SHIFT
    new = np.ones(len(r), bool)  # a posting opening a window (or a term)
    np.not_equal(w[1:], w[:-1], out=new[1:])
    new[tptr[:-1][np.diff(tptr) > 0]] = True
    starts = np.flatnonzero(new)
    # each window's maximum: ufunc.at over the postings' window ordinals (maximum.reduceat
    # pays a call per window, ~2.6 postings each here: twice the time)
    wmax = np.full(len(starts), -np.inf)
    np.maximum.at(wmax, np.cumsum(new) - 1, t)
    low = (r & (WINDOW - 1)).astype(np.uint8)  # each posting's row within its window
    wat = np.searchsorted(starts, tptr)  # each term's first window
    out = []
    for j in range(len(terms)):
        a, z, wa, wz = int(tptr[j]), int(tptr[j + 1]), int(wat[j]), int(wat[j + 1])
        sw = starts[wa:wz]
        out.append(
            Scored(
                t[a:z].copy(),
                w[sw],
                np.append(sw - a, z - a),
                wmax[wa:wz].copy(),
                low[a:z].copy(),
            )
        )
    return out


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(lo[i], hi[i])``."""
    n = hi - lo
    tot = int(n.sum())
    if not tot:
        return np.zeros(0, np.int64)
    off = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
    return np.arange(tot, dtype=np.int64) + off


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
        # a row holding a term has a positive sum where every coefficient is (base scores are)
        at = np.flatnonzero(acc if min(coef) > 0 else np.bincount(sl, minlength=len(win) * WINDOW))
        acc_at = acc[at]
    rows = win[at >> WINDOW_SHIFT] * WINDOW + (at & (WINDOW - 1))
    return rows, acc_at


def top_rows_many(parts, weights, idf, k: int, k1: float, b: float, avg: float) -> list[np.ndarray]:
    """The rows of each part (ascending, passing its ``sel``) holding the top ``k`` of the clause
    ``sum_t weights[t] * idf[t] * bm25_t`` over the union of several segments (``parts``:
    (posts: term -> fts.TermBlocks, lens, sel) each, statistics namespace-wide) and their
    near-ties: exact, whatever the data (see the module docstring).  One pass over their
    windows in one row space, so a query's steps are paid once, not once per segment."""
    ts = sorted({t for posts, _l, _s in parts for t in posts if weights.get(t, 0) > 0 and posts[t].df})
    empty = [np.zeros(0, np.int64) for _ in parts]
    if not ts or k <= 0:
        return empty
    sizes = [len(lens) for _p, lens, _s in parts]
    padded = [(n + WINDOW - 1) >> WINDOW_SHIFT << WINDOW_SHIFT for n in sizes]
    off = np.concatenate([[0], np.cumsum(padded)]).astype(np.int64)
    nw = int(off[-1]) >> WINDOW_SHIFT
    sc = scored_many(
        [
            [(posts[t], lens, int(off[i])) for i, (posts, lens, _s) in enumerate(parts) if t in posts and posts[t].df]
            for t in ts
        ],
        k1,
        b,
        avg,
    )
    coef = [float(weights[t]) * float(idf[t]) for t in ts]
    # every coefficient > 0, and k1 small enough that no base score overflows or rounds to 0:
    # a window's bound is then > 0 exactly where it holds a term
    positive = all(c > 0 and np.isfinite(c) for c in coef) and k1 <= 1e200
    bound = np.zeros(nw)
    has = None if positive else np.zeros(nw, bool)  # else a window holds a term where its bound is > 0
    for s, c in zip(sc, coef):
        bound[s.wid] += max(c, 0.0) * s.wmax
        if has is not None:
            has[s.wid] = True
    bound *= 1 + REL
    if has is None:
        has = bound > 0
    sel = None
    if any(p[2] is not None and not p[2].all() for p in parts):  # windows without a selected row hold no result
        sel = np.zeros(int(off[-1]), bool)
        for i, (_p, _l, s_) in enumerate(parts):
            sel[off[i] : off[i] + sizes[i]] = True if s_ is None else s_
        has &= sel.reshape(nw, WINDOW).any(axis=1)
    live = np.flatnonzero(has)
    if not positive:
        bound[live] = np.inf  # a term scoring <= 0 (df above N): no bound, score every window
    got_r: list[np.ndarray] = []
    got_s: list[np.ndarray] = []
    best = np.zeros(0)  # the k best exact scores so far (theta: their least, once there are k)
    theta = -np.inf
    m = max(FIRST_WINDOWS, k)
    todo = live
    while len(todo):
        if len(todo) > m:
            pick = todo[cores.smallest(-bound[todo], m)]
            pick.sort()
        else:
            pick = todo
        r, v = _score_windows(pick, sc, coef)
        if sel is not None:
            keep = sel[r]
            r, v = r[keep], v[keep]
        got_r.append(r)
        got_s.append(v)
        best = np.concatenate([best, v])
        if len(best) >= k:
            best = np.partition(best, len(best) - k)[len(best) - k :]
            theta = float(best[0])
        bound[pick] = np.nan  # scored: never >= theta (-inf included)
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
