"""Computed attributes (a query's ``compute_attributes``) of the rows a query returns.

* ``[attr, "VectorDist", vector]``: the exact distance (the query's ``distance_metric``,
  else the namespace's) of the row's ``attr`` vector to ``vector``, as ``$dist`` is
  computed (:func:`puffer_cli.search.scoring.exact_distances`); absent where the row has no vector.
* ``["Highlight", attr, {config}]``: the best fragments of a string attribute for the
  query terms: a list of ``{"text": fragment, "highlights": [[start, end], ...]}``, best
  first (most distinct query terms, then most occurrences, then earliest), at most
  ``fragment_limit``; ``highlights`` are the matched words within the fragment;
  with ``include_offsets`` also ``"start"``/``"end"`` of the fragment in the value, every
  offset in those units (default codepoints).  The query terms are those of the BM25
  leaves on ``attr`` in ``rank_fragments_by`` (default: the query's ``rank_by``), each
  word of the value analysed as BM25 analyses it; no term, or no match: ``[]``.

Computed only over the returned rows, after ranking, so every query path gives the same
values (the index path hands these queries to the exact engine over its candidates).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from puffer_cli.query import model
from puffer_cli.query import parse as Q
from puffer_cli.search.scoring import exact_distances
from puffer_cli.text import analyzer as T

_WORD = re.compile(r"[^\W_]+")
_SPLIT = {
    "sentence": re.compile(r"(?<=[.!?])\s+|\n+"),
    "paragraph": re.compile(r"\n\s*\n|\r\n\s*\r\n"),
}


def computed(q: Q.Query, rows: pl.DataFrame | None, schema: Mapping, metric: str | None) -> dict[str, list]:
    """name -> one value per row (None: absent) for each of ``q.compute``."""
    if rows is None or not q.compute:
        return {}
    out: dict[str, list] = {}
    for name, e in q.compute:
        if isinstance(e, model.VectorDistExpr):
            out[name] = _vector_dist(e, rows, q.distance_metric or metric or "cosine_distance")
        else:
            out[name] = _highlight(e, q, rows, schema)
    return out


def _vector_dist(e: model.VectorDistExpr, rows: pl.DataFrame, metric: str) -> list:
    if e.attr not in rows.columns or not rows.height:
        return [None] * rows.height
    col = rows[e.attr]
    valid = col.is_not_null().to_numpy()
    out: list = [None] * rows.height
    if valid.any():
        idx = np.flatnonzero(valid)
        mat = np.asarray(col.gather(idx).to_numpy(), dtype=np.float32).reshape(len(idx), -1)
        d = exact_distances(mat, np.asarray(e.vector, dtype=np.float32), metric)
        for i, v in zip(idx, d):
            if np.isfinite(v):
                out[int(i)] = float(v)
    return out


def _terms(e: model.HighlightExpr, q: Q.Query, opts: Any) -> set[str]:
    expr = e.rank_fragments_by
    if expr is None and isinstance(q.rank_by, Q.TextRank):
        expr = q.rank_by.expr
    out: set[str] = set()
    stack = [expr] if expr is not None else []
    while stack:
        n = stack.pop()
        if isinstance(n, Q.Bm25) and n.attr == e.attr:
            out.update(T.tokenize(n.query if isinstance(n.query, str) else list(n.query), opts))
        stack.extend(Q.text_children(n))
    return out


def _spans(text: str, by: str) -> list[tuple[int, int]]:
    """Fragment spans of ``text`` (whitespace trimmed, empty ones dropped)."""
    if by == "none":
        cuts = [(0, len(text))]
    else:
        cuts, start = [], 0
        for m in _SPLIT[by].finditer(text):
            cuts.append((start, m.start()))
            start = m.end()
        cuts.append((start, len(text)))
    out = []
    for a, b in cuts:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            out.append((a, b))
    return out


def _unit(text: str, units: str | None):
    """A function: codepoint offset -> offset in ``units``."""
    if units in (None, "codepoints"):
        return lambda i: i
    enc = "utf-8" if units == "utf-8" else "utf-16-le"
    width = 1 if units == "utf-8" else 2
    return lambda i: len(text[:i].encode(enc, "surrogatepass")) // width


def _fragments(text: str, e: model.HighlightExpr, terms: set[str], opts: Any, memo: dict) -> list[dict]:
    hits = []  # (start, end, term) of matching words
    for m in _WORD.finditer(text):
        w = m.group()
        toks = memo.get(w)
        if toks is None:
            toks = memo[w] = [t for t in T.tokenize(w, opts) if t in terms]
        for t in toks[:1]:
            hits.append((m.start(), m.end(), t))
    if not hits:
        return []
    spans = [(a, b) for a, b, _t in hits] if e.fragment_by == "word" else _spans(text, e.fragment_by)
    scored = []
    for a, b in spans:
        inside = [(s, x, t) for s, x, t in hits if s >= a and x <= b]
        if inside:
            scored.append((-len({t for *_r, t in inside}), -len(inside), a, b, inside))
    scored.sort(key=lambda r: r[:3])
    conv = _unit(text, e.include_offsets)
    out = []
    for *_k, a, b, inside in scored[: e.fragment_limit]:
        frag: dict[str, Any] = {
            "text": text[a:b],
            "highlights": [[conv(s) - conv(a), conv(x) - conv(a)] for s, x, _t in inside],
        }
        if e.include_offsets is not None:
            frag["start"], frag["end"] = conv(a), conv(b)
        out.append(frag)
    return out


def _highlight(e: model.HighlightExpr, q: Q.Query, rows: pl.DataFrame, schema: Mapping) -> list:
    if e.attr not in rows.columns:
        return [None] * rows.height
    opts = schema[e.attr]["full_text_search"]
    terms = _terms(e, q, opts)
    memo: dict = {}
    out: list = []
    for v in rows[e.attr].to_list():
        out.append(None if v is None else _fragments(v, e, terms, opts, memo) if terms else [])
    return out
