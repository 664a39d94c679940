"""Ranged reads of immutable index files: only the bytes a cold query needs.

Requests for one query run in parallel (one round trip of latency for the batch) and
requests for nearby bytes are coalesced (one request beats many for gaps under
``RANGE_GAP_BYTES``).  ``io_scope`` counts the workers' requests: the context is copied
into each worker.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from puffer_cli import limits
from puffer_cli.store import Store, run_lanes

WHOLE_FILE_MAX = 1 << 20  # vectors and lists files up to this size are fetched whole (one request beats many);
# larger ones by range (at 8 MiB, a 20k-row segment's 8 MB vector file was read whole for a few re-ranked rows)
RANGE_GAP_BYTES = 32 * 1024  # ranges closer than this are read in one request (bytes vs requests)
RANGE_EXTRA = 0.25  # ... and further gaps, smallest first, while the gap bytes stay under 1/4 of those wanted
RANGE_THREADS = limits.RANGE_CONCURRENCY  # requests in flight at once (object stores)

T = TypeVar("T")


def lists_read_whole(rows: int, dims: int) -> bool:
    """Whether an IVF lists file of ``rows`` members of ``dims`` dims is fetched whole (its
    size at most: row positions and codes) rather than by range."""
    return rows * (dims + 4) <= WHOLE_FILE_MAX


def vectors_read_whole(rows: int, dims: int) -> bool:
    """Whether a segment's f32 vector file is fetched whole rather than by range."""
    return rows * dims * 4 <= WHOLE_FILE_MAX


def parallel(fns: Sequence[Callable[[], T]], remote: bool = True) -> list[T]:
    """Run ``fns`` at once (remote stores: lanes, ``store.run_lanes``, at most RANGE_THREADS at a
    time; the enclosing io_scope counts the longest lane's round trips) or one after another
    (local); results in order."""
    if len(fns) <= 1 or not remote:
        return [f() for f in fns]
    return run_lanes(fns, concurrent=True, workers=RANGE_THREADS)


def coalesce(
    ranges: Sequence[tuple[int, int]], gap: int = RANGE_GAP_BYTES, extra: float = RANGE_EXTRA
) -> list[tuple[int, int]]:
    """Sorted, merged byte ranges covering ``ranges``: ranges under ``gap`` apart are
    joined, then the smallest remaining gaps while the bytes read in gaps stay within
    ``extra`` x the bytes wanted (a request costs more than a few kilobytes: on moto about
    8 ms, on S3 a first-byte latency)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a - out[-1][1] <= gap:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    if extra <= 0 or len(out) < 2:
        return out
    budget = extra * sum(b - a for a, b in out)
    join = set()
    for g, i in sorted((out[i + 1][0] - out[i][1], i) for i in range(len(out) - 1)):
        if g > budget:
            break
        budget -= g
        join.add(i)
    merged = [out[0]]
    for i in range(1, len(out)):
        if i - 1 in join:
            merged[-1] = (merged[-1][0], out[i][1])
        else:
            merged.append(out[i])
    return merged


REQUEST_BYTES = 256 * 1024  # a request costs about as much as reading this many more bytes (cost model)


def bounded(
    ranges: Sequence[tuple[int, int]], max_ranges: int, request_bytes: int = REQUEST_BYTES
) -> list[tuple[int, int]]:
    """Sorted, merged byte ranges covering ``ranges``, at most ``max_ranges`` of them: a gap
    stays a split only where skipping it saves more than ``request_bytes`` (the cost of the
    extra request), and only the ``max_ranges - 1`` widest such gaps; the others are read
    through.  The number of requests is bounded, the bytes grow instead."""
    rs = sorted((a, b) for a, b in ranges if b > a)
    if not rs:
        return []
    a = np.asarray([r[0] for r in rs], np.int64)
    b = np.maximum.accumulate(np.asarray([r[1] for r in rs], np.int64))
    gaps = a[1:] - b[:-1]  # > 0: bytes between consecutive ranges
    cand = np.flatnonzero(gaps > max(0, request_bytes))
    if len(cand) > max_ranges - 1:
        cand = cand[np.argsort(gaps[cand], kind="stable")[::-1][: max(0, max_ranges - 1)]]
    cuts = np.sort(cand)
    starts = np.concatenate([[0], cuts + 1])
    ends = np.concatenate([cuts, [len(rs) - 1]])
    return [(int(a[s]), int(b[e])) for s, e in zip(starts, ends)]


def read_ranges(
    store: Store, key: str, ranges: Sequence[tuple[int, int]], extra: float = RANGE_EXTRA
) -> list[memoryview]:
    """The bytes of each ``(start, end)`` of object ``key``, in order, by coalesced parallel reads."""
    return read_many(store, [(key, ranges)], extra)[0]


def read_many(
    store: Store, wants: Sequence[tuple[str, Sequence[tuple[int, int]]]], extra: float = RANGE_EXTRA
) -> list[list[memoryview]]:
    """``read_ranges`` of several objects in one batch of requests (one round trip);
    ``extra``: see :func:`coalesce` (0 where the caller planned its ranges, as the IVF
    lists do: bytes read in a gap are then bytes scanned, see ``ivf.Route.runs``)."""
    plan = [(key, coalesce(ranges, extra=extra), ranges) for key, ranges in wants]
    blobs = iter(store.read_ranges([(key, a, b) for key, runs, _ in plan for a, b in runs]))
    out = []
    for _key, runs, ranges in plan:
        got = [next(blobs) for _ in runs]
        starts = [r[0] for r in runs]
        views = []
        for a, b in ranges:
            if b <= a:
                views.append(memoryview(b""))
                continue
            j = bisect.bisect_right(starts, a) - 1
            s = runs[j][0]
            views.append(memoryview(got[j])[a - s : b - s])
        out.append(views)
    return out


def read_rows(store: Store, key: str, pos: np.ndarray, row_bytes: int) -> np.ndarray:
    """Bytes of fixed-size rows ``pos`` of object ``key`` (uint8, rows in ``pos`` order)."""
    pos = np.asarray(pos, dtype=np.int64)
    got = read_ranges(store, key, [(int(p) * row_bytes, (int(p) + 1) * row_bytes) for p in pos])
    out = np.empty((len(pos), row_bytes), np.uint8)
    for i, g in enumerate(got):
        out[i] = np.frombuffer(g, dtype=np.uint8)
    return out
