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

Modules: the dataclasses are :mod:`puffer_cli.query.model`, ``rank_by`` parsing is
:mod:`puffer_cli.query.rank`; both are re-exported here (``query.Query``,
``query.parse_rank_by`` ...).  This module parses the rest of a body (in named steps,
``_parse_limit``, ``_parse_aggregates`` ...), multi-queries, and checks a query against a schema.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from puffer_cli import filters as F
from puffer_cli import limits as L
from puffer_cli.errors import InvalidFilter, InvalidQuery, show
from puffer_cli.filters import parse as filter_parse
from puffer_cli.filters.tree import Node
from puffer_cli.query.checks import NO_RERANK_MODEL, attr_name, check_len, fail, is_int, is_num
from puffer_cli.query.computed import check_compute, parse_compute
from puffer_cli.query.model import (
    DEFAULT_LIMIT,
    MULTI_KEYS,
    QUERY_KEYS,
    SUBQUERY_KEYS,
    Aggregate,
    AttrScore,
    Bm25,
    Dist,
    FilterScore,
    GroupKey,
    MultiQuery,
    MultiVectorRank,
    OrderBy,
    Query,
    SparseKnn,
    TextRank,
    VectorRank,
    text_children,
)
from puffer_cli.query.rank import parse_rank_by
from puffer_cli.schema import shape, types
from puffer_cli.schema.types import METRICS


def _parse_limit_int(v: Any, where: str, lo: int = 1, hi: int = L.MAX_TOP_K, name: str = "MAX_TOP_K") -> int:
    if not is_int(v):
        raise fail(where, f"must be an integer, got {show(v)}")
    if not lo <= v <= hi:
        raise fail(where, f"must be between {lo} and {name} = {hi:,}, got {v}")
    return v


def _parse_consistency(c: Any, where: str = "consistency") -> str:
    if c is None:
        return "strong"
    if isinstance(c, str) and c in ("strong", "eventual"):
        return c  # lenient: the bare level
    if not isinstance(c, Mapping) or "level" not in c:
        raise fail(where, f'expected {{"level": "strong"|"eventual"}}, got {show(c)}')
    extra = set(c) - {"level", "max_staleness_seconds"}
    if extra:
        raise fail(where, f"unknown key {show(sorted(extra)[0])}")
    if c["level"] not in ("strong", "eventual"):
        raise fail(where, f'level must be "strong" or "eventual", got {show(c["level"])}')
    if "max_staleness_seconds" in c and (not is_int(c["max_staleness_seconds"]) or c["max_staleness_seconds"] < 0):
        raise fail(where, "max_staleness_seconds must be a non-negative integer")
    return c["level"]


def _parse_encoding(v: Any, where: str = "vector_encoding") -> str:
    if v is None:
        return "float"
    if v not in ("float", "base64"):
        raise fail(where, f'must be "float" or "base64", got {show(v)}')
    return v


# turbopuffer query parameters puffer refuses by name (400), never ignores
REFUSED_QUERY_KEYS: dict[str, str] = {"rerank_by": NO_RERANK_MODEL}


def _check_keys(body: Mapping, allowed: tuple[str, ...], what: str) -> None:
    for k in body:
        if k in REFUSED_QUERY_KEYS and k not in allowed:
            raise InvalidQuery(f"{what}: {REFUSED_QUERY_KEYS[k]}")
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            extra = ""
            if k in ("vector", "include_vectors"):
                extra = '; v2 queries use rank_by ["vector", "ANN", [...]] and include_attributes'
            elif k == "queries":
                extra = '; send multi-queries to the multi-query entry point (puffer query --body with "queries")'
            raise InvalidQuery(
                f"{what}: unknown parameter {show(k)}{hint}{extra}", hint=f"known parameters: {', '.join(allowed)}"
            )


def parse_query(body: Any, *, sub: str | None = None) -> Query:
    """Parse one query body. ``sub`` names the sub-query in errors (multi-query).

    Steps: keys, rank_by, filters, limit, offset, include/exclude, aggregate_by,
    group_by, then the checks across them (rank_by or aggregate_by needed, ...)."""
    pre = f"{sub}." if sub else ""
    if not isinstance(body, Mapping):
        raise InvalidQuery(f"{sub or 'query'}: the query body must be a JSON object, got {show(body)}")
    _check_keys(body, SUBQUERY_KEYS if sub else QUERY_KEYS, sub or "query")
    shape.check_fields(body, shape.QUERY_FIELDS, pre=pre)  # a wrong JSON type: 422
    rank_by = None
    if body.get("rank_by") is not None:
        rank_by = parse_rank_by(body["rank_by"], pre + "rank_by")
    filters = _parse_filters(body.get("filters"), pre)
    limit, given, per_attrs, per_limit = _parse_limit(body, pre)
    offset = 0
    if body.get("offset") is not None:
        offset = _parse_limit_int(body["offset"], pre + "offset", 0, L.MAX_OFFSET, "MAX_OFFSET")
        if rank_by is None:
            raise fail(pre + "offset", "offset needs an explicit rank_by")
    include, exclude = _parse_attributes(body.get("include_attributes"), body.get("exclude_attributes"), pre)
    aggs = _parse_aggregates(body.get("aggregate_by"), pre)
    groups = _parse_groups(body.get("group_by"), aggs, pre)
    if rank_by is None and not aggs:
        raise fail(
            pre + "rank_by",
            "a query needs rank_by (or aggregate_by)",
            hint='e.g. "rank_by": ["id", "asc"] to list documents',
        )
    if rank_by is None and (body.get("include_attributes") is not None or exclude is not None):
        raise fail(pre + "include_attributes", "include_attributes/exclude_attributes need rank_by (rows)")
    compute = parse_compute(body.get("compute_attributes"), pre)
    if compute and rank_by is None:
        raise fail(pre + "compute_attributes", "compute_attributes needs rank_by (rows)")
    metric = body.get("distance_metric")
    if metric is not None and metric not in METRICS:
        raise fail(pre + "distance_metric", f"must be one of {', '.join(METRICS)}, got {show(metric)}")
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
        compute=compute,
    )


def _parse_filters(f: Any, pre: str) -> Node | None:
    """``filters``: structurally valid (the schema checks come in check_query) -> the tree."""
    if f is None:
        return None
    try:
        return filter_parse.parse(f)
    except InvalidFilter as ex:
        raise InvalidFilter(f"{pre}filters: {ex.message}", hint=ex.hint) from ex


def _parse_limit(body: Mapping, pre: str) -> tuple[int, bool, tuple[str, ...] | None, int | None]:
    """``top_k`` or ``limit`` (an int or ``{"total": n, "per": {...}}``) ->
    (limit, given, per attributes, per limit)."""
    if body.get("top_k") is not None and body.get("limit") is not None:
        raise fail(pre + "top_k", "give either top_k or limit, not both")
    if body.get("top_k") is not None:
        return _parse_limit_int(body["top_k"], pre + "top_k"), True, None, None
    lv = body.get("limit")
    if lv is None:
        return DEFAULT_LIMIT, False, None, None
    if not isinstance(lv, Mapping):
        return _parse_limit_int(lv, pre + "limit"), True, None, None
    extra = set(lv) - {"total", "per"}
    if extra:
        raise fail(pre + "limit", f"unknown key {show(sorted(extra)[0])}; use total and per")
    if "total" not in lv:
        raise fail(pre + "limit", 'an object limit needs "total"')
    limit = _parse_limit_int(lv["total"], pre + "limit.total")
    per = lv.get("per")
    if per is None:
        return limit, True, None, None
    if not isinstance(per, Mapping) or set(per) != {"attributes", "limit"}:
        raise fail(pre + "limit.per", f'expected {{"attributes": [...], "limit": n}}, got {show(per)}')
    pa = per["attributes"]
    where = pre + "limit.per.attributes"
    check_len(pa, L.MAX_ATTRIBUTES_PER_NAMESPACE, "MAX_ATTRIBUTES_PER_NAMESPACE", where, "attribute names")
    if not isinstance(pa, (list, tuple)) or not pa:
        raise fail(where, "must be a non-empty list of attribute names")
    per_attrs = tuple(attr_name(a, where) for a in pa)
    return limit, True, per_attrs, _parse_limit_int(per["limit"], pre + "limit.per.limit")


def _parse_attributes(inc: Any, exc: Any, pre: str) -> tuple[bool | tuple[str, ...], tuple[str, ...] | None]:
    """``include_attributes`` / ``exclude_attributes`` -> (include, exclude)."""
    if inc is not None and exc is not None:
        raise fail(pre + "include_attributes", "give either include_attributes or exclude_attributes, not both")
    n_attrs = L.MAX_ATTRIBUTES_PER_NAMESPACE
    check_len(inc, n_attrs, "MAX_ATTRIBUTES_PER_NAMESPACE", pre + "include_attributes", "attribute names")
    check_len(exc, n_attrs, "MAX_ATTRIBUTES_PER_NAMESPACE", pre + "exclude_attributes", "attribute names")
    include: bool | tuple[str, ...] = False
    if inc is not None:
        if isinstance(inc, bool):
            include = inc
        elif isinstance(inc, (list, tuple)):
            include = tuple(attr_name(a, pre + "include_attributes") for a in inc)
        else:
            raise fail(pre + "include_attributes", f"must be true, false or a list of attribute names, got {show(inc)}")
    if exc is None:
        return include, None
    if not isinstance(exc, (list, tuple)):
        raise fail(pre + "exclude_attributes", f"must be a list of attribute names, got {show(exc)}")
    return include, tuple(attr_name(a, pre + "exclude_attributes") for a in exc)


def _parse_aggregates(ab: Any, pre: str) -> list[tuple[str, Aggregate]]:
    """``aggregate_by``: ``{"label": ["Count"] | ["Count", attr] | ["Sum", attr]}``."""
    aggs: list[tuple[str, Aggregate]] = []
    if ab is None:
        return aggs
    if not isinstance(ab, Mapping) or not ab:
        raise fail(pre + "aggregate_by", f'expected {{"label": ["Count"] | ["Sum", attr]}}, got {show(ab)}')
    check_len(ab, L.MAX_ATTRIBUTES_PER_NAMESPACE, "MAX_ATTRIBUTES_PER_NAMESPACE", pre + "aggregate_by", "aggregations")
    for label, spec in ab.items():
        w = f"{pre}aggregate_by.{label}"
        if not isinstance(label, str) or not label:
            raise fail(pre + "aggregate_by", "labels must be non-empty strings")
        if not isinstance(spec, (list, tuple)) or not spec:
            raise fail(w, f'expected ["Count"], ["Count", attr] or ["Sum", attr], got {show(spec)}')
        kind = spec[0]
        if kind == "Count" and len(spec) in (1, 2):
            aggs.append((label, Aggregate("Count", attr_name(spec[1], w) if len(spec) == 2 else None)))
        elif kind == "Sum" and len(spec) == 2:
            aggs.append((label, Aggregate("Sum", attr_name(spec[1], w))))
        elif kind == "Sum":
            raise fail(w, 'Sum takes one attribute: ["Sum", attr]')
        else:
            raise fail(w, f'unknown aggregate {show(spec)}; supported: ["Count"], ["Count", attr], ["Sum", attr]')
    return aggs


def _parse_groups(gb: Any, aggs: list[tuple[str, Aggregate]], pre: str) -> list[GroupKey]:
    """``group_by``: ``[attr | {"label": ["ForEachUnique", attr]}, ...]`` (needs aggregate_by)."""
    groups: list[GroupKey] = []
    if gb is None:
        return groups
    if not isinstance(gb, (list, tuple)) or not gb:
        raise fail(pre + "group_by", f"must be a non-empty list of attribute names, got {show(gb)}")
    check_len(gb, L.MAX_ATTRIBUTES_PER_NAMESPACE, "MAX_ATTRIBUTES_PER_NAMESPACE", pre + "group_by", "group keys")
    if not aggs:
        raise fail(pre + "group_by", "group_by needs aggregate_by")
    for i, g in enumerate(gb):
        w = f"{pre}group_by[{i}]"
        if isinstance(g, str) and g:
            groups.append(GroupKey(g, g))
        elif isinstance(g, Mapping) and len(g) == 1:
            ((name, fn),) = g.items()
            if not (isinstance(fn, (list, tuple)) and len(fn) == 2 and fn[0] == "ForEachUnique"):
                raise fail(w, f'expected {{"label": ["ForEachUnique", attr]}}, got {show(g)}')
            groups.append(GroupKey(attr_name(name, w), attr_name(fn[1], w), True))
        else:
            raise fail(w, f'expected an attribute name or {{"label": ["ForEachUnique", attr]}}, got {show(g)}')
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise fail(pre + "group_by", "a group key appears twice")
    clash = set(names) & {a for a, _ in aggs}
    if clash:
        raise fail(pre + "group_by", f"{show(sorted(clash)[0])} is both a group key and an aggregation label")
    return groups


def parse_multi(body: Any) -> MultiQuery:
    if not isinstance(body, Mapping):
        raise InvalidQuery(f"multi-query: the body must be a JSON object, got {show(body)}")
    _check_keys(body, MULTI_KEYS, "multi-query")
    shape.check_fields(body, shape.MULTI_FIELDS)
    qs = body.get("queries")
    if not isinstance(qs, (list, tuple)) or not qs:
        raise fail("queries", f"must be a non-empty list of query objects, got {show(qs)}")
    if len(qs) > L.MAX_MULTI_QUERIES:
        raise fail(
            "queries",
            f"at most {L.MAX_MULTI_QUERIES} queries per multi-query, got {len(qs):,} "
            f"(limit: MAX_MULTI_QUERIES = {L.MAX_MULTI_QUERIES})",
        )
    queries = tuple(parse_query(q, sub=f"queries[{i}]") for i, q in enumerate(qs))
    rrf = None
    if body.get("rerank_by") is not None:
        rb = body["rerank_by"]
        if isinstance(rb, Mapping):  # {attribute, model, query}: turbopuffer's model reranking
            raise fail("rerank_by", NO_RERANK_MODEL)
        if not isinstance(rb, (list, tuple)) or not rb or rb[0] != "RRF" or len(rb) > 2:
            raise fail(
                "rerank_by", f'expected ["RRF"] or ["RRF", {{"rank_constant": k, "weights": [...]}}], got {show(rb)}'
            )
        params = rb[1] if len(rb) == 2 else {}
        if not isinstance(params, Mapping) or set(params) - {"rank_constant", "weights"}:
            raise fail("rerank_by[1]", f"RRF options are rank_constant and weights, got {show(params)}")
        k = params.get("rank_constant", 60)
        if not is_int(k) or k <= 0:
            raise fail("rerank_by[1].rank_constant", f"must be a positive integer, got {show(k)}")
        w = params.get("weights")
        if w is not None:
            if not isinstance(w, (list, tuple)) or len(w) != len(queries) or not all(is_num(x) and x > 0 for x in w):
                raise fail(
                    "rerank_by[1].weights", f"must be {len(queries)} positive numbers (one per query), got {show(w)}"
                )
            w = tuple(float(x) for x in w)
        for i, q in enumerate(queries):
            if q.rank_by is None:
                raise fail(f"queries[{i}]", "RRF needs every query to have rank_by")
        rrf = (k, w)
    limit = None
    if body.get("limit") is not None:
        lv = body["limit"]
        if rrf is None:
            raise fail("limit", "a multi-query limit needs rerank_by (each query has its own limit)")
        if isinstance(lv, Mapping):
            if set(lv) != {"total"}:
                raise fail("limit", f'expected an integer or {{"total": n}}, got {show(lv)}')
            lv = lv["total"]
        limit = _parse_limit_int(lv, "limit")
    offset = 0
    if body.get("offset") is not None:
        if rrf is None or limit is None:
            raise fail("offset", "a multi-query offset needs rerank_by and limit")
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
    for c in text_children(e):
        yield from _text_nodes(c)


def _check_text(expr, schema: Mapping, where: str) -> None:
    """A text rank expression against the schema: BM25 fields indexed, Attribute numeric, filters valid."""
    for n in _text_nodes(expr):
        if isinstance(n, Bm25):
            spec = schema.get(n.attr)
            if spec is None:
                raise fail(where, f"unknown attribute {n.attr!r} in BM25")
            if not spec.get("full_text_search"):
                raise fail(
                    where,
                    f"attribute {n.attr!r} has no full-text search index",
                    hint=f'declare it in the schema: {{"{n.attr}": {{"type": "string", "full_text_search": true}}',
                )
            fts = spec.get("full_text_search")
            tok = fts.get("tokenizer") if isinstance(fts, Mapping) else None
            if tok == "pre_tokenized_array" and isinstance(n.query, str):
                # turbopuffer: the query of a pre-tokenized field is its list of tokens
                raise fail(where, f'invalid input "{n.query}" for rank_by field "{n.attr}", expecting []string')
        elif isinstance(n, SparseKnn):
            t = _attr_type(schema, n.attr)
            if t != types.SPARSE:
                raise fail(
                    where,
                    f"SparseKNN needs a sparse vector attribute ({types.SPARSE}), "
                    + (f"{n.attr!r} is {t}" if t else f"the namespace has no attribute {n.attr!r}"),
                )
        elif isinstance(n, AttrScore):
            t = _attr_type(schema, n.attr)
            if t not in _NUMERIC and t != "datetime":
                raise fail(where, f"Attribute ranking needs a numeric attribute, {n.attr!r} is {t}")
        elif isinstance(n, Dist) and n.origin_json is not None:
            t = _attr_type(schema, n.child.attr)
            if t != "datetime":
                raise fail(where, f"a date Dist origin needs a datetime attribute, {n.child.attr!r} is {t}")
        elif isinstance(n, FilterScore):
            try:
                F.validate_filter(n.node, schema)
            except InvalidFilter as ex:
                raise fail(where, ex.message) from ex


def check_query(q: Query, schema: Mapping, metric: str | None, *, where: str = "") -> None:
    """Validate ``q`` against a namespace schema. Raises InvalidQuery / InvalidFilter."""
    pre = f"{where}." if where else ""
    rb = q.rank_by
    if isinstance(rb, VectorRank):
        t = _attr_type(schema, rb.attr)
        if t is None:
            vecs = [a for a, s in schema.items() if types.is_vector(s.get("type", ""))]
            raise fail(
                pre + "rank_by",
                f"namespace has no vector attribute {rb.attr!r}"
                + (f" (vector attributes: {', '.join(vecs)})" if vecs else " (it has no vectors)"),
            )
        mdims = types.multi_vector_dims(t)
        dims = types.vector_dims(t) if mdims is None else mdims
        if dims is None:
            raise fail(pre + "rank_by", f"attribute {rb.attr!r} is {t}, not a vector")
        if isinstance(rb, MultiVectorRank) and mdims is None:
            raise fail(
                pre + "rank_by",
                f"several query vectors need a multi-vector [][N]f32 attribute; {rb.attr!r} is {t}",
            )
        if len(rb.vector) != dims:
            raise fail(pre + "rank_by", f"query vector has {len(rb.vector)} dimensions; {rb.attr!r} has {dims}")
    elif isinstance(rb, OrderBy):
        for a, _d in rb.keys:
            t = _attr_type(schema, a)
            if t is None:
                raise fail(
                    pre + "rank_by", f"unknown attribute {a!r}", hint=f"attributes: {', '.join(schema) or '(none)'}"
                )
            if t not in _ORDERABLE:
                raise fail(pre + "rank_by", f"cannot order by {a!r} of type {t}")
    elif isinstance(rb, TextRank):
        _check_text(rb.expr, schema, pre + "rank_by")
    for name, e in q.compute:
        if getattr(e, "rank_fragments_by", None) is not None:
            _check_text(e.rank_fragments_by, schema, f"{pre}compute_attributes.{name}.rank_fragments_by")
    check_compute(q, schema, pre)
    if q.filters is not None:
        try:
            F.validate_filter(q.filters, schema)
        except InvalidFilter as ex:
            raise InvalidFilter(f"{pre}filters: {ex.message}", hint=ex.hint) from ex
    for label, agg in q.aggregate_by:
        if agg.attr is not None:
            t = _attr_type(schema, agg.attr)
            if t is None:
                raise fail(f"{pre}aggregate_by.{label}", f"unknown attribute {agg.attr!r}")
            if agg.kind == "Sum" and t not in _NUMERIC:
                raise fail(f"{pre}aggregate_by.{label}", f"Sum needs a numeric attribute; {agg.attr!r} is {t}")
    for g in q.group_by:
        t = _attr_type(schema, g.attr)
        if t is None:
            raise fail(pre + "group_by", f"unknown attribute {g.attr!r}")
        if g.for_each_unique and not t.startswith("[]"):
            raise fail(pre + "group_by", f"ForEachUnique needs an array attribute; {g.attr!r} is {t}")
        if not g.for_each_unique and t not in _ORDERABLE:
            raise fail(
                pre + "group_by",
                f"cannot group by {g.attr!r} of type {t}"
                + (' (use {"label": ["ForEachUnique", attr]})' if t.startswith("[]") else ""),
            )
    for a in q.per_attributes or ():
        t = _attr_type(schema, a)
        if t is None:
            raise fail(pre + "limit.per", f"unknown attribute {a!r}")
        if t not in _ORDERABLE:
            raise fail(pre + "limit.per", f"cannot limit per {a!r} of type {t}")
