"""Lowering: a bound filter tree (:mod:`puffer_cli.filters.bind`) -> one non-null boolean
polars expression (the rules: :mod:`puffer_cli.filters`).  No checks happen here: every
error was raised by the bind.

An Or of Eq (And of NotEq) on one attribute becomes one In (NotIn); an And/Or of many
parts is one all/any_horizontal.
"""

from __future__ import annotations

from collections.abc import Collection

import polars as pl

from puffer_cli.errors import InvalidFilter
from puffer_cli.filters.bind import (
    ArrayEq,
    Bound,
    Cmp,
    Const,
    FuzzyMatch,
    IsNull,
    Match,
    Member,
    Never,
    NonNull,
    OnElements,
    OnValue,
    RefCmp,
    Test,
    TokenMatch,
    fusable,
)
from puffer_cli.filters.matchers import fuzzy_matcher, rust_escape, token_matcher
from puffer_cli.filters.tree import And, Not, Or, thaw
from puffer_cli.schema.types import SCALARS, VEC_RE


def polars_dtype(t: str) -> pl.DataType:
    """The polars dtype of attribute type ``t`` (the schema's table)."""
    if t in SCALARS:
        return SCALARS[t]  # type: ignore[return-value]
    if t.startswith("[]") and t[2:] in SCALARS:
        return pl.List(SCALARS[t[2:]])
    m = VEC_RE.match(t)
    if m:
        return pl.Array(pl.Float32, int(m.group(1)))
    raise InvalidFilter(f"unknown attribute type {t!r} in schema")


def _canon_dtype(t: str) -> pl.DataType:
    """dtype after _canon(): datetimes become Int64 ms."""
    if t == "datetime":
        return pl.Int64()
    if t == "[]datetime":
        return pl.List(pl.Int64)
    return polars_dtype(t)


class Cols:
    """How to reference a column whose presence in the frame is unknown."""

    def __init__(self, columns: Collection[str] | None):
        self.columns = None if columns is None else set(columns)

    def get(self, name: str, t: str) -> pl.Expr:
        dtype = polars_dtype(t)
        if self.columns is not None:
            if name in self.columns:
                return pl.col(name)
            return pl.lit(None, dtype=dtype)
        # present -> the column; absent -> a typed null (regex selection of zero columns)
        return pl.coalesce(pl.col("^" + rust_escape(name) + "$"), pl.lit(None, dtype=dtype))


def _canon(x: pl.Expr, t: str) -> pl.Expr:
    # datetimes compare as Int64 ms since the epoch (whatever unit the column has)
    if t == "datetime":
        return x.cast(pl.Datetime("ms", "UTC")).cast(pl.Int64)
    if t == "[]datetime":
        return x.cast(pl.List(pl.Datetime("ms", "UTC"))).cast(pl.List(pl.Int64))
    return x


#: an And/Or of more parts than this is one all_horizontal / any_horizontal
_CHAIN_MAX = 4
#: an Or of at least this many Eq (And of NotEq) on one attribute is one In (NotIn)
_FUSE_MIN = 2


def lower(b: Bound, columns: Collection[str] | None = None) -> pl.Expr:
    """The polars expression of bound tree ``b``.  ``columns``: the frame's column names,
    if known (plain ``pl.col``, better for predicate pushdown); without them a missing
    column is handled at evaluation time."""
    return _Lowering(Cols(columns)).node(b)


class _Lowering:
    def __init__(self, cols: Cols):
        self.cols = cols

    def node(self, n: Bound) -> pl.Expr:
        if isinstance(n, Not):
            return ~self.node(n.child)
        if isinstance(n, (And, Or)):
            kind = "and" if isinstance(n, And) else "or"
            parts = self.fused(kind, n.children)
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
        return self.leaf(n)

    def fused(self, kind: str, subs: tuple) -> list[pl.Expr]:
        """The children of an And/Or, with an Or of ``[a, "Eq", v]`` (an And of
        ``[a, "NotEq", v]``) over one attribute lowered as one ``[a, "In", [v, ...]]``
        (``Not In``): same result, one hash lookup per row instead of one comparison
        per clause."""
        want = "Eq" if kind == "or" else "NotEq"
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(subs):
            leaf = s if want == "Eq" else s.child if isinstance(s, Not) else None
            if isinstance(leaf, (OnValue, OnElements)) and fusable(leaf, want):
                groups.setdefault(leaf.attr, []).append(i)
        fuse = {i: attr for attr, idx in groups.items() if len(idx) >= _FUSE_MIN for i in idx}
        parts: list[pl.Expr] = []
        for i, s in enumerate(subs):
            attr = fuse.get(i)
            if attr is None:
                parts.append(self.node(s))
            elif groups[attr][0] == i:
                e = self.leaf(_fuse([subs[j] if want == "Eq" else subs[j].child for j in groups[attr]]))
                parts.append(e if want == "Eq" else ~e)
        return parts

    # -- one condition ----------------------------------------------------------
    def leaf(self, n: Bound) -> pl.Expr:
        if isinstance(n, Const):
            return pl.lit(n.value)
        if isinstance(n, IsNull):
            return self.cols.get(n.attr, n.t).is_null()
        if isinstance(n, OnValue):
            x = _canon(self.cols.get(n.attr, n.t), n.t)
            if isinstance(n.test, Never):
                return pl.lit(False)
            if isinstance(n.test, NonNull):
                return x.is_not_null()
            return _test(x, n.test).fill_null(False)
        if isinstance(n, OnElements):
            col = self.cols.get(n.attr, n.t)
            if isinstance(n.test, Never):
                out = pl.lit(False)
            else:
                pred = pl.element().is_not_null() if isinstance(n.test, NonNull) else _test(pl.element(), n.test)
                out = _canon(col, n.t).list.eval(pred).list.any().fill_null(False)
            return (out | col.is_null()) if n.or_null else out
        if isinstance(n, ArrayEq):
            x = _canon(self.cols.get(n.attr, n.t), n.t)
            et = n.t[2:]
            target = pl.lit(pl.Series([list(n.values)], dtype=pl.List(_canon_dtype(et))))
            return (x == target.first()).fill_null(False)
        if isinstance(n, RefCmp):
            y = _canon(self.cols.get(n.column, n.rt), n.rt)
            x = _canon(self.cols.get(n.attr, n.t), n.t)
            e = {"Eq": x == y, "Lt": x < y, "Lte": x <= y, "Gt": x > y, "Gte": x >= y}[n.op]
            return e.fill_null(False)
        if isinstance(n, FuzzyMatch):
            fn = fuzzy_matcher(n.text, n.distance, n.case_sensitive)
            col = self.cols.get(n.attr, n.t)
            return col.map_batches(fn, return_dtype=pl.Boolean, is_elementwise=True).fill_null(False)
        if isinstance(n, TokenMatch):
            fn = token_matcher(n.op, list(n.query), n.prefix_last, thaw(n.opts))
            col = self.cols.get(n.attr, n.t)
            return col.map_batches(fn, return_dtype=pl.Boolean, is_elementwise=True).fill_null(False)
        raise TypeError(f"not a bound filter leaf: {n!r}")  # pragma: no cover


def _fuse(leaves: list) -> OnValue | OnElements:
    """One In leaf for a group of Eq leaves (fusable) on one attribute."""
    first = leaves[0]
    et = first.t.removeprefix("[]")
    values = tuple(leaf.test.lit for leaf in leaves if isinstance(leaf.test, Cmp))
    test: Test = Member(et, values) if values else Never()
    if isinstance(first, OnElements):
        return OnElements(first.src, first.attr, first.t, test)
    return OnValue(first.src, first.attr, first.t, test)


def _test(x: pl.Expr, t: Test) -> pl.Expr:
    """Test ``t`` on scalar expression ``x`` (already canonical; may yield null)."""
    if isinstance(t, Match):
        return x.str.contains(t.pattern)
    if isinstance(t, Member):
        if t.values:
            series = pl.Series(list(t.values), dtype=_canon_dtype(t.et))
            e = x.is_in(pl.lit(series).implode())
            if t.null:
                e = e.fill_null(False) | x.is_null()
            return e
        return x.is_null()
    assert isinstance(t, Cmp)
    lit_e = pl.lit(t.lit, dtype=_canon_dtype(t.et) if t.et != "uuid" else pl.String)
    return {"Eq": x == lit_e, "Lt": x < lit_e, "Lte": x <= lit_e, "Gt": x > lit_e, "Gte": x >= lit_e}[t.op]
