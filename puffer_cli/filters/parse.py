"""Filter parsing: the operator tables, the limits walk, and structural validation of a
turbopuffer filter (JSON) into the typed tree of :mod:`puffer_cli.filters.tree`.

``parse(f)`` = :func:`check_limits` then :func:`parse_node`: an ``And`` / ``Or`` / ``Not`` /
``Predicate`` tree (``None``: no filter).  No schema needed (that is
:mod:`puffer_cli.filters.bind`).  The rules: :mod:`puffer_cli.filters`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from puffer_cli import limits as _limits
from puffer_cli.errors import InvalidFilter
from puffer_cli.errors import show as show_value
from puffer_cli.filters import tree
from puffer_cli.filters.tree import FrozenDict, Node, Predicate, freeze

NEG = {
    "NotEq": "Eq",
    "NotIn": "In",
    "NotGlob": "Glob",
    "NotIGlob": "IGlob",
    "NotContains": "Contains",
    "NotContainsAny": "ContainsAny",
}
CMP = ("Lt", "Lte", "Gt", "Gte")
ANY_CMP = {"AnyLt": "Lt", "AnyLte": "Lte", "AnyGt": "Gt", "AnyGte": "Gte"}
TOKEN_OPS = ("ContainsAllTokens", "ContainsAnyToken", "ContainsTokenSequence")
_POSITIVE = ("Eq", "In", *CMP, "Glob", "IGlob", "Regex", "Fuzzy", "Contains", "ContainsAny", *ANY_CMP, *TOKEN_OPS)
OPERATORS: tuple[str, ...] = _POSITIVE + tuple(NEG)
CONNECTIVES = ("And", "Or", "Not")


# --------------------------------------------------------------------------- helpers


def show(v: Any) -> str:
    """``v`` as compact JSON for a filter error message (cut at 200 characters)."""
    return show_value(v, 200, compact=True, default=repr)


class Ctx:
    """Where we are, for error messages."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any):
        self.raw = raw

    def fail(self, msg: str) -> InvalidFilter:
        return InvalidFilter(f"filter {show(self.raw)}: {msg}")


# --------------------------------------------------------------------------- parsing


def is_connective(f: list | tuple) -> bool:
    """``f`` (a non-empty list) is ``[And|Or|Not, ...]`` rather than a condition on an
    attribute called "And" / "Or" / "Not"."""
    head = f[0]
    return isinstance(head, str) and head in CONNECTIVES and (len(f) != 3 or not isinstance(f[1], str))


def _too_big(what: str, got: str, limit: int, name: str, hint: str) -> InvalidFilter:
    return InvalidFilter(f"filter {what}: {got} (limit: {name} = {limit:,})", hint=hint)


def _too_many_nodes(seen: int) -> InvalidFilter:
    return _too_big(
        "too large",
        f"at least {seen:,} conditions and And/Or/Not",
        _limits.MAX_FILTER_NODES,
        "MAX_FILTER_NODES",
        'use [attr, "In", [...]] instead of an Or of Eq (one node), or split the query',
    )


def _check_value(v: Any) -> None:
    """Bound a condition's value (or any non-filter element): nesting at most
    MAX_VALUE_DEPTH, at most MAX_FILTER_LIST_ITEMS list elements / object values in all."""
    if not isinstance(v, (list, tuple, Mapping)):
        return
    items = 0
    stack = [(v, 1)]
    while stack:
        x, d = stack.pop()
        if d > _limits.MAX_VALUE_DEPTH:
            raise _too_big(
                "value nested too deep",
                f"a value nested more than {_limits.MAX_VALUE_DEPTH} levels",
                _limits.MAX_VALUE_DEPTH,
                "MAX_VALUE_DEPTH",
                "values are scalars or flat lists of scalars",
            )
        kids = x.values() if isinstance(x, Mapping) else x
        items += len(kids)
        if items > _limits.MAX_FILTER_LIST_ITEMS:
            raise _too_big(
                "list too long",
                f"more than {_limits.MAX_FILTER_LIST_ITEMS:,} values",
                _limits.MAX_FILTER_LIST_ITEMS,
                "MAX_FILTER_LIST_ITEMS",
                "split the query, or filter on a coarser attribute",
            )
        stack.extend((k, d + 1) for k in kids if isinstance(k, (list, tuple, Mapping)))


def check_limits(f: Any) -> None:
    """Refuse a filter beyond the query limits (puffer_cli.limits), with an
    InvalidFilter naming the limit: more than MAX_FILTER_NODES conditions and
    connectives, And/Or/Not nested more than MAX_FILTER_DEPTH deep, a value list of
    more than MAX_FILTER_LIST_ITEMS, a Glob/IGlob/Regex pattern longer than
    MAX_PATTERN_CHARS, a token-operator query longer than MAX_QUERY_TEXT_CHARS.

    One iterative walk over the raw JSON, stopping at the first limit broken, so it
    is cheap and cannot overflow any stack whatever it is given; everything that
    parses, prints or compiles a filter runs after it (and may then recurse)."""
    if f is None:
        return
    nodes = 0
    stack: list[tuple[Any, int]] = [(f, 0)]
    while stack:
        g, depth = stack.pop()
        nodes += 1
        if nodes > _limits.MAX_FILTER_NODES:
            raise _too_many_nodes(nodes + len(stack))
        if isinstance(g, (list, tuple)) and g and is_connective(g) and len(g) == 2:
            if depth >= _limits.MAX_FILTER_DEPTH:
                raise _too_big(
                    "nested too deep",
                    f"And/Or/Not nested more than {_limits.MAX_FILTER_DEPTH} levels",
                    _limits.MAX_FILTER_DEPTH,
                    "MAX_FILTER_DEPTH",
                    "flatten the filter",
                )
            if g[0] == "Not":
                stack.append((g[1], depth + 1))
                continue
            if isinstance(g[1], (list, tuple)):
                if nodes + len(stack) + len(g[1]) > _limits.MAX_FILTER_NODES:
                    raise _too_many_nodes(nodes + len(stack) + len(g[1]))
                stack.extend((s, depth + 1) for s in g[1])
                continue
        # a condition (or something malformed, which the parse reports): bound its parts
        if isinstance(g, (list, tuple)) and len(g) >= 3 and isinstance(g[1], str):
            pos = NEG.get(g[1], g[1])
            v = g[2]
            if pos in ("Glob", "IGlob", "Regex") and isinstance(v, str) and len(v) > _limits.MAX_PATTERN_CHARS:
                raise _too_big(
                    "pattern too long",
                    f"{g[1]} pattern of {len(v):,} characters",
                    _limits.MAX_PATTERN_CHARS,
                    "MAX_PATTERN_CHARS",
                    "use a shorter pattern",
                )
            if pos in (*TOKEN_OPS, "Fuzzy") and isinstance(v, (str, list, tuple)):
                n = len(v) if isinstance(v, str) else sum(len(x) for x in v if isinstance(x, str))
                if n > _limits.MAX_QUERY_TEXT_CHARS:
                    raise _too_big(
                        "query text too long",
                        f"{g[1]} text of {n:,} characters",
                        _limits.MAX_QUERY_TEXT_CHARS,
                        "MAX_QUERY_TEXT_CHARS",
                        "use fewer query words",
                    )
        for part in g if isinstance(g, (list, tuple)) else (g,):
            _check_value(part)


def parse(f: Any) -> Node:
    """check_limits, then structural validation -> the tree (see parse_node).  A tree is
    returned as is."""
    if isinstance(f, (tree.And, tree.Or, tree.Not, Predicate)):
        return f
    check_limits(f)
    return parse_node(f)


def parse_node(f: Any) -> Node:
    """Structural validation of a filter within the limits -> the tree."""
    ctx = Ctx(f)
    if not isinstance(f, (list, tuple)):
        raise ctx.fail('expected a list like [attr, op, value], ["And", [...]], ["Or", [...]] or ["Not", filter]')
    if len(f) == 0:
        raise ctx.fail("empty filter")
    head = f[0]
    connective = is_connective(f)
    if connective and head in ("And", "Or"):
        if len(f) != 2:
            raise ctx.fail(f'{head} takes exactly one list of filters: ["{head}", [f, ...]]')
        subs = f[1]
        if not isinstance(subs, (list, tuple)):
            raise ctx.fail(f"{head} needs a list of filters, got {show(subs)}")
        kids = tuple(parse_node(s) for s in subs)
        return tree.And(kids) if head == "And" else tree.Or(kids)
    if connective and head == "Not":
        if len(f) != 2:
            raise ctx.fail('Not takes exactly one filter: ["Not", filter]')
        return tree.Not(parse_node(f[1]))
    if len(f) not in (3, 4):
        if len(f) == 2 and isinstance(f[1], str) and f[1] in OPERATORS:
            raise ctx.fail(f'{f[1]} needs a value: [attr, "{f[1]}", value]')
        raise ctx.fail(f"expected [attr, op, value], got {len(f)} element(s)")
    attr, op, value = f[0], f[1], f[2]
    if not isinstance(attr, str) or not attr:
        raise ctx.fail(f"attribute name must be a non-empty string, got {show(attr)}")
    if not isinstance(op, str):
        raise ctx.fail(f"operator must be a string, got {show(op)}")
    if op not in OPERATORS:
        if op in CONNECTIVES:
            raise ctx.fail(f'{op} must be the first element: ["{op}", ...]')
        known = {k.lower(): k for k in OPERATORS + CONNECTIVES}
        close = difflib.get_close_matches(op.lower(), list(known), n=1, cutoff=0.5)
        hint = f' (did you mean "{known[close[0]]}"?)' if close else ""
        raise ctx.fail(f"unknown operator {show(op)}{hint}")
    params: Any = {}
    if op == "Fuzzy":
        if len(f) != 4 or not isinstance(f[3], Mapping) or set(f[3]) - {"max_edit_distance", "case_sensitive"}:
            raise ctx.fail(
                'Fuzzy takes [attr, "Fuzzy", "text", {"max_edit_distance": [{"distance": d, "min_query_chars": n}], '
                '"case_sensitive"?: bool}]'
            )
        if not isinstance(f[3].get("case_sensitive", True), bool):
            raise ctx.fail(f"Fuzzy case_sensitive must be true or false, got {show(f[3]['case_sensitive'])}")
        return Predicate(attr, op, freeze(value), freeze(f[3]), freeze(f))
    if len(f) == 4:
        if op not in ("ContainsAllTokens", "ContainsAnyToken"):
            raise ctx.fail(f"expected [attr, op, value], got 4 elements ({op} takes no options)")
        params = f[3]
        if (
            not isinstance(params, Mapping)
            or set(params) - {"last_as_prefix"}
            or not isinstance(params.get("last_as_prefix", False), bool)
        ):
            raise ctx.fail(f'{op} options must be {{"last_as_prefix": true|false}}, got {show(params)}')
    return Predicate(attr, op, freeze(value), freeze(params) if params else FrozenDict(), freeze(f))


def referenced_attributes(f: Any, *, include_ref_new: bool = False) -> set[str]:
    """Attribute names the filter (JSON or tree) reads (``$ref_new`` targets only if asked)."""
    if f is None:
        return set()
    return tree.attributes(parse(f), include_ref_new=include_ref_new)


def ref_new_attributes(f: Any) -> set[str]:
    """Names used as ``{"$ref_new": name}`` in the filter (JSON or tree)."""
    if f is None:
        return set()
    return tree.ref_new_attributes(parse(f))
