"""Filter compilation: a parsed filter (:mod:`puffer_cli.filters.parse`) and a schema ->
one non-null boolean polars expression (the rules: :mod:`puffer_cli.filters`)."""

from __future__ import annotations

import math
import re
import uuid as _uuid
from collections.abc import Collection, Mapping
from fractions import Fraction
from typing import Any

import polars as pl

from puffer_cli.errors import InvalidFilter
from puffer_cli.filters.matchers import (
    check_regex,
    fuzzy_distance,
    fuzzy_matcher,
    glob_to_regex,
    rust_escape,
    token_matcher,
)
from puffer_cli.filters.parse import ANY_CMP, CMP, NEG, TOKEN_OPS, Ctx, ref_name, show
from puffer_cli.schema.types import DATETIME_MS, parse_datetime_ms
from puffer_cli.text import analyzer as _text

_SCALAR_TYPES = ("string", "int", "uint", "float", "bool", "datetime", "uuid")
_VECTOR_RE = re.compile(r"^\[(\d+)\]f(16|32)$")
_INT_RANGE = {"int": (-(2**63), 2**63 - 1), "uint": (0, 2**64 - 1), "datetime": (-(2**63), 2**63 - 1)}


def polars_dtype(t: str) -> pl.DataType:
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
        return pl.List(polars_dtype(t[2:]))
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


def _fusable(v: Any) -> bool:
    """A value whose ``Eq`` is exactly ``In [v]`` (scalars; not null, which In treats
    per array, nor ints beyond float range, which Eq on a float rounds to infinity)."""
    if isinstance(v, bool) or isinstance(v, (str, float)):
        return True
    return isinstance(v, int) and abs(v) < 2**1023


_FALSE = False  # constant "no row matches"
_NONNULL = True  # constant "every row with a (non-null) value matches"


class Compiler:
    def __init__(self, schema: Mapping[str, Mapping], prefix: str | None, cols: Cols):
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
        ctx = Ctx(raw)
        pos = NEG.get(op, op)
        e = self.positive(attr, op, pos, value, params, ctx)
        return ~e if op in NEG else e

    def positive(self, attr, op, pos, value, params, ctx) -> pl.Expr:
        ref = None
        if isinstance(value, Mapping):
            ref = ref_name(value)
            if ref is None:
                raise ctx.fail(
                    f'unsupported value object {show(value)} (the only object value is {{"$ref_new": attr}})'
                )
            if self.prefix is None:
                raise ctx.fail(
                    "$ref_new is only allowed in conditional writes "
                    "(upsert_condition / patch_condition / delete_condition)"
                )
        spec = self.schema.get(attr)
        if spec is not None and not isinstance(spec, Mapping):
            raise ctx.fail(f"schema entry for attribute {show(attr)} is not an object")
        t = spec.get("type") if spec is not None else None
        if spec is not None and not isinstance(t, str):
            raise ctx.fail(f"schema entry for attribute {show(attr)} has no type")

        self.check_shape(attr, op, pos, value, ref, ctx)

        if pos in TOKEN_OPS:
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
            raise ctx.fail(f"attribute {show(attr)} is a vector ({t}); vectors cannot be filtered (only Eq/NotEq null)")
        is_array = t.startswith("[]")
        et = t[2:] if is_array else t
        if et not in _SCALAR_TYPES:
            raise ctx.fail(f"attribute {show(attr)} has unknown type {show(t)}")
        if attr != "id" and spec.get("filterable") is False:
            raise ctx.fail(
                f"attribute {show(attr)} is not filterable (schema has "
                "filterable: false); only the token operators apply to it"
            )

        self.check_flags(attr, spec, et, op, pos, ctx)
        col = self.cols.get(attr, t)
        if pos == "Fuzzy":
            return self.fuzzy(attr, spec, t, col, value, params, ctx)
        if pos == "Eq" and value is None:
            return col.is_null()

        if ref is not None:
            return self.ref_op(attr, t, col, op, pos, ref, ctx)

        x = _canon(col, t)
        desc = f"attribute {show(attr)} (type {t})"
        if is_array:
            return self.array_op(x, col, et, op, pos, value, desc, ctx)
        if pos in ("Contains", "ContainsAny") or pos in ANY_CMP:
            raise ctx.fail(
                f"{op} needs an array attribute; {desc} is a scalar"
                + (
                    " (use Eq)"
                    if pos == "Contains"
                    else " (use In)"
                    if pos == "ContainsAny"
                    else f" (use {ANY_CMP[pos]})"
                )
            )
        pred = self.scalar_pred(x, et, pos, value, op, desc, ctx)
        if pred is _FALSE:
            return pl.lit(False)
        if pred is _NONNULL:
            return x.is_not_null()
        return pred.fill_null(False)

    def array_op(self, x, col, et, op, pos, value, desc, ctx) -> pl.Expr:
        """A condition on an array attribute: element-wise (any element matches), or the
        whole array for Eq with a list."""
        if pos in CMP:
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
        elif pos in ANY_CMP:
            epos, evalue = ANY_CMP[pos], value
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

    @staticmethod
    def check_flags(attr, spec, et, op, pos, ctx) -> None:
        """The schema switches of turbopuffer's attribute config ("regex: whether to enable
        Regex filters on this attribute", "glob: ... Glob filters"): Regex needs
        ``regex: true``; Glob/IGlob are on unless ``glob: false``."""
        if et != "string":
            return  # the type error is the clearer one
        if pos == "Regex" and spec.get("regex") is not True:
            raise ctx.fail(
                f'Regex needs "regex": true in the schema of attribute {show(attr)} '
                "(turbopuffer: regex enables Regex filters on an attribute)"
            )
        if pos in ("Glob", "IGlob") and spec.get("glob") is False:
            raise ctx.fail(f'{op} is disabled on attribute {show(attr)} (its schema has "glob": false)')

    # -- shape checks independent of the schema ---------------------------------
    def check_shape(self, attr, op, pos, value, ref, ctx) -> None:
        if ref is not None:
            if pos not in ("Eq", *CMP):
                raise ctx.fail(f'{op} does not take {{"$ref_new": ...}} (only Eq, NotEq, Lt, Lte, Gt, Gte do)')
            return
        if pos in ("In", "ContainsAny"):
            if not isinstance(value, (list, tuple)):
                raise ctx.fail(f"{op} needs a list of values, got {show(value)}")
        elif pos in TOKEN_OPS:
            if isinstance(value, str):
                return
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return
            raise ctx.fail(f"{op} needs a string or a list of strings, got {show(value)}")
        elif pos in ("Glob", "IGlob", "Regex"):
            if not isinstance(value, str):
                raise ctx.fail(f"{op} needs a pattern string, got {show(value)}")
        elif pos == "Fuzzy":
            if not isinstance(value, str):
                raise ctx.fail(f"{op} needs a query string, got {show(value)}")
        elif pos != "Eq" and value is None:
            raise ctx.fail(f"{op} needs a value, got null (only Eq/NotEq/In accept null)")
        elif pos != "Eq" and isinstance(value, (list, tuple)):
            raise ctx.fail(
                f"{op} needs a single value, got a list {show(value)}"
                + (" (use In)" if pos in CMP else " (use ContainsAny)" if pos == "Contains" else "")
            )

    # -- literals ----------------------------------------------------------------
    def literal(self, et: str, v: Any, op: str, desc: str, ctx: Ctx) -> Any:
        """Check and convert one literal for element type ``et``.

        Returns str (string/uuid), bool, int/float/Fraction (numbers; datetimes
        in ms), or math.nan (matches nothing).
        """
        if et == "string":
            if isinstance(v, str):
                return v
            raise ctx.fail(f"{op} on {desc} needs a string, got {show(v)}")
        if et == "uuid":
            if isinstance(v, str):
                try:
                    return str(_uuid.UUID(v))
                except ValueError:
                    pass
            raise ctx.fail(f"{op} on {desc} needs a UUID string, got {show(v)}")
        if et == "bool":
            if isinstance(v, bool):
                return v
            raise ctx.fail(f"{op} on {desc} needs true or false, got {show(v)}")
        if et in ("int", "uint", "float"):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ctx.fail(f"{op} on {desc} needs a number, got {show(v)}")
            return v
        if et == "datetime":
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ctx.fail(f"{op} on {desc} needs an RFC 3339 string or integer ms since the epoch, got {show(v)}")
            ms = v if isinstance(v, int) else parse_datetime_ms(v)
            if ms is None:
                raise ctx.fail(f"{op} on {desc}: {show(v)} is not an RFC 3339 datetime")
            lo, hi = DATETIME_MS
            if not lo <= ms <= hi:  # the values a write accepts: a likely unit mistake (ns, us)
                raise ctx.fail(
                    f"{op} on {desc}: {show(v)} is out of the datetime range (years 1 to 9999: "
                    f"{lo} to {hi} ms since the epoch)"
                )
            return ms
        raise ctx.fail(f"{op} on {desc} is not supported")  # pragma: no cover

    def scalar_pred(self, x: pl.Expr, et: str, pos: str, value: Any, op: str, desc: str, ctx: Ctx):
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
                    raise ctx.fail(f"invalid glob pattern {show(value)}: {e}") from None
            check_regex(pattern, value, op, ctx)
            return x.str.contains(pattern)
        if pos == "In":
            return self.in_pred(x, et, value, op, desc, ctx)
        if pos == "Eq" or pos in CMP:
            if et == "bool" and pos in CMP:
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
                raise ctx.fail(f"{op} on {desc} needs a list of scalar values, got {show(v)}")
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
                raise ctx.fail(f"{op} on {desc} needs a scalar or a list of scalars, got element {show(v)}")
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
            raise ctx.fail(f"schema entry for attribute {show(ref)} has no type")
        fam = _family(t)
        if fam is None or fam != _family(rt) or (t.startswith("[]") != rt.startswith("[]")):
            raise ctx.fail(f"cannot compare attribute {show(attr)} (type {t}) with $ref_new {show(ref)} (type {rt})")
        if t.startswith("[]") and pos != "Eq":
            raise ctx.fail(f"{op} with $ref_new on array attribute {show(attr)}: only Eq/NotEq")
        if fam == "bool" and pos != "Eq":
            raise ctx.fail(f"{op} on attribute {show(attr)} (type {t}): booleans have no order")
        y = _canon(self.cols.get(self.prefix + ref, rt), rt)
        x = _canon(col, t)
        e = {"Eq": x == y, "Lt": x < y, "Lte": x <= y, "Gt": x > y, "Gte": x >= y}[pos]
        return e.fill_null(False)

    def fuzzy(self, attr, spec, t, col, value, params, ctx) -> pl.Expr:
        """turbopuffer's Fuzzy filter: needs a string / []string attribute declared with
        ``fuzzy: true``; whole-value Levenshtein distance (filtertext.fuzzy_matcher)."""
        if t not in ("string", "[]string"):
            raise ctx.fail(f"Fuzzy needs a string attribute; {show(attr)} is {t}")
        d = fuzzy_distance(params, value, "Fuzzy", ctx)
        if not spec.get("fuzzy"):
            raise ctx.fail(f'Fuzzy needs "fuzzy": true in the schema of attribute {show(attr)}')
        if d is None:
            return pl.lit(False)
        fn = fuzzy_matcher(value, d, params.get("case_sensitive", True))
        return col.map_batches(fn, return_dtype=pl.Boolean, is_elementwise=True).fill_null(False)

    # -- token operators ---------------------------------------------------------
    def token_op(self, attr, spec, pos, value, params, ctx):
        if spec is None:
            return pl.lit(False)
        t = spec["type"]
        fts = spec.get("full_text_search")
        if not fts:
            raise ctx.fail(
                f"{pos} needs full-text search on attribute {show(attr)} "
                f'(type {t}); declare it with "full_text_search": true'
            )
        if t not in ("string", "[]string"):
            raise ctx.fail(f"{pos} needs a string attribute; {show(attr)} is {t}")
        opts = _text.normalize_fts_options(fts)
        query = _text.tokenize(list(value) if not isinstance(value, str) else value, opts)
        if not query:
            return pl.lit(False)
        prefix_last = bool(params.get("last_as_prefix"))
        fn = token_matcher(pos, query, prefix_last, opts)
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
