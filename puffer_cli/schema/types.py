"""Attributes: names and their limits, type strings and their polars dtypes, value
domains, inference of a type from values or dtypes, and the one decoder of each wire
form of a value (RFC 3339 datetimes, base64 vectors).

Datetime strings (:func:`parse_datetime_ms`, used by writes and filters alike) are RFC 3339
``YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`` (``T`` may be ``t`` or a space, ``Z``
may be ``z``) with the relaxations of ISO 8601's extended format that turbopuffer documents
("an ISO 8601 formatted string with a mandatory date and optional time and time zone",
turbopuffer.com/docs/schema): the offset may be left out (UTC), a bare date ``YYYY-MM-DD``
is midnight UTC, the seconds may be left out (``THH:MM``) and an offset may be whole hours
(``+HH``).  Nothing else (no week or ordinal dates, no basic ``20240101`` form, no
``+0100`` offsets, no surrounding white space).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import itertools
import re
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from puffer_cli import limits as L
from puffer_cli.errors import SchemaError, show

if TYPE_CHECKING:
    from polars._typing import PolarsDataType  # a dtype instance or class (pl.String)


SCALARS: dict[str, PolarsDataType] = {
    "string": pl.String,
    "int": pl.Int64,
    "uint": pl.UInt64,
    "float": pl.Float64,
    "bool": pl.Boolean,
    "datetime": pl.Datetime("ms", "UTC"),
    "uuid": pl.String,
}
#: the distance metrics of a namespace's vectors (turbopuffer's names)
METRICS = ("cosine_distance", "euclidean_squared")
VEC_RE = re.compile(r"^\[(\d+)\](f32|f16)$")
#: multi-vector (late interaction) attributes: a list of N-dimensional f32 vectors per document
MULTI_VEC_RE = re.compile(r"^\[\]\[(\d+)\]f32$")
ID_TYPES = ("uint", "uuid", "string")
SPARSE = "{}f16"  # sparse vectors (puffer_cli/schema/sparse.py)
ID_MAX_BYTES = L.MAX_ID_BYTES
ATTR_MAX = L.MAX_ATTRIBUTE_NAME_BYTES
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# the datetime type's domain (Python's, years 1..9999), in ms since the epoch
DATETIME_MS = (
    int((dt.datetime.min.replace(tzinfo=dt.UTC) - EPOCH) / dt.timedelta(milliseconds=1)),
    int((dt.datetime.max.replace(tzinfo=dt.UTC) - EPOCH) // dt.timedelta(milliseconds=1)),
)
_SCALAR_PY = (str, int, float, bool, type(None))


def vector_dims(t: str) -> int | None:
    m = VEC_RE.match(t)
    return int(m.group(1)) if m else None


def is_vector(t: str) -> bool:
    return VEC_RE.match(t) is not None


def multi_vector_dims(t: str) -> int | None:
    """N of a ``[][N]f32`` (multi-vector) type, else None."""
    m = MULTI_VEC_RE.match(t)
    return int(m.group(1)) if m else None


def is_multi_vector(t: str) -> bool:
    return MULTI_VEC_RE.match(t) is not None


def dtype_of(t: str) -> PolarsDataType:
    """polars dtype for a type string; SchemaError if unknown."""
    if t in SCALARS:
        return SCALARS[t]
    if t == SPARSE:  # stored as its canonical JSON text (puffer_cli/schema/sparse.py)
        return pl.String
    if t.startswith("[]") and t[2:] in SCALARS:
        return pl.List(SCALARS[t[2:]])
    m = VEC_RE.match(t)
    if m:
        n = int(m.group(1))
        if not 1 <= n <= L.MAX_VECTOR_DIMS:
            raise SchemaError(
                f"vector type {t!r}: {n} dimensions; vectors have 1 to {L.MAX_VECTOR_DIMS}",
                hint="MAX_VECTOR_DIMS; see docs/http.md, Limits: writes",
            )
        return pl.Array(pl.Float32, n)
    m = MULTI_VEC_RE.match(t)
    if m:
        n = int(m.group(1))
        if not 1 <= n <= L.MAX_VECTOR_DIMS:
            raise SchemaError(
                f"multi-vector type {t!r}: {n} dimensions; vectors have 1 to {L.MAX_VECTOR_DIMS}",
                hint="MAX_VECTOR_DIMS; see docs/http.md, Limits: writes",
            )
        return pl.List(pl.Array(pl.Float32, n))
    raise SchemaError(
        f"unknown type {t!r}",
        hint="types: string int uint float bool datetime uuid, []T arrays, [N]f32 / [N]f16 vectors, "
        "{}f16 sparse, [][N]f32 multi-vectors",
    )


def utf8_len(v: str) -> int | None:
    """Bytes of ``v`` as UTF-8; None if it cannot be encoded (a lone surrogate)."""
    if v.isascii():
        return len(v)
    try:
        return len(v.encode())
    except UnicodeEncodeError:
        return None


def check_attr_name(name: Any) -> str:
    n = utf8_len(name) if isinstance(name, str) else None
    if n is None or not 1 <= n <= ATTR_MAX or name.startswith("$"):
        raise SchemaError(
            f"invalid attribute name {show(name, python=True)}: "
            f"names are 1 to {ATTR_MAX} bytes of UTF-8 and do not start with '$'",
            hint="MAX_ATTRIBUTE_NAME_BYTES",
        )
    return name


def check_write_names(
    names: Iterable[Any], schema: Mapping, what: str = "write", *, groups: Iterable[Iterable[Any]] = ()
) -> None:
    """Attribute-count and name rules for one write, checked before anything is built.

    ``names`` (and each collection in ``groups``, e.g. one row's keys) are every
    attribute the write names (rows' keys, columns, patch keys, declared schema);
    ``schema`` the namespace's schema before it.  At most MAX_ATTRIBUTES_PER_WRITE
    distinct names (``id`` not counted), names valid, and the namespace ends with at
    most MAX_ATTRIBUTES_PER_NAMESPACE attributes (a namespace already past the limit,
    from older data, may still be written without new ones)."""
    distinct: set = set()
    for g in itertools.chain((names,), groups):
        try:
            distinct.update(g)
        except TypeError:  # an unhashable key cannot come from JSON; refuse it as a name
            raise SchemaError(f"{what}: attribute names must be strings") from None
        if len(distinct) - ("id" in distinct) > L.MAX_ATTRIBUTES_PER_WRITE:
            raise SchemaError(
                f"{what} names more than {L.MAX_ATTRIBUTES_PER_WRITE} attributes",
                hint="MAX_ATTRIBUTES_PER_WRITE; split the write or use fewer attributes",
            )
    distinct.discard("id")
    for n in distinct:
        check_attr_name(n)
    new = [n for n in distinct if n not in schema]
    if new:
        have = sum(1 for k in schema if k != "id")
        if have + len(new) > L.MAX_ATTRIBUTES_PER_NAMESPACE:
            raise SchemaError(
                f"{what} adds {len(new)} attribute(s) (e.g. {show(min(new), python=True)}) to a namespace with {have}; "
                f"a namespace has at most {L.MAX_ATTRIBUTES_PER_NAMESPACE}",
                hint="MAX_ATTRIBUTES_PER_NAMESPACE; reuse existing attributes or use another namespace",
            )


def check_schema_size(schema: Mapping, before: Mapping, what: str = "write") -> None:
    """The schema after a write stays within MAX_ATTRIBUTES_PER_NAMESPACE (or adds nothing)."""
    n = sum(1 for k in schema if k != "id")
    if n > L.MAX_ATTRIBUTES_PER_NAMESPACE and any(k not in before for k in schema):
        raise SchemaError(
            f"{what} would give the namespace {n} attributes; the limit is {L.MAX_ATTRIBUTES_PER_NAMESPACE}",
            hint="MAX_ATTRIBUTES_PER_NAMESPACE",
        )


def check_depth(obj: Any, what: str, limit: int | None = None) -> None:
    """Refuse ``obj`` if lists/dicts nest more than ``limit`` (MAX_VALUE_DEPTH) levels.
    Iterative (no recursion, so any depth is safe); a list of scalars is checked at C speed."""
    limit = L.MAX_VALUE_DEPTH if limit is None else limit
    stack = [(obj, 1)]
    while stack:
        v, d = stack.pop()
        items: Iterable[Any]
        if isinstance(v, Mapping):
            items = v.values()
        elif isinstance(v, (list, tuple)):
            items = v
        else:
            continue
        if d > limit:
            raise SchemaError(
                f"{what}: values nest more than {limit} levels deep",
                hint="MAX_VALUE_DEPTH; attribute values are scalars, flat arrays or vectors",
            )
        if set(map(type, items)) <= set(_SCALAR_PY):
            continue
        stack.extend((x, d + 1) for x in items if isinstance(x, (Mapping, list, tuple)))


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
            try:
                n = len(decode_vector_b64(v)) if v else 0
            except ValueError as e:
                raise SchemaError(f"{where(None, name)}: {e}") from None
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
        if isinstance(v, np.ndarray):
            v = v.tolist() if v.ndim == 1 else [v]
        # element types without recursion: a nested list/dict is not an attribute value
        inner = {
            "?nested" if isinstance(x, (list, tuple, Mapping, np.ndarray)) else infer_value_type("", x) for x in v
        } - {None}
        if inner == {"int", "float"}:
            inner = {"float"}
        if len(inner) == 1:
            (t,) = inner
            if t in SCALARS:
                return f"[]{t}"
        return "?mixed"
    return "?" + type(v).__name__


def type_of_dtype(name: str, d: PolarsDataType) -> str | None:
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
    if name == "vector" and isinstance(d, (pl.List, pl.Array)) and not d.inner.is_numeric():
        raise SchemaError(f"column 'vector': vector elements must be numbers, got column type {d}")
    if isinstance(d, pl.List):
        if name == "vector":
            return None  # dims unknown from the dtype; taken from the data
        inner = type_of_dtype("", d.inner)
        if inner in SCALARS:
            return f"[]{inner}"
    raise SchemaError(f"column {name!r}: unsupported type {d}")


_FAST_INFER = {
    frozenset({int}): "int",
    frozenset({float}): "float",
    frozenset({int, float}): "float",
    frozenset({str}): "string",
    frozenset({bool}): "bool",
    frozenset(): None,
}


def infer_column(name: str, values: Iterable, first_row: int = 0) -> str | None:
    if name not in ("id", "vector") and isinstance(values, list):
        kinds = frozenset(map(type, values)) - {NONE}
        if kinds in _FAST_INFER:  # plain scalars: the type of the column without a per-value call
            return _FAST_INFER[kinds]
    seen: str | None = None
    for i, v in enumerate(values):
        t = infer_value_type(name, v)
        if t is None:
            continue
        if t.startswith("?"):
            raise SchemaError(
                f"{where(first_row + i, name)}: unsupported value {show(v, python=True)}",
                hint="values are strings, numbers, booleans, arrays of one of those, or vectors; an object "
                '{"dimension": weight} is a sparse vector in an attribute declared "{}f16" in the schema, and '
                'lists of vectors need a declared multi-vector type (schema {"attr": "[][N]f32"})',
            )
        if seen is None:
            seen = t
        elif seen != t:
            if {seen, t} == {"int", "float"}:
                seen = "float"
            elif {seen, t} == {"[]int", "[]float"}:
                seen = "[]float"
            elif seen.endswith("f32") and t.endswith("f32"):
                raise SchemaError(
                    f"{where(first_row + i, name)}: vector has {vector_dims(t)} dimensions; "
                    f"earlier rows have {vector_dims(seen)}"
                )
            else:
                raise SchemaError(
                    f"{where(first_row + i, name)}: value {show(v, python=True)} is {t}, earlier rows are {seen}"
                )
    return seen


NONE = type(None)


def where(row: int | None, name: str) -> str:
    """``row 3, field 'x'`` (or ``field 'x'``), the prefix of every value error."""
    return f"row {row}, field {name!r}" if row is not None else f"field {name!r}"


# ------------------------------------------------------------------ wire forms of values
def decode_vector_b64(s: str) -> np.ndarray:
    """A base64 string of little-endian float32 -> a 1-d float32 array (possibly empty).
    ValueError (message without a location) if it is not base64 or not whole float32s;
    the caller checks dimensions and finiteness and raises its own error type."""
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("vector string is not valid base64") from None
    if len(raw) % 4:
        raise ValueError(f"base64 vector has {len(raw)} bytes, not a multiple of 4 (float32)")
    return np.frombuffer(raw, dtype="<f4")


_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)"
    r"(?:[Tt ](\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,30}))?)?(?:[Zz]|([+-])(\d\d)(?::(\d\d))?)?)?"
)
_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()


def parse_datetime_ms(s: str) -> int | Fraction | None:
    """An RFC 3339 string (the rules: module docstring) -> exact milliseconds since the
    epoch (a Fraction when it has sub-ms digits); None if it is not one.  The range
    (:data:`DATETIME_MS`) is the caller's to check: an offset may carry year 1 or 9999
    beyond it."""
    m = _RFC3339.fullmatch(s) if isinstance(s, str) and len(s) <= 64 else None
    if m is None:
        return None
    y, mo, d, hh, mi, ss, frac, sign, oh, om = m.groups()
    try:
        day = dt.date(int(y), int(mo), int(d)).toordinal() - _EPOCH_DAY
        t = dt.time(int(hh or 0), int(mi or 0), int(ss or 0))
    except ValueError:
        return None
    offset = 0
    if sign is not None:
        if int(oh) > 23 or int(om or 0) > 59:
            return None
        offset = (int(oh) * 3600 + int(om or 0) * 60) * (1 if sign == "+" else -1)
    secs = day * 86400 + t.hour * 3600 + t.minute * 60 + t.second - offset
    ms = Fraction(secs * 1000) + (Fraction(int(frac), 10 ** len(frac)) * 1000 if frac else 0)
    return int(ms) if ms.denominator == 1 else ms
