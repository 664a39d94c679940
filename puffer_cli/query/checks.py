"""Shared value checks of a query body: the primitives the body parser
(:mod:`puffer_cli.query.parse`), the ``rank_by`` parser (:mod:`puffer_cli.query.rank`)
and the computed-attribute parser (:mod:`puffer_cli.query.computed`) all use (``fail``
building an :class:`InvalidQuery` that names the part, ``check_len``, ``is_int``,
``is_num``, ``attr_name``, ``parse_vector``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from puffer_cli import limits as L
from puffer_cli.errors import InvalidQuery, show
from puffer_cli.schema.types import decode_vector_b64

#: native embedding and model reranking need hosted models (docs/http.md "Client compatibility")
NO_EMBED = (
    "native embedding (Embed) needs a hosted embedding model, which puffer does not have: "
    "embed the text yourself and send the vector"
)
NO_RERANK_MODEL = (
    "rerank_by with a model (model reranking) needs a hosted reranking model, which puffer does not have: "
    'use a multi-query with rerank_by ["RRF"], or rerank the rows in your application'
)


def check_len(v: Any, limit: int, name: str, where: str, what: str) -> None:
    """Refuse a list (or object) longer than a query limit, naming it."""
    if isinstance(v, (list, tuple, Mapping)) and len(v) > limit:
        raise fail(where, f"{len(v):,} {what} (limit: {name} = {limit:,})")


def fail(where: str, msg: str, hint: str | None = None) -> InvalidQuery:
    return InvalidQuery(f"{where}: {msg}", hint=hint)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def attr_name(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise fail(where, f"attribute name must be a non-empty string, got {show(v)}")
    return v


F32_MAX = float(np.finfo(np.float32).max)


def parse_vector(v: Any, where: str) -> tuple[float, ...]:
    """A query vector: a list of finite numbers, or base64 of little-endian float32."""
    if isinstance(v, str):
        if len(v) > (L.MAX_VECTOR_DIMS * 4 + 2) // 3 * 4:
            raise fail(
                where,
                f"base64 vector of {len(v):,} characters: more than {L.MAX_VECTOR_DIMS:,} "
                f"float32 dimensions (limit: MAX_VECTOR_DIMS = {L.MAX_VECTOR_DIMS:,})",
            )
        try:
            arr = decode_vector_b64(v)
        except ValueError as e:
            raise fail(where, str(e), hint="pass a list of floats, or base64 of little-endian float32") from None
        if not len(arr):
            raise fail(where, "base64 vector is empty")
        if not np.all(np.isfinite(arr)):
            raise fail(where, "vector contains NaN or infinity")
        return tuple(float(x) for x in arr)
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if (isinstance(v, (list, tuple)) and v and v[0] == "Embed") or (isinstance(v, Mapping) and "embed" in v):
        raise fail(where, NO_EMBED)
    if not isinstance(v, (list, tuple)):
        raise fail(where, f"vector must be a list of numbers or a base64 string, got {show(v)}")
    if not v:
        raise fail(where, "vector is empty")
    check_len(v, L.MAX_VECTOR_DIMS, "MAX_VECTOR_DIMS", where, "vector dimensions")
    kinds = set(map(type, v))
    if kinds <= {float, int}:  # the common case, checked in bulk (bool is its own type: not here)
        try:
            if (np.abs(np.asarray(v, dtype=np.float64)) <= F32_MAX).all():
                return tuple(map(float, v))
        except OverflowError:  # an integer beyond float range: reported below
            pass
    if any(isinstance(x, (list, tuple)) for x in v):
        raise fail(where, "a vector's elements are numbers (several query vectors: a list of vectors only)")
    for i, x in enumerate(v):
        if not is_num(x):
            raise fail(where, f"vector element {i} is {show(x)}, not a finite number")
        if abs(x) > F32_MAX:
            raise fail(where, f"vector element {i} is {show(x)}, beyond the float32 range")
    return tuple(float(x) for x in v)


def check_known_attributes(filters: Any, include: Any, schema: Mapping[str, Any]) -> None:
    """Refuse a filter or ``include_attributes`` naming an attribute no schema has, with the
    closest name as a suggestion (the library and the CLI; HTTP keeps turbopuffer's rule that an
    unknown attribute is simply missing)."""
    import difflib

    from puffer_cli.filters.parse import referenced_attributes

    known = {"id", *schema}
    names = sorted(referenced_attributes(filters)) if filters is not None else []
    if isinstance(include, (list, tuple)):
        names += [n for n in include if isinstance(n, str)]
    for n in names:
        if n not in known:
            close = difflib.get_close_matches(n, sorted(known), n=1)
            also = f" (did you mean {close[0]!r}?)" if close else ""
            listed = ", ".join(sorted(known))
            raise InvalidQuery(f"unknown attribute {n!r}{also}", hint=f"attributes: {show(listed, 200)[1:-1]}")


def is_multi_query(v: Any) -> bool:
    """Is a vector ranking's operand a list of vectors (lists or base64 strings)?"""
    if not isinstance(v, (list, tuple)) or not v or v[0] == "Embed":  # ["Embed", text]: parse_vector refuses it
        return False
    return isinstance(v[0], (list, tuple, str))


def parse_vectors(v: Any, where: str) -> tuple[tuple[float, ...], ...]:
    """Several query vectors (multi-vector late interaction): 1 .. MAX_QUERY_VECTORS
    vectors of one dimension, each as :func:`parse_vector` reads it."""
    if len(v) > L.MAX_QUERY_VECTORS:
        raise fail(
            where, f"{len(v)} query vectors; a multi-vector query has at most MAX_QUERY_VECTORS = {L.MAX_QUERY_VECTORS}"
        )
    out = tuple(parse_vector(x, f"{where}[{i}]") for i, x in enumerate(v))
    if len({len(x) for x in out}) > 1:
        raise fail(where, "query vectors have different dimensions")
    return out
