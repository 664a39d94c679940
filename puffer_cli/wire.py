"""JSON on the wire: request bodies in, responses out (turbopuffer's encoding).

In:  raw bytes (optionally ``Content-Encoding: gzip``, bounded) -> a JSON object.
     Base64 vectors (little-endian f32) are accepted wherever a vector is, and are
     decoded by :mod:`puffer_cli.schema`; this module only parses.
Out: ``orjson`` with numpy support.  Vectors and ``$dist`` are f32 quantities
     (as in turbopuffer): they are emitted in the shortest form that round-trips as
     f32 (``0.7``, not ``0.699999988079071``); other floats (``float`` attributes
     are f64) are left alone.  ``vector_encoding: "base64"`` turns vectors into base64 f32 LE.
"""
from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import re
import uuid
import zlib
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import orjson

from . import limits
from .errors import TooLarge, UnprocessableBody

DEFAULT_MAX_BODY = limits.MAX_BODY_BYTES  # turbopuffer's write request limit
DUMP_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


# ------------------------------------------------------------------ in
INFLATE_STEP = 1024 * 1024  # decompress at most this much at a time (so in-flight bytes are counted as they grow)


def decode_body(raw: bytes | bytearray, content_encoding: str | None = None, *, limit: int = DEFAULT_MAX_BODY,
                on_grow: Callable[[int], None] | None = None) -> bytes | bytearray:
    """Undo ``Content-Encoding`` (gzip/deflate/identity), never inflating past ``limit``.

    Inflation runs in steps of :data:`INFLATE_STEP`; ``on_grow(n)`` is called with the size of
    each step's output before the next one (the server counts it against its in-flight byte
    budget and may raise there).  A gzip bomb therefore costs at most ``limit`` + one step."""
    enc = (content_encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return raw
    if enc not in ("gzip", "x-gzip", "deflate"):
        raise UnprocessableBody(f"unsupported Content-Encoding {content_encoding!r}", hint="send gzip or identity")
    d = zlib.decompressobj(wbits=(31 if "gzip" in enc else 15))
    out = bytearray()
    data: bytes | bytearray = raw
    try:
        while not d.eof:
            piece = d.decompress(data, min(INFLATE_STEP, limit + 1 - len(out)))
            data = d.unconsumed_tail
            if piece:
                out += piece
                if len(out) > limit:
                    raise TooLarge(f"decompressed request body exceeds the {limit:,} byte limit")
                if on_grow is not None:
                    on_grow(len(piece))
            elif not data:
                break  # all input consumed and nothing more came out
    except zlib.error as e:
        raise UnprocessableBody(f"request body is not valid {enc}: {e}")
    if not d.eof:
        raise UnprocessableBody(f"request body is truncated {enc} data")
    return out


def parse_json(raw: bytes, *, what: str = "request body", allow_empty: bool = False) -> Any:
    if not raw or raw.isspace():  # (no .strip(): that would copy a large body)
        if allow_empty:
            return {}
        raise UnprocessableBody(f"{what} is empty; expected a JSON object")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise UnprocessableBody(f"{what} is not valid JSON: {e}")
    if _LONG_DIGITS.search(raw):
        # orjson silently turns an integer beyond 64 bits into a float (2**64 -> 1.8e19):
        # re-parse exactly, so the write's validation sees the integer and refuses it
        obj = _parse_exact(raw, what)
    return obj


_LONG_DIGITS = re.compile(rb"\d{19}")  # an integer literal that may not fit in 64 bits


def _parse_exact(raw: bytes, what: str) -> Any:
    def constant(c: str):
        raise ValueError(f"{c} is not a JSON number")

    try:
        return json.loads(raw, parse_constant=constant)
    except (ValueError, RecursionError) as e:
        raise UnprocessableBody(f"{what} is not valid JSON: {str(e)[:200]}")


def parse_object(raw: bytes, *, what: str = "request body", allow_empty: bool = False) -> dict:
    obj = parse_json(raw, what=what, allow_empty=allow_empty)
    if not isinstance(obj, dict):
        raise UnprocessableBody(f"{what} must be a JSON object, got {_kind(obj)}")
    return obj


def _kind(v: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(v), type(v).__name__)


# ------------------------------------------------------------------ out
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


def dumps(obj: Any) -> bytes:
    """orjson: always valid JSON (NaN and +-inf, which JSON cannot carry, come out as ``null``)."""
    return orjson.dumps(obj, default=_default, option=DUMP_OPTS)


def f32(x: Any) -> Any:
    """A float that is exactly an f32 value becomes ``np.float32`` (shortest f32 repr on output)."""
    if isinstance(x, float):
        y = np.float32(x)
        if float(y) == x:
            return y
    return x


def vector_out(v: Any, encoding: str | None = None) -> Any:
    """A vector value as it goes on the wire: f32 array (shortest floats) or base64 f32 LE."""
    if v is None or isinstance(v, str):
        return v
    try:
        a = np.asarray(v, dtype="<f4")
    except (TypeError, ValueError):
        return v
    if a.ndim != 1:
        return v
    if encoding == "base64":
        return base64.b64encode(a.tobytes()).decode()
    return a


def shape_rows(rows: Iterable[Mapping] | None, vector_attrs: Iterable[str], encoding: str | None = None) -> list | None:
    """Rows of a query response with vectors and ``$dist`` in their wire form."""
    if rows is None:
        return None
    vec = set(vector_attrs)
    out = []
    for r in rows:
        if not isinstance(r, Mapping):
            out.append(r)
            continue
        d = dict(r)
        for k in vec.intersection(d):
            d[k] = vector_out(d[k], encoding)
        if isinstance(d.get("$dist"), float):  # turbopuffer's $dist is an f32
            d["$dist"] = np.float32(d["$dist"])
        out.append(d)
    return out


def shape_query_response(resp: Mapping, vector_attrs: Iterable[str], encoding: str | None = None) -> dict:
    """Apply :func:`shape_rows` to a single or multi query response."""
    vector_attrs = list(vector_attrs)
    out = dict(resp)
    if "rows" in out:
        out["rows"] = shape_rows(out["rows"], vector_attrs, encoding)
    if isinstance(out.get("results"), list):
        res = []
        for r in out["results"]:
            if isinstance(r, Mapping) and "rows" in r:
                r = dict(r)
                r["rows"] = shape_rows(r["rows"], vector_attrs, encoding)
            res.append(r)
        out["results"] = res
    return out


def error_body(message: str) -> bytes:
    return dumps({"status": "error", "error": message})
