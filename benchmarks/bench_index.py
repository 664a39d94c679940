"""Indexed queries vs LanceDB, same data, same run (``nox -s bench``).

    python benchmarks/bench_index.py [--data DIR] [--queries N] [--only glove,fmnist,gcide,tail,cold]
                                     [--no-lancedb] [--no-write]

Cases (data from ../shared/data/prepare.py, default ~/.cache/puffer-bench):

* glove-100-angular (331k x 100, cosine): index build time, recall@10 vs the
  exact ground truth, p50/p99 latency of in-process top-10 queries
  (``engine.run_query``, eventual consistency: index only).  LanceDB: IVF_HNSW_SQ.
* fashion-mnist-784-euclidean with a 10% ``category`` filter: recall@10 vs an
  exact filtered scan.  LanceDB: IVF_HNSW_SQ with prefilter.
* gcide BM25 (126k docs, WordNet definitions as queries): nDCG@10 and p50.
  LanceDB: native FTS (English stemming, stop words).
* strong query over the indexed glove set plus an unindexed tail of 10,000
  rows: p50 overhead vs the same query with eventual consistency.
* cold query against a moto S3 endpoint, empty cache: round trips, bytes and
  latency, then the same query warm; plus ``puffer warm``.

Appends/replaces its section of docs/benchmarks.md (command, machine, date).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, whatever the working directory
from puffer_cli.index import warm
from puffer_cli.index.segment import GENS
from puffer_cli.index.tail import TAILS

from _common import ROOT, default_data, log, ndcg10, pct, publish, section_head, start_moto

START, END = "<!-- bench_index:start -->", "<!-- bench_index:end -->"
sys.path.insert(0, str(ROOT))


def ingest_frame(ns, df: pl.DataFrame, schema=None, metric=None, chunk=50_000):
    for i in range(0, df.height, chunk):
        ns.write_frame(
            df.slice(i, chunk), schema=schema if i == 0 else None, distance_metric=metric if i == 0 else None
        )


def puffer_db(tmp: str, name: str):
    import puffer_cli

    return puffer_cli.connect(os.path.join(tmp, name))


def measure(run, cases, score) -> tuple[list[float], list[float]]:
    """For each ``(query, truth)`` in ``cases``: time ``rows = run(query)`` (ms) and keep ``score(rows, truth)``."""
    lat, scores = [], []
    for query, truth in cases:
        t = time.perf_counter()
        rows = run(query)
        lat.append((time.perf_counter() - t) * 1000)
        scores.append(score(rows, truth))
    return lat, scores


def recall10(rows: list[dict], truth: set) -> float:
    return len({r["id"] for r in rows} & truth) / 10


def ndcg10_rows(rows: list[dict], relevant: set) -> float:
    return ndcg10([r["id"] for r in rows], relevant)


def eventual(rank_by: list, **extra) -> dict:
    """Query body: top 10 by ``rank_by``, eventual consistency (index only)."""
    return {"rank_by": rank_by, "top_k": 10, **extra, "consistency": {"level": "eventual"}}


# ---------------------------------------------------------------- glove
def case_glove(args, tmp, res, keep):
    from puffer_cli.index import builder
    from puffer_cli.search import engine

    d = os.path.join(args.data, "glove-100-angular")
    base = pl.read_parquet(os.path.join(d, "base.parquet"))
    qs = np.load(os.path.join(d, "queries.npy"))[: args.queries]
    gt = np.load(os.path.join(d, "gt.npy"))[: args.queries, :10]
    db = puffer_db(tmp, "glove")
    ns = db.open_namespace("glove")
    t = time.perf_counter()
    ingest_frame(ns, base, metric="cosine_distance")
    log(f"glove: ingest {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    rep = builder.index_namespace(ns, gc_grace_s=0)
    build = time.perf_counter() - t
    log(f"glove: {rep.summary()}")
    truths = [set(g.tolist()) for g in gt]
    bodies = (eventual(["vector", "ANN", q.tolist()]) for q in qs)
    lat, rec = measure(lambda body: engine.run_query(ns, body)["rows"], zip(bodies, truths), recall10)
    res.append(
        {
            "case": "glove-100 ANN top-10",
            "system": "puffer (IVF-SQ8, format 2, default probe)",
            "build_s": build,
            "quality": f"recall@10 {np.mean(rec):.3f}",
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "n": len(qs),
        }
    )
    keep["glove"] = (db, ns, qs, base.height)
    if args.lancedb:
        import lancedb

        ldb = lancedb.connect(os.path.join(tmp, "lance-glove"))
        tbl = ldb.create_table("glove", base.select("id", "vector").to_arrow())
        t = time.perf_counter()
        tbl.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_HNSW_SQ")
        lbuild = time.perf_counter() - t
        lat, rec = measure(
            lambda q: tbl.search(q).metric("cosine").limit(10).select(["id"]).to_list(), zip(qs, truths), recall10
        )
        res.append(
            {
                "case": "glove-100 ANN top-10",
                "system": "LanceDB IVF_HNSW_SQ (defaults)",
                "build_s": lbuild,
                "quality": f"recall@10 {np.mean(rec):.3f}",
                "p50": pct(lat, 50),
                "p99": pct(lat, 99),
                "n": len(qs),
            }
        )
        log(res[-1])


# ---------------------------------------------------------------- fashion-mnist
def case_fmnist(args, tmp, res, keep):
    from puffer_cli.index import builder
    from puffer_cli.search import engine

    d = os.path.join(args.data, "fashion-mnist-784-euclidean")
    base = pl.read_parquet(os.path.join(d, "base.parquet"))
    nq = min(args.queries, 500)
    qs = np.load(os.path.join(d, "queries.npy"))[:nq]
    cats = sorted(base["category"].unique().to_list())
    X = base["vector"].to_numpy()
    bcat = base["category"].to_numpy()
    ids = base["id"].to_numpy()
    gts = []
    for i, q in enumerate(qs):
        c = cats[i % len(cats)]
        sel = np.nonzero(bcat == c)[0]
        dd = ((X[sel] - q) ** 2).sum(1)
        gts.append(set(ids[sel[np.argsort(dd, kind="stable")[:10]]].tolist()))
    frac = float(np.mean(bcat == cats[0]))
    db = puffer_db(tmp, "fmnist")
    ns = db.open_namespace("fmnist")
    ingest_frame(ns, base, metric="euclidean_squared")
    t = time.perf_counter()
    rep = builder.index_namespace(ns, gc_grace_s=0)
    build = time.perf_counter() - t
    log(f"fmnist: {rep.summary()}")
    bodies = (
        eventual(["vector", "ANN", q.tolist()], filters=["category", "Eq", cats[i % len(cats)]])
        for i, q in enumerate(qs)
    )
    lat, rec = measure(lambda body: engine.run_query(ns, body)["rows"], zip(bodies, gts), recall10)
    res.append(
        {
            "case": f"fashion-mnist ANN top-10, category filter ({frac:.0%})",
            "system": "puffer",
            "build_s": build,
            "quality": f"recall@10 {np.mean(rec):.3f}",
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "n": len(qs),
        }
    )
    if args.lancedb:
        import lancedb

        ldb = lancedb.connect(os.path.join(tmp, "lance-fmnist"))
        tbl = ldb.create_table("f", base.select("id", "vector", "category").to_arrow())
        t = time.perf_counter()
        tbl.create_index(metric="l2", vector_column_name="vector", index_type="IVF_HNSW_SQ")
        tbl.create_scalar_index("category", index_type="BITMAP")
        lbuild = time.perf_counter() - t

        def search(iq):
            i, q = iq
            return (
                tbl.search(q)
                .metric("l2")
                .where(f"category = '{cats[i % len(cats)]}'", prefilter=True)
                .limit(10)
                .select(["id"])
                .to_list()
            )

        lat, rec = measure(search, zip(enumerate(qs), gts), recall10)
        res.append(
            {
                "case": f"fashion-mnist ANN top-10, category filter ({frac:.0%})",
                "system": "LanceDB IVF_HNSW_SQ + prefilter",
                "build_s": lbuild,
                "quality": f"recall@10 {np.mean(rec):.3f}",
                "p50": pct(lat, 50),
                "p99": pct(lat, 99),
                "n": len(qs),
            }
        )
        log(res[-1])


# ---------------------------------------------------------------- gcide
def case_gcide(args, tmp, res, keep):
    from puffer_cli.index import builder
    from puffer_cli.search import engine

    d = os.path.join(args.data, "gcide")
    docs = pl.read_parquet(os.path.join(d, "docs.parquet")).select("id", "text")
    queries = pl.read_parquet(os.path.join(d, "queries.parquet"))
    qrels = pl.read_parquet(os.path.join(d, "qrels.parquet"))
    rel = {q: set(v) for q, v in qrels.group_by("qid").agg(pl.col("doc_id")).iter_rows()}
    queries = queries.filter(pl.col("qid").is_in(list(rel))).sample(n=min(args.gcide_queries, queries.height), seed=7)
    fts_opts = {"language": "english", "stemming": True, "remove_stopwords": False}  # as tantivy en_stem
    db = puffer_db(tmp, "gcide")
    ns = db.open_namespace("gcide")
    ingest_frame(ns, docs, schema={"text": {"type": "string", "full_text_search": fts_opts}})
    t = time.perf_counter()
    rep = builder.index_namespace(ns, gc_grace_s=0)
    build = time.perf_counter() - t
    log(f"gcide: {rep.summary()}")
    bodies = ((eventual(["text", "BM25", text]), rel[qid]) for qid, text in queries.iter_rows())
    lat, nd = measure(lambda body: engine.run_query(ns, body)["rows"], bodies, ndcg10_rows)
    res.append(
        {
            "case": "gcide BM25 top-10",
            "system": "puffer (blk-1 window pruning, exact global BM25)",
            "build_s": build,
            "quality": f"nDCG@10 {np.mean(nd):.4f}",
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "n": queries.height,
        }
    )
    keep["gcide"] = (db, ns, queries)
    if args.lancedb:
        import lancedb

        ldb = lancedb.connect(os.path.join(tmp, "lance-gcide"))
        tbl = ldb.create_table("g", docs.to_arrow())
        t = time.perf_counter()
        tbl.create_fts_index("text", use_tantivy=False, language="English", stem=True, remove_stop_words=True)
        lbuild = time.perf_counter() - t

        def search(text):
            try:
                return tbl.search(text, query_type="fts").limit(10).select(["id"]).to_list()
            except Exception:  # noqa: BLE001 - a query LanceDB's parser rejects counts as empty
                return []

        lat, nd = measure(search, ((text, rel[qid]) for qid, text in queries.iter_rows()), ndcg10_rows)
        res.append(
            {
                "case": "gcide BM25 top-10",
                "system": "LanceDB native FTS (English, stem, stop words)",
                "build_s": lbuild,
                "quality": f"nDCG@10 {np.mean(nd):.4f}",
                "p50": pct(lat, 50),
                "p99": pct(lat, 99),
                "n": queries.height,
            }
        )
        log(res[-1])


# ---------------------------------------------------------------- strong query with a tail
def case_tail(args, tmp, res, keep):
    from puffer_cli.search import engine

    if "glove" not in keep:
        log("tail: needs the glove case; skipped")
        return
    db, ns, qs, n = keep["glove"]
    rng = np.random.default_rng(3)
    d = os.path.join(args.data, "glove-100-angular")
    extra = pl.read_parquet(os.path.join(d, "base.parquet"), n_rows=10_000)
    noise = rng.normal(scale=0.01, size=(10_000, 100)).astype(np.float32)
    extra = extra.with_columns(
        pl.col("id") + 10_000_000, pl.Series("vector", extra["vector"].to_numpy() + noise).cast(extra["vector"].dtype)
    )
    for i in range(0, 10_000, 1000):  # 10 WAL entries of 1,000 rows
        ns.write_frame(extra.slice(i, 1000))
    qq = qs[:300]

    def run(level):
        lat = []
        for q in qq:
            body = {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 10, "consistency": {"level": level}}
            t = time.perf_counter()
            engine.run_query(ns, body)
            lat.append((time.perf_counter() - t) * 1000)
        return lat

    run("strong")  # fold the tail once (cached per process, like a server)
    ev, st = run("eventual"), run("strong")
    res.append(
        {
            "case": "glove-100 + 10,000-row unindexed tail",
            "system": "puffer strong vs eventual",
            "build_s": None,
            "quality": f"p50 overhead {pct(st, 50) - pct(ev, 50):.2f} ms",
            "p50": pct(st, 50),
            "p99": pct(st, 99),
            "n": len(qq),
            "note": f"eventual p50 {pct(ev, 50):.2f} ms",
        }
    )


# ---------------------------------------------------------------- cold query on moto
def case_cold(args, tmp, res, keep):
    import puffer_cli
    from puffer_cli.index import builder
    from puffer_cli.search import engine
    from puffer_cli.store import filecache as cache
    from puffer_cli.wal import namespace

    server, endpoint = start_moto()
    try:
        d = os.path.join(args.data, "glove-100-angular")
        base = pl.read_parquet(os.path.join(d, "base.parquet"), n_rows=args.cold_rows)
        qs = np.load(os.path.join(d, "queries.npy"))[:20]
        db = puffer_cli.connect("s3://bench/cold", s3_endpoint=endpoint)
        ns = db.open_namespace("glove")
        ingest_frame(ns, base, metric="cosine_distance")
        cdir = os.path.join(tmp, "cold-cache")
        cache.configure(cdir)
        t = time.perf_counter()
        rep = builder.index_namespace(ns, gc_grace_s=0)
        log(f"cold: {rep.summary()} ({time.perf_counter() - t:.1f}s)")

        def reset():
            shutil.rmtree(cdir, ignore_errors=True)
            cache.configure(cdir)
            GENS.clear()
            TAILS.clear()
            builder._MANIFESTS.clear()
            namespace.forget(db.store, "glove")

        body = lambda q: {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 10}  # noqa: E731
        reset()
        ns = db.open_namespace("glove")
        t = time.perf_counter()
        cold = engine.run_query(ns, body(qs[0]))["performance"]
        cold_ms = (time.perf_counter() - t) * 1000
        lat = []
        for q in qs[1:]:
            t = time.perf_counter()
            warm_perf = engine.run_query(ns, body(q))["performance"]
            lat.append((time.perf_counter() - t) * 1000)
        res.append(
            {
                "case": f"cold ANN query, moto S3, empty cache ({args.cold_rows:,} x 100)",
                "system": "puffer",
                "build_s": None,
                "quality": f"{cold['object_store_requests']} requests, "
                f"{cold['object_store_bytes_read'] / 1e6:.1f} MB read",
                "p50": cold_ms,
                "p99": None,
                "n": 1,
                "note": f"next 19 queries (vector file fetched in the background meanwhile; strong: meta + "
                f"WAL listing per query): p50 {pct(lat, 50):.1f} ms, last one "
                f"{warm_perf['object_store_requests']} requests, "
                f"{warm_perf['object_store_bytes_read']} bytes",
            }
        )
        reset()
        ns = db.open_namespace("glove")
        t = time.perf_counter()
        w = warm.warm(ns, cache.get_cache())
        res.append(
            {
                "case": "`puffer warm` of the same generation",
                "system": "puffer",
                "build_s": None,
                "quality": f"{w['files']} files, {w['bytes'] / 1e6:.1f} MB",
                "p50": w["seconds"] * 1000,
                "p99": None,
                "n": 1,
                "note": "",
            }
        )
    finally:
        server.stop()


# ---------------------------------------------------------------- report
def fmt(x, nd=2):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{nd}f}"


def render(res: list[dict], command: str, load: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    lines = section_head(
        "Indexed queries (`benchmarks/bench_index.py`)", command, ("numkong", "tantivy", "polars", "lancedb")
    ) + [
        "- In-process latency of `engine.run_query` (query parsing, meta.json read, candidate selection, exact "
        "re-rank, response shaping) on a local-disk store, eventual consistency unless stated; LanceDB "
        "`tbl.search(...).limit(10).to_list()` on a local table. Build = `index_namespace` wall time "
        "(WAL read + doc store + IVF-SQ8 / full-text blocks + upload), LanceDB = `create_index` / `create_fts_index`.",
        "- Load average (1/5/15 min) at the start: {}; at the end: {} (2 cores: latencies stretch with it)".format(
            " / ".join(f"{x:.2f}" for x in load[0]), " / ".join(f"{x:.2f}" for x in load[1])
        ),
        "",
        "| case | system | build s | quality | p50 ms | p99 ms | queries | note |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    for r in res:
        lines.append(
            f"| {r['case']} | {r['system']} | {fmt(r['build_s'], 1)} | {r['quality']} | {fmt(r['p50'])} | "
            f"{fmt(r['p99'])} | {r['n']} | {r.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--queries", type=int, default=1000, help="vector queries per case")
    ap.add_argument("--gcide-queries", type=int, default=2000, help="sampled gcide queries (with qrels)")
    ap.add_argument("--cold-rows", type=int, default=100_000, help="glove rows for the moto cold-query case")
    ap.add_argument("--only", default="glove,tail,fmnist,gcide,cold")
    ap.add_argument("--no-lancedb", dest="lancedb", action="store_false")
    ap.add_argument("--no-write", dest="no_write", action="store_true", help="do not touch docs/benchmarks.md")
    args = ap.parse_args(argv)
    args.data = os.path.abspath(os.path.expanduser(args.data))
    from puffer_cli.store import filecache as cache

    tmp = tempfile.mkdtemp(prefix="puffer-bench-index-")
    cache.configure(os.path.join(tmp, "cache"))
    res: list[dict] = []
    keep: dict = {}
    load0 = os.getloadavg()
    cases = {"glove": case_glove, "tail": case_tail, "fmnist": case_fmnist, "gcide": case_gcide, "cold": case_cold}
    try:
        for name in [c.strip() for c in args.only.split(",") if c.strip()]:
            log(f"== {name}")
            t = time.perf_counter()
            cases[name](args, tmp, res, keep)
            log(f"== {name} done in {time.perf_counter() - t:.0f}s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    command = "python benchmarks/bench_index.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    section = render(res, command.strip(), (load0, os.getloadavg()))
    publish(section, START, END, write=not args.no_write)


if __name__ == "__main__":
    main()
