"""The full-text directory in the index pointer: a cold BM25 query reads its terms' dictionary
blocks, document-frequency blocks and the document lengths in the manifest's round trip.

A BM25 query's reads depend on one another: meta.json (the pointer) -> the manifest -> the
term dictionary and df blocks of the query terms -> their postings -> the ids of the top rows.
The manifest only tells where the dictionary blocks are; so the pointer carries that part of
it (:func:`pointer_hint`, ``index.fts`` in meta.json: per FTS field its df blocks' and every
segment's block index's first terms, offsets and length section), and a cold reader issues
those ranged reads with the manifest read (:func:`hint_calls`).  The bytes land in a small
process cache (:data:`STASH`) that the block index and the df table read before the store
(:func:`take`), so the chain is 4 round trips.  Left out when larger than ``HINT_MAX_TERMS``
first terms (meta.json stays small; such a query takes one more round trip).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from puffer_cli import caches
from puffer_cli.index import paged
from puffer_cli.index.manifest import fts_sig, fts_sig_of

HINT_MAX_TERMS = 4096  # first terms (dictionary + df blocks) in a pointer at most
#: bytes read ahead by the hint, until the reader that wants them takes them
STASH = caches.lru("index.fts_hint_ranges", 4096, maxbytes=64 << 20, weigh=len)
_ENTRY = ("key", "parts", "part_bytes", "size")


def _file(e: dict) -> dict:
    return {k: e[k] for k in _ENTRY if k in e}


def pointer_hint(segs: list[dict], bm25: dict) -> dict | None:
    """``index.fts`` of a pointer: per FTS field with df blocks and block indexes in every
    segment, where its dictionary, df blocks and lengths are; None when there is none or it
    would be too large."""
    out: dict[str, Any] = {}
    size = 0
    for f, b in bm25.items():
        dfb = b.get("df_blocks")
        ents = [s.get("fts", {}).get(f) for s in segs]
        if dfb is None or not ents or any(not e or e.get("format") != "blk-1" for e in ents):
            continue
        seg_hints = []
        for e in ents:
            assert e is not None
            seg_hints.append(
                {
                    **_file(e),
                    "first": e["dict"]["first"],
                    "off": e["dict"]["off"],
                    "lengths": [e["lengths"]["off"], e["lengths"]["end"]],
                }
            )
            size += len(e["dict"]["first"])
        out[f] = {"sig": b["sig"], "df": {**_file(dfb), "first": dfb["first"], "off": dfb["off"]}, "segs": seg_hints}
        size += len(dfb["first"])
    return out if out and size <= HINT_MAX_TERMS else None


def _blocks(first: list[str], off: list[int], terms) -> list[tuple[int, int]]:
    import bisect

    ids = sorted({i for t in terms if (i := bisect.bisect_right(first, t) - 1) >= 0})
    return [(int(off[i]), int(off[i + 1])) for i in ids]


def _fetch(cache, store, entry: dict, ranges: list[tuple[int, int]]) -> None:
    if paged.cached(cache, store, entry):  # the reader reads the cached file
        return
    try:
        got = paged.read_ranges(cache, store, entry, ranges)
    except FileNotFoundError:
        return  # collected: the manifest read fails the same way, and the caller retries
    for (a, b), data in zip(ranges, got):
        STASH.put((store.url, entry["key"], a, b), data)


def hint_calls(store, cache, ptr: dict, schema: dict, queries) -> list:
    """The reads to run with the manifest read for ``queries`` (parsed) under pointer ``ptr``
    and the namespace's ``schema``: their BM25 terms' dictionary and df blocks and every
    segment's lengths, per field whose analyzer is the index's."""
    from puffer_cli.query import model
    from puffer_cli.text.bm25 import query_tokens

    hint = ptr.get("fts")
    if not hint or not store.is_remote:
        return []
    terms: dict[str, set[str]] = {}

    def walk(e) -> None:
        if isinstance(e, model.Bm25):
            spec = schema.get(e.attr) or {}
            h = hint.get(e.attr)
            if h is not None and fts_sig_of(spec) is not None and fts_sig(spec) == h["sig"]:
                q = e.query if isinstance(e.query, str) else list(e.query)
                terms.setdefault(e.attr, set()).update(query_tokens(q, spec["full_text_search"]))
        for c in model.text_children(e):
            walk(c)

    for q in queries:
        rb = getattr(q, "rank_by", None)
        if isinstance(rb, model.TextRank):
            walk(rb.expr)
    calls = []
    for f, ts in terms.items():
        h = hint[f]
        if ts:
            calls.append(partial(_fetch, cache, store, h["df"], _blocks(h["df"]["first"], h["df"]["off"], ts)))
        for s in h["segs"]:
            rs = _blocks(s["first"], s["off"], ts) + [(int(s["lengths"][0]), int(s["lengths"][1]))]
            calls.append(partial(_fetch, cache, store, s, rs))
    return calls


def take(store, key: str, ranges: list[tuple[int, int]]) -> list[bytes | None]:
    """The stashed bytes of each range of file ``key`` (None where not stashed); taken out."""
    return [STASH.pop((store.url, key, a, b)) for a, b in ranges]
