"""WAL retention: bytes on the bucket before and after the indexer collects covered WAL entries.

    python benchmarks/bench_retention.py [--size 2M] [--work DIR]

Builds bench_scale's set of the size (GloVe-100 + noisy copies), ingests it into a local store
(`puffer ingest`, 50,000 rows per WAL entry), indexes it, then runs `puffer index --wal-retention 0`
twice (the first run makes the current generation the retention candidate, the second turns it
into the floor and deletes the entries it covers) and prints the WAL / index / total bytes of
each step, with the export's row count as a check that nothing was lost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_data, log  # noqa: E402

PUFFER = str(Path(sys.executable).with_name("puffer"))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sizes(ns_dir: Path) -> tuple[int, int, int]:
    wal, index = du(ns_dir / "wal"), du(ns_dir / "index") if (ns_dir / "index").exists() else 0
    return wal, index, du(ns_dir)


def main() -> None:
    import polars as pl

    from bench_scale import SIZES, make_parts

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="2M", choices=sorted(SIZES))
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="puffer-retention-"))
    parts_dir = work / f"parts-{a.size}"
    base = pl.read_parquet(Path(default_data()) / "glove-100-angular" / "base.parquet")
    rows = make_parts(base, SIZES[a.size], parts_dir)
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    env = {**os.environ, "PUFFER_CACHE_DIR": ""}
    parts = sorted(str(p) for p in parts_dir.glob("part-*.parquet"))
    t0 = time.time()
    subprocess.run([PUFFER, "ingest", "g", *parts, "--vector", "vector", "--store", str(store)], check=True, env=env)
    steps = [("ingested", sizes(store / "g"))]
    log(f"ingested {rows:,} rows in {time.time() - t0:.0f}s")
    subprocess.run([PUFFER, "index", "g", "--store", str(store)], check=True, env=env, stdout=subprocess.DEVNULL)
    steps.append(("indexed (retention default: 7 days)", sizes(store / "g")))
    for i in (1, 2):
        cmd = [PUFFER, "index", "g", "--store", str(store), "--wal-retention", "0"]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        steps.append((f"index --wal-retention 0, run {i}", sizes(store / "g")))
    out = work / "export.parquet"
    subprocess.run([PUFFER, "export", "g", "-o", str(out), "--store", str(store)], check=True, env=env)
    exported = pl.scan_parquet(out).select(pl.len()).collect().item()
    load = os.getloadavg()
    print(
        f"`python benchmarks/bench_retention.py --size {a.size}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{rows:,} rows, load {load[0]:.1f}\n"
    )
    print("| step | WAL MB | index MB | namespace MB |\n|---|---:|---:|---:|")
    for name, (w, i, t) in steps:
        print(f"| {name} | {w / 1e6:,.1f} | {i / 1e6:,.1f} | {t / 1e6:,.1f} |")
    print(f"\nexport after collection: {exported:,} rows (ingested {rows:,})")
    assert exported == rows


if __name__ == "__main__":
    main()
