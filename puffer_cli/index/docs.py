"""The doc store of a segment: attributes as one Arrow IPC file, exact vectors as
raw float32 matrices, tombstones as a sorted array of row positions.

* ``attrs.arrow``: every non-vector column (``id`` first), uncompressed Arrow IPC
  so polars memory-maps it and runs filters on it directly.
* ``vec-{h}.f32``: one per vector field, ``rows x dims`` little-endian float32,
  row-major; a document without that vector has a row of NaN.  Exact search,
  re-ranking and ``include_attributes`` read it (memory-mapped from the cache).
* tombstones (``tomb-{segment}.npy``, written in the generation that deletes):
  ``numpy.save`` of a sorted ``uint32`` array of dead row positions.
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import polars as pl

from puffer_cli.schema import spec as S

ATTRS = "attrs.arrow"


def field_tag(field: str) -> str:
    """A file-name-safe tag for an attribute name (names may contain any character)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in field)[:40]
    return f"{safe}-{hashlib.blake2b(field.encode(), digest_size=4).hexdigest()}"


def vector_fields(schema: dict) -> list[str]:
    return [k for k, v in schema.items() if S.is_vector(v["type"])]


def fts_fields(schema: dict) -> list[str]:
    return [k for k, v in schema.items() if v.get("full_text_search")]


def attrs_bytes(df: pl.DataFrame, schema: dict) -> bytes:
    cols = [c for c in df.columns if not (c in schema and S.is_vector(schema[c]["type"]))]
    buf = io.BytesIO()
    df.select(cols).write_ipc(buf, compression="uncompressed")
    return buf.getvalue()


def vector_matrix(df: pl.DataFrame, field: str, dims: int) -> np.ndarray:
    """(rows, dims) float32; NaN rows for missing vectors."""
    s = df.get_column(field)
    out = np.full((df.height, dims), np.nan, dtype=np.float32)
    if df.height == 0:
        return out
    valid = s.is_not_null().to_numpy()
    if valid.any():
        vals = s.filter(s.is_not_null())
        if isinstance(vals.dtype, pl.List):
            vals = vals.list.to_array(dims)
        out[valid] = np.asarray(vals.to_numpy(), dtype=np.float32).reshape(-1, dims)
    return out


def corrupt(what, problem) -> Exception:
    """A damaged index file (in the store or only in the local cache) as CorruptNamespace."""
    from puffer_cli.errors import CorruptNamespace

    return CorruptNamespace(
        f"index file {what} is corrupt: {' '.join(str(problem).split())[:300]}",
        hint="if only the local copy is damaged, delete the cache directory (--cache-dir / PUFFER_CACHE_DIR); "
        "otherwise move NAMESPACE/meta.json aside and run `puffer index NAMESPACE` (the WAL keeps every write)",
    )


def read_attrs(path) -> pl.DataFrame:
    try:
        return pl.read_ipc(path)
    except (OSError, ValueError, pl.exceptions.PolarsError, pl.exceptions.PanicException) as e:
        raise corrupt(path, e) from None


def open_vectors(path, rows: int, dims: int) -> np.ndarray:
    if rows == 0:
        return np.zeros((0, dims), dtype=np.float32)
    want = rows * dims * 4
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise corrupt(path, e) from None
    if size != want:
        raise corrupt(path, f"{size:,} bytes, expected {want:,} ({rows:,} rows x {dims} float32)")
    # a plain ndarray view of the map: fancy indexing on np.memmap itself is ~10x slower
    return np.memmap(path, dtype="<f4", mode="r", shape=(rows, dims)).view(np.ndarray)


def tomb_bytes(positions: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.unique(np.asarray(positions, dtype=np.uint32)), allow_pickle=False)
    return buf.getvalue()


def locate(ids: pl.Series, live_ids, n: int):
    """Yield ``(segment index, positions)`` of the live rows holding ``ids``, segment by
    segment; ``live_ids(i)`` is segment i's ``(id, __pos)`` frame of live rows.  An id is
    found at most once (every id has at most one live row)."""
    want = ids.to_frame("id")
    for i in range(n):
        if want.height == 0:
            return
        idf = live_ids(i)
        if want["id"].dtype != idf["id"].dtype:
            want = want.with_columns(pl.col("id").cast(idf["id"].dtype))
        hit = idf.join(want, on="id", how="semi")
        if hit.height:
            yield i, hit["__pos"].to_numpy().astype(np.int64)
            want = want.join(hit.select("id"), on="id", how="anti")


def alive_mask(rows: int, dead: np.ndarray | None) -> np.ndarray:
    """Boolean mask of the live row positions of a segment of ``rows`` rows."""
    al = np.ones(rows, bool)
    if dead is not None and len(dead):
        al[np.asarray(dead, dtype=np.int64)] = False
    return al


def read_tomb(data: bytes) -> np.ndarray:
    try:
        out = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise corrupt("tombstones", e) from None
    if not isinstance(out, np.ndarray) or out.ndim != 1 or out.dtype.kind not in "iu":
        raise corrupt("tombstones", "not a 1-d array of row positions")
    return out


def vector_series(name: str, mat: np.ndarray, dims: int) -> pl.Series:
    """An ``Array(Float32, dims)`` series from rows of a matrix (NaN rows -> null)."""
    mat = np.ascontiguousarray(mat, dtype=np.float32)
    s = (
        pl.Series(name, mat, dtype=pl.Array(pl.Float32, dims))
        if len(mat)
        else pl.Series(name, [], dtype=pl.Array(pl.Float32, dims))
    )
    if len(mat):
        missing = np.isnan(mat).all(axis=1)
        if missing.any():
            s = pl.select(pl.when(pl.Series(~missing)).then(s).otherwise(None).alias(name)).to_series()
    return s
