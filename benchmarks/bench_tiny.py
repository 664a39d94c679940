"""The fixed cost of a query: a 100-row namespace, next to sqlite3, numpy and LanceDB.

    python benchmarks/bench_tiny.py [--queries N] [--warmup N] [--no-server] [--no-doc]

One namespace ``t`` in a temp local store, written by one ``upsert_rows`` (one WAL entry, no
index): 100 rows of ``id`` (int), ``vector`` (384-d f32, cosine), ``category`` (one of 4 strings),
``n`` (int) and ``text`` (a few words, ``full_text_search``).  Each case runs ``--queries`` times
after ``--warmup`` (query vectors cycle through 64 random ones), through both library entry points:
``puffer_cli.connect(path).namespace("t").query(...)`` (the handle, what a user calls) and
``puffer_cli.search.engine.run_query(ns, body)`` (the engine, what the server calls).  Cases:

* ``order``: ``rank_by ["id","asc"]``, top 10, strong and eventual;
* ``ann``: ``rank_by ["vector","ANN",q]``, top 10, strong and eventual;
* ``filter Eq``: ``["category","Eq","b"]`` with ``rank_by ["id","asc"]``, top 10 (strong);
* ``bm25``: ``["text","BM25","quick fox"]``, top 10 (strong).

References, same run and same rows: sqlite3 (stdlib, in-memory) ``SELECT id ... ORDER BY id LIMIT 10``,
with ``WHERE category = ?`` and an FTS5 ``MATCH ... ORDER BY rank``; bare numpy (``M @ q`` +
``argsort`` over a prepared normalised matrix); a 100-row LanceDB table (if ``lancedb`` is installed):
vector search and a filtered scan, top 10.

Server: ``puffer serve`` in a child process on 127.0.0.1; a keep-alive ``http.client`` connection
posts the same bodies; reported: client latency (request -> parsed JSON) and the response's
``performance.server_total_ms`` (whole ms: p50 and mean).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))  # _common, whatever the working directory
from _common import ROOT, log, pct, publish, section_head, stop_process

sys.path.insert(0, str(ROOT))
START, END = "<!-- bench_tiny:start -->", "<!-- bench_tiny:end -->"
N, DIM, NQ = 100, 384, 64
WORDS = "quick brown fox jumps over lazy dog river stone cloud apple green light night paper".split()
CATS = ["a", "b", "c", "d"]


# ---------------------------------------------------------------- data
def make_rows(seed: int = 0) -> tuple[list[dict], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((N, DIM)).astype(np.float32)
    qs = rng.standard_normal((NQ, DIM)).astype(np.float32)
    rows = [
        {
            "id": i,
            "vector": vecs[i].tolist(),
            "category": CATS[i % len(CATS)],
            "n": int(rng.integers(0, 1000)),
            "text": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))),
        }
        for i in range(N)
    ]
    return rows, vecs, qs


def bodies(qs: np.ndarray) -> dict[str, Callable[[int], dict]]:
    """case name -> body of query i (a fresh dict each call: the engine may not mutate it, but a user's would be new)."""
    qlists = [q.tolist() for q in qs]

    def strong(b: dict) -> dict:
        return b

    def eventual(b: dict) -> dict:
        return {**b, "consistency": {"level": "eventual"}}

    return {
        "order strong": lambda i: strong({"rank_by": ["id", "asc"], "top_k": 10}),
        "order eventual": lambda i: eventual({"rank_by": ["id", "asc"], "top_k": 10}),
        "ann strong": lambda i: strong({"rank_by": ["vector", "ANN", qlists[i % NQ]], "top_k": 10}),
        "ann eventual": lambda i: eventual({"rank_by": ["vector", "ANN", qlists[i % NQ]], "top_k": 10}),
        "filter Eq strong": lambda i: {"rank_by": ["id", "asc"], "filters": ["category", "Eq", "b"], "top_k": 10},
        "bm25 strong": lambda i: {"rank_by": ["text", "BM25", "quick fox"], "top_k": 10},
    }


# ---------------------------------------------------------------- timing
def timed(fn: Callable[[int], object], n: int, warmup: int) -> list[float]:
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def stats(xs: list[float]) -> tuple[float, float]:
    return 1000 * pct(xs, 50), 1000 * pct(xs, 99)


def bench_puffer(store: str, qs: np.ndarray, n: int, warmup: int) -> dict[str, dict[str, tuple[float, float]]]:
    import puffer_cli
    from puffer_cli.search import engine

    ns = puffer_cli.connect(store).namespace("t")
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for case, body in bodies(qs).items():
        ref = engine.run_query(ns, body(0))["rows"]
        assert len(ref) == 10 or case.startswith("bm25"), (case, ref)

        def via_handle(i: int, body=body) -> None:
            b = body(i)
            lvl = (b.pop("consistency", None) or {}).get("level")
            ns.query(b, consistency=lvl)

        def via_engine(i: int, body=body) -> None:
            engine.run_query(ns, body(i))

        out[case] = {"handle": stats(timed(via_handle, n, warmup)), "engine": stats(timed(via_engine, n, warmup))}
        log(f"{case}: handle p50 {out[case]['handle'][0]:.3f} ms, run_query p50 {out[case]['engine'][0]:.3f} ms")
    return out


def bench_refs(rows: list[dict], vecs: np.ndarray, qs: np.ndarray, n: int, warmup: int, tmp: str) -> dict:
    out: dict[str, tuple[float, float]] = {}
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, category TEXT, n INTEGER, text TEXT, vector BLOB)")
    db.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?, ?)",
        [(r["id"], r["category"], r["n"], r["text"], vecs[r["id"]].tobytes()) for r in rows],
    )
    out["sqlite3 ORDER BY id LIMIT 10"] = stats(
        timed(lambda i: db.execute("SELECT id FROM t ORDER BY id LIMIT 10").fetchall(), n, warmup)
    )
    out["sqlite3 WHERE category = ? ORDER BY id LIMIT 10"] = stats(
        timed(
            lambda i: db.execute("SELECT id FROM t WHERE category = ? ORDER BY id LIMIT 10", ("b",)).fetchall(),
            n,
            warmup,
        )
    )
    try:
        db.execute("CREATE VIRTUAL TABLE f USING fts5(text, content='t', content_rowid='id')")
        db.execute("INSERT INTO f(rowid, text) SELECT id, text FROM t")
        sql = "SELECT rowid FROM f WHERE f MATCH ? ORDER BY rank LIMIT 10"
        out["sqlite3 FTS5 MATCH 'quick OR fox' ORDER BY rank LIMIT 10"] = stats(
            timed(lambda i: db.execute(sql, ("quick OR fox",)).fetchall(), n, warmup)
        )
    except sqlite3.OperationalError as e:  # a sqlite built without FTS5
        log(f"sqlite3 FTS5 skipped: {e}")
    M = np.ascontiguousarray(vecs / np.linalg.norm(vecs, axis=1, keepdims=True), dtype=np.float32)
    qn = [q / np.linalg.norm(q) for q in qs]
    out["numpy M @ q + argsort, top 10"] = stats(timed(lambda i: np.argsort(-(M @ qn[i % NQ]))[:10], n, warmup))
    try:
        import lancedb
        import pyarrow as pa
    except ImportError:
        log("lancedb not installed: its rows are skipped")
        return out
    ldb = lancedb.connect(os.path.join(tmp, "lance"))
    tbl = ldb.create_table(
        "t",
        pa.table(
            {
                "id": [r["id"] for r in rows],
                "category": [r["category"] for r in rows],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), DIM),
            }
        ),
    )
    out["lancedb search(q).limit(10) (flat, cosine)"] = stats(
        timed(
            lambda i: tbl.search(qs[i % NQ]).metric("cosine").limit(10).select(["id", "_distance"]).to_arrow(),
            n,
            warmup,
        )
    )
    out["lancedb search().where(category = 'b').limit(10)"] = stats(
        timed(lambda i: tbl.search().where("category = 'b'").limit(10).select(["id"]).to_arrow(), n, warmup)
    )
    return out


# ---------------------------------------------------------------- server
def bench_server(store: str, qs: np.ndarray, n: int, warmup: int) -> dict[str, dict]:
    import http.client
    import json

    p = subprocess.Popen(
        [sys.executable, "-m", "puffer_cli.cli.main", "serve", "--listen", "127.0.0.1:0", "--store", store]
        + ["--log-level", "warning"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])),
    )
    out: dict[str, dict] = {}
    try:
        line = p.stdout.readline() if p.stdout else ""
        m = re.search(r"listening on http://([^:/]+):(\d+)", line)
        if not m:
            raise SystemExit(f"puffer serve did not start: {line!r}")
        conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=30)
        for case, body in bodies(qs).items():
            server_ms: list[int] = []

            def post(i: int, body=body, server_ms=server_ms, case=case) -> None:
                conn.request(
                    "POST", "/v2/namespaces/t/query", json.dumps(body(i)), {"Content-Type": "application/json"}
                )
                r = conn.getresponse()
                res = json.loads(r.read())
                if r.status != 200:
                    raise SystemExit(f"{case}: HTTP {r.status}: {res}")
                server_ms.append(res["performance"]["server_total_ms"])

            lat = timed(post, n, warmup)
            srv = server_ms[warmup:]
            out[case] = {
                "client": stats(lat),
                "server_p50": float(np.median(srv)),
                "server_mean": float(np.mean(srv)),
            }
            log(f"HTTP {case}: client p50 {out[case]['client'][0]:.2f} ms, server_total_ms mean {np.mean(srv):.2f}")
        conn.close()
    finally:
        stop_process(p, 20)
    return out


# ---------------------------------------------------------------- report
def render(lib: dict, refs: dict, srv: dict | None, args, load: str, command: str) -> str:
    lines = section_head("Tiny namespace: the fixed cost of a query (`benchmarks/bench_tiny.py`)", command)
    lines += [
        f"- Load average at start: {load}",
        f"- Data: {N} rows, `vector` {DIM}-d f32 (cosine), `category`, `n`, `text` (full_text_search); one WAL "
        "entry, no index; local store (temp dir), warm process.",
        f"- {args.queries:,} queries per case after {args.warmup:,} warm-up; times in ms.",
        "",
        "| case | `ns.query` p50 | p99 | `engine.run_query` p50 | p99 |",
        "|---|---:|---:|---:|---:|",
    ]
    for case, r in lib.items():
        (h50, h99), (e50, e99) = r["handle"], r["engine"]
        lines.append(f"| {case} | {h50:.3f} | {h99:.3f} | {e50:.3f} | {e99:.3f} |")
    lines += ["", "References, same run, same rows:", "", "| reference | p50 | p99 |", "|---|---:|---:|"]
    for name, (a, b) in refs.items():
        lines.append(f"| {name} | {a:.3f} | {b:.3f} |")
    if srv:
        lines += [
            "",
            "Over HTTP (`puffer serve` child process, one keep-alive `http.client` connection, 1 in flight):",
            "",
            "| case | client p50 | client p99 | `server_total_ms` p50 | mean |",
            "|---|---:|---:|---:|---:|",
        ]
        for case, r in srv.items():
            (c50, c99) = r["client"]
            lines.append(f"| {case} | {c50:.2f} | {c99:.2f} | {r['server_p50']:.0f} | {r['server_mean']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=2000, help="timed queries per case")
    ap.add_argument("--warmup", type=int, default=200, help="untimed queries per case first")
    ap.add_argument("--no-server", action="store_true", help="skip the HTTP cases")
    ap.add_argument("--no-doc", action="store_true", help="print only; do not touch docs/benchmarks.md")
    ap.add_argument(
        "--data", help="ignored (the data is generated): accepted as `nox -s bench -- --data DIR` passes it"
    )
    args = ap.parse_args(argv)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    import puffer_cli

    rows, vecs, qs = make_rows()
    with tempfile.TemporaryDirectory(prefix="puffer-tiny-") as tmp:
        store = os.path.join(tmp, "store")
        puffer_cli.connect(store).namespace("t").write(
            {
                "upsert_rows": rows,
                "distance_metric": "cosine_distance",
                "schema": {"text": {"type": "string", "full_text_search": True}},
            }
        )
        lib = bench_puffer(store, qs, args.queries, args.warmup)
        refs = bench_refs(rows, vecs, qs, args.queries, args.warmup, tmp)
        srv = None if args.no_server else bench_server(store, qs, args.queries, args.warmup)
    section = render(lib, refs, srv, args, load, shlex.join(["python", "benchmarks/bench_tiny.py", *argv]))
    publish(section, START, END, write=not args.no_doc)


if __name__ == "__main__":
    main()
