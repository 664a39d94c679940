"""Binding: a parsed filter tree (:mod:`puffer_cli.filters.tree`) checked once against a
schema, into a bound tree that :mod:`puffer_cli.filters.lower` turns into polars.

Every schema-dependent check lives here (attribute types, ``filterable``, the
``regex`` / ``glob`` / ``fuzzy`` / ``full_text_search`` switches, literal types, regex
compilation, fuzzy thresholds, ``$ref_new``), and literals are canonicalised (uuids
lowercased, datetimes in ms, integer comparisons made exact, value lists reduced to the
members a column can hold).  The bound tree keeps ``And`` / ``Or`` / ``Not`` and has
these leaves, each a frozen (hashable) dataclass:

* :class:`Const` (a constant), :class:`IsNull`,
* :class:`OnValue` (a scalar :data:`Test` on the value) and :class:`OnElements` (some
  element of an array passes the test),
* :class:`ArrayEq` (the whole array equals), :class:`FuzzyMatch`, :class:`TokenMatch`,
  :class:`RefCmp` (compare with the new row's value, conditional writes).

Scalar tests: :class:`Cmp`, :class:`Member`, :class:`Match`, :class:`NonNull`,
:class:`Never`.  ``Not*`` operators bind to ``Not(positive)``.  Errors are
:class:`puffer_cli.errors.InvalidFilter` (messages: :mod:`puffer_cli.filters`).
"""

from __future__ import annotations

import math
import uuid as _uuid
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from puffer_cli.filters.matchers import check_regex, fuzzy_distance, glob_to_regex
from puffer_cli.filters.parse import ANY_CMP, CMP, NEG, TOKEN_OPS, Ctx, show
from puffer_cli.filters.tree import And, FrozenDict, Node, Not, Or, Predicate, freeze, ref_name, thaw
from puffer_cli.schema.types import DATETIME_MS, SCALARS, VEC_RE, parse_datetime_ms
from puffer_cli.text import analyzer as _text

INT_RANGE = {"int": (-(2**63), 2**63 - 1), "uint": (0, 2**64 - 1), "datetime": (-(2**63), 2**63 - 1)}


# --------------------------------------------------------------------------- scalar tests


@dataclass(frozen=True)
class Cmp:
    """``x <op> lit`` (op: Eq, Lt, Lte, Gt, Gte) with ``lit`` canonical for element type ``et``."""

    op: str
    et: str
    lit: Any


@dataclass(frozen=True)
class Member:
    """``x`` is one of ``values`` (canonical, exact), or missing when ``null``."""

    et: str
    values: tuple
    null: bool = False


@dataclass(frozen=True)
class Match:
    """``x`` contains a match of the (Rust) regex ``pattern``."""

    pattern: str


@dataclass(frozen=True)
class NonNull:
    """Every present value passes."""


@dataclass(frozen=True)
class Never:
    """No value passes."""


Test = Cmp | Member | Match | NonNull | Never


# --------------------------------------------------------------------------- bound leaves


@dataclass(frozen=True)
class Const:
    """Every row (``value``) or none."""

    value: bool


@dataclass(frozen=True)
class IsNull:
    """The attribute is missing."""

    attr: str
    t: str


@dataclass(frozen=True)
class OnValue:
    """The scalar attribute's value passes ``test`` (``src``: the condition as written)."""

    src: Predicate
    attr: str
    t: str
    test: Test


@dataclass(frozen=True)
class OnElements:
    """Some element of the array attribute passes ``test`` (or, with ``or_null``, the
    array is missing)."""

    src: Predicate
    attr: str
    t: str
    test: Test
    or_null: bool = False


@dataclass(frozen=True)
class ArrayEq:
    """The whole array equals ``values`` (canonical)."""

    attr: str
    t: str
    values: tuple


@dataclass(frozen=True)
class FuzzyMatch:
    """The value (an element) is within ``distance`` edits of ``text``."""

    attr: str
    t: str
    text: str
    distance: int
    case_sensitive: bool


@dataclass(frozen=True)
class TokenMatch:
    """A token operator (``op``) with the analysed ``query`` tokens under ``opts``."""

    attr: str
    t: str
    op: str
    query: tuple[str, ...]
    prefix_last: bool
    opts: FrozenDict


@dataclass(frozen=True)
class RefCmp:
    """``x <op> y`` where ``y`` is column ``column`` (the new row's ``$ref_new`` value, type ``rt``)."""

    attr: str
    t: str
    op: str
    column: str
    rt: str


Leaf = Const | IsNull | OnValue | OnElements | ArrayEq | FuzzyMatch | TokenMatch | RefCmp
#: a bound tree: And / Or / Not over bound leaves
Bound = And | Or | Not | Leaf


# --------------------------------------------------------------------------- bind


def bind(node: Node, schema: Mapping[str, Mapping], ref_new_prefix: str | None = None) -> Bound:
    """Check ``node`` against ``schema`` -> the bound tree.  ``ref_new_prefix``: the
    column prefix of the new row's values (conditional writes; without it ``$ref_new``
    is refused)."""
    return _Binder(schema, ref_new_prefix).node(node)


class _Binder:
    def __init__(self, schema: Mapping[str, Mapping], prefix: str | None):
        self.schema = schema
        self.prefix = prefix

    def node(self, n: Node) -> Bound:
        if isinstance(n, Predicate):
            pos = NEG.get(n.op, n.op)
            b = self.positive(n, pos, Ctx(n.raw))
            return Not(b) if n.op in NEG else b
        if isinstance(n, Not):
            return Not(self.node(n.child))
        kids = tuple(self.node(c) for c in n.children)
        return And(kids) if isinstance(n, And) else Or(kids)

    def positive(self, p: Predicate, pos: str, ctx: Ctx) -> Leaf:
        attr, op, value = p.attr, p.op, p.value
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

        if pos == "In" and isinstance(t, str) and t.startswith("[]") and not isinstance(value, (list, tuple, Mapping)):
            value = (value,)  # turbopuffer: In/NotIn with a scalar on an array attribute is a one-element list
        _check_shape(op, pos, value, ref, ctx)

        if pos in TOKEN_OPS:
            return self.token_op(attr, spec, pos, value, p.options, ctx)

        if spec is None:
            # Unknown attribute: missing everywhere.
            if pos == "Eq":
                return Const(value is None)
            return Const(pos in ("In", "ContainsAny") and any(v is None for v in value))
        assert isinstance(t, str)  # checked above: a schema entry has a str type

        if VEC_RE.match(t):
            if pos == "Eq" and value is None:
                return IsNull(attr, t)
            raise ctx.fail(f"attribute {show(attr)} is a vector ({t}); vectors cannot be filtered (only Eq/NotEq null)")
        is_array = t.startswith("[]")
        et = t[2:] if is_array else t
        if et not in SCALARS:
            raise ctx.fail(f"attribute {show(attr)} has unknown type {show(t)}")
        if attr != "id" and spec.get("filterable") is False:
            raise ctx.fail(
                f"attribute {show(attr)} is not filterable (schema has "
                "filterable: false); only the token operators apply to it"
            )

        _check_flags(attr, spec, et, op, pos, ctx)
        if pos == "Fuzzy":
            return self.fuzzy(attr, spec, t, value, p.options, ctx)
        if pos == "Eq" and value is None:
            return IsNull(attr, t)

        if ref is not None:
            return self.ref_op(attr, t, op, pos, ref, ctx)

        desc = f"attribute {show(attr)} (type {t})"
        if is_array:
            return self.array_op(p, attr, t, et, op, pos, value, desc, ctx)
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
        test = _scalar_test(et, pos, value, op, desc, ctx)
        if isinstance(test, Never) and not (pos == "Eq" and _fusable(value)):
            return Const(False)
        return OnValue(p, attr, t, test)

    def array_op(self, p, attr, t, et, op, pos, value, desc, ctx) -> Leaf:
        """A condition on an array attribute: element-wise (any element matches), or the
        whole array for Eq with a list."""
        if pos in CMP:
            raise ctx.fail(f"{op} on {desc} is not supported for arrays; use Any{op}")
        if pos == "Eq" and isinstance(value, (list, tuple)):
            return _array_equals(attr, t, et, value, op, desc, ctx)
        array_null = False
        if pos in ("Eq", "Contains"):
            epos, evalue = "Eq", value
        elif pos in ("In", "ContainsAny"):
            # a null member matches a missing array, not a null element
            epos, evalue = "In", tuple(v for v in value if v is not None)
            array_null = len(evalue) != len(value)
        elif pos in ANY_CMP:
            epos, evalue = ANY_CMP[pos], value
        else:  # Glob, IGlob, Regex
            epos, evalue = pos, value
        test = _scalar_test(et, epos, evalue, op, desc, ctx)
        if isinstance(test, Never) and not (pos == "Eq" and _fusable(value)):
            return IsNull(attr, t) if array_null else Const(False)
        return OnElements(p, attr, t, test, array_null)

    def ref_op(self, attr, t, op, pos, ref, ctx) -> Leaf:
        rspec = self.schema.get(ref)
        if rspec is None:
            return Const(False)  # the new row cannot have it: null compares false
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
        assert self.prefix is not None  # checked in positive()
        return RefCmp(attr, t, pos, self.prefix + ref, rt)

    def fuzzy(self, attr, spec, t, value, params, ctx) -> Leaf:
        """turbopuffer's Fuzzy filter: needs a string / []string attribute declared with
        ``fuzzy: true``; whole-value Levenshtein distance (matchers.fuzzy_matcher)."""
        if t not in ("string", "[]string"):
            raise ctx.fail(f"Fuzzy needs a string attribute; {show(attr)} is {t}")
        d = fuzzy_distance(thaw(params), value, "Fuzzy", ctx)
        if not spec.get("fuzzy"):
            raise ctx.fail(f'Fuzzy needs "fuzzy": true in the schema of attribute {show(attr)}')
        if d is None:
            return Const(False)
        return FuzzyMatch(attr, t, value, d, params.get("case_sensitive", True))

    def token_op(self, attr, spec, pos, value, params, ctx) -> Leaf:
        if spec is None:
            return Const(False)
        t = spec["type"]
        fts = spec.get("full_text_search")
        if not fts:
            raise ctx.fail(
                f"{pos} needs full-text search on attribute {show(attr)} "
                f'(type {t}); declare it with "full_text_search": true'
            )
        if t not in ("string", "[]string"):
            raise ctx.fail(f"{pos} needs a string attribute; {show(attr)} is {t}")
        opts = _text.normalize_fts_options(thaw(fts))
        query = _text.tokenize(list(value) if not isinstance(value, str) else value, opts)
        if not query:
            return Const(False)
        return TokenMatch(attr, t, pos, tuple(query), bool(params.get("last_as_prefix")), freeze(opts))


# --------------------------------------------------------------------------- checks


def _check_flags(attr, spec, et, op, pos, ctx) -> None:
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


def _check_shape(op, pos, value, ref, ctx) -> None:
    """Shape checks independent of the schema."""
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


# --------------------------------------------------------------------------- literals


def _literal(et: str, v: Any, op: str, desc: str, ctx: Ctx) -> Any:
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


def _scalar_test(et: str, pos: str, value: Any, op: str, desc: str, ctx: Ctx) -> Test:
    """The test on one (canonical) scalar value of element type ``et``."""
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
        return Match(pattern)
    if pos == "In":
        return _in_test(et, value, op, desc, ctx)
    if pos == "Eq" or pos in CMP:
        if et == "bool" and pos in CMP:
            raise ctx.fail(f"{op} on {desc}: booleans have no order (use Eq)")
        lit = _literal(et, value, op, desc, ctx)
        return _cmp(et, pos, lit)
    raise ctx.fail(f"{op} is not supported on {desc}")  # pragma: no cover


def _in_test(et, values, op, desc, ctx) -> Test:
    want_null = False
    keep: list = []
    for v in values:
        if v is None:
            want_null = True
            continue
        if isinstance(v, (list, tuple, Mapping)):
            raise ctx.fail(f"{op} on {desc} needs a list of scalar values, got {show(v)}")
        lit = _literal(et, v, op, desc, ctx)
        exact = exact_member(et, lit)
        if exact is not None:
            keep.append(exact)
    if keep or want_null:
        return Member(et, tuple(keep), want_null)
    return Never()


def _array_equals(attr, t, et, values, op, desc, ctx) -> Leaf:
    exact_vals = []
    impossible = False
    for v in values:
        if v is None or isinstance(v, (list, tuple, Mapping)):
            raise ctx.fail(f"{op} on {desc} needs a scalar or a list of scalars, got element {show(v)}")
        lit = _literal(et, v, op, desc, ctx)
        ex = exact_member(et, lit)
        if ex is None:
            impossible = True
            break
        exact_vals.append(ex)
    return Const(False) if impossible else ArrayEq(attr, t, tuple(exact_vals))


# --------------------------------------------------------------------------- primitives


def _fusable(v: Any) -> bool:
    """A value whose ``Eq`` is exactly ``In [v]`` (scalars; not null, which In treats
    per array, nor ints beyond float range, which Eq on a float rounds to infinity)."""
    if isinstance(v, (bool, str, float)):
        return True
    return isinstance(v, int) and abs(v) < 2**1023


def fusable(leaf: Any, op: str) -> bool:
    """``leaf`` is an ``[attr, op, v]`` (op Eq / NotEq) with a scalar v that an In over its
    attribute can absorb (see :mod:`puffer_cli.filters.lower`)."""
    return (
        isinstance(leaf, (OnValue, OnElements))
        and leaf.src.op == op
        and _fusable(leaf.src.value)
        and isinstance(leaf.test, (Cmp, Never))
        and not (isinstance(leaf, OnElements) and leaf.or_null)
    )


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


def exact_member(et: str, lit: Any) -> Any:
    """The value a column element must equal to be Eq ``lit``; None if impossible."""
    if _is_nan(lit):
        return None
    if et in INT_RANGE:
        if isinstance(lit, float) and math.isinf(lit):
            return None
        if isinstance(lit, (float, Fraction)):
            if lit != math.floor(lit):
                return None
            lit = int(lit)
        lo, hi = INT_RANGE[et]
        return lit if lo <= lit <= hi else None
    if et == "float":
        try:
            return float(lit)
        except OverflowError:
            return None
    return lit


def _cmp(et: str, pos: str, lit: Any) -> Test:
    if _is_nan(lit):
        return Never()
    if et in INT_RANGE:
        return _int_cmp(et, pos, lit)
    if et == "float":
        try:
            lit = float(lit)
        except OverflowError:
            lit = math.inf if lit > 0 else -math.inf
    return Cmp(pos, et, lit)


def _int_cmp(et: str, pos: str, v: Any) -> Test:
    """An exact comparison of an integer column with any number ``v``."""
    lo, hi = INT_RANGE[et]
    if isinstance(v, float) and math.isinf(v):
        if pos in ("Lt", "Lte"):
            return NonNull() if v > 0 else Never()
        if pos in ("Gt", "Gte"):
            return NonNull() if v < 0 else Never()
        return Never()
    if pos == "Eq":
        k = exact_member(et, v)
        return Never() if k is None else Cmp("Eq", et, k)
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
            return Never()
        if k >= hi:
            return NonNull()
        return Cmp("Lte", et, k)
    if k > hi:
        return Never()
    if k <= lo:
        return NonNull()
    return Cmp("Gte", et, k)
