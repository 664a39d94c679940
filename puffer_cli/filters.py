"""turbopuffer filters compiled to polars expressions.

``compile_filter(f, schema)`` returns a boolean ``pl.Expr`` that never yields
null (every leaf is ``fill_null(False)``-ed), so ``Not`` is a plain ``~`` and
``df.filter(expr)`` keeps exactly the matching documents.

Forms
-----
``[attr, Op, value]``, ``["And", [f, ...]]`` (empty -> true), ``["Or", [f, ...]]``
(empty -> false), ``["Not", f]``; ``None`` means "no filter" (true).  The token
operators also take an optional 4th element ``{"last_as_prefix": bool}``.

Operators (``x`` = the document's value, ``v`` = the filter value)
-------------------------------------------------------------------
==========================  ===============================================================
Eq / NotEq                  ``x == v``.  ``v = null``: ``x`` is missing / is present.
                            On ``[]T``: scalar ``v`` -> any element equals ``v``; list ``v``
                            -> the whole array equals ``v``.
In / NotIn                  ``v`` a list; ``x`` equals one of them (``null`` in the list
                            matches a missing value).  On ``[]T``: any element is in ``v``.
Lt / Lte / Gt / Gte         ordering on string (code point), uuid (canonical text), int,
                            uint, float, datetime.  Not on bool, arrays or vectors.
Glob / IGlob (+ Not*)       Unix glob anchored at both ends: ``*`` any run, ``?`` one char,
                            ``[abc]`` / ``[a-z]`` / ``[!a]`` (or ``[^a]``) classes, ``\\x``
                            escapes, ``{a,b}`` alternatives.  IGlob ignores case.  On
                            ``[]string``: any element matches.
Regex                       unanchored regex search, Rust ``regex`` syntax (no
                            look-around / backrefs).  On ``[]string``: any element.
Contains / NotContains      ``[]T`` only: some element equals ``v`` (a scalar).
ContainsAny / NotCont.Any   ``[]T`` only: some element is in ``v`` (a list).
AnyLt/AnyLte/AnyGt/AnyGte   ``[]T`` only: some element compares so with ``v``.
ContainsAllTokens           FTS attributes: every token of ``v`` is a token of ``x``.
ContainsAnyToken            FTS attributes: some token of ``v`` is a token of ``x``.
ContainsTokenSequence       FTS attributes: the tokens of ``v`` occur consecutively in
                            ``x`` (after stopword removal, as in the index).
==========================  ===============================================================

Semantics
---------
* Missing/null values: every comparison with a missing value is false, except
  ``Eq null``.  Every ``Not*`` operator (and ``Not``) is the exact negation of
  its positive form, so a missing attribute matches ``NotEq "x"``, ``NotIn`` ...
  An empty array is a value (not missing): it matches no element-wise operator.
* An attribute not in ``schema`` (or, at evaluation time, not a column of the
  frame) is missing everywhere; its literals are not type-checked.
* Literals are type-checked against the attribute type: strings for
  string/uuid (uuids canonicalised to lowercase), numbers (not booleans) for
  int/uint/float, booleans for bool, RFC 3339 strings or integer ms since the
  epoch for datetime (a string without offset is UTC; sub-ms precision is
  compared exactly).  An int attribute compared with ``1.5`` compares exactly
  (``x < 1.5`` == ``x <= 1``; ``x == 1.5`` is false); out-of-range integers
  (``uint < -1``) are handled exactly too.  float attributes compare as
  float64 (integers beyond 2**53 are rounded).  NaN matches nothing.
* Token operators tokenize both sides with ``puffer_cli.text`` under the
  attribute's ``full_text_search`` options (a list value: each element is
  analyzed and the tokens concatenated; for ``pre_tokenized_array`` each element
  is one token).  A value that yields no tokens (e.g. only stopwords) matches
  nothing.  ``last_as_prefix`` lets the last query token match any token it
  prefixes.  Cost: unlike every other operator these run Python per row
  (``map_batches`` over the column + one tantivy ``analyze`` per distinct
  value, a few us each; ~1 s per million short texts).  polars evaluates
  every branch of an ``And``, so on large frames narrow the rows first (or
  use the FTS index to produce candidate ids) before applying token filters.
* ``filterable: false`` attributes can only be used with the token operators.
  Vector attributes cannot be filtered.  ``Regex`` does not require the
  schema's ``regex: true``.
* ``{"$ref_new": "attr"}`` as a value (only with ``ref_new_prefix``, i.e. in
  conditional writes) compares with the new row's value, column
  ``ref_new_prefix + attr``; supported with Eq/NotEq/Lt/Lte/Gt/Gte between
  compatible scalar types (and Eq/NotEq between arrays).  A null new value
  compares false (so ``NotEq`` is true).

Errors: anything malformed raises :class:`puffer_cli.errors.InvalidFilter`
whose message starts with the offending (sub-)filter as compact JSON.

Limits (puffer_cli/limits.py; docs/http.md "Limits: queries"): :func:`check_limits`
walks the raw filter once, iteratively, before anything parses or compiles it:
at most MAX_FILTER_NODES conditions + connectives, MAX_FILTER_DEPTH nested
connectives, MAX_FILTER_LIST_ITEMS values (and MAX_VALUE_DEPTH nesting) per
condition, MAX_PATTERN_CHARS per pattern, MAX_QUERY_TEXT_CHARS per token query.
Compiled form: an Or of Eq (And of NotEq) on one attribute becomes one In
(NotIn); an And/Or of many parts is one all/any_horizontal (a long ``|`` chain
is a deep tree polars plans in quadratic time and, at a few thousand, crashes
on); regexes are compiled by polars' Rust engine (linear time, 10 MiB compiled
size limit: beyond it an InvalidFilter).  :func:`filter_mask` evaluates large
frames in slices under the query's time budget.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import math
import re
import threading
import uuid as _uuid
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from fractions import Fraction
from typing import Any

import numpy as np
import polars as pl

from puffer_cli import limits as _limits
from puffer_cli import text as _text
from puffer_cli.errors import InvalidFilter
from puffer_cli.schema import DATETIME_MS

__all__ = [
    "OPERATORS",
    "check_limits",
    "compile_filter",
    "filter_mask",
    "glob_to_regex",
    "ref_new_attributes",
    "referenced_attributes",
    "validate_filter",
]

_NEG = {
    "NotEq": "Eq",
    "NotIn": "In",
    "NotGlob": "Glob",
    "NotIGlob": "IGlob",
    "NotContains": "Contains",
    "NotContainsAny": "ContainsAny",
}
_CMP = ("Lt", "Lte", "Gt", "Gte")
_ANY_CMP = {"AnyLt": "Lt", "AnyLte": "Lte", "AnyGt": "Gt", "AnyGte": "Gte"}
_TOKEN_OPS = ("ContainsAllTokens", "ContainsAnyToken", "ContainsTokenSequence")
_POSITIVE = ("Eq", "In", *_CMP, "Glob", "IGlob", "Regex", "Contains", "ContainsAny", *_ANY_CMP, *_TOKEN_OPS)
OPERATORS: tuple[str, ...] = _POSITIVE + tuple(_NEG)
CONNECTIVES = ("And", "Or", "Not")

_SCALAR_TYPES = ("string", "int", "uint", "float", "bool", "datetime", "uuid")
_VECTOR_RE = re.compile(r"^\[(\d+)\]f(16|32)$")
_INT_RANGE = {"int": (-(2**63), 2**63 - 1), "uint": (0, 2**64 - 1), "datetime": (-(2**63), 2**63 - 1)}
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


# --------------------------------------------------------------------------- helpers


def _show(v: Any, limit: int = 200) -> str:
    try:
        s = json.dumps(v, separators=(",", ":"), ensure_ascii=False, default=repr)
    except (TypeError, ValueError):  # pragma: no cover - default=repr handles most
        s = repr(v)
    except RecursionError:  # a value nested too deep to print (check_limits refuses it first)
        s = "[...]" if isinstance(v, (list, tuple)) else "{...}" if isinstance(v, Mapping) else "..."
    return s if len(s) <= limit else s[: limit - 3] + "..."


class _Ctx:
    """Where we are, for error messages."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any):
        self.raw = raw

    def fail(self, msg: str) -> InvalidFilter:
        return InvalidFilter(f"filter {_show(self.raw)}: {msg}")


def _polars_dtype(t: str) -> pl.DataType:
    if t in ("string", "uuid"):
        return pl.String()
    if t == "int":
        return pl.Int64()
    if t == "uint":
        return pl.UInt64()
    if t == "float":
        return pl.Float64()
    if t == "bool":
        return pl.Boolean()
    if t == "datetime":
        return pl.Datetime("ms", "UTC")
    if t.startswith("[]") and t[2:] in _SCALAR_TYPES:
        return pl.List(_polars_dtype(t[2:]))
    m = _VECTOR_RE.match(t)
    if m:
        return pl.Array(pl.Float32, int(m.group(1)))
    raise InvalidFilter(f"unknown attribute type {t!r} in schema")


def _canon_dtype(t: str) -> pl.DataType:
    """dtype after _canon(): datetimes become Int64 ms."""
    if t == "datetime":
        return pl.Int64()
    if t == "[]datetime":
        return pl.List(pl.Int64)
    return _polars_dtype(t)


_RUST_META = set("\\.+*?()|[]{}^$#&-~")


def _rust_escape(s: str) -> str:
    return "".join("\\" + c if c in _RUST_META else c for c in s)


class _Cols:
    """How to reference a column whose presence in the frame is unknown."""

    def __init__(self, columns: Collection[str] | None):
        self.columns = None if columns is None else set(columns)

    def get(self, name: str, t: str) -> pl.Expr:
        dtype = _polars_dtype(t)
        if self.columns is not None:
            if name in self.columns:
                return pl.col(name)
            return pl.lit(None, dtype=dtype)
        # present -> the column; absent -> a typed null (regex selection of zero columns)
        return pl.coalesce(pl.col("^" + _rust_escape(name) + "$"), pl.lit(None, dtype=dtype))


def _canon(x: pl.Expr, t: str) -> pl.Expr:
    # datetimes compare as Int64 ms since the epoch (whatever unit the column has)
    if t == "datetime":
        return x.cast(pl.Datetime("ms", "UTC")).cast(pl.Int64)
    if t == "[]datetime":
        return x.cast(pl.List(pl.Datetime("ms", "UTC"))).cast(pl.List(pl.Int64))
    return x


# --------------------------------------------------------------------------- parsing


def _is_connective(f: list | tuple) -> bool:
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
        if isinstance(g, (list, tuple)) and g and _is_connective(g) and len(g) == 2:
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
            pos = _NEG.get(g[1], g[1])
            v = g[2]
            if pos in ("Glob", "IGlob", "Regex") and isinstance(v, str) and len(v) > _limits.MAX_PATTERN_CHARS:
                raise _too_big(
                    "pattern too long",
                    f"{g[1]} pattern of {len(v):,} characters",
                    _limits.MAX_PATTERN_CHARS,
                    "MAX_PATTERN_CHARS",
                    "use a shorter pattern",
                )
            if pos in _TOKEN_OPS and isinstance(v, (str, list, tuple)):
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


def _parse(f: Any):
    """check_limits, then structural validation -> nested tuples (see _parse_node)."""
    check_limits(f)
    return _parse_node(f)


def _parse_node(f: Any):
    """Structural validation -> nested tuples.

    ("and"|"or", [nodes]) | ("not", node) | ("leaf", attr, op, value, params, raw)
    """
    ctx = _Ctx(f)
    if not isinstance(f, (list, tuple)):
        raise ctx.fail('expected a list like [attr, op, value], ["And", [...]], ["Or", [...]] or ["Not", filter]')
    if len(f) == 0:
        raise ctx.fail("empty filter")
    head = f[0]
    connective = _is_connective(f)
    if connective and head in ("And", "Or"):
        if len(f) != 2:
            raise ctx.fail(f'{head} takes exactly one list of filters: ["{head}", [f, ...]]')
        subs = f[1]
        if not isinstance(subs, (list, tuple)):
            raise ctx.fail(f"{head} needs a list of filters, got {_show(subs)}")
        return (head.lower(), [_parse_node(s) for s in subs])
    if connective and head == "Not":
        if len(f) != 2:
            raise ctx.fail('Not takes exactly one filter: ["Not", filter]')
        return ("not", _parse_node(f[1]))
    if len(f) not in (3, 4):
        if len(f) == 2 and isinstance(f[1], str) and f[1] in OPERATORS:
            raise ctx.fail(f'{f[1]} needs a value: [attr, "{f[1]}", value]')
        raise ctx.fail(f"expected [attr, op, value], got {len(f)} element(s)")
    attr, op, value = f[0], f[1], f[2]
    if not isinstance(attr, str) or not attr:
        raise ctx.fail(f"attribute name must be a non-empty string, got {_show(attr)}")
    if not isinstance(op, str):
        raise ctx.fail(f"operator must be a string, got {_show(op)}")
    if op not in OPERATORS:
        if op in CONNECTIVES:
            raise ctx.fail(f'{op} must be the first element: ["{op}", ...]')
        known = {k.lower(): k for k in OPERATORS + CONNECTIVES}
        close = difflib.get_close_matches(op.lower(), list(known), n=1, cutoff=0.5)
        hint = f' (did you mean "{known[close[0]]}"?)' if close else ""
        raise ctx.fail(f"unknown operator {_show(op)}{hint}")
    params: dict = {}
    if len(f) == 4:
        if op not in ("ContainsAllTokens", "ContainsAnyToken"):
            raise ctx.fail(f"expected [attr, op, value], got 4 elements ({op} takes no options)")
        params = f[3]
        if (
            not isinstance(params, Mapping)
            or set(params) - {"last_as_prefix"}
            or not isinstance(params.get("last_as_prefix", False), bool)
        ):
            raise ctx.fail(f'{op} options must be {{"last_as_prefix": true|false}}, got {_show(params)}')
    return ("leaf", attr, op, value, dict(params), f)


def _walk_leaves(node) -> Iterable[tuple]:
    kind = node[0]
    if kind == "leaf":
        yield node
    elif kind == "not":
        yield from _walk_leaves(node[1])
    else:
        for n in node[1]:
            yield from _walk_leaves(n)


def _ref_name(value: Any) -> str | None:
    if isinstance(value, Mapping) and set(value) == {"$ref_new"} and isinstance(value["$ref_new"], str):
        return value["$ref_new"]
    return None


def referenced_attributes(f: Any, *, include_ref_new: bool = False) -> set[str]:
    """Attribute names the filter reads (``$ref_new`` targets only if asked)."""
    if f is None:
        return set()
    out: set[str] = set()
    for leaf in _walk_leaves(_parse(f)):
        out.add(leaf[1])
        if include_ref_new:
            r = _ref_name(leaf[3])
            if r is not None:
                out.add(r)
    return out


def ref_new_attributes(f: Any) -> set[str]:
    """Names used as ``{"$ref_new": name}`` in the filter."""
    if f is None:
        return set()
    return {r for leaf in _walk_leaves(_parse(f)) if (r := _ref_name(leaf[3])) is not None}


# --------------------------------------------------------------------------- compile


def compile_filter(
    f: Any, schema: Mapping[str, Mapping], *, ref_new_prefix: str | None = None, columns: Collection[str] | None = None
) -> pl.Expr:
    """Compile a turbopuffer filter to a non-null boolean polars expression.

    ``schema``: attribute -> spec (``{"type": ..., "full_text_search": ...,
    "filterable": ...}``).  ``columns``: the frame's column names, if known;
    lets the expression use plain ``pl.col`` (better for predicate pushdown).
    Without it a missing column is handled at evaluation time.
    """
    if f is None:
        return pl.lit(True)
    check_limits(f)
    try:
        key = json.dumps([f, schema, ref_new_prefix, None if columns is None else sorted(columns)], sort_keys=True)
    except (TypeError, ValueError):  # not plain JSON (in-process callers): not cached
        key = None
    if key is not None and len(key) > _COMPILED_MAX_KEY:
        key = None  # huge value lists: cheap to compile again relative to their size, costly to keep
    with _COMPILED_LOCK:
        hit = _COMPILED.get(key) if key is not None else None
        if hit is not None and key is not None:
            _COMPILED.move_to_end(key)
            return hit
    tree = _parse_node(f)
    c = _Compiler(schema, ref_new_prefix, _Cols(columns))
    expr = c.node(tree)
    if key is not None:
        with _COMPILED_LOCK:
            _COMPILED[key] = expr
            while len(_COMPILED) > _COMPILED_MAX:
                _COMPILED.popitem(last=False)
    return expr


# A query compiles its filter several times (validation against the schema, then per
# frame or index segment); a 1,000-clause filter takes ~0.2 s to compile, so keep the
# last few expressions (polars expressions are immutable).
_COMPILED: OrderedDict[str, pl.Expr] = OrderedDict()
_COMPILED_LOCK = threading.Lock()
_COMPILED_MAX = 64
_COMPILED_MAX_KEY = 1 << 20


def validate_filter(f: Any, schema: Mapping[str, Mapping], *, ref_new_prefix: str | None = None) -> None:
    """Raise InvalidFilter if ``f`` does not compile against ``schema``."""
    compile_filter(f, schema, ref_new_prefix=ref_new_prefix)


#: an And/Or of more parts than this is one all_horizontal / any_horizontal
_CHAIN_MAX = 4
#: an Or of at least this many Eq (And of NotEq) on one attribute is one In (NotIn)
_FUSE_MIN = 2


def _fusable(v: Any) -> bool:
    """A value whose ``Eq`` is exactly ``In [v]`` (scalars; not null, which In treats
    per array, nor ints beyond float range, which Eq on a float rounds to infinity)."""
    if isinstance(v, bool) or isinstance(v, (str, float)):
        return True
    return isinstance(v, int) and abs(v) < 2**1023


def filter_mask(frame: pl.DataFrame, expr: pl.Expr) -> np.ndarray:
    """``frame.select(expr)`` as a bool numpy mask of ``frame.height`` rows.

    Large frames are evaluated in slices of about FILTER_SLICE_BYTES (times the number of
    column references in the filter) with
    ``limits.check_deadline()`` between them: one polars call cannot be
    interrupted, so this bounds how long any single one runs (a regex near the
    compiled-size limit costs ~0.5 us per byte of text)."""
    n = frame.height
    if n == 0:
        return np.zeros(0, dtype=bool)
    per_row = max(1, int(frame.estimated_size()) // n)
    # each condition reads its column once: a 1,000-condition filter does 1,000x the work per row
    per_row *= max(1, len(expr.meta.root_names()))
    step = max(FILTER_SLICE_MIN_ROWS, FILTER_SLICE_BYTES // per_row)
    out = []
    for start in range(0, n, step):
        _limits.check_deadline()
        part = frame.slice(start, step)
        m = part.select(expr.fill_null(False).alias("m")).to_series().to_numpy()
        if len(m) != part.height:  # a constant filter (e.g. ["And", []]) selects one literal row
            m = np.full(part.height, bool(m[0]) if len(m) else False)
        out.append(m.astype(bool, copy=False))
    return out[0] if len(out) == 1 else np.concatenate(out)


FILTER_SLICE_BYTES = 8 << 20  # rows of about this many bytes per polars call (see filter_mask)
FILTER_SLICE_MIN_ROWS = 256  # (a costly filter over wide rows still stops between slices)


_FALSE = False  # constant "no row matches"
_NONNULL = True  # constant "every row with a (non-null) value matches"


class _Compiler:
    def __init__(self, schema: Mapping[str, Mapping], prefix: str | None, cols: _Cols):
        self.schema = schema
        self.prefix = prefix
        self.cols = cols

    def node(self, n) -> pl.Expr:
        kind = n[0]
        if kind == "leaf":
            return self.leaf(*n[1:])
        if kind == "not":
            return ~self.node(n[1])
        parts = self.fused(kind, n[1])
        if not parts:
            return pl.lit(kind == "and")
        if len(parts) > _CHAIN_MAX:
            # flat: a long a | b | c ... chain is a deep tree that polars plans in
            # quadratic time (and, deep enough, overflows its stack)
            return pl.all_horizontal(parts) if kind == "and" else pl.any_horizontal(parts)
        out = parts[0]
        for p in parts[1:]:
            out = (out & p) if kind == "and" else (out | p)
        return out

    def fused(self, kind: str, subs: list) -> list[pl.Expr]:
        """The children of an And/Or, with an Or of ``[a, "Eq", v]`` (an And of
        ``[a, "NotEq", v]``) over one attribute compiled as one ``[a, "In", [v, ...]]``
        (``Not In``): same result, one hash lookup per row instead of one comparison
        per clause.  Every clause is still compiled on its own first, so a bad one
        raises exactly the error it would alone."""
        want = "Eq" if kind == "or" else "NotEq"
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(subs):
            if s[0] == "leaf" and s[2] == want and _fusable(s[3]):
                groups.setdefault(s[1], []).append(i)
        fuse = {i: attr for attr, idx in groups.items() if len(idx) >= _FUSE_MIN for i in idx}
        parts: list[pl.Expr | str] = []
        for i, s in enumerate(subs):
            e = self.node(s)  # validates (and is the answer when not fused)
            attr = fuse.get(i)
            if attr is None:
                parts.append(e)
            elif groups[attr][0] == i:
                parts.append(attr)  # the group's place, filled in once every clause is valid
        for k, p in enumerate(parts):
            if isinstance(p, str):
                values = [subs[j][3] for j in groups[p]]
                fused_op = "In" if want == "Eq" else "NotIn"
                parts[k] = self.leaf(p, fused_op, values, {}, [p, fused_op, values])
        return parts  # type: ignore[return-value]

    # -- one condition ----------------------------------------------------------
    def leaf(self, attr: str, op: str, value: Any, params: dict, raw: Any) -> pl.Expr:
        ctx = _Ctx(raw)
        pos = _NEG.get(op, op)
        e = self.positive(attr, op, pos, value, params, ctx)
        return ~e if op in _NEG else e

    def positive(self, attr, op, pos, value, params, ctx) -> pl.Expr:
        ref = None
        if isinstance(value, Mapping):
            ref = _ref_name(value)
            if ref is None:
                raise ctx.fail(
                    f'unsupported value object {_show(value)} (the only object value is {{"$ref_new": attr}})'
                )
            if self.prefix is None:
                raise ctx.fail(
                    "$ref_new is only allowed in conditional writes "
                    "(upsert_condition / patch_condition / delete_condition)"
                )
        spec = self.schema.get(attr)
        if spec is not None and not isinstance(spec, Mapping):
            raise ctx.fail(f"schema entry for attribute {_show(attr)} is not an object")
        t = spec.get("type") if spec is not None else None
        if spec is not None and not isinstance(t, str):
            raise ctx.fail(f"schema entry for attribute {_show(attr)} has no type")

        self.check_shape(attr, op, pos, value, ref, ctx)

        if pos in _TOKEN_OPS:
            return self.token_op(attr, spec, pos, value, params, ctx)

        if spec is None:
            # Unknown attribute: missing everywhere.
            if pos == "Eq":
                return pl.lit(value is None)
            return pl.lit(pos in ("In", "ContainsAny") and any(v is None for v in value))
        assert isinstance(t, str)  # checked above: a schema entry has a str type

        if _VECTOR_RE.match(t):
            if pos == "Eq" and value is None:
                return self.cols.get(attr, t).is_null()
            raise ctx.fail(
                f"attribute {_show(attr)} is a vector ({t}); vectors cannot be filtered (only Eq/NotEq null)"
            )
        is_array = t.startswith("[]")
        et = t[2:] if is_array else t
        if et not in _SCALAR_TYPES:
            raise ctx.fail(f"attribute {_show(attr)} has unknown type {_show(t)}")
        if attr != "id" and spec.get("filterable") is False:
            raise ctx.fail(
                f"attribute {_show(attr)} is not filterable (schema has "
                "filterable: false); only the token operators apply to it"
            )

        col = self.cols.get(attr, t)
        if pos == "Eq" and value is None:
            return col.is_null()

        if ref is not None:
            return self.ref_op(attr, t, col, op, pos, ref, ctx)

        x = _canon(col, t)
        desc = f"attribute {_show(attr)} (type {t})"
        if is_array:
            if pos in _CMP:
                raise ctx.fail(f"{op} on {desc} is not supported for arrays; use Any{op}")
            if pos == "Eq" and isinstance(value, (list, tuple)):
                return self.array_equals(x, et, value, op, desc, ctx)
            array_null = False
            if pos in ("Eq", "Contains"):
                epos, evalue = "Eq", value
            elif pos in ("In", "ContainsAny"):
                # a null member matches a missing array, not a null element
                epos, evalue = "In", [v for v in value if v is not None]
                array_null = len(evalue) != len(value)
            elif pos in _ANY_CMP:
                epos, evalue = _ANY_CMP[pos], value
            else:  # Glob, IGlob, Regex
                epos, evalue = pos, value
            pred = self.scalar_pred(pl.element(), et, epos, evalue, op, desc, ctx)
            if pred is _FALSE:
                out = pl.lit(False)
            else:
                if pred is _NONNULL:
                    pred = pl.element().is_not_null()
                out = x.list.eval(pred).list.any().fill_null(False)
            return (out | col.is_null()) if array_null else out

        if pos in ("Contains", "ContainsAny") or pos in _ANY_CMP:
            raise ctx.fail(
                f"{op} needs an array attribute; {desc} is a scalar"
                + (
                    " (use Eq)"
                    if pos == "Contains"
                    else " (use In)"
                    if pos == "ContainsAny"
                    else f" (use {_ANY_CMP[pos]})"
                )
            )
        pred = self.scalar_pred(x, et, pos, value, op, desc, ctx)
        if pred is _FALSE:
            return pl.lit(False)
        if pred is _NONNULL:
            return x.is_not_null()
        return pred.fill_null(False)

    # -- shape checks independent of the schema ---------------------------------
    def check_shape(self, attr, op, pos, value, ref, ctx) -> None:
        if ref is not None:
            if pos not in ("Eq", *_CMP):
                raise ctx.fail(f'{op} does not take {{"$ref_new": ...}} (only Eq, NotEq, Lt, Lte, Gt, Gte do)')
            return
        if pos in ("In", "ContainsAny"):
            if not isinstance(value, (list, tuple)):
                raise ctx.fail(f"{op} needs a list of values, got {_show(value)}")
        elif pos in _TOKEN_OPS:
            if isinstance(value, str):
                return
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return
            raise ctx.fail(f"{op} needs a string or a list of strings, got {_show(value)}")
        elif pos in ("Glob", "IGlob", "Regex"):
            if not isinstance(value, str):
                raise ctx.fail(f"{op} needs a pattern string, got {_show(value)}")
        elif pos != "Eq" and value is None:
            raise ctx.fail(f"{op} needs a value, got null (only Eq/NotEq/In accept null)")
        elif pos != "Eq" and isinstance(value, (list, tuple)):
            raise ctx.fail(
                f"{op} needs a single value, got a list {_show(value)}"
                + (" (use In)" if pos in _CMP else " (use ContainsAny)" if pos == "Contains" else "")
            )

    # -- literals ----------------------------------------------------------------
    def literal(self, et: str, v: Any, op: str, desc: str, ctx: _Ctx) -> Any:
        """Check and convert one literal for element type ``et``.

        Returns str (string/uuid), bool, int/float/Fraction (numbers; datetimes
        in ms), or math.nan (matches nothing).
        """
        if et == "string":
            if isinstance(v, str):
                return v
            raise ctx.fail(f"{op} on {desc} needs a string, got {_show(v)}")
        if et == "uuid":
            if isinstance(v, str):
                try:
                    return str(_uuid.UUID(v))
                except ValueError:
                    pass
            raise ctx.fail(f"{op} on {desc} needs a UUID string, got {_show(v)}")
        if et == "bool":
            if isinstance(v, bool):
                return v
            raise ctx.fail(f"{op} on {desc} needs true or false, got {_show(v)}")
        if et in ("int", "uint", "float"):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ctx.fail(f"{op} on {desc} needs a number, got {_show(v)}")
            return v
        if et == "datetime":
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ctx.fail(f"{op} on {desc} needs an RFC 3339 string or integer ms since the epoch, got {_show(v)}")
            ms = v if isinstance(v, int) else _parse_datetime_ms(v)
            if ms is None:
                raise ctx.fail(f"{op} on {desc}: {_show(v)} is not an RFC 3339 datetime")
            lo, hi = DATETIME_MS
            if not lo <= ms <= hi:  # the values a write accepts: a likely unit mistake (ns, us)
                raise ctx.fail(
                    f"{op} on {desc}: {_show(v)} is out of the datetime range (years 1 to 9999: "
                    f"{lo} to {hi} ms since the epoch)"
                )
            return ms
        raise ctx.fail(f"{op} on {desc} is not supported")  # pragma: no cover

    def scalar_pred(self, x: pl.Expr, et: str, pos: str, value: Any, op: str, desc: str, ctx: _Ctx):
        """Predicate on scalar expression ``x`` (already canonical): an Expr
        (may yield null), or _FALSE / _NONNULL constants."""
        if pos in ("Glob", "IGlob", "Regex"):
            if et != "string":
                raise ctx.fail(f"{op} on {desc} needs a string attribute")
            if pos == "Regex":
                pattern = value
            else:
                try:
                    pattern = glob_to_regex(value, case_insensitive=(pos == "IGlob"))
                except ValueError as e:
                    raise ctx.fail(f"invalid glob pattern {_show(value)}: {e}") from None
            _check_regex(pattern, value, op, ctx)
            return x.str.contains(pattern)
        if pos == "In":
            return self.in_pred(x, et, value, op, desc, ctx)
        if pos == "Eq" or pos in _CMP:
            if et == "bool" and pos in _CMP:
                raise ctx.fail(f"{op} on {desc}: booleans have no order (use Eq)")
            lit = self.literal(et, value, op, desc, ctx)
            return _cmp(x, et, pos, lit)
        raise ctx.fail(f"{op} is not supported on {desc}")  # pragma: no cover

    def in_pred(self, x, et, values, op, desc, ctx):
        want_null = False
        keep: list = []
        for v in values:
            if v is None:
                want_null = True
                continue
            if isinstance(v, (list, tuple, Mapping)):
                raise ctx.fail(f"{op} on {desc} needs a list of scalar values, got {_show(v)}")
            lit = self.literal(et, v, op, desc, ctx)
            exact = _exact_member(et, lit)
            if exact is not None:
                keep.append(exact)
        if keep:
            series = pl.Series(keep, dtype=_canon_dtype(et))
            e = x.is_in(pl.lit(series).implode())
            if want_null:
                e = e.fill_null(False) | x.is_null()
            return e
        if want_null:
            return x.is_null()
        return _FALSE

    def array_equals(self, x, et, values, op, desc, ctx):
        exact_vals = []
        for v in values:
            if v is None or isinstance(v, (list, tuple, Mapping)):
                raise ctx.fail(f"{op} on {desc} needs a scalar or a list of scalars, got element {_show(v)}")
            lit = self.literal(et, v, op, desc, ctx)
            ex = _exact_member(et, lit)
            if ex is None:
                return pl.lit(False)
            exact_vals.append(ex)
        dtype = pl.List(_canon_dtype(et))
        target = pl.lit(pl.Series([exact_vals], dtype=dtype))
        return (x == target.first()).fill_null(False)

    # -- $ref_new ----------------------------------------------------------------
    def ref_op(self, attr, t, col, op, pos, ref, ctx):
        rspec = self.schema.get(ref)
        if rspec is None:
            return pl.lit(False)  # the new row cannot have it: null compares false
        rt = rspec.get("type") if isinstance(rspec, Mapping) else None
        if not isinstance(rt, str):
            raise ctx.fail(f"schema entry for attribute {_show(ref)} has no type")
        fam = _family(t)
        if fam is None or fam != _family(rt) or (t.startswith("[]") != rt.startswith("[]")):
            raise ctx.fail(f"cannot compare attribute {_show(attr)} (type {t}) with $ref_new {_show(ref)} (type {rt})")
        if t.startswith("[]") and pos != "Eq":
            raise ctx.fail(f"{op} with $ref_new on array attribute {_show(attr)}: only Eq/NotEq")
        if fam == "bool" and pos != "Eq":
            raise ctx.fail(f"{op} on attribute {_show(attr)} (type {t}): booleans have no order")
        y = _canon(self.cols.get(self.prefix + ref, rt), rt)
        x = _canon(col, t)
        e = {"Eq": x == y, "Lt": x < y, "Lte": x <= y, "Gt": x > y, "Gte": x >= y}[pos]
        return e.fill_null(False)

    # -- token operators ---------------------------------------------------------
    def token_op(self, attr, spec, pos, value, params, ctx):
        if spec is None:
            return pl.lit(False)
        t = spec["type"]
        fts = spec.get("full_text_search")
        if not fts:
            raise ctx.fail(
                f"{pos} needs full-text search on attribute {_show(attr)} "
                f'(type {t}); declare it with "full_text_search": true'
            )
        if t not in ("string", "[]string"):
            raise ctx.fail(f"{pos} needs a string attribute; {_show(attr)} is {t}")
        opts = _text.normalize_fts_options(fts)
        query = _text.tokenize(list(value) if not isinstance(value, str) else value, opts)
        if not query:
            return pl.lit(False)
        prefix_last = bool(params.get("last_as_prefix"))
        fn = _token_matcher(pos, query, prefix_last, opts)
        col = self.cols.get(attr, t)
        return col.map_batches(fn, return_dtype=pl.Boolean, is_elementwise=True).fill_null(False)


# --------------------------------------------------------------------------- primitives


def _family(t: str) -> str | None:
    et = t.removeprefix("[]")
    if et in ("int", "uint", "float"):
        return "num"
    if et in ("string", "uuid"):
        return "str"
    if et in ("bool", "datetime"):
        return et
    return None


def _parse_datetime_ms(s: str) -> Fraction | int | None:
    txt = s.strip()
    if not txt or len(txt) > 64 or not re.match(r"^[0-9+-]", txt):
        return None
    if txt[-1] in "zZ":
        txt = txt[:-1] + "+00:00"
    if len(txt) > 10 and txt[10] in "t ":
        txt = txt[:10] + "T" + txt[11:]
    # fromisoformat takes at most 6 fractional digits; keep any extra precision ourselves
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)$", txt)
    frac = Fraction(0)
    if m:
        digits = m.group(2)
        frac = Fraction(int(digits), 10 ** len(digits))
        txt = m.group(1) + m.group(3)
    try:
        d = _dt.datetime.fromisoformat(txt)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.UTC)
    delta = d - _EPOCH
    secs = Fraction(delta.days * 86400 + delta.seconds) + Fraction(delta.microseconds, 10**6) + frac
    ms = secs * 1000
    return int(ms) if ms.denominator == 1 else ms


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _exact_member(et: str, lit: Any) -> Any:
    """The value a column element must equal to be Eq ``lit``; None if impossible."""
    if _is_nan(lit):
        return None
    if et in _INT_RANGE:
        if isinstance(lit, float) and math.isinf(lit):
            return None
        if isinstance(lit, (float, Fraction)):
            if lit != math.floor(lit):
                return None
            lit = int(lit)
        lo, hi = _INT_RANGE[et]
        return lit if lo <= lit <= hi else None
    if et == "float":
        try:
            return float(lit)
        except OverflowError:
            return None
    return lit


def _cmp(x: pl.Expr, et: str, pos: str, lit: Any):
    if _is_nan(lit):
        return _FALSE
    if et in _INT_RANGE:
        return _int_cmp(x, et, pos, lit)
    if et == "float":
        try:
            v = float(lit)
        except OverflowError:
            v = math.inf if lit > 0 else -math.inf
        lit_e = pl.lit(v, dtype=pl.Float64)
    elif et == "bool":
        lit_e = pl.lit(lit, dtype=pl.Boolean)
    else:
        lit_e = pl.lit(lit, dtype=pl.String)
    return {"Eq": x == lit_e, "Lt": x < lit_e, "Lte": x <= lit_e, "Gt": x > lit_e, "Gte": x >= lit_e}[pos]


def _int_cmp(x: pl.Expr, et: str, pos: str, v: Any):
    lo, hi = _INT_RANGE[et]
    dtype = _canon_dtype(et)
    if isinstance(v, float) and math.isinf(v):
        if pos in ("Lt", "Lte"):
            return _NONNULL if v > 0 else _FALSE
        if pos in ("Gt", "Gte"):
            return _NONNULL if v < 0 else _FALSE
        return _FALSE
    if pos == "Eq":
        k = _exact_member(et, v)
        return _FALSE if k is None else x == pl.lit(k, dtype=dtype)
    if pos == "Lt":
        k, le = math.ceil(v) - 1, True
    elif pos == "Lte":
        k, le = math.floor(v), True
    elif pos == "Gt":
        k, le = math.floor(v) + 1, False
    else:
        k, le = math.ceil(v), False
    if le:
        if k < lo:
            return _FALSE
        if k >= hi:
            return _NONNULL
        return x <= pl.lit(k, dtype=dtype)
    if k > hi:
        return _FALSE
    if k <= lo:
        return _NONNULL
    return x >= pl.lit(k, dtype=dtype)


_REGEX_OK: dict[str, str | None] = {}


def _check_regex(pattern: str, shown: str, op: str, ctx: _Ctx) -> None:
    """Compile ``pattern`` with polars' (Rust) regex engine; InvalidFilter if bad."""
    err = _REGEX_OK.get(pattern, "")
    if err == "":
        try:
            pl.select(pl.lit("", dtype=pl.String).str.contains(pattern))
            err = None
        except pl.exceptions.PolarsError as e:  # ComputeError: "regex error: ..."
            msg = str(e).split("\n\nThis error occurred")[0].strip()
            err = " ".join(msg.split())[:300]
        if len(_REGEX_OK) < 4096:
            _REGEX_OK[pattern] = err
    if err is not None:
        what = "regex" if op == "Regex" else "glob pattern"
        raise ctx.fail(f"invalid {what} {_show(shown)}: {err}")


def glob_to_regex(pattern: str, *, case_insensitive: bool = False) -> str:
    """Translate a Unix glob to an anchored Rust regex (``(?s)^...$``).

    ``*`` any run (also ``/``), ``?`` one char, ``[...]`` classes (``!`` or ``^``
    negates, a leading ``]`` is literal, ``a-z`` ranges), ``\\x`` literal ``x``,
    ``{a,b,...}`` alternatives (no nesting).  Raises ValueError when malformed.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    in_brace = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise ValueError("trailing backslash")
            out.append(_rust_escape(pattern[i + 1]))
            i += 2
        elif c == "*":
            out.append(".*")
            i += 1
        elif c == "?":
            out.append(".")
            i += 1
        elif c == "[":
            j = i + 1
            neg = False
            if j < n and pattern[j] in "!^":
                neg = True
                j += 1
            items: list[str] = []
            first = True
            while True:
                if j >= n:
                    raise ValueError("unclosed character class '['")
                ch = pattern[j]
                if ch == "]" and not first:
                    break
                first = False
                if ch == "\\" and j + 1 < n:
                    ch = pattern[j + 1]
                    j += 1
                j += 1
                if j + 1 < n and pattern[j] == "-" and pattern[j + 1] != "]":
                    hi = pattern[j + 1]
                    if hi == "\\" and j + 2 < n:
                        hi = pattern[j + 2]
                        j += 1
                    j += 2
                    if hi < ch:
                        raise ValueError(f"invalid range {ch}-{hi}")
                    items.append(_rust_escape(ch) + "-" + _rust_escape(hi))
                else:
                    items.append(_rust_escape(ch))
            out.append("[" + ("^" if neg else "") + "".join(items) + "]")
            i = j + 1
        elif c == "{" and not in_brace:
            in_brace = True
            out.append("(?:")
            i += 1
        elif c == "," and in_brace:
            out.append("|")
            i += 1
        elif c == "}" and in_brace:
            in_brace = False
            out.append(")")
            i += 1
        else:
            out.append(_rust_escape(c))
            i += 1
    if in_brace:
        raise ValueError("unclosed '{'")
    flags = "(?si)" if case_insensitive else "(?s)"
    return flags + "^" + "".join(out) + "$"


def _row_matcher(pos: str, query: list[str], prefix_last: bool):
    """Exact per-row predicate on a token list (the slow, obviously-correct path)."""
    head = set(query[:-1]) if prefix_last else set(query)
    last = query[-1]
    qlen = len(query)

    if pos == "ContainsAllTokens":

        def match(toks: list[str]) -> bool:
            s = set(toks)
            return head <= s and (not prefix_last or any(t.startswith(last) for t in s))
    elif pos == "ContainsAnyToken":

        def match(toks: list[str]) -> bool:
            s = set(toks)
            return not head.isdisjoint(s) or (prefix_last and any(t.startswith(last) for t in s))
    else:
        first = query[0]

        def match(toks: list[str]) -> bool:
            for i in range(len(toks) - qlen + 1):
                if toks[i] == first and toks[i : i + qlen] == query:
                    return True
            return False

    return match


def _slow_token_match(s: pl.Series, match, opts: dict) -> pl.Series:
    values = s.to_list()
    toks = _text.tokenize_many(values, opts)
    return pl.Series(s.name, [None if v is None else match(t) for v, t in zip(values, toks)], dtype=pl.Boolean)


def _any_chunk_in(chunks: pl.Series, good: list[str]) -> pl.Series:
    if not good:
        return pl.Series(chunks.name, [False] * len(chunks), dtype=pl.Boolean)
    g = pl.lit(pl.Series(good, dtype=pl.String)).implode()
    return chunks.list.eval(pl.element().is_in(g)).list.any().fill_null(False)


#: below this many rows per batch the plain per-row path is cheaper
_FAST_TOKEN_MIN_ROWS = 256


def _token_matcher(pos: str, query: list[str], prefix_last: bool, opts: dict):
    """The batch function for a token operator.

    Fast path: split values into whitespace-separated chunks (no tokenizer
    match ever crosses whitespace, and every filter is token-local, so a
    value's tokens are the concatenation of its chunks' tokens), analyze each
    *distinct* chunk once, then test rows with vectorised ``is_in`` over the
    chunks.  ContainsTokenSequence uses that as a prefilter and checks the
    order exactly (per row, in Python) on the candidate rows only.
    """
    match = _row_matcher(pos, query, prefix_last)
    pre = opts["tokenizer"] == "pre_tokenized_array"
    last = query[-1]
    all_q = sorted(set(query[:-1] if prefix_last and pos != "ContainsTokenSequence" else query))

    def fn(s: pl.Series) -> pl.Series:
        if len(s) == 0 or s.null_count() == len(s):
            return pl.Series(s.name, [None] * len(s), dtype=pl.Boolean)
        if len(s) < _FAST_TOKEN_MIN_ROWS:
            return _slow_token_match(s, match, opts)
        if s.dtype == pl.String:
            if pre:
                return _slow_token_match(s, match, opts)
            chunks = s.str.extract_all(r"\S+")
        elif s.dtype == pl.List(pl.String):
            chunks = s if pre else s.list.eval(pl.element().str.extract_all(r"\S+").explode())
        else:  # pragma: no cover - schema says string / []string
            return _slow_token_match(s, match, opts)
        vocab = chunks.explode().drop_nulls().unique().to_list()
        analyze = _text.analyzer(opts).analyze
        toks = {c: analyze(c) for c in vocab}

        def good(pred) -> list[str]:
            return [c for c, ts in toks.items() if pred(ts)]

        out: pl.Series | None
        if pos == "ContainsAnyToken":
            qs = set(all_q)
            out = _any_chunk_in(
                chunks, good(lambda ts: not qs.isdisjoint(ts) or (prefix_last and any(t.startswith(last) for t in ts)))
            )
        else:
            out = None
            for q in all_q:
                m = _any_chunk_in(chunks, good(lambda ts, q=q: q in ts))
                out = m if out is None else (out & m)
            if prefix_last and pos == "ContainsAllTokens":
                m = _any_chunk_in(chunks, good(lambda ts: any(t.startswith(last) for t in ts)))
                out = m if out is None else (out & m)
            assert out is not None
            if pos == "ContainsTokenSequence" and len(query) > 1 and out.any():
                idx = out.arg_true()
                exact = _slow_token_match(s.gather(idx), match, opts).fill_null(False)
                out = out.scatter(idx, exact)
        assert out is not None
        return out.fill_null(False).alias(s.name)

    return fn
