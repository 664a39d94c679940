"""int8 against int4 IVF list codes (``ann.codes``, issue 24's "cheaper codes where they pay"), one run.

    python benchmarks/bench_codes.py [--sets fashion,glove2M] [--queries 200] [--work DIR] [--no-write]

Per set, two local stores of the same rows: one indexed with int8 codes (the default), one with
``"ann": {"codes": "int4"}`` (two dimensions a byte, the ``rerank`` default 4 instead of 2).  For
each: `puffer index` wall time, the bytes of the lists files (what a cold query's probe reads
from and the cache holds), and warm in-process recall@10 / p50 at two probes, the two stores'
queries interleaved.  Sets: Fashion-MNIST (60,000 x 784, euclidean; the data's own ground truth)
and bench_scale's 2M set (GloVe-100 + 5 noisy copies, cosine; exact numpy truth over its rows).
Cold bytes of the filtered and unfiltered forms are bench_filtered's (run it on the two stores:
docs/benchmarks.md, "int4 list codes").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_data, log, pct, publish, section_head  # noqa: E402
from bench_scale import ground_truth, make_parts, run_cli  # noqa: E402

START, END = "<!-- bench_codes:start -->", "<!-- bench_codes:end -->"
CODES = ("int8", "int4")
PROBES = (0.02, 0.05)


def _fashion(data: Path, work: Path, n_q: int):
    d = data / "fashion-mnist-784-euclidean"
    base = pl.read_parquet(d / "base.parquet").select("id", "vector")
    dims = len(base["vector"][0])
    part = work / "data-fashion" / "part-0000.parquet"
    part.parent.mkdir(parents=True, exist_ok=True)
    if not part.exists():
        base.with_columns(pl.col("vector").cast(pl.Array(pl.Float32, dims))).write_parquet(part)
    q = np.load(d / "queries.npy")[:n_q].astype(np.float32)
    truth = np.load(d / "gt.npy")[:n_q, :10].astype(np.uint64)
    return [part], q, truth, dims, "euclidean_squared"


def _glove2m(data: Path, work: Path, n_q: int):
    g = data / "glove-100-angular"
    base = pl.read_parquet(g / "base.parquet").select("id", "vector")
    d = work / "data-glove2M"
    make_parts(base, 6, d)
    parts = sorted(d.glob("part-*.parquet"))
    q = np.load(g / "queries.npy")[:n_q].astype(np.float32)
    return parts, q, ground_truth(parts, q), 100, "cosine_distance"


SETS = {"fashion": _fashion, "glove2M": _glove2m}


def _lists_bytes(ns) -> int:
    from puffer_cli.index import builder

    man = builder.load_manifest(ns.store, ns.read_meta()[0]["index"]["manifest"])
    return sum(ns.store.size(s["ann"]["vector"]["lists"]["key"]) for s in man["segments"] if "vector" in s["ann"])


def _build(parts: list[Path], store: Path, dims: int, metric: str, codes: str) -> tuple[float, int]:
    import puffer_cli

    shutil.rmtree(store, ignore_errors=True)
    schema = json.dumps({"vector": {"type": f"[{dims}]f32", "ann": {"codes": codes}}})
    run_cli(
        ["ingest", "g", *map(str, parts), "--vector", "vector", "--store", str(store), "--json"]
        + ["--schema", schema, "--distance-metric", metric]
    )
    secs, _rss, _out = run_cli(["index", "g", "--store", str(store), "--json"])
    return secs, _lists_bytes(puffer_cli.connect(str(store)).open_namespace("g"))


def _measure(stores: dict, queries: np.ndarray, truth: np.ndarray, probe: float, n_warm: int = 10) -> dict:
    """recall@10 and p50 per codes, the stores' queries interleaved."""
    import puffer_cli
    from puffer_cli.index import ivf
    from puffer_cli.search import engine

    nss = {c: puffer_cli.connect(str(s)).open_namespace("g") for c, s in stores.items()}
    lat: dict = {c: [] for c in nss}
    hits = dict.fromkeys(nss, 0)
    with ivf.override(probe=probe):
        for j, q in enumerate(np.concatenate([queries[:n_warm], queries])):
            for c, ns in nss.items():
                body = {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 10, "consistency": {"level": "eventual"}}
                t = time.perf_counter()
                rows = engine.run_query(ns, body)["rows"]
                el = time.perf_counter() - t
                if j >= n_warm:
                    lat[c].append(el * 1000)
                    hits[c] += len({int(r["id"]) for r in rows} & set(truth[j - n_warm].tolist()))
    return {c: (hits[c] / (10 * len(queries)), pct(lat[c], 50)) for c in nss}


def lance_rows(set_name: str, parts: list[Path], queries, truth, work: Path, dims: int, metric: str) -> list[tuple]:
    """LanceDB on the same rows: IVF_RQ (RaBitQ, 1 bit a dimension; only when the dimension
    count is a multiple of 8) and IVF_PQ (4 dims a sub-vector), each at a few nprobes with an
    exact re-rank of 10x the results (``refine_factor``): the reference for binary codes.
    Rows: (set, index, build s, nprobes, recall@10, p50 ms)."""
    metric = "cosine" if metric == "cosine_distance" else "l2"
    pq_dims = 4
    import lancedb
    from lancedb.index import IvfPq, IvfRq

    db = lancedb.connect(str(work / f"lance-codes-{set_name}"))
    tbl = None
    for k, p in enumerate(parts):
        at = pl.read_parquet(p).select("id", "vector").to_arrow()
        if k == 0:
            tbl = db.create_table("t", at, mode="overwrite")
        else:
            tbl.add(at)
    assert tbl is not None
    n = tbl.count_rows()
    out = []
    parts_n = int(np.sqrt(n))
    kinds = [("IVF_PQ", IvfPq(distance_type=metric, num_partitions=parts_n, num_sub_vectors=dims // pq_dims))]
    if dims % 8 == 0:  # LanceDB's IVF_RQ needs it ("vector dimension must be divisible by 8")
        kinds.insert(0, ("IVF_RQ 1 bit", IvfRq(distance_type=metric, num_partitions=parts_n, num_bits=1)))
    for name, cfg in kinds:
        t0 = time.perf_counter()
        tbl.create_index("vector", config=cfg, replace=True)
        build = time.perf_counter() - t0
        log(f"lancedb {name}: build {build:.1f}s")
        for nprobes in (20, 40, 80):
            lat, hits = [], 0
            for j, q in enumerate(np.concatenate([queries[:10], queries])):
                t = time.perf_counter()
                res = tbl.search(q).nprobes(nprobes).refine_factor(10).limit(10).select(["id"]).to_list()
                if j >= 10:
                    lat.append((time.perf_counter() - t) * 1000)
                    hits += len({int(r["id"]) for r in res} & set(truth[j - 10].tolist()))
            out.append((set_name, name, build, nprobes, hits / (10 * len(queries)), pct(lat, 50)))
            log(f"lancedb {set_name} {name} nprobes {nprobes}: recall {out[-1][4]:.3f} p50 {out[-1][5]:.2f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="fashion,glove2M")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--work", default="/tmp/puffer-codes")
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--lancedb", action="store_true", help="LanceDB IVF_RQ / IVF_PQ on the same rows, same run")
    a = ap.parse_args()
    work = Path(a.work)
    load0 = os.getloadavg()
    rows = []
    lance: list[tuple] = []
    for name in a.sets.split(","):
        parts, queries, truth, dims, metric = SETS[name](Path(a.data), work, a.queries)
        stores, built = {}, {}
        for c in CODES:
            stores[c] = work / f"store-{name}-{c}"
            built[c] = _build(parts, stores[c], dims, metric, c)
            log(f"{name} {c}: index {built[c][0]:.1f}s, lists {built[c][1] / 1e6:.1f} MB")
        for probe in PROBES:
            got = _measure(stores, queries, truth, probe)
            for c in CODES:
                rows.append((name, c, probe, *got[c], *built[c]))
                log(f"{name} {c} probe {probe}: recall {got[c][0]:.3f} p50 {got[c][1]:.2f} ms")
        if a.lancedb:
            lance += lance_rows(name, parts, queries, truth, work, dims, metric)
    load1 = os.getloadavg()
    cmd = f"python benchmarks/bench_codes.py --sets {a.sets} --queries {a.queries}" + (
        " --lancedb" if a.lancedb else ""
    )
    lines = section_head("IVF list codes: int8 against int4 (`benchmarks/bench_codes.py`)", cmd, ("numpy", "numkong"))
    lines += [
        f"- Load average (1/5/15 min) at start: {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f}; "
        f"at end: {load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f}",
        f"- Warm, in-process, eventual top-10, {a.queries} queries, the two stores' queries interleaved; "
        "`rerank` at each codes' default (int8 2, int4 4); the default floor and fill.",
        "",
        "| set | codes | probe | recall@10 | p50 ms | index s | lists MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, c, probe, r, p50, secs, lb in rows:
        lines.append(f"| {name} | {c} | {probe} | {r:.3f} | {p50:.2f} | {secs:.1f} | {lb / 1e6:.1f} |")
    if lance:
        lines += [
            "",
            "LanceDB on the same rows, queries and truth, same run (local tables, the set's metric, "
            "sqrt(rows) partitions, `refine_factor(10)`: the 100 best by code re-ranked exactly; IVF_RQ "
            "(RaBitQ) needs a dimension count divisible by 8, so not on GloVe-100):",
            "",
            "| set | index | build s | nprobes | recall@10 | p50 ms |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += [f"| {st} | {ix} | {b:.1f} | {npb} | {r:.3f} | {p50:.2f} |" for st, ix, b, npb, r, p50 in lance]
    publish("\n".join(lines) + "\n", START, END, not a.no_write)


if __name__ == "__main__":
    main()
