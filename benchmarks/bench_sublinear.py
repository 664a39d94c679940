"""How a warm ANN query's cost grows with the namespace (issue 24's sublinearity table and plot).

    python benchmarks/bench_sublinear.py --store 2M=STORE:TRUTH --store 10M=STORE:TRUTH
                                         [--store 30M=STORE:TRUTH ...] [--queries 200] [--rounds 3]
                                         [--warmup 40] [--no-write] [--lancedb 2M,10M [--work DIR]]

Each ``--store`` is an indexed local store (namespace ``g``) and the exact top-10 ids of the
first ``--queries`` held-out GloVe queries (``queries.npy`` of the benchmark data) over its rows:
bench_routing's stores (``--routings shared``) and the mixed 30M store of docs/benchmarks.md.
Every store is measured in this process, in turn, ``--rounds`` times (latencies comparable
across sizes in one run; the median of the rounds' p50s is reported): recall@10, p50 / p90 ms,
and rows scanned per query (IVF members scored, in segments' lists and in a list-major stack;
median), then the growth exponent between sizes, ``log(cost ratio) / log(rows ratio)`` (1 =
linear), and a log-log plot ``docs/bench-sublinear.png`` of p50 and rows scanned against rows.
A label ``NAME@P`` measures its store with the ``ann`` option ``prune`` = P (``ivf.override``;
e.g. ``10M@0``: the fixed probe), the same store may appear under two labels.
``--lancedb LABELS``: then, in this run, LanceDB IVF_PQ (sqrt(rows) partitions, 25 sub-vectors,
refine x10, ``bench_scale.lance``) on those stores' rows (``puffer export`` to parquet under
``--work``; the whole set passes through memory: 10M takes ~12 GB), the same queries and truth.
IVF_RQ is not measured: LanceDB takes it only for a dimension count divisible by 8 (GloVe: 100).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, default_data, log, pct, publish, section_head, warm_ann

START, END = "<!-- bench_sublinear:start -->", "<!-- bench_sublinear:end -->"


def _spied():
    """A list each IVF and stack search of this process appends its members scanned to."""
    from puffer_cli.index import ivf, stack

    scanned: list[int] = []
    real_ivf, real_stack = ivf.search, stack.Stack.search

    def on_ivf(*a, **kw):
        out = real_ivf(*a, **kw)
        scanned.append(int(out[2]))
        return out

    def on_stack(self, *a, **kw):
        out = real_stack(self, *a, **kw)
        scanned.append(int(out[2]))
        return out

    ivf.search = on_ivf
    stack.Stack.search = on_stack
    return scanned


def _routing(ns) -> str:
    """The routing of the namespace's index: shared (a book: format 3; + stack if written) or segment."""
    from puffer_cli.index import builder

    man = builder.load_manifest(ns.store, ns.read_meta()[0]["index"]["manifest"])
    if not man.get("ann_books"):
        return "segment"
    return "shared + stack" if man.get("ann_stacks") else "shared"


def _rows(ns) -> int:
    from puffer_cli.search import engine

    r = engine.run_query(ns, {"aggregate_by": {"n": ["Count"]}, "consistency": {"level": "eventual"}})
    return int(r["aggregations"]["n"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", action="append", required=True, help="LABEL=STORE_DIR:TRUTH.npy")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--lancedb", default="", help="labels whose rows LanceDB IVF_PQ indexes too, e.g. 2M,10M")
    ap.add_argument("--work", default="/tmp/puffer-sublinear", help="--lancedb's exported rows and tables")
    a = ap.parse_args()
    import puffer_cli
    from puffer_cli.index import ivf

    queries = np.load(Path(a.data) / "glove-100-angular" / "queries.npy")[: a.queries].astype(np.float32)
    sets = []
    routing: dict[str, str] = {}
    for spec in a.store:
        label, rest = spec.split("=", 1)
        store, truth = rest.rsplit(":", 1)
        ns = puffer_cli.connect(store).open_namespace("g")
        prune = float(label.split("@", 1)[1]) if "@" in label else None
        sets.append((label, store, ns, np.load(truth)[: a.queries], _rows(ns), prune))
        routing[label] = _routing(ns)
        log(f"{label}: {sets[-1][4]:,} rows in {store} ({routing[label]})")
    scanned = _spied()
    load0 = os.getloadavg()
    got: dict[str, list] = {s[0]: [] for s in sets}
    for rnd in range(a.rounds):
        for label, _store, ns, truth, _n, prune in sets:
            with ivf.override(prune=prune):
                recall, lat, per_q = warm_ann(ns, queries, truth, a.warmup, scanned, sum)
            got[label].append((recall, pct(lat, 50), pct(lat, 90), float(np.median(per_q)), os.getloadavg()[0]))
            log(f"round {rnd} {label}: recall {recall:.4f} p50 {pct(lat, 50):.2f} ms rows {np.median(per_q):,.0f}")
    load1 = os.getloadavg()
    rows_of = {s[0]: s[4] for s in sets}
    res = {
        lb: {
            "recall": float(np.median([g[0] for g in v])),
            "p50": float(np.median([g[1] for g in v])),
            "p50s": [g[1] for g in v],
            "p90": float(np.median([g[2] for g in v])),
            "scanned": float(np.median([g[3] for g in v])),
            "load": (min(g[4] for g in v), max(g[4] for g in v)),
        }
        for lb, v in got.items()
    }
    cmd = "python benchmarks/bench_sublinear.py " + " ".join(f"--store {s.split('=', 1)[0]}=..." for s in a.store)
    cmd += f" --queries {a.queries} --rounds {a.rounds}"
    L = section_head(
        "Warm ANN cost against namespace size (`benchmarks/bench_sublinear.py`)", cmd, ("numpy", "numkong")
    )
    L += [
        f"- Stores: {', '.join(f'{lb} = `{st}`' for lb, st, _ns, _t, _n, _p in sets)}",
        f"- {a.queries} held-out GloVe queries after {a.warmup} warm-up, top 10, eventual, the stores' defaults; "
        f"{a.rounds} rounds, every store in turn each round (median of the rounds' p50s; each round's in brackets).",
        f"- Load average (1 min) {load0[0]:.2f} at the start, {load1[0]:.2f} at the end.",
        "",
        "| set | rows | routing | recall@10 | p50 ms (rounds) | p90 ms | rows scanned / query (median) | of the rows | load |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for lb, r in res.items():
        n = rows_of[lb]
        rounds = " / ".join(f"{x:.2f}" for x in r["p50s"])
        L.append(
            f"| {lb} | {n:,} | {routing[lb]} | {r['recall']:.4f} | {r['p50']:.2f} ({rounds}) | {r['p90']:.2f} | {r['scanned']:,.0f} | "
            f"{100 * r['scanned'] / n:.2f}% | {r['load'][0]:.1f}-{r['load'][1]:.1f} |"
        )
    labels = list(res)
    if len(labels) > 1:
        L += ["", "Growth between sizes (exponent = log(cost ratio) / log(rows ratio); 1 = linear, 0.5 = sqrt):", ""]
        L += ["| from | to | rows x | p50 x | p50 exponent | rows scanned x | rows scanned exponent |"]
        L += ["|---|---|---:|---:|---:|---:|---:|"]
        for x, y in zip(labels[:-1], labels[1:]):
            nx, ny = rows_of[x], rows_of[y]
            if nx == ny:  # the same store under two labels (another prune): no growth to show
                continue
            px, py, sx, sy = res[x]["p50"], res[y]["p50"], res[x]["scanned"], res[y]["scanned"]
            lr = math.log(ny / nx)
            L.append(
                f"| {x} | {y} | {ny / nx:.2f} | {py / px:.2f} | {math.log(py / px) / lr:.2f} | "
                f"{sy / sx:.2f} | {math.log(sy / sx) / lr:.2f} |"
            )
    if not a.no_write and _plot(res, rows_of):  # (--no-write leaves the docs, the plot too)
        L += ["", "![p50 and rows scanned against rows, log-log](bench-sublinear.png)"]
    if a.lancedb:
        L += ["", *_lance_rows([s for s in sets if s[0] in a.lancedb.split(",")], queries, Path(a.work))]
    L.append("")
    publish("\n".join(L) + "\n", START, END, write=not a.no_write)


def _lance_rows(sets: list, queries: np.ndarray, work: Path) -> list[str]:
    """LanceDB IVF_PQ on each distinct store's rows (exported), the same queries and truth."""
    from puffer_cli.jobs.export import export

    from bench_scale import LANCE_PROBES, lance

    out = [
        "LanceDB in the same run, on each store's rows (exported by `puffer export`), the same queries and truth",
        "(IVF_PQ, sqrt(rows) partitions, 25 sub-vectors, `refine_factor` 10; build s on the first row):",
        "",
        "| set | rows | LanceDB index | build s | recall@10 | p50 ms | p99 ms | load |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    done = set()
    for label, store, ns, truth, n, _prune in sets:
        if store in done:
            continue
        done.add(store)
        d = work / label.split("@", 1)[0]
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        log(f"{label}: exporting {n:,} rows for LanceDB")
        export(ns, str(d / "rows.parquet"), "parquet")
        for name, secs, rec, p50, p99 in lance(
            [d / "rows.parquet"], queries, truth, d, probes=(*LANCE_PROBES, (160, 10))
        ):
            b = f"{secs:.1f}" if secs is not None else ""
            out.append(
                f"| {label} | {n:,} | {name} | {b} | {rec:.3f} | {p50:.2f} | {p99:.2f} | {os.getloadavg()[0]:.1f} |"
            )
            log(out[-1])
        shutil.rmtree(d, ignore_errors=True)
    return out


def _plot(res: dict, rows_of: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        log("matplotlib not installed: no plot")
        return False
    n = np.array([rows_of[lb] for lb in res], float)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    for axis, key, name in ((ax[0], "p50", "warm p50, ms"), (ax[1], "scanned", "rows scanned / query")):
        v = np.array([res[lb][key] for lb in res], float)
        axis.loglog(n, v, "o-", label="measured")
        axis.loglog(n, v[0] * n / n[0], ":", label="linear from the first")
        axis.loglog(n, v[0] * np.sqrt(n / n[0]), "--", label="sqrt from the first")
        axis.set_xlabel("rows")
        axis.set_ylabel(name)
        axis.grid(True, which="both", alpha=0.3)
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: no overlapping labels
        for lb, x, y in zip(res, n, v):
            axis.annotate(lb, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax[0].legend(fontsize=7)
    fig.suptitle(f"warm ANN, {time.strftime('%Y-%m-%d', time.gmtime())}", fontsize=9)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "bench-sublinear.png", dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    main()
