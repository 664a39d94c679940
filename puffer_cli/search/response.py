"""A query result as turbopuffer's response JSON: the one place output is shaped.

Both views (``puffer serve`` and ``puffer query --format json|ndjson``) print a query
response with :func:`render`, so the CLI prints exactly the HTTP body.  Two steps:

1. :func:`result_body` (called by the engine): a :class:`~puffer_cli.search.engine.QueryResult`
   -> the response body as plain Python: rows ``{"id", "$dist", attributes...}`` with
   nulls omitted, datetimes as RFC 3339 text (``...T..:..:..sssZ``, UTC), vectors as
   lists of floats, or base64 f32 LE strings with ``vector_encoding: "base64"``.  This is
   what ``engine.run_query`` returns (``$dist`` keeps its float64 value for library users).
2. :func:`render`: that body -> JSON bytes (``orjson``).  Vectors and ``$dist`` are f32
   quantities (as in turbopuffer): they are emitted in the shortest form that round-trips
   as f32 (``0.7``, not ``0.699999988079071``); other floats (``float`` attributes are f64)
   are left alone.  NaN and +-inf, which JSON cannot carry, come out as ``null``.
   ``performance`` and ``billing`` pass through as they are.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson
import polars as pl

from puffer_cli.schema import spec as S
from puffer_cli.schema import types

__all__ = [
    "dumps",
    "error_body",
    "jsonable",
    "render",
    "result_body",
    "result_rows",
    "recall_wire",
    "returned_bytes",
    "row_columns",
    "to_wire",
    "vector_attrs",
    "vector_b64",
]

DUMP_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


# ------------------------------------------------------------------ result -> body (Python)
_RFC3339 = "%Y-%m-%dT%H:%M:%S%.3fZ"

#: datetimes printable as text (polars panics beyond chrono's +-262,143 years): others come out null
_DT_MS_MAX = 8_000_000_000_000_000


def _dt_text(e: pl.Expr) -> pl.Expr:
    ms = e.dt.epoch("ms")
    return pl.when(ms.abs() <= _DT_MS_MAX).then(e).otherwise(None).dt.to_string(_RFC3339)


def vector_b64(v: Any) -> str:
    """One vector as turbopuffer's base64: its f32 little-endian bytes."""
    return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()


def jsonable(frame: pl.DataFrame, encoding: str = "float") -> pl.DataFrame:
    """Datetimes -> RFC 3339 strings; vectors -> lists (or base64)."""
    exprs: list[pl.Expr | pl.Series] = []
    for c, d in frame.schema.items():
        if isinstance(d, pl.Datetime):
            exprs.append(_dt_text(pl.col(c).dt.convert_time_zone("UTC") if d.time_zone else pl.col(c)))
        elif isinstance(d, pl.List) and isinstance(d.inner, pl.Datetime):
            exprs.append(pl.col(c).list.eval(_dt_text(pl.element())))
        elif isinstance(d, pl.List) and isinstance(d.inner, pl.Array):  # a multi-vector: a list of vectors
            if encoding == "base64":
                multi = [None if v is None else [vector_b64(x) for x in v] for v in frame[c].to_list()]
                exprs.append(pl.Series(c, multi, dtype=pl.List(pl.String)))
            else:
                exprs.append(pl.col(c).cast(pl.List(pl.List(pl.Float32))))
        elif isinstance(d, pl.Array):
            if encoding == "base64":
                s = frame[c]
                vals = s.to_numpy() if s.len() else np.zeros((0, d.size), dtype=np.float32)
                nulls = s.is_null().to_numpy()
                enc = [None if nulls[i] else vector_b64(vals[i]) for i in range(s.len())]
                exprs.append(pl.Series(c, enc, dtype=pl.String))
            else:
                exprs.append(pl.col(c).cast(pl.List(pl.Float32)))
        else:
            exprs.append(pl.col(c))
    return frame.select(exprs) if exprs else frame


def row_columns(q, cols: list[str]) -> list[str]:
    """The columns of ``cols`` (a documents frame's) that a response row of query ``q`` shows."""
    if q.exclude is not None:
        ex = set(q.exclude)
        return [c for c in cols if c == "id" or c not in ex]
    if q.include is True:
        return list(cols)
    if q.include is False:
        return ["id"]
    want = ["id"] + [a for a in q.include if a != "id"]
    return [c for c in dict.fromkeys(want) if c in cols]


def result_rows(q, res, encoding: str | None = None) -> list[dict]:
    """The ``rows`` of a turbopuffer response: id, $dist, attributes; nulls omitted.
    ``res`` is an engine ``QueryResult`` (``rows`` frame in rank order, ``dist`` or None)."""
    frame = res.rows
    if frame is None or frame.height == 0:
        return []
    cols = row_columns(q, frame.columns)
    sch = frame.schema
    if any(isinstance(sch[c], (pl.Datetime, pl.Array, pl.List)) for c in cols):
        frame = jsonable(frame.select(cols), encoding or q.vector_encoding)
    # column by column (the values to_dicts gives, without a frame per query or a dict per row and column)
    names = [c for c in cols if c != "id"]
    values = [frame.get_column(c).to_list() for c in names]
    for j, c in enumerate(names):
        if c in res.sparse:  # a sparse vector goes out as its object {dimension: weight}
            values[j] = [None if v is None else orjson.loads(v) for v in values[j]]
    ids = frame.get_column("id").to_list()
    dist = np.asarray(res.dist, dtype=np.float64).tolist() if res.dist is not None else None
    out = []
    for i, id_ in enumerate(ids):
        row: dict[str, Any] = {"id": id_}
        if dist is not None:
            row["$dist"] = dist[i]
        for k, vals in zip(names, values):
            v = vals[i]
            if v is not None:
                row[k] = v
        for k, vals in (res.computed or {}).items():
            if vals[i] is not None:
                row[k] = vals[i]
        out.append(row)
    return out


def result_body(q, res, encoding: str | None = None) -> dict:
    """One query's part of the response: ``rows`` (if ranked), ``aggregations``, ``aggregation_groups``."""
    body: dict[str, Any] = {}
    if q.rank_by is not None:
        body["rows"] = result_rows(q, res, encoding)
    if res.aggregations is not None:
        body["aggregations"] = res.aggregations
    if res.aggregation_groups is not None:
        body["aggregation_groups"] = res.aggregation_groups
    return body


# ------------------------------------------------------------------ billing
#: logical bytes of one value of a scalar type (strings: their UTF-8 bytes, not here)
_SCALAR_BYTES = {"int": 8, "uint": 8, "float": 8, "datetime": 8, "bool": 1, "uuid": 16}
_DTYPE_BYTES: dict[Any, int] = {
    pl.Int64: 8,
    pl.UInt64: 8,
    pl.Float64: 8,
    pl.Float32: 4,
    pl.Boolean: 1,
    pl.Int32: 4,
    pl.UInt32: 4,
}


def _column_bytes(s: pl.Series, typ: str | None) -> int:
    """Logical bytes of one returned column: per value by the attribute's type (nulls: 0)."""
    base = typ[2:] if typ and typ.startswith("[]") else typ
    d = s.dtype
    if isinstance(d, pl.Array):  # a vector: 4 bytes per f32 element, 2 per f16
        m = types.VEC_RE.match(typ or "")
        width = 2 if m and m.group(2) == "f16" else 4
        return width * d.size * (s.len() - s.null_count())
    if isinstance(d, pl.List) and isinstance(d.inner, pl.Array):  # [][N]f32: 4 bytes per element
        return 4 * d.inner.size * int(s.list.len().sum() or 0)
    if isinstance(d, pl.List):
        if isinstance(d.inner, (pl.String, pl.Categorical)) and base != "uuid":
            return int(s.list.eval(pl.element().str.len_bytes()).list.sum().sum() or 0)
        per = _SCALAR_BYTES.get(base or "", _DTYPE_BYTES.get(d.inner.base_type(), 8))
        return per * int(s.list.len().sum() or 0)
    n = s.len() - s.null_count()
    if isinstance(d, (pl.String, pl.Categorical)) and base != "uuid":
        return int(s.cast(pl.String).str.len_bytes().sum() or 0)
    return n * _SCALAR_BYTES.get(base or "", _DTYPE_BYTES.get(d.base_type(), 8))


def _json_bytes(v: Any) -> int:
    """Logical bytes of a JSON value (computed attributes, aggregations): numbers 8, booleans 1,
    strings their UTF-8 bytes, lists and objects the sum of their values, null 0."""
    if v is None:
        return 0
    if isinstance(v, bool):
        return 1
    if isinstance(v, (int, float, np.integer, np.floating)):
        return 8
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, Mapping):
        return sum(_json_bytes(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return sum(_json_bytes(x) for x in v)
    return len(str(v).encode())


def returned_bytes(q, res, schema: Mapping) -> int:
    """``billing.billable_logical_bytes_returned``: the logical size of what the response
    returns (docs/http.md "Billing"): per returned row its id (u64: 8, uuid: 16, string: UTF-8
    bytes), ``$dist`` (an f32: 4) and each returned attribute by type (int/uint/float/datetime
    8, bool 1, uuid 16, string UTF-8 bytes, ``[N]f32`` 4N, ``[N]f16`` 2N, ``[][N]f32`` 4N per vector, ``[]T`` the sum of
    its elements; a null or missing value 0), computed attributes and aggregations as JSON
    values (numbers 8, strings their UTF-8 bytes)."""
    n = 0
    frame = res.rows
    if frame is not None and frame.height and q.rank_by is not None:
        for c in row_columns(q, frame.columns):
            typ = (schema.get(c) or {}).get("type") if c != "id" else (schema.get("id") or {}).get("type")
            n += _column_bytes(frame.get_column(c), typ)
        if res.dist is not None:
            n += 4 * frame.height
        for vals in (res.computed or {}).values():
            n += sum(_json_bytes(v) for v in vals)
    if res.aggregations is not None:
        n += _json_bytes(res.aggregations)
    if res.aggregation_groups is not None:
        n += _json_bytes(res.aggregation_groups)
    return n


# ------------------------------------------------------------------ body -> wire JSON
def vector_attrs(schema: Mapping) -> list[str]:
    """The vector attributes of a namespace schema (their values go out as f32)."""
    return [k for k, v in schema.items() if S.is_vector(v["type"]) or types.is_multi_vector(v["type"])]


def _vector_out(v: Any) -> Any:
    """A vector value as it goes on the wire: an f32 array (shortest floats); base64 text as is."""
    if v is None or isinstance(v, str):
        return v
    try:
        a = np.asarray(v, dtype="<f4")
    except (TypeError, ValueError):
        return v
    return a if a.ndim in (1, 2) else v  # a vector, or a multi-vector's list of vectors


def _wire_rows(rows: Iterable[Mapping] | None, vec: set[str]) -> list | None:
    if rows is None:
        return None
    out = []
    for r in rows:
        if not isinstance(r, Mapping):
            out.append(r)
            continue
        d = dict(r)
        for k in vec.intersection(d):
            d[k] = _vector_out(d[k])
        if isinstance(d.get("$dist"), float):  # turbopuffer's $dist is an f32
            d["$dist"] = np.float32(d["$dist"])
        out.append(d)
    return out


def to_wire(body: Mapping, vectors: Iterable[str]) -> dict:
    """A (single or multi) query response body with vectors and ``$dist`` as f32 values."""
    vec = set(vectors)
    out = dict(body)
    if "rows" in out:
        out["rows"] = _wire_rows(out["rows"], vec)
    if isinstance(out.get("results"), list):
        res = []
        for r in out["results"]:
            if isinstance(r, Mapping) and "rows" in r:
                r = dict(r)
                r["rows"] = _wire_rows(r["rows"], vec)
            res.append(r)
        out["results"] = res
    return out


def recall_wire(out: dict) -> dict:
    """A recall result (index.recall.recall) with its ground truth's vectors and ``$dist`` as f32."""
    if "ground_truth" in out:
        out = dict(out)
        out["ground_truth"] = [
            {
                "query_vector": _vector_out(g["query_vector"]),
                "nearest_neighbors": _wire_rows(g["nearest_neighbors"], {out["field"]}),
            }
            for g in out["ground_truth"]
        ]
    return out


def render(body: Mapping, vectors: Iterable[str], *, indent: bool = False) -> bytes:
    """A query response body as the bytes of the HTTP body (``indent``: two-space indented)."""
    return dumps(to_wire(body, vectors), indent=indent)


def _default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (dt.datetime, dt.date)):
        return o.isoformat()
    if isinstance(o, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(o)).decode()
    if isinstance(o, uuid.UUID):
        return str(o)
    if isinstance(o, decimal.Decimal):
        return float(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if hasattr(o, "to_list"):  # polars / pandas series
        return o.to_list()
    raise TypeError(f"cannot serialise {type(o).__name__}")


def dumps(obj: Any, *, indent: bool = False) -> bytes:
    """orjson: always valid JSON (NaN and +-inf, which JSON cannot carry, come out as ``null``)."""
    return orjson.dumps(obj, default=_default, option=DUMP_OPTS | (orjson.OPT_INDENT_2 if indent else 0))


def error_body(message: str) -> bytes:
    return dumps({"status": "error", "error": message})
