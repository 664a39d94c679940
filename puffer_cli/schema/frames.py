"""Typed frames: write payloads (JSON rows, JSON columns, polars frames) -> frames with
exact dtypes, every value checked against its attribute's type.

Every conversion error names the row and the field, and nothing is written.

Value rules (docs/http.md, "Limits: writes"), the same for JSON rows/columns
(``frame_from_rows`` / ``frame_from_columns``) and for frames (``conform_frame``,
used by ``puffer ingest``):

* attribute names: 1..MAX_ATTRIBUTE_NAME_BYTES bytes of UTF-8, not starting with ``$``;
  at most MAX_ATTRIBUTES_PER_WRITE names per write and MAX_ATTRIBUTES_PER_NAMESPACE
  per namespace (``attrs.check_write_names``, before any frame is built);
* a value is a scalar, a flat array of scalars (at most MAX_ARRAY_ITEMS) or a vector;
  nothing nests deeper (``attrs.check_depth`` bounds what is walked at all);
* int: -2**63 .. 2**63-1; uint: 0 .. 2**64-1 (only where the schema, or the id, says
  uint: an inferred integer attribute is int); an integer outside int64 is refused for
  int and float attributes (never silently made a float); a float is accepted for an
  int attribute only if it is integral and in range;
* floats and vector elements are finite (no NaN / infinity); vector elements are
  numbers (not strings or booleans; a whole vector may be a base64 string of
  little-endian f32), and fit in float32; at most MAX_VECTOR_DIMS dimensions;
* datetimes (ms since the epoch, RFC 3339 strings as :func:`attrs.parse_datetime_ms`
  reads them, datetimes) lie in years 1..9999;
* strings are at most MAX_STRING_BYTES of UTF-8, ids at most MAX_ID_BYTES;
* booleans are only booleans (never numbers).
"""

from __future__ import annotations

import datetime as dt
import math
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson
import polars as pl

from puffer_cli import limits as L
from puffer_cli.errors import SchemaError, show
from puffer_cli.schema import multivec as MV
from puffer_cli.schema import sparse
from puffer_cli.schema.types import (
    DATETIME_MS,
    EPOCH,
    ID_MAX_BYTES,
    ID_TYPES,
    INT64,
    NONE,
    SCALARS,
    SPARSE,
    UINT64,
    check_attr_name,
    check_write_names,
    decode_vector_b64,
    dtype_of,
    infer_column,
    multi_vector_dims,
    parse_datetime_ms,
    type_of_dtype,
    utf8_len,
    vector_dims,
    where,
)


def _check_id(v, t: str, row) -> Any:
    if v is None:
        raise SchemaError(f"{where(row, 'id')}: id is missing", hint="every document needs an id")
    if t == "uint":
        if isinstance(v, np.integer):
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v >= 2**64:
            raise SchemaError(
                f"{where(row, 'id')}: id {show(v, python=True)} is not an unsigned 64-bit integer",
                hint="ids are u64, UUIDs or strings up to 64 bytes, one kind per namespace",
            )
        return v
    if t == "uuid":
        try:
            return str(v if isinstance(v, uuidlib.UUID) else uuidlib.UUID(v))
        except (ValueError, AttributeError, TypeError):
            raise SchemaError(f"{where(row, 'id')}: id {show(v, python=True)} is not a UUID") from None
    if not isinstance(v, str) or not v:
        raise SchemaError(
            f"{where(row, 'id')}: id {show(v, python=True)} is not a non-empty string",
            hint="this namespace uses string ids",
        )
    n = utf8_len(v)
    if n is None or n > ID_MAX_BYTES:
        raise SchemaError(
            f"{where(row, 'id')}: id is {'not valid Unicode' if n is None else f'{n} bytes'}; "
            f"ids are at most {ID_MAX_BYTES} bytes of UTF-8",
            hint="MAX_ID_BYTES",
        )
    return v


def id_type(t: str | None, null_row: int | None = None, what: str = "") -> str:
    """The id type inferred for a new namespace's first write: refuse an all-null id
    column (``null_row``: the first row) and a type that is not an id type (a negative
    integer, a float, a boolean, an array, ...) here, before any frame is built."""
    if t is None:
        raise SchemaError(
            f"{what}{where(null_row or 0, 'id')}: id is missing (null)", hint="every document needs a non-null id"
        )
    if t not in ID_TYPES:
        raise SchemaError(
            f"{what}field 'id': ids are {t}, not one of {', '.join(ID_TYPES)}",
            hint="ids are unsigned 64-bit integers, UUIDs or strings up to 64 bytes, one kind per namespace",
        )
    return t


def _datetime_range_error(name, row, v) -> SchemaError:
    return SchemaError(
        f"{where(row, name)}: datetime {show(v, python=True)} is out of range",
        hint="datetimes are years 1 to 9999: RFC 3339 strings or milliseconds since the epoch "
        f"({DATETIME_MS[0]} to {DATETIME_MS[1]})",
    )


def _parse_datetime(v, name, row):
    if isinstance(v, bool):
        raise SchemaError(f"{where(row, name)}: expected a datetime, got {v!r}")
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v) or not DATETIME_MS[0] <= v <= DATETIME_MS[1]:
            raise _datetime_range_error(name, row, v)
        try:
            return EPOCH + dt.timedelta(milliseconds=v)
        except OverflowError:
            raise _datetime_range_error(name, row, v) from None
    if isinstance(v, str):
        ms = parse_datetime_ms(v)
        if ms is None:
            raise SchemaError(
                f"{where(row, name)}: {show(v, python=True)} is not an RFC 3339 datetime (years 1 to 9999)"
            )
        if not DATETIME_MS[0] <= math.floor(ms) <= DATETIME_MS[1]:  # an offset past year 1 / 9999
            raise _datetime_range_error(name, row, v)
        return EPOCH + dt.timedelta(microseconds=math.floor(ms * 1000))
    if isinstance(v, dt.datetime):
        d = v if v.tzinfo else v.replace(tzinfo=dt.UTC)
    elif isinstance(v, dt.date):
        d = dt.datetime(v.year, v.month, v.day, tzinfo=dt.UTC)
    else:
        raise SchemaError(f"{where(row, name)}: expected a datetime, got {show(v, python=True)}")
    try:  # an offset can push year 1 / 9999 out of range
        d.astimezone(dt.UTC)
    except OverflowError:
        raise _datetime_range_error(name, row, v) from None
    return d


def check_scalar(v, t: str, name: str, row) -> Any:
    """Validate/normalise one non-null scalar value of type ``t`` (rules: module docstring)."""
    bad = None
    if isinstance(v, np.generic):
        v = v.item()
    if t == "string":
        if not isinstance(v, str):
            bad = "a string"
        else:
            n = utf8_len(v)
            if n is None:
                raise SchemaError(f"{where(row, name)}: string is not valid Unicode (a lone surrogate)")
            if n > L.MAX_STRING_BYTES:
                raise SchemaError(
                    f"{where(row, name)}: string is {n} bytes; the limit is {L.MAX_STRING_BYTES}",
                    hint="MAX_STRING_BYTES; see docs/http.md, Limits: writes",
                )
    elif t == "int":
        if isinstance(v, float) and v.is_integer() and INT64[0] <= v <= INT64[1]:
            return int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            bad = "an integer"
        elif not INT64[0] <= v <= INT64[1]:
            raise SchemaError(
                f"{where(row, name)}: integer {show(v, python=True)} does not fit in int64 (type int)",
                hint='int is -2^63..2^63-1; for values up to 2^64-1 declare the attribute "uint" in the schema',
            )
    elif t == "uint":
        if isinstance(v, bool) or not isinstance(v, int) or not UINT64[0] <= v <= UINT64[1]:
            bad = "an unsigned 64-bit integer"
    elif t == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            bad = "a number"
        elif isinstance(v, int):
            if not INT64[0] <= v <= INT64[1]:
                raise SchemaError(
                    f"{where(row, name)}: integer {show(v, python=True)} is outside int64; "
                    "not converted to a float (type float)",
                    hint="send it as a float if that is what you mean",
                )
            return float(v)
        elif not math.isfinite(v):
            raise SchemaError(
                f"{where(row, name)}: {v!r} is not a finite number (type float)",
                hint="NaN and infinity are not JSON numbers; use null for a missing value",
            )
        else:
            return v
    elif t == "bool":
        if not isinstance(v, bool):
            bad = "true or false"
    elif t == "uuid":
        try:
            return str(v if isinstance(v, uuidlib.UUID) else uuidlib.UUID(v))
        except (ValueError, TypeError, AttributeError):
            bad = "a UUID"
    elif t == "datetime":
        return _parse_datetime(v, name, row)
    elif t == SPARSE:
        return sparse.canonical(v, where(row, name))
    if bad:
        raise SchemaError(f"{where(row, name)}: expected {bad} (type {t}), got {show(v, python=True)}")
    return v


def column_series(name: str, values: list, t: str, *, first_row: int = 0) -> pl.Series:
    """Build a typed Series from Python values, naming the first bad row."""
    dims = vector_dims(t)
    if dims is not None:
        return _vector_series(name, values, dims, first_row)
    if t == SPARSE:
        sv = [None if v is None else sparse.canonical(v, where(first_row + i, name)) for i, v in enumerate(values)]
        return pl.Series(name, sv, dtype=pl.String)
    if (mdims := multi_vector_dims(t)) is not None:
        return MV.series(name, values, mdims, first_row)
    if t.startswith("[]"):
        inner = t[2:]
        out: list[list[Any] | None] = []
        for i, v in enumerate(values):
            if isinstance(v, np.ndarray) and v.ndim == 1:
                v = v.tolist()
            if v is None:
                out.append(None)
            elif not isinstance(v, (list, tuple)):
                raise SchemaError(
                    f"{where(first_row + i, name)}: expected an array (type {t}), got {show(v, python=True)}"
                )
            elif len(v) > L.MAX_ARRAY_ITEMS:
                raise SchemaError(
                    f"{where(first_row + i, name)}: array has {len(v)} elements; the limit is {L.MAX_ARRAY_ITEMS}",
                    hint="MAX_ARRAY_ITEMS; see docs/http.md, Limits: writes",
                )
            else:
                out.append([check_scalar(x, inner, name, first_row + i) for x in v if x is not None])
        return pl.Series(name, out, dtype=dtype_of(t))
    if name != "id":
        fast = _fast_scalar_series(name, values, t)
        if fast is not None:
            return fast
    if name == "id":
        vals = [_check_id(v, t, first_row + i) for i, v in enumerate(values)]
    else:
        vals = [None if v is None else check_scalar(v, t, name, first_row + i) for i, v in enumerate(values)]
    return pl.Series(name, vals, dtype=dtype_of(t))


_FAST_KINDS: dict[str, set[type]] = {
    "int": {int},
    "uint": {int},
    "float": {float, int},
    "string": {str},
    "bool": {bool},
}


def _fast_scalar_series(name: str, values: list, t: str) -> pl.Series | None:
    """The common case at C speed: every value already of the plain Python type, and the
    column passes the rules as a whole.  None: take the per-value path (which names the
    first bad row)."""
    kinds = _FAST_KINDS.get(t)
    if kinds is None or not set(map(type, values)) - {NONE} <= kinds:
        return None
    try:
        s = pl.Series(name, values, dtype=dtype_of(t), strict=True)
    except Exception:  # noqa: BLE001 - out of range, lone surrogates, ...: the slow path says which row
        return None
    if t == "float":
        if (s.is_nan() | s.is_infinite()).any():
            return None
        if int in set(map(type, values)):  # integers beyond int64 are refused, not rounded
            ints: list[int] = [v for v in values if type(v) is int]
            if min(ints) < INT64[0] or max(ints) > INT64[1]:
                return None
    elif t == "string" and len(s):
        longest = s.str.len_bytes().max()  # an int, or None when every value is null
        if isinstance(longest, int) and longest > L.MAX_STRING_BYTES:
            return None
    return s


def _vector_series(name, values, dims, first_row) -> pl.Series:
    rows = []
    mask = []
    for i, v in enumerate(values):
        if v is None:
            rows.append(np.zeros(dims, np.float32))
            mask.append(False)
            continue
        a = vector_array(v, name, first_row + i)
        if a.shape[0] != dims:
            raise SchemaError(
                f"{where(first_row + i, name)}: vector has {a.shape[0]} dimensions; the namespace expects {dims}"
            )
        rows.append(a)
        mask.append(True)
    mat = np.stack(rows) if rows else np.zeros((0, dims), np.float32)
    s = pl.Series(name, mat, dtype=pl.Array(pl.Float32, dims))
    if not all(mask):
        s = pl.select(pl.when(pl.Series(mask)).then(s).otherwise(None)).to_series().alias(name)
    return s


def vector_array(v, name: str, row) -> np.ndarray:
    """One vector value -> 1-d float32 array: a list of numbers (ints or floats, not
    booleans or strings), a numeric numpy array, or a base64 string of little-endian f32.
    Every element finite in float32; at most MAX_VECTOR_DIMS of them."""
    at = where(row, name)
    a: Any
    if isinstance(v, str):
        try:
            a = decode_vector_b64(v)
        except ValueError as e:
            raise SchemaError(f"{at}: {e}") from None
    elif isinstance(v, np.ndarray):
        if v.ndim != 1 or v.dtype.kind not in "fiu":
            raise SchemaError(f"{at}: vector must be a 1-d array of numbers, got a {v.dtype} array of shape {v.shape}")
        a = v
    elif isinstance(v, (list, tuple)):
        kinds = set(map(type, v))
        if not kinds <= {float, int}:
            bad = next(x for x in v if type(x) not in (float, int))
            raise SchemaError(
                f"{at}: vector elements must be numbers, got {show(bad, python=True)}",
                hint="a vector is an array of numbers (or a base64 string of f32)",
            )
        a = v
    else:
        raise SchemaError(f"{at}: vector must be an array of numbers, got {show(v, python=True)}")
    if len(a) > L.MAX_VECTOR_DIMS:
        raise SchemaError(
            f"{at}: vector has {len(a)} dimensions; the limit is {L.MAX_VECTOR_DIMS}", hint="MAX_VECTOR_DIMS"
        )
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            a = np.asarray(a, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise SchemaError(f"{at}: vector elements must be numbers that fit in float32") from None
    if not np.isfinite(a).all():
        raise SchemaError(
            f"{at}: vector contains NaN, infinity or a number beyond float32",
            hint="vector elements are finite float32 numbers",
        )
    return a


def frame_from_columns(
    cols: Mapping[str, list], schema: Mapping, *, partial: bool = False, first_row: int = 0
) -> tuple[pl.DataFrame, dict]:
    """Columns of Python values -> (typed frame, new attribute types inferred).
    ``partial``: no id column needed (patch values checked on their own)."""
    if "id" not in cols and not partial:
        raise SchemaError('missing the "id" column', hint="every document needs an id")
    n = None
    for k, v in cols.items():
        check_attr_name(k)
        if not isinstance(v, (list, tuple, np.ndarray)):
            raise SchemaError(f"column {k!r} must be an array of values")
        if n is None:
            n = len(v)
        elif len(v) != n:
            raise SchemaError(
                f'column {k!r} has {len(v)} values; column "id" has {n}', hint="all columns must have the same length"
            )
    inferred: dict[str, str | None] = {}
    series = []
    for k, vals in cols.items():
        vals = list(vals)
        if k in schema:
            t = schema[k]["type"]
        else:
            t = infer_column(k, vals, first_row)
            if k == "id":
                t = id_type(t, first_row)
            inferred[k] = t
            if t is None:
                series.append(pl.Series(k, [None] * len(vals), dtype=pl.Null))
                continue
        series.append(column_series(k, vals, t, first_row=first_row))
    return pl.DataFrame(series), inferred


def frame_from_rows(
    rows: list, schema: Mapping, *, what: str = "upsert_rows", first_row: int = 0
) -> tuple[pl.DataFrame, dict]:
    names: dict = {}
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise SchemaError(f"{what} row {first_row + i}: expected an object, got {type(r).__name__}")
        names.update(dict.fromkeys(r))  # first-seen order, at C speed
    for k in names:
        check_attr_name(k)
    cols = {k: [r.get(k) for r in rows] for k in names}
    if not rows:
        return pl.DataFrame(), {}
    missing = [i for i, r in enumerate(rows) if "id" not in r]
    if missing:
        raise SchemaError(f'{what} row {first_row + missing[0]}: missing "id"')
    return frame_from_columns(cols, schema, first_row=first_row)


def conform_frame(df: pl.DataFrame, schema: Mapping, *, first_row: int = 0) -> tuple[pl.DataFrame, dict]:
    """A polars frame (ingest) -> typed frame + inferred types. Vectorised; the value
    rules are the JSON path's (module docstring). Errors name row ``first_row + i``."""
    check_write_names(df.columns, schema, what="frame")
    inferred: dict[str, str | None] = {}
    out = []
    for name in df.columns:
        s = df.get_column(name)
        if name in schema:
            t = schema[name]["type"]
        else:
            t = type_of_dtype(name, s.dtype)
            if name == "id":
                t = id_type(t, first_row + (_first(s.is_null()) or 0))
            if t is None and isinstance(s.dtype, pl.List):  # vector given as a list column
                lens = s.list.len().drop_nulls()
                t = f"[{int(lens[0])}]f32" if len(lens) else None
            inferred[name] = t
            if t is None:
                out.append(s)
                continue
        out.append(cast_series(s, t, first_row=first_row))
    return pl.DataFrame(out), inferred


def _first(mask: pl.Series) -> int | None:
    idx = mask.fill_null(False).arg_true()
    return int(idx[0]) if len(idx) else None


def _cast_vectors(s: pl.Series, dims: int, t: str, first_row: int = 0) -> pl.Series:
    name = s.name
    if s.dtype == pl.Null:
        return pl.Series(name, [None] * len(s), dtype=pl.Array(pl.Float32, dims))
    if isinstance(s.dtype, pl.Array):
        if s.dtype.size != dims:
            raise SchemaError(f"field {name!r}: vectors have {s.dtype.size} dimensions; the namespace expects {dims}")
        s = s.cast(pl.List(s.dtype.inner))
    elif not isinstance(s.dtype, pl.List):
        raise SchemaError(f"field {name!r}: expected vectors ({t}), got column type {s.dtype}")
    assert isinstance(s.dtype, pl.List)  # cast to a List above
    if not s.dtype.inner.is_numeric():
        raise SchemaError(
            f"field {name!r}: vector elements must be numbers, got column type {s.dtype}",
            hint="a vector is a list of floats or integers",
        )
    lens = s.list.len()
    i = _first((lens != dims) & lens.is_not_null())
    if i is not None:
        raise SchemaError(
            f"{where(first_row + i, name)}: vector has {lens[i]} dimensions; the namespace expects {dims}"
        )
    with np.errstate(over="ignore"):
        f = s.cast(pl.List(pl.Float32), strict=False)
    finite = f.list.eval(pl.element().is_finite().fill_null(False)).list.all()
    i = _first(~finite & f.is_not_null())
    if i is not None:
        raise SchemaError(
            f"{where(first_row + i, name)}: vector contains NaN, infinity, null or a number beyond float32",
            hint="vector elements are finite float32 numbers",
        )
    return f.list.to_array(dims).alias(name)


def _check_cast(src: pl.Series, out: pl.Series, t: str, name: str, rows) -> None:
    """Scalar values ``src`` cast to ``out`` (type ``t``): refuse what the cast lost or
    changed. ``rows[i]`` is the row of element i (for arrays, exploded)."""

    def fail(mask, msg, hint=None):
        i = _first(mask)
        if i is not None:
            raise SchemaError(f"{where(int(rows[i]), name)}: {msg(i)}", hint=hint)

    d = src.dtype
    if d == pl.Boolean and t in ("int", "uint", "float", "datetime"):
        fail(src.is_not_null(), lambda i: f"expected type {t}, got a boolean")
    if d.is_float() and t in ("int", "uint", "float", "datetime"):
        fail(
            src.is_nan() | src.is_infinite(),
            lambda i: f"{src[i]!r} is not a finite number (type {t})",
            "NaN and infinity are not JSON numbers; use null for a missing value",
        )
    if d.is_integer() and t in ("int", "float"):
        fail(
            src > INT64[1] if d.is_unsigned_integer() else (src < INT64[0]) | (src > INT64[1]),
            lambda i: f"integer {src[i]} does not fit in int64 (type {t})",
            'int is -2^63..2^63-1; for values up to 2^64-1 declare the attribute "uint" in the schema',
        )
    if d.is_signed_integer() and t == "uint":
        fail(src < 0, lambda i: f"integer {src[i]} is not an unsigned 64-bit integer (type uint)")
    if d.is_float() and t in ("int", "uint"):
        fail(out.cast(pl.Float64) != src, lambda i: f"{src[i]!r} is not an integer in range (type {t})")
    if t == "datetime" and out.dtype != pl.Null:
        ms = out.cast(pl.Int64)
        fail(
            (ms < DATETIME_MS[0]) | (ms > DATETIME_MS[1]),
            lambda i: "datetime is out of range",
            "datetimes are years 1 to 9999",
        )
    if t == "string" and out.dtype == pl.String:
        fail(
            out.str.len_bytes() > L.MAX_STRING_BYTES,
            lambda i: f"string is {out.str.len_bytes()[i]} bytes; the limit is {L.MAX_STRING_BYTES}",
            "MAX_STRING_BYTES",
        )
    if isinstance(d, pl.Datetime) or d == pl.Date:
        fail(out.is_null() & src.is_not_null(), lambda i: f"value is not of type {t}")
    else:
        fail(out.is_null() & src.is_not_null(), lambda i: f"value {show(src[i], python=True)} is not of type {t}")


def _cast_scalars(s: pl.Series, t: str) -> pl.Series:
    target = dtype_of(t)
    if t == "datetime" and s.dtype == pl.String:
        return s.str.to_datetime(time_zone="UTC", strict=False).dt.cast_time_unit("ms")
    if t == "datetime" and isinstance(s.dtype, pl.Datetime):
        ms = s.dt.cast_time_unit("ms")
        # range-check the physical value before any time-zone arithmetic (which panics out of range)
        bad = _first((ms.cast(pl.Int64) < DATETIME_MS[0]) | (ms.cast(pl.Int64) > DATETIME_MS[1]))
        if bad is not None:
            return ms.cast(pl.Int64)  # _check_cast reports it (as an out-of-range datetime)
        return ms.dt.replace_time_zone("UTC") if s.dtype.time_zone is None else ms.dt.convert_time_zone("UTC")
    if t == "datetime" and s.dtype == pl.Date:
        return s.cast(pl.Datetime("ms")).cast(pl.Int64)  # checked for range, then cast by the caller
    try:
        return s.cast(target, strict=False)
    except Exception:  # noqa: BLE001 - polars raises several kinds for impossible casts
        raise SchemaError(f"field {s.name!r}: cannot convert column type {s.dtype} to {t}") from None


def cast_series(s: pl.Series, t: str, *, first_row: int = 0) -> pl.Series:
    """Strict cast of a polars Series to type ``t``; SchemaError names the first bad row
    (``first_row`` + its position)."""
    name = s.name
    target = dtype_of(t)
    if (dims := vector_dims(t)) is not None:
        out = _cast_vectors(s, dims, t, first_row)
    elif t == SPARSE:
        out = _cast_sparse(s, first_row)
    elif (mdims := multi_vector_dims(t)) is not None:
        out = MV.cast(s, mdims, t, first_row)
    elif t.startswith("[]"):
        inner = t[2:]
        if s.dtype == pl.Null:
            out = s.cast(target)
        else:
            if isinstance(s.dtype, pl.Array):
                s = s.cast(pl.List(s.dtype.inner))
            if not isinstance(s.dtype, pl.List):
                raise SchemaError(f"field {name!r}: expected arrays ({t}), got column type {s.dtype}")
            lens = s.list.len()
            i = _first(lens > L.MAX_ARRAY_ITEMS)
            if i is not None:
                raise SchemaError(
                    f"{where(first_row + i, name)}: array has {lens[i]} elements; the limit is {L.MAX_ARRAY_ITEMS}",
                    hint="MAX_ARRAY_ITEMS",
                )
            flat = pl.DataFrame({"__row": np.arange(len(s)), "v": s}).explode("v", empty_as_null=True, keep_nulls=True)
            src = flat.get_column("v")
            got = _cast_scalars(src, inner)
            _check_cast(src, got, inner, name, flat.get_column("__row") + first_row)
            if got.dtype != SCALARS[inner]:
                got = got.cast(SCALARS[inner])
            out = (
                pl.DataFrame({"__row": flat.get_column("__row"), "v": got})
                .group_by("__row", maintain_order=True)
                .agg(pl.col("v").drop_nulls())
                .get_column("v")
            )
            out = pl.select(pl.when(s.is_not_null()).then(out).otherwise(None)).to_series().cast(target)
    else:
        out = _cast_scalars(s, t)
        _check_cast(s, out, t, name, np.arange(len(s)) + first_row)
        if out.dtype != target:
            out = out.cast(target)
        if out.dtype != target:  # a struct "casts" to a scalar type by casting its fields
            raise SchemaError(f"field {name!r}: expected {t} values, got column type {s.dtype}")
    if name == "id":
        if out.null_count():
            row = first_row + int(out.is_null().arg_true()[0])
            raise SchemaError(f"{where(row, 'id')}: id is missing (null)", hint="every document needs a non-null id")
        if t == "string":
            too_long = (out.str.len_bytes() > ID_MAX_BYTES).arg_true()
            if len(too_long):
                row = first_row + int(too_long[0])
                raise SchemaError(f"{where(row, 'id')}: id longer than {ID_MAX_BYTES} bytes", hint="MAX_ID_BYTES")
    return out.alias(name)


def _cast_sparse(s: pl.Series, first_row: int) -> pl.Series:
    """A column of sparse vectors (ingest, frames read back): stored forms or JSON object
    texts (String), objects (Struct: a missing key is null), or nulls -> stored forms."""
    name = s.name
    if s.dtype == pl.Null:
        return pl.Series(name, [None] * len(s), dtype=pl.String)
    if s.dtype == pl.String:
        vals: list = []
        for i, v in enumerate(s.to_list()):
            if v is None:
                vals.append(None)
                continue
            try:
                obj = orjson.loads(v)
            except orjson.JSONDecodeError:
                at = where(first_row + i, name)
                got = show(v, python=True)
                raise SchemaError(f"{at}: expected a sparse vector (a JSON object), got {got}") from None
            vals.append(sparse.canonical(obj, where(first_row + i, name)))
        return pl.Series(name, vals, dtype=pl.String)
    if isinstance(s.dtype, pl.Struct):
        rows = [None if v is None else {k: w for k, w in v.items() if w is not None} for v in s.to_list()]
        return column_series(name, rows, SPARSE, first_row=first_row)
    raise SchemaError(f"field {name!r}: expected sparse vectors ({SPARSE}), got column type {s.dtype}")


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
    # read the frame's schema once: df.columns / df.schema build a fresh list / Schema on
    # every access, so looking them up per column was O(columns^2) (a 10,000-attribute
    # upsert into a namespace with a warm replay cache took minutes)
    have = dict(df.schema)
    if list(have) == cols and list(have.values()) == types:
        return df
    exprs = []
    for c, t in zip(cols, types):
        if c in have:
            exprs.append(pl.col(c).cast(t) if have[c] != t else pl.col(c))
        else:
            exprs.append(pl.lit(None, dtype=t).alias(c))
    return df.select(exprs)
