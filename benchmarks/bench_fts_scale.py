"""Full-text search as the corpus grows (issue 25): warm BM25 p50 at 126k and 1M GCIDE documents
in one process, and cold BM25 at the largest size on moto (child process, empty cache per query).

    python benchmarks/bench_fts_scale.py STORE_DIR [--sizes 126k,1M] [--warm-queries 200]
                                         [--cold-queries 20] [--no-cold] [--no-doc]

Data: GCIDE's 126,236 entries; a size of N documents is ``ceil(N / 126,236)`` copies of them with
new ids (copy j: id + j * 10,000,000), cut at N, written once into namespace ``gcide-SIZE`` of the
local store STORE_DIR (English, stemming) and indexed there.  Queries: gcide's dev queries (glosses,
~6 terms after stop words), eventual BM25 top-10 through ``engine.run_query``; warm = after 50
warm-up queries, every measured query a different one (its terms are mostly new to the process).

Cold: every object of the largest namespace (WAL, meta.json, index) copied into a moto bucket;
per query a fresh cache directory and cleared in-process caches; requests, round trips and bytes
from the query's ``performance``; the namespace's bytes = every object of the namespace.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, default_data, log, publish, section_head, start_moto

sys.path.insert(0, str(ROOT))
START, END = "<!-- bench_fts_scale:start -->", "<!-- bench_fts_scale:end -->"
SIZES = {"126k": 126_236, "1M": 1_000_000, "10M": 10_000_000}
SCHEMA = {"text": {"type": "string", "full_text_search": {"language": "english", "stemming": True}}}


def build(db, name: str, docs: pl.DataFrame, n: int) -> None:
    """Namespace ``name`` with ``n`` documents (copies of ``docs`` with new ids), indexed."""
    from puffer_cli.index import builder

    ns = db.open_namespace(name)
    if ns.exists() and (ns.read_meta()[0] or {}).get("index"):
        return
    h = db.namespace(name)
    t0 = time.perf_counter()
    first = True
    for j in range(math.ceil(n / docs.height)):
        part = docs.head(min(docs.height, n - j * docs.height))
        for lo in range(0, part.height, 50_000):
            p = part.slice(lo, 50_000)
            w: dict = {"upsert_columns": {"id": (p["id"] + j * 10_000_000).to_list(), "text": p["text"].to_list()}}
            if first:
                w["schema"] = SCHEMA
                first = False
            h.write(w)
    log(f"{name}: written {n:,} docs in {time.perf_counter() - t0:.0f}s")
    t0 = time.perf_counter()
    builder.index_namespace(db.open_namespace(name), gc_grace_s=0)
    log(f"{name}: indexed in {time.perf_counter() - t0:.0f}s")


def body(t: str) -> dict:
    return {"rank_by": ["text", "BM25", t], "top_k": 10, "consistency": {"level": "eventual"}}


def warm(db, name: str, qs: list[str], n: int) -> dict:
    from puffer_cli.search import engine

    ns = db.open_namespace(name)
    for t in qs[:50]:
        engine.run_query(ns, body(t))
    ts, cpu = [], []
    for t in qs[50 : 50 + n]:
        t0, c0 = time.perf_counter(), time.process_time()
        engine.run_query(ns, body(t))
        ts.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    ts.sort()
    cpu.sort()
    return {"p50": ts[len(ts) // 2], "p90": ts[int(len(ts) * 0.9)], "cpu": cpu[len(cpu) // 2], "n": len(ts)}


def cold(store_dir: str, name: str, qs: list[str], n: int) -> dict:
    import puffer_cli
    from puffer_cli import caches
    from puffer_cli.index import builder, manifest, segment
    from puffer_cli.search import engine
    from puffer_cli.store import filecache as cache

    server, endpoint = start_moto(process=True)
    try:
        src = puffer_cli.connect(store_dir).store
        db = puffer_cli.connect("s3://bench/fts", s3_endpoint=endpoint)
        # the WAL and meta.json (without the index), indexed on the object store: large index
        # files are written in parts there, as in production
        keys = [k for k in src.list(f"{name}/") if "/index/" not in k and not k.endswith((".lock", "meta.json"))]
        for k in keys:
            db.store.write(k, src.read(k))
        meta = json.loads(src.read(f"{name}/meta.json"))
        meta.pop("index", None)
        db.store.write(f"{name}/meta.json", json.dumps(meta).encode())
        cache.configure(tempfile.mkdtemp(prefix="puffer-build-"))
        t0 = time.perf_counter()
        builder.index_namespace(db.open_namespace(name), gc_grace_s=0)
        log(f"cold: indexed on moto in {time.perf_counter() - t0:.0f}s")
        total = index = 0
        for k in db.store.list(f"{name}/"):
            size = db.store.size(k)
            total += size
            index += size if "/index/" in k else 0
        log(f"cold: the namespace is {total / 1e6:.0f} MB, its index {index / 1e6:.0f} MB")
        rows = []
        for t in qs[:n]:
            c = cache.configure(tempfile.mkdtemp(prefix="puffer-cold-"))
            c.background_fetch = False
            segment.GENS.clear()
            manifest.MANIFESTS.clear()
            for name_ in list(caches.stats()):
                caches.lru(name_, 1).clear()
            ns = db.open_namespace(name)
            t0 = time.perf_counter()
            r = engine.run_query(ns, body(t))
            ms = (time.perf_counter() - t0) * 1000
            p = r["performance"]
            rows.append((ms, p["object_store_round_trips"], p["object_store_requests"], p["object_store_bytes_read"]))
        return {"rows": rows, "bytes": total, "index": index}
    finally:
        server.stop()


def main() -> None:
    import puffer_cli

    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("--sizes", default="126k,1M")
    ap.add_argument("--warm-queries", type=int, default=200)
    ap.add_argument("--cold-queries", type=int, default=20)
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--data", default=default_data())
    a = ap.parse_args()
    d = Path(a.data) / "gcide"
    docs = pl.read_parquet(d / "docs.parquet").select("id", "text")
    qs = pl.read_parquet(d / "queries.parquet")["text"].to_list()
    rng = np.random.default_rng(7)
    qs = [qs[i] for i in rng.permutation(len(qs))]
    sizes = a.sizes.split(",")
    db = puffer_cli.connect(a.store)
    for s in sizes:
        build(db, f"gcide-{s}", docs, SIZES[s])
    load = os.getloadavg()
    res = {s: warm(db, f"gcide-{s}", qs, a.warm_queries) for s in sizes}
    for s, r in res.items():
        log(f"warm {s}: p50 {r['p50']:.2f} ms p90 {r['p90']:.2f} ms cpu p50 {r['cpu']:.2f} ms")
    cres = None
    if not a.no_cold:
        cres = cold(a.store, f"gcide-{sizes[-1]}", qs[1000:], a.cold_queries)
        rows = cres["rows"]
        log(
            f"cold {sizes[-1]}: p50 {statistics.median(r[0] for r in rows):.0f} ms, round trips max "
            f"{max(r[1] for r in rows)}, requests max {max(r[2] for r in rows)}, bytes max {max(r[3] for r in rows) / 1e6:.2f} MB"
            f" of {cres['bytes'] / 1e6:.0f} MB"
        )
    cmd = f"python benchmarks/bench_fts_scale.py STORE --sizes {a.sizes} --warm-queries {a.warm_queries}"
    cmd += " --no-cold" if a.no_cold else f" --cold-queries {a.cold_queries}"
    lines = section_head("Full-text search by corpus size (`benchmarks/bench_fts_scale.py`)", cmd)
    lines.append(f"- Load average at start of the warm runs: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    lines += [
        "- Data: GCIDE entries, copies with new ids; gcide dev queries, eventual BM25 top-10, one process.",
        "",
        "| documents | warm p50 ms | warm p90 ms | CPU p50 ms | queries |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {s} ({SIZES[s]:,}) | {r['p50']:.2f} | {r['p90']:.2f} | {r['cpu']:.2f} | {r['n']} |" for s, r in res.items()
    ]
    if cres is not None:
        rows = cres["rows"]
        med = [statistics.median(r[i] for r in rows) for i in range(4)]
        mx = [max(r[i] for r in rows) for i in range(4)]
        lines += [
            "",
            f"Cold, {sizes[-1]} documents on moto (child process; indexed there), empty cache per query, "
            f"{len(rows)} queries; the namespace is {cres['bytes'] / 1e6:.0f} MB (WAL and index), its index "
            f"{cres['index'] / 1e6:.0f} MB:",
            "",
            "| | ms | round trips | requests | bytes read | of the namespace | of its index |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for label, v in (("median", med), ("max", mx)):
            lines.append(
                f"| {label} | {v[0]:.0f} | {v[1]:.0f} | {v[2]:.0f} | {v[3] / 1e6:.2f} MB | "
                f"{100 * v[3] / cres['bytes']:.2f}% | {100 * v[3] / cres['index']:.2f}% |"
            )
    publish("\n".join(lines) + "\n", START, END, write=not a.no_doc)


if __name__ == "__main__":
    main()
