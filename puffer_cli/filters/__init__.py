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
Fuzzy                       ``[attr, "Fuzzy", "text", {"max_edit_distance": [{"distance":
                            d, "min_query_chars": n}, ...], "case_sensitive"?: true}]``:
                            the whole value (``[]string``: any element) is within ``d``
                            Levenshtein edits of ``text``, ``d`` from the largest ``n``
                            ``len(text)`` reaches (shorter than every ``n``: no match;
                            ``n >= 3 (d + 1)``, ``d <= 4``).  Needs ``fuzzy: true`` in the
                            schema.  Python per distinct value (like the token operators).
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
* Token operators tokenize both sides with ``puffer_cli.text.analyzer`` under the
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
  Vector attributes cannot be filtered.  ``Regex`` needs the schema's
  ``regex: true`` and ``Fuzzy`` its ``fuzzy: true``; ``glob: false`` refuses
  ``Glob``/``IGlob`` (turbopuffer's attribute config: "whether to enable Regex /
  Glob / Fuzzy filters on this attribute").  The table in docs/http.md "Filters"
  is checked against this module by tests/test_filter_semantics.py.
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

The language (in the style of pyiceberg's expressions: model, parse, bind, visitors;
the engine kept outside): :mod:`puffer_cli.filters.tree` the typed tree (``And``, ``Or``,
``Not``, ``Predicate``; frozen and hashable) and its schema-free visitors (attributes,
``$ref_new`` targets, back to JSON); :mod:`puffer_cli.filters.parse` the operator tables,
limits and structural parse (JSON -> tree); :mod:`puffer_cli.filters.bind` the checks
against a schema (tree -> bound tree); :mod:`puffer_cli.filters.lower` the lowering of a
bound tree to polars; :mod:`puffer_cli.filters.matchers` globs, regexes and the token
operators' matchers.  This module is the public API: :func:`bind_filter` and
:func:`compile_filter` (cached, keyed by the tree), :func:`validate_filter`,
:func:`filter_mask`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import polars as pl

from puffer_cli import caches as _caches
from puffer_cli import limits as _limits
from puffer_cli.filters.bind import Bound
from puffer_cli.filters.bind import bind as _bind
from puffer_cli.filters.lower import lower as _lower
from puffer_cli.filters.parse import parse as _parse
from puffer_cli.filters.tree import Node, attributes, freeze, ref_new_attributes

__all__ = ["bind_filter", "compile_filter", "filter_mask", "validate_filter"]

# --------------------------------------------------------------------------- compile


def _schema_key(node: Node, schema: Mapping[str, Mapping], ref_new_prefix: str | None) -> tuple | None:
    """The part of ``schema`` a bind of ``node`` reads (its attributes' specs), hashable;
    None if the schema is not plain JSON."""
    names = attributes(node) | (ref_new_attributes(node) if ref_new_prefix is not None else set())
    try:
        key = tuple(sorted((a, freeze(schema[a])) for a in names if a in schema))
        hash(key)
    except TypeError:
        return None
    return key


def bind_filter(f: Any, schema: Mapping[str, Mapping], *, ref_new_prefix: str | None = None) -> Bound | None:
    """Parse (unless ``f`` is already a tree) and bind ``f`` against ``schema``, cached;
    None for no filter.  Raises InvalidFilter."""
    if f is None:
        return None
    node = _parse(f)
    skey = _schema_key(node, schema, ref_new_prefix)
    key = None if skey is None or _COMPILED_MAX <= 0 else ("bound", node, ref_new_prefix, skey)
    if key is not None:
        hit = _COMPILED.get(key)
        if hit is not None:
            return hit
    b = _bind(node, schema, ref_new_prefix)
    if key is not None:
        _COMPILED.put(key, b)
    return b


def compile_filter(
    f: Any, schema: Mapping[str, Mapping], *, ref_new_prefix: str | None = None, columns: Collection[str] | None = None
) -> pl.Expr:
    """Compile a turbopuffer filter (JSON or a parsed tree) to a non-null boolean polars
    expression.

    ``schema``: attribute -> spec (``{"type": ..., "full_text_search": ...,
    "filterable": ...}``).  ``columns``: the frame's column names, if known;
    lets the expression use plain ``pl.col`` (better for predicate pushdown).
    Without it a missing column is handled at evaluation time.
    """
    b = bind_filter(f, schema, ref_new_prefix=ref_new_prefix)
    if b is None:
        return pl.lit(True)
    try:
        key: tuple | None = ("expr", b, None if columns is None else frozenset(columns))
        hash(key)
    except TypeError:
        key = None
    if key is not None and _COMPILED_MAX > 0:
        hit = _COMPILED.get(key)
        if hit is not None:
            return hit
    expr = _lower(b, columns)
    if key is not None and _COMPILED_MAX > 0:
        _COMPILED.put(key, expr)
    return expr


# A query uses its filter several times (validation against the schema, then per frame or
# index segment); a 1,000-clause filter takes ~0.2 s to bind and lower, so keep the last
# few bound trees and expressions (both immutable), keyed by the tree.  _COMPILED_MAX = 0
# turns the cache off (tests).
_COMPILED_MAX = 64
_COMPILED = _caches.lru("filters.compiled", _COMPILED_MAX)


def validate_filter(f: Any, schema: Mapping[str, Mapping], *, ref_new_prefix: str | None = None) -> None:
    """Raise InvalidFilter if ``f`` does not bind against ``schema``."""
    bind_filter(f, schema, ref_new_prefix=ref_new_prefix)


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
