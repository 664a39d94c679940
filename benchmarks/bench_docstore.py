"""Doc store cold and warm costs (issue 25): the same GloVe namespace with the column store
(``cols-1``) and with the ``attrs.arrow`` it replaces, on moto (child process), empty
cache per cold query; warm p50 of a filtered ANN and an include_attributes query.

    python benchmarks/bench_docstore.py [--rows N] [--copies 6] [--cold-queries 5] [--warm-queries 50]

Attributes: ``word`` (GloVe's), ``bucket`` = id * 7919 % 100 (int), ``tag`` one of 8
strings (id * 31 % 8): scattered over the segment (its rows are in IVF list order), so
row groups cannot be pruned and bytes ~ the compressed columns a query touches.
The old format is made from the same index: each segment's attrs.arrow written from its
doc store and a manifest naming it, published in meta.json (the files are otherwise the same).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, default_data, log, start_moto

sys.path.insert(0, str(ROOT))

TAGS = ["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white"]


def main() -> None:
    import puffer_cli
    from puffer_cli.index import builder, manifest, segment
    from puffer_cli.index import docs as D
    from puffer_cli.search import engine
    from puffer_cli.store import filecache as cache

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=0, help="first N GloVe rows (0: all 331,479)")
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--cold-queries", type=int, default=5)
    ap.add_argument("--warm-queries", type=int, default=50)
    ap.add_argument("--copies", type=int, default=1, help="the rows plus N-1 noisy copies (bench_scale's: 6 = 2M)")
    ap.add_argument("--forms", default="", help="comma-separated substrings: only the forms named (default: all)")
    ap.add_argument("--new-only", action="store_true", help="skip the attrs.arrow format")
    a = ap.parse_args()
    base = pl.read_parquet(Path(a.data) / "glove-100-angular" / "base.parquet")
    if a.rows:
        base = base.head(a.rows)
    if a.copies > 1:  # bench_scale's noisy copies (new ids, the same words)
        x0 = np.asarray(base["vector"].to_numpy(), dtype=np.float32).reshape(base.height, -1)
        rng = np.random.default_rng(0)
        base = pl.concat(
            [base]
            + [
                base.with_columns(
                    pl.col("id") + j * 10**7,
                    pl.Series("vector", x0 + rng.normal(0, 0.05, x0.shape).astype(np.float32)).cast(
                        base.schema["vector"]
                    ),
                )
                for j in range(1, a.copies)
            ]
        )
    ids = base["id"].to_numpy().astype(np.int64)
    base = base.select(
        "id",
        "vector",
        "word",
        pl.Series("bucket", ids * 7919 % 100),
        pl.Series("tag", np.array(TAGS)[ids * 31 % 8]),
    )
    qs = np.load(Path(a.data) / "glove-100-angular" / "queries.npy")[: max(a.cold_queries, a.warm_queries)]
    server, endpoint = start_moto(process=True)
    try:
        db = puffer_cli.connect("s3://bench/docstore", s3_endpoint=endpoint)
        ns = db.open_namespace("g")
        t0 = time.perf_counter()
        for lo in range(0, base.height, 50_000):
            part = base.slice(lo, 50_000)
            w: dict = {"upsert_columns": {c: part[c].to_list() for c in part.columns}}
            if not lo:  # `word` full-text indexed: the hybrid multi-query's BM25 half
                w["schema"] = {"word": {"type": "string", "full_text_search": True}}
            ns.write(w)
        log(f"written {base.height:,} rows in {time.perf_counter() - t0:.0f}s")
        cache.configure(tempfile.mkdtemp(prefix="puffer-build-"))
        t0 = time.perf_counter()
        builder.index_namespace(ns, gc_grace_s=0)
        log(f"indexed in {time.perf_counter() - t0:.0f}s")
        meta, _ = ns.read_meta()
        ptr_new = meta["index"]
        man = manifest.load_manifest(db.store, ptr_new["manifest"])
        # the old format from the same index
        old = json.loads(json.dumps(man))
        for s in old["segments"]:
            ent = s.pop("docs")
            path = cache.get_cache().file(db.store, ent["key"]) if not ent.get("parts") else None
            data = (
                Path(path).read_bytes() if path else b"".join(db.store.read(k) for k in ent["parts"])
            )  # whole doc store
            tmp = Path(tempfile.mkdtemp()) / "d"
            tmp.write_bytes(data)
            frame = D.read_docs_whole(tmp, ent, s["rows"])
            key = ent["key"].rsplit("/", 1)[0] + "/" + D.ATTRS
            db.store.write(key, D.attrs_bytes(frame, man["schema"]))
            s["attrs"] = key
        old_key = ptr_new["manifest"].replace("manifest-", "manifest-old")
        db.store.write(old_key, json.dumps(old).encode())
        ptr_old = {**ptr_new, "manifest": old_key}
        col_bytes: dict[str, int] = {}
        for s in man["segments"]:
            for c, e in s["docs"]["columns"].items():
                col_bytes[c] = col_bytes.get(c, 0) + e["off"][-1] - e["off"][0]
        attrs_size = sum(len(db.store.read(s["attrs"])) for s in old["segments"])
        log(f"doc store columns (compressed bytes): {col_bytes}; attrs.arrow total {attrs_size:,}")

        def forms(q):
            ann = ["vector", "ANN", q.tolist()]
            return {
                "ANN": {"rank_by": ann, "top_k": 10},
                "ANN + include_attributes": {"rank_by": ann, "top_k": 10, "include_attributes": True},
                # the hybrid's vector half alone (its parts: this and "BM25 + include word")
                "ANN + include word": {"rank_by": ann, "top_k": 10, "include_attributes": ["word"]},
                "ANN + filter tag Eq + include word": {
                    "rank_by": ann,
                    "top_k": 10,
                    "filters": ["tag", "Eq", "red"],
                    "include_attributes": ["word"],
                },
                "order by bucket + filter tag Eq": {
                    "rank_by": ["bucket", "desc"],
                    "top_k": 10,
                    "filters": ["tag", "Eq", "blue"],
                },
                "Count group_by bucket": {"aggregate_by": {"n": ["Count"]}, "group_by": ["bucket"], "top_k": 100},
                "BM25 + include word": {
                    "rank_by": ["word", "BM25", "the house"],
                    "top_k": 10,
                    "include_attributes": ["word"],
                },
                "hybrid multi-query ANN + BM25": {
                    "queries": [
                        {"rank_by": ann, "top_k": 10, "include_attributes": ["word"]},
                        {"rank_by": ["word", "BM25", "the house"], "top_k": 10, "include_attributes": ["word"]},
                    ]
                },
            }

        def use(ptr):
            m, tok = ns.read_meta()
            m["index"] = ptr
            db.store.write(f"{ns.name}/meta.json", json.dumps(m).encode())

        rows = []
        for fmt, ptr in (("attrs.arrow", ptr_old), ("cols-1", ptr_new)):
            if a.new_only and ptr is ptr_old:
                continue
            use(ptr)
            for name in forms(qs[0]):
                if a.forms and not any(f.strip() in name for f in a.forms.split(",")):
                    continue
                rt, req, by, ms = [], [], [], []
                for q in qs[: a.cold_queries]:
                    c = cache.configure(tempfile.mkdtemp(prefix="puffer-cold-"))
                    c.background_fetch = False
                    segment.GENS.clear()
                    manifest.MANIFESTS.clear()
                    t = time.perf_counter()
                    r = engine.run(db.open_namespace("g"), {**forms(q)[name], "consistency": {"level": "eventual"}})
                    ms.append((time.perf_counter() - t) * 1000)
                    p = r["performance"]
                    rt.append(p["object_store_round_trips"])
                    req.append(p["object_store_requests"])
                    by.append(p["object_store_bytes_read"])
                rows.append((fmt, name, max(rt), statistics.median(req), statistics.median(by), statistics.median(ms)))
                log(
                    f"{fmt:12s} {name:38s} rtt {max(rt)} req {statistics.median(req):.0f} "
                    f"bytes {statistics.median(by) / 1e6:.2f} MB  {statistics.median(ms):.0f} ms"
                )
            # warm: whole files cached, generation opened
            from puffer_cli.index.warm import warm

            cache.configure(tempfile.mkdtemp(prefix="puffer-warm-"))
            segment.GENS.clear()
            manifest.MANIFESTS.clear()
            nsw = db.open_namespace("g")
            warm(nsw)
            for name in ("ANN + filter tag Eq + include word", "ANN + include_attributes"):
                lat = []
                for j, q in enumerate(np.concatenate([qs[:5], qs[: a.warm_queries]])):
                    t = time.perf_counter()
                    engine.run_query(nsw, {**forms(q)[name], "consistency": {"level": "eventual"}})
                    if j >= 5:
                        lat.append((time.perf_counter() - t) * 1000)
                log(f"{fmt:12s} warm {name:38s} p50 {statistics.median(lat):.2f} ms")
        use(ptr_new)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
