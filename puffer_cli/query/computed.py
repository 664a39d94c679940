"""Parsing of a query's ``compute_attributes`` (turbopuffer's computed attributes):
``{"name": expr}`` where expr is ``[attr, "VectorDist", vector]`` or
``["Highlight", attr]`` / ``["Highlight", attr, {config}]``.  Errors are
:class:`~puffer_cli.errors.InvalidQuery` naming the entry
(``compute_attributes.snippet[2].fragment_limit: ...``); the schema checks are
:func:`check_compute` (called by ``query.check_query``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from puffer_cli import limits as L
from puffer_cli.errors import show
from puffer_cli.query.checks import attr_name, fail, is_int, parse_vector
from puffer_cli.query.model import HIGHLIGHT_FRAGMENT_BY, HIGHLIGHT_OFFSET_UNITS, HighlightExpr, VectorDistExpr
from puffer_cli.query.rank import parse_text_expr
from puffer_cli.schema import types

HIGHLIGHT_KEYS = ("fragment_by", "fragment_limit", "include_offsets", "rank_fragments_by")


def parse_compute(v: Any, pre: str = "") -> tuple[tuple[str, Any], ...]:
    where = pre + "compute_attributes"
    if v is None:
        return ()
    if not isinstance(v, Mapping):
        raise fail(where, f'expected an object {{"name": expression}}, got {show(v)}')
    if len(v) > L.MAX_COMPUTE_ATTRIBUTES:
        raise fail(where, f"{len(v):,} entries (limit: MAX_COMPUTE_ATTRIBUTES = {L.MAX_COMPUTE_ATTRIBUTES})")
    out = []
    for name, e in v.items():
        n = types.utf8_len(name) if isinstance(name, str) else None
        if n is None or not 1 <= n <= L.MAX_ATTRIBUTE_NAME_BYTES or name.startswith("$") or name == "id":
            raise fail(
                where,
                f"invalid name {show(name)}: 1 to {L.MAX_ATTRIBUTE_NAME_BYTES} bytes, not 'id', not starting with '$'",
            )
        out.append((name, _parse_expr(e, f"{where}.{name}")))
    return tuple(out)


def _parse_expr(e: Any, where: str):
    if isinstance(e, (list, tuple)) and len(e) == 3 and e[1] == "VectorDist":
        return VectorDistExpr(attr_name(e[0], where + "[0]"), parse_vector(e[2], where + "[2]"))
    if isinstance(e, (list, tuple)) and e and e[0] == "Highlight":
        if len(e) not in (2, 3):
            raise fail(where, 'Highlight is ["Highlight", attr] or ["Highlight", attr, {config}]')
        attr = attr_name(e[1], where + "[1]")
        return _parse_highlight(attr, e[2] if len(e) == 3 else {}, where + "[2]")
    raise fail(
        where,
        f'puffer computes ["Highlight", attr, {{...}}] and [attr, "VectorDist", vector]; got {show(e)}',
        hint="rank expressions and Embed as computed attributes are not supported",
    )


def _parse_highlight(attr: str, cfg: Any, where: str) -> HighlightExpr:
    if not isinstance(cfg, Mapping):
        raise fail(where, f"Highlight config must be an object, got {show(cfg)}")
    extra = sorted(str(k) for k in cfg if k not in HIGHLIGHT_KEYS)
    if extra:
        raise fail(where, f"unknown Highlight parameter {show(extra[0])} (known: {', '.join(HIGHLIGHT_KEYS)})")
    by = cfg.get("fragment_by", "sentence")
    if by is None:
        by = "sentence"
    if by not in HIGHLIGHT_FRAGMENT_BY:
        raise fail(where + ".fragment_by", f"must be one of {', '.join(HIGHLIGHT_FRAGMENT_BY)}, got {show(by)}")
    limit = cfg.get("fragment_limit", 3)
    if limit is None:
        limit = 3
    if not is_int(limit) or not 1 <= limit <= L.MAX_HIGHLIGHT_FRAGMENTS:
        raise fail(
            where + ".fragment_limit",
            f"must be an integer 1..{L.MAX_HIGHLIGHT_FRAGMENTS} (MAX_HIGHLIGHT_FRAGMENTS), got {show(limit)}",
        )
    units = cfg.get("include_offsets")
    if units is not None and units not in HIGHLIGHT_OFFSET_UNITS:
        raise fail(where + ".include_offsets", f"must be one of {', '.join(HIGHLIGHT_OFFSET_UNITS)}, got {show(units)}")
    rfb = cfg.get("rank_fragments_by")
    node = parse_text_expr(rfb, where + ".rank_fragments_by") if rfb is not None else None
    return HighlightExpr(attr, by, limit, units, node)


def check_compute(q, schema: Mapping, where: str) -> None:
    """The computed attributes against a namespace schema (attributes exist, types fit)."""
    for name, e in q.compute:
        w = f"{where}compute_attributes.{name}"
        spec = schema.get(e.attr)
        t = spec.get("type") if spec else None
        if isinstance(e, VectorDistExpr):
            dims = types.vector_dims(t) if t else None
            if dims is None:
                raise fail(w, f"VectorDist needs a vector attribute; {e.attr!r} is {t or 'not in the namespace'}")
            if len(e.vector) != dims:
                raise fail(w, f"vector has {len(e.vector)} dimensions; {e.attr!r} has {dims}")
        else:
            if spec is None or t != "string" or not spec.get("full_text_search"):
                what = "not in the namespace" if t is None else t if t != "string" else "not full-text indexed"
                raise fail(w, f"Highlight needs a string attribute with full-text search; {e.attr!r} is {what}")
