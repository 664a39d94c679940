"""Ingest benchmark: puffer (local store, moto S3, CLI on 10x the data) next to LanceDB.

    python benchmarks/bench_ingest.py [--data DIR] [--repeat N] [--skip-s3] [--skip-10x]

Input: ``glove-100-angular/base.parquet`` (331,479 x 100 float32 vectors plus ``word`` and
``length``) from ``../shared/data/prepare.py``.  Every case runs in a fresh subprocess
(``python benchmarks/bench_ingest.py --case NAME ...``) and its peak RSS is that process's
``ru_maxrss`` (read by the parent with ``os.wait4``), so cases do not pollute each other.

* ``puffer local``  ``puffer_cli.jobs.ingest.ingest(ns, [path], vector_col="vector")`` into a fresh
  temp local store (every WAL entry fsynced, committed by create-if-absent).
* ``puffer S3``     the same into ``s3://bench/<prefix>`` on a moto ``ThreadedMotoServer`` that
  runs in the parent process (its memory is not counted).
* ``LanceDB local`` ``pyarrow.parquet.read_table`` + ``lancedb.connect(dir).create_table("t", data=...)``;
  the time includes reading the parquet file.
* ``puffer CLI 10x`` ``python -m puffer_cli.cli.main ingest`` over 10 copies of the file with distinct
  ids (``id + k * 1_000_000``), written as 10 parquet files.

Times are wall-clock around the ingest call (reading the parquet included, interpreter start
and imports excluded).  MB/s uses the input's in-memory size: the sum of ``estimated_size()`` of
the polars frames read (the same number for every engine on the same file).  The median of
``--repeat`` runs is reported for time; RSS is the largest over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))  # _common, whatever the working directory
from _common import ROOT, default_data, log, publish, section_head, start_moto

START, END = "<!-- bench_ingest:start -->", "<!-- bench_ingest:end -->"
DATASET = "glove-100-angular/base.parquet"
COPIES = 10
RSS_TARGET_MIB = 1024


def _rss_mib_self() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------- cases (child side)
def case_puffer(args) -> dict:
    import puffer_cli
    from puffer_cli.jobs.ingest import ingest

    path = os.path.join(args.data, DATASET)
    if args.store.startswith("s3://"):
        db = puffer_cli.connect(args.store, s3_endpoint=args.endpoint)
    else:
        db = puffer_cli.connect(args.store)
    ns = db.open_namespace("glove")
    c0, t0 = time.process_time(), time.perf_counter()
    rep = ingest(ns, [path], vector_col="vector")
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"rows": rep.rows, "seconds": secs, "cpu": cpu, "bytes_in": rep.bytes_in, "entries": rep.entries}


def case_lancedb(args) -> dict:
    import lancedb
    import polars as pl
    import pyarrow.parquet as pq

    path = os.path.join(args.data, DATASET)
    c0, t0 = time.process_time(), time.perf_counter()
    table = pq.read_table(path)
    tbl = lancedb.connect(args.store).create_table("t", data=table)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = tbl.count_rows()
    # same definition of input bytes as puffer's ingest report (polars in-memory size)
    nbytes = pl.from_arrow(table).estimated_size()
    return {"rows": rows, "seconds": secs, "cpu": cpu, "bytes_in": nbytes}


CASES = {"puffer": case_puffer, "lancedb": case_lancedb}


def run_case(args) -> None:
    out = CASES[args.case](args)
    out["self_rss_mib"] = _rss_mib_self()
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------- parent side
def run_measured(cmd: list[str], env: dict | None = None) -> tuple[str, str, float, float, float]:
    """Run ``cmd``; return (stdout, stderr, wall seconds, peak RSS MiB, CPU seconds) of that process."""
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=so, stderr=se, env=env, cwd=ROOT)
        _pid, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read(), se.read()
    if p.returncode != 0:
        raise SystemExit(f"benchmark step failed ({p.returncode}): {shlex.join(cmd)}\n{stderr[-4000:]}")
    return stdout, stderr, wall, ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime


def child(case: str, data: str, store: str, endpoint: str | None = None, env: dict | None = None) -> dict:
    cmd = [sys.executable, str(HERE), "--case", case, "--data", data, "--store", store]
    if endpoint:
        cmd += ["--endpoint", endpoint]
    stdout, _err, wall, rss, _cpu = run_measured(cmd, env)
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT ") :])
    res["rss_mib"] = rss
    res["wall"] = wall
    return res


def summarise(name: str, runs: list[dict]) -> dict:
    secs = statistics.median(r["seconds"] for r in runs)
    cpu = statistics.median(r["cpu"] for r in runs)
    rows = runs[0]["rows"]
    nbytes = runs[0]["bytes_in"]
    return {
        "name": name,
        "rows": rows,
        "seconds": secs,
        "cpu": cpu,
        "rows_s": rows / secs,
        "mb_s": nbytes / 1e6 / secs,
        "mb": nbytes / 1e6,
        "rss_mib": max(r["rss_mib"] for r in runs),
        "runs": len(runs),
        "all_seconds": [round(r["seconds"], 2) for r in runs],
    }


def write_copies(src: str, out_dir: str, copies: int) -> list[str]:
    """``copies`` parquet files, copy k with ids ``id + k * 1_000_000`` (streamed, low memory)."""
    import polars as pl

    paths = []
    for k in range(copies):
        p = os.path.join(out_dir, f"part-{k:02d}.parquet")
        (pl.scan_parquet(src).with_columns(pl.col("id") + k * 1_000_000).sink_parquet(p))
        paths.append(p)
    return paths


def case_cli_10x(data: str, tmp: str) -> dict:
    src = os.path.join(data, DATASET)
    parts_dir = os.path.join(tmp, "10x")
    os.makedirs(parts_dir)
    paths = write_copies(src, parts_dir, COPIES)
    store = os.path.join(tmp, "store-10x")
    cmd = [
        sys.executable,
        "-m",
        "puffer_cli.cli.main",
        "ingest",
        "glove10x",
        *paths,
        "--vector",
        "vector",
        "--store",
        store,
        "--json",
    ]
    stdout, _err, wall, rss, cpu = run_measured(cmd)
    rep = json.loads(stdout[stdout.index("{") :])
    disk = sum(os.path.getsize(p) for p in paths)
    return {
        "rows": rep["rows"],
        "seconds": rep["seconds"],
        "bytes_in": rep["bytes"],
        "rss_mib": rss,
        "wall": wall,
        "cpu": cpu,
        "parquet_mb": disk / 1e6,
        "entries": rep["wal_entries"],
    }


def render(rows: list[dict], command: str, extra: list[str]) -> str:
    lines = section_head(
        "Ingest (`benchmarks/bench_ingest.py`)", command, ("polars", "lancedb", "pyarrow", "moto", "s3fs")
    ) + [
        (
            f"- Input: `{DATASET}` (331,479 x 100 float32 + `word`, `length`). MB = the input's in-memory size "
            "(sum of polars `estimated_size()` of the frames read), not bytes on disk. Time = wall clock of the "
            "ingest call, reading the parquet included, interpreter start excluded; median of the runs. CPU s = "
            "process CPU time (all threads) of the same span. Peak RSS = `ru_maxrss` of a fresh subprocess per "
            "case (largest over the runs)."
        ),
        "",
        "| case | rows | MB | seconds | rows/s | MB/s | CPU s | peak RSS (MiB) | runs (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        runs = ", ".join(map(str, r["all_seconds"]))
        lines.append(
            f"| {r['name']} | {r['rows']:,} | {r['mb']:,.0f} | {r['seconds']:.2f} | {r['rows_s']:,.0f} | "
            f"{r['mb_s']:,.0f} | {r['cpu']:.1f} | {r['rss_mib']:,.0f} | {runs} |"
        )
    lines += [""] + extra
    return "\n".join(lines).rstrip() + "\n"


def orchestrate(args, argv: list[str]) -> None:
    data = os.path.abspath(os.path.expanduser(args.data))
    src = os.path.join(data, DATASET)
    if not os.path.exists(src):
        raise SystemExit(f"{src} not found: run python ../shared/data/prepare.py (or pass --data DIR)")
    results: list[dict] = []
    extra: list[str] = []
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="puffer-bench-ingest-") as tmp:
        lance, local = [], []
        for i in range(args.repeat):  # interleaved, so drift on the machine hits both alike
            local.append(child("puffer", data, os.path.join(tmp, f"store-local-{i}")))
            lance.append(child("lancedb", data, os.path.join(tmp, f"lance-{i}")))
            log(
                f"run {i + 1}/{args.repeat}: puffer local {local[-1]['seconds']:.2f}s, "
                f"LanceDB {lance[-1]['seconds']:.2f}s"
            )
        results.append(summarise("puffer local (library)", local))
        if not args.skip_s3:
            server, endpoint = start_moto()
            try:
                s3 = [
                    child("puffer", data, f"s3://bench/run-{uuid.uuid4().hex[:8]}", endpoint)
                    for _ in range(args.repeat)
                ]
            finally:
                server.stop()
            log(f"puffer S3 (moto): {[round(r['seconds'], 2) for r in s3]}s")
            results.append(summarise("puffer S3, moto on loopback (library)", s3))
        results.append(summarise("LanceDB local `create_table`", lance))
        if not args.skip_10x:
            big = case_cli_10x(data, tmp)
            r = summarise(f"puffer CLI, {COPIES}x input ({COPIES} files)", [big])
            results.append(r)
            extra.append(
                f"- {COPIES}x case: `python -m puffer_cli.cli.main ingest glove10x part-*.parquet --vector vector "
                f"--store DIR --json` over {COPIES} parquet files ({big['parquet_mb']:,.0f} MB on disk, "
                f"{big['bytes_in'] / 1e6:,.0f} MB in memory, {big['entries']} WAL entries); peak RSS "
                f"{big['rss_mib']:,.0f} MiB (target < {RSS_TARGET_MIB} MiB: "
                f"{'met' if big['rss_mib'] < RSS_TARGET_MIB else 'NOT met'}); process wall time "
                f"incl. start-up {big['wall']:.1f} s."
            )
    p, l_ = results[0], next(r for r in results if r["name"].startswith("LanceDB"))
    extra.insert(
        0,
        f"- puffer local vs LanceDB local: {p['rows_s'] / l_['rows_s']:.2f}x the rows/s "
        f"(puffer fsyncs every WAL entry; LanceDB's write does not promise that).",
    )
    load1 = os.getloadavg()
    extra.append(
        f"- Load average (1 min) at start / end: {load0[0]:.1f} / {load1[0]:.1f} on a machine shared with "
        "other work: wall times are noisy; CPU s is steadier (10x case: CPU of the whole CLI process)."
    )
    command = shlex.join(["python", "benchmarks/bench_ingest.py", *argv])
    section = render(results, command, extra)
    publish(section, START, END, write=not args.no_doc)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data",
        default=default_data(),
        help="benchmark data dir (default $PUFFER_BENCH_DATA or ~/.cache/puffer-bench)",
    )
    ap.add_argument("--skip-s3", action="store_true", help="skip the moto S3 case")
    ap.add_argument("--skip-10x", action="store_true", help="skip the 10x CLI case")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (default 3; the 10x case runs once)")
    ap.add_argument("--no-doc", action="store_true", help="print the table only; do not touch docs/benchmarks.md")
    ap.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        run_case(args)
    else:
        orchestrate(args, argv)


if __name__ == "__main__":
    main()
