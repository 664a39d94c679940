"""The query model: turbopuffer query bodies as validated, serialisable, hashable
dataclasses (``Query``, ``MultiQuery`` and the ``rank_by`` nodes).  Parsing is
:mod:`puffer_cli.query.parse` (and :mod:`puffer_cli.query.rank` for ``rank_by``);
``Query.to_json()`` gives the canonical body back (``parse_query(q.to_json()) == q``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from puffer_cli.filters.parse import parse
from puffer_cli.filters.tree import Node, to_json

DEFAULT_LIMIT = 10
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
    "compute_attributes",
)
MULTI_KEYS = ("queries", "consistency", "rerank_by", "limit", "offset", "vector_encoding")
SUBQUERY_KEYS = tuple(k for k in QUERY_KEYS if k != "consistency")
TEXT_COMBINATORS = ("Sum", "Max", "Product")
RANK_FUNCTIONS = ("Saturate", "Decay", "Dist")  # one inner expression each


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
class MultiVectorRank(VectorRank):
    """``[attr, "ANN"|"kNN", [vector, ...]]`` on a ``[][N]f32`` attribute (late interaction,
    turbopuffer's RankByAnnMulti / RankByKnnMulti); ``vector`` is the first query vector."""

    vectors: tuple[tuple[float, ...], ...]

    def matrix(self) -> np.ndarray:
        return np.asarray(self.vectors, dtype=np.float32)

    def to_json(self) -> list:
        return [self.attr, self.method, [list(v) for v in self.vectors]]


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
class SparseKnn:
    """``[attr, "SparseKNN", {dimension: weight}]``: the dot product of the query's weights
    with each document's sparse vector (attribute type ``{}f16``); only documents sharing a
    dimension with the query match.  ``dims`` sorted (code point order), ``weights`` aligned."""

    attr: str
    dims: tuple[str, ...]
    weights: tuple[float, ...]

    def to_json(self) -> list:
        return [self.attr, "SparseKNN", dict(zip(self.dims, self.weights))]


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

    @cached_property
    def node(self) -> Node:
        """The filter as a parsed tree (parsed once)."""
        return parse(self.filter)

    def to_json(self) -> Any:
        return self.filter


@dataclass(frozen=True)
class AttrScore:
    """``["Attribute", attr]``: the numeric value of attr (missing -> 0, not a match)."""

    attr: str

    def to_json(self) -> list:
        return ["Attribute", self.attr]


@dataclass(frozen=True)
class Saturate:
    """``["Saturate", expr, {"midpoint": m, "exponent": e}]``: x^e / (x^e + m^e) of the
    inner score x (0 for x <= 0): rises from 0 to 1, 0.5 at the midpoint."""

    child: Any
    midpoint: float
    exponent: float = 1.0

    def to_json(self) -> list:
        return ["Saturate", self.child.to_json(), {"midpoint": self.midpoint, "exponent": self.exponent}]


@dataclass(frozen=True)
class Decay:
    """``["Decay", expr, {"midpoint": m, "exponent": e}]``: m^e / (x^e + m^e) of the inner
    score x (1 for x <= 0): falls from 1 to 0, 0.5 at the midpoint."""

    child: Any
    midpoint: float
    exponent: float = 1.0

    def to_json(self) -> list:
        return ["Decay", self.child.to_json(), {"midpoint": self.midpoint, "exponent": self.exponent}]


@dataclass(frozen=True)
class Dist:
    """``["Dist", expr, origin]``: |x - origin| of the inner score x.  ``origin_json`` is
    the origin as given (a number, or an RFC 3339 date for a datetime attribute)."""

    child: Any
    origin: float  # epoch milliseconds for a date
    origin_json: Any = None

    def to_json(self) -> list:
        return ["Dist", self.child.to_json(), self.origin if self.origin_json is None else self.origin_json]


def text_children(e: Any) -> tuple:
    """The inner expressions of a text rank node (none for a leaf)."""
    if isinstance(e, (TextSum, TextMax)):
        return e.children
    if isinstance(e, (TextProduct, Saturate, Decay, Dist)):
        return (e.child,)
    return ()


@dataclass(frozen=True)
class TextRank:
    """A BM25 / hybrid text expression: score descending, only matching documents."""

    expr: Any

    def to_json(self) -> Any:
        return self.expr.to_json()


# --------------------------------------------------------------------------- compute_attributes
HIGHLIGHT_FRAGMENT_BY = ("none", "sentence", "paragraph", "word")
HIGHLIGHT_OFFSET_UNITS = ("utf-8", "utf-16", "codepoints")


@dataclass(frozen=True)
class VectorDistExpr:
    """``[attr, "VectorDist", vector]``: the distance of each returned row's vector to ``vector``."""

    attr: str
    vector: tuple[float, ...]

    def to_json(self) -> list:
        return [self.attr, "VectorDist", list(self.vector)]


@dataclass(frozen=True)
class HighlightExpr:
    """``["Highlight", attr, {config}]``: the best fragments of a text attribute, with the
    query terms marked (see docs/http.md "Highlight")."""

    attr: str
    fragment_by: str = "sentence"
    fragment_limit: int = 3
    include_offsets: str | None = None
    rank_fragments_by: Any = None  # a text expression node; None: the query's rank_by

    def to_json(self) -> list:
        cfg: dict[str, Any] = {}
        if self.fragment_by != "sentence":
            cfg["fragment_by"] = self.fragment_by
        if self.fragment_limit != 3:
            cfg["fragment_limit"] = self.fragment_limit
        if self.include_offsets is not None:
            cfg["include_offsets"] = self.include_offsets
        if self.rank_fragments_by is not None:
            cfg["rank_fragments_by"] = self.rank_fragments_by.to_json()
        return ["Highlight", self.attr] + ([cfg] if cfg else [])


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
    filters: Node | None = None  # the filter, parsed (a hashable tree; bound per schema by filters.bind)
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
    compute: tuple[tuple[str, Any], ...] = ()  # compute_attributes: (name, VectorDistExpr | HighlightExpr)

    @property
    def filter(self) -> Any:
        """The filter as JSON."""
        return None if self.filters is None else to_json(self.filters)

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
        if self.compute:
            out["compute_attributes"] = {k: e.to_json() for k, e in self.compute}
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
