"""Incremental indexing: the cost of indexing new rows, and the drift after many small runs
(issue 24's "Incremental" targets), against a fresh build of the same rows (``nox -s bench``;
not in the test suites).

    python benchmarks/bench_incremental.py [--copies 6] [--runs 100] [--first 0.01] [--step 0.001]
                                           [--routings segment,shared] [--work DIR] [--queries N]
                                           [--rounds R] [--no-doc]

Targets: "+1% rows <= 5% of a full build; after 100 incremental runs of +0.1% each, warm p50
and recall within 10% of a fresh build".

Data: bench_scale's base set (``make_parts``: the 331,479 GloVe-100 rows plus ``copies - 1``
noisy copies with new ids; ``--copies 6`` = 1,988,874 rows = N0).  The rows added later are
further noisy copies of GloVe rows (seed 7, rows in a random order, id = (50 + k) * 10^7 + i
for copy k of row i: never an id of the base set or of another increment).

Per ``--routings`` value (``PUFFER_IVF_ROUTING``: ``segment``, an IVF per segment, the
default; ``shared``, format 3's namespace-wide book), in turn, one process, a store of its own
under ``--work``, everything through the library in-process
(``puffer_cli.connect(dir)``, ``Namespace.write_frame`` in 50k-row entries,
``builder.index_namespace(ns, gc_grace_s=0)``, ``engine.run_query``); a 20k-row namespace is
indexed first, untimed, so the first build's one-time costs (imports, first calls) stay out of T_full:

1. namespace ``inc``: N0 rows written, one full build timed (T_full);
2. +1% of N0 written, indexed, timed (t_1pct; target t_1pct / T_full <= 5%);
3. ``--runs`` times: +0.1% of N0 written (one WAL entry), indexed; per run the report's
   seconds, segments, rows indexed / merged, segments merged and bytes written;
4. namespace ``fresh``: exactly the same final rows written (same frames, same order),
   indexed once (timed);
5. warm queries on both, interleaved over ``--rounds`` rounds (each after 20 warm-up
   queries): the held-out GloVe queries, top-10, default options, eventual consistency;
   recall@10 against exact cosine top-10 over the final rows (numpy, bench_scale's
   ``ground_truth``), p50 over every round's latencies, and rows scanned per query (rows
   scored exactly + IVF list members scanned, summed over segments, and per segment; from
   ``IndexedView.vector_candidates``, as ``performance`` does not report it).
   Target: inc p50 <= 1.1 x fresh p50 and inc recall >= 0.9 x fresh recall.

The 1-minute load average (the machine may be shared) is recorded at each step.  Writes its
section of docs/benchmarks.md (``--no-doc``: print only); the per-run log goes to
``<work>/runs-<copies>-<routing>.json``.
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
from _common import default_data, log, pct, publish, section_head, warm_ann
from bench_scale import NOISE, ground_truth, make_parts

START, END = "<!-- bench_incremental:start -->", "<!-- bench_incremental:end -->"
CHUNK = 50_000
INC_SEED = 7
INC_COPY0 = 50  # increment copies use ids from 50 * 10^7 up (the base set's copies are < 50)


def load() -> float:
    return os.getloadavg()[0]


# ---------------------------------------------------------------- data
def increments(base: pl.DataFrame, n: int) -> pl.DataFrame:
    """``n`` new rows: noisy copies of GloVe rows in a random order, ids disjoint from the base set."""
    x0 = np.asarray(base["vector"].to_numpy(), dtype=np.float32).reshape(base.height, -1)
    ids0 = base["id"].to_numpy().astype(np.uint64)
    rng = np.random.default_rng(INC_SEED)
    k = np.arange(n)
    rows = rng.permutation(base.height)[k % base.height]
    copy = (INC_COPY0 + k // base.height).astype(np.uint64)
    x = x0[rows] + rng.normal(0, NOISE, (n, x0.shape[1])).astype(np.float32)
    return pl.DataFrame(
        {
            "id": ids0[rows] + copy * np.uint64(10**7),
            "vector": pl.Series("vector", x).cast(pl.Array(pl.Float32, x.shape[1])),
        }
    )


def write(ns, df: pl.DataFrame) -> float:
    """Write ``df`` in CHUNK-row WAL entries; seconds."""
    t = time.perf_counter()
    for i in range(0, df.height, CHUNK):
        ns.write_frame(df.slice(i, CHUNK), distance_metric="cosine_distance")
    return time.perf_counter() - t


def index(ns) -> tuple[float, dict]:
    """One ``index_namespace`` run: (wall seconds, its report as a dict)."""
    from puffer_cli.index import builder

    t = time.perf_counter()
    rep = builder.index_namespace(ns, gc_grace_s=0)
    wall = time.perf_counter() - t
    if rep.status not in ("indexed", "up-to-date"):
        raise SystemExit(f"index_namespace({ns.name}): {rep.status}: {rep.message}")
    return wall, rep.as_dict()


# ---------------------------------------------------------------- queries
def measure(ns, queries, truth, per_seg: dict, n_warm: int = 20) -> tuple[float, list[float], list[int]]:
    """(recall@10, latencies ms, rows scanned per query) of top-10 ANN queries after ``n_warm``
    warm-up ones; ``per_seg``: segment rows -> rows scanned there, per query (appended to).
    Rows scanned = rows scored exactly (segments of <= 20,000 rows are searched exactly) +
    IVF list members scanned, as ``IndexedView.vector_candidates`` returns them."""
    from puffer_cli.search.reader import IndexedView

    scanned: list[tuple[int, int]] = []
    real = IndexedView.vector_candidates

    def spy(self, i, *a, **kw):
        out = real(self, i, *a, **kw)
        scanned.append((int(self.gen.segments[i].rows), int(out[1]) + int(out[2])))
        return out

    def count(got: list) -> int:
        for rows_, c in got:
            per_seg.setdefault(rows_, []).append(c)
        return sum(c for _r, c in got)

    IndexedView.vector_candidates = spy
    try:
        return warm_ann(ns, queries, truth, n_warm, scanned, count)
    finally:
        IndexedView.vector_candidates = real


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=6, help="copies of GloVe in the base set (6 = 2M rows, 1 = 331k)")
    ap.add_argument("--runs", type=int, default=100, help="incremental runs after the +1%% one")
    ap.add_argument("--first", type=float, default=0.01, help="fraction of N0 added before the runs")
    ap.add_argument("--step", type=float, default=0.001, help="fraction of N0 added per run")
    ap.add_argument("--work", default="/work/bench/incr")
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved query rounds per namespace")
    ap.add_argument("--routings", default="segment,shared", help="PUFFER_IVF_ROUTING values to run, in turn")
    ap.add_argument("--no-doc", action="store_true", help="print the section only")
    a = ap.parse_args()
    work = Path(a.work)
    g = Path(a.data) / "glove-100-angular"
    glove = pl.read_parquet(g / "base.parquet").select("id", "vector")
    queries = np.load(g / "queries.npy")[: a.queries].astype(np.float32)

    parts = sorted(p for p in (work / f"data-{a.copies}").glob("part-*.parquet"))
    if not parts:
        make_parts(glove, a.copies, work / f"data-{a.copies}")
        parts = sorted((work / f"data-{a.copies}").glob("part-*.parquet"))
    base = pl.concat([pl.read_parquet(p).select("id", "vector") for p in parts])
    n0 = base.height
    first_n, step_n = round(n0 * a.first), round(n0 * a.step)
    extra = increments(glove, first_n + a.runs * step_n)
    ids = extra["id"].to_numpy()
    assert len(np.unique(ids)) == len(ids) and not len(np.intersect1d(ids, base["id"].to_numpy())), "ids overlap"
    inc_file = work / f"increments-{a.copies}.parquet"
    extra.write_parquet(inc_file)
    log(f"N0 {n0:,} rows; +{first_n:,} then {a.runs} x +{step_n:,}")

    truth = ground_truth([*parts, inc_file], queries)
    out = {}
    for routing in a.routings.split(","):
        out[routing] = one_routing(a, routing, work, base, extra, first_n, step_n, queries, truth)
    section = render(a, n0, first_n, step_n, out)
    publish(section, START, END, write=not a.no_doc)


def one_routing(a, routing, work, base, extra, first_n, step_n, queries, truth) -> dict:
    """Steps 1-5 under ``PUFFER_IVF_ROUTING=routing`` in a store of their own."""
    import puffer_cli

    os.environ["PUFFER_IVF_ROUTING"] = routing
    n0 = base.height
    loads = {"start": load()}
    store = work / f"store-{a.copies}-{routing}"
    shutil.rmtree(store, ignore_errors=True)
    db = puffer_cli.connect(str(store))

    # one-time costs of the first build in a process (imports, first calls) kept out of T_full
    warm = db.open_namespace("warmup")
    write(warm, base.slice(0, 20_000))
    index(warm)

    # 1. full build
    ns = db.open_namespace("inc")
    w_full = write(ns, base)
    loads["full build"] = load()
    t_full, rep_full = index(ns)
    log(f"{routing}: inc: wrote {n0:,} in {w_full:.1f}s; full build {t_full:.1f}s, {rep_full['segments']} segments")

    # 2. +1%
    write(ns, extra.slice(0, first_n))
    loads["+1%"] = load()
    t_1, rep_1 = index(ns)
    log(f"{routing}: inc: +{first_n:,} indexed in {t_1:.2f}s = {t_1 / t_full * 100:.1f}% of the full build")

    # 3. the small runs
    runs = []
    for r in range(a.runs):
        df = extra.slice(first_n + r * step_n, step_n)
        ws = write(ns, df)
        secs, rep = index(ns)
        runs.append({"run": r + 1, "rows": df.height, "write_s": ws, "wall_s": secs, "load": load(), **rep})
        if (r + 1) % 10 == 0:
            log(
                f"{routing}: inc: run {r + 1}: {secs:.2f}s, {rep['segments']} segments, merged "
                f"{rep['segments_merged']} ({rep['rows_merged']:,} rows), load {runs[-1]['load']:.2f}"
            )
    loads["after runs"] = load()
    log_file = work / f"runs-{a.copies}-{routing}.json"
    log_file.write_text(json.dumps({"full": rep_full, "first": rep_1, "runs": runs}, indent=1))

    # 4. fresh build of the same rows
    fresh = db.open_namespace("fresh")
    write(fresh, base)
    write(fresh, extra)
    loads["fresh build"] = load()
    t_fresh, rep_fresh = index(fresh)
    log(f"{routing}: fresh: {n0 + extra.height:,} rows indexed in {t_fresh:.1f}s, {rep_fresh['segments']} segments")
    inc_live = (runs[-1] if runs else rep_1)["live_rows"]
    assert rep_fresh["live_rows"] == inc_live == n0 + extra.height, (rep_fresh["live_rows"], inc_live)

    # 5. warm queries, interleaved
    loads["queries"] = load()
    nss = {k: puffer_cli.connect(str(store)).open_namespace(k) for k in ("inc", "fresh")}
    res: dict[str, dict] = {k: {"recall": [], "lat": [], "scanned": [], "p50s": [], "per_seg": {}} for k in nss}
    for rnd in range(a.rounds):
        for k in nss if rnd % 2 == 0 else reversed(list(nss)):
            rec, lat, sc = measure(nss[k], queries, truth, res[k]["per_seg"])
            res[k]["recall"].append(rec)
            res[k]["lat"] += lat
            res[k]["scanned"] += sc
            res[k]["p50s"].append(pct(lat, 50))
            log(f"{routing}: round {rnd + 1} {k}: recall {rec:.3f} p50 {pct(lat, 50):.2f} ms load {load():.2f}")
    loads["end"] = load()
    return {
        "t_full": t_full,
        "rep_full": rep_full,
        "w_full": w_full,
        "t_1": t_1,
        "rep_1": rep_1,
        "runs": runs,
        "t_fresh": t_fresh,
        "rep_fresh": rep_fresh,
        "res": res,
        "loads": loads,
        "log_file": log_file,
    }


ROUTING_NAMES = {
    "segment": "`PUFFER_IVF_ROUTING=segment`: an IVF per segment (format 2 lists; what auto builds up to 2M rows)",
    "shared": "`PUFFER_IVF_ROUTING=shared`: shared routing (format 3; what auto builds past 2M rows)",
}


def render(a, n0, first_n, step_n, out: dict) -> str:
    cmd = (
        f"python benchmarks/bench_incremental.py --copies {a.copies} --runs {a.runs} --routings {a.routings} "
        f"--queries {a.queries} --rounds {a.rounds}"
    )
    n_final = n0 + first_n + a.runs * step_n
    L = section_head(
        "Incremental indexing: cost and drift (`benchmarks/bench_incremental.py`)",
        cmd,
        ("numpy", "polars", "usearch", "numkong"),
    )
    L += [
        f"- Data: bench_scale's set of {n0:,} rows (GloVe-100 + {a.copies - 1} noisy copies, sigma {NOISE}); "
        f"increments: further noisy copies with new ids, +{first_n:,} ({a.first:.1%}) then {a.runs} runs of "
        f"+{step_n:,} ({a.step:.1%}) = {n_final:,} rows; {a.queries} held-out queries, exact numpy cosine top-10 "
        "over the final rows.",
        "- One process, local store, in-process `Namespace.write_frame` (50k-row entries), "
        "`builder.index_namespace(ns, gc_grace_s=0)` (wall time; a 20k-row namespace indexed first, untimed), "
        "`engine.run_query` (eventual, top-10, the routing's default probe and fill). Targets (issue 24): "
        '"+1% rows <= 5% of a full build; after 100 incremental runs of +0.1% each, warm p50 and recall within '
        '10% of a fresh build" (read here as inc p50 <= 1.1 x fresh p50, inc recall >= 0.9 x fresh recall).',
        "",
    ]
    for routing, o in out.items():
        L += render_routing(a, routing, n0, first_n, step_n, n_final, **o)
    return "\n".join(L) + "\n"


def render_routing(
    a,
    routing,
    n0,
    first_n,
    step_n,
    n_final,
    t_full,
    rep_full,
    w_full,
    t_1,
    rep_1,
    runs,
    t_fresh,
    rep_fresh,
    res,
    loads,
    log_file,
) -> list[str]:
    L = [
        f"### {ROUTING_NAMES.get(routing, routing)}",
        "",
        "Load average (1 min): " + ", ".join(f"{k} {v:.2f}" for k, v in loads.items()) + ".",
        "",
    ]
    ratio1 = t_1 / t_full
    L += [
        "| step | rows written | index s | % of full build | segments after | segments merged | rows merged |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| full build, `inc` | {n0:,} | {t_full:.1f} | 100% | {rep_full['segments']} | "
        f"{rep_full['segments_merged']} | {rep_full['rows_merged']:,} |",
        f"| +{a.first:.0%} | {first_n:,} | {t_1:.2f} | {ratio1:.1%} | {rep_1['segments']} | "
        f"{rep_1['segments_merged']} | {rep_1['rows_merged']:,} |",
    ]
    if runs:
        secs = [r["wall_s"] for r in runs]
        merged = [r["rows_merged"] for r in runs]
        L.append(
            f"| {len(runs)} runs of +{a.step:.1%} (min / median / max) | {step_n:,} each | "
            f"{min(secs):.2f} / {np.median(secs):.2f} / {max(secs):.2f} | "
            f"{min(secs) / t_full:.1%} / {np.median(secs) / t_full:.1%} / {max(secs) / t_full:.1%} | "
            f"{min(r['segments'] for r in runs)} / {int(np.median([r['segments'] for r in runs]))} / "
            f"{max(r['segments'] for r in runs)} | {sum(r['segments_merged'] for r in runs)} in all | "
            f"{min(merged):,} / {int(np.median(merged)):,} / {max(merged):,} |"
        )
    L.append(
        f"| fresh build, `fresh` | {n_final:,} | {t_fresh:.1f} | {t_fresh / t_full:.0%} | {rep_fresh['segments']} | "
        f"{rep_fresh['segments_merged']} | {rep_fresh['rows_merged']:,} |"
    )
    if runs:
        total = sum(r["wall_s"] for r in runs)
        L += [
            "",
            f"The {len(runs)} runs took {total:.1f} s in all ({total / t_full:.0%} of one full build; writes "
            f"{sum(r['write_s'] for r in runs):.1f} s more), wrote {sum(r['bytes_written'] for r in runs) / 1e6:,.0f} MB "
            f"(the full build: {rep_full['bytes_written'] / 1e6:,.0f} MB). Wall time of the full build's writes: {w_full:.1f} s.",
            "",
            f"Per-run log: `{log_file}`. Segments after each run: " + " ".join(str(r["segments"]) for r in runs) + ".",
            "",
            "Runs that merged (run: segments merged, rows merged, seconds): "
            + (
                "; ".join(
                    f"{r['run']}: {r['segments_merged']}, {r['rows_merged']:,}, {r['wall_s']:.2f}"
                    for r in runs
                    if r["segments_merged"]
                )
                or "none"
            )
            + ".",
        ]
    L += [
        "",
        f"Warm queries after the runs, {a.rounds} interleaved rounds of {a.queries} queries per namespace "
        "(p50 over all rounds; per-round p50s in brackets):",
        "",
        "| namespace | segments | recall@10 | p50 ms | rows scanned/query (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    seg = {"inc": (runs[-1] if runs else rep_1)["segments"], "fresh": rep_fresh["segments"]}
    stat = {}
    for k, r in res.items():
        rec, p50, sc = float(np.mean(r["recall"])), pct(r["lat"], 50), float(np.median(r["scanned"]))
        stat[k] = (rec, p50, sc)
        rounds = ", ".join(f"{x:.2f}" for x in r["p50s"])
        L.append(f"| `{k}` | {seg[k]} | {rec:.3f} | {p50:.2f} ({rounds}) | {sc:,.0f} |")
    (ri, pi, si), (rf, pf, sf) = stat["inc"], stat["fresh"]
    L += [""]
    for k, r in res.items():
        L.append(
            f"Rows scanned per segment, `{k}` (segment rows: median scanned per query, share): "
            + "; ".join(
                f"{n:,}: {np.median(v):,.0f}, {np.median(v) / n:.0%}"
                for n, v in sorted(r["per_seg"].items(), reverse=True)
            )
            + "."
        )
    L += [
        "",
        f"`inc` / `fresh`: p50 x{pi / pf:.2f} (per round: "
        + ", ".join(f"x{x / y:.2f}" for x, y in zip(res["inc"]["p50s"], res["fresh"]["p50s"], strict=True))
        + f"), recall x{ri / rf:.3f} ({ri - rf:+.3f}), rows scanned x{si / sf:.2f}.",
        "",
        "Targets (issue 24, computed from the figures above):",
        "",
        f"- +1% rows <= 5% of a full build: {ratio1:.1%} of the build of N0 -> {'met' if ratio1 <= 0.05 else 'missed'} "
        f"({t_1 / t_fresh:.1%} of the fresh build of all {n_final:,} rows).",
        f"- after {len(runs)} runs of +{a.step:.1%}, warm p50 within 10% of a fresh build: x{pi / pf:.2f} -> "
        f"{'met' if pi <= 1.1 * pf else 'missed'}"
        + ("" if len(runs) == 100 else f" (only {len(runs)} runs, not the 100 of the target)")
        + ".",
        f"- recall within 10% of a fresh build: x{ri / rf:.3f} -> {'met' if ri >= 0.9 * rf else 'missed'}.",
        "",
    ]
    return L


if __name__ == "__main__":
    main()
