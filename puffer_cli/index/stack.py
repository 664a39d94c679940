"""The list-major lists of a namespace's segments under shared routing (format 3).

Every segment following a shared :class:`ivf.Book` holds a slice of every book list, so a query's
probed lists are, in each segment, a few members at a time: at 30M rows (30 segments) ~15k runs of
~18 members gathered from 30 files, and a cold query reads each segment's slice of ~1.6k lists
(~1,150 requests). A *stack* keeps, book list after book list, the members of that list from every
covered segment together, so the same probe is ~500 contiguous runs of one file, each scored where
it lies (docs/benchmarks.md, "A list-major layout": the same 30M query 26.5 -> 12.0 ms warm in a lab
prototype, the same members and results; cold requests ~1,150 -> 115-149 counted offline).

`puffer index` writes one per vector field for the big segments following the book
(index/builder.py ``write_stacks``; the manifest's ``ann_stacks``), and an unfiltered ANN query
reads it (search/reader.py ``stack_plan``): memory-mapped when local or cached, else by ranges,
its probed runs joined into at most RUNS_MAX requests' ranges (one round trip); filtered queries
and small segments use the segments' own lists (docs/indexer.md).

A stack of one vector field is two files:

``lists``
    records of ``4 + code_bytes`` bytes, list after list (segments in order within a list, each
    segment's members in its own list order): the member's *global row* (uint32, little-endian:
    its segment's base + its row in the segment), then its codes as the segment's lists file has
    them (int8, or int4 packed two a byte). A run of adjacent lists is one byte range, and its
    codes are scored in place (a strided view: numkong takes the 4-byte gap between rows).
``route`` (npz)
    ``counts``: members per book list (the narrowest unsigned type, deflated); ``bases``: each
    covered segment's first global row (int64, ascending, one more at the end: the total);
    ``code_bytes``, ``bits``, ``book``.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np

from puffer_cli import cores
from puffer_cli.index import ivf, npyfile, ranged


class Sink(Protocol):
    """Where :func:`write` puts the lists file: a binary file or a buffer filled in place."""

    def write(self, data: bytes, /) -> int: ...


LONG_RUN = 256  # runs of at least this many members are scored in place, shorter ones gathered
RUNS_MAX = 96  # byte ranges a ranged read of a stack fetches at most (ranged.bounded)
#: parts of a stack on an object store (paged.put): a cold query's ranges are few and can be wide
#: (gaps read through), and a range crossing a part boundary costs a request more: at 30M rows,
#: 20 queries counted offline, 8 MiB parts: 129 requests median (224 max), 32 MiB: 105 (126),
#: 64 MiB: 101 (111), one object: 96 (96)
PART_BYTES = 64 << 20
CHUNK_MEMBERS = 1 << 20  # members copied per step of :func:`write` (bounded temporaries: ~100 MB at 100 dims)


def record_bytes(code_bytes: int) -> int:
    """Bytes of one member's record: its global row, then its codes."""
    return 4 + code_bytes


def write(parts: Sequence[tuple[ivf.Route, ivf.Lists]], out: Sink) -> bytes:
    """Write the stack of ``parts`` (each covered segment's route and memory-mapped lists, in
    order; all following one book) to ``out``; returns its route file. Streams by ranges of
    lists, so memory stays at about CHUNK_MEMBERS records whatever the namespace's size."""
    if any(not lists.local for _r, lists in parts):
        raise ValueError("a stack is written from local (memory-mapped) lists files")
    routes = [r for r, _l in parts]
    route_file, _size = plan(routes)
    for chunk in chunks(routes, [_mapped(lists) for _r, lists in parts]):
        out.write(chunk)
    return route_file


def files_chunks(routes: Sequence[ivf.Route], paths: Sequence[str]) -> Iterator[bytes]:
    """The lists file of the stack of the lists files at ``paths`` (their routes ``routes``),
    a step of about CHUNK_MEMBERS records at a time, read by positioned reads (no memory map:
    the builder's memory stays at a step's records, not the files' pages)."""
    return chunks(routes, [_reader(r, p) for r, p in zip(routes, paths)])


def _mapped(lists: ivf.Lists):
    """``read(a, b) -> (positions, codes)`` of members ``a .. b - 1`` of memory-mapped lists."""
    assert lists._pos is not None and lists._codes is not None
    pos, codes = lists._pos, lists._codes
    return lambda a, b: (pos[a:b], codes[a:b])


def _reader(r: ivf.Route, path: str):
    """``read(a, b)`` of a lists file by positioned reads (its layout: ivf.Lists)."""
    cb, n = r.code_bytes, r.rows
    head = 0 if r.implicit else 4 * n

    def read(a: int, b: int):
        with open(path, "rb") as fh:
            if r.implicit:
                pos = np.arange(a, b, dtype=np.uint32)
            else:
                fh.seek(4 * a)
                pos = np.frombuffer(fh.read(4 * (b - a)), "<u4")
            fh.seek(head + cb * a)
            codes: np.ndarray = np.frombuffer(fh.read(cb * (b - a)), r.code_dtype).reshape(b - a, cb)
        return pos, codes

    return read


def plan(routes: Sequence[ivf.Route]) -> tuple[bytes, int]:
    """(the route file, the lists file's size) of the stack of segments with ``routes``
    (checked: one book, one code width, the same lists, global rows within uint32)."""
    counts, bases = _shape(routes)
    r0 = routes[0]
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        counts=counts.astype(np.min_scalar_type(int(counts.max()) if len(counts) else 0)),
        bases=bases,
        code_bytes=np.int64(r0.code_bytes),
        bits=np.int64(r0.bits),
        book=np.str_(r0.book or ""),
    )
    return buf.getvalue(), int(bases[-1]) * record_bytes(r0.code_bytes)


def _shape(routes: Sequence[ivf.Route]) -> tuple[np.ndarray, np.ndarray]:
    """(members per book list over all segments, each segment's first global row and the
    total) of a stack of segments with ``routes``, which must fit one."""
    if not routes:
        raise ValueError("a stack covers at least one segment")
    r0 = routes[0]
    if any(r.book != r0.book or r.bits != r0.bits or r.code_bytes != r0.code_bytes for r in routes):
        raise ValueError("a stack's segments follow one book with one code width")
    if any(r.nlist != r0.nlist for r in routes):
        raise ValueError("a stack's segments hold the same book lists")
    counts = np.sum([np.diff(r.offsets) for r in routes], axis=0).astype(np.int64)
    bases = np.concatenate([[0], np.cumsum([int(r.rows) for r in routes])]).astype(np.int64)
    if bases[-1] >= 1 << 32:
        raise ValueError("a stack's global rows are uint32: at most 2^32 - 1 rows")
    return counts, bases


def chunks(routes: Sequence[ivf.Route], reads: Sequence) -> Iterator[bytes]:
    """The records of the stack (see the module docstring), list after list, a step of about
    CHUNK_MEMBERS members at a time (``reads``: ``read(a, b) -> (positions, codes)`` of
    members ``a .. b - 1`` of each segment's lists file)."""
    counts, bases = _shape(routes)
    r0 = routes[0]
    nlist, cb = r0.nlist, r0.code_bytes
    rec = np.dtype([("row", "<u4"), ("code", r0.code_dtype, (cb,))])
    parts = list(zip(routes, reads))
    per_list = counts.cumsum()
    start = 0
    while start < nlist:
        # the lists [start, stop) hold about CHUNK_MEMBERS members (at least one list)
        before = int(per_list[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(per_list, before + CHUNK_MEMBERS, side="right")))
        stop = min(stop, nlist)
        yield _chunk(parts, bases, start, stop, rec).tobytes()
        start = stop


def _chunk(parts: Sequence, bases: np.ndarray, start: int, stop: int, rec: np.dtype) -> np.ndarray:
    """The records of lists ``start .. stop - 1``: list-major, segments in order within a list
    (``parts``: (route, read) per segment)."""
    labels: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    for base, (r, read) in zip(bases.tolist(), parts):
        a, b = int(r.offsets[start]), int(r.offsets[stop])
        pos, c = read(a, b)
        labels.append(np.repeat(np.arange(start, stop), np.diff(r.offsets[start : stop + 1])))
        rows.append(pos.astype(np.int64) + base)
        codes.append(c)
    lab = np.concatenate(labels)
    order = np.argsort(lab, kind="stable")  # by list; segments (concatenated in order) stay in order
    out = np.empty(len(lab), rec)
    out["row"] = np.concatenate(rows)[order]
    out["code"] = np.concatenate(codes)[order]
    return out


class Stack:
    """A stack read back: the members of a book's lists over its covered segments, memory-mapped
    (``local``: the lists file's path), or read by ranges (``fetch(byte ranges) -> bytes of each``:
    a cold query on an object store reads only its probed lists' runs; ``part_bytes``: the size of
    the parts it is stored in, whose boundaries split a range into requests). ``route``: a route of a
    covered segment, for the codes' scale and metric (every segment following a book has the
    book's)."""

    def __init__(
        self,
        route_file: bytes,
        local,
        route: ivf.Route,
        fetch: Callable[[list], list] | None = None,
        part_bytes: int | None = None,
    ):
        z = npyfile.load_npz(route_file)
        self.offsets = np.concatenate([[0], np.cumsum(z["counts"], dtype=np.int64)])
        self.bases = np.asarray(z["bases"], np.int64)
        self.code_bytes = int(z["code_bytes"])
        self.book = str(z["book"]) or None
        if route.code_bytes != self.code_bytes or route.book != self.book:
            raise ValueError("the route given does not follow the stack's book and codes")
        self.route = route
        self.record = record_bytes(self.code_bytes)
        self._fetch = fetch
        self.part_bytes = part_bytes  # the stored file's parts (paged.put): a range inside one is a request
        self.rows: np.ndarray | None = None
        self.codes: np.ndarray | None = None
        if local is None:
            if fetch is None:
                raise ValueError("a stack is read from a local file or by ranges")
            return
        n = int(self.offsets[-1])
        raw = np.asarray(np.memmap(local, dtype=np.uint8, mode="r")) if n else np.zeros(0, np.uint8)
        if len(raw) != n * self.record:
            raise ValueError(f"stack lists file holds {len(raw)} bytes, its route says {n} records")
        recs = raw.reshape(n, self.record)
        self.rows = recs[:, :4].view("<u4").reshape(n)  # strided views over the records
        self.codes = recs[:, 4:].view(route.code_dtype)

    @property
    def members(self) -> int:
        return int(self.offsets[-1])

    @property
    def local(self) -> bool:
        return self.codes is not None

    def segment_rows(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(covered segment index, row in it) of global rows ``g``."""
        s = np.searchsorted(self.bases, np.asarray(g, np.int64), side="right") - 1
        return s, np.asarray(g, np.int64) - self.bases[s]

    def read_plan(self, a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
        """The byte ranges a ranged read of member runs ``[a[i], b[i])`` fetches, each inside
        one part of the stored file (``part_bytes``; a range is a request): one per part the
        runs touch, plus splits at the widest gaps within a part (those wider than
        ``ranged.REQUEST_BYTES``) up to RUNS_MAX ranges in all; the other gaps are read
        through (read, not scanned: the members scored, and so the results, do not depend
        on them)."""
        rb, pb = self.record, self.part_bytes
        pieces: list[tuple[int, int]] = []
        for x, y in zip((a * rb).tolist(), (b * rb).tolist()):
            while x < y:  # cut at the parts' boundaries
                end = min(y, (x // pb + 1) * pb) if pb else y
                pieces.append((x, end))
                x = end
        if not pieces:
            return []
        part = np.asarray([x // pb if pb else 0 for x, _y in pieces], np.int64)
        starts = np.asarray([x for x, _y in pieces], np.int64)
        ends = np.asarray([y for _x, y in pieces], np.int64)
        gaps = starts[1:] - ends[:-1]
        forced = part[1:] != part[:-1]  # a new part: a new request whatever the gap
        free = max(0, RUNS_MAX - (int(forced.sum()) + 1))
        cand = np.flatnonzero(~forced & (gaps > ranged.REQUEST_BYTES))
        chosen = cand[np.argsort(gaps[cand], kind="stable")[::-1][:free]]
        cuts = np.sort(np.concatenate([np.flatnonzero(forced), chosen]))
        first = np.concatenate([[0], cuts + 1])
        last = np.concatenate([cuts, [len(pieces) - 1]])
        return list(zip(starts[first].tolist(), ends[last].tolist()))

    def search(
        self,
        q: np.ndarray,
        lists: np.ndarray,
        want: int,
        visible: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(global rows, approximate distances, members scanned) of the ``want`` best members
        of ``lists`` (the book's chosen lists, sorted and unique) by approximate distance,
        nearest first; ``visible(global rows) -> mask``: only rows it keeps are returned
        (deleted or superseded rows), checked on the best candidates, widening as needed."""
        r = self.route
        a, b = ivf.list_runs(self.offsets, np.asarray(lists, np.int64))
        scanned = int((b - a).sum())
        if want <= 0 or not scanned:
            return np.zeros(0, np.int64), np.zeros(0), scanned
        qq = r.prepare_query(q)
        qc = r.query_codes(qq)
        sc, rows_of = self._scored(qc, a, b) if self.local else self._fetched(qc, a, b)
        take = want
        while True:
            k = min(take, len(sc))
            top = cores.smallest(sc, k)
            top = top[np.argsort(sc[top], kind="stable")]
            g = rows_of(top)
            keep = np.ones(len(g), bool) if visible is None else np.asarray(visible(g), bool)
            if keep.sum() >= want or k == len(sc):
                top, g = top[keep][:want], g[keep][:want]
                return g, ivf.approx_distance(r, qq, sc[top]), scanned
            take *= 4

    def filtered_search(
        self,
        q: np.ndarray,
        ranked: Callable[[int], np.ndarray],
        choose: Callable[[np.ndarray], np.ndarray],
        offsets: Sequence[np.ndarray],
        hits: Sequence[np.ndarray],
        need: float,
        want: int,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """A filtered probe of the memory-mapped stack: (global rows, approximate distances,
        members scanned) of the ``want`` best passing members of the lists nearest the query
        that hold one, taken until they hold ``need`` passing members (as a segment's filtered
        probe plans, ``ivf.Route.matching_lists``, over the covered segments at once).
        ``offsets[j]``: covered segment j's members per book list (its route's: its rows are
        stored in list order); ``hits[j]``: its passing rows, ascending. Which members pass
        comes from those alone (no record is read for it), and only the passing members'
        codes are read and scored.

        Passing members are counted first in the lists ``ranked(m)`` gives (the nearest,
        holding ``m`` members: twice what the filter's rate says ``need`` takes); when they hold
        too few (a filter correlated with the vectors), in every list, and ``choose(matches)``
        picks them. 10M rows, 10 segments, warm, p50 of 3% / 10% uniform / 3% correlated
        filters: this 14.5 / 18.9 / 19-27 ms; counting every list always 17 / 30 / 13; a growing
        prefix only 14 / 19 / 34 (docs/benchmarks.md, "Auto routing")."""
        assert self.codes is not None and self.rows is not None
        r, total = self.route, self.members
        passing = sum(len(h) for h in hits)
        if want <= 0 or not passing or not total:
            return np.zeros(0, np.int64), np.zeros(0), 0
        order = np.asarray(ranked(int(min(total, 2 * need * total / passing + 1))), np.int64)
        bounds = _list_bounds(hits, offsets, order)
        cum = np.cumsum(sum(bd[:, 1] - bd[:, 0] for bd in bounds))
        if len(cum) and cum[-1] >= need:
            take = int(np.searchsorted(cum, need)) + 1
            chosen, bounds = order[:take], [bd[:take] for bd in bounds]
        else:  # every list counted: by the list of each passing row
            nlist = len(self.offsets) - 1
            labels = cores.run([functools.partial(np.searchsorted, off, h, "right") for h, off in zip(hits, offsets)])
            matches = np.bincount(np.concatenate(labels) - 1, minlength=nlist + 1)[:nlist]
            chosen = np.asarray(choose(matches), np.int64)
            bounds = _list_bounds(hits, offsets, chosen)
        sizes = np.stack([off[chosen + 1] - off[chosen] for off in offsets])  # members per (segment, list)
        before = np.cumsum(sizes, axis=0) - sizes  # ... of the list in the segments before
        pos_parts, row_parts = [], []
        for j, (h, off, bd) in enumerate(zip(hits, offsets, bounds)):
            rows = h[ivf.member_index(bd[:, 0], bd[:, 1])]
            which = np.repeat(np.arange(len(chosen)), bd[:, 1] - bd[:, 0])
            lists = chosen[which]
            pos_parts.append(self.offsets[lists] + before[j, which] + (rows - off[lists]))
            row_parts.append(rows + self.bases[j])
        pos, g = np.concatenate(pos_parts), np.concatenate(row_parts)
        scanned = int(sizes.sum())
        if not len(pos):
            return np.zeros(0, np.int64), np.zeros(0), scanned
        qq = r.prepare_query(q)
        sc = ivf.score(r, r.query_codes(qq), self.codes[pos])
        top = cores.smallest(sc, min(want, len(sc)))
        top = top[np.argsort(sc[top], kind="stable")]
        if not np.array_equal(self.rows[pos[top]].astype(np.int64), g[top]):
            raise ValueError("the stack's members do not match its segments' routes")
        return g[top], ivf.approx_distance(r, qq, sc[top]), scanned

    def _scored(self, qc, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """(scores, ``rows_of(indexes into them) -> global rows``) of the members of runs
        ``a..b`` of the memory-mapped file: long runs scored where they lie, the short ones
        gathered and scored in one call (a call costs ~5-10 us: at 10M rows a probe is ~550
        runs of ~290 members on average); every call writes into one array (numkong's
        ``out``), the sign flipped once, and a position maps back to its member by the runs'
        offsets (30M, 100 queries: 11.3 -> 9.0 ms a search against per-run arrays joined)."""
        import numkong as nk

        assert self.codes is not None and self.rows is not None
        codes, rows, kw = self.codes, self.rows, ivf.cdist_args(self.route)
        long = (b - a) >= LONG_RUN
        short = ivf.member_index(a[~long], b[~long])
        la, lens = a[long], (b - a)[long]
        ns = len(short)
        starts = ns + np.cumsum(lens) - lens  # each long run's first position in ``sc``
        out = np.empty((1, ns + int(lens.sum())), np.float64)

        def share(s0: int, s1: int, r0: int, r1: int) -> None:
            """Score gathered members ``short[s0:s1]`` and long runs ``r0:r1``."""
            if s1 > s0:
                nk.cdist(qc, codes[short[s0:s1]], out=out[:, s0:s1], **kw)
            for x, n, at in zip(la[r0:r1].tolist(), lens[r0:r1].tolist(), starts[r0:r1].tolist()):
                nk.cdist(qc, codes[x : x + n], out=out[:, at : at + n], **kw)

        parts = cores.shares(out.shape[1])  # contiguous shares of both kinds, one a thread
        sc_cut, run_cut = ((ns * np.arange(parts + 1)) // parts).tolist(), cores.cuts(lens, parts).tolist()
        cores.run(
            [functools.partial(share, sc_cut[i], sc_cut[i + 1], run_cut[i], run_cut[i + 1]) for i in range(parts)]
        )
        sc = out[0]
        if self.route.cosine:
            np.negative(sc, out=sc)

        def rows_of(t: np.ndarray) -> np.ndarray:
            t = np.asarray(t, np.int64)
            m = np.empty(len(t), np.int64)
            s = t < ns
            m[s] = short[t[s]]
            j = np.searchsorted(starts, t[~s], side="right") - 1
            m[~s] = la[j] + (t[~s] - starts[j])
            return rows[m].astype(np.int64)

        return sc, rows_of

    def _fetched(self, qc, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """:meth:`_scored` by ranged reads (one batch of requests): the members of runs
        ``a..b`` picked out of the ranges :meth:`read_plan` fetches, scored in one call."""
        assert self._fetch is not None
        plan = self.read_plan(a, b)
        got = self._fetch(plan)
        # ranges cut at a part boundary inside a run (or a record) joined again: whole records
        joined: list[list] = []  # [start, end, buffers]
        for (x, y), buf in zip(plan, got):
            if joined and joined[-1][1] == x:
                joined[-1][1] = y
                joined[-1][2].append(buf)
            else:
                joined.append([x, y, [buf]])
        got = [g[0] if len(g) == 1 else b"".join(g) for _x, _y, g in joined]
        m = ivf.member_index(a, b)  # ascending: the runs are sorted and disjoint
        starts = np.asarray([x // self.record for x, _y, _g in joined], np.int64)
        cut = np.searchsorted(m, starts[1:]).tolist()
        bounds = zip([0, *cut], [*cut, len(m)])
        recs = [
            np.frombuffer(buf, np.uint8).reshape(-1, self.record)[m[lo:hi] - s0]
            for buf, s0, (lo, hi) in zip(got, starts.tolist(), bounds)
        ]
        rec = np.concatenate(recs) if recs else np.zeros((0, self.record), np.uint8)
        if len(rec) != len(m):
            raise ValueError(f"stack ranges returned {len(rec)} of {len(m)} members")
        rows = rec[:, :4].copy().view("<u4").reshape(-1).astype(np.int64)
        codes: np.ndarray = rec[:, 4:].view(self.route.code_dtype)
        return ivf.score(self.route, qc, codes), lambda t: rows[t]


def _list_bounds(hits: Sequence[np.ndarray], offsets: Sequence[np.ndarray], lists: np.ndarray) -> list[np.ndarray]:
    """Per segment, the positions in its passing rows ``hits`` of each of ``lists``' first and
    last member: one search of sorted keys (the lists in file order, both bounds interleaved:
    ~4x faster than in rank order), given back in ``lists``' order."""
    srt = np.argsort(lists, kind="stable")
    keys = (lists[srt][:, None] + np.array([0, 1])).ravel()
    return cores.run([functools.partial(_bounds, h, off[keys], srt) for h, off in zip(hits, offsets)])


def _bounds(hits: np.ndarray, keys: np.ndarray, srt: np.ndarray) -> np.ndarray:
    """``searchsorted(hits, keys)`` as (lists, 2) bounds, in the lists' rank order (``srt``
    sorted them into file order for the search)."""
    got = np.searchsorted(hits, keys).reshape(-1, 2)
    out = np.empty_like(got)
    out[srt] = got
    return out
