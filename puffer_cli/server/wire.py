"""JSON on the wire, the request side: raw bytes (optionally ``Content-Encoding: gzip``,
bounded) -> a JSON object.  Base64 vectors (little-endian f32) are accepted wherever a
vector is, and are decoded by :mod:`puffer_cli.schema.spec`; this module only parses.

Responses (query results, errors) are shaped and serialised by :mod:`puffer_cli.search.response`.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from typing import Any

import orjson

from puffer_cli import limits
from puffer_cli.errors import TooLarge, UnprocessableBody

# the old names of puffer_cli.response's functions, for tests that still call them (test_server*.py)
from puffer_cli.search.response import to_wire as shape_query_response  # noqa: F401

DEFAULT_MAX_BODY = limits.MAX_BODY_BYTES  # turbopuffer's write request limit


# ------------------------------------------------------------------ in
INFLATE_STEP = 1024 * 1024  # decompress at most this much at a time (so in-flight bytes are counted as they grow)


def decode_body(
    raw: bytes | bytearray,
    content_encoding: str | None = None,
    *,
    limit: int = DEFAULT_MAX_BODY,
    on_grow: Callable[[int], None] | None = None,
) -> bytes | bytearray:
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
        raise UnprocessableBody(f"request body is not valid {enc}: {e}") from e
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
        raise UnprocessableBody(f"{what} is not valid JSON: {e}") from e
    if _LONG_DIGITS.search(raw):
        # orjson silently turns an integer beyond 64 bits into a float (2**64 -> 1.8e19):
        # re-parse exactly, so the write's validation sees the integer and refuses it
        obj = _parse_exact(raw, what)
    return obj


# an integer literal that may not fit in 64 bits: 19+ digits not after a digit or ".", nor before
# ".", "e" or "E" (a float's fraction, such as the 0.00123... of a query vector, needs no exact parse)
_LONG_DIGITS = re.compile(rb"(?<![\d.])\d{19}(?!\d*[.eE])")


def _parse_exact(raw: bytes, what: str) -> Any:
    def constant(c: str):
        raise ValueError(f"{c} is not a JSON number")

    try:
        return json.loads(raw, parse_constant=constant)
    except (ValueError, RecursionError) as e:
        raise UnprocessableBody(f"{what} is not valid JSON: {str(e)[:200]}") from e


def parse_object(raw: bytes, *, what: str = "request body", allow_empty: bool = False) -> dict:
    obj = parse_json(raw, what=what, allow_empty=allow_empty)
    if not isinstance(obj, dict):
        raise UnprocessableBody(f"{what} must be a JSON object, got {_kind(obj)}")
    return obj


def _kind(v: Any) -> str:
    return {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }.get(type(v), type(v).__name__)
