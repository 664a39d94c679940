"""CLI start-up: wall time of whole `puffer` processes (what a shell user waits for).

    python benchmarks/bench_cli_startup.py [--runs 15]

Times `puffer --version`, `puffer --help`, `puffer query --help` and a query on a small local
store (fixtures/sample.parquet ingested into a temporary directory) as separate processes, and
the import time of the CLI module (`python -X importtime`). Prints a markdown table with the
minimum and median of each, the machine's load average and the date.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUFFER = str(Path(sys.executable).with_name("puffer"))


def timed(cmd: list[str], runs: int, env: dict) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        out.append(time.perf_counter() - t0)
    return out


def import_ms(module: str) -> float:
    """Cumulative import time of ``module`` in a fresh interpreter (ms)."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True, check=True
    ).stderr
    last = [ln for ln in err.splitlines() if re.search(rf"\|\s+{re.escape(module)}$", ln)]
    return int(last[-1].split("|")[1]) / 1000 if last else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PUFFER_CACHE_DIR": ""}
        store = str(Path(tmp) / "store")
        sample = str(ROOT / "fixtures" / "sample.parquet")
        subprocess.run([PUFFER, "ingest", "demo", sample, "--vector", "vector", "--store", store], check=True, env=env)
        subprocess.run([PUFFER, "index", "demo", "--store", store], check=True, env=env, stdout=subprocess.DEVNULL)
        cases = {
            "puffer --version": [PUFFER, "--version"],
            "puffer --help": [PUFFER, "--help"],
            "puffer query --help": [PUFFER, "query", "--help"],
            "puffer query demo --top-k 3 (local, indexed)": [PUFFER, "query", "demo", "--store", store, "--top-k", "3"],
        }
        rows = [(name, timed(cmd, args.runs, env)) for name, cmd in cases.items()]
    load = os.getloadavg()
    print(
        f"`python benchmarks/bench_cli_startup.py --runs {args.runs}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
    )
    print("| command | min s | median s |\n|---|---:|---:|")
    for name, ts in rows:
        print(f"| `{name}` | {min(ts):.3f} | {statistics.median(ts):.3f} |")
    print(
        f"\nimport puffer_cli.cli.main: {import_ms('puffer_cli.cli.main'):.0f} ms; "
        f"import puffer_cli.db (the engine): {import_ms('puffer_cli.db'):.0f} ms"
    )


if __name__ == "__main__":
    main()
