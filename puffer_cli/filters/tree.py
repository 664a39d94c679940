"""The filter language as a typed tree: frozen, hashable nodes (a cache key as they are).

``And(children)`` (empty: true, :data:`TRUE`), ``Or(children)`` (empty: false,
:data:`FALSE`), ``Not(child)`` and ``Predicate(attr, op, value, options)``: one condition
``[attr, op, value]`` (``options``: the 4th element of the token operators and Fuzzy).
Values are frozen JSON (lists become tuples, objects :class:`FrozenDict`), so a tree can
be a dict key; equality is JSON equality (``1``, ``1.0`` and ``true`` differ).

:mod:`puffer_cli.filters.parse` builds a tree from JSON (no schema),
:mod:`puffer_cli.filters.bind` checks it against a schema, :mod:`puffer_cli.filters.lower`
turns the bound tree into polars.  This module also holds the schema-free visitors:
:func:`to_json`, :func:`predicates`, :func:`attributes`, :func:`ref_new_attributes`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


class FrozenDict(dict):
    """A read-only, hashable dict (a JSON object inside a frozen value)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted((k, typed_key(v)) for k, v in self.items())))

    def __reduce__(self) -> tuple:
        return (FrozenDict, (dict(self),))

    def _readonly(self, *a: Any, **k: Any) -> Any:
        raise TypeError("FrozenDict is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly


def freeze(v: Any) -> Any:
    """A JSON value with lists as tuples and objects as FrozenDicts (hashable)."""
    if isinstance(v, (list, tuple)):
        return tuple(freeze(x) for x in v)
    if isinstance(v, Mapping):
        return FrozenDict((k, freeze(x)) for k, x in v.items())
    return v


def thaw(v: Any) -> Any:
    """The plain JSON value (lists, dicts) of a frozen one."""
    if isinstance(v, (list, tuple)):
        return [thaw(x) for x in v]
    if isinstance(v, Mapping):
        return {k: thaw(x) for k, x in v.items()}
    return v


def typed_key(v: Any) -> Any:
    """A hashable key equal only for equal JSON (``1``, ``1.0``, ``true`` differ; NaN == NaN)."""
    if isinstance(v, (list, tuple)):
        return ("l", tuple(typed_key(x) for x in v))
    if isinstance(v, Mapping):
        return ("d", tuple(sorted((str(k), typed_key(x)) for k, x in v.items())))
    if isinstance(v, float):
        return ("f", repr(v))
    return (type(v).__name__, v)


@dataclass(frozen=True)
class And:
    """All children hold (none: true)."""

    children: tuple[Any, ...]  # Nodes (or, in a bound tree, bound nodes)

    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash(("And", self.children))

    def __reduce__(self) -> tuple:  # not the cached hash: str hashes differ between processes
        return (And, (self.children,))


@dataclass(frozen=True)
class Or:
    """Some child holds (none: false)."""

    children: tuple[Any, ...]  # Nodes (or, in a bound tree, bound nodes)

    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash(("Or", self.children))

    def __reduce__(self) -> tuple:  # not the cached hash: str hashes differ between processes
        return (Or, (self.children,))


@dataclass(frozen=True)
class Not:
    """The child does not hold."""

    child: Any  # a Node (or a bound node)


@dataclass(frozen=True, eq=False)
class Predicate:
    """One condition ``[attr, op, value]`` (+ ``options``), as written (``op`` may be a
    ``Not*`` operator).  ``raw``: the condition as given, for error messages."""

    attr: str
    op: str
    value: Any  # frozen JSON
    options: FrozenDict = field(default_factory=FrozenDict)
    raw: Any = None  # frozen JSON of the whole condition

    @cached_property
    def key(self) -> tuple:
        """What equality and the hash compare: the condition as typed JSON (not ``raw``)."""
        return (self.attr, self.op, typed_key(self.value), typed_key(self.options))

    @cached_property
    def _hash(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Predicate) and self._hash == other._hash and self.key == other.key)

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple:  # not the cached key / hash
        return (Predicate, (self.attr, self.op, self.value, self.options, self.raw))


Node = And | Or | Not | Predicate

TRUE = And(())
FALSE = Or(())


# --------------------------------------------------------------------------- visitors


def to_json(n: Node) -> Any:
    """The filter as plain JSON (what :func:`puffer_cli.filters.parse.parse` read)."""
    if isinstance(n, Predicate):
        return thaw(n.raw) if n.raw is not None else [n.attr, n.op, thaw(n.value)]
    if isinstance(n, Not):
        return ["Not", to_json(n.child)]
    return ["And" if isinstance(n, And) else "Or", [to_json(c) for c in n.children]]


def predicates(n: Node) -> Iterator[Predicate]:
    """Every condition of the tree, left to right."""
    stack: list[Node] = [n]
    while stack:
        x = stack.pop()
        if isinstance(x, Predicate):
            yield x
        elif isinstance(x, Not):
            stack.append(x.child)
        else:
            stack.extend(reversed(x.children))


def ref_name(value: Any) -> str | None:
    """``name`` for a ``{"$ref_new": name}`` value, else None."""
    if isinstance(value, Mapping) and set(value) == {"$ref_new"} and isinstance(value["$ref_new"], str):
        return value["$ref_new"]
    return None


def attributes(n: Node, *, include_ref_new: bool = False) -> set[str]:
    """Attribute names the filter reads (``$ref_new`` targets only if asked)."""
    out: set[str] = set()
    for p in predicates(n):
        out.add(p.attr)
        if include_ref_new and (r := ref_name(p.value)) is not None:
            out.add(r)
    return out


def ref_new_attributes(n: Node) -> set[str]:
    """Names used as ``{"$ref_new": name}`` in the filter."""
    return {r for p in predicates(n) if (r := ref_name(p.value)) is not None}
