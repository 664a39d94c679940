"""Shared routing (format 3) against per-segment IVFs (format 2) in one run (issue 24).

    python benchmarks/bench_routing.py [--sizes 331k,2M] [--mixed 1M] [--work DIR] [--queries N]
                                       [--routings segment,shared] [--sweep 0.02:0.75,0.03:0] [--reuse]

Per size: bench_scale's GloVe-100 + noisy copies (``--mixed``: convex mixes of two GloVe
rows + N(0, 0.01^2), no near-duplicate clusters) ingested once; indexed with
``PUFFER_IVF_ROUTING=segment`` (format 2, what auto builds up to 2M rows), the store copied, the copy
re-indexed under shared routing (a format-2 -> 3 migration: every segment rebuilt); then
both answer the same held-out queries in this process, interleaved: recall@10 against
exact numpy, warm p50, and rows scanned per query (median, summed over segments).
Prints one table row per (size, routing) with the 1-minute load average beside it.

``--routings shared``: build only shared routing, straight from the WAL (no format-2 store,
no migration: the index time and peak RSS are a fresh build's).  Every set is built first,
then all are measured interleaved in this process (latencies comparable across sizes).
``--sweep probe:fill,...``: measure at these ``ivf.override`` values too (``d:d`` = the defaults).
``--reuse``: keep the stores a previous run built (skip ingest and index).
``--lancedb``: then LanceDB IVF_PQ (sqrt(rows) partitions, 25 sub-vectors, refine x10) on
each set's rows, same queries and truth, in this run (``bench_scale.lance``).
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
from _common import default_data, log, pct, warm_ann
from bench_scale import LANCE_PROBES, SIZES, ground_truth, lance, make_parts, run_cli


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


def measure(ns, queries, truth, n_warm=10, probe=None, fill=None):
    """(recall@10, p50 ms, rows scanned a query: members scored in segments' lists and in a
    list-major stack, median)."""
    from puffer_cli.index import ivf, stack

    scanned: list[int] = []
    real, real_stack = ivf.search, stack.Stack.search

    def spy(*a, **kw):
        out = real(*a, **kw)
        scanned.append(out[2])
        return out

    def stack_spy(self, *a, **kw):
        out = real_stack(self, *a, **kw)
        scanned.append(out[2])
        return out

    ivf.search, stack.Stack.search = spy, stack_spy
    try:
        with ivf.override(probe=probe, fill=fill):
            recall, lat, per_q = warm_ann(ns, queries, truth, n_warm, scanned, sum)
    finally:
        ivf.search, stack.Stack.search = real, real_stack
    return recall, pct(lat, 50), float(np.median(per_q))


def sweep_points(text: str) -> list[tuple[float | None, float | None]]:
    """``"d:d,0.03:0"`` -> [(None, None), (0.03, 0.0)] (``d``: the schema's / default value)."""
    out = []
    for item in filter(None, text.split(",")):
        p, f = item.split(":")
        out.append((None if p == "d" else float(p), None if f == "d" else float(f)))
    return out


def build(name: str, make, work: Path, routings: list[str], reuse: bool) -> tuple[int, list[Path], dict]:
    """Data, ingest and index of one set under each routing: (rows, parts, {routing: (store, index s, RSS MiB)})."""
    d = work / f"data-{name}"
    n = make(d)
    parts = sorted(d.glob("part-*.parquet"))
    stores = {r: work / f"store-{name}-{r}" for r in routings}
    if reuse and all((s / "g").exists() for s in stores.values()):
        log(f"{name}: {n:,} rows; reusing the stores")
        return n, parts, {r: (s, float("nan"), float("nan")) for r, s in stores.items()}
    for s in stores.values():
        shutil.rmtree(s, ignore_errors=True)
    log(f"{name}: {n:,} rows; ingest")
    first = stores[routings[0]]
    run_cli(["ingest", "g", *map(str, parts), "--vector", "vector", "--store", str(first), "--json"])
    out = {}
    for k, r in enumerate(routings):
        if k:  # the same WAL; the later routing migrates the first's index (format 2 -> 3)
            shutil.copytree(first, stores[r])
        secs, rss, _ = run_cli(["index", "g", "--store", str(stores[r]), "--json"], env={"PUFFER_IVF_ROUTING": r})
        log(f"{name}: index {r}: {secs:.0f}s, peak RSS {rss:.0f} MiB")
        out[r] = (stores[r], secs, rss)
    return n, parts, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="331k,2M")
    ap.add_argument("--mixed", default="", help="rows of the mixed set, e.g. 1M (empty: skip)")
    ap.add_argument("--work", default="/tmp/puffer-routing")
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--routings", default="segment,shared")
    ap.add_argument("--sweep", default="d:d", help="probe:fill points (d = default), e.g. d:d,0.03:0")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--lancedb", action="store_true")
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
    routings = a.routings.split(",")
    built = []
    for name, make in sets:
        n, parts, stores = build(name, make, work, routings, a.reuse)
        log(f"{name}: ground truth")
        built.append((name, n, stores, ground_truth(parts, queries), parts))
    print(f"{time.strftime('%Y-%m-%d %H:%M')} UTC, load {os.getloadavg()}")
    print(
        "| set | rows | routing | index s | peak RSS MiB | probe | fill | recall@10 | p50 ms | rows scanned/query (median) | load |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for probe, fill in sweep_points(a.sweep):
        res: dict = {}
        nss = {
            (name, r): puffer_cli.connect(str(st)).open_namespace("g")
            for name, _n, stores, _t, _p in built
            for r, (st, _s, _m) in stores.items()
        }
        for _rep in range(2):  # interleaved
            for name, _n, stores, truth, _p in built:
                for r in stores:
                    out = measure(nss[(name, r)], queries, truth, probe=probe, fill=fill)
                    res.setdefault((name, r), []).append((*out, os.getloadavg()[0]))
        for name, n, stores, _t, _p in built:
            for r, (_st, secs, rss) in stores.items():
                rec, p50, sc, load = min(res[(name, r)], key=lambda t: t[1])
                print(
                    f"| {name} | {n:,} | {r} | {secs:.0f} | {rss:.0f} | {probe or 'd'} | {fill if fill is not None else 'd'} "
                    f"| {rec:.3f} | {p50:.2f} | {sc:,.0f} | {load:.1f} |",
                    flush=True,
                )
    if a.lancedb:
        print("\n| set | rows | LanceDB index | build s | recall@10 | p50 ms | p99 ms | load |")
        print("|---|---:|---|---:|---:|---:|---:|---:|")
        for name, n, _stores, truth, parts in built:
            probes = (*LANCE_PROBES, (160, 10))
            for label, secs, rec, p50, p99 in lance(parts, queries, truth, work / f"lance-{name}", probes=probes):
                b = f"{secs:.1f}" if secs is not None else ""
                print(
                    f"| {name} | {n:,} | {label} | {b} | {rec:.3f} | {p50:.2f} | {p99:.2f} | {os.getloadavg()[0]:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
