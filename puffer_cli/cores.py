"""One query's CPU work over the machine's cores, and the k smallest of many scores.

numkong's kernels release the GIL, so a long scan (a 30M-row query scores ~270k int8 codes
and ~175k centroids) split into contiguous shares runs on several threads at once: the
caller takes the first share, a process-wide pool the others.  Scans are memory-bound, so
two cores give ~1.4x, not 2x (280k x 100-dim int8 codes: 4.9 -> 3.5 ms, docs/benchmarks.md).
Small scans stay on the caller's thread (a hand-off costs tens of microseconds).

:func:`smallest` picks the k smallest of n scores without partitioning all of them: a
strided sample gives a threshold that keeps a few times k, and only those are partitioned
(175k centroids, k = 6,400: ~0.7 -> ~0.2 ms; 101k, k = 2,400: 1.1 -> 0.17 ms); the result is the same set as
``np.argpartition``'s, ties at the k-th value aside.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

T = TypeVar("T")

WORKERS = max(1, min(4, os.cpu_count() or 1))  # threads one query's scan uses at most (1: the caller's only)
SPLIT_MIN = 1 << 15  # items (codes, centroids) below which a scan is not split
SAMPLE_STEP = 32  # one score in this many samples the threshold of :func:`smallest`
SAMPLE_SLACK = 2.0  # the threshold keeps about this many times k
#: ... from this many scores on (below, one partition of all: the sample buys nothing; 101k
#: centroids, k = 2,400-9,600: 1.06-1.12 -> 0.17-0.36 ms; it was 4 x SPLIT_MIN = 131k, so a
#: 10M namespace's 101k-list book and a pruned probe's 63k scores took the full partition)
SAMPLE_MIN = 8_192

_PREFIX = "puffer-scan"
_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(1, WORKERS - 1), thread_name_prefix=_PREFIX)
        return _pool


def shares(items: int) -> int:
    """How many threads a scan of ``items`` items takes."""
    return 1 if items < SPLIT_MIN else min(WORKERS, max(1, items // SPLIT_MIN))


def run(fns: Sequence[Callable[[], T]]) -> list[T]:
    """Results of ``fns`` in order, run by this thread and the pool's at once, each taking
    the next call not yet taken (all on this thread when it is one of the pool's: a share
    waiting on shares could wait forever).  Pool threads run in copies of the caller's
    context (its deadline, its io_scope).  The caller never waits for a pool thread that has
    not started (under concurrent queries the pool may be busy: this thread then does all).
    The first error is raised once no call runs any more (the calls not started by then are
    not run)."""
    n = len(fns)
    if n <= 1 or threading.current_thread().name.startswith(_PREFIX):
        return [f() for f in fns]
    out: list = [None] * n
    nxt = iter(range(n))
    take = threading.Lock()

    failed = threading.Event()  # a call raised: the lanes take no more

    def lane() -> None:
        while not failed.is_set():
            with take:
                i = next(nxt, None)
            if i is None:
                return
            try:
                out[i] = fns[i]()
            except BaseException:
                failed.set()
                raise

    futs = [_executor().submit(contextvars.copy_context().run, lane) for _ in range(min(WORKERS, n) - 1)]
    err: BaseException | None = None
    try:
        lane()
    except BaseException as e:  # raised once the pool's running lanes are done
        err = e
    for f in futs:  # a lane still queued (the pool busy with other queries' shares) has nothing left: cancelled
        if not f.cancel():
            err = err or f.exception()
    if err is not None:
        raise err
    return out


def cuts(weights: np.ndarray, parts: int) -> np.ndarray:
    """``parts + 1`` ascending indexes cutting ``weights`` (non-negative, in order) into
    ``parts`` contiguous shares of about equal weight (first 0, last ``len(weights)``)."""
    w = np.asarray(weights, np.int64)
    cum = np.cumsum(w)
    total = int(cum[-1]) if len(cum) else 0
    goals = (np.arange(1, parts) * total) // max(1, parts)
    inner = np.searchsorted(cum, goals, side="right")
    return np.concatenate([[0], inner, [len(w)]]).astype(np.int64)


def smallest(d: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the ``k`` smallest values of ``d`` (in no order; all of them when k >= n)."""
    n = len(d)
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.zeros(0, np.int64)
    if n < SAMPLE_MIN or 2 * SAMPLE_SLACK * k > n:  # few, or a threshold keeping most of them
        return np.argpartition(d, k - 1)[:k]
    sample = d[::SAMPLE_STEP]
    ks = int(k * SAMPLE_SLACK) // SAMPLE_STEP + 8
    if ks >= len(sample):
        return np.argpartition(d, k - 1)[:k]
    t = np.partition(sample, ks)[ks]
    keep = np.flatnonzero(d <= t)
    if len(keep) < k:  # the sample misjudged the spread: the full partition
        return np.argpartition(d, k - 1)[:k]
    return keep[np.argpartition(d[keep], k - 1)[:k]]
