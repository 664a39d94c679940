"""HTTP benchmark of `puffer serve` on indexed glove-100: query latency/throughput, write throughput.

    python benchmarks/bench_server.py [--data DIR] [--store DIR] [--seconds S] [--no-doc]

1. ``glove-100-angular/base.parquet`` (331,479 x 100, cosine) is ingested into a local store
   (default ``$PUFFER_BENCH_DATA/serve-store``, reused across runs when complete) and indexed with
   the indexer (``puffer_cli.index.builder.index_namespace``) until the index covers the WAL head.
2. ``puffer serve`` runs as a separate process (``python -m puffer_cli.cli.main serve``) on 127.0.0.1.
3. Queries: ``{"rank_by": ["vector", "ANN", q], "top_k": 10}`` with the held-out query vectors as
   float lists (what the official client sends), from a minimal asyncio HTTP/1.1 keep-alive client
   (``Conn``: httpx used as much CPU as the server) in this process with
   1, 8 and 32 requests in flight, for ``--seconds`` each after a warm-up; p50/p99 latency measured
   by the client (request sent -> response body parsed) and queries/s.  recall@10 against the
   dataset's exact neighbours is reported as a sanity check (it is the index's, not HTTP's).
4. Scaling: a fresh ``puffer serve --workers 1`` and ``--workers 2`` in turn (``--scale-rounds``
   times), the same query load with 16 requests in flight for ``--seconds`` each after a warm-up
   that reaches every worker; queries/s and the ratio, with the CPU seconds per query of the
   client (this process), of the server (all its processes, from /proc) and of everything else on
   the machine in that window (/proc/stat): the load generator shares the cores it measures.
5. Writes: 8 concurrent writers each POST ``upsert_rows`` batches of 100 glove rows (vectors as
   base64 f32, as the client sends them) to a fresh namespace for ``--seconds``; rows/s counts
   acknowledged rows only; WAL entries shows how many commits group commit made of the requests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))  # _common, whatever the working directory
from _common import DOC, ROOT, default_data, section_head, stop_process, write_section

START, END = "<!-- bench_server:start -->", "<!-- bench_server:end -->"
DATASET = "glove-100-angular"
NS = "glove"
CONCURRENCY = (1, 8, 32)
SCALE_WORKERS = (1, 2)
SCALE_CONCURRENCY = 16
WRITERS = 8
WRITE_BATCH = 100


def stack() -> str:
    import importlib.util
    from importlib.metadata import version

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn {version('uvicorn')} ({http}, {loop}), starlette {version('starlette')}"


# ---------------------------------------------------------------- setup
def prepare(store: str, data: str) -> dict:
    """Ingest + index glove-100 into ``store`` (reused if already complete)."""
    import puffer_cli
    from puffer_cli.jobs.ingest import ingest

    db = puffer_cli.connect(store)
    ns = db.open_namespace(NS)
    info = {"ingest_s": None, "index_s": None, "reused": False}
    n = 331_479
    meta, _ = ns.read_meta()
    idx = (meta or {}).get("index") or {}
    head = ns.head()
    if head.seq and idx.get("rows") == n and idx.get("covers_through_seq") == head.seq:
        info["reused"] = True
        return info
    if head.seq:
        ns.delete_all()
        ns = db.open_namespace(NS)
    t0 = time.perf_counter()
    rep = ingest(
        ns, [os.path.join(data, DATASET, "base.parquet")], vector_col="vector", distance_metric="cosine_distance"
    )
    info["ingest_s"] = time.perf_counter() - t0
    print(f"ingested {rep.rows:,} rows in {info['ingest_s']:.1f}s", flush=True)
    try:
        from puffer_cli.index.builder import index_namespace
    except ImportError:
        print("no indexer available: queries will scan", flush=True)
        return info
    t0 = time.perf_counter()
    while True:
        r = index_namespace(ns, gc_grace_s=0)
        print(r.summary(), flush=True)
        if r.status in ("up-to-date", "empty") or (r.status == "indexed" and not r.partial):
            break
        if r.status in ("busy", "failed"):
            raise SystemExit(f"indexing failed: {r.summary()}")
    info["index_s"] = time.perf_counter() - t0
    return info


def spawn(store: str, workers: int = 1) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "puffer_cli.cli.main",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            store,
            "--log-level",
            "warning",
            "--workers",
            str(workers),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    line = p.stdout.readline()
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        p.kill()
        raise SystemExit(f"puffer serve did not start: {line!r}")
    return p, m.group(1)


# ---------------------------------------------------------------- load
class Conn:
    """One keep-alive HTTP/1.1 connection that costs the client almost no CPU.  httpx,
    measured on this machine, used 91% of a core at 32 requests in flight (40% at 8): on
    2 cores the load generator then competes with the server it measures."""

    def __init__(self, url: str):
        m = re.match(r"http://([^:/]+):(\d+)", url)
        self.host, self.port = m.group(1), int(m.group(2))
        self.r = self.w = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.w is None:
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
        self.w.write(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(), len(body), body)
        )
        head = await self.r.readuntil(b"\r\n\r\n")
        n = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        return int(head[9:12]), await self.r.readexactly(int(n.group(1)))

    def close(self) -> None:
        if self.w is not None:
            self.w.close()


async def query_load(
    url: str, queries: np.ndarray, gt: np.ndarray, conc: int, seconds: float, warmup: float = 2.0
) -> dict:
    import orjson

    lat: list[float] = []
    recalls: list[float] = []
    exhaustive: list[int] = []
    engine_ms: list[int] = []
    errors = 0
    nq = len(queries)
    counter = iter(range(10**9))
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + seconds

    async def worker():
        nonlocal errors
        conn = Conn(url)
        try:
            while True:
                now = time.perf_counter()
                if now >= t_end:
                    return
                i = next(counter) % nq
                body = orjson.dumps({"rank_by": ["vector", "ANN", queries[i].tolist()], "top_k": 10})
                t0 = time.perf_counter()
                status, raw = await conn.post(f"/v2/namespaces/{NS}/query", body)
                out = orjson.loads(raw)
                t1 = time.perf_counter()
                if status != 200:
                    errors += 1
                    continue
                if t0 >= t_measure:
                    lat.append(t1 - t0)
                    got = [row["id"] for row in out["rows"]]
                    recalls.append(len(set(got) & set(gt[i, :10].tolist())) / 10)
                    exhaustive.append(out["performance"].get("exhaustive_search_count", 0))
                    engine_ms.append(out["performance"].get("server_total_ms", 0))
        finally:
            conn.close()

    await asyncio.gather(*[worker() for _ in range(conc)])
    elapsed = time.perf_counter() - t_measure
    lat.sort()
    return {
        "concurrency": conc,
        "queries": len(lat),
        "errors": errors,
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else float("nan"),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        "qps": len(lat) / elapsed if elapsed > 0 else 0.0,
        "engine_p50_ms": statistics.median(engine_ms) if engine_ms else float("nan"),
        "recall": statistics.fmean(recalls) if recalls else float("nan"),
        "exhaustive": statistics.fmean(exhaustive) if exhaustive else float("nan"),
    }


async def write_load(url: str, vectors: np.ndarray, words: list[str], seconds: float) -> dict:
    import httpx
    import orjson

    ns = "bench-writes"
    acked = 0
    requests = 0
    errors = 0
    lat: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=WRITERS)) as client:
        await client.delete(f"/v2/namespaces/{ns}")
        t_end = time.perf_counter() + seconds
        t_start = time.perf_counter()

        async def writer(w: int):
            nonlocal acked, requests, errors
            k = 0
            while time.perf_counter() < t_end:
                base = (w * 1_000_003 + k * WRITE_BATCH) % (len(vectors) - WRITE_BATCH)
                rows = [
                    {
                        "id": 10_000_000 * w + k * WRITE_BATCH + j,
                        "vector": base64.b64encode(vectors[base + j].astype("<f4").tobytes()).decode(),
                        "word": words[base + j],
                    }
                    for j in range(WRITE_BATCH)
                ]
                k += 1
                body = orjson.dumps({"upsert_rows": rows, "distance_metric": "cosine_distance"})
                t0 = time.perf_counter()
                r = await client.post(
                    f"/v2/namespaces/{ns}", content=body, headers={"content-type": "application/json"}
                )
                lat.append(time.perf_counter() - t0)
                requests += 1
                if r.status_code == 200:
                    acked += r.json()["rows_upserted"]
                else:
                    errors += 1

        await asyncio.gather(*[writer(w) for w in range(WRITERS)])
        elapsed = time.perf_counter() - t_start
        meta = (await client.get(f"/v2/namespaces/{ns}/metadata")).json()
    lat.sort()
    return {
        "rows": acked,
        "requests": requests,
        "errors": errors,
        "seconds": elapsed,
        "rows_s": acked / elapsed,
        "wal_entries": meta.get("last_seq"),
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else float("nan"),
        "row_count": meta.get("approx_row_count"),
    }


# ---------------------------------------------------------------- report
def render(info: dict, q: list[dict], w: dict, command: str) -> str:
    lines = section_head("HTTP server (`benchmarks/bench_server.py`)", command) + [
        "- Data: glove-100-angular, 331,479 x 100, cosine, local store; "
        + (
            "index reused from an earlier run"
            if info["reused"]
            else f"ingest {info['ingest_s']:.1f} s"
            + (
                f", index build {info['index_s']:.1f} s"
                if info["index_s"]
                else ", NO INDEX (indexer not available): queries scan"
            )
        ),
        "- Server: one `puffer serve` process (uvicorn, 1 worker) on 127.0.0.1; query load from a minimal "
        "asyncio HTTP/1.1 keep-alive client (one connection per request in flight; httpx used 91% of a core at "
        "32 in flight) in another process on the same 2 cores; writes from httpx.",
        '- Queries: `rank_by ["vector","ANN",q]`, `top_k 10`, float-list query vectors, warm cache; latency '
        "= client-side request->parsed response; engine p50 = the response's `performance.server_total_ms` "
        "(time inside `engine.run_query`, whole ms), the rest is HTTP, JSON and scheduling.",
        f"- {stack()}; load average (1 / 5 / 15 min) at start {info.get('load', '?')}, at end "
        f"{info.get('load_end', '?')}."
        + (
            " The machine is shared and was busy (load above 1.5): other sessions took CPU during the run, "
            "so queries/s are lower and latencies higher than on a quiet machine; compare ratios within this run."
            if max(info.get("load1", 0.0), info.get("load1_end", 0.0)) > 1.5
            else ""
        ),
        "",
        "| clients in flight | queries | p50 ms | p99 ms | queries/s | engine p50 ms | recall@10 "
        "| exhaustive docs/query | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in q:
        lines.append(
            f"| {r['concurrency']} | {r['queries']:,} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['qps']:,.0f} | {r['engine_p50_ms']:.0f} | {r['recall']:.3f} | {r['exhaustive']:,.0f} | {r['errors']} |"
        )
    lines += [
        "",
        f"Writes: {WRITERS} concurrent writers, `upsert_rows` batches of {WRITE_BATCH} glove rows (base64 f32 "
        "vectors + `word`), each request acknowledged after its WAL entry is durable.",
        "",
        "| writers | requests | rows acked | seconds | rows/s | WAL entries | request p50 ms | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {WRITERS} | {w['requests']:,} | {w['rows']:,} | {w['seconds']:.1f} | {w['rows_s']:,.0f} | "
        f"{w['wal_entries']} | {w['p50_ms']:.1f} | {w['errors']} |",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- scaling over workers
def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants (Linux /proc)."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def _machine_busy_s() -> float:
    """CPU seconds all processes on the machine have used (busy jiffies in /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def scale_run(store: str, workers: int, queries: np.ndarray, gt: np.ndarray, seconds: float) -> dict:
    """One fresh ``serve --workers N``: warm every worker, then the query load, with CPU accounting."""
    import httpx

    proc, url = spawn(store, workers)
    try:
        pids: set[int] = set()
        for _ in range(200):  # a new connection lands on some worker: warm until each has been asked
            with httpx.Client(base_url=url, timeout=60) as c:
                c.get(f"/v1/namespaces/{NS}/hint_cache_warm").raise_for_status()
                pids.add(c.get("/health").json()["pid"])  # the same connection, so the same worker
            if len(pids) >= workers:
                break
        asyncio.run(query_load(url, queries, gt, SCALE_CONCURRENCY, 3.0, warmup=0.0))  # every connection warm
        load = os.getloadavg()[0]
        srv0, cli0, all0 = _cpu_s(proc.pid), time.process_time(), _machine_busy_s()
        w0 = time.perf_counter()
        r = asyncio.run(query_load(url, queries, gt, SCALE_CONCURRENCY, seconds, warmup=0.0))
        wall = time.perf_counter() - w0
        srv, cli, busy = _cpu_s(proc.pid) - srv0, time.process_time() - cli0, _machine_busy_s() - all0
    finally:
        stop_process(proc, 30)
    n = max(1, r["queries"])
    return {
        **r,
        "workers": workers,
        "load": load,
        "wall": wall,
        "server_cores": srv / wall,
        "client_cores": cli / wall,
        "other_cores": max(0.0, busy - srv - cli) / wall,
        "server_ms_q": 1000 * srv / n,
        "client_ms_q": 1000 * cli / n,
    }


def scaling(store: str, queries: np.ndarray, gt: np.ndarray, seconds: float, rounds: int) -> list[dict]:
    out = []
    for k in range(rounds):
        for w in SCALE_WORKERS:
            r = scale_run(store, w, queries, gt, seconds)
            r["round"] = k + 1
            print(
                f"round {k + 1} workers={w}: {r['qps']:,.0f} q/s, p50 {r['p50_ms']:.1f} ms, server "
                f"{r['server_cores']:.2f} cores ({r['server_ms_q']:.2f} ms/query), client {r['client_cores']:.2f} "
                f"cores ({r['client_ms_q']:.3f} ms/query), others {r['other_cores']:.2f} cores, load {r['load']:.2f}",
                flush=True,
            )
            out.append(r)
    return out


def render_scaling(runs: list[dict]) -> list[str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    lines = [
        "",
        f"Scaling over `--workers`: a fresh `puffer serve --workers N` per row, {SCALE_CONCURRENCY} queries in "
        "flight from the same asyncio client, the same queries; every worker warmed first. CPU columns: "
        "cores used during the measured seconds (CPU seconds / wall seconds) by the server (all its processes), "
        "the client (this process) and everything else on the machine (other sessions).",
        "",
        "| round | workers | queries | queries/s | p50 ms | p99 ms | server cores | server ms CPU/query "
        "| client cores | client ms CPU/query | other cores | load (1 min) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['round']} | {r['workers']} | {r['queries']:,} | {r['qps']:,.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['server_cores']:.2f} | {r['server_ms_q']:.2f} | {r['client_cores']:.2f} | "
            f"{r['client_ms_q']:.3f} | {r['other_cores']:.2f} | {r['load']:.2f} |"
        )
    one = [r for r in runs if r["workers"] == SCALE_WORKERS[0]]
    two = [r for r in runs if r["workers"] == SCALE_WORKERS[-1]]
    if one and two:
        q1 = statistics.fmean(r["qps"] for r in one)
        q2 = statistics.fmean(r["qps"] for r in two)
        per_q = statistics.fmean(r["server_ms_q"] + r["client_ms_q"] for r in two) / 1000
        ceiling = cores / per_q if per_q else float("nan")  # every core busy with server + client work only
        ms1 = statistics.fmean(r["server_ms_q"] for r in one)
        ms2 = statistics.fmean(r["server_ms_q"] for r in two)
        lines += [
            "",
            f"Mean queries/s: {q1:,.0f} with {SCALE_WORKERS[0]} worker, {q2:,.0f} with {SCALE_WORKERS[-1]}: "
            f"**ratio {q2 / q1:.2f}** (per round: "
            + ", ".join(f"{b['qps'] / a['qps']:.2f}" for a, b in zip(one, two, strict=False))
            + f"). With {cores} cores and no other load, server + client CPU per query at "
            f"{SCALE_WORKERS[-1]} workers allows at most {ceiling:,.0f} q/s, i.e. ratio "
            f"{ceiling / q1:.2f} over the 1-worker figure. Server CPU per query: {ms1:.2f} ms with "
            f"{SCALE_WORKERS[0]} worker, {ms2:.2f} ms with {SCALE_WORKERS[-1]} "
            + (
                "(no more work per query, so nothing serialises the workers: queries/s follow the cores the "
                "server gets, and a 2-worker ratio below the ceiling is CPU taken by other load, the "
                "'other cores' column). "
                if ms2 <= 1.1 * ms1
                else "(more CPU per query with more workers: the processes contend for the cores other load "
                "leaves, see 'other cores'). "
            )
            + f"The client costs {statistics.fmean(r['client_ms_q'] for r in runs):.3f} ms CPU per query "
            f"({100 * statistics.fmean(r['client_ms_q'] / (r['client_ms_q'] + r['server_ms_q']) for r in runs):.0f}% "
            "of the CPU per query).",
        ]
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--store", default=None, help="local store dir (default DATA/serve-store, reused)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per load level")
    ap.add_argument("--scale-rounds", type=int, default=2, help="rounds of 1 then 2 workers (0: skip)")
    ap.add_argument("--no-doc", action="store_true", help="print only; do not touch docs/benchmarks.md")
    args = ap.parse_args(argv)
    data = os.path.abspath(os.path.expanduser(args.data))
    store = args.store or os.path.join(data, "serve-store")
    info = prepare(store, data)

    import polars as pl

    queries = np.load(os.path.join(data, DATASET, "queries.npy")).astype(np.float32)
    gt = np.load(os.path.join(data, DATASET, "gt.npy"))
    base = pl.read_parquet(os.path.join(data, DATASET, "base.parquet"), columns=["vector", "word"], n_rows=50_000)
    vectors = base["vector"].to_numpy().astype(np.float32)
    words = base["word"].to_list()

    info["load"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    info["load1"] = os.getloadavg()[0]
    proc, url = spawn(store)
    try:
        import httpx

        httpx.get(f"{url}/v1/namespaces/{NS}/hint_cache_warm", timeout=60)
        q = []
        for c in CONCURRENCY:
            r = asyncio.run(query_load(url, queries, gt, c, args.seconds))
            print(
                f"c={c}: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, {r['qps']:,.0f} q/s, "
                f"recall@10 {r['recall']:.3f}, exhaustive {r['exhaustive']:.0f}, errors {r['errors']}",
                flush=True,
            )
            q.append(r)
        w = asyncio.run(write_load(url, vectors, words, args.seconds))
        print(
            f"writes: {w['rows_s']:,.0f} rows/s ({w['requests']} requests -> {w['wal_entries']} WAL entries)",
            flush=True,
        )
    finally:
        stop_process(proc, 30)
    runs = scaling(store, queries, gt, args.seconds, args.scale_rounds) if args.scale_rounds else []
    info["load_end"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    info["load1_end"] = os.getloadavg()[0]
    section = render(info, q, w, shlex.join(["python", "benchmarks/bench_server.py", *argv]))
    if runs:
        section = section.rstrip("\n") + "\n" + "\n".join(render_scaling(runs)) + "\n"
    print(section)
    if not args.no_doc:
        write_section(DOC, START, END, section)


if __name__ == "__main__":
    main()
