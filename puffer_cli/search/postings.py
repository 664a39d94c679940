"""The engine's BM25 postings of a candidate frame, built from the tokens the index stored
(so the exact re-scoring of index candidates does not analyse their text again)."""

from __future__ import annotations

from functools import partial

import numpy as np
import polars as pl


def postings_from_tokens(toks: list[list[str]], only: set | None = None):
    """bm25.Postings of already analysed rows (what bm25.postings_for would build),
    in plain Python: candidate frames are small (hundreds of rows).  ``only``: keep
    the postings of these terms only (the query's: all the engine looks up);
    document lengths stay exact."""
    from collections import Counter

    from puffer_cli.text.bm25 import Postings

    n = len(toks)
    lens = np.fromiter((len(t) for t in toks), dtype=np.float64, count=n)
    post: dict[str, list] = {}
    for r, t in enumerate(toks):
        if t:
            if only is not None:
                t = [x for x in t if x in only]
            for term, c in Counter(t).items():
                lst = post.get(term)
                if lst is None:
                    post[term] = [r, c]
                else:
                    lst.append(r)
                    lst.append(c)
    terms = sorted(post)
    sizes = np.fromiter((len(post[t]) // 2 for t in terms), dtype=np.int64, count=len(terms))
    indptr = np.zeros(len(terms) + 1, dtype=np.int64)
    np.cumsum(sizes, out=indptr[1:])
    flat = np.fromiter((x for t in terms for x in post[t]), dtype=np.int64, count=int(indptr[-1]) * 2)
    rows = flat[0::2].astype(np.int32)
    tf = flat[1::2].astype(np.float64)
    return Postings(n, terms, {t: i for i, t in enumerate(terms)}, indptr, rows, tf, lens, int(lens.sum()))


def seed_postings(docs: pl.DataFrame, tokens: dict, schema: dict, qterms: dict) -> None:
    """Give the engine the postings of the candidate frame from stored tokens, so it
    does not analyse the candidates' text again (bm25.postings_for's cache key)."""
    from puffer_cli.text import analyzer as T
    from puffer_cli.text import bm25 as B

    for f, toks in tokens.items():
        if len(toks) != docs.height:
            continue
        opts = T.normalize_fts_options(schema[f]["full_text_search"])
        B.frame_cached(docs, ("bm25", f, T.analyzer_name(opts)), partial(postings_from_tokens, toks, qterms[f]))
