"""Shared routing (format 3) against per-segment IVFs (format 2) in one run (issue 24).

    python benchmarks/bench_routing.py [--sizes 331k,2M] [--mixed 1M] [--work DIR] [--queries N]

Per size: bench_scale's GloVe-100 + noisy copies (``--mixed``: convex mixes of two GloVe
rows + N(0, 0.01^2), no near-duplicate clusters) ingested once; indexed with
``PUFFER_IVF_ROUTING=segment`` (format 2, what main builds), the store copied, the copy
re-indexed under shared routing (a format-2 -> 3 migration: every segment rebuilt); then
both answer the same held-out queries in this process, interleaved: recall@10 against
exact numpy, warm p50, and rows scanned per query (median, summed over segments).
Prints one table row per (size, routing) with the 1-minute load average beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_data, log, pct
from bench_scale import SIZES, ground_truth, make_parts, run_cli


def make_mixed(base: pl.DataFrame, n: int, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    if list(out.glob("part-*.parquet")):
        return sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in out.glob("part-*.parquet"))
    x0 = np.asarray(base["vector"].to_numpy(), dtype=np.float32).reshape(base.height, -1)
    x0 = x0 / np.linalg.norm(x0, axis=1, keepdims=True)
    rng = np.random.default_rng(3)
    for k, a in enumerate(range(0, n, 500_000)):
        m = min(500_000, n - a)
        i, j = rng.integers(0, len(x0), m), rng.integers(0, len(x0), m)
        w = rng.random((m, 1), dtype=np.float32)
        x = w * x0[i] + (1 - w) * x0[j] + rng.normal(0, 0.01, (m, x0.shape[1])).astype(np.float32)
        pl.DataFrame(
            {
                "id": np.arange(a, a + m, dtype=np.uint64),
                "vector": pl.Series("vector", x).cast(pl.Array(pl.Float32, 100)),
            }
        ).write_parquet(out / f"part-{k:04d}.parquet")
    return n


def measure(ns, queries, truth, n_warm=10):
    from puffer_cli.index import ivf
    from puffer_cli.search import engine

    scanned: list[int] = []
    real = ivf.search

    def spy(*a, **kw):
        out = real(*a, **kw)
        scanned.append(out[2])
        return out

    ivf.search = spy
    lat, hits, per_q = [], 0, []
    try:
        for j, q in enumerate(np.concatenate([queries[:n_warm], queries])):
            body = {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 10, "consistency": {"level": "eventual"}}
            scanned.clear()
            t = time.perf_counter()
            rows = engine.run_query(ns, body)["rows"]
            el = time.perf_counter() - t
            if j >= n_warm:
                lat.append(el * 1000)
                per_q.append(sum(scanned))
                hits += len({r["id"] for r in rows} & set(truth[j - n_warm].tolist()))
    finally:
        ivf.search = real
    return hits / (10 * len(queries)), pct(lat, 50), float(np.median(per_q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="331k,2M")
    ap.add_argument("--mixed", default="", help="rows of the mixed set, e.g. 1M (empty: skip)")
    ap.add_argument("--work", default="/tmp/puffer-routing")
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--queries", type=int, default=200)
    a = ap.parse_args()
    import puffer_cli

    work = Path(a.work)
    g = Path(a.data) / "glove-100-angular"
    base = pl.read_parquet(g / "base.parquet").select("id", "vector")
    queries = np.load(g / "queries.npy")[: a.queries].astype(np.float32)
    sets = [(s, lambda d, s=s: make_parts(base, SIZES[s], d)) for s in a.sizes.split(",") if s]
    if a.mixed:
        n_mixed = int(float(a.mixed.rstrip("Mk")) * (1e6 if a.mixed.endswith("M") else 1e3))
        sets.append((f"mixed-{a.mixed}", lambda d: make_mixed(base, n_mixed, d)))
    print("| set | rows | routing | index s | recall@10 | p50 ms | rows scanned/query (median) | load |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for name, make in sets:
        d = work / f"data-{name}"
        n = make(d)
        parts = sorted(d.glob("part-*.parquet"))
        stores = {"segment": work / f"store-{name}-segment", "shared": work / f"store-{name}-shared"}
        for s in stores.values():
            shutil.rmtree(s, ignore_errors=True)
        log(f"{name}: {n:,} rows; ingest")
        run_cli(["ingest", "g", *map(str, parts), "--vector", "vector", "--store", str(stores["segment"]), "--json"])
        secs = {}
        secs["segment"], _, _ = run_cli(
            ["index", "g", "--store", str(stores["segment"]), "--json"], env={"PUFFER_IVF_ROUTING": "segment"}
        )
        shutil.copytree(stores["segment"], stores["shared"])
        secs["shared"], _, _ = run_cli(
            ["index", "g", "--store", str(stores["shared"]), "--json"], env={"PUFFER_IVF_ROUTING": "shared"}
        )
        log(f"{name}: index segment {secs['segment']:.0f}s, shared (migration) {secs['shared']:.0f}s; truth")
        truth = ground_truth(parts, queries)
        nss = {k: puffer_cli.connect(str(v)).open_namespace("g") for k, v in stores.items()}
        res = {k: [] for k in nss}
        for _rep in range(2):  # interleaved
            for k, ns in nss.items():
                res[k].append((*measure(ns, queries, truth), os.getloadavg()[0]))
        for k in nss:
            r, p50, sc, load = min(res[k], key=lambda t: t[1])
            print(
                f"| {name} | {n:,} | {k} | {secs[k]:.0f} | {r:.3f} | {p50:.2f} | {sc:,.0f} | {load:.1f} |", flush=True
            )


if __name__ == "__main__":
    main()
