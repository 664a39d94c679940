"""Export a consistent snapshot of a namespace at one committed seq, ordered by id."""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import BinaryIO

import polars as pl

from .errors import InvalidRequest
from .namespace import Namespace

FORMATS = ("parquet", "ndjson", "csv")


def snapshot(ns: Namespace, at_seq: int | None = None) -> tuple[pl.DataFrame, int]:
    """(documents ordered by id, the seq they reflect)."""
    ns.require()
    docs, head = ns.docs(at_seq)
    return docs.sort("id"), head.seq


def _csv_ready(df: pl.DataFrame) -> pl.DataFrame:
    out = []
    for c, d in df.schema.items():
        if isinstance(d, (pl.List, pl.Array)):
            out.append(pl.col(c).cast(pl.List(d.inner)).list.eval(pl.element().cast(pl.String))
                       .list.join(",").map_elements(lambda s: f"[{s}]", return_dtype=pl.String).alias(c))
        else:
            out.append(pl.col(c))
    return df.select(out)


def write(df: pl.DataFrame, out: BinaryIO | str | Path, fmt: str) -> None:
    if fmt not in FORMATS:
        raise InvalidRequest(f"unknown export format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        df.write_parquet(out)
    elif fmt == "ndjson":
        df.write_ndjson(out)
    else:
        _csv_ready(df).write_csv(out)


def export(ns: Namespace, out: str | None, fmt: str | None = None, at_seq: int | None = None) -> dict:
    """Write the snapshot to ``out`` (a path, or '-'/None for stdout)."""
    if fmt is None:
        fmt = {".parquet": "parquet", ".csv": "csv"}.get(Path(out).suffix.lower(), "ndjson") if out and out != "-" else "ndjson"
    if fmt not in FORMATS:
        raise InvalidRequest(f"unknown export format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    if (out is None or out == "-") and fmt == "parquet" and sys.stdout.isatty():
        raise InvalidRequest("refusing to write parquet to a terminal", hint="pass -o FILE.parquet")
    df, seq = snapshot(ns, at_seq)
    if out is None or out == "-":
        buf = io.BytesIO()
        write(df, buf, fmt)
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.flush()
    else:
        write(df, out, fmt)
    return {"namespace": ns.name, "rows": df.height, "seq": seq, "format": fmt, "output": out or "-"}
