"""Attribute types, schema inference and validation, and conversion of write
payloads (rows, columns, polars frames) to frames with exact dtypes.

A schema is ``{attr: spec}`` where spec is a dict ``{"type": T, "filterable":
bool, "full_text_search": dict | None}``; ``id`` is always present with type
``uint``, ``uuid`` or ``string``.  Types (turbopuffer's):

    string int uint float bool datetime uuid     -> String Int64 UInt64 Float64 Boolean Datetime(ms, UTC) String
    []T (T one of the above)                     -> List(T)
    [N]f32, [N]f16 (vectors)                     -> Array(Float32, N)

Every conversion error names the row and the field, and nothing is written.
"""
from __future__ import annotations

import base64
import datetime as dt
import re
import uuid as uuidlib
from typing import Any, Iterable, Mapping

import numpy as np
import polars as pl

from .errors import SchemaError


SCALARS = {
    "string": pl.String, "int": pl.Int64, "uint": pl.UInt64, "float": pl.Float64,
    "bool": pl.Boolean, "datetime": pl.Datetime("ms", "UTC"), "uuid": pl.String,
}
VEC_RE = re.compile(r"^\[(\d+)\](f32|f16)$")
ID_TYPES = ("uint", "uuid", "string")
ID_MAX_BYTES = 64
ATTR_MAX = 128
SPEC_KEYS = {"type", "filterable", "full_text_search", "regex", "ann"}


def vector_dims(t: str) -> int | None:
    m = VEC_RE.match(t)
    return int(m.group(1)) if m else None


def is_vector(t: str) -> bool:
    return VEC_RE.match(t) is not None


def dtype_of(t: str) -> pl.DataType:
    """polars dtype for a type string; SchemaError if unknown."""
    if t in SCALARS:
        return SCALARS[t]
    if t.startswith("[]") and t[2:] in SCALARS:
        return pl.List(SCALARS[t[2:]])
    m = VEC_RE.match(t)
    if m and 1 <= int(m.group(1)) <= 16384:
        return pl.Array(pl.Float32, int(m.group(1)))
    raise SchemaError(
        f"unknown type {t!r}",
        hint="types: string int uint float bool datetime uuid, []T arrays, [N]f32 / [N]f16 vectors",
    )


def normalize_spec(name: str, spec: Any) -> dict:
    """Validate one attribute's declared spec (string shorthand or object)."""
    check_attr_name(name)
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise SchemaError(f"schema for attribute {name!r} must be a type string or an object, got {spec!r}")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise SchemaError(f"schema for attribute {name!r}: unknown key(s) {sorted(unknown)}",
                          hint=f"allowed: {sorted(SPEC_KEYS)}")
    t = spec.get("type")
    if not isinstance(t, str):
        raise SchemaError(f"schema for attribute {name!r} needs a \"type\"")
    dtype_of(t)
    if name == "id" and t not in ID_TYPES:
        raise SchemaError(f"id type must be one of {ID_TYPES}, got {t!r}")
    out: dict[str, Any] = {"type": t}
    fts = spec.get("full_text_search")
    if fts not in (None, False):
        if t not in ("string", "[]string"):
            raise SchemaError(f"attribute {name!r}: full_text_search needs type string, not {t}")
        from . import text

        out["full_text_search"] = text.normalize_fts_options(fts)
    filterable = spec.get("filterable", not is_vector(t) and "full_text_search" not in out)
    if not isinstance(filterable, bool):
        raise SchemaError(f"attribute {name!r}: filterable must be true or false")
    out["filterable"] = filterable
    if spec.get("regex") is not None:
        out["regex"] = bool(spec["regex"])
    if spec.get("ann") is not None:
        if not is_vector(t):
            raise SchemaError(f"attribute {name!r}: ann options only apply to vector types")
        ann = spec["ann"]
        if ann is True:
            ann = {}
        if not isinstance(ann, Mapping) or set(ann) - {"dtype", "connectivity", "expansion_add", "expansion_search"}:
            raise SchemaError(f"attribute {name!r}: ann takes dtype, connectivity, expansion_add, expansion_search")
        if ann.get("dtype", "f16") not in ("f32", "f16", "i8"):
            raise SchemaError(f"attribute {name!r}: ann dtype must be f32, f16 or i8")
        out["ann"] = dict(ann)
    return out


def normalize_schema(obj: Any) -> dict:
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise SchemaError(f"schema must be an object mapping attribute names to types, got {type(obj).__name__}")
    return {k: normalize_spec(k, v) for k, v in obj.items()}


def check_attr_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > ATTR_MAX or name.startswith("$"):
        raise SchemaError(f"invalid attribute name {name!r}",
                          hint="attribute names are 1-128 characters and do not start with '$'")
    return name


# ------------------------------------------------------------------ inference
def infer_value_type(name: str, v: Any) -> str | None:
    """Type of one JSON value, or None when it says nothing (null, empty list)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "uint" if name == "id" and v >= 0 else "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        if name == "vector":
            n = len(_b64(name, v, None, None)) if v else 0
            return f"[{n}]f32" if n else None
        return "string"
    if isinstance(v, uuidlib.UUID):
        return "uuid"
    if isinstance(v, (dt.datetime, dt.date)):
        return "datetime"
    if isinstance(v, np.ndarray) and v.ndim == 1 and name == "vector":
        return f"[{len(v)}]f32"
    if isinstance(v, (list, tuple, np.ndarray)):
        if not len(v):
            return None
        if name == "vector":
            return f"[{len(v)}]f32"
        inner = {infer_value_type("", x) for x in v} - {None}
        if inner == {"int", "float"}:
            inner = {"float"}
        if len(inner) == 1:
            (t,) = inner
            if t in SCALARS:
                return f"[]{t}"
        return "?mixed"
    return "?" + type(v).__name__


def type_of_dtype(name: str, d: pl.DataType) -> str | None:
    """Schema type of a polars dtype (for ingest of parquet/csv frames)."""
    if d == pl.Null:
        return None
    if d == pl.Boolean:
        return "bool"
    if d.is_unsigned_integer():
        return "uint"
    if d.is_integer():
        return "uint" if name == "id" else "int"
    if d.is_float():
        return "float"
    if d in (pl.String, pl.Categorical) or isinstance(d, pl.Enum):
        return "string"
    if isinstance(d, pl.Datetime) or d == pl.Date:
        return "datetime"
    if isinstance(d, pl.Array) and d.inner.is_numeric():
        return f"[{d.size}]f32"
    if isinstance(d, pl.List):
        if name == "vector" and d.inner.is_numeric():
            return None  # dims unknown from the dtype; taken from the data
        inner = type_of_dtype("", d.inner)
        if inner in SCALARS:
            return f"[]{inner}"
    raise SchemaError(f"column {name!r}: unsupported type {d}")


# ------------------------------------------------------------------ merging
def merge(current: Mapping, declared: Mapping, inferred: Mapping) -> dict:
    """New schema = current + declared + inferred. Raises on any type clash.

    ``declared`` may change filterable / full_text_search of an existing
    attribute but never its type."""
    out = {k: dict(v) for k, v in current.items()}
    for k, spec in declared.items():
        if k in out and out[k]["type"] != spec["type"]:
            raise SchemaError(f"attribute {k!r} has type {out[k]['type']}; cannot change it to {spec['type']}")
        out[k] = {**out.get(k, {}), **spec}
    for k, t in inferred.items():
        if t is None:
            continue
        if k in out:
            continue  # values were already checked against the existing type
        out[k] = normalize_spec(k, t)
    return out


# ------------------------------------------------------------------ values
def _where(row: int | None, name: str) -> str:
    return f"row {row}, field {name!r}" if row is not None else f"field {name!r}"


def _b64(name, v: str, dims, row):
    try:
        raw = base64.b64decode(v, validate=True)
    except Exception:
        raise SchemaError(f"{_where(row, name)}: vector string is not valid base64")
    if len(raw) % 4:
        raise SchemaError(f"{_where(row, name)}: base64 vector length {len(raw)} is not a multiple of 4 (f32)")
    arr = np.frombuffer(raw, dtype="<f4")
    return arr


def _check_id(v, t: str, row) -> Any:
    if v is None:
        raise SchemaError(f"{_where(row, 'id')}: id is missing", hint="every document needs an id")
    if t == "uint":
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v >= 2**64:
            raise SchemaError(f"{_where(row, 'id')}: id {v!r} is not an unsigned 64-bit integer",
                              hint="ids are u64, UUIDs or strings up to 64 bytes, one kind per namespace")
        return v
    if t == "uuid":
        try:
            return str(v if isinstance(v, uuidlib.UUID) else uuidlib.UUID(str(v)))
        except (ValueError, AttributeError, TypeError):
            raise SchemaError(f"{_where(row, 'id')}: id {v!r} is not a UUID")
    if not isinstance(v, str) or not v:
        raise SchemaError(f"{_where(row, 'id')}: id {v!r} is not a non-empty string",
                          hint="this namespace uses string ids")
    if len(v.encode()) > ID_MAX_BYTES:
        raise SchemaError(f"{_where(row, 'id')}: id is {len(v.encode())} bytes; the limit is {ID_MAX_BYTES}")
    return v


def _parse_datetime(v, name, row):
    if isinstance(v, bool):
        raise SchemaError(f"{_where(row, name)}: expected a datetime, got {v!r}")
    if isinstance(v, (int, float)):
        return dt.datetime.fromtimestamp(v / 1000, dt.timezone.utc)
    if isinstance(v, dt.datetime):
        return v if v.tzinfo else v.replace(tzinfo=dt.timezone.utc)
    if isinstance(v, str):
        try:
            d = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise SchemaError(f"{_where(row, name)}: {v!r} is not an RFC 3339 datetime")
        return d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)
    raise SchemaError(f"{_where(row, name)}: expected a datetime, got {v!r}")


def check_scalar(v, t: str, name: str, row) -> Any:
    """Validate/normalise one non-null scalar value of type ``t``."""
    bad = None
    if t == "string":
        if not isinstance(v, str):
            bad = "a string"
    elif t == "int":
        if isinstance(v, bool) or not isinstance(v, int) or not -(2**63) <= v < 2**63:
            if isinstance(v, float) and v.is_integer():
                return int(v)
            bad = "an integer"
    elif t == "uint":
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**64:
            bad = "an unsigned integer"
    elif t == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            bad = "a number"
        else:
            return float(v)
    elif t == "bool":
        if not isinstance(v, bool):
            bad = "true or false"
    elif t == "uuid":
        try:
            return str(v if isinstance(v, uuidlib.UUID) else uuidlib.UUID(str(v)))
        except (ValueError, TypeError, AttributeError):
            bad = "a UUID"
    elif t == "datetime":
        return _parse_datetime(v, name, row)
    if bad:
        raise SchemaError(f"{_where(row, name)}: expected {bad} (type {t}), got {v!r}")
    return v


def column_series(name: str, values: list, t: str, *, first_row: int = 0) -> pl.Series:
    """Build a typed Series from Python values, naming the first bad row."""
    dims = vector_dims(t)
    if dims is not None:
        return _vector_series(name, values, dims, first_row)
    if t.startswith("[]"):
        inner = t[2:]
        out = []
        for i, v in enumerate(values):
            if v is None:
                out.append(None)
            elif not isinstance(v, (list, tuple)):
                raise SchemaError(f"{_where(first_row + i, name)}: expected an array (type {t}), got {v!r}")
            else:
                out.append([check_scalar(x, inner, name, first_row + i) for x in v if x is not None])
        return pl.Series(name, out, dtype=dtype_of(t))
    if name == "id":
        vals = [_check_id(v, t, first_row + i) for i, v in enumerate(values)]
    else:
        vals = [None if v is None else check_scalar(v, t, name, first_row + i) for i, v in enumerate(values)]
    return pl.Series(name, vals, dtype=dtype_of(t))


def _vector_series(name, values, dims, first_row) -> pl.Series:
    rows = []
    mask = []
    for i, v in enumerate(values):
        if v is None:
            rows.append(np.zeros(dims, np.float32))
            mask.append(False)
            continue
        if isinstance(v, str):
            v = _b64(name, v, dims, first_row + i)
        try:
            a = np.asarray(v, dtype=np.float32)
        except (TypeError, ValueError):
            raise SchemaError(f"{_where(first_row + i, name)}: vector must be a list of numbers")
        if a.ndim != 1 or a.shape[0] != dims:
            raise SchemaError(
                f"{_where(first_row + i, name)}: vector has {a.shape[0] if a.ndim == 1 else a.shape} "
                f"dimensions; the namespace expects {dims}")
        if not np.isfinite(a).all():
            raise SchemaError(f"{_where(first_row + i, name)}: vector contains NaN or infinity")
        rows.append(a)
        mask.append(True)
    mat = np.stack(rows) if rows else np.zeros((0, dims), np.float32)
    s = pl.Series(name, mat, dtype=pl.Array(pl.Float32, dims))
    if not all(mask):
        s = pl.select(pl.when(pl.Series(mask)).then(s).otherwise(None)).to_series().alias(name)
    return s


def infer_column(name: str, values: Iterable, first_row: int = 0) -> str | None:
    seen: str | None = None
    for i, v in enumerate(values):
        t = infer_value_type(name, v)
        if t is None:
            continue
        if t.startswith("?"):
            raise SchemaError(f"{_where(first_row + i, name)}: unsupported value {v!r}",
                              hint="values are strings, numbers, booleans, arrays of one of those, or vectors")
        if seen is None:
            seen = t
        elif seen != t:
            if {seen, t} == {"int", "float"}:
                seen = "float"
            elif {seen, t} == {"[]int", "[]float"}:
                seen = "[]float"
            elif seen.endswith("f32") and t.endswith("f32"):
                raise SchemaError(f"{_where(first_row + i, name)}: vector has {vector_dims(t)} dimensions; "
                                  f"earlier rows have {vector_dims(seen)}")
            else:
                raise SchemaError(f"{_where(first_row + i, name)}: value {v!r} is {t}, earlier rows are {seen}")
    return seen


def frame_from_columns(cols: Mapping[str, list], schema: Mapping, *, partial: bool = False,
                       first_row: int = 0) -> tuple[pl.DataFrame, dict]:
    """Columns of Python values -> (typed frame, new attribute types inferred)."""
    if "id" not in cols:
        raise SchemaError("missing the \"id\" column", hint="every document needs an id")
    n = None
    for k, v in cols.items():
        check_attr_name(k)
        if not isinstance(v, (list, tuple, np.ndarray)):
            raise SchemaError(f"column {k!r} must be an array of values")
        if n is None:
            n = len(v)
        elif len(v) != n:
            raise SchemaError(f"column {k!r} has {len(v)} values; column \"id\" has {n}",
                              hint="all columns must have the same length")
    inferred: dict[str, str | None] = {}
    series = []
    for k, vals in cols.items():
        vals = list(vals)
        if k in schema:
            t = schema[k]["type"]
        else:
            t = infer_column(k, vals, first_row)
            inferred[k] = t
            if t is None:
                series.append(pl.Series(k, [None] * len(vals), dtype=pl.Null))
                continue
        series.append(column_series(k, vals, t, first_row=first_row))
    return pl.DataFrame(series), inferred


def frame_from_rows(rows: list, schema: Mapping, *, what: str = "upsert_rows") -> tuple[pl.DataFrame, dict]:
    cols: dict[str, list] = {}
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise SchemaError(f"{what} row {i}: expected an object, got {type(r).__name__}")
        for k in r:
            if k not in cols:
                check_attr_name(k)
                cols[k] = [None] * i
        for k, col in cols.items():
            col.append(r.get(k))
    if rows and "id" not in cols:
        raise SchemaError(f"{what} row 0: missing \"id\"")
    if not rows:
        return pl.DataFrame(), {}
    missing = [i for i, r in enumerate(rows) if "id" not in r]
    if missing:
        raise SchemaError(f"{what} row {missing[0]}: missing \"id\"")
    return frame_from_columns(cols, schema)


def conform_frame(df: pl.DataFrame, schema: Mapping) -> tuple[pl.DataFrame, dict]:
    """A polars frame (ingest) -> typed frame + inferred types. Vectorised."""
    inferred: dict[str, str | None] = {}
    out = []
    for name in df.columns:
        check_attr_name(name)
        s = df.get_column(name)
        if name in schema:
            t = schema[name]["type"]
        else:
            t = type_of_dtype(name, s.dtype)
            if t is None and isinstance(s.dtype, pl.List):  # vector given as a list column
                lens = s.list.len().drop_nulls()
                t = f"[{int(lens[0])}]f32" if len(lens) else None
            inferred[name] = t
            if t is None:
                out.append(s)
                continue
        out.append(cast_series(s, t))
    return pl.DataFrame(out), inferred


def cast_series(s: pl.Series, t: str) -> pl.Series:
    """Strict cast of a polars Series to type ``t``; SchemaError names the first bad row."""
    name = s.name
    target = dtype_of(t)
    if s.dtype == target:
        out = s
    elif (dims := vector_dims(t)) is not None:
        if isinstance(s.dtype, pl.List):
            lens = s.list.len()
            bad = ((lens != dims) & lens.is_not_null()).arg_true()
            if len(bad):
                i = int(bad[0])
                raise SchemaError(f"{_where(i, name)}: vector has {lens[i]} dimensions; the namespace expects {dims}")
            out = s.cast(pl.List(pl.Float32)).list.to_array(dims)
        elif isinstance(s.dtype, pl.Array):
            if s.dtype.size != dims:
                raise SchemaError(f"field {name!r}: vectors have {s.dtype.size} dimensions; the namespace expects {dims}")
            out = s.cast(target)
        else:
            raise SchemaError(f"field {name!r}: expected vectors ({t}), got column type {s.dtype}")
    else:
        if t == "datetime" and s.dtype == pl.String:
            out = s.str.to_datetime(time_zone="UTC", strict=False).dt.cast_time_unit("ms")
        elif t == "datetime" and isinstance(s.dtype, pl.Datetime):
            out = s.dt.cast_time_unit("ms")
            out = out.dt.replace_time_zone("UTC") if s.dtype.time_zone is None else out.dt.convert_time_zone("UTC")
        else:
            try:
                out = s.cast(target, strict=False)
            except Exception:
                raise SchemaError(f"field {name!r}: cannot convert column type {s.dtype} to {t}")
        bad = (out.is_null() & s.is_not_null()).arg_true()
        if len(bad):
            i = int(bad[0])
            raise SchemaError(f"{_where(i, name)}: value {s[i]!r} is not of type {t}")
    if name == "id":
        if out.null_count():
            raise SchemaError(f"{_where(int(out.is_null().arg_true()[0]), 'id')}: id is missing")
        if t == "string":
            too_long = (out.str.len_bytes() > ID_MAX_BYTES).arg_true()
            if len(too_long):
                raise SchemaError(f"{_where(int(too_long[0]), 'id')}: id longer than {ID_MAX_BYTES} bytes")
    return out.alias(name)


def column_order(schema: Mapping) -> list[str]:
    """Columns of a documents frame: id first, then attributes in schema order."""
    return (["id"] if "id" in schema else []) + [c for c in schema if c != "id"]


def align(df: pl.DataFrame, schema: Mapping, columns: Iterable[str] | None = None) -> pl.DataFrame:
    """Frame with exactly the schema's columns (or ``columns``) in schema order, typed;
    missing columns become nulls."""
    cols = list(columns) if columns is not None else column_order(schema)
    if df.width == 0:
        return pl.DataFrame(schema={c: dtype_of(schema[c]["type"]) for c in cols})
    types = [dtype_of(schema[c]["type"]) for c in cols]
    if df.columns == cols and list(df.schema.dtypes()) == types:
        return df
    exprs = []
    for c, t in zip(cols, types):
        if c in df.columns:
            exprs.append(pl.col(c).cast(t) if df.schema[c] != t else pl.col(c))
        else:
            exprs.append(pl.lit(None, dtype=t).alias(c))
    return df.select(exprs)
