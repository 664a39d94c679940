"""The query model: turbopuffer query JSON -> validated, serialisable dataclasses.

``parse_query(body)`` checks the *shape* of a query body (no namespace needed)
and raises :class:`InvalidQuery` naming the offending part (``rank_by[1][0]:
...``, ``top_k: ...``).  ``check_query(q, schema, metric)`` then checks it
against a namespace schema (attributes exist, vector dimensions match, BM25
fields have full-text search, filters compile).  ``Query.to_json()`` gives the
canonical body back (``parse_query(q.to_json()) == q``).

Forms (turbopuffer's)::

    rank_by   ["vector", "ANN"|"kNN", [f, ...] | "<base64 f32>"]
              [attr, "BM25", "text" | ["tok", ...] (, {"last_as_prefix": bool})]
              ["Sum", [expr, ...]]   ["Max", [expr, ...]]
              ["Product", w, expr] | ["Product", expr, w] | ["Product", [w, expr]]
              a filter (scores 1 where it matches)   ["Attribute", attr]
              [attr, "asc"|"desc"]   [[attr, "asc"|"desc"], ...]
    filters   see puffer_cli.filters
    top_k / limit   int (1..limits.MAX_TOP_K) or limit {"total": n, "per": {"attributes": [...], "limit": m}}
    offset    int >= 0
    include_attributes  true | false | [attr, ...];  exclude_attributes [attr, ...]
    aggregate_by  {"label": ["Count"] | ["Count", attr] | ["Sum", attr]}
    group_by  [attr | {"label": ["ForEachUnique", attr]}, ...]
    consistency {"level": "strong"|"eventual"}   vector_encoding "float"|"base64"
    distance_metric "cosine_distance"|"euclidean_squared"
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import filters as F
from . import limits as L
from . import schema as S
from .errors import InvalidFilter, InvalidQuery

DEFAULT_LIMIT = 10
METRICS = ("cosine_distance", "euclidean_squared")
QUERY_KEYS = (
    "rank_by",
    "filters",
    "top_k",
    "limit",
    "offset",
    "include_attributes",
    "exclude_attributes",
    "aggregate_by",
    "group_by",
    "consistency",
    "vector_encoding",
    "distance_metric",
)
MULTI_KEYS = ("queries", "consistency", "rerank_by", "limit", "offset", "vector_encoding")
SUBQUERY_KEYS = tuple(k for k in QUERY_KEYS if k != "consistency")
TEXT_COMBINATORS = ("Sum", "Max", "Product")


def _show(v: Any, limit: int = 120) -> str:
    try:
        s = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        s = repr(v)
    except RecursionError:  # nested too deep to print
        s = "[...]" if isinstance(v, (list, tuple)) else "{...}" if isinstance(v, Mapping) else "..."
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _check_len(v: Any, limit: int, name: str, where: str, what: str) -> None:
    """Refuse a list (or object) longer than a query limit, naming it."""
    if isinstance(v, (list, tuple, Mapping)) and len(v) > limit:
        raise _fail(where, f"{len(v):,} {what} (limit: {name} = {limit:,})")


def _fail(where: str, msg: str, hint: str | None = None) -> InvalidQuery:
    return InvalidQuery(f"{where}: {msg}", hint=hint)


# --------------------------------------------------------------------------- rank_by nodes
@dataclass(frozen=True)
class VectorRank:
    """``[attr, "ANN"|"kNN", vector]``: distance ascending (exact in this engine either way)."""

    attr: str
    method: str  # "ANN" | "kNN"
    vector: tuple[float, ...]

    def array(self) -> np.ndarray:
        return np.asarray(self.vector, dtype=np.float32)

    def to_json(self) -> list:
        return [self.attr, self.method, list(self.vector)]


@dataclass(frozen=True)
class OrderBy:
    """``[attr, "asc"|"desc"]`` or a list of them. keys: ((attr, descending), ...)."""

    keys: tuple[tuple[str, bool], ...]

    def to_json(self) -> list:
        out = [[a, "desc" if d else "asc"] for a, d in self.keys]
        return out[0] if len(out) == 1 else out


@dataclass(frozen=True)
class Bm25:
    attr: str
    query: str | tuple[str, ...]  # text (analysed) or pre-split tokens (each analysed)
    last_as_prefix: bool = False

    def to_json(self) -> list:
        q = self.query if isinstance(self.query, str) else list(self.query)
        return [self.attr, "BM25", q] + ([{"last_as_prefix": True}] if self.last_as_prefix else [])


@dataclass(frozen=True)
class TextSum:
    children: tuple

    def to_json(self) -> list:
        return ["Sum", [c.to_json() for c in self.children]]


@dataclass(frozen=True)
class TextMax:
    children: tuple

    def to_json(self) -> list:
        return ["Max", [c.to_json() for c in self.children]]


@dataclass(frozen=True)
class TextProduct:
    weight: float
    child: Any

    def to_json(self) -> list:
        return ["Product", self.weight, self.child.to_json()]


@dataclass(frozen=True)
class FilterScore:
    """A filter inside a text rank expression: 1.0 where it matches (a boost)."""

    filter_json: str  # canonical JSON (hashable)

    @property
    def filter(self) -> Any:
        return json.loads(self.filter_json)

    def to_json(self) -> Any:
        return self.filter


@dataclass(frozen=True)
class AttrScore:
    """``["Attribute", attr]``: the numeric value of attr (missing -> 0, not a match)."""

    attr: str

    def to_json(self) -> list:
        return ["Attribute", self.attr]


@dataclass(frozen=True)
class TextRank:
    """A BM25 / hybrid text expression: score descending, only matching documents."""

    expr: Any

    def to_json(self) -> Any:
        return self.expr.to_json()


# --------------------------------------------------------------------------- query
@dataclass(frozen=True)
class Aggregate:
    kind: str  # "Count" | "Sum"
    attr: str | None = None

    def to_json(self) -> list:
        return [self.kind] + ([self.attr] if self.attr is not None else [])


@dataclass(frozen=True)
class GroupKey:
    name: str  # key in the output group object
    attr: str
    for_each_unique: bool = False

    def to_json(self) -> Any:
        return {self.name: ["ForEachUnique", self.attr]} if self.for_each_unique else self.attr


@dataclass(frozen=True)
class Query:
    rank_by: VectorRank | OrderBy | TextRank | None = None
    filters: str | None = None  # canonical JSON of the filter (hashable); see .filter
    limit: int = DEFAULT_LIMIT
    limit_given: bool = False
    per_attributes: tuple[str, ...] | None = None
    per_limit: int | None = None
    offset: int = 0
    include: bool | tuple[str, ...] = False
    exclude: tuple[str, ...] | None = None
    aggregate_by: tuple[tuple[str, Aggregate], ...] = ()
    group_by: tuple[GroupKey, ...] = ()
    consistency: str = "strong"
    vector_encoding: str = "float"
    distance_metric: str | None = None

    @property
    def filter(self) -> Any:
        return None if self.filters is None else json.loads(self.filters)

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        if self.rank_by is not None:
            out["rank_by"] = self.rank_by.to_json()
        if self.filters is not None:
            out["filters"] = self.filter
        if self.per_attributes is not None:
            out["limit"] = {
                "total": self.limit,
                "per": {"attributes": list(self.per_attributes), "limit": self.per_limit},
            }
        elif self.limit_given or self.rank_by is not None:
            out["limit"] = self.limit
        if self.offset:
            out["offset"] = self.offset
        if self.exclude is not None:
            out["exclude_attributes"] = list(self.exclude)
        elif self.include is not False:
            out["include_attributes"] = self.include if isinstance(self.include, bool) else list(self.include)
        if self.aggregate_by:
            out["aggregate_by"] = {k: a.to_json() for k, a in self.aggregate_by}
        if self.group_by:
            out["group_by"] = [g.to_json() for g in self.group_by]
        if self.consistency != "strong":
            out["consistency"] = {"level": self.consistency}
        if self.vector_encoding != "float":
            out["vector_encoding"] = self.vector_encoding
        if self.distance_metric:
            out["distance_metric"] = self.distance_metric
        return out


@dataclass(frozen=True)
class MultiQuery:
    queries: tuple[Query, ...]
    consistency: str = "strong"
    rrf: tuple[int, tuple[float, ...] | None] | None = None  # (rank_constant, weights)
    limit: int | None = None
    offset: int = 0
    vector_encoding: str = "float"

    def to_json(self) -> dict:
        out: dict[str, Any] = {"queries": [q.to_json() for q in self.queries]}
        if self.consistency != "strong":
            out["consistency"] = {"level": self.consistency}
        if self.rrf is not None:
            k, w = self.rrf
            params: dict[str, Any] = {"rank_constant": k}
            if w is not None:
                params["weights"] = list(w)
            out["rerank_by"] = ["RRF", params]
        if self.limit is not None:
            out["limit"] = self.limit
        if self.offset:
            out["offset"] = self.offset
        if self.vector_encoding != "float":
            out["vector_encoding"] = self.vector_encoding
        return out


# --------------------------------------------------------------------------- parsing helpers
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _attr_name(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(where, f"attribute name must be a non-empty string, got {_show(v)}")
    return v


F32_MAX = float(np.finfo(np.float32).max)


def parse_vector(v: Any, where: str) -> tuple[float, ...]:
    """A query vector: a list of finite numbers, or base64 of little-endian float32."""
    if isinstance(v, str):
        if len(v) > (L.MAX_VECTOR_DIMS * 4 + 2) // 3 * 4:
            raise _fail(
                where,
                f"base64 vector of {len(v):,} characters: more than {L.MAX_VECTOR_DIMS:,} "
                f"float32 dimensions (limit: MAX_VECTOR_DIMS = {L.MAX_VECTOR_DIMS:,})",
            )
        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise _fail(
                where,
                "vector string is not valid base64",
                hint="pass a list of floats, or base64 of little-endian float32",
            ) from None
        if not raw or len(raw) % 4:
            raise _fail(where, f"base64 vector has {len(raw)} bytes, not a non-empty multiple of 4 (float32)")
        arr = np.frombuffer(raw, dtype="<f4")
        if not np.all(np.isfinite(arr)):
            raise _fail(where, "vector contains NaN or infinity")
        return tuple(float(x) for x in arr)
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if not isinstance(v, (list, tuple)):
        raise _fail(where, f"vector must be a list of numbers or a base64 string, got {_show(v)}")
    if not v:
        raise _fail(where, "vector is empty")
    _check_len(v, L.MAX_VECTOR_DIMS, "MAX_VECTOR_DIMS", where, "vector dimensions")
    kinds = set(map(type, v))
    if kinds <= {float, int}:  # the common case, checked in bulk (bool is its own type: not here)
        try:
            if (np.abs(np.asarray(v, dtype=np.float64)) <= F32_MAX).all():
                return tuple(map(float, v))
        except OverflowError:  # an integer beyond float range: reported below
            pass
    if any(isinstance(x, (list, tuple)) for x in v):
        raise _fail(where, "multi-vector queries are not supported; pass one vector")
    for i, x in enumerate(v):
        if not _is_num(x):
            raise _fail(where, f"vector element {i} is {_show(x)}, not a finite number")
        if abs(x) > F32_MAX:
            raise _fail(where, f"vector element {i} is {_show(x)}, beyond the float32 range")
    return tuple(float(x) for x in v)


def _parse_limit_int(v: Any, where: str, lo: int = 1, hi: int = L.MAX_TOP_K, name: str = "MAX_TOP_K") -> int:
    if not _is_int(v):
        raise _fail(where, f"must be an integer, got {_show(v)}")
    if not lo <= v <= hi:
        raise _fail(where, f"must be between {lo} and {hi:,} (limit: {name}), got {v}")
    return v


def _is_filter_op(v: Any) -> bool:
    return isinstance(v, str) and v in F.OPERATORS


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
            raise _fail(
                where,
                f"more than {L.MAX_FILTER_NODES:,} ranking expressions "
                f"(limit: MAX_FILTER_NODES = {L.MAX_FILTER_NODES:,})",
            )
        if (
            not isinstance(e, (list, tuple))
            or not e
            or e[0] not in TEXT_COMBINATORS
            or (len(e) >= 2 and e[1] == "BM25")
        ):
            continue
        if depth >= L.MAX_FILTER_DEPTH:
            raise _fail(
                where,
                f"Sum/Max/Product nested more than {L.MAX_FILTER_DEPTH} levels "
                f"(limit: MAX_FILTER_DEPTH = {L.MAX_FILTER_DEPTH})",
            )
        kids = e[1:]
        if e[0] in ("Sum", "Max") and len(e) == 2 or (e[0] == "Product" and len(e) == 2):
            kids = e[1] if isinstance(e[1], (list, tuple)) else ()
        if nodes + len(stack) + len(kids) > L.MAX_FILTER_NODES:
            raise _fail(
                where,
                f"at least {nodes + len(stack) + len(kids):,} ranking expressions "
                f"(limit: MAX_FILTER_NODES = {L.MAX_FILTER_NODES:,})",
            )
        stack.extend((k, depth + 1) for k in kids if isinstance(k, (list, tuple)))


def parse_rank_by(rb: Any, where: str = "rank_by"):
    _check_rank_limits(rb, where)
    if not isinstance(rb, (list, tuple)) or len(rb) == 0:
        raise _fail(
            where,
            f'expected a list like ["vector", "ANN", [...]], [attr, "BM25", "text"] '
            f'or [attr, "asc"|"desc"], got {_show(rb)}',
        )
    # a list of orderings
    if isinstance(rb[0], (list, tuple)):
        keys = []
        for i, k in enumerate(rb):
            if not _looks_like_order(k):
                raise _fail(f"{where}[{i}]", f'expected [attr, "asc"|"desc"], got {_show(k)}')
            keys.append((_attr_name(k[0], f"{where}[{i}][0]"), k[1] == "desc"))
        seen = [a for a, _ in keys]
        if len(set(seen)) != len(seen):
            raise _fail(where, "an attribute appears twice in the ordering")
        return OrderBy(tuple(keys))
    if (
        len(rb) == 2
        and isinstance(rb[0], str)
        and isinstance(rb[1], str)
        and rb[0] not in ("Attribute", "Sum", "Max", "Product", "Not", "And", "Or")
        and rb[1] not in F.OPERATORS
        and rb[1] not in ("ANN", "kNN", "BM25")
    ):
        if rb[1] in ("asc", "desc"):
            return OrderBy(((_attr_name(rb[0], where + "[0]"), rb[1] == "desc"),))
        if rb[1] in ("ASC", "DESC", "Asc", "Desc"):
            raise _fail(where + "[1]", f'order must be "asc" or "desc" (lowercase), got {_show(rb[1])}')
        close = difflib.get_close_matches(rb[1], ["asc", "desc", "BM25", "ANN", "kNN"], n=1, cutoff=0.4)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise _fail(where + "[1]", f"unknown ranking {_show(rb[1])}{hint}")
    if len(rb) >= 2 and rb[1] in ("ANN", "kNN"):
        if len(rb) != 3:
            raise _fail(where, f'vector ranking is [attr, "{rb[1]}", vector], got {len(rb)} elements')
        attr = _attr_name(rb[0], where + "[0]")
        return VectorRank(attr, rb[1], parse_vector(rb[2], where + "[2]"))
    if len(rb) >= 2 and isinstance(rb[1], str) and rb[1].lower() in ("ann", "knn") and rb[1] not in ("ANN", "kNN"):
        raise _fail(where + "[1]", f'unknown ranking {_show(rb[1])} (did you mean "ANN" or "kNN"?)')
    return TextRank(parse_text_expr(rb, where))


def parse_text_expr(e: Any, where: str):
    if not isinstance(e, (list, tuple)) or len(e) == 0:
        raise _fail(where, f"expected a text ranking expression, got {_show(e)}")
    head = e[0]
    if head in ("Sum", "Max") and not (len(e) >= 2 and e[1] == "BM25"):
        if len(e) != 2 or not isinstance(e[1], (list, tuple)):
            raise _fail(where, f'{head} takes one list of expressions: ["{head}", [expr, ...]]')
        if len(e[1]) == 0:
            raise _fail(where, f"{head} needs at least one expression")
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
            raise _fail(where, 'Product is ["Product", weight, expr] (or ["Product", expr, weight])')
        off = 1 if base == where else 0  # index of a within its list
        if _is_num(a) and not _is_num(b):
            return TextProduct(float(a), parse_text_expr(b, f"{base}[{off + 1}]"))
        if _is_num(b) and not _is_num(a):
            return TextProduct(float(b), parse_text_expr(a, f"{base}[{off}]"))
        raise _fail(where, f"Product needs one finite number and one expression, got {_show(e)}")
    if head == "Attribute" and len(e) == 2:
        return AttrScore(_attr_name(e[1], where + "[1]"))
    if head in ("Saturate", "Decay", "Dist"):
        raise _fail(where, f"{head} is not supported by puffer yet")
    if len(e) >= 2 and e[1] == "BM25":
        if len(e) not in (3, 4):
            raise _fail(where, 'BM25 is [attr, "BM25", "query text"] (optionally + {"last_as_prefix": bool})')
        attr = _attr_name(e[0], where + "[0]")
        q = e[2]
        n = (
            len(q)
            if isinstance(q, str)
            else sum(len(t) for t in q if isinstance(t, str))
            if isinstance(q, (list, tuple))
            else 0
        )
        if n > L.MAX_QUERY_TEXT_CHARS:
            raise _fail(
                where + "[2]",
                f"BM25 query of {n:,} characters (limit: MAX_QUERY_TEXT_CHARS = {L.MAX_QUERY_TEXT_CHARS:,})",
            )
        if isinstance(q, str):
            query: str | tuple[str, ...] = q
        elif isinstance(q, (list, tuple)) and all(isinstance(t, str) for t in q):
            query = tuple(q)
        else:
            raise _fail(where + "[2]", f"BM25 query must be a string or a list of strings, got {_show(q)}")
        prefix = False
        if len(e) == 4:
            p = e[3]
            if (
                not isinstance(p, Mapping)
                or set(p) - {"last_as_prefix"}
                or not isinstance(p.get("last_as_prefix", False), bool)
            ):
                raise _fail(where + "[3]", f'BM25 options must be {{"last_as_prefix": true|false}}, got {_show(p)}')
            prefix = bool(p.get("last_as_prefix", False))
        return Bm25(attr, query, prefix)
    if head in F.CONNECTIVES or (len(e) >= 2 and _is_filter_op(e[1])):
        try:
            F.referenced_attributes(e)  # structural validation
        except InvalidFilter as ex:
            raise _fail(where, ex.message) from ex
        return FilterScore(json.dumps(e, sort_keys=True))
    if len(e) >= 2 and isinstance(e[1], str):
        close = difflib.get_close_matches(e[1], ["BM25", "ANN", "kNN", "asc", "desc"], n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise _fail(where + "[1]", f"unknown ranking function {_show(e[1])}{hint}")
    if isinstance(head, str) and head not in TEXT_COMBINATORS:
        close = difflib.get_close_matches(head, list(TEXT_COMBINATORS) + ["Attribute"], n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise _fail(where, f"cannot parse ranking expression {_show(e)}{hint}")
    raise _fail(where, f"cannot parse ranking expression {_show(e)}")


def _parse_consistency(c: Any, where: str = "consistency") -> str:
    if c is None:
        return "strong"
    if isinstance(c, str) and c in ("strong", "eventual"):
        return c  # lenient: the bare level
    if not isinstance(c, Mapping) or "level" not in c:
        raise _fail(where, f'expected {{"level": "strong"|"eventual"}}, got {_show(c)}')
    extra = set(c) - {"level", "max_staleness_seconds"}
    if extra:
        raise _fail(where, f"unknown key {_show(sorted(extra)[0])}")
    if c["level"] not in ("strong", "eventual"):
        raise _fail(where, f'level must be "strong" or "eventual", got {_show(c["level"])}')
    if "max_staleness_seconds" in c and (not _is_int(c["max_staleness_seconds"]) or c["max_staleness_seconds"] < 0):
        raise _fail(where, "max_staleness_seconds must be a non-negative integer")
    return c["level"]


def _parse_encoding(v: Any, where: str = "vector_encoding") -> str:
    if v is None:
        return "float"
    if v not in ("float", "base64"):
        raise _fail(where, f'must be "float" or "base64", got {_show(v)}')
    return v


def _check_keys(body: Mapping, allowed: tuple[str, ...], what: str) -> None:
    for k in body:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            extra = ""
            if k in ("vector", "include_vectors"):
                extra = '; v2 queries use rank_by ["vector", "ANN", [...]] and include_attributes'
            elif k == "queries":
                extra = '; send multi-queries to the multi-query entry point (puffer query --body with "queries")'
            raise InvalidQuery(
                f"{what}: unknown parameter {_show(k)}{hint}{extra}", hint=f"known parameters: {', '.join(allowed)}"
            )


def parse_query(body: Any, *, sub: str | None = None) -> Query:
    """Parse one query body. ``sub`` names the sub-query in errors (multi-query)."""
    pre = f"{sub}." if sub else ""
    if not isinstance(body, Mapping):
        raise InvalidQuery(f"{sub or 'query'}: the query body must be a JSON object, got {_show(body)}")
    _check_keys(body, SUBQUERY_KEYS if sub else QUERY_KEYS, sub or "query")

    rank_by = None
    if body.get("rank_by") is not None:
        rank_by = parse_rank_by(body["rank_by"], pre + "rank_by")

    filters = None
    if body.get("filters") is not None:
        try:
            F.referenced_attributes(body["filters"])
        except InvalidFilter as ex:
            raise InvalidFilter(f"{pre}filters: {ex.message}", hint=ex.hint) from ex
        filters = json.dumps(body["filters"], sort_keys=True)

    limit, given, per_attrs, per_limit = DEFAULT_LIMIT, False, None, None
    if body.get("top_k") is not None and body.get("limit") is not None:
        raise _fail(pre + "top_k", "give either top_k or limit, not both")
    if body.get("top_k") is not None:
        limit, given = _parse_limit_int(body["top_k"], pre + "top_k"), True
    elif body.get("limit") is not None:
        lv = body["limit"]
        given = True
        if isinstance(lv, Mapping):
            extra = set(lv) - {"total", "per"}
            if extra:
                raise _fail(pre + "limit", f"unknown key {_show(sorted(extra)[0])}; use total and per")
            if "total" not in lv:
                raise _fail(pre + "limit", 'an object limit needs "total"')
            limit = _parse_limit_int(lv["total"], pre + "limit.total")
            if lv.get("per") is not None:
                per = lv["per"]
                if not isinstance(per, Mapping) or set(per) != {"attributes", "limit"}:
                    raise _fail(pre + "limit.per", f'expected {{"attributes": [...], "limit": n}}, got {_show(per)}')
                pa = per["attributes"]
                _check_len(
                    pa,
                    L.MAX_ATTRIBUTES_PER_NAMESPACE,
                    "MAX_ATTRIBUTES_PER_NAMESPACE",
                    pre + "limit.per.attributes",
                    "attribute names",
                )
                if not isinstance(pa, (list, tuple)) or not pa:
                    raise _fail(pre + "limit.per.attributes", "must be a non-empty list of attribute names")
                per_attrs = tuple(_attr_name(a, pre + "limit.per.attributes") for a in pa)
                per_limit = _parse_limit_int(per["limit"], pre + "limit.per.limit")
        else:
            limit = _parse_limit_int(lv, pre + "limit")

    offset = 0
    if body.get("offset") is not None:
        offset = _parse_limit_int(body["offset"], pre + "offset", 0, L.MAX_OFFSET, "MAX_OFFSET")
        if rank_by is None:
            raise _fail(pre + "offset", "offset needs an explicit rank_by")

    include: bool | tuple[str, ...] = False
    exclude = None
    inc, exc = body.get("include_attributes"), body.get("exclude_attributes")
    if inc is not None and exc is not None:
        raise _fail(pre + "include_attributes", "give either include_attributes or exclude_attributes, not both")
    n_attrs = L.MAX_ATTRIBUTES_PER_NAMESPACE
    _check_len(inc, n_attrs, "MAX_ATTRIBUTES_PER_NAMESPACE", pre + "include_attributes", "attribute names")
    _check_len(exc, n_attrs, "MAX_ATTRIBUTES_PER_NAMESPACE", pre + "exclude_attributes", "attribute names")
    if inc is not None:
        if isinstance(inc, bool):
            include = inc
        elif isinstance(inc, (list, tuple)):
            include = tuple(_attr_name(a, pre + "include_attributes") for a in inc)
        else:
            raise _fail(
                pre + "include_attributes", f"must be true, false or a list of attribute names, got {_show(inc)}"
            )
    if exc is not None:
        if not isinstance(exc, (list, tuple)):
            raise _fail(pre + "exclude_attributes", f"must be a list of attribute names, got {_show(exc)}")
        exclude = tuple(_attr_name(a, pre + "exclude_attributes") for a in exc)

    aggs: list[tuple[str, Aggregate]] = []
    if body.get("aggregate_by") is not None:
        ab = body["aggregate_by"]
        if not isinstance(ab, Mapping) or not ab:
            raise _fail(pre + "aggregate_by", f'expected {{"label": ["Count"] | ["Sum", attr]}}, got {_show(ab)}')
        _check_len(
            ab, L.MAX_ATTRIBUTES_PER_NAMESPACE, "MAX_ATTRIBUTES_PER_NAMESPACE", pre + "aggregate_by", "aggregations"
        )
        for label, spec in ab.items():
            w = f"{pre}aggregate_by.{label}"
            if not isinstance(label, str) or not label:
                raise _fail(pre + "aggregate_by", "labels must be non-empty strings")
            if not isinstance(spec, (list, tuple)) or not spec:
                raise _fail(w, f'expected ["Count"], ["Count", attr] or ["Sum", attr], got {_show(spec)}')
            kind = spec[0]
            if kind == "Count" and len(spec) in (1, 2):
                aggs.append((label, Aggregate("Count", _attr_name(spec[1], w) if len(spec) == 2 else None)))
            elif kind == "Sum" and len(spec) == 2:
                aggs.append((label, Aggregate("Sum", _attr_name(spec[1], w))))
            elif kind == "Sum":
                raise _fail(w, 'Sum takes one attribute: ["Sum", attr]')
            else:
                raise _fail(w, f'unknown aggregate {_show(spec)}; supported: ["Count"], ["Count", attr], ["Sum", attr]')

    groups: list[GroupKey] = []
    if body.get("group_by") is not None:
        gb = body["group_by"]
        if not isinstance(gb, (list, tuple)) or not gb:
            raise _fail(pre + "group_by", f"must be a non-empty list of attribute names, got {_show(gb)}")
        _check_len(gb, L.MAX_ATTRIBUTES_PER_NAMESPACE, "MAX_ATTRIBUTES_PER_NAMESPACE", pre + "group_by", "group keys")
        if not aggs:
            raise _fail(pre + "group_by", "group_by needs aggregate_by")
        for i, g in enumerate(gb):
            w = f"{pre}group_by[{i}]"
            if isinstance(g, str) and g:
                groups.append(GroupKey(g, g))
            elif isinstance(g, Mapping) and len(g) == 1:
                ((name, fn),) = g.items()
                if not (isinstance(fn, (list, tuple)) and len(fn) == 2 and fn[0] == "ForEachUnique"):
                    raise _fail(w, f'expected {{"label": ["ForEachUnique", attr]}}, got {_show(g)}')
                groups.append(GroupKey(_attr_name(name, w), _attr_name(fn[1], w), True))
            else:
                raise _fail(w, f'expected an attribute name or {{"label": ["ForEachUnique", attr]}}, got {_show(g)}')
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise _fail(pre + "group_by", "a group key appears twice")
        clash = set(names) & {a for a, _ in aggs}
        if clash:
            raise _fail(pre + "group_by", f"{_show(sorted(clash)[0])} is both a group key and an aggregation label")

    if rank_by is None and not aggs:
        raise _fail(
            pre + "rank_by",
            "a query needs rank_by (or aggregate_by)",
            hint='e.g. "rank_by": ["id", "asc"] to list documents',
        )
    if rank_by is None and (inc is not None or exc is not None):
        raise _fail(pre + "include_attributes", "include_attributes/exclude_attributes need rank_by (rows)")

    metric = body.get("distance_metric")
    if metric is not None and metric not in METRICS:
        raise _fail(pre + "distance_metric", f"must be one of {', '.join(METRICS)}, got {_show(metric)}")

    return Query(
        rank_by=rank_by,
        filters=filters,
        limit=limit,
        limit_given=given,
        per_attributes=per_attrs,
        per_limit=per_limit,
        offset=offset,
        include=include,
        exclude=exclude,
        aggregate_by=tuple(aggs),
        group_by=tuple(groups),
        consistency=_parse_consistency(body.get("consistency")) if not sub else "strong",
        vector_encoding=_parse_encoding(body.get("vector_encoding"), pre + "vector_encoding"),
        distance_metric=metric,
    )


def parse_multi(body: Any) -> MultiQuery:
    if not isinstance(body, Mapping):
        raise InvalidQuery(f"multi-query: the body must be a JSON object, got {_show(body)}")
    _check_keys(body, MULTI_KEYS, "multi-query")
    qs = body.get("queries")
    if not isinstance(qs, (list, tuple)) or not qs:
        raise _fail("queries", f"must be a non-empty list of query objects, got {_show(qs)}")
    if len(qs) > L.MAX_MULTI_QUERIES:
        raise _fail(
            "queries",
            f"at most {L.MAX_MULTI_QUERIES} queries per multi-query, got {len(qs):,} "
            f"(limit: MAX_MULTI_QUERIES = {L.MAX_MULTI_QUERIES})",
        )
    queries = tuple(parse_query(q, sub=f"queries[{i}]") for i, q in enumerate(qs))
    rrf = None
    if body.get("rerank_by") is not None:
        rb = body["rerank_by"]
        if not isinstance(rb, (list, tuple)) or not rb or rb[0] != "RRF" or len(rb) > 2:
            raise _fail(
                "rerank_by", f'expected ["RRF"] or ["RRF", {{"rank_constant": k, "weights": [...]}}], got {_show(rb)}'
            )
        params = rb[1] if len(rb) == 2 else {}
        if not isinstance(params, Mapping) or set(params) - {"rank_constant", "weights"}:
            raise _fail("rerank_by[1]", f"RRF options are rank_constant and weights, got {_show(params)}")
        k = params.get("rank_constant", 60)
        if not _is_int(k) or k <= 0:
            raise _fail("rerank_by[1].rank_constant", f"must be a positive integer, got {_show(k)}")
        w = params.get("weights")
        if w is not None:
            if not isinstance(w, (list, tuple)) or len(w) != len(queries) or not all(_is_num(x) and x > 0 for x in w):
                raise _fail(
                    "rerank_by[1].weights", f"must be {len(queries)} positive numbers (one per query), got {_show(w)}"
                )
            w = tuple(float(x) for x in w)
        for i, q in enumerate(queries):
            if q.rank_by is None:
                raise _fail(f"queries[{i}]", "RRF needs every query to have rank_by")
        rrf = (k, w)
    limit = None
    if body.get("limit") is not None:
        lv = body["limit"]
        if rrf is None:
            raise _fail("limit", "a multi-query limit needs rerank_by (each query has its own limit)")
        if isinstance(lv, Mapping):
            if set(lv) != {"total"}:
                raise _fail("limit", f'expected an integer or {{"total": n}}, got {_show(lv)}')
            lv = lv["total"]
        limit = _parse_limit_int(lv, "limit")
    offset = 0
    if body.get("offset") is not None:
        if rrf is None or limit is None:
            raise _fail("offset", "a multi-query offset needs rerank_by and limit")
        offset = _parse_limit_int(body["offset"], "offset", 0, L.MAX_OFFSET, "MAX_OFFSET")
    return MultiQuery(
        queries,
        _parse_consistency(body.get("consistency")),
        rrf,
        limit,
        offset,
        _parse_encoding(body.get("vector_encoding")),
    )


# --------------------------------------------------------------------------- checks against a schema
_ORDERABLE = ("string", "int", "uint", "float", "bool", "datetime", "uuid")
_NUMERIC = ("int", "uint", "float")


def _attr_type(schema: Mapping, attr: str) -> str | None:
    spec = schema.get(attr)
    return spec.get("type") if spec else None


def _text_nodes(e):
    yield e
    if isinstance(e, (TextSum, TextMax)):
        for c in e.children:
            yield from _text_nodes(c)
    elif isinstance(e, TextProduct):
        yield from _text_nodes(e.child)


def check_query(q: Query, schema: Mapping, metric: str | None, *, where: str = "") -> None:
    """Validate ``q`` against a namespace schema. Raises InvalidQuery / InvalidFilter."""
    pre = f"{where}." if where else ""
    rb = q.rank_by
    if isinstance(rb, VectorRank):
        t = _attr_type(schema, rb.attr)
        if t is None:
            vecs = [a for a, s in schema.items() if S.is_vector(s.get("type", ""))]
            raise _fail(
                pre + "rank_by",
                f"namespace has no vector attribute {rb.attr!r}"
                + (f" (vector attributes: {', '.join(vecs)})" if vecs else " (it has no vectors)"),
            )
        dims = S.vector_dims(t)
        if dims is None:
            raise _fail(pre + "rank_by", f"attribute {rb.attr!r} is {t}, not a vector")
        if len(rb.vector) != dims:
            raise _fail(pre + "rank_by", f"query vector has {len(rb.vector)} dimensions; {rb.attr!r} has {dims}")
    elif isinstance(rb, OrderBy):
        for a, _d in rb.keys:
            t = _attr_type(schema, a)
            if t is None:
                raise _fail(
                    pre + "rank_by", f"unknown attribute {a!r}", hint=f"attributes: {', '.join(schema) or '(none)'}"
                )
            if t not in _ORDERABLE:
                raise _fail(pre + "rank_by", f"cannot order by {a!r} of type {t}")
    elif isinstance(rb, TextRank):
        for n in _text_nodes(rb.expr):
            if isinstance(n, Bm25):
                spec = schema.get(n.attr)
                if spec is None:
                    raise _fail(pre + "rank_by", f"unknown attribute {n.attr!r} in BM25")
                if not spec.get("full_text_search"):
                    raise _fail(
                        pre + "rank_by",
                        f"attribute {n.attr!r} has no full-text search index",
                        hint=f'declare it in the schema: {{"{n.attr}": {{"type": "string", '
                        '"full_text_search": true}}',
                    )
            elif isinstance(n, AttrScore):
                t = _attr_type(schema, n.attr)
                if t not in _NUMERIC and t != "datetime":
                    raise _fail(pre + "rank_by", f"Attribute ranking needs a numeric attribute, {n.attr!r} is {t}")
            elif isinstance(n, FilterScore):
                try:
                    F.validate_filter(n.filter, schema)
                except InvalidFilter as ex:
                    raise _fail(pre + "rank_by", ex.message) from ex
    if q.filters is not None:
        try:
            F.validate_filter(q.filter, schema)
        except InvalidFilter as ex:
            raise InvalidFilter(f"{pre}filters: {ex.message}", hint=ex.hint) from ex
    for label, agg in q.aggregate_by:
        if agg.attr is not None:
            t = _attr_type(schema, agg.attr)
            if t is None:
                raise _fail(f"{pre}aggregate_by.{label}", f"unknown attribute {agg.attr!r}")
            if agg.kind == "Sum" and t not in _NUMERIC:
                raise _fail(f"{pre}aggregate_by.{label}", f"Sum needs a numeric attribute; {agg.attr!r} is {t}")
    for g in q.group_by:
        t = _attr_type(schema, g.attr)
        if t is None:
            raise _fail(pre + "group_by", f"unknown attribute {g.attr!r}")
        if g.for_each_unique and not t.startswith("[]"):
            raise _fail(pre + "group_by", f"ForEachUnique needs an array attribute; {g.attr!r} is {t}")
        if not g.for_each_unique and t not in _ORDERABLE:
            raise _fail(
                pre + "group_by",
                f"cannot group by {g.attr!r} of type {t}"
                + (' (use {"label": ["ForEachUnique", attr]})' if t.startswith("[]") else ""),
            )
    for a in q.per_attributes or ():
        t = _attr_type(schema, a)
        if t is None:
            raise _fail(pre + "limit.per", f"unknown attribute {a!r}")
        if t not in _ORDERABLE:
            raise _fail(pre + "limit.per", f"cannot limit per {a!r} of type {t}")
