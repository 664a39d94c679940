"""Filters people can type: an SQL ``WHERE`` subset, parsed by sqlglot into the turbopuffer
JSON filter form (then parsed and bound like any JSON filter, so the two cannot drift).

=============================================  =========================================
``a = 1``, ``a != 'x'``, ``a <> 'x'``           ``["a", "Eq", 1]``, ``["a", "NotEq", "x"]``
``a < 1``, ``a <= 1``, ``a > 1``, ``a >= 1``    ``Lt``, ``Lte``, ``Gt``, ``Gte`` (``1 < a`` flips)
``a IN (1, 2)``, ``a NOT IN (1, 2)``            ``In``, ``NotIn``
``a LIKE 'ab%'``, ``a ILIKE '%_x'``             ``Glob`` ``ab*``, ``IGlob`` ``*?x`` (``NOT LIKE``: ``NotGlob``)
``a IS NULL``, ``a IS NOT NULL``                ``["a", "Eq", null]``, ``["a", "NotEq", null]``
``'x' = ANY(tags)``, ``array_contains(tags, 'x')``  ``["tags", "Contains", "x"]``
``AND``, ``OR``, ``NOT``, parentheses           ``And``, ``Or``, ``Not``
=============================================  =========================================

Literals: numbers, 'strings' (``''`` for a quote), TRUE, FALSE, NULL. Attribute names are bare
identifiers or "double quoted". Anything else is refused with a one-line error.
"""

from __future__ import annotations

from typing import Any

from puffer_cli import limits
from puffer_cli.errors import InvalidFilter, show

#: the longest WHERE text accepted (the JSON form's own limits apply after conversion)
MAX_WHERE_CHARS = 16_384
_CMP = {"EQ": "Eq", "NEQ": "NotEq", "LT": "Lt", "LTE": "Lte", "GT": "Gt", "GTE": "Gte"}
_FLIP = {"Lt": "Gt", "Lte": "Gte", "Gt": "Lt", "Gte": "Lte", "Eq": "Eq", "NotEq": "NotEq"}


def where_to_filter(text: str) -> Any:
    """The JSON filter (``["And", [...]]`` form) that the WHERE text ``text`` means."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidFilter("where must be a non-empty SQL condition, e.g. \"lang = 'en' AND n >= 5\"")
    if len(text) > MAX_WHERE_CHARS:
        raise InvalidFilter(f"where is {len(text):,} characters long; at most {MAX_WHERE_CHARS:,}")
    if text.count("(") > limits.MAX_FILTER_DEPTH:
        raise InvalidFilter(f"where nests deeper than {limits.MAX_FILTER_DEPTH} levels")
    import sqlglot  # lazily: only a --where pays for the parser
    from sqlglot import errors as sqlerr

    try:
        trees = sqlglot.parse(f"SELECT 1 WHERE {text}")
    except (sqlerr.ParseError, sqlerr.TokenError) as e:
        raise InvalidFilter(
            f"cannot parse where {show(text, 80)}", hint="check quotes, parentheses and operators"
        ) from e
    except RecursionError as e:
        raise InvalidFilter("where nests too deeply") from e
    tree = trees[0] if len(trees) == 1 else None
    used = {k for k, v in tree.args.items() if v} if isinstance(tree, sqlglot.exp.Select) else set()
    if tree is None or used != {"expressions", "where"}:
        raise InvalidFilter(f"where must be one condition, got {show(text, 80)}", hint=_HINT)
    return _node(tree.args["where"].this)


def _node(e: Any) -> Any:
    from sqlglot import exp

    if isinstance(e, exp.Paren):
        return _node(e.this)
    if isinstance(e, exp.And):
        return ["And", _flat(e, exp.And)]
    if isinstance(e, exp.Or):
        return ["Or", _flat(e, exp.Or)]
    if isinstance(e, exp.Not):
        inner = e.this.this if isinstance(e.this, exp.Paren) else e.this
        if isinstance(inner, exp.In):
            attr, op, vals = _in(inner)
            return [attr, "In" if op == "NotIn" else "NotIn", vals]
        if isinstance(inner, (exp.Like, exp.ILike)):
            attr, op, pat = _like(inner)
            return [attr, op[3:] if op.startswith("Not") else "Not" + op, pat]
        if isinstance(inner, exp.Is):
            attr, _, v = _is(inner)
            return [attr, "NotEq", v]
        return ["Not", _node(e.this)]
    if type(e).__name__ in _CMP:
        return _compare(e, _CMP[type(e).__name__])
    if isinstance(e, exp.In):
        return _in(e)
    if isinstance(e, (exp.Like, exp.ILike)):
        return list(_like(e))
    if isinstance(e, exp.Is):
        return list(_is(e))
    if isinstance(e, exp.ArrayContains):
        return [_attr(e.this), "Contains", _literal(e.expression)]
    raise InvalidFilter(f"where: {show(e.sql(), 80)} is not a condition puffer understands", hint=_HINT)


_HINT = "use =, !=, <, <=, >, >=, IN, LIKE, ILIKE, IS [NOT] NULL, 'x' = ANY(tags), AND, OR, NOT"


def _flat(e: Any, kind: Any) -> list:
    """The operands of a chain of one connective (``a AND b AND c``), left to right."""
    out: list = []
    stack: list[Any] = [e]
    while stack:
        cur = stack.pop()
        if isinstance(cur, kind):
            stack += [cur.expression, cur.this]
        else:
            out.append(_node(cur))
    return out


def _compare(e: Any, op: str) -> list:
    from sqlglot import exp

    left, right = e.this, e.expression
    if isinstance(right, exp.Any) and op == "Eq":  # 'x' = ANY(tags)
        return [_attr(right.this), "Contains", _literal(left)]
    if isinstance(left, exp.Any) and op == "Eq":
        return [_attr(left.this), "Contains", _literal(right)]
    if isinstance(left, exp.Column):
        return [_attr(left), op, _literal(right)]
    if isinstance(right, exp.Column):
        return [_attr(right), _FLIP[op], _literal(left)]
    raise InvalidFilter(f"where: {show(e.sql(), 80)} compares no attribute", hint=_HINT)


def _in(e: Any) -> list:
    if e.args.get("query") is not None or e.args.get("unnest") is not None:
        raise InvalidFilter("where: IN takes a list of values, not a query")
    return [_attr(e.this), "NotIn" if e.args.get("negate") else "In", [_literal(v) for v in e.expressions]]


def _like(e: Any) -> tuple[str, str, str]:
    from sqlglot import exp

    pat = _literal(e.expression)
    if not isinstance(pat, str):
        raise InvalidFilter("where: LIKE needs a 'pattern' string")
    if e.args.get("escape") is not None:
        raise InvalidFilter("where: LIKE ... ESCAPE is not supported (use a [%] class in a Glob filter)")
    op = "IGlob" if isinstance(e, exp.ILike) else "Glob"
    return _attr(e.this), "Not" + op if e.args.get("negate") else op, like_to_glob(pat)


def like_to_glob(pattern: str) -> str:
    """An SQL LIKE pattern as a turbopuffer glob: ``%`` -> ``*``, ``_`` -> ``?``, glob
    metacharacters of the text escaped."""
    out = []
    for ch in pattern:
        if ch == "%":
            out.append("*")
        elif ch == "_":
            out.append("?")
        elif ch in "*?[]{}\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _is(e: Any) -> tuple[str, str, None]:
    from sqlglot import exp

    if not isinstance(e.expression, exp.Null):
        raise InvalidFilter(f"where: {show(e.sql(), 80)}: IS takes NULL (IS NULL, IS NOT NULL)")
    return _attr(e.this), "Eq", None


def _attr(e: Any) -> str:
    from sqlglot import exp

    if isinstance(e, exp.Paren):
        return _attr(e.this)
    if isinstance(e, exp.Column) and not e.table:
        return str(e.this.this)
    raise InvalidFilter(f"where: expected an attribute name, got {show(e.sql(), 80)}", hint=_HINT)


def _literal(e: Any) -> Any:
    from sqlglot import exp

    if isinstance(e, exp.Neg):
        v = _literal(e.this)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v
    if isinstance(e, exp.Literal):
        if e.is_string:
            return e.this
        text = e.this
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                pass
    if isinstance(e, exp.Boolean):
        return bool(e.this)
    if isinstance(e, exp.Null):
        return None
    if isinstance(e, exp.Column) and not e.table and isinstance(e.this, exp.Identifier) and not e.this.quoted:
        word = str(e.this.this).lower()
        if word in ("true", "false"):
            return word == "true"
    if isinstance(e, exp.Tuple):
        return [_literal(v) for v in e.expressions]
    raise InvalidFilter(f"where: expected a value, got {show(e.sql(), 80)}", hint="quote strings: 'text'")
