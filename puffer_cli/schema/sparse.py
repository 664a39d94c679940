"""Sparse vectors (type ``{}f16``): the value rules and the one stored form.

A sparse vector is a JSON object ``{dimension: weight}`` (turbopuffer's wire shape: the
client's ``RankBySparseKnn`` is ``Mapping[str, float]``, its docs write
``{"dim0": 0.1, "dimt1": 0.2}``).  Rules (docs/http.md, "Sparse vectors"):

* a dimension is a non-empty string of at most MAX_SPARSE_KEY_BYTES bytes of UTF-8 (SPLADE
  token ids such as ``"2054"`` or any other name); dimensions are opaque: ``"7"`` and
  ``"07"`` are two dimensions;
* a weight is a finite number (not a boolean) that fits in float16 (|w| <= 65504); it is
  stored rounded to float16 (the type's name), so a query sees the stored weight;
* 1 to MAX_SPARSE_NONZEROS entries (an empty object is refused: write null for no vector).

The stored form (in the WAL and the doc store) is the canonical JSON text of the object:
keys in code point order, each weight the shortest decimal that reads back as the same
float16 (``0.1``, not ``0.0999755859375``).  :func:`decode` reads it back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import polars as pl

from puffer_cli import limits as L
from puffer_cli.errors import SchemaError, show

TYPE = "{}f16"
METRICS = ("dot_product",)
F16_MAX = 65504.0


def is_sparse(t: str | None) -> bool:
    return t == TYPE


def check_key(k: Any) -> str | None:
    """Why dimension key ``k`` is refused, or None if it is valid."""
    if not isinstance(k, str):
        return f"dimension keys are strings, got {show(k, python=True)}"
    if not k:
        return "a dimension key is empty"
    if k.isascii():
        n: int | None = len(k)
    else:
        try:
            n = len(k.encode())
        except UnicodeEncodeError:
            n = None
    if n is None:
        return "a dimension key is not valid Unicode (a lone surrogate)"
    if n > L.MAX_SPARSE_KEY_BYTES:
        return f"dimension key {show(k, 60, python=True)} is {n} bytes; the limit is {L.MAX_SPARSE_KEY_BYTES}"
    return None


def check_weight(w: Any, f16: bool) -> str | None:
    """Why weight ``w`` is refused (``f16``: it must fit in float16), or None."""
    if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)):
        return f"weights are numbers, got {show(w, python=True)}"
    x = float(w)
    if not math.isfinite(x):
        return f"weight {show(w, python=True)} is not a finite number"
    if f16 and abs(x) > F16_MAX:
        return f"weight {show(w, python=True)} does not fit in float16 (|weight| <= {F16_MAX:g})"
    return None


def check_entries(v: Any, what: str, *, f16: bool) -> list[tuple[str, float]]:
    """The (key, weight) entries of sparse vector ``v`` sorted by key, every rule checked;
    SchemaError naming ``what`` otherwise (the caller maps it to its own error type)."""
    if not isinstance(v, Mapping):
        raise SchemaError(
            f"{what}: a sparse vector is an object {{dimension: weight}}, got {show(v, python=True)}",
            hint='e.g. {"1037": 0.42, "2054": 1.3}',
        )
    if not v:
        raise SchemaError(f"{what}: a sparse vector needs at least one dimension", hint="use null for no vector")
    if len(v) > L.MAX_SPARSE_NONZEROS:
        raise SchemaError(
            f"{what}: sparse vector has {len(v):,} dimensions; the limit is {L.MAX_SPARSE_NONZEROS:,}",
            hint="MAX_SPARSE_NONZEROS (turbopuffer: 1,024 per sparse vector); keep the largest weights",
        )
    out = []
    for k, w in v.items():
        why = check_key(k) or check_weight(w, f16)
        if why:
            raise SchemaError(f"{what}: {why}")
        out.append((k, float(w)))
    out.sort()
    return out


def f16_round(w: float) -> float:
    """``w`` rounded to float16, as the shortest decimal that reads back as that float16."""
    return float(str(np.float16(w)))


def canonical(v: Any, what: str) -> str:
    """The stored form of a written sparse vector (rules: module docstring)."""
    ent = check_entries(v, what, f16=True)
    return orjson.dumps({k: f16_round(w) for k, w in ent}).decode()


def is_canonical(s: str) -> bool:
    """True when ``s`` is a stored form (a frame read back from storage: no re-check)."""
    try:
        return canonical(orjson.loads(s), "") == s
    except (orjson.JSONDecodeError, SchemaError):
        return False


#: one ``"key":weight`` pair of a stored form (orjson's output: a key is a JSON string, a weight a number)
_PAIR = r'"((?:[^"\\]|\\.)*)":(-?[0-9][0-9.eE+-]*)'


def parse_column(values: list | pl.Series) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Stored forms (or None), one per row -> (row of each entry, key of each entry, float16
    weight of each entry), rows ascending.  The pairs are cut out by polars (a regex over the
    canonical text); a column with an escaped key falls back to a JSON parser row by row."""
    s = values if isinstance(values, pl.Series) else pl.Series("s", values, dtype=pl.String)
    if s.dtype != pl.String:
        s = s.cast(pl.String)
    if bool(s.str.contains("\\", literal=True).any()):
        return _parse_json(s.to_list())
    ex = (
        pl.DataFrame({"s": s})
        .with_row_index("r")
        .select("r", pl.col("s").str.extract_all(_PAIR).alias("p"))
        .explode("p")
        .drop_nulls("p")
        .select(
            "r",
            pl.col("p").str.extract(_PAIR, 1).alias("k"),
            pl.col("p").str.extract(_PAIR, 2).cast(pl.Float64).alias("w"),
        )
    )
    return (
        ex["r"].to_numpy().astype(np.int64),
        ex["k"].to_list(),
        ex["w"].to_numpy().astype(np.float16),
    )


def _parse_json(values: list) -> tuple[np.ndarray, list[str], np.ndarray]:
    keys: list[str] = []
    ws: list[float] = []
    lens = np.zeros(len(values), np.int64)
    for i, s in enumerate(values):
        if s is None:
            continue
        obj = orjson.loads(s)
        lens[i] = len(obj)
        keys.extend(obj)
        ws.extend(obj.values())
    rows = np.repeat(np.arange(len(values), dtype=np.int64), lens)
    return rows, keys, np.asarray(ws, np.float64).astype(np.float16)


def decode(s: str | None) -> dict[str, float] | None:
    """A stored form -> the object (None stays None)."""
    return None if s is None else orjson.loads(s)
