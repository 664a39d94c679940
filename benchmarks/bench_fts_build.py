"""Full-text build at scale (issue 25): docs/s, peak RSS and bytes vs tantivy, one run.

    python benchmarks/bench_fts_build.py [--sizes 126k,1M,10M] [--index-sizes 126k,1M]
                                         [--tantivy-sizes 126k,1M] [--work DIR] [--no-write]

Data: GCIDE dictionary entries (``../shared/data/prepare.py``; 126,236 documents), cycled
to the size (copies, as the namespaces of issue 25's table).  Options as bench_index's
gcide case: English, stemming, stop words kept.  Rows:

* ``blk-1 build``: ``fts.build_blocks`` of the text column in a child process, one call per
  segment of at most ``SEGMENT_MAX_ROWS`` rows (what ``puffer index`` does for a bigger
  namespace: 10M documents are 10 segments); wall time, CPU time of the process (all
  threads), docs/s, peak RSS of the child (the text it holds included), file bytes;
* ``tantivy``: a tantivy index of the same text with the same analyzer (term frequencies,
  no positions, nothing stored: what blk-1 holds), built with 2 writer threads, committed
  and merged; its directory's bytes;
* ``puffer index``: ``builder.index_namespace`` (what ``puffer index`` runs) in a child
  process, of a namespace of ``id`` + ``text`` written in 50,000-row batches first (not
  timed); wall, CPU, peak RSS, and the full-text stage alone (its progress callbacks).

Writes its section of docs/benchmarks.md with the command, machine, date and the load
average beside every row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_data, log, publish, section_head  # noqa: E402

START, END = "<!-- bench_fts_build:start -->", "<!-- bench_fts_build:end -->"
FTS = {"language": "english", "stemming": True, "remove_stopwords": False}
SIZES = {"126k": 126_236, "1M": 1_000_000, "10M": 10_000_000}


def _texts(n: int, start: int = 0):
    """Rows ``start .. start + n`` of gcide's text cycled (a polars String Series)."""
    import polars as pl

    src = pl.read_parquet(os.path.join(default_data(), "gcide", "docs.parquet"), columns=["text"])["text"]
    k = len(src)
    parts, a = [], start
    while a < start + n:
        i = a % k
        take = min(k - i, start + n - a)
        parts.append(src.slice(i, take))
        a += take
    return pl.concat(parts).rechunk()


def _load() -> float:
    return os.getloadavg()[0]


def child_blocks(n: int) -> dict:
    from puffer_cli.index import fts
    from puffer_cli.index.builder import SEGMENT_MAX_ROWS
    from puffer_cli.text import analyzer as T

    opts = T.normalize_fts_options(FTS)
    wall = cpu = 0.0
    size = 0
    for a in range(0, n, SEGMENT_MAX_ROWS):
        col = _texts(min(SEGMENT_MAX_ROWS, n - a), a)
        t, c = time.perf_counter(), time.process_time()
        data, _ent, _st, _new = fts.build_blocks(col, opts)
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
        size += len(data)
        del col, data
    return {"wall": wall, "cpu": cpu, "bytes": size, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child_tantivy(n: int, d: str) -> dict:
    import tantivy
    from puffer_cli.text import analyzer as T

    opts = T.normalize_fts_options(FTS)
    col = _texts(n)
    t, c = time.perf_counter(), time.process_time()
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("t", stored=False, tokenizer_name=T.analyzer_name(opts), index_option="freq")
    idx = tantivy.Index(sb.build(), path=d)
    T.register(idx, opts)
    w = idx.writer(heap_size=400_000_000, num_threads=2)
    for v in col.to_list():
        doc = tantivy.Document()
        if v is not None:
            doc.add_text("t", v)
        w.add_document(doc)
    w.commit()
    w.wait_merging_threads()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if not f.endswith(".lock"))
    return {"wall": wall, "cpu": cpu, "bytes": size, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _child(args: list[str]) -> tuple[dict, float, float]:
    """Run this script as a child; (its JSON result, wall s, its peak RSS bytes)."""
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE)
    out = p.stdout.read() if p.stdout else b""
    _pid, status, ru = os.wait4(p.pid, 0)
    if status:
        raise SystemExit(f"child {args} failed ({status})")
    return json.loads(out.decode().strip().splitlines()[-1]), time.perf_counter() - t, ru.ru_maxrss * 1024.0


def _ingest(store: str, n: int) -> None:
    import polars as pl
    import puffer_cli

    ns = puffer_cli.connect(store).open_namespace("g")
    schema = {"text": {"type": "string", "full_text_search": FTS}}
    for a in range(0, n, 50_000):
        col = _texts(min(50_000, n - a), a)
        frame = pl.DataFrame({"id": pl.arange(a, a + len(col), dtype=pl.UInt64, eager=True), "text": col})
        ns.write_frame(frame, schema=schema if a == 0 else None)


def child_index(store: str) -> dict:
    """``index_namespace`` (what ``puffer index`` runs) with the time spent in ``fts`` stages."""
    import puffer_cli
    from puffer_cli.index import builder

    ns = puffer_cli.connect(store).open_namespace("g")
    spent = {"fts": 0.0}
    cur: list = [None, 0.0]
    peak = {"fts": 0, "other": 0}
    stages: dict[str, int] = {}  # peak RSS by stage (first word of its progress name)
    stop = threading.Event()
    page = os.sysconf("SC_PAGE_SIZE")

    def sample() -> None:  # RSS every 20 ms, by stage (the full-text stage vs the rest)
        while not stop.wait(0.02):
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page
            k = "fts" if str(cur[0]).startswith("fts") else "other"
            peak[k] = max(peak[k], rss)
            st = str(cur[0]).split(" ")[0]
            stages[st] = max(stages.get(st, 0), rss)

    threading.Thread(target=sample, daemon=True).start()

    def progress(stage: str, done: int, total: int | None) -> None:
        now = time.perf_counter()
        if cur[0] is not None and str(cur[0]).startswith("fts"):
            spent["fts"] += now - cur[1]
        cur[0], cur[1] = stage, now
        if stage.startswith("fts") and total is not None and done >= total:
            cur[0] = None  # the stage's last note: _write_fts is done

    t, c = time.perf_counter(), time.process_time()
    rep = builder.index_namespace(ns, gc_grace_s=0, progress=progress)
    progress("done", 0, None)
    stop.set()
    return {
        "wall": time.perf_counter() - t,
        "cpu": time.process_time() - c,
        "fts": spent["fts"],
        "rss_fts": peak["fts"],
        "rss_other": peak["other"],
        "rss_stages": {k: round(v / 1e9, 2) for k, v in stages.items()},
        "rep": rep.summary(),
    }


def index_run(work: str, n: int) -> dict:
    store = os.path.join(work, f"store-{n}")
    shutil.rmtree(store, ignore_errors=True)
    t = time.perf_counter()
    _ingest(store, n)
    ingest = time.perf_counter() - t
    load = _load()
    res, _wall, rss = _child(["--child-index", store])
    shutil.rmtree(store, ignore_errors=True)
    return {"n": n, "ingest": ingest, "rss": rss, "load": load, **res}


def gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


def mb(x: float) -> str:
    return f"{x / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="126k,1M,10M")
    ap.add_argument("--index-sizes", default="126k,1M")
    ap.add_argument("--tantivy-sizes", default="126k,1M")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--no-write", action="store_true", help="print, do not update docs/benchmarks.md")
    ap.add_argument("--child-blocks", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-tantivy", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--child-index", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child_blocks:
        print(json.dumps(child_blocks(a.child_blocks)))
        return
    if a.child_index:
        print(json.dumps(child_index(a.child_index)))
        return
    if a.child_tantivy:
        print(json.dumps(child_tantivy(int(a.child_tantivy[0]), a.child_tantivy[1])))
        return
    command = "python benchmarks/bench_fts_build.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    work = a.work or tempfile.mkdtemp(prefix="puffer-ftsb-")
    sizes = [s for s in a.sizes.split(",") if s]
    small = [s for s in sizes if (SIZES.get(s) or int(s)) <= 1_000_000]
    rows = [
        "| documents | blk-1 build wall | docs/s | CPU (all threads) | docs per CPU-second | peak RSS | blk-1 bytes | load |"
    ]
    rows.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    trows = [
        "| documents | tantivy build wall | CPU | peak RSS | tantivy bytes | blk-1 bytes | blk-1 / tantivy | load |"
    ]
    trows.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    irows = [
        "| documents | `puffer index` wall | docs/s | CPU | peak RSS | full-text stage | full-text docs/s "
        "| peak RSS in it | elsewhere | load |"
    ]
    irows.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes: list[str] = []
    blk: dict[str, dict] = {}

    def blocks(s: str) -> None:
        n = SIZES.get(s) or int(s)
        load = _load()
        res, _wall, rss = _child(["--child-blocks", str(n)])
        blk[s] = res
        log(f"blk-1 {s}: {res} rss {gb(rss)}")
        rows.append(
            f"| {s} ({n:,}) | {res['wall']:.1f} s | {n / res['wall']:,.0f} | {res['cpu']:.1f} s "
            f"| {n / res['cpu']:,.0f} | {gb(rss)} | {mb(res['bytes'])} | {load:.1f} |"
        )

    def render() -> None:
        lines = section_head("Full-text build at scale (blk-1, issue 25)", command, ("polars", "tantivy"))
        lines += [
            "- Data: GCIDE entries (126,236) cycled to the size, English with stemming, stop words kept; "
            "a size above 1M documents is built as segments of 1M rows (SEGMENT_MAX_ROWS), as `puffer index` does.",
            "- load: 1-minute load average when the row started (the machine is shared: wall times stretch with "
            "the load; CPU time, all threads of the process, is the steadier figure, and on an idle 2-core "
            "machine the wall time is at least half of it).",
            "",
            *rows,
            "",
            *trows,
            "",
            *irows,
            "",
            *notes,
            "",
        ]
        publish("\n".join(lines), START, END, write=not a.no_write)

    for s in small:
        blocks(s)
    for s in [s for s in a.tantivy_sizes.split(",") if s]:
        n = SIZES.get(s) or int(s)
        d = os.path.join(work, f"tantivy-{s}")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        load = _load()
        res, _wall, rss = _child(["--child-tantivy", str(n), d])
        shutil.rmtree(d, ignore_errors=True)
        log(f"tantivy {s}: {res} rss {gb(rss)}")
        mine = blk.get(s, {}).get("bytes")
        ratio = f"{mine / res['bytes']:.2f}" if mine else "-"
        trows.append(
            f"| {s} ({n:,}) | {res['wall']:.1f} s | {res['cpu']:.1f} s | {gb(rss)} | {mb(res['bytes'])} "
            f"| {mb(mine) if mine else '-'} | {ratio} | {load:.1f} |"
        )
    for s in [s for s in a.index_sizes.split(",") if s]:
        n = SIZES.get(s) or int(s)
        r = index_run(work, n)
        log(f"puffer index {s}: {r}")
        notes.append(f"- `puffer index` {s}: peak RSS (GB) by stage: {r['rss_stages']}")
        irows.append(
            f"| {s} ({n:,}) | {r['wall']:.1f} s | {n / r['wall']:,.0f} | {r['cpu']:.1f} s | {gb(r['rss'])} "
            f"| {r['fts']:.1f} s | {n / r['fts']:,.0f} | {gb(r['rss_fts'])} | {gb(r['rss_other'])} | {r['load']:.1f} |"
        )
    big = [s for s in sizes if s not in small]
    if big:
        render()  # what is measured so far, in case the big sizes do not finish
    for s in big:
        blocks(s)
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    render()


if __name__ == "__main__":
    main()
