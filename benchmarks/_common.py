"""Helpers shared by the benchmark scripts (run as ``python benchmarks/bench_X.py``).

The scripts import this module as ``_common``: running ``python benchmarks/bench_X.py`` puts the
``benchmarks`` directory first on ``sys.path``, and each script also inserts it explicitly so that the
import does not depend on how the script was started.  Only the standard library is imported at module
level, so ``--help`` works without the benchmark extras installed.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"

HEADER = (
    "# Benchmarks\n\nResults of `nox -s bench` (scripts in `benchmarks/`), each section written by its "
    "own script on the machine named in it. Data: `../shared/data/prepare.py`.\n"
)


# ---------------------------------------------------------------- running
def default_data() -> str:
    """Benchmark data dir: ``$PUFFER_BENCH_DATA`` or ``~/.cache/puffer-bench``."""
    return os.environ.get("PUFFER_BENCH_DATA") or os.path.expanduser("~/.cache/puffer-bench")


def log(*a) -> None:
    """Progress line on stderr (stdout carries the section text)."""
    print(*a, file=sys.stderr, flush=True)


_MOTO_CHILD = (
    "import logging, sys, time\n"
    "logging.getLogger('werkzeug').setLevel(logging.ERROR)\n"
    "from moto.server import ThreadedMotoServer\n"
    "s = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
    "s.start()\n"
    "print(s.get_host_and_port()[1], flush=True)\n"
    "sys.stdin.read()\n"  # until the parent closes our stdin (or dies)
)


class _MotoProcess:
    """A moto server in a child process (``stop()`` ends it)."""

    def __init__(self):
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, "-c", _MOTO_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.port = int(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def start_moto(process: bool = False):
    """A moto S3 server on loopback with bucket ``bench``; returns (server, endpoint).

    ``process=False``: in this process (``ThreadedMotoServer``), so the server's request
    handling shares this interpreter's GIL with the client being measured.
    ``process=True``: in a child process, as any real S3 server runs: its CPU no longer
    queues behind the client's (on a 2-core machine a parallel batch of loopback GETs
    costs about 2.4 ms each this way against 5.9 ms in-process)."""
    for k, v in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(k, v)
    import logging

    if process:
        server = _MotoProcess()
        endpoint = f"http://127.0.0.1:{server.port}"
    else:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request log lines
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    return server, endpoint


# ---------------------------------------------------------------- statistics
def pct(xs, p) -> float:
    """``p``-th percentile of ``xs`` (numpy's default linear interpolation); NaN when ``xs`` is empty."""
    import numpy as np

    return float(np.percentile(np.asarray(xs), p)) if len(xs) else float("nan")


def warm_ann(ns, queries, truth, n_warm: int, scanned: list, count) -> tuple[float, list[float], list]:
    """Top-10 ANN queries of ``queries`` (the first ``n_warm`` also run before, unmeasured) on
    ``ns``: (recall@10 against ``truth``, latencies ms, ``count(scanned)`` per measured query).
    ``scanned``: the list a caller's spy appends to during a query (cleared before each)."""
    import time

    import numpy as np
    from puffer_cli.search import engine

    lat, hits, per_q = [], 0, []
    for j, q in enumerate(np.concatenate([queries[:n_warm], queries])):
        body = {"rank_by": ["vector", "ANN", q.tolist()], "top_k": 10, "consistency": {"level": "eventual"}}
        scanned.clear()
        t = time.perf_counter()
        rows = engine.run_query(ns, body)["rows"]
        el = time.perf_counter() - t
        if j >= n_warm:
            lat.append(el * 1000)
            per_q.append(count(scanned))
            hits += len({r["id"] for r in rows} & set(truth[j - n_warm].tolist()))
    return hits / (10 * len(queries)), lat, per_q


def ndcg10(ranked: list, rel: set) -> float:
    """nDCG@10 with binary relevance: ``ranked`` ids against the relevant set ``rel``."""
    dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in rel)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(10, len(rel))))
    return dcg / ideal if ideal else 0.0


# ---------------------------------------------------------------- report
def machine() -> str:
    """``"<cores> cores, <memory> GiB, <platform>"`` (cores usable by this process)."""
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores, {round(mem / 2**30)} GiB, {platform.platform()}"


def versions(*pkgs: str) -> str:
    """``"pkg 1.2, other (not installed), Python 3.x.y"`` for the given distributions."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in pkgs:
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out) + f", Python {platform.python_version()}"


def utc_now() -> str:
    """Current time as ``YYYY-MM-DD HH:MM UTC``."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def section_head(title: str, command: str, pkgs: tuple[str, ...] = ()) -> list[str]:
    """First lines of a section: ``## title``, then Command, Machine, Date and (if ``pkgs``) Versions."""
    lines = [f"## {title}", "", f"- Command: `{command}`", f"- Machine: {machine()}", f"- Date: {utc_now()}"]
    if pkgs:
        lines.append(f"- Versions: {versions(*pkgs)}")
    return lines


def publish(section: str, start: str, end: str, write: bool = True) -> None:
    """Print ``section``; unless ``write`` is false, also put it between its markers in docs/benchmarks.md."""
    print(section)
    if write:
        write_section(DOC, start, end, section)
        log(f"wrote {DOC.relative_to(ROOT)}")


def write_section(doc: Path, start: str, end: str, section: str) -> None:
    """Replace the text between ``start`` and ``end`` markers in ``doc`` (append if absent)."""
    block = f"{start}\n{section}{end}"
    if doc.exists():
        text = doc.read_text()
    else:
        doc.parent.mkdir(parents=True, exist_ok=True)
        text = HEADER
    if start in text and end in text and text.index(start) < text.index(end):
        a, b = text.index(start), text.index(end) + len(end)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)


def stop_process(proc, timeout: float = 30) -> None:
    """SIGTERM a child (a `puffer serve`), wait for it, SIGKILL it if it does not stop."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_seaweedfs(base: Path, bucket: str = "bench"):
    """A SeaweedFS server on loopback, its data under ``base``, with ``bucket`` made: (stop,
    endpoint); the test suite's launcher (tests/seaweedfs.py), with volumes of 1 GB (a 30M
    namespace's index is ~15 GB)."""
    sys.path.insert(0, str(ROOT))
    from tests import seaweedfs

    return seaweedfs.start(base, bucket, volume_mb=1024, wait_s=120)
