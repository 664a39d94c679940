"""Parsing of ``rank_by`` (vector, order, BM25 and text combinator expressions and rank
functions); the value checks it shares with the body parser are in
:mod:`puffer_cli.query.checks`.  Errors are :class:`InvalidQuery` naming the part
(``rank_by[1][0]: ...``)."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any

from puffer_cli import limits as L
from puffer_cli.errors import InvalidFilter, InvalidQuery, SchemaError, show
from puffer_cli.filters import parse
from puffer_cli.query.checks import attr_name, fail, is_multi_query, is_num, parse_vector, parse_vectors
from puffer_cli.query.model import (
    RANK_FUNCTIONS,
    TEXT_COMBINATORS,
    AttrScore,
    Bm25,
    Decay,
    Dist,
    FilterScore,
    MultiVectorRank,
    OrderBy,
    SparseKnn,
    TextMax,
    TextProduct,
    TextRank,
    TextSum,
    VectorRank,
)
from puffer_cli.query.model import Saturate as SaturateNode
from puffer_cli.schema import sparse
from puffer_cli.schema.types import parse_datetime_ms


def _is_filter_op(v: Any) -> bool:
    return isinstance(v, str) and v in parse.OPERATORS


def _looks_like_order(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str) and v[1] in ("asc", "desc")


def _check_rank_limits(rb: Any, where: str) -> None:
    """Bound a rank_by expression before the recursive parse: at most MAX_FILTER_NODES
    expressions, Sum/Max/Product nested at most MAX_FILTER_DEPTH deep (filters inside
    are bounded by filters.check_limits).  Iterative, so any depth is refused cleanly."""
    nodes = 0
    stack = [(rb, 0)]
    while stack:
        e, depth = stack.pop()
        nodes += 1
        if nodes > L.MAX_FILTER_NODES:
            raise fail(
                where,
                f"more than {L.MAX_FILTER_NODES:,} ranking expressions "
                f"(limit: MAX_FILTER_NODES = {L.MAX_FILTER_NODES:,})",
            )
        if (
            not isinstance(e, (list, tuple))
            or not e
            or e[0] not in TEXT_COMBINATORS + RANK_FUNCTIONS
            or (len(e) >= 2 and e[1] in ("BM25", "SparseKNN"))
        ):
            continue
        if depth >= L.MAX_FILTER_DEPTH:
            raise fail(
                where,
                f"Sum/Max/Product nested more than {L.MAX_FILTER_DEPTH} levels "
                f"(limit: MAX_FILTER_DEPTH = {L.MAX_FILTER_DEPTH})",
            )
        kids = e[1:2] if e[0] in RANK_FUNCTIONS else e[1:]
        if e[0] in ("Sum", "Max") and len(e) == 2 or (e[0] == "Product" and len(e) == 2):
            kids = e[1] if isinstance(e[1], (list, tuple)) else ()
        if nodes + len(stack) + len(kids) > L.MAX_FILTER_NODES:
            raise fail(
                where,
                f"at least {nodes + len(stack) + len(kids):,} ranking expressions "
                f"(limit: MAX_FILTER_NODES = {L.MAX_FILTER_NODES:,})",
            )
        stack.extend((k, depth + 1) for k in kids if isinstance(k, (list, tuple)))


def parse_rank_by(rb: Any, where: str = "rank_by"):
    _check_rank_limits(rb, where)
    if not isinstance(rb, (list, tuple)) or len(rb) == 0:
        raise fail(
            where,
            f'expected a list like ["vector", "ANN", [...]], [attr, "BM25", "text"] '
            f'or [attr, "asc"|"desc"], got {show(rb)}',
        )
    # a list of orderings
    if isinstance(rb[0], (list, tuple)):
        keys = []
        for i, k in enumerate(rb):
            if not _looks_like_order(k):
                raise fail(f"{where}[{i}]", f'expected [attr, "asc"|"desc"], got {show(k)}')
            keys.append((attr_name(k[0], f"{where}[{i}][0]"), k[1] == "desc"))
        seen = [a for a, _ in keys]
        if len(set(seen)) != len(seen):
            raise fail(where, "an attribute appears twice in the ordering")
        return OrderBy(tuple(keys))
    if (
        len(rb) == 2
        and isinstance(rb[0], str)
        and isinstance(rb[1], str)
        and rb[0] not in ("Attribute", "Sum", "Max", "Product", "Not", "And", "Or", *RANK_FUNCTIONS)
        and rb[1] not in parse.OPERATORS
        and rb[1] not in ("ANN", "kNN", "BM25", "SparseKNN")
    ):
        if rb[1] in ("asc", "desc"):
            return OrderBy(((attr_name(rb[0], where + "[0]"), rb[1] == "desc"),))
        if rb[1] in ("ASC", "DESC", "Asc", "Desc"):
            raise fail(where + "[1]", f'order must be "asc" or "desc" (lowercase), got {show(rb[1])}')
        close = difflib.get_close_matches(rb[1], ["asc", "desc", "BM25", "ANN", "kNN"], n=1, cutoff=0.4)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise fail(where + "[1]", f"unknown ranking {show(rb[1])}{hint}")
    if len(rb) >= 2 and rb[1] in ("ANN", "kNN"):
        if len(rb) != 3:
            raise fail(where, f'vector ranking is [attr, "{rb[1]}", vector], got {len(rb)} elements')
        attr = attr_name(rb[0], where + "[0]")
        if is_multi_query(rb[2]):
            vs = parse_vectors(rb[2], where + "[2]")
            return MultiVectorRank(attr, rb[1], vs[0], vs)
        return VectorRank(attr, rb[1], parse_vector(rb[2], where + "[2]"))
    if len(rb) >= 2 and isinstance(rb[1], str) and rb[1].lower() in ("ann", "knn") and rb[1] not in ("ANN", "kNN"):
        raise fail(where + "[1]", f'unknown ranking {show(rb[1])} (did you mean "ANN" or "kNN"?)')
    return TextRank(parse_text_expr(rb, where))


def parse_text_expr(e: Any, where: str):
    if not isinstance(e, (list, tuple)) or len(e) == 0:
        raise fail(where, f"expected a text ranking expression, got {show(e)}")
    head = e[0]
    if head in ("Sum", "Max") and not (len(e) >= 2 and e[1] == "BM25"):
        if len(e) != 2 or not isinstance(e[1], (list, tuple)):
            raise fail(where, f'{head} takes one list of expressions: ["{head}", [expr, ...]]')
        if len(e[1]) == 0:
            raise fail(where, f"{head} needs at least one expression")
        kids = tuple(parse_text_expr(c, f"{where}[1][{i}]") for i, c in enumerate(e[1]))
        return TextSum(kids) if head == "Sum" else TextMax(kids)
    if head == "Product" and not (len(e) >= 2 and e[1] == "BM25"):
        if len(e) == 2 and isinstance(e[1], (list, tuple)) and len(e[1]) == 2:
            a, b = e[1]
            base = where + "[1]"
        elif len(e) == 3:
            a, b = e[1], e[2]
            base = where
        else:
            raise fail(where, 'Product is ["Product", weight, expr] (or ["Product", expr, weight])')
        off = 1 if base == where else 0  # index of a within its list
        if is_num(a) and not is_num(b):
            return TextProduct(float(a), parse_text_expr(b, f"{base}[{off + 1}]"))
        if is_num(b) and not is_num(a):
            return TextProduct(float(b), parse_text_expr(a, f"{base}[{off}]"))
        raise fail(where, f"Product needs one finite number and one expression, got {show(e)}")
    if head == "Attribute" and len(e) == 2:
        return AttrScore(attr_name(e[1], where + "[1]"))
    if head in RANK_FUNCTIONS and not (len(e) >= 2 and e[1] == "BM25"):
        return parse_rank_function(e, where)
    if len(e) >= 2 and e[1] == "SparseKNN":
        return parse_sparse_knn(e, where)
    if len(e) >= 2 and e[1] == "BM25":
        if len(e) not in (3, 4):
            raise fail(where, 'BM25 is [attr, "BM25", "query text"] (optionally + {"last_as_prefix": bool})')
        attr = attr_name(e[0], where + "[0]")
        q = e[2]
        n = (
            len(q)
            if isinstance(q, str)
            else sum(len(t) for t in q if isinstance(t, str))
            if isinstance(q, (list, tuple))
            else 0
        )
        if n > L.MAX_QUERY_TEXT_CHARS:
            raise fail(
                where + "[2]",
                f"BM25 query of {n:,} characters (limit: MAX_QUERY_TEXT_CHARS = {L.MAX_QUERY_TEXT_CHARS:,})",
            )
        if isinstance(q, str):
            query: str | tuple[str, ...] = q
        elif isinstance(q, (list, tuple)) and all(isinstance(t, str) for t in q):
            query = tuple(q)
        else:
            raise fail(where + "[2]", f"BM25 query must be a string or a list of strings, got {show(q)}")
        prefix = False
        if len(e) == 4:
            p = e[3]
            if (
                not isinstance(p, Mapping)
                or set(p) - {"last_as_prefix"}
                or not isinstance(p.get("last_as_prefix", False), bool)
            ):
                raise fail(where + "[3]", f'BM25 options must be {{"last_as_prefix": true|false}}, got {show(p)}')
            prefix = bool(p.get("last_as_prefix", False))
        return Bm25(attr, query, prefix)
    if head in parse.CONNECTIVES or (len(e) >= 2 and _is_filter_op(e[1])):
        try:
            parse.referenced_attributes(e)  # structural validation
        except InvalidFilter as ex:
            raise fail(where, ex.message) from ex
        return FilterScore(json.dumps(e, sort_keys=True))
    if len(e) >= 2 and isinstance(e[1], str):
        close = difflib.get_close_matches(e[1], ["BM25", "ANN", "kNN", "asc", "desc"], n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise fail(where + "[1]", f"unknown ranking function {show(e[1])}{hint}")
    if isinstance(head, str) and head not in TEXT_COMBINATORS:
        close = difflib.get_close_matches(head, list(TEXT_COMBINATORS) + ["Attribute"], n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise fail(where, f"cannot parse ranking expression {show(e)}{hint}")
    raise fail(where, f"cannot parse ranking expression {show(e)}")


def parse_sparse_knn(e: Any, where: str) -> SparseKnn:
    """``[attr, "SparseKNN", {dimension: weight}]``: 1..MAX_SPARSE_NONZEROS dimensions (keys:
    schema.sparse rules), finite weights (kept as float64: only stored weights are float16)."""
    if len(e) != 3:
        raise fail(where, 'sparse ranking is [attr, "SparseKNN", {"dimension": weight, ...}]')
    attr = attr_name(e[0], where + "[0]")
    try:
        ent = sparse.check_entries(e[2], where + "[2]", f16=False)
    except SchemaError as ex:
        raise InvalidQuery(ex.message, hint=ex.hint) from None
    return SparseKnn(attr, tuple(k for k, _ in ent), tuple(w for _, w in ent))


def _positive(p: Mapping, key: str, where: str, default: float | None = None) -> float:
    v = p.get(key, default)
    if v is None:
        raise fail(where, f"needs {key!r}: a finite number > 0")
    if not is_num(v) or v <= 0:
        raise fail(f"{where}.{key}", f"must be a finite number > 0, got {show(v)}")
    return float(v)


def parse_rank_function(e: Any, where: str):
    """``["Saturate"|"Decay", expr, {"midpoint": m, "exponent": e}]`` or ``["Dist", expr, origin]``
    (formulas: querymodel.Saturate / Decay / Dist and docs/http.md)."""
    head = e[0]
    if head == "Dist":
        if len(e) != 3:
            raise fail(where, 'Dist is ["Dist", expr, origin]')
        child = parse_text_expr(e[1], where + "[1]")
        o = e[2]
        if is_num(o):
            return Dist(child, float(o))
        if isinstance(o, str):
            ms = parse_datetime_ms(o)
            if ms is None:
                raise fail(where + "[2]", f"Dist origin must be a number or an RFC 3339 date, got {show(o)}")
            if not isinstance(child, AttrScore):
                raise fail(where + "[2]", 'a date origin needs ["Attribute", <datetime attribute>] as the expression')
            return Dist(child, float(ms), o)
        raise fail(where + "[2]", f"Dist origin must be a finite number or an RFC 3339 date, got {show(o)}")
    if len(e) != 3 or not isinstance(e[2], Mapping):
        raise fail(where, f'{head} is ["{head}", expr, {{"midpoint": m, "exponent": e}}]')
    p = e[2]
    extra = sorted(str(k) for k in p if k not in ("midpoint", "exponent"))
    if extra:
        raise fail(where + "[2]", f"unknown {head} parameter {show(extra[0])} (known: midpoint, exponent)")
    child = parse_text_expr(e[1], where + "[1]")
    midpoint = _positive(p, "midpoint", where + "[2]")
    exponent = _positive(p, "exponent", where + "[2]", 1.0)
    return (SaturateNode if head == "Saturate" else Decay)(child, midpoint, exponent)
