"""Cold unfiltered ANN under shared routing with and without the list-major stack, on SeaweedFS (issue 24).

    python benchmarks/bench_stack_cold.py --store DIR [--ns g] [--truth NPY] [--queries 20] [--work DIR] [--prune d,0] [--tail d,-1] [--stack-only]

``--store``: a local store whose namespace was indexed under shared routing (so its generation
has a stack: bench_routing's stores, or the 30M mixed set of docs/benchmarks.md); a store of
per-segment IVFs (format 2) runs the segments' lists path only, for comparison.
Building 10M-30M rows inside an S3 server would take this machine hours, so the generation is
copied instead: meta.json, the WAL's newest entry and the files its manifest names go into a SeaweedFS server on
loopback (`weed server -s3`, data under ``--work``), laid out as `puffer index` writes them on an
object store where it matters here: the stack's lists file in ``stack.PART_BYTES`` parts and a
prefetch pack (``index/pack.py``, the builder's own functions) named by the pointer; the other
files stay whole objects (a re-rank row never spans a part in practice).  Then each held-out
GloVe query runs twice against an empty cache, with the stack (its runs read by ranges) and
without it (each segment's lists), interleaved: wall ms, round trips, requests (and per file
kind), bytes read and their share of the namespace's f32 vector bytes, recall@10 against
``--truth`` (top-10 ids per query, as bench_routing and bench_scale save them).  ``--prune``: the
``ann`` prune values each query runs at, in turn (``ivf.override``; d = the default); ``--tail``:
the values of ``ivf.TAIL_GAP_BYTES`` likewise (-1: a shared probe's tail not held near its head).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_data, log, machine, pct, start_seaweedfs, utc_now


def copy_generation(src, dst, ns: str, stack_only: bool = False) -> dict:
    """meta.json and the current generation's files from ``src`` to ``dst``, the stack in parts
    and a prefetch pack as on an object store; returns the manifest as written.  ``stack_only``:
    not the lists files of the segments a stack covers (a query through the stack does not read
    them; the segments' lists path cannot run then)."""
    from puffer_cli.index import pack, stack
    from puffer_cli.index.segwrite import prefetch_keys, vector_prefetch_keys
    from puffer_cli.store import layout

    meta = json.loads(src.read(f"{ns}/meta.json"))
    ptr = meta["index"]
    man = json.loads(src.read(ptr["manifest"]))
    stacks = man.get("ann_stacks", {})
    whole = {e["lists"]["key"] for e in stacks.values() if not e["lists"].get("parts")}
    if stack_only:  # (a key's segment directory is the segment's name)
        covered = {name for e in stacks.values() for name in e["segments"]}
        whole |= {k for k in man["files"] if k.endswith(".lists") and k.rsplit("/", 2)[-2] in covered}
    t0, total = time.time(), 0
    for i, k in enumerate(man["files"]):
        if k == ptr["manifest"] or k in whole:
            continue
        data = src.read(k)
        dst.write(k, data)
        total += len(data)
        if i % 50 == 0:
            log(f"copied {i}/{len(man['files'])} files, {total / 1e9:.1f} GB, {time.time() - t0:.0f} s")
    for e in stacks.values():
        k = e["lists"]["key"]
        if k not in whole:
            continue
        path, pb, parts = src.local_path(k), stack.PART_BYTES, []
        with open(path, "rb") as fh:
            for j, data in enumerate(iter(lambda fh=fh, pb=pb: fh.read(pb), b"")):
                dst.write(f"{k}.{j:05d}", data)
                parts.append(f"{k}.{j:05d}")
        e["lists"] = {"key": k, "parts": parts, "part_bytes": pb, "size": os.path.getsize(path)}
    dst.write(ptr["manifest"], json.dumps(man, sort_keys=True).encode())
    books, segs = man.get("ann_books"), man["segments"]
    ptr["prefetch"] = prefetch_keys(segs, books, stacks)
    ptr["prefetch_vector"] = vector_prefetch_keys(segs, books, stacks)
    sizes = {k: len(src.read(k)) for k in ptr["prefetch_vector"]}
    small, unpacked = pack.plan(ptr["prefetch_vector"], sizes)
    ptr.pop("prefetch_pack", None)
    if small:
        key = ptr["manifest"].rsplit("/", 1)[0] + "/prefetch-bench.zip"
        dst.write(key, pack.build(small, src.read))
        ptr["prefetch_pack"] = {"key": key, "unpacked": unpacked}
    # the WAL's newest entry, which a store keeps whatever its retention (index/retention.py): a
    # reader lists the WAL from it to find the head; without it, a process's first query lists
    # twice (from meta.json's hint, then from the start): a round trip a real store does not pay
    head = layout.wal(ns, int(meta["last_seq"]))
    dst.write(head, src.read(head))
    dst.write(f"{ns}/meta.json", json.dumps(meta).encode())
    log(f"copied the generation: {total / 1e9:.2f} GB in {time.time() - t0:.0f} s; pack of {len(small)} files")
    return man


def count_requests(store) -> collections.Counter:
    """Requests per file kind (the key's last part, digits and hex tags dropped) of ``store``'s class."""
    kinds: collections.Counter = collections.Counter()
    cls = type(store)
    read, read_ranges = cls.read, cls.read_ranges

    def kind(k: str) -> str:
        return re.sub(r"[-.][0-9a-f]{8}|\.\d{5}$|\d+", "", k.rsplit("/", 1)[-1])

    def counted_read(self, key, *a, **kw):
        kinds[kind(key)] += 1
        return read(self, key, *a, **kw)

    def counted_ranges(self, reqs, *a, **kw):
        reqs = list(reqs)
        kinds.update(kind(r[0]) for r in reqs)
        return read_ranges(self, reqs, *a, **kw)

    cls.read, cls.read_ranges = counted_read, counted_ranges
    return kinds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--ns", default="g")
    ap.add_argument("--truth", default=None)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--work", default=None, help="SeaweedFS data dir (default: a temp dir, removed)")
    ap.add_argument("--bench-data", default=default_data())
    ap.add_argument("--stack-only", action="store_true", help="copy and run the stack path only (less disk)")
    ap.add_argument("--prune", default="d", help="ann prune values to run each query at (d = the default), e.g. d,0")
    ap.add_argument(
        "--tail", default="d", help="ivf.TAIL_GAP_BYTES values to run each query at (d = the default), e.g. d,-1"
    )
    a = ap.parse_args()
    import puffer_cli
    from puffer_cli.index import ivf, manifest, segment
    from puffer_cli.schema import types
    from puffer_cli.search import engine
    from puffer_cli.store import filecache as cache

    queries = np.load(Path(a.bench_data) / "glove-100-angular" / "queries.npy")[: a.queries].astype(np.float32)
    truth = np.load(a.truth) if a.truth else None
    work = Path(a.work or tempfile.mkdtemp(prefix="puffer-bench-weed-"))
    stop, endpoint = start_seaweedfs(work)
    try:
        src = puffer_cli.connect(a.store).store
        db = puffer_cli.connect("s3://bench/stack", s3_endpoint=endpoint)
        man = copy_generation(src, db.store, a.ns, a.stack_only)
        rows = int(sum(s["rows"] for s in man["segments"]))
        stacked = list(man.get("ann_stacks") or {})
        # the stacked vector field; a store without a stack (format 2, or too few rows): its first vector field
        field = stacked[0] if stacked else next(f for s in man["segments"] for f in s.get("ann", {}))
        vec_bytes = rows * int(types.vector_dims(man["schema"][field]["type"]) or 0) * 4
        kinds = count_requests(db.store)
        real = segment.Generation.stack
        paths = ["stack"] if a.stack_only else ["stack", "segments' lists"] if stacked else ["segments' lists"]
        prunes = [None if v == "d" else float(v) for v in a.prune.split(",")]
        tails = [ivf.TAIL_GAP_BYTES if v == "d" else int(float(v)) for v in a.tail.split(",")]
        res: dict[tuple[str, float | None, int], list] = {(m, v, t): [] for m in paths for v in prunes for t in tails}
        load0 = os.getloadavg()
        for j, q in enumerate(queries):
            for mode, prune, tail in res:
                segment.Generation.stack = real if mode == "stack" else (lambda self, f, fetch=False: None)
                c = cache.configure(tempfile.mkdtemp(prefix="puffer-bench-cold-"))
                c.background_fetch = False
                segment.GENS.clear()
                manifest.MANIFESTS.clear()
                kinds.clear()
                body = {"rank_by": [field, "ANN", q.tolist()], "top_k": 10, "consistency": {"level": "eventual"}}
                t = time.perf_counter()
                kept, ivf.TAIL_GAP_BYTES = ivf.TAIL_GAP_BYTES, tail
                try:
                    with ivf.override(prune=prune):
                        r = engine.run_query(db.open_namespace(a.ns), body)
                finally:
                    ivf.TAIL_GAP_BYTES = kept
                ms = (time.perf_counter() - t) * 1000
                p = r["performance"]
                hit = len({x["id"] for x in r["rows"]} & set(truth[j].tolist())) if truth is not None else 0
                res[(mode, prune, tail)].append(
                    (ms, p["object_store_round_trips"], p["object_store_requests"], p["object_store_bytes_read"], hit)
                )
                log(
                    f"q{j} {mode} prune={prune} tail={tail}: {ms:.0f} ms, {p['object_store_round_trips']} RT, {p['object_store_requests']} req, "
                )
                log(
                    f"    {p['object_store_bytes_read'] / 1e6:.1f} MB, hits {hit}; by file {dict(kinds.most_common(8))}"
                )
                shutil.rmtree(c.root, ignore_errors=True)
        segment.Generation.stack = real
        print(f"- Command: `python benchmarks/bench_stack_cold.py {' '.join(sys.argv[1:])}`")
        print(
            f"- Machine: {machine()}; date {utc_now()}; load {load0[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end"
        )
        print(f"- {rows:,} rows, {len(man['segments'])} segments; {a.queries} queries, each with an empty cache\n")
        print(
            "| path | prune | tail gap | ms p50 | round trips p50 / max | requests p50 / max | MB p50 | of the vector bytes "
            "p50 / mean / p90 / max | recall@10 |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for (mode, prune, tail), xs in res.items():
            x = np.array(xs, float)
            rec = f"{x[:, 4].sum() / (10 * len(x)):.3f}" if truth is not None else "-"
            share = (pct(x[:, 3], 50), x[:, 3].mean(), pct(x[:, 3], 90), x[:, 3].max())
            print(
                f"| {mode} | {'default' if prune is None else prune} | {tail} | {pct(x[:, 0], 50):,.0f} | {pct(x[:, 1], 50):.0f} / {x[:, 1].max():.0f} | "
                f"{pct(x[:, 2], 50):.0f} / {x[:, 2].max():.0f} | {pct(x[:, 3], 50) / 1e6:.1f} | "
                f"{' / '.join(f'{v / vec_bytes * 100:.2f}%' for v in share)} | {rec} |"
            )
    finally:
        stop()
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
