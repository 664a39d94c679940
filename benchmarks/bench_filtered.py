"""Filtered ANN at scale (issue 24, item 3): recall, warm latency and cold cost of vector
queries with selective filters, against exact filtered top-10.

    python benchmarks/bench_filtered.py [--copies 6] [--work DIR] [--queries N]
                                        [--cold-queries N] [--code DIR ...] [--no-cold] [--no-write]
                                        [--lancedb]

Data: bench_scale's 2M set (GloVe-100 base + 5 noisy copies, sigma 0.05, new ids) with two
int attributes: ``u`` uniform in 0..999, drawn per row independently of the vector
(uncorrelated; filters ``u < 10``, ``u < 30``, ``u < 100`` keep 1%, 3%, 10%), and ``c``, the
percentile (0..99) of the base vector's first component (correlated: copies share it;
``c < 3`` keeps the 3% of rows at one edge of the space).  Ingested and indexed once with
``puffer`` on a local store under ``--work`` (reused when present).

Each ``--code DIR`` (default: this checkout) is measured in a child process with
``PYTHONPATH=DIR``, on the same store, in the same run, so an older checkout (e.g. main)
gives the "before" column beside the "after":

* warm, in-process (``engine.run_query``, top-10, eventual): recall@10 against exact numpy
  filtered top-10, p50 / p99 ms, rows scanned per query (median of IVF members scanned +
  rows scored exactly);
* cold: the WAL copied once into a moto bucket (moto in its own process, loopback) and
  indexed there;
  per query a fresh cache directory and cleared in-process caches; ``performance``'s
  requests, round trips and bytes read (median and max), % of the namespace's f32 vector
  bytes, wall ms, recall@10 against the same exact filtered top-10.

``--lancedb``: for reference, in the same run, a LanceDB table of the same rows (``id``, ``vector``,
``u``, ``c``; local, ``--work``/lancedb-COPIES, reused when present) with an IVF_PQ index (cosine,
sqrt(n) partitions, 25 sub-vectors, as bench_scale), queried with
``.where(SQL, prefilter=True)`` for the same filters, same queries and truth: recall@10, p50 / p99
ms.  Written to its own section (puffer's warm rows of the same run beside LanceDB's); with
``--no-cold`` the main section is then left as it is, so the cold figures of the last full run stay.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, default_data, log, pct, publish, section_head, start_moto

START, END = "<!-- bench_filtered:start -->", "<!-- bench_filtered:end -->"
LSTART, LEND = "<!-- bench_filtered_lancedb:start -->", "<!-- bench_filtered_lancedb:end -->"
NOISE = 0.05
FILTERS = {  # name -> (turbopuffer filter, polars predicate)
    "none": (None, None),
    "1%": (["u", "Lt", 10], pl.col("u") < 10),
    "3%": (["u", "Lt", 30], pl.col("u") < 30),
    "10%": (["u", "Lt", 100], pl.col("u") < 100),
    "3% correlated": (["c", "Lt", 3], pl.col("c") < 3),
}
LANCE_SQL = {"none": None, "1%": "u < 10", "3%": "u < 30", "10%": "u < 100", "3% correlated": "c < 3"}
LANCE_PROBES = ((20, 10), (40, 10), (80, 10), (160, 10), (320, 10))  # (nprobes, refine_factor)


# ---------------------------------------------------------------- data
def make_parts(base: pl.DataFrame, copies: int, out: Path) -> int:
    """bench_scale's parts with ``u`` (uniform 0..999, drawn per row) and ``c`` (the percentile of
    the base vector's first component) as the attributes."""
    from bench_scale import make_parts as scale_parts

    x0 = np.asarray(base["vector"].to_numpy(), dtype=np.float32).reshape(base.height, -1)
    c = np.empty(len(x0), np.int64)
    c[np.argsort(x0[:, 0], kind="stable")] = np.arange(len(x0)) * 100 // len(x0)
    urng = np.random.default_rng(1)

    def columns(ids: np.ndarray, _x0: np.ndarray) -> dict:
        return {"u": urng.integers(0, 1000, len(ids)), "c": c}

    return scale_parts(base, copies, out, columns)


def ground_truth(parts: list[Path], queries: np.ndarray, where, k: int = 10) -> np.ndarray:
    """Exact cosine top-k ids per query over the rows of ``parts`` passing ``where``."""
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    best_d = np.full((len(qn), k), np.inf)
    best_i = np.zeros((len(qn), k), np.uint64)
    for p in parts:
        df = pl.read_parquet(p)
        if where is not None:
            df = df.filter(where)
        if not df.height:
            continue
        x = np.asarray(df["vector"].to_numpy(), dtype=np.float32).reshape(df.height, -1)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = 1 - qn @ x.T
        ids = df["id"].to_numpy().astype(np.uint64)
        cat_d = np.concatenate([best_d, d], axis=1)
        cat_i = np.concatenate([best_i, np.broadcast_to(ids, d.shape)], axis=1)
        sel = np.argpartition(cat_d, k - 1, axis=1)[:, :k]
        best_d = np.take_along_axis(cat_d, sel, 1)
        best_i = np.take_along_axis(cat_i, sel, 1)
    return best_i


def run_cli(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "puffer_cli.cli.main", *args], check=True, cwd=str(ROOT))
    return time.perf_counter() - t0


# ---------------------------------------------------------------- measuring (child)
def _count_scanned():
    """Wrap ivf.search and the stack's searches (shared routing) to add up the members they scan
    (their third result)."""
    from puffer_cli.index import ivf

    try:
        from puffer_cli.index import stack
    except ImportError:  # a checkout before the list-major stack
        stack = None

    box = [0]

    def counted(orig):
        def search(*a, **kw):
            r = orig(*a, **kw)
            box[0] += int(r[2])
            return r

        return search

    ivf.search = counted(ivf.search)
    for name in ("search", "filtered_search"):  # (a checkout measured may predate either)
        if stack is not None and hasattr(stack.Stack, name):
            setattr(stack.Stack, name, counted(getattr(stack.Stack, name)))
    return box


def child(a) -> None:
    """Measure warm and cold queries with the puffer on ``sys.path``; JSON on stdout."""
    import puffer_cli
    from puffer_cli.index import manifest, segment
    from puffer_cli.search import engine
    from puffer_cli.store import filecache as cache

    queries = np.load(a.queries_file)
    truth = {k: np.asarray(v, np.uint64) for k, v in np.load(a.truth_file).items()}
    scanned = _count_scanned()
    out: dict = {"code": puffer_cli.__file__, "warm": {}, "cold": {}}
    ns = puffer_cli.connect(a.store).open_namespace("g")
    for name, (filt, _w) in FILTERS.items():
        lat, hits, rows = [], 0, []
        for j, q in enumerate(np.concatenate([queries[: a.n_warm], queries])):
            body: dict = {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 10, "consistency": {"level": "eventual"}}
            if filt is not None:
                body["filters"] = filt
            scanned[0] = 0
            t = time.perf_counter()
            r = engine.run_query(ns, body)
            el = time.perf_counter() - t
            if j >= a.n_warm:
                lat.append(el * 1000)
                want = set(truth[name][j - a.n_warm].tolist())
                hits += len({int(x["id"]) for x in r["rows"]} & want)
                rows.append(scanned[0] + r["performance"]["exhaustive_search_count"])
        out["warm"][name] = {
            "recall": hits / (10 * len(queries)),
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "scanned": float(np.median(rows)),
        }
        log(f"  warm {name}: {out['warm'][name]}")
    if a.endpoint:
        db = puffer_cli.connect("s3://bench/filtered", s3_endpoint=a.endpoint)
        for name, (filt, _w) in FILTERS.items():
            rows, hits = [], 0
            for j, q in enumerate(queries[: a.cold_queries]):
                c = cache.configure(tempfile.mkdtemp(prefix="puffer-cold-"))
                c.background_fetch = False
                segment.GENS.clear()
                manifest.MANIFESTS.clear()
                nsc = db.open_namespace("g")
                body = {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 10, "consistency": {"level": "eventual"}}
                if filt is not None:
                    body["filters"] = filt
                t = time.perf_counter()
                r = engine.run_query(nsc, body)
                ms = (time.perf_counter() - t) * 1000
                p = r["performance"]
                rows.append(
                    (ms, p["object_store_round_trips"], p["object_store_requests"], p["object_store_bytes_read"])
                )
                hits += len({int(x["id"]) for x in r["rows"]} & set(truth[name][j].tolist()))
                shutil.rmtree(c.root, ignore_errors=True)
            arr = np.asarray(rows, dtype=np.float64)
            out["cold"][name] = {
                "ms": float(np.median(arr[:, 0])),
                "round_trips_max": int(arr[:, 1].max()),
                "requests": float(np.median(arr[:, 2])),
                "requests_max": int(arr[:, 2].max()),
                "bytes": float(np.median(arr[:, 3])),
                "bytes_max": float(arr[:, 3].max()),
                "recall": hits / (10 * len(arr)),
            }
            log(f"  cold {name}: {out['cold'][name]}")
    print(json.dumps(out))


# ---------------------------------------------------------------- LanceDB reference
def lance_table(parts: list[Path], path: Path):
    """LanceDB table of the rows in ``parts`` with an IVF_PQ cosine index (as bench_scale's
    ``lance()``); returns (table, (write s, index s) or None when reused)."""
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(str(path))
    if "t" in db.table_names():
        tbl = db.open_table("t")
        if any(i.index_type in ("IVF_PQ", "IvfPq") for i in tbl.list_indices()):
            return tbl, None
    t0 = time.perf_counter()
    tbl = None
    for p in parts:
        df = pl.read_parquet(p)
        x = np.asarray(df["vector"].to_numpy(), dtype=np.float32).reshape(-1)
        at = pa.table(
            {
                "id": df["id"].to_arrow(),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(x), 100),
                "u": df["u"].to_arrow(),
                "c": df["c"].to_arrow(),
            }
        )
        if tbl is None:
            tbl = db.create_table("t", at, mode="overwrite")
        else:
            tbl.add(at)
    write = time.perf_counter() - t0
    n = tbl.count_rows()
    t0 = time.perf_counter()
    tbl.create_index(
        metric="cosine",
        index_type="IVF_PQ",
        num_partitions=int(np.sqrt(n)),
        num_sub_vectors=25,
        vector_column_name="vector",
    )
    build = time.perf_counter() - t0
    log(f"lancedb: {n:,} rows written in {write:.0f}s, IVF_PQ built in {build:.0f}s")
    return tbl, (write, build)


def lance_measure(tbl, queries: np.ndarray, truth: dict, n_warm: int) -> dict:
    """recall@10 and p50 / p99 ms per (nprobes, refine) and filter, prefiltered."""
    out: dict = {}
    for nprobes, refine in LANCE_PROBES:
        for name, sql in LANCE_SQL.items():
            lat, hits = [], 0
            for j, q in enumerate(np.concatenate([queries[:n_warm], queries])):
                t = time.perf_counter()
                s = tbl.search(q).metric("cosine").nprobes(nprobes).refine_factor(refine)
                if sql is not None:
                    s = s.where(sql, prefilter=True)
                rows = s.limit(10).select(["id"]).to_list()
                el = (time.perf_counter() - t) * 1000
                if j >= n_warm:
                    lat.append(el)
                    hits += len({int(r["id"]) for r in rows} & set(truth[name][j - n_warm].tolist()))
            out[(nprobes, refine, name)] = {
                "recall": hits / (10 * len(queries)),
                "p50": pct(lat, 50),
                "p99": pct(lat, 99),
            }
            log(f"  lancedb nprobes {nprobes} refine {refine} {name}: {out[(nprobes, refine, name)]}")
    return out


def render_lance(a, n: int, results: dict, lres: dict, lbuild, load0, load1) -> str:
    cmd = f"python benchmarks/bench_filtered.py --copies {a.copies} --queries {a.queries} --lancedb"
    cmd += " --no-cold" if a.no_cold else f" --cold-queries {a.cold_queries}"
    L = section_head(
        "Filtered ANN: LanceDB reference (`benchmarks/bench_filtered.py --lancedb`)",
        cmd,
        ("numpy", "polars", "lancedb"),
    )
    L += [
        f"- Data and truth as in the filtered ANN section: {n:,} rows, {a.queries} queries, exact numpy filtered "
        "cosine top-10; both systems measured in this run, warm, in-process, one query at a time.",
        f"- Load average (1/5/15 min) at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; at end: "
        f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}.",
        "- LanceDB: local table, IVF_PQ (cosine, sqrt(n) partitions, 25 sub-vectors, 8 bits), query "
        "`tbl.search(q).metric('cosine').nprobes(n).refine_factor(r).where(SQL, prefilter=True).limit(10)`; "
        + (
            f"written in {lbuild[0]:.0f} s, IVF_PQ built in {lbuild[1]:.0f} s in this run."
            if lbuild
            else "table and index reused from an earlier run."
        ),
        "",
        "| system | filter | recall@10 | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results.values():
        for name, w in r["warm"].items():
            L.append(f"| puffer {r['rev'][:7]} | {name} | {w['recall']:.3f} | {w['p50']:.2f} | {w['p99']:.2f} |")
    for (nprobes, refine, name), w in lres.items():
        L.append(
            f"| LanceDB IVF_PQ nprobes {nprobes}, refine x{refine} | {name} | {w['recall']:.3f} | "
            f"{w['p50']:.2f} | {w['p99']:.2f} |"
        )
    return "\n".join(L) + "\n\n"


# ---------------------------------------------------------------- main
def copy_to_moto(store: Path, endpoint: str) -> float:
    """The namespace's WAL and meta.json (without its index pointer) into the moto bucket,
    then ``puffer index`` there, so the files are laid out as on any object store (large
    files in parts); returns the build's seconds."""
    import puffer_cli

    src = puffer_cli.connect(str(store)).store
    dst = puffer_cli.connect("s3://bench/filtered", s3_endpoint=endpoint).store
    keys = [k for k in src.list("g/") if "/index/" not in k and not k.endswith("meta.json")]
    for k in keys:
        dst.write(k, src.read(k))
    meta = json.loads(src.read("g/meta.json"))
    meta.pop("index", None)
    dst.write("g/meta.json", json.dumps(meta).encode())
    log(f"copied {len(keys)} WAL keys to moto; indexing there")
    return run_cli(["index", "g", "--store", "s3://bench/filtered", "--s3-endpoint", endpoint])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=6, help="GloVe base + noisy copies (6: 1,988,874 rows)")
    ap.add_argument("--work", default="/tmp/puffer-filtered")
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--cold-queries", type=int, default=5)
    ap.add_argument("--code", action="append", help="checkout(s) to measure (default: this one)")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--lancedb", action="store_true", help="LanceDB IVF_PQ prefiltered, same data, same run")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    ap.add_argument("--queries-file", help=argparse.SUPPRESS)
    ap.add_argument("--truth-file", help=argparse.SUPPRESS)
    ap.add_argument("--n-warm", type=int, default=10, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    load0 = os.getloadavg()
    work = Path(a.work)
    g = Path(a.data) / "glove-100-angular"
    base = pl.read_parquet(g / "base.parquet").select("id", "vector")
    queries = np.load(g / "queries.npy")[: a.queries].astype(np.float32)
    d = work / f"data-{a.copies}"
    n = make_parts(base, a.copies, d)
    parts = sorted(d.glob("part-*.parquet"))
    store = work / f"store-{a.copies}"
    build = None
    if not (store / "g" / "meta.json").exists() or b'"index"' not in (store / "g" / "meta.json").read_bytes():
        shutil.rmtree(store, ignore_errors=True)
        log(f"{n:,} rows: ingest")
        ing = run_cli(["ingest", "g", *map(str, parts), "--vector", "vector", "--store", str(store)])
        log(f"ingest {ing:.1f}s; index")
        build = (ing, run_cli(["index", "g", "--store", str(store)]))
        log(f"index {build[1]:.1f}s")
    tfile = work / f"truth-{a.copies}-{a.queries}.npz"
    if not tfile.exists():
        log("ground truth")
        np.savez(tfile, **{name: ground_truth(parts, queries, w) for name, (_f, w) in FILTERS.items()})
    qfile = work / f"queries-{a.queries}.npy"
    np.save(qfile, queries)
    server, endpoint = (None, None) if a.no_cold else start_moto(process=True)
    results = {}
    try:
        if endpoint:
            log(f"moto build {copy_to_moto(store, endpoint):.0f}s")
        for code in a.code or [str(ROOT)]:
            log(f"measuring {code}")
            args = [sys.executable, str(Path(__file__).resolve()), "--child", "--store", str(store)]
            args += ["--queries-file", str(qfile), "--truth-file", str(tfile), "--n-warm", str(a.warmup)]
            args += ["--cold-queries", str(a.cold_queries)] + (["--endpoint", endpoint] if endpoint else [])
            env = {**os.environ, "PYTHONPATH": code}
            p = subprocess.run(args, env=env, stdout=subprocess.PIPE, check=True, cwd=code)
            results[code] = json.loads(p.stdout.decode().strip().splitlines()[-1])
            results[code]["rev"] = _rev(code)
    finally:
        if server is not None:
            server.stop()
    lres, lbuild = {}, None
    if a.lancedb:
        tbl, lbuild = lance_table(parts, work / f"lancedb-{a.copies}")
        truth = {k: np.asarray(v, np.uint64) for k, v in np.load(tfile).items()}
        lres = lance_measure(tbl, queries, truth, a.warmup)
    load1 = os.getloadavg()
    if not (a.lancedb and a.no_cold):
        publish(render(a, n, build, results, load0, load1), START, END, write=not a.no_write)
    if a.lancedb:
        publish(render_lance(a, n, results, lres, lbuild, load0, load1), LSTART, LEND, write=not a.no_write)


def _rev(code: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", code, "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=True
        ).stdout.strip()[:70]
    except (OSError, subprocess.CalledProcessError):
        return "?"


def render(a, n: int, build, results: dict, load0, load1) -> str:
    cmd = (
        f"python benchmarks/bench_filtered.py --copies {a.copies} --queries {a.queries} --cold-queries {a.cold_queries}"
    )
    cmd += "".join(f" --code {c}" for c in a.code or [])
    L = section_head("Filtered ANN (`benchmarks/bench_filtered.py`)", cmd, ("numpy", "polars", "numkong", "moto"))
    vb = n * 100 * 4
    L += [
        f"- Data: GloVe-100 base + {a.copies - 1} noisy copies (sigma {NOISE}), {n:,} rows; `u` uniform 0..999 per row "
        "(uncorrelated), `c` = percentile of the base vector's first component (correlated). "
        f"{a.queries} held-out queries, truth = exact numpy filtered cosine top-10.",
        f"- Load average (1/5/15 min) at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; at end: "
        f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}.",
    ]
    if build:
        L.append(f"- Built in this run: ingest {build[0]:.0f} s, index {build[1]:.0f} s (local store).")
    L.append(
        "- Code measured (each in its own process, same store): " + "; ".join(f"`{r['rev']}`" for r in results.values())
    )
    L += [
        "",
        "Warm, in-process (eventual, top-10; rows scanned = IVF members scanned + rows scored exactly, median):",
        "",
        "| code | filter | recall@10 | p50 ms | p99 ms | rows scanned | p50 / unfiltered p50 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results.values():
        base = r["warm"]["none"]["p50"]
        for name, w in r["warm"].items():
            L.append(
                f"| {r['rev'][:7]} | {name} | {w['recall']:.3f} | {w['p50']:.2f} | {w['p99']:.2f} | "
                f"{w['scanned']:,.0f} | {w['p50'] / base:.2f} |"
            )
    if any(r["cold"] for r in results.values()):
        L += [
            "",
            f"Cold on moto (own process, loopback), empty cache per query, {a.cold_queries} queries per row; "
            f"vector bytes = {vb / 1e6:,.0f} MB (f32):",
            "",
            "| code | filter | recall@10 | wall ms (median) | round trips (max) | requests (median / max) "
            "| MB read (median / max) | % of vector bytes (median / max) |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results.values():
            for name, c in r["cold"].items():
                mx = c.get("bytes_max", c["bytes"])
                L.append(
                    f"| {r['rev'][:7]} | {name} | {c.get('recall', float('nan')):.3f} | {c['ms']:.0f} | "
                    f"{c['round_trips_max']} | {c['requests']:.0f} / {c['requests_max']} | "
                    f"{c['bytes'] / 1e6:.2f} / {mx / 1e6:.2f} | {c['bytes'] / vb * 100:.2f}% / {mx / vb * 100:.2f}% |"
                )
    return "\n".join(L) + "\n\n"


if __name__ == "__main__":
    main()
