"""Multi-vector values (type ``[][N]f32``, late interaction): write payloads -> a typed
``List(Array(Float32, N))`` Series, every value checked.

A value is null (the document has none) or a non-empty list of at most
``limits.MAX_MULTI_VECTORS`` vectors, each an array of exactly N finite float32
numbers (or a base64 string of N little-endian float32, the wire form turbopuffer's
clients use for vectors).  Errors name the row, the field and the vector.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from puffer_cli import limits as L
from puffer_cli.errors import SchemaError, show
from puffer_cli.schema.types import decode_vector_b64, where


def _one(v: Any, dims: int, at: str, j: int) -> np.ndarray:
    """Vector ``j`` of a value -> float32 (dims,)."""
    a: Any
    if isinstance(v, str):
        try:
            a = decode_vector_b64(v)
        except ValueError as e:
            raise SchemaError(f"{at}: vector {j}: {e}") from None
    elif (isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "fiu") or (
        isinstance(v, (list, tuple)) and set(map(type, v)) <= {float, int}
    ):
        a = v
    else:
        raise SchemaError(
            f"{at}: vector {j} must be an array of numbers, got {show(v, python=True)}",
            hint="a [][N]f32 value is a list of vectors: [[x, ...], [x, ...]]",
        )
    if len(a) != dims:
        raise SchemaError(f"{at}: vector {j} has {len(a)} dimensions; the attribute has {dims}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(a, dtype=np.float32)
    if not np.isfinite(out).all():
        raise SchemaError(
            f"{at}: vector {j} contains NaN, infinity or a number beyond float32",
            hint="vector elements are finite float32 numbers",
        )
    return out


def value_matrix(v: Any, dims: int, name: str, row: int | None) -> np.ndarray:
    """One non-null multi-vector value -> a (count, dims) float32 matrix."""
    at = where(row, name)
    if isinstance(v, np.ndarray) and v.ndim == 2:
        v = list(v)
    if not isinstance(v, (list, tuple)):
        raise SchemaError(
            f"{at}: expected a list of vectors (type [][{dims}]f32), got {show(v, python=True)}",
            hint="a [][N]f32 value is a list of vectors: [[x, ...], [x, ...]]",
        )
    if not v:
        raise SchemaError(f"{at}: a multi-vector value needs at least one vector (use null for none)")
    if len(v) > L.MAX_MULTI_VECTORS:
        raise SchemaError(
            f"{at}: {len(v)} vectors; a multi-vector value holds at most {L.MAX_MULTI_VECTORS}",
            hint="MAX_MULTI_VECTORS; see docs/http.md, Limits: writes",
        )
    return np.stack([_one(x, dims, at, j) for j, x in enumerate(v)])


def series(name: str, values: list, dims: int, first_row: int = 0) -> pl.Series:
    """Typed Series of JSON (or Python) values."""
    mats: list[np.ndarray | None] = [
        None if v is None else value_matrix(v, dims, name, first_row + i) for i, v in enumerate(values)
    ]
    return from_matrices(name, mats, dims)


def from_matrices(name: str, mats: list[np.ndarray | None], dims: int) -> pl.Series:
    """``List(Array(Float32, dims))`` from per-row (count, dims) matrices (None: null)."""
    dt = pl.List(pl.Array(pl.Float32, dims))
    have = [m for m in mats if m is not None]
    if not have:
        return pl.Series(name, [None] * len(mats), dtype=dt)
    flat = np.concatenate(have).astype(np.float32, copy=False)
    lens = np.array([0 if m is None else len(m) for m in mats], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    inner = pl.Series(name, flat, dtype=pl.Array(pl.Float32, dims))
    rows = [inner.slice(int(a), int(b - a)) if m is not None else None for m, a, b in zip(mats, offsets, offsets[1:])]
    return pl.Series(name, rows, dtype=dt)


def cast(s: pl.Series, dims: int, t: str, first_row: int = 0) -> pl.Series:
    """Strict cast of a frame column (ingest, JSON columns) to ``[][dims]f32``."""
    name = s.name
    if s.dtype == pl.Null:
        return pl.Series(name, [None] * len(s), dtype=pl.List(pl.Array(pl.Float32, dims)))
    if not isinstance(s.dtype, pl.List):
        raise SchemaError(f"field {name!r}: expected lists of vectors ({t}), got column type {s.dtype}")
    inner = s.dtype.inner
    numeric = (isinstance(inner, pl.Array) and inner.size == dims and inner.inner.is_numeric()) or (
        isinstance(inner, pl.List) and inner.inner.is_numeric()
    )
    if not numeric:  # strings (base64), mixed or odd shapes: value by value, with the JSON path's messages
        return series(name, s.to_list(), dims, first_row)
    return _cast_numeric(s, dims, first_row)


def _cast_numeric(s: pl.Series, dims: int, first_row: int) -> pl.Series:
    """A ``List(Array(numeric))`` / ``List(List(numeric))`` column, checked and cast in bulk."""
    name = s.name
    lens = s.list.len()
    bad = ((lens == 0) | (lens > L.MAX_MULTI_VECTORS)).fill_null(False).arg_true()
    if len(bad):
        row = int(bad[0])
        series(name, [s[row].to_list()], dims, first_row + row)  # raises the value's error
    rows = pl.int_range(0, len(s), eager=True).alias("__row")
    flat = pl.DataFrame({"__row": rows, "v": s}).filter(pl.col("v").is_not_null()).explode("v")
    v = flat.get_column("v")
    if isinstance(v.dtype, pl.List):
        wrong = ((v.list.len() != dims) | v.is_null()).fill_null(True).arg_true()
        if len(wrong):
            row = int(flat.get_column("__row")[int(wrong[0])])
            series(name, [s[row].to_list()], dims, first_row + row)
        v = v.list.to_array(dims)
    with np.errstate(over="ignore", invalid="ignore"):
        mat = v.cast(pl.Array(pl.Float32, dims)).to_numpy() if len(v) else np.zeros((0, dims), np.float32)
    ok = np.isfinite(np.asarray(mat, dtype=np.float32)).all(axis=1) if len(v) else np.zeros(0, bool)
    if v.null_count() or not ok.all():
        at = int(v.is_null().arg_true()[0]) if v.null_count() else int(np.flatnonzero(~ok)[0])
        row = int(flat.get_column("__row")[at])
        series(name, [s[row].to_list()], dims, first_row + row)
        raise SchemaError(f"{where(first_row + row, name)}: a vector is null, NaN or infinite")
    with np.errstate(over="ignore", invalid="ignore"):
        return s.cast(pl.List(pl.Array(pl.Float32, dims))).alias(name)


def flatten(s: pl.Series, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (total, dims) float32, offsets (rows + 1,) int64) of a multi-vector column;
    a null row has no vectors (offsets[i] == offsets[i + 1])."""
    lens = s.list.len().fill_null(0).to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    if not offsets[-1]:
        return np.zeros((0, dims), np.float32), offsets
    inner = s.explode().drop_nulls()
    tok = np.asarray(inner.to_numpy(), dtype=np.float32).reshape(-1, dims)
    return tok, offsets
