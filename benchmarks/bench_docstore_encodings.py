"""Sizes and decode times of doc store encodings on GloVe 331k attributes (issue 25):
attrs.arrow, zstd Arrow IPC per column chunk, Parquet (polars) at 16k / 64k rows per group.

    python benchmarks/bench_docstore_encodings.py [base.parquet]
"""

import io
import sys
import time

import numpy as np
import polars as pl

df = pl.read_parquet(
    sys.argv[1] if len(sys.argv) > 1 else "/root/.cache/puffer-bench/glove-100-angular/base.parquet"
).drop("vector")
n = df.height
tags = np.array(["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white"])
df = df.with_columns(
    pl.Series("bucket", (df["id"].to_numpy() % 100).astype(np.int64)),
    pl.Series("tag", tags[(df["id"].to_numpy() * 7919) % 8]),
)
print(n, df.columns)


def ipc(d, comp):
    b = io.BytesIO()
    d.write_ipc(b, compression=comp)
    return b.getvalue()


whole = ipc(df, "uncompressed")
print("attrs.arrow uncompressed", len(whole))
for G in (16384, 65536):
    tot = {}
    tdec = {}
    for c in df.columns:
        chunks = [ipc(df.select(c).slice(a, G), "zstd") for a in range(0, n, G)]
        tot[c] = sum(map(len, chunks))
        t = time.perf_counter()
        for ch in chunks:
            pl.read_ipc(io.BytesIO(ch))
        tdec[c] = (time.perf_counter() - t) * 1000
    print(
        f"IPC zstd per column chunk G={G}: total {sum(tot.values()):,}",
        {c: f"{tot[c]:,}B {tdec[c]:.1f}ms" for c in tot},
        "chunks/col",
        -(-n // G),
    )
    for comp in ("zstd", "lz4"):
        sz = {}
        for c in df.columns:
            b = io.BytesIO()
            df.select(c).write_parquet(b, compression=comp, row_group_size=G, statistics=True)
            sz[c] = len(b.getvalue())
        b = io.BytesIO()
        df.write_parquet(b, compression=comp, row_group_size=G, statistics=True)
        t = time.perf_counter()
        pl.read_parquet(io.BytesIO(b.getvalue()), columns=["word"])
        td = (time.perf_counter() - t) * 1000
        print(
            f"parquet {comp} G={G}: total {len(b.getvalue()):,}; per column alone",
            {c: f"{v:,}" for c, v in sz.items()},
            f"decode word {td:.1f}ms",
        )
t = time.perf_counter()
pl.read_ipc(io.BytesIO(whole))
print("read whole uncompressed ipc ms", (time.perf_counter() - t) * 1000)
