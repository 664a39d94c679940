"""Offline: how the lists of a shared-routing book (format 3) set recall, without a store (issue 24).

    python benchmarks/bench_book.py [--copies 30] [--queries 500]
                                    [--configs 16:first1M:8,32:first1M:8,16:uni2M:8]

bench_scale's GloVe-100 + noisy copies (``--copies`` 30 = its 10M set) held in memory and
normalised; per config ``LISTS_PER_SQRT:SAMPLE:ITERATIONS`` (SAMPLE ``firstXM`` = X million
rows drawn from the first 1M rows, what a first big build samples; ``uniXM`` = drawn from all
rows), a book's codebook is trained with ``ivf.train`` and every row assigned to it; a
query probes the lists nearest it (exact float32 ranking) until they hold a share of the
rows.  Prints, per share, the fraction of the exact top 10 lying in the probed lists: the
recall the lists allow before int8 scoring and the re-rank (which lose <= 0.002 on this
set).  Needs ~5 GB of memory at 30 copies.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_data, log
from bench_scale import NOISE

SHARES = (0.005, 0.0075, 0.01, 0.0159)


def noisy(x0: np.ndarray, copies: int) -> np.ndarray:
    """bench_scale.make_parts' rows (same seed and order), normalised."""
    x = np.empty((len(x0) * copies, x0.shape[1]), np.float32)
    rng = np.random.default_rng(0)
    for j in range(copies):
        x[j * len(x0) : (j + 1) * len(x0)] = x0 if j == 0 else x0 + rng.normal(0, NOISE, x0.shape).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def truth(x: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    best = np.zeros((len(q), 0), np.float32)
    bi = np.zeros((len(q), 0), np.int64)
    for a in range(0, len(x), 1 << 20):
        s = q @ x[a : a + (1 << 20)].T
        idx = np.argpartition(-s, k, axis=1)[:, :k]
        best = np.concatenate([best, np.take_along_axis(s, idx, 1)], 1)
        bi = np.concatenate([bi, idx + a], 1)
        o = np.argsort(-best, axis=1)[:, :k]
        best, bi = np.take_along_axis(best, o, 1), np.take_along_axis(bi, o, 1)
    return bi


def probed_recall(cb, x: np.ndarray, q: np.ndarray, top: np.ndarray, shares) -> list[float]:
    labels = cb.assign(x)
    sizes = np.bincount(labels, minlength=len(cb.centroids))
    out = []
    for share in shares:
        hits = 0
        for i in range(len(q)):
            order = np.argsort(-(cb.centroids @ q[i]))
            cum = np.cumsum(sizes[order])
            probed = order[: int(np.searchsorted(cum, share * len(x))) + 1]
            hits += int(np.isin(labels[top[i]], probed).sum())
        out.append(hits / (10 * len(q)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=30)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--configs", default="16:first1M:8,32:first1M:8,16:uni2M:8")
    ap.add_argument("--data", default=default_data())
    a = ap.parse_args()
    from puffer_cli.index import ivf

    g = Path(a.data) / "glove-100-angular"
    base = pl.read_parquet(g / "base.parquet").select("vector")
    x0 = np.asarray(base["vector"].to_numpy(), dtype=np.float32).reshape(base.height, -1)
    q = np.load(g / "queries.npy")[: a.queries].astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    x = noisy(x0, a.copies)
    top = truth(x, q)
    print(f"{time.strftime('%Y-%m-%d %H:%M')} UTC, {len(x):,} rows, {len(q)} queries, load {os.getloadavg()[0]:.1f}")
    print("| lists | training rows | iterations | " + " | ".join(f"{s:.2%} of rows" for s in SHARES) + " |")
    print("|---|---|---:|" + "---:|" * len(SHARES))
    for item in a.configs.split(","):
        per_sqrt, sample, iters = item.split(":")
        nlist = max(1, min(len(x) // 96, int(round(float(per_sqrt) * math.sqrt(len(x))))))
        rng = np.random.default_rng(0)
        m = int(float(sample.removeprefix("first").removeprefix("uni").rstrip("M")) * (1 << 20))
        pool = x[: 1 << 20] if sample.startswith("first") else x
        s = pool[np.sort(rng.choice(len(pool), min(m, len(pool)), replace=False))]
        ivf.ITERATIONS = int(iters)
        t0 = time.perf_counter()
        cb = ivf.train(s, nlist, True, rng)
        log(f"{item}: trained {nlist:,} lists on {len(s):,} rows in {time.perf_counter() - t0:.0f}s")
        got = probed_recall(cb, x, q, top, SHARES)
        print(f"| {per_sqrt} x sqrt ({nlist:,}) | {sample} | {iters} | " + " | ".join(f"{r:.3f}" for r in got) + " |")


if __name__ == "__main__":
    main()
