"""CLI start-up: wall time of whole `puffer` processes (what a shell user waits for).

    python benchmarks/bench_cli_startup.py [--runs 15] [--against DIR]

Times `puffer --version`, `puffer --help`, `puffer query --help` and a query on a small local
store (fixtures/sample.parquet ingested into a temporary directory) as separate processes:
wall time (min and median) and CPU time (user + system of the process, min: less sensitive
to other work on the machine than wall time). Then, per command, what ``python -X importtime``
reports: modules imported and the sum of their own import times (min per module over the
runs). With ``--against DIR`` (another checkout of puffer, e.g. ``git worktree add /tmp/base
main``) every case also runs with ``PYTHONPATH=DIR``, interleaved with this checkout's runs,
so both columns see the same load. Prints markdown tables, the load average and the date.

Compile both checkouts first (``python -m compileall -q puffer_cli``) when
PYTHONDONTWRITEBYTECODE is set: without .pyc files every run compiles every module.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUFFER = str(Path(sys.executable).with_name("puffer"))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], env: dict, cwd: str) -> tuple[float, float]:
    """(wall s, CPU s) of one process."""
    c0, t0 = _cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
    return time.perf_counter() - t0, _cpu() - c0


def import_profile(args: list[str], env: dict, runs: int, cwd: str) -> tuple[int, float]:
    """(modules, ms): what ``puffer *args`` imports and the sum of each module's own import
    time (``-X importtime``, the minimum per module over ``runs`` runs)."""
    best: dict[str, int] = {}
    for _ in range(runs):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "puffer_cli.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,  # not this checkout: `python -m` puts the working directory first on sys.path
            check=True,
        ).stderr
        for m in re.finditer(r"^import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)$", err, re.MULTILINE):
            best[m[2]] = min(int(m[1]), best.get(m[2], 1 << 62))
    return len(best), sum(best.values()) / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--against", help="another checkout of puffer to time beside this one (PYTHONPATH=DIR)")
    args = ap.parse_args()
    env = {**os.environ, "PUFFER_CACHE_DIR": "", "PYTHONPATH": str(ROOT)}
    envs = {"this": env}
    if args.against:
        envs = {"against": {**env, "PYTHONPATH": str(Path(args.against).resolve())}, "this": env}
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        sample = str(ROOT / "fixtures" / "sample.parquet")
        subprocess.run([PUFFER, "ingest", "demo", sample, "--vector", "vector", "--store", store], check=True, env=env)
        subprocess.run([PUFFER, "index", "demo", "--store", store], check=True, env=env, stdout=subprocess.DEVNULL)
        cases = {
            "puffer --version": ["--version"],
            "puffer --help": ["--help"],
            "puffer query --help": ["query", "--help"],
            "puffer query demo --top-k 3 (local, indexed)": ["query", "demo", "--store", store, "--top-k", "3"],
        }
        got: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.runs):
            for name, argv in cases.items():
                for which, e in envs.items():
                    got.setdefault((name, which), []).append(timed([PUFFER, *argv], e, tmp))
        imports = {
            (name, which): import_profile(argv, e, max(3, args.runs // 3), tmp)
            for name, argv in cases.items()
            for which, e in envs.items()
        }
    load = os.getloadavg()
    print(
        f"`python benchmarks/bench_cli_startup.py --runs {args.runs}"
        f"{' --against ' + args.against if args.against else ''}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"load {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} at start, {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at end\n"
    )
    cols = list(envs)
    head = "| command |" + "".join(f" {w}: min s | {w}: median s | {w}: CPU min s |" for w in cols)
    print(head + "\n|---|" + "---:|" * (3 * len(cols)))
    for name in cases:
        cells = ""
        for w in cols:
            wall = [t for t, _ in got[(name, w)]]
            cpu = [c for _, c in got[(name, w)]]
            cells += f" {min(wall):.3f} | {statistics.median(wall):.3f} | {min(cpu):.3f} |"
        print(f"| `{name}` |{cells}")
    print("\n`-X importtime` (modules imported; sum of their own import times, min per module over the runs):\n")
    print("| command |" + "".join(f" {w}: modules | {w}: import ms |" for w in cols))
    print("|---|" + "---:|" * (2 * len(cols)))
    for name in cases:
        cells = "".join(f" {imports[(name, w)][0]} | {imports[(name, w)][1]:.0f} |" for w in cols)
        print(f"| `{name}` |{cells}")


if __name__ == "__main__":
    main()
