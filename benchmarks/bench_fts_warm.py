"""Warm BM25 latency on GCIDE (126,236 documents): the query path a long-lived process runs.

    python benchmarks/bench_fts_warm.py STORE_DIR

Loads gcide's documents into namespace ``g`` of the local store STORE_DIR (once; English with
stemming), indexes it, runs 20 warm-up queries and then 100 of gcide's queries as eventual BM25
top-10 queries through ``engine.run_query``, and prints the p50 and a profile of the 100.
Comparing two builds: run it with PYTHONPATH set to each checkout, against its own store.
"""

import cProfile
import os
import pstats
import sys
import time

import polars as pl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import puffer_cli  # noqa: E402
from puffer_cli.search import engine  # noqa: E402

from _common import default_data  # noqa: E402


def main() -> None:
    d = os.path.join(default_data(), "gcide")
    docs = pl.read_parquet(f"{d}/docs.parquet")
    qs = pl.read_parquet(f"{d}/queries.parquet")["text"].to_list()[:120]
    db = puffer_cli.connect(sys.argv[1])
    ns = db.open_namespace("g")
    if not ns.exists():
        h = db.namespace("g")
        schema = {"text": {"type": "string", "full_text_search": {"language": "english", "stemming": True}}}
        h.write({"upsert_columns": {"id": docs["id"].to_list(), "text": docs["text"].to_list()}, "schema": schema})
        h.index()

    def q(t):
        body = {"rank_by": ["text", "BM25", t], "top_k": 10, "consistency": {"level": "eventual"}}
        return engine.run_query(ns, body)

    for t in qs[:20]:
        q(t)
    ts = []
    pr = cProfile.Profile()
    pr.enable()
    for t in qs[20:120]:
        t0 = time.perf_counter()
        q(t)
        ts.append(time.perf_counter() - t0)
    pr.disable()
    ts.sort()
    print(f"p50 ms {ts[len(ts) // 2] * 1000:.2f}  load {os.getloadavg()[0]:.2f}")
    pstats.Stats(pr).sort_stats("cumulative").print_stats(20)


if __name__ == "__main__":
    main()
