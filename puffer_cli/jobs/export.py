"""Export a consistent snapshot of a namespace at one committed seq, ordered by id."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import BinaryIO

import polars as pl

from puffer_cli.errors import InvalidRequest
from puffer_cli.wal.namespace import Namespace

FORMATS = ("parquet", "ndjson", "csv")


def snapshot(ns: Namespace, at_seq: int | None = None) -> tuple[pl.DataFrame, int]:
    """(documents ordered by id, the seq they reflect)."""
    head = ns.require()
    if at_seq is not None and not 1 <= at_seq <= head.seq:
        raise InvalidRequest(
            f"--at-seq {at_seq}: seq {at_seq} is not committed (committed seqs of {ns.name!r}: 1..{head.seq})",
            hint=f"`puffer wal-inspect {ns.name}` lists the committed seqs",
        )
    docs, head = ns.docs(at_seq)
    if "id" not in docs.columns:  # every row deleted before this seq: an empty frame with no columns
        return docs, head.seq
    return docs.sort("id"), head.seq


def _csv_ready(df: pl.DataFrame) -> pl.DataFrame:
    out = []
    for c, d in df.schema.items():
        if isinstance(d, (pl.List, pl.Array)):
            # JSON lists, which `puffer ingest --vector COL --schema ...` parses back
            out.append(
                pl.col(c)
                .cast(pl.List(d.inner))
                .map_elements(
                    lambda v: json.dumps(list(v), ensure_ascii=False, separators=(",", ":")), return_dtype=pl.String
                )
                .alias(c)
            )
        else:
            out.append(pl.col(c))
    return df.select(out)


WRITE_SLICE_ROWS = 100_000  # text formats are written (and their progress told) this many rows at a time


def write(df: pl.DataFrame, out: BinaryIO | str | Path, fmt: str, progress=None) -> None:
    """Write ``df`` as ``fmt``; ``progress("rows written", done, total)`` after each slice."""
    if fmt not in FORMATS:
        raise InvalidRequest(f"unknown export format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    note = progress or (lambda *a: None)
    if fmt == "parquet" or df.height <= WRITE_SLICE_ROWS:  # parquet: one write (its row groups are polars')
        note("rows written", 0, df.height)
        if fmt == "parquet":
            df.write_parquet(out)
        elif fmt == "ndjson":
            df.write_ndjson(out)
        else:
            _csv_ready(df).write_csv(out)
        note("rows written", df.height, df.height)
        return
    fh = open(out, "wb") if isinstance(out, (str, Path)) else out  # noqa: SIM115 - closed below
    try:
        for start in range(0, df.height, WRITE_SLICE_ROWS):
            part = df.slice(start, WRITE_SLICE_ROWS)
            if fmt == "ndjson":
                part.write_ndjson(fh)
            else:
                _csv_ready(part).write_csv(fh, include_header=start == 0)
            note("rows written", start + part.height, df.height)
    finally:
        if fh is not out:
            fh.close()


def export(ns: Namespace, out: str | None, fmt: str | None = None, at_seq: int | None = None, progress=None) -> dict:
    """Write the snapshot to ``out`` (a path, or '-'/None for stdout); ``progress(stage, done,
    total)`` is told the rows read, then the rows written."""
    if fmt is None:
        fmt = (
            {".parquet": "parquet", ".csv": "csv"}.get(Path(out).suffix.lower(), "ndjson")
            if out and out != "-"
            else "ndjson"
        )
    if fmt not in FORMATS:
        raise InvalidRequest(f"unknown export format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    if (out is None or out == "-") and fmt == "parquet" and sys.stdout.isatty():
        raise InvalidRequest("refusing to write parquet to a terminal", hint="pass -o FILE.parquet")
    if out is not None and out != "-":
        _check_output(out)
    df, seq = snapshot(ns, at_seq)
    if progress:
        progress("rows read", df.height, df.height)
    if out is None or out == "-":
        buf = io.BytesIO()
        write(df, buf, fmt, progress)
        stdout = getattr(sys.stdout, "buffer", None)
        if stdout is None:  # a text-only stdout (tests, embedding): parquet cannot go there
            sys.stdout.write(buf.getvalue().decode("utf-8", "replace"))
        else:
            stdout.write(buf.getvalue())
        sys.stdout.flush()
    else:
        _write_file(df, out, fmt, progress)
    return {"namespace": ns.name, "rows": df.height, "seq": seq, "format": fmt, "output": out or "-"}


def _check_output(out: str) -> None:
    """Refuse an unusable ``-o`` before any work (nothing is written then)."""
    p = Path(out)
    if p.is_dir():
        raise InvalidRequest(f"-o {out}: is a directory", hint="name a file, e.g. -o export.parquet")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise InvalidRequest(f"-o {out}: directory {str(parent)!r} does not exist", hint="create it first")
    if not parent.is_dir():
        raise InvalidRequest(f"-o {out}: {str(parent)!r} is not a directory", hint="name a file in a directory")


def _write_file(df: pl.DataFrame, out: str, fmt: str, progress=None) -> None:
    """Write to a temporary file beside ``out`` and rename it into place: a failed
    export leaves no partial file (and an existing ``out`` untouched)."""
    p = Path(out)
    if p.exists() and not p.is_file():  # /dev/null, a FIFO: write straight to it
        tmp = p
    else:
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        write(df, tmp, fmt, progress)
        if tmp != p:
            os.replace(tmp, p)
    except (OSError, pl.exceptions.PolarsError) as e:
        why = getattr(e, "strerror", None) or str(e).split(" (os error")[0]
        raise InvalidRequest(
            f"-o {out}: cannot write it ({why})", hint="check the directory exists, is writable and has space"
        ) from None
    finally:
        try:
            if tmp != p:
                tmp.unlink()
        except OSError:
            pass
