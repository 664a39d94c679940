"""Text matching for filters: Unix globs -> anchored Rust regexes, regex checks in
polars' engine, and the token operators' batch matchers (ContainsAllTokens,
ContainsAnyToken, ContainsTokenSequence), and Fuzzy's edit-distance matcher."""

from __future__ import annotations

from typing import Any

import polars as pl

from puffer_cli import caches as _caches
from puffer_cli.filters.parse import Ctx, show
from puffer_cli.text import analyzer as _text

_RUST_META = set("\\.+*?()|[]{}^$#&-~")


def rust_escape(s: str) -> str:
    return "".join("\\" + c if c in _RUST_META else c for c in s)


#: pattern -> its compile error (None: compiles); pure, process-wide, not per namespace
_REGEX_OK = _caches.lru("filters.regex_checks", 4096)


def check_regex(pattern: str, shown: str, op: str, ctx: Ctx) -> None:
    """Compile ``pattern`` with polars' (Rust) regex engine; InvalidFilter if bad."""
    err = _REGEX_OK.get(pattern, "")
    if err == "":
        try:
            pl.select(pl.lit("", dtype=pl.String).str.contains(pattern))
            err = None
        except pl.exceptions.PolarsError as e:  # ComputeError: "regex error: ..."
            msg = str(e).split("\n\nThis error occurred")[0].strip()
            err = " ".join(msg.split())[:300]
        _REGEX_OK.put(pattern, err)
    if err is not None:
        what = "regex" if op == "Regex" else "glob pattern"
        raise ctx.fail(f"invalid {what} {show(shown)}: {err}")


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
            out.append(rust_escape(pattern[i + 1]))
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
                    items.append(rust_escape(ch) + "-" + rust_escape(hi))
                else:
                    items.append(rust_escape(ch))
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
            out.append(rust_escape(c))
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
            return any(toks[i] == first and toks[i : i + qlen] == query for i in range(len(toks) - qlen + 1))

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
FAST_TOKEN_MIN_ROWS = 256


def token_matcher(pos: str, query: list[str], prefix_last: bool, opts: dict):
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
        if len(s) < FAST_TOKEN_MIN_ROWS:
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


# --------------------------------------------------------------------------- Fuzzy

FUZZY_MAX_DISTANCE = 4  # a larger edit distance matches almost anything and costs O(n*d) per value


def fuzzy_distance(params: Any, query: str, op: str, ctx: Ctx) -> int | None:
    """The edit distance a Fuzzy filter allows for ``query`` (turbopuffer's FuzzyParams:
    ``{"max_edit_distance": [{"distance": d, "min_query_chars": n}, ...], "case_sensitive"?}``):
    the largest ``distance`` whose ``min_query_chars`` the query reaches; None when the
    query is shorter than every threshold (no matches).  ``min_query_chars`` must be at
    least 3 * (distance + 1), as turbopuffer requires."""
    med = params.get("max_edit_distance") if isinstance(params, dict) else None
    if not isinstance(med, list) or not med:
        raise ctx.fail(f'{op} needs {{"max_edit_distance": [{{"distance": d, "min_query_chars": n}}, ...]}}')
    best = None
    for th in med:
        if not isinstance(th, dict) or set(th) != {"distance", "min_query_chars"}:
            raise ctx.fail(f"{op}: each max_edit_distance entry is {{distance, min_query_chars}}, got {show(th)}")
        d, n = th["distance"], th["min_query_chars"]
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= FUZZY_MAX_DISTANCE:
            raise ctx.fail(f"{op}: distance must be an integer from 0 to {FUZZY_MAX_DISTANCE}, got {show(d)}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 3 * (d + 1):
            raise ctx.fail(f"{op}: min_query_chars must be an integer of at least 3 * (distance + 1), got {show(n)}")
        if len(query) >= n and (best is None or best[0] < n):
            best = (n, d)
    return None if best is None else best[1]


def _within(a: str, b: str, k: int) -> bool:
    """Levenshtein(a, b) <= k (banded dynamic programming, O(len * k))."""
    if abs(len(a) - len(b)) > k:
        return False
    if a == b:
        return True
    if k == 0:
        return False
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [k + 1] * len(b)
        lo, hi = max(1, i - k), min(len(b), i + k)
        for j in range(lo, hi + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != b[j - 1]))
        if min(cur[max(0, lo - 1) : hi + 1]) > k:
            return False
        prev = cur
    return prev[len(b)] <= k


def fuzzy_matcher(query: str, distance: int, case_sensitive: bool):
    """The batch function for Fuzzy: a string matches when its whole value is within
    ``distance`` edits (Levenshtein: insert, delete, substitute one character) of the
    query; a ``[]string`` when any element does.  Python per distinct value."""
    q = query if case_sensitive else query.lower()

    def one(v: str) -> bool:
        return _within(v if case_sensitive else v.lower(), q, distance)

    def fn(s: pl.Series) -> pl.Series:
        flat = s.explode() if s.dtype == pl.List(pl.String) else s
        good = [v for v in flat.drop_nulls().unique().to_list() if one(v)]
        if s.dtype == pl.List(pl.String):
            return s.list.eval(pl.element().is_in(good)).list.any()
        return s.is_in(good)

    return fn
