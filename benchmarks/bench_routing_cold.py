"""Cold ANN on moto S3 under shared routing (format 3) or per-segment IVFs (issue 24).

    python benchmarks/bench_routing_cold.py --store DIR --data DIR [--routing shared] [--queries 20]
                                            [--sweep d:d,0.03:0] [--filters none,10%,1%]

``--store``: a local store whose namespace ``g`` holds bench_scale's set (its WAL is copied
into a moto bucket, moto in a child process, and indexed there with
``PUFFER_IVF_ROUTING=--routing``, so the files are laid out as on any object store);
``--data``: that set's parquet parts (ground truth).  Then each query runs against an empty
cache: round trips, requests, bytes read (and their share of the namespace's f32 vector
bytes) and recall@10, per ``probe:fill`` point (``d``: the default) and filter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_data, log, start_moto
from bench_routing import sweep_points
from bench_scale import ground_truth, run_cli

FILTERS = {
    "none": (None, None),
    "10%": (["bucket10", "Eq", 3], pl.col("bucket10") == 3),
    "1%": (["bucket100", "Eq", 7], pl.col("bucket100") == 7),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--routing", default="shared")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--sweep", default="d:d")
    ap.add_argument("--filters", default="none,10%")
    ap.add_argument("--bench-data", default=default_data())
    a = ap.parse_args()
    import puffer_cli
    from puffer_cli.index import ivf, manifest, segment
    from puffer_cli.search import engine
    from puffer_cli.store import filecache as cache

    g = Path(a.bench_data) / "glove-100-angular"
    queries = np.load(g / "queries.npy")[: a.queries].astype(np.float32)
    parts = sorted(Path(a.data).glob("part-*.parquet"))
    server, endpoint = start_moto(process=True)
    try:
        src = puffer_cli.connect(a.store).store
        db = puffer_cli.connect("s3://bench/routing", s3_endpoint=endpoint)
        keys = [k for k in src.list("g/") if "/index/" not in k and not k.endswith("meta.json")]
        for k in keys:
            db.store.write(k, src.read(k))
        meta = json.loads(src.read("g/meta.json"))
        meta.pop("index", None)
        db.store.write("g/meta.json", json.dumps(meta).encode())
        log(f"copied {len(keys)} WAL keys to moto; indexing there ({a.routing})")
        secs, rss, _ = run_cli(
            ["index", "g", "--store", "s3://bench/routing", "--s3-endpoint", endpoint],
            env={"PUFFER_IVF_ROUTING": a.routing},
        )
        log(f"S3 build {secs:.0f}s, peak RSS {rss:.0f} MiB")
        ns = db.open_namespace("g")
        rows = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in parts)
        vec_bytes = rows * queries.shape[1] * 4
        print(f"{time.strftime('%Y-%m-%d %H:%M')} UTC; {rows:,} rows; routing {a.routing}; load {os.getloadavg()}")
        print(
            "| probe | fill | filter | recall@10 | ms p50 | round trips (median / max) | requests (median / max) "
            "| MB read (median) | % of vector bytes | load |"
        )
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        truths = {}
        for fname in a.filters.split(","):
            filt, where = FILTERS[fname]
            truths[fname] = ground_truth(parts, queries, where=where)
        for probe, fill in sweep_points(a.sweep):
            for fname in a.filters.split(","):
                filt, _where = FILTERS[fname]
                res = []
                for j, q in enumerate(queries):
                    c = cache.configure(tempfile.mkdtemp(prefix="puffer-cold-"))
                    c.background_fetch = False
                    segment.GENS.clear()
                    manifest.MANIFESTS.clear()
                    ns = db.open_namespace("g")
                    body = {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 10, "consistency": {"level": "eventual"}}
                    if filt is not None:
                        body["filters"] = filt
                    with ivf.override(probe=probe, fill=fill):
                        t = time.perf_counter()
                        r = engine.run_query(ns, body)
                        ms = (time.perf_counter() - t) * 1000
                    p = r["performance"]
                    hit = len({x["id"] for x in r["rows"]} & set(truths[fname][j].tolist()))
                    res.append(
                        (
                            ms,
                            p["object_store_round_trips"],
                            p["object_store_requests"],
                            p["object_store_bytes_read"],
                            hit,
                        )
                    )
                m = np.array(res, dtype=np.float64)
                print(
                    f"| {probe or 'd'} | {fill if fill is not None else 'd'} | {fname} | {m[:, 4].sum() / (10 * len(m)):.3f} "
                    f"| {np.median(m[:, 0]):.0f} | {np.median(m[:, 1]):.0f} / {m[:, 1].max():.0f} "
                    f"| {np.median(m[:, 2]):.0f} / {m[:, 2].max():.0f} | {np.median(m[:, 3]) / 1e6:.2f} "
                    f"| {np.median(m[:, 3]) / vec_bytes * 100:.2f} | {os.getloadavg()[0]:.1f} |",
                    flush=True,
                )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
