"""Column-at-a-time analysis: the tokens of many rows as (term id, row) integer pairs.

:func:`puffer_cli.text.analyzer.tokenize_many` makes one Python list per row and one Rust
call per distinct text; an index build of millions of rows spends most of its time there.
:class:`TermIds` gives the same tokens without per-token Python objects:

* ASCII-only rows are split by polars (``str.extract_all`` with the tokenizer's own
  pattern, :func:`~puffer_cli.text.analyzer.ascii_pattern`; multi-threaded, no GIL), and
  the words are numbered by a categorical cast (one private ``pl.Categories`` per builder);
* each distinct word is normalised once (:func:`~puffer_cli.text.analyzer.normalizer`:
  the analyzer's filters, length limit, lowercasing, stop words, stemming) and mapped to
  a term id (or dropped), so a token costs an array lookup;
* other rows (non-ASCII text, lists of strings, ``pre_tokenized_array``) go through
  ``tokenize_many``, the reference.

Both give exactly the analyzer's tokens (tests/test_text_batch.py checks it with
hypothesis).  Term ids are dense, in order of first appearance; ``terms[i]`` is the term
of id ``i``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from puffer_cli.text import analyzer as T

__all__ = ["TermIds"]


class TermIds:
    """Numbers the terms of successive chunks of one column's rows (one builder per column;
    not thread-safe)."""

    def __init__(self, opts: Any) -> None:
        self.opts = opts
        self._pattern = T.ascii_pattern(opts)
        # words (tokenizer output) and terms (analyzer output) are numbered by categorical
        # casts; polars frees a Categories (and restarts its numbering) once no column's dtype
        # holds it: the empty anchor columns keep the numbers stable from chunk to chunk
        self._wcats = pl.Categories.random()
        self._tcats = pl.Categories.random()
        self._anchor = [pl.Series([], dtype=pl.Categorical(c)) for c in (self._wcats, self._tcats)]
        self._word_tid = np.zeros(0, np.int32)  # word code -> term id (-1: dropped, -2: not seen yet)
        self._terms: list[pl.Series] = []
        self._n_terms = 0

    @property
    def n_terms(self) -> int:
        """Terms numbered so far."""
        return self._n_terms

    @property
    def terms(self) -> list[str]:
        """The term of each id."""
        return pl.concat(self._terms).to_list() if self._terms else []

    def _term_ids(self, terms: pl.Series) -> np.ndarray:
        """Term ids (int32) of ``terms`` (String, no nulls), numbering new ones."""
        codes = terms.cast(pl.Categorical(self._tcats)).to_physical().to_numpy().astype(np.int32)
        new = codes >= self._n_terms
        if new.any():
            df = pl.DataFrame({"t": terms.filter(pl.Series(new)), "c": codes[new]}).unique("c").sort("c")
            c = df.get_column("c").to_numpy()
            assert c[0] == self._n_terms and c[-1] == self._n_terms + len(c) - 1  # dense, one thread numbers them
            self._terms.append(df.get_column("t"))
            self._n_terms += len(c)
        return codes

    def pairs(self, values: pl.Series | list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tokens of ``values`` (one per row: str, list[str] or None) as ``(tid, row,
        lens)``: term ids (int32) and row positions (int64) of every token, each row's tokens
        in order and contiguous, rows of the polars path first; ``lens``: tokens per row."""
        return self.finish(self.split(values))

    def split(self, values: pl.Series | list) -> tuple:
        """The GIL-free part of :meth:`pairs` (polars splits and numbers the words); may run
        in another thread while :meth:`finish` handles the previous chunk."""
        s = values if isinstance(values, pl.Series) else _series(values)
        if self._pattern is None or s.dtype != pl.String:
            return (s, None, None, None)
        assert self._pattern is not None
        ascii_rows = (s.str.len_bytes() == s.str.len_chars()).fill_null(True).to_numpy()
        fast = s if ascii_rows.all() else s.zip_with(pl.Series(ascii_rows), pl.Series([None], dtype=pl.String))
        words = fast.str.extract_all(self._pattern)
        per_row = words.list.len().fill_null(0).to_numpy().astype(np.int64)
        flat = words.explode().drop_nulls()
        assert len(flat) == int(per_row.sum())
        codes = flat.cast(pl.Categorical(self._wcats)).to_physical().to_numpy()
        return (s, ascii_rows, per_row, (flat, codes))

    def finish(self, part: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`pairs` of a chunk :meth:`split` prepared (chunks in any order)."""
        s, ascii_rows, per_row, words = part
        n = len(s)
        lens = np.zeros(n, np.int64)
        if ascii_rows is None:
            return (*self._slow(s.to_list(), np.arange(n, dtype=np.int64), lens), lens)
        flat, codes = words
        self._learn_words(flat, codes)
        tid = self._word_tid[codes]
        row = np.repeat(np.arange(n, dtype=np.int64), per_row)
        keep = tid >= 0
        if not keep.all():
            tid, row = tid[keep], row[keep]
        lens += np.bincount(row, minlength=n)
        if ascii_rows.all():
            return tid, row, lens
        other = np.flatnonzero(~ascii_rows)
        t2, r2 = self._slow(s.gather(other).to_list(), other.astype(np.int64), lens)
        return np.concatenate([tid, t2]), np.concatenate([row, r2]), lens

    def _learn_words(self, flat: pl.Series, codes: np.ndarray) -> None:
        """Term ids of the words of this chunk not seen before (each normalised once)."""
        if not len(codes):
            return
        top = int(codes.max()) + 1
        if top > len(self._word_tid):
            self._word_tid = np.concatenate([self._word_tid, np.full(top - len(self._word_tid), -2, np.int32)])
        unknown = self._word_tid[codes] == -2
        if not unknown.any():
            return
        new = pl.DataFrame({"w": flat.filter(pl.Series(unknown)), "c": codes[unknown]}).unique("c")
        terms = _normalize(new.get_column("w"), self.opts)
        ok = terms.is_not_null().to_numpy()
        tid = np.full(len(new), -1, np.int32)
        tid[ok] = self._term_ids(terms.filter(pl.Series(ok)))
        self._word_tid[new.get_column("c").to_numpy()] = tid

    def _slow(self, vals: list, rows: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        toks = T.tokenize_many(vals, self.opts)
        ln = np.fromiter((len(t) for t in toks), np.int64, len(toks))
        lens[rows] = ln
        flat = pl.Series([t for tl in toks for t in tl], dtype=pl.String)
        return self._term_ids(flat), np.repeat(rows, ln)


_SENTINEL = "\x01"  # a "word" every filter keeps as it is (checked on every call)


def _normalize(words: pl.Series, opts: Any) -> pl.Series:
    """The analyzer's term of each word (null: dropped): one call of the normalizer over all
    the words, each followed by a sentinel token (so a dropped word shows as two sentinels
    in a row); word by word if the sentinels do not come back intact."""
    norm = T.normalizer(opts).analyze
    n = len(words)
    if not n:
        return pl.Series([], dtype=pl.String)
    out = pl.Series(norm(words.str.join(f" {_SENTINEL} ").item() + f" {_SENTINEL}"), dtype=pl.String)
    sep = (out == _SENTINEL).to_numpy()
    at = np.flatnonzero(sep)
    gaps = np.diff(np.concatenate([[-1], at])) - 1  # tokens before each sentinel: 0 or 1
    if len(at) == n and at[-1] == len(out) - 1 and gaps.max() <= 1:
        prev = at - 1
        made = gaps == 1
        res = pl.Series([None] * n, dtype=pl.String)
        return res.scatter(np.flatnonzero(made), out.gather(prev[made]))
    one = [norm(w) for w in words.to_list()]
    return pl.Series([t[0] if t else None for t in one], dtype=pl.String)


def _series(values: list) -> pl.Series:
    if all(v is None or isinstance(v, str) for v in values):
        return pl.Series(values, dtype=pl.String)
    return pl.Series(values, dtype=pl.Object)
