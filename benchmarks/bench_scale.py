"""Scale benchmark of the IVF-SQ8 index (issue 11): build cost, memory, recall, latency and
the cold path as the namespace grows (``nox -s bench``; not in the test suites).

    python benchmarks/bench_scale.py [--sizes 331k,2M,10M] [--work DIR] [--queries N]
                                     [--no-lancedb] [--no-cold] [--no-write]

Data: GloVe-100 (``../shared/data/prepare.py``): the 331,479 base rows, plus noisy copies
with new ids (copy j of row i: id = j * 10^7 + i, vector = base + N(0, 0.05^2) per
component) to 1,988,874 (2M) and 9,944,370 (10M) rows, written as parquet parts of
<= 500k rows, chunk by chunk.  Queries: the held-out GloVe queries; ground truth = exact
cosine top-10 by numpy over every row of that size (a running top-10 over the parts).

Per size, in subprocesses (peak RSS = GNU time's ``%M`` of the child, see :func:`run_cli`):
``puffer ingest`` and ``puffer index`` on a local store; then warm in-process queries
(``engine.run_query``, eventual consistency) at several probes.  On the 2M set also:
filters keeping 10% and 1% of the rows, 1% new rows indexed incrementally, a cold query
against moto S3 with an empty cache (the WAL copied into the bucket and indexed there, so
the files are laid out as on any object store), and LanceDB IVF_PQ side by side.
Writes its section of docs/benchmarks.md and two PNGs under docs/.
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
from puffer_cli.index import segment

from _common import ROOT, default_data, log, pct, publish, section_head, start_moto

sys.path.insert(0, str(ROOT))
START, END = "<!-- bench_scale:start -->", "<!-- bench_scale:end -->"
SIZES = {"331k": 1, "2M": 6, "10M": 30}  # copies of the base set (the first is the base itself)
NOISE = 0.05
PART_ROWS = 500_000
PROBES = (0.02, 0.035, 0.05, 0.08)  # 0.02 is the default; each with the default floor (16,384 rows) and fill (0.75)


# ---------------------------------------------------------------- data
def _buckets(ids: np.ndarray, _x0: np.ndarray) -> dict:
    return {"bucket10": (ids % np.uint64(10)).astype(np.int64), "bucket100": (ids % np.uint64(100)).astype(np.int64)}


def make_parts(base: pl.DataFrame, copies: int, out: Path, columns=None) -> int:
    """Parquet parts of base + (copies - 1) noisy copies; returns rows written.  ``columns(ids,
    x0)``: the attribute columns of one copy (default: ``bucket10`` / ``bucket100`` of the id);
    called once per copy, in order."""
    out.mkdir(parents=True, exist_ok=True)
    if list(out.glob("part-*.parquet")):
        return sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in out.glob("part-*.parquet"))
    x0 = np.asarray(base["vector"].to_numpy(), dtype=np.float32).reshape(base.height, -1)
    ids0 = base["id"].to_numpy().astype(np.uint64)
    rng = np.random.default_rng(0)
    n, k = 0, 0
    for j in range(copies):
        x = x0 if j == 0 else x0 + rng.normal(0, NOISE, x0.shape).astype(np.float32)
        ids = ids0 + np.uint64(j * 10**7)
        cols = (columns or _buckets)(ids, x0)
        for a in range(0, len(x), PART_ROWS):
            sl = slice(a, a + PART_ROWS)
            df = pl.DataFrame(
                {
                    "id": ids[sl],
                    "vector": pl.Series("vector", x[sl]).cast(pl.Array(pl.Float32, x.shape[1])),
                    **{name: v[sl] for name, v in cols.items()},
                }
            )
            df.write_parquet(out / f"part-{k:04d}.parquet")
            k += 1
            n += df.height
    return n


def ground_truth(parts: list[Path], queries: np.ndarray, k: int = 10, where=None) -> np.ndarray:
    """Exact cosine top-k ids per query over every row of ``parts`` (optionally filtered)."""
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
        x = x / np.linalg.norm(x, axis=1, keepdims=True)  # to_numpy() may be a read-only view
        d = 1 - qn @ x.T
        ids = df["id"].to_numpy().astype(np.uint64)
        cat_d = np.concatenate([best_d, d], axis=1)
        cat_i = np.concatenate([best_i, np.broadcast_to(ids, d.shape)], axis=1)
        sel = np.argpartition(cat_d, k - 1, axis=1)[:, :k]
        best_d = np.take_along_axis(cat_d, sel, 1)
        best_i = np.take_along_axis(cat_i, sel, 1)
    return best_i


# ---------------------------------------------------------------- subprocess runs
GNU_TIME = Path("/usr/bin/time")


def run_cli(args: list[str], env=None) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, stdout) of ``python -m puffer_cli.cli.main *args``.  The peak
    RSS is GNU time's (``%M``) when ``/usr/bin/time`` is installed: ``os.wait4``'s ru_maxrss
    of a child this process starts also counts this process's own RSS at the fork (Linux
    keeps the high-water mark of the memory the child leaves at exec), so a benchmark holding
    gigabytes of data would report its own size as the child's: without GNU time, NaN (not
    measured)."""
    with tempfile.NamedTemporaryFile(suffix=".rss") as rss_f:
        cmd = [sys.executable, "-m", "puffer_cli.cli.main", *args]
        gnu = GNU_TIME.exists()
        if gnu:
            cmd = [str(GNU_TIME), "-f", "%M", "-o", rss_f.name, *cmd]
        t0 = time.perf_counter()
        p = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}, cwd=str(ROOT)
        )
        out_b, err_b = p.communicate()
        secs = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"puffer {' '.join(args)} failed: {err_b.decode()[-2000:]}")
        text = Path(rss_f.name).read_text().split() if gnu else []
        rss = int(text[-1]) / 1024 if text else float("nan")
    return secs, rss, out_b.decode()


def warm_queries(ns, queries, truth, probe, filt=None, n_warm=20) -> tuple[float, float, float]:
    from puffer_cli.index import ivf
    from puffer_cli.search import engine

    lat, hits = [], 0
    with ivf.override(probe=probe):
        for j, q in enumerate(np.concatenate([queries[:n_warm], queries])):
            body = {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 10, "consistency": {"level": "eventual"}}
            if filt is not None:
                body["filters"] = filt
            t = time.perf_counter()
            rows = engine.run_query(ns, body)["rows"]
            el = time.perf_counter() - t
            if j >= n_warm:
                lat.append(el * 1000)
                hits += len({r["id"] for r in rows} & set(truth[j - n_warm].tolist()))
    return hits / (10 * len(queries)), pct(lat, 50), pct(lat, 99)


# ---------------------------------------------------------------- cold path
def cold(store_dir: Path, ns_name: str, queries, n=10, process: bool = True) -> dict:
    """Copy the namespace's WAL into a moto bucket, index it there, then query it cold.
    ``process``: moto in a child process (its own interpreter, as any S3 server), else in
    this one (its request handling then shares the GIL with the query being timed)."""
    import puffer_cli
    from puffer_cli.index import manifest
    from puffer_cli.search import engine
    from puffer_cli.store import filecache as cache

    server, endpoint = start_moto(process=process)
    try:
        src = puffer_cli.connect(str(store_dir)).store
        db = puffer_cli.connect("s3://bench/scale", s3_endpoint=endpoint)
        keys = [k for k in src.list(f"{ns_name}/") if "/index/" not in k and not k.endswith("meta.json")]
        for k in keys:
            db.store.write(k, src.read(k))
        meta = json.loads(src.read(f"{ns_name}/meta.json"))
        meta.pop("index", None)
        db.store.write(f"{ns_name}/meta.json", json.dumps(meta).encode())
        log(f"cold: copied {len(keys)} WAL keys to moto; indexing there")
        t0 = time.perf_counter()
        secs, rss, _ = run_cli(["index", ns_name, "--store", "s3://bench/scale", "--s3-endpoint", endpoint])
        log(f"cold: S3 build {secs:.1f}s")
        ns = db.open_namespace(ns_name)
        out = []
        for level in ("eventual", "strong"):
            for q in queries[:n]:
                c = cache.configure(tempfile.mkdtemp(prefix="puffer-cold-"))
                c.background_fetch = False
                segment.GENS.clear()
                manifest.MANIFESTS.clear()
                ns = db.open_namespace(ns_name)
                t = time.perf_counter()
                r = engine.run_query(
                    ns, {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 10, "consistency": {"level": level}}
                )
                ms = (time.perf_counter() - t) * 1000
                p = r["performance"]
                out.append(
                    (level, ms, p["object_store_round_trips"], p["object_store_requests"], p["object_store_bytes_read"])
                )
        return {"rows": out, "s3_build_s": secs, "s3_build_rss": rss, "wall": time.perf_counter() - t0}
    finally:
        server.stop()


# ---------------------------------------------------------------- LanceDB
LANCE_PROBES = ((10, 10), (20, 10), (40, 10), (80, 10))  # (nprobes, refine_factor) measured


def lance(parts: list[Path], queries, truth, work: Path, hnsw: bool = False, probes=LANCE_PROBES) -> list[tuple]:
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(str(work / "lance"))
    tbl = None
    for p in parts:
        df = pl.read_parquet(p).select("id", "vector")
        at = df.to_arrow()
        at = at.set_column(
            1,
            "vector",
            pa.FixedSizeListArray.from_arrays(
                pa.array(np.asarray(df["vector"].to_numpy(), dtype=np.float32).reshape(-1)), 100
            ),
        )
        if tbl is None:
            tbl = db.create_table("t", at, mode="overwrite")
        else:
            tbl.add(at)
    n = tbl.count_rows()
    parts_n = int(np.sqrt(n))
    t0 = time.perf_counter()
    tbl.create_index(
        metric="cosine", index_type="IVF_PQ", num_partitions=parts_n, num_sub_vectors=25, vector_column_name="vector"
    )
    build = time.perf_counter() - t0
    out = []
    for nprobes, refine in probes:
        log(f"lancedb nprobes {nprobes}")
        lat, hits = [], 0
        for j, q in enumerate(np.concatenate([queries[:10], queries])):
            t = time.perf_counter()
            res = (
                tbl.search(q).metric("cosine").nprobes(nprobes).refine_factor(refine).limit(10).select(["id"]).to_list()
            )
            el = (time.perf_counter() - t) * 1000
            if j >= 10:
                lat.append(el)
                hits += len({r["id"] for r in res} & set(truth[j - 10].tolist()))
        out.append(
            (
                f"IVF_PQ {parts_n} partitions, 25 sub-vectors, nprobes {nprobes}, refine x{refine}",
                build,
                hits / (10 * len(queries)),
                pct(lat, 50),
                pct(lat, 99),
            )
        )
        build = None
    if hnsw:
        out += _lance_hnsw_sq(tbl, queries, truth, n)
    return out


def _lance_hnsw_sq(tbl, queries, truth, n: int) -> list[tuple]:
    """LanceDB IVF_HNSW_SQ (HNSW graphs inside IVF partitions, int8 vectors) on the same table."""
    parts_n = max(1, n // 250_000)
    t0 = time.perf_counter()
    tbl.create_index(
        metric="cosine", index_type="IVF_HNSW_SQ", num_partitions=parts_n, vector_column_name="vector", replace=True
    )
    build: float | None = time.perf_counter() - t0
    out = []
    for nprobes, ef in ((1, 64), (2, 64), (2, 128), (4, 128)):
        log(f"lancedb IVF_HNSW_SQ nprobes {nprobes} ef {ef}")
        lat, hits = [], 0
        for j, q in enumerate(np.concatenate([queries[:10], queries])):
            t = time.perf_counter()
            res = tbl.search(q).metric("cosine").nprobes(nprobes).ef(ef).limit(10).select(["id"]).to_list()
            el = (time.perf_counter() - t) * 1000
            if j >= 10:
                lat.append(el)
                hits += len({r["id"] for r in res} & set(truth[j - 10].tolist()))
        name = f"IVF_HNSW_SQ {parts_n} partitions, nprobes {nprobes}, ef {ef}"
        out.append((name, build, hits / (10 * len(queries)), pct(lat, 50), pct(lat, 99)))
        build = None
    return out


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="331k,2M")
    ap.add_argument("--work", default="/tmp/puffer-scale")
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--no-lancedb", action="store_true")
    # LanceDB IVF_HNSW_SQ on the 2M set: its build had not finished after 32 minutes here
    # (2 cores, load ~4; 2026-12-02), so it is opt-in
    ap.add_argument("--lancedb-hnsw", action="store_true")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--cold-queries", type=int, default=50, help="cold queries per consistency level and moto mode")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    work = Path(a.work)
    g = Path(a.data) / "glove-100-angular"
    base = pl.read_parquet(g / "base.parquet").select("id", "vector")
    queries = np.load(g / "queries.npy")[: a.queries].astype(np.float32)
    import puffer_cli

    results, warm, extra = [], [], {}
    for size in a.sizes.split(","):
        d = work / f"data-{size}"
        n = make_parts(base, SIZES[size], d)
        parts = sorted(d.glob("part-*.parquet"))
        store = work / f"store-{size}"
        shutil.rmtree(store, ignore_errors=True)
        log(f"{size}: {n:,} rows in {len(parts)} parts; ingest")
        ing_s, ing_rss, _ = run_cli(
            ["ingest", "g", *map(str, parts), "--vector", "vector", "--store", str(store), "--json"]
        )
        log(f"{size}: ingest {ing_s:.1f}s; index")
        idx_s, idx_rss, out = run_cli(["index", "g", "--store", str(store), "--json"])
        log(f"{size}: index {idx_s:.1f}s rss {idx_rss:.0f} MiB")
        results.append((size, n, ing_s, ing_rss, idx_s, idx_rss))
        truth = ground_truth(parts, queries)
        ns = puffer_cli.connect(str(store)).open_namespace("g")
        for probe in PROBES:
            r, p50, p99 = warm_queries(ns, queries, truth, probe)
            warm.append((size, n, "none", probe, r, p50, p99))
            log(f"{size}: probe {probe}: recall {r:.3f} p50 {p50:.2f} ms")
        if size == "2M":
            for name, filt, where in (
                ("10%", ["bucket10", "Eq", 3], pl.col("bucket10") == 3),
                ("1%", ["bucket100", "Eq", 7], pl.col("bucket100") == 7),
            ):
                t_f = ground_truth(parts, queries, where=where)
                r, p50, p99 = warm_queries(ns, queries, t_f, None, filt)
                warm.append((size, n, name, "default", r, p50, p99))
                log(f"{size}: filter {name}: recall {r:.3f} p50 {p50:.2f}")
            # incremental: 1% new rows
            inc = work / "inc-2M"
            inc.mkdir(exist_ok=True)
            extra_n = n // 100
            x0 = np.asarray(base["vector"].to_numpy(), dtype=np.float32).reshape(base.height, -1)[:extra_n]
            x = x0 + np.random.default_rng(1).normal(0, NOISE, x0.shape).astype(np.float32)
            ids = base["id"].to_numpy().astype(np.uint64)[:extra_n] + np.uint64(99 * 10**7)
            pl.DataFrame(
                {
                    "id": ids,
                    "vector": pl.Series(x).cast(pl.Array(pl.Float32, 100)),
                    "bucket10": (ids % np.uint64(10)).astype(np.int64),
                    "bucket100": (ids % np.uint64(100)).astype(np.int64),
                }
            ).write_parquet(inc / "part-new.parquet")
            run_cli(["ingest", "g", str(inc / "part-new.parquet"), "--vector", "vector", "--store", str(store)])
            inc_s, inc_rss, _ = run_cli(["index", "g", "--store", str(store), "--json"])
            extra["incremental"] = (extra_n, inc_s, inc_rss, idx_s)
            log(f"2M: incremental {extra_n:,} rows in {inc_s:.1f}s ({inc_s / idx_s * 100:.1f}% of the full build)")
            if not a.no_cold:
                extra["cold"] = {
                    m: cold(store, "g", queries, n=a.cold_queries, process=m == "process")
                    for m in ("process", "thread")
                }
                extra["cold_n"] = n + extra_n
                for m, c in extra["cold"].items():
                    for row in c["rows"]:
                        log(
                            f"cold ({m}) {row[0]}: {row[1]:.0f} ms, {row[2]} round trips, {row[3]} requests, {row[4] / 1e6:.2f} MB"
                        )
            if not a.no_lancedb:
                try:
                    extra["lance"] = lance(parts, queries, truth, work, a.lancedb_hnsw)
                except Exception as e:  # noqa: BLE001 - report it, keep puffer's numbers
                    log(f"lancedb failed: {type(e).__name__}: {e}")
                    extra["lance_error"] = f"{type(e).__name__}: {e}"
    load1 = os.getloadavg()[0]
    section = render(a, results, warm, extra, load0, load1)
    plots(results, warm, extra)
    publish(section, START, END, write=not a.no_write)


def render(a, results, warm, extra, load0, load1) -> str:
    cmd = f"python benchmarks/bench_scale.py --sizes {a.sizes} --queries {a.queries} --cold-queries {a.cold_queries}"
    L = section_head(
        "Scale: IVF-SQ8 index (`benchmarks/bench_scale.py`)",
        cmd,
        ("numpy", "polars", "usearch", "numkong", "lancedb", "moto"),
    )
    L += [
        f"- Data: GloVe-100 base (331,479 x 100) + noisy copies (sigma {NOISE} per component, new ids); {a.queries} held-out queries; ground truth: exact numpy cosine top-10 over all rows of the size.",
        f"- Load average (1 min) at start / end: {load0:.2f} / {load1:.2f}. Ingest and index run as `puffer` subprocesses on a local store; peak RSS = the child's ru_maxrss.",
        "",
        "| rows | ingest s | ingest rows/s | ingest RSS MiB | index s | index rows/s | index RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _size, n, ing_s, ing_rss, idx_s, idx_rss in results:
        L.append(
            f"| {n:,} | {ing_s:.1f} | {n / ing_s:,.0f} | {ing_rss:,.0f} | {idx_s:.1f} | {n / idx_s:,.0f} | {idx_rss:,.0f} |"
        )
    L += [
        "",
        "Warm queries, in-process (`engine.run_query`, top-10, eventual consistency), per probe (fraction of each segment's rows scanned):",
        "",
        "| rows | filter | probe | recall@10 | p50 ms | p99 ms |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for _size, n, f, probe, r, p50, p99 in warm:
        L.append(f"| {n:,} | {f} | {probe} | {r:.3f} | {p50:.2f} | {p99:.2f} |")
    if "incremental" in extra:
        m, s, rss, full = extra["incremental"]
        L += [
            "",
            f"Incremental: {m:,} new rows (1%) ingested into the 2M namespace, then `puffer index`: {s:.1f} s = {s / full * 100:.1f}% of the full build ({full:.1f} s); RSS {rss:,.0f} MiB.",
        ]
    if "cold" in extra:
        cs = extra["cold"]
        vb = extra["cold_n"] * 100 * 4
        builds = ", ".join(f"{c['s3_build_s']:.1f} s" for c in cs.values())
        L += [
            "",
            f"Cold queries against moto S3 on loopback, empty cache per query (fresh cache dir, in-process caches cleared), 2M namespace + 1% ({extra['cold_n']:,} rows; vector bytes {vb / 1e6:,.0f} MB), built on S3 by `puffer index` ({builds}). moto runs in a child process (`process`: its own interpreter, as a real S3 server) and, for reference, in the measuring process (`thread`: its request handling then waits on the same GIL as the query):",
            "",
            "| moto | consistency | queries | p50 ms | max round trips | requests (median) | bytes read (median) | % of vector bytes |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, c in cs.items():
            for level in ("eventual", "strong"):
                rows = [r for r in c["rows"] if r[0] == level]
                if rows:
                    b = float(np.median([r[4] for r in rows]))
                    L.append(
                        f"| {mode} | {level} | {len(rows)} | {pct([r[1] for r in rows], 50):.0f} | {max(r[2] for r in rows)} | {np.median([r[3] for r in rows]):.0f} | {b / 1e6:.2f} MB | {b / vb * 100:.2f}% |"
                    )
    if "lance" in extra:
        L += [
            "",
            "LanceDB on the 2M set, same queries and truth (local table; IVF_PQ: `tbl.search(q).metric('cosine').nprobes(n).refine_factor(r)`, IVF_HNSW_SQ: `.nprobes(n).ef(ef)`):",
            "",
            "| index | build s | recall@10 | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, build, r, p50, p99 in extra["lance"]:
            L.append(f"| {name} | {'' if build is None else f'{build:.1f}'} | {r:.3f} | {p50:.2f} | {p99:.2f} |")
    if "lance" in extra and not a.lancedb_hnsw:
        L += [
            "",
            "LanceDB IVF_HNSW_SQ (`--lancedb-hnsw`) was not run: on 2026-12-02 its build on this 2M table "
            "(7 partitions) had not finished after 32 minutes on this machine (2 cores, load average ~4).",
        ]
    if "lance_error" in extra:
        L += ["", f"LanceDB on the 2M set failed in this run: {extra['lance_error']}"]
    L += ["", "![recall vs latency](bench-scale-recall.png) ![build time vs rows](bench-scale-build.png)", ""]
    return "\n".join(L) + "\n"


def plots(results, warm, extra) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plots")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for size in sorted({w[0] for w in warm}):
        pts = [(w[5], w[4]) for w in warm if w[0] == size and w[2] == "none"]
        ax.plot(*zip(*pts), marker="o", label=f"puffer IVF-SQ8, {size}")
    if "lance" in extra:
        ax.plot([x[3] for x in extra["lance"]], [x[2] for x in extra["lance"]], marker="s", label="LanceDB IVF_PQ, 2M")
    _save(fig, ax, "p50 latency, ms (in-process)", "recall@10", "bench-scale-recall.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r[1] for r in results], [r[4] for r in results], marker="o", label="puffer index (full build)")
    _save(fig, ax, "rows", "seconds", "bench-scale-build.png")


def _save(fig, ax, xlabel: str, ylabel: str, name: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / name, dpi=110)


if __name__ == "__main__":
    main()
