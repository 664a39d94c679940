"""Batch-load parquet / ndjson / csv into a namespace, one WAL entry per chunk.

Input is streamed with polars (``scan_* ... collect_batches``), so memory is
bounded by ``batch_rows`` however large the input.  Re-running an ingest is an
upsert: idempotent by id.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from puffer_cli.errors import InvalidRequest
from puffer_cli.schema import frames, types
from puffer_cli.schema import spec as S
from puffer_cli.wal.namespace import Namespace

FORMATS = ("parquet", "ndjson", "csv")
DEFAULT_BATCH_ROWS = 50_000


@dataclass
class IngestReport:
    namespace: str
    rows: int = 0
    entries: int = 0
    bytes_in: int = 0
    seconds: float = 0.0
    first_seq: int | None = None
    last_seq: int | None = None
    files: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {
            "namespace": self.namespace,
            "rows": self.rows,
            "wal_entries": self.entries,
            "bytes": self.bytes_in,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows_per_s),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "files": self.files,
        }


def detect_format(path: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise InvalidRequest(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    by_suffix = {
        ".parquet": "parquet",
        ".pq": "parquet",
        ".ndjson": "ndjson",
        ".jsonl": "ndjson",
        ".json": "ndjson",
        ".csv": "csv",
    }
    if suffix not in by_suffix:
        raise InvalidRequest(
            f"cannot tell the format of {path!r} from its name", hint="pass --format parquet|ndjson|csv"
        )
    return by_suffix[suffix]


@contextmanager
def native_stderr_held() -> Iterator[None]:
    """Hold what native code (a Rust panic inside polars, with its backtrace) writes to
    file descriptor 2 while reading an input: replayed if the block succeeds, dropped if it
    raises (the error then says what went wrong, on one line)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if ok and held.tell():
                held.seek(0)
                os.write(2, held.read())


def scan(path: str, fmt: str) -> pl.LazyFrame:
    """A lazy reader of ``path``; everything that can be checked before reading is."""
    _check_readable(path)
    try:
        if fmt == "parquet":
            pl.read_parquet_schema(path)  # the footer: an empty, truncated or foreign file fails here
            return pl.scan_parquet(path, glob=False)
        if _has_nul(path):
            raise InvalidRequest(
                f"{path}: cannot read it as {fmt}: it holds NUL bytes, so it is not a text file",
                hint=_format_hint(path, fmt),
            )
        if fmt == "ndjson":
            # scan_ndjson has no glob=False: a name with glob characters is read through a file object
            src = open(path, "rb") if any(c in path for c in "*?[") else path  # noqa: SIM115
            return pl.scan_ndjson(src, infer_schema_length=10_000)
        return pl.scan_csv(path, infer_schema_length=10_000, glob=False)
    except _READ_ERRORS as e:
        raise read_error(path, fmt, e) from None


def _check_readable(path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise InvalidRequest(f"input file {path!r} does not exist")
    if p.is_dir():
        raise InvalidRequest(
            f"input {path!r} is a directory, not a file",
            hint=f"pass the files inside it, e.g. {path.rstrip('/')}/*.parquet",
        )
    try:
        with open(p, "rb") as f:
            empty = not f.read(1)
    except OSError as e:
        raise InvalidRequest(
            f"cannot open input file {path!r}: {e.strerror or e}", hint="check the path and its permissions"
        ) from None
    if empty:
        raise InvalidRequest(f"input file {path!r} is empty", hint="nothing to ingest; check the file")


#: what polars / the OS raise while reading a malformed input (PanicException is a BaseException)
_READ_ERRORS = (
    pl.exceptions.PolarsError,
    pl.exceptions.PanicException,
    OSError,
    ValueError,
    UnicodeError,
    OverflowError,
)


def _has_nul(path: str) -> bool:
    with open(path, "rb") as f:
        return b"\0" in f.read(4096)


def _sniff(path: str) -> str | None:
    """The format ``path`` looks like from its first bytes (for hints only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip()
    if text.startswith(b"{"):
        return "ndjson"
    if text and b"\0" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not just a character cut at the 4 KiB boundary
                return None
        return "csv"
    return None


def _format_hint(path: str, fmt: str) -> str:
    looks = _sniff(path)
    if looks and looks != fmt:
        return f"it looks like {looks}: pass --format {looks}"
    if fmt == "parquet":
        return "the file is not a complete parquet file (empty, truncated or another format?)"
    if fmt == "csv":
        return "check the file is UTF-8 CSV with a header row and the same number of fields on every line"
    return "check the file is UTF-8 with one JSON object per line"


def read_error(
    path: str, fmt: str, e: BaseException, rep: IngestReport | None = None, file_rows: int = 0
) -> InvalidRequest:
    """A polars/pyarrow/OS error raised while reading ``path`` as an InvalidRequest naming
    the file, the line/character where polars gives one, and how many rows were committed."""
    text = str(e).strip()
    first = text.splitlines()[0].strip() if text else type(e).__name__
    if len(first) > 300:
        first = first[:297] + "..."
    # (polars' "current offset in the file" is relative to a parallel chunk: not worth repeating)
    after = f" after its first {file_rows:,} rows" if file_rows else ""
    msg = f"{path}: cannot read it as {fmt}{after}: {first}"
    hint = _format_hint(path, fmt)
    if rep is not None:
        msg += committed_note(rep, "it")
    return InvalidRequest(msg, hint=hint)


def committed_note(rep: IngestReport, before: str) -> str:
    """What an ingest that failed part-way had committed, for the end of its error message:
    always said, 0 included. How far a streamed read gets before a bad value surfaces is not
    fixed: polars' streaming CSV reader parses morsels in parallel, so an error in the last rows
    can be raised before any earlier chunk is handed over, or after some of them."""
    if not rep.rows:
        return "; no rows were committed"
    return (
        f"; {rep.rows:,} rows before {before} were already committed (WAL seq {rep.first_seq}..{rep.last_seq}), "
        f"re-running after fixing the input is safe: ingest upserts by id"
    )


def chunks(lf: pl.LazyFrame, batch_rows: int) -> Iterator[pl.DataFrame]:
    yield from lf.collect_batches(chunk_size=batch_rows)


def map_columns(df: pl.DataFrame, id_col: str, vector_col: str | None, path: str) -> pl.DataFrame:
    if id_col not in df.columns:
        raise InvalidRequest(
            f"{path}: no id column {id_col!r} (columns: {', '.join(df.columns)})",
            hint="name the id column with --id COL",
        )
    ren = {id_col: "id"}
    if vector_col:
        if vector_col not in df.columns:
            raise InvalidRequest(
                f"{path}: no vector column {vector_col!r} (columns: {', '.join(df.columns)})",
                hint="name the vector column with --vector COL",
            )
        ren[vector_col] = "vector"
    clash = [v for k, v in ren.items() if v in df.columns and v != k]
    if clash:
        raise InvalidRequest(f"{path}: column {clash[0]!r} already exists; cannot rename another column to it")
    return df.rename(ren) if any(k != v for k, v in ren.items()) else df


def _csv_cell_list(v: str | None, col: str, vector: bool, where: str):
    """One CSV cell of a vector / list column: a JSON list, or (vectors) base64 of
    little-endian float32. A cell that parses as neither is refused, naming the row."""
    if v is None or v == "":
        return None
    text = v.strip()
    if text.startswith("["):
        try:
            out = json.loads(text)
        except ValueError as e:
            raise InvalidRequest(f"{where}: column {col!r}: {text[:40]!r} is not a JSON list ({e})") from None
        if not isinstance(out, list):
            raise InvalidRequest(f"{where}: column {col!r}: {text[:40]!r} is not a JSON list")
        return out
    if vector:
        import numpy as np

        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            raw = b"\x00"  # falls through to the refusal below
        if raw and len(raw) % 4 == 0:
            return np.frombuffer(raw, dtype="<f4").astype(float).tolist()
        raise InvalidRequest(
            f"{where}: column {col!r}: {text[:40]!r} is neither a JSON list nor base64 float32",
            hint="write vectors in CSV as [0.1, 0.2, ...] or base64 of little-endian f32",
        )
    raise InvalidRequest(f"{where}: column {col!r}: {text[:40]!r} is not a JSON list", hint='write lists as ["a", "b"]')


def parse_csv_lists(
    df: pl.DataFrame, schema: Mapping, vector_col: str | None, path: str, first_row: int
) -> pl.DataFrame:
    """CSV has no lists: decode the string cells of the vector column and of every column
    ``schema`` declares as a vector or list type (``[]string``, ``[512]f32``, ...)."""
    from puffer_cli.schema import spec as S

    cols = {}
    for c in df.columns:
        t = (schema.get(c) or {}).get("type") if isinstance(schema.get(c), Mapping) else schema.get(c)
        t = t if isinstance(t, str) else ""
        is_vec = (c == "vector" and vector_col is not None) or S.is_vector(t)
        if (is_vec or t.startswith("[")) and df.schema[c] == pl.String:
            cols[c] = is_vec
    if not cols:
        return df
    new = {}
    for c, is_vec in cols.items():
        vals = df.get_column(c).to_list()
        new[c] = [_csv_cell_list(v, c, is_vec, f"{path}, row {first_row + i}") for i, v in enumerate(vals)]
    return df.with_columns([pl.Series(c, v, strict=False) for c, v in new.items()])


def ingest(
    ns: Namespace,
    paths: Sequence[str],
    *,
    id_col: str = "id",
    vector_col: str | None = None,
    schema: dict | None = None,
    distance_metric: str | None = None,
    fmt: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: Callable[[IngestReport, int], None] | None = None,
    validate_first: bool = True,
) -> IngestReport:
    """Stream ``paths`` into ``ns``. ``progress(report, total_rows_or_0)`` after each chunk.

    ``validate_first``: read every input once and check every row (ids, values, types: what
    the commit checks) before the first commit, so a bad row anywhere commits nothing. The
    extra streaming pass costs 20-50% of a local ingest (measured on 500k rows: parquet with
    64-d vectors 2.1 -> 2.5 s, ndjson 0.7 -> 1.1 s; less against an object store, where
    commits dominate); without it a bad row in a later chunk leaves the earlier chunks
    committed (the error says which seqs)."""
    if batch_rows < 1:
        raise InvalidRequest("--batch-rows must be at least 1")
    if not paths:
        raise InvalidRequest("no input files given")
    plans, footer_rows = _plan(paths, fmt)
    total = sum(footer_rows.values())
    declared: dict = {**ns.head().schema, **(schema or {})}
    rep = IngestReport(ns.name)
    t0 = time.perf_counter()
    if validate_first:
        _validate(ns, plans, footer_rows, id_col, vector_col, schema, batch_rows, rep)
        plans = [(p, f, scan(p, f)) for p, f, _lf in plans]  # a fresh reader for the commit pass
    for p, f, lf in plans:
        rep.files.append(p)
        file_rows = 0
        for chunk in _chunks_of(p, f, lf, batch_rows, footer_rows.get(p), rep):
            chunk = map_columns(chunk, id_col, vector_col, p)
            if f == "csv":
                chunk = parse_csv_lists(chunk, declared, vector_col, p, file_rows)
            seq = _commit(ns, chunk, schema, distance_metric, p, file_rows, rep)
            file_rows += chunk.height
            schema = None  # declared once; later chunks see it in the head
            rep.rows += chunk.height
            rep.entries += 1
            rep.bytes_in += int(chunk.estimated_size())  # bytes: an int
            rep.first_seq = rep.first_seq or seq
            rep.last_seq = seq
            rep.seconds = time.perf_counter() - t0
            if progress:
                progress(rep, total)
    rep.seconds = time.perf_counter() - t0
    return rep


def _validate(
    ns: Namespace,
    plans: list,
    footer_rows: dict[str, int],
    id_col: str,
    vector_col: str | None,
    schema: Mapping | None,
    batch_rows: int,
    rep: IngestReport,
) -> None:
    """The first pass: every chunk of every input conformed to the schema (as it evolves over
    the inputs) exactly as the commit would, nothing written. An error names the file and row."""
    head = ns.head()
    declared = S.normalize_schema(dict(schema) if schema else None)
    sch = S.merge(head.schema, declared, {}) if declared else dict(head.schema)
    for p, f, lf in plans:
        file_rows = 0
        for chunk in _chunks_of(p, f, lf, batch_rows, footer_rows.get(p), rep):
            chunk = map_columns(chunk, id_col, vector_col, p)
            if f == "csv":
                chunk = parse_csv_lists(chunk, {**sch, **(schema or {})}, vector_col, p, file_rows)
            try:
                _typed, inferred = frames.conform_frame(chunk, sch, first_row=file_rows)
                sch = S.merge(sch, {}, inferred)
                types.check_schema_size(sch, head.schema, what="ingest")
            except InvalidRequest as e:
                e.message = f"{p}: {e.message}; nothing was committed (every input is checked first)"
                raise
            file_rows += chunk.height


def _plan(paths: Sequence[str], fmt: str | None) -> tuple[list, dict[str, int]]:
    """(path, format, lazy scan) per input, and the row counts parquet footers promise."""
    plans = []
    footer_rows: dict[str, int] = {}
    for p in paths:
        f = detect_format(p, fmt)
        with native_stderr_held():
            plans.append((p, f, scan(p, f)))
            if f == "parquet":
                try:
                    footer_rows[p] = pl.scan_parquet(p, glob=False).select(pl.len()).collect().item()
                except _READ_ERRORS as e:
                    raise read_error(p, f, e) from None
    return plans, footer_rows


def _chunks_of(p: str, f: str, lf, batch_rows: int, footer: int | None, rep: IngestReport) -> Iterator[pl.DataFrame]:
    """The non-empty chunks of one input; a read error names the file and what was committed."""
    it = chunks(lf, batch_rows)
    read = 0
    while True:
        try:
            with native_stderr_held():
                chunk = next(it)
        except StopIteration:
            if footer is not None and read != footer:
                # polars' streaming reader can lose a panic in a worker and just stop
                why = f"read {read:,} of the {footer:,} rows its footer promises (corrupt or truncated data pages)"
                raise read_error(p, f, ValueError(why), rep) from None
            return
        except _READ_ERRORS as e:
            raise read_error(p, f, e, rep, read) from None
        if chunk.height:
            read += chunk.height
            yield chunk


def _commit(ns: Namespace, chunk: pl.DataFrame, schema, distance_metric, p: str, file_rows: int, rep) -> int:
    """One WAL entry for ``chunk``; a refused chunk's error names its rows and what is committed."""
    try:
        return ns.write_frame(chunk, schema=schema, distance_metric=distance_metric)
    except InvalidRequest as e:
        e.message = f"{p}, rows {file_rows}..{file_rows + chunk.height - 1}: {e.message}"
        e.message += committed_note(rep, "them")
        raise
