"""Full-text search as the corpus grows (issue 25): warm BM25 p50 at 126k and 1M GCIDE documents
in one process, and cold BM25 at the largest size on moto (child process, empty cache per query).

    python benchmarks/bench_fts_scale.py STORE_DIR [--sizes 126k,1M] [--warm-queries 200]
                                         [--cold-queries 20] [--no-cold] [--no-doc] [--lancedb]

Data: GCIDE's 126,236 entries; a size of N documents is ``ceil(N / 126,236)`` copies of them with
new ids (copy j: id + j * 10,000,000), cut at N, written once into namespace ``gcide-SIZE`` of the
local store STORE_DIR (English, stemming) and indexed there.  Queries: gcide's dev queries (glosses,
~6 terms after stop words), eventual BM25 top-10 through ``engine.run_query``; warm = after 50
warm-up queries, every measured query a different one (its terms are mostly new to the process).

Cold: every object of the largest namespace (WAL, meta.json, index) copied into a moto bucket;
per query a fresh cache directory and cleared in-process caches; requests, round trips and bytes
from the query's ``performance``; the namespace's bytes = every object of the namespace.

``--lancedb``: for reference, in the same run, a LanceDB table of the same documents (same ids;
local directory ``STORE_DIR-lancedb``, reused when present) with LanceDB's native FTS index
(``create_fts_index``: English, stemming, stop words removed, as puffer's schema here), the same
warm-up and measured queries, top-10 ids.  nDCG@10 against gcide's qrels is computed for both at
the 126k size only (above it the copies repeat every relevant document under new ids).
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
from _common import ROOT, default_data, log, ndcg10, publish, section_head, start_moto

sys.path.insert(0, str(ROOT))
START, END = "<!-- bench_fts_scale:start -->", "<!-- bench_fts_scale:end -->"
SIZES = {"126k": 126_236, "1M": 1_000_000, "10M": 10_000_000}
SCHEMA = {"text": {"type": "string", "full_text_search": {"language": "english", "stemming": True}}}


def build(db, name: str, docs: pl.DataFrame, n: int) -> None:
    """Namespace ``name`` with ``n`` documents (copies of ``docs`` with new ids), indexed."""
    from puffer_cli.index import builder

    ns = db.open_namespace(name)
    if ns.exists():  # written by an earlier run: index it when it is not (yet) indexed
        if not (ns.read_meta()[0] or {}).get("index"):
            t0 = time.perf_counter()
            builder.index_namespace(ns, gc_grace_s=0)
            log(f"{name}: indexed in {time.perf_counter() - t0:.0f}s")
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


def timed(search, qs: list[str], n: int, rel: list[set] | None) -> dict:
    """p50 / p90 wall and CPU ms of ``search(text) -> ids`` over ``qs[50:50+n]`` after 50 warm-up
    queries; mean nDCG@10 against ``rel`` (parallel to ``qs``) when given."""
    for t in qs[:50]:
        search(t)
    ts, cpu, nd = [], [], []
    for i, t in enumerate(qs[50 : 50 + n], start=50):
        t0, c0 = time.perf_counter(), time.process_time()
        ids = search(t)
        ts.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        if rel is not None:
            nd.append(ndcg10(ids, rel[i]))
    ts.sort()
    cpu.sort()
    out = {"p50": ts[len(ts) // 2], "p90": ts[int(len(ts) * 0.9)], "cpu": cpu[len(cpu) // 2], "n": len(ts)}
    out["ndcg"] = statistics.fmean(nd) if nd else None
    return out


def warm(db, name: str, qs: list[str], n: int, rel: list[set] | None = None) -> dict:
    from puffer_cli.search import engine

    ns = db.open_namespace(name)
    return timed(lambda t: [r["id"] for r in engine.run_query(ns, body(t))["rows"]], qs, n, rel)


def lance_table(path: str, name: str, docs: pl.DataFrame, n: int):
    """LanceDB table ``name`` under ``path``: the same ``n`` documents and ids as ``build``, with a
    native FTS index on ``text``; returns (table, build seconds or None when reused)."""
    import lancedb

    ldb = lancedb.connect(path)
    if name in ldb.table_names():
        tbl = ldb.open_table(name)
        if tbl.count_rows() == n and any(i.index_type == "FTS" for i in tbl.list_indices()):
            return tbl, None
    parts = []
    for j in range(math.ceil(n / docs.height)):
        part = docs.head(min(docs.height, n - j * docs.height))
        parts.append(part.with_columns(pl.col("id") + j * 10_000_000))
    t0 = time.perf_counter()
    tbl = ldb.create_table(name, pl.concat(parts).to_arrow(), mode="overwrite")
    log(f"lancedb {name}: written {n:,} docs in {time.perf_counter() - t0:.0f}s")
    t0 = time.perf_counter()
    tbl.create_fts_index("text", language="English", stem=True, remove_stop_words=True)
    took = time.perf_counter() - t0
    log(f"lancedb {name}: FTS index built in {took:.0f}s")
    return tbl, took


def lance_warm(tbl, qs: list[str], n: int, rel: list[set] | None = None) -> dict:
    def search(text: str) -> list:
        try:
            return [r["id"] for r in tbl.search(text, query_type="fts").limit(10).select(["id", "_score"]).to_list()]
        except Exception:  # noqa: BLE001 - a query LanceDB's parser rejects counts as empty (as bench_index)
            return []

    return timed(search, qs, n, rel)


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
    ap.add_argument("--lancedb", action="store_true", help="LanceDB native FTS on the same documents, same run")
    ap.add_argument("--data", default=default_data())
    a = ap.parse_args()
    d = Path(a.data) / "gcide"
    docs = pl.read_parquet(d / "docs.parquet").select("id", "text")
    qdf = pl.read_parquet(d / "queries.parquet")
    qrels = pl.read_parquet(d / "qrels.parquet")
    relmap = {q: set(v) for q, v in qrels.group_by("qid").agg(pl.col("doc_id")).iter_rows()}
    order = np.random.default_rng(7).permutation(qdf.height)
    qs = [qdf["text"][int(i)] for i in order]
    rel = [relmap.get(qdf["qid"][int(i)], set()) for i in order]
    sizes = a.sizes.split(",")
    db = puffer_cli.connect(a.store)
    for s in sizes:
        build(db, f"gcide-{s}", docs, SIZES[s])
    load = os.getloadavg()
    # puffer first, before LanceDB is opened: its runtime's threads stay out of puffer's figures
    res = {s: warm(db, f"gcide-{s}", qs, a.warm_queries, rel if s == "126k" else None) for s in sizes}
    for s, r in res.items():
        log(f"warm {s}: {r}")
    lance = {}
    if a.lancedb:
        for s in sizes:
            lance[s] = lance_table(a.store.rstrip("/") + "-lancedb", f"gcide-{s}", docs, SIZES[s])
    lres = {s: lance_warm(t, qs, a.warm_queries, rel if s == "126k" else None) for s, (t, _b) in lance.items()}
    for s, r in lres.items():
        log(f"lancedb warm {s}: {r}")
    load1 = os.getloadavg()
    cres = None
    if not a.no_cold:
        cres = cold(a.store, f"gcide-{sizes[-1]}", qs[1000:], a.cold_queries)
        rows = cres["rows"]
        log(
            f"cold {sizes[-1]}: p50 {statistics.median(r[0] for r in rows):.0f} ms, round trips max "
            f"{max(r[1] for r in rows)}, requests max {max(r[2] for r in rows)}, bytes max {max(r[3] for r in rows) / 1e6:.2f} MB"
            f" of {cres['bytes'] / 1e6:.0f} MB"
        )
        cload = os.getloadavg()
    cmd = f"python benchmarks/bench_fts_scale.py STORE --sizes {a.sizes} --warm-queries {a.warm_queries}"
    cmd += " --no-cold" if a.no_cold else f" --cold-queries {a.cold_queries}"
    cmd += " --lancedb" if a.lancedb else ""
    lines = section_head(
        "Full-text search by corpus size (`benchmarks/bench_fts_scale.py`)",
        cmd,
        ("tantivy", "polars", "lancedb") if a.lancedb else ("tantivy", "polars"),
    )
    lines.append(
        f"- Load average (1/5/15 min) at start of the warm runs: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; "
        f"at their end: {load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f}"
    )
    lines += [
        "- Data: GCIDE entries, copies with new ids; gcide dev queries, eventual BM25 top-10, one process; "
        "the same warm-up and measured queries for every system. nDCG@10 (gcide qrels, binary) at 126k only, "
        "over the measured queries (not bench_index's sample).",
    ]
    if lance:
        built = ", ".join(f"{s} {b:.0f} s" if b is not None else f"{s} reused" for s, (_t, b) in lance.items())
        lines.append(
            "- LanceDB: a local table of the same documents and ids, `create_fts_index('text', language='English', "
            f"stem=True, remove_stop_words=True)` (native FTS); query `tbl.search(text, query_type='fts').limit(10)`. "
            f"FTS index build: {built}."
        )
    lines += [
        "",
        "| system | documents | warm p50 ms | warm p90 ms | CPU p50 ms | nDCG@10 | queries |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for system, rr in (("puffer", res), ("LanceDB native FTS", lres)):
        lines += [
            f"| {system} | {s} ({SIZES[s]:,}) | {r['p50']:.2f} | {r['p90']:.2f} | {r['cpu']:.2f} | "
            f"{'' if r['ndcg'] is None else format(r['ndcg'], '.4f')} | {r['n']} |"
            for s, r in rr.items()
        ]
    if cres is not None:
        rows = cres["rows"]
        med = [statistics.median(r[i] for r in rows) for i in range(4)]
        mx = [max(r[i] for r in rows) for i in range(4)]
        lines += [
            "",
            f"Cold, {sizes[-1]} documents on moto (child process; indexed there), empty cache per query, "
            f"{len(rows)} queries; the namespace is {cres['bytes'] / 1e6:.0f} MB (WAL and index), its index "
            f"{cres['index'] / 1e6:.0f} MB; load average at the end of the cold queries "
            f"{cload[0]:.2f} / {cload[1]:.2f} / {cload[2]:.2f}:",
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
