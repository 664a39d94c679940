"""tantivy full-text index per FTS field and segment.

The tantivy schema has two fields: ``t`` (text, indexed with term frequencies,
tokenized by the one puffer analyzer registered under ``text.analyzer_name``)
and ``pos`` (stored integer: the row position in the segment).  Documents are
added in row order by one writer thread and one commit, so a segment normally
holds one tantivy segment whose doc ids *are* row positions; if tantivy split
it anyway, positions are read from the stored ``pos`` field.

tantivy is only the candidate generator: its scores use per-segment statistics,
so the query path takes an over-fetched candidate set from it and re-scores
those documents with exact BM25 over namespace-global statistics (see
docs/indexer.md).  A ``[]string`` attribute is indexed as a multi-valued field.

Built into a local temporary directory; every file except lock files is
uploaded as its own object under ``{segment}/fts-{tag}/``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections import Counter
from typing import NamedTuple

import numpy as np

from puffer_cli import caches
from puffer_cli.text import analyzer as text

FIELD = "t"
SEP = "\x1f"  # joins a row's tokens in the stored token column
WS_ANALYZER = "puffer_pretokenized_ws"


def pretokenized(opts: dict) -> bool:
    """True when rows are analysed once in Python and tantivy indexes the tokens
    joined by spaces (word tokenizers: tokens never contain whitespace)."""
    return opts.get("tokenizer", "word_v1") != "pre_tokenized_array"


def _register(index, opts: dict) -> str:
    import tantivy

    if pretokenized(opts):
        index.register_tokenizer(WS_ANALYZER, tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace()).build())
        return WS_ANALYZER
    return text.register(index, opts)


def _schema(opts: dict):
    import tantivy

    sb = tantivy.SchemaBuilder()
    name = WS_ANALYZER if pretokenized(opts) else text.analyzer_name(opts)
    sb.add_text_field(FIELD, stored=False, tokenizer_name=name, index_option="freq")
    sb.add_integer_field("pos", stored=True, indexed=False, fast=False)
    return sb.build()


def build(values: list, opts: dict) -> tuple[dict[str, bytes], list[list[str]]]:
    """Index ``values`` (one per row: str, list[str] or None).

    Rows are analysed ONCE with the puffer analyzer (``text.tokenize_many``); for
    word tokenizers tantivy then indexes the tokens joined by spaces with a
    whitespace tokenizer (same terms, frequencies and lengths, no second
    analysis).  Returns ({relative file name: bytes}, tokens per row)."""
    import tantivy

    toks = text.tokenize_many(values, opts)
    pre = pretokenized(opts)
    d = tempfile.mkdtemp(prefix="puffer-fts-")
    try:
        idx = tantivy.Index(_schema(opts), path=d)
        _register(idx, opts)
        w = idx.writer(heap_size=256_000_000, num_threads=1)
        for i, v in enumerate(values):
            doc = tantivy.Document()
            if v is None:  # an empty document keeps tantivy doc ids equal to row positions
                pass
            elif pre:
                doc.add_text(FIELD, " ".join(toks[i]))
            elif isinstance(v, str):
                doc.add_text(FIELD, v)
            else:
                for part in v:
                    if part is not None:
                        doc.add_text(FIELD, part)
            doc.add_integer("pos", i)
            w.add_document(doc)
        w.commit()
        w.wait_merging_threads()
        files = {}
        for name in sorted(os.listdir(d)):
            if name.endswith(".lock"):
                continue
            with open(os.path.join(d, name), "rb") as f:
                files[name] = f.read()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return files, toks


def tokens_bytes(toks: list[list[str]]) -> bytes:
    """The stored token column: Arrow IPC, one String per row (tokens joined by U+001F)."""
    import io

    import polars as pl

    buf = io.BytesIO()
    pl.DataFrame({"t": [SEP.join(t) for t in toks]}, schema={"t": pl.String}).write_ipc(buf, compression="uncompressed")
    return buf.getvalue()


def postings_bytes(toks: list[list[str]]) -> bytes:
    """A segment's inverted index for exact BM25 re-scoring: Arrow IPC, one row per term
    (code point order): ``term`` String, ``rows`` List[UInt32] (ascending row positions),
    ``tf`` List[UInt32] (the term's count in each of those rows)."""
    import io

    import polars as pl

    joined = pl.Series("t", [SEP.join(t) for t in toks], dtype=pl.String)
    df = (
        pl.LazyFrame({"t": joined})
        .with_row_index("r")
        .with_columns(pl.col("t").str.split(SEP))
        .explode("t")
        .filter(pl.col("t").is_not_null() & (pl.col("t") != ""))
        .group_by("t", "r")
        .len()
        .sort("t", "r")
        .group_by("t", maintain_order=True)
        .agg(pl.col("r").cast(pl.UInt32).alias("rows"), pl.col("len").cast(pl.UInt32).alias("tf"))
        .rename({"t": "term"})
        .collect()
    )
    buf = io.BytesIO()
    df.write_ipc(buf, compression="uncompressed")
    return buf.getvalue()


class SegmentPostings:
    """A segment's stored inverted index (:func:`postings_bytes`) and document lengths;
    gives the exact BM25 inputs (tf, length) of any candidate rows without re-analysing text."""

    def __init__(self, path, tokens) -> None:
        import polars as pl

        from puffer_cli.index.docs import corrupt

        try:
            df = pl.read_ipc(path)
            if not {"term", "rows", "tf"} <= set(df.columns):
                raise ValueError(f"columns {df.columns}, expected term, rows, tf")
        except (OSError, ValueError, pl.exceptions.PolarsError, pl.exceptions.PanicException) as e:
            raise corrupt(path, e) from None
        sizes = df.get_column("rows").list.len().to_numpy()
        self.indptr = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=self.indptr[1:])
        self.rows = df.get_column("rows").explode().to_numpy() if len(df) else np.zeros(0, np.uint32)
        self.tf = df.get_column("tf").explode().to_numpy() if len(df) else np.zeros(0, np.uint32)
        self.vocab = {t: i for i, t in enumerate(df.get_column("term").to_list())}
        # tokens per row = separators + 1 (0 for a row without tokens)
        n = tokens.str.count_matches(SEP, literal=True).fill_null(-1).to_numpy().astype(np.int64) + 1
        self.doc_len = np.where(tokens.fill_null("").str.len_bytes().to_numpy() > 0, n, 0).astype(np.float64)

    def candidates(self, pos: np.ndarray, terms):
        """bm25.Postings of rows ``pos`` (ascending) restricted to ``terms``; document
        lengths are exact."""
        keep, rows, tfs, sizes = [], [], [], []
        for t in sorted(set(terms)):
            i = self.vocab.get(t)
            if i is None:
                continue
            lst = self.rows[self.indptr[i] : self.indptr[i + 1]]
            j = np.searchsorted(lst, pos)
            j[j >= len(lst)] = 0
            hit = np.flatnonzero(lst[j] == pos) if len(lst) else np.zeros(0, np.int64)
            if not len(hit):
                continue
            keep.append(t)
            rows.append(hit.astype(np.int32))
            tfs.append(self.tf[self.indptr[i] + j[hit]].astype(np.float64))
            sizes.append(len(hit))
        return _postings(pos, keep, rows, tfs, sizes, self.doc_len[pos])


def stats_of_tokens(toks: list[list[str]]) -> dict:
    df: Counter = Counter()
    total = 0
    n = 0
    for t in toks:
        if t:
            total += len(t)
            df.update(set(t))
            n += 1
    return {"n_rows": len(toks), "n_docs": n, "total_len": total, "df": df}


def term_tokens(values: list, opts: dict) -> list[list[str]]:
    return text.tokenize_many(values, opts)


def term_stats(values: list, opts: dict) -> dict:
    """Statistics of ``values`` with the puffer analyzer: ``n_rows`` (values),
    ``n_docs`` (values with at least one token), ``total_len`` (tokens), ``df``."""
    return stats_of_tokens(text.tokenize_many(values, opts))


class Reader:
    """An opened per-segment tantivy index."""

    def __init__(self, path, opts: dict, rows: int | None = None):
        import tantivy

        from puffer_cli.index.docs import corrupt

        try:
            self.index = tantivy.Index.open(str(path))
            _register(self.index, opts)
            self.schema = self.index.schema
            self.searcher = self.index.searcher()
        except (OSError, ValueError) as e:  # tantivy raises ValueError for a damaged index
            raise corrupt(path, e) from None
        # doc ids are row positions only in one tantivy segment holding every row (indexes
        # written before empty rows were added as empty documents do not): else read `pos`
        self.direct = self.searcher.num_segments <= 1 and (rows is None or self.searcher.num_docs == rows)

    def search(self, tokens: list[str], limit: int) -> np.ndarray:
        """Row positions of the best ``limit`` rows containing any of ``tokens``."""
        import tantivy

        toks = list(dict.fromkeys(tokens))
        if not toks or limit <= 0:
            return np.zeros(0, np.int64)
        q = tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, FIELD, t)) for t in toks]
        )
        hits = self.searcher.search(q, limit).hits
        if self.direct:
            return np.fromiter((a.doc for _s, a in hits), dtype=np.int64, count=len(hits))
        return np.fromiter((self.searcher.doc(a)["pos"][0] for _s, a in hits), dtype=np.int64, count=len(hits))


# ======================================================================================
# Block postings (format "blk-1"): the one stored form of a segment's full-text index,
# laid out for ranged reads (docs/format-index.md, fts-{tag}.blk).
# ======================================================================================
BLK = "blk-1"
BLOCK = 128  # postings per block
DICT_TERMS = 1024  # terms per dictionary block
ENCODE_POSTINGS = 500_000  # postings encoded per build step (bounded temporaries)
_POW = [(1 << np.arange(w, dtype=np.uint64)).astype(np.uint64) for w in range(33)]


def _widths(mx: np.ndarray) -> np.ndarray:
    """Bits needed for each non-negative value (0 for 0)."""
    mx = np.asarray(mx, dtype=np.uint64)
    out = np.zeros(len(mx), np.int64)
    nz = mx > 0
    out[nz] = np.floor(np.log2(mx[nz].astype(np.float64))).astype(np.int64) + 1
    # float rounding near powers of two
    hi = nz & (mx >= (np.uint64(1) << out.clip(0, 63).astype(np.uint64)))
    out[hi] += 1
    return out


def _padded(count: np.ndarray) -> np.ndarray:
    """Next power of two >= count (values per block as packed in a matrix)."""
    c = np.maximum(np.asarray(count, np.int64), 1)
    return (1 << np.ceil(np.log2(c)).astype(np.int64)).astype(np.int64)


def _pack(vals: np.ndarray, bstart: np.ndarray, count: np.ndarray, width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bit-pack blocks of values: block j = vals[bstart[j] : bstart[j] + count[j]], each in
    ``width[j]`` bits, value-major, little-endian bit order, each block byte aligned.
    Returns (bytes per block, the concatenated uint8 data)."""
    nbytes = (count * width + 7) // 8
    off = np.zeros(len(count) + 1, np.int64)
    np.cumsum(nbytes, out=off[1:])
    out = np.zeros(int(off[-1]), np.uint8)
    pad = _padded(count)
    for w in np.unique(width):
        if w == 0:
            continue
        for p in np.unique(pad[width == w]):
            sel = np.flatnonzero((width == w) & (pad == p))
            j = np.arange(p)
            idx = bstart[sel, None] + j[None, :]
            ok = j[None, :] < count[sel, None]
            m = np.where(ok, vals[np.where(ok, idx, 0)], 0).astype(np.uint64)
            bits = ((m[:, :, None] >> np.arange(w, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
            packed = np.packbits(bits.reshape(len(sel), p * w), axis=1, bitorder="little")
            nb = nbytes[sel]
            cols = np.arange(packed.shape[1])
            keep = cols[None, :] < nb[:, None]
            dst = off[sel, None] + cols[None, :]
            out[dst[keep]] = packed[keep]
    return nbytes, out


def _unpack(buf: np.ndarray, boff: np.ndarray, count: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pack`: the values of every block, concatenated (uint32).
    ``boff``: each block's byte offset in ``buf``."""
    total = int(count.sum())
    out = np.zeros(total, np.uint32)
    vstart = np.zeros(len(count) + 1, np.int64)
    np.cumsum(count, out=vstart[1:])
    pad = _padded(count)
    buf = np.concatenate([buf, np.zeros(8 * 32 * BLOCK // 8, np.uint8)])  # reads past a short last block
    for w in np.unique(width):
        if w == 0:
            continue
        for p in np.unique(pad[width == w]):
            sel = np.flatnonzero((width == w) & (pad == p))
            nb = (p * w + 7) // 8
            raw = buf[boff[sel, None] + np.arange(nb)[None, :]]
            bits = np.unpackbits(raw, axis=1, bitorder="little")[:, : p * w].reshape(len(sel), p, w)
            v = bits.astype(np.uint64) @ _POW[w]
            j = np.arange(p)
            ok = j[None, :] < count[sel, None]
            dst = vstart[sel, None] + j[None, :]
            out[dst[ok]] = v[ok].astype(np.uint32)
    return out


def _encode_terms(docs: np.ndarray, tfs: np.ndarray, lens: np.ndarray, tptr: np.ndarray, base: int):
    """Encode the postings of consecutive terms (term i: docs[tptr[i]:tptr[i+1]], ascending).
    Returns (bytes, per-term (offset relative to ``base``, length, blocks))."""
    n_terms = len(tptr) - 1
    df = np.diff(tptr)
    nblk = (df + BLOCK - 1) // BLOCK
    bptr = np.zeros(n_terms + 1, np.int64)
    np.cumsum(nblk, out=bptr[1:])
    nb = int(bptr[-1])
    term_of = np.repeat(np.arange(n_terms), nblk)
    k = np.arange(nb) - bptr[term_of]  # block index within its term
    bstart = tptr[term_of] + k * BLOCK
    bend = np.minimum(bstart + BLOCK, tptr[term_of + 1])
    count = bend - bstart
    delta = np.zeros(len(docs), np.int64)
    d64 = docs.astype(np.int64)
    delta[1:] = d64[1:] - d64[:-1]
    delta[bstart] = 0
    first = d64[bstart]
    last = d64[bend - 1]
    maxd = np.maximum.reduceat(delta, bstart) if nb else np.zeros(0, np.int64)
    tf1 = tfs.astype(np.int64) - 1
    maxt = np.maximum.reduceat(tf1, bstart) if nb else np.zeros(0, np.int64)
    minl = np.minimum.reduceat(lens[docs].astype(np.int64), bstart) if nb else np.zeros(0, np.int64)
    dw, tw = _widths(maxd), _widths(maxt)
    dbytes, ddata = _pack(delta, bstart, count, dw)
    tbytes, tdata = _pack(tf1, bstart, count, tw)
    # per term: [meta: first u32, last u32, max_tf u32, min_len u32, dw u8, tw u8 per block]
    #           [block data: doc deltas then tf-1, block after block]
    blkbytes = dbytes + tbytes
    metab = 18 * nblk
    databytes = np.add.reduceat(blkbytes, bptr[:-1]) if nb else np.zeros(0, np.int64)
    databytes = np.where(nblk > 0, databytes, 0)
    tlen = metab + databytes
    toff = np.zeros(n_terms + 1, np.int64)
    np.cumsum(tlen, out=toff[1:])
    out = np.zeros(int(toff[-1]), np.uint8)
    # meta arrays, written column by column into each term's head
    cols = [
        (first.astype("<u4"), 4),
        (last.astype("<u4"), 4),
        ((maxt + 1).astype("<u4"), 4),
        (minl.astype("<u4"), 4),
        (dw.astype("u1"), 1),
        (tw.astype("u1"), 1),
    ]
    put_block_heads(out, toff[term_of], nblk[term_of], k, cols)
    # block data
    ddst_start = toff[term_of] + metab[term_of]
    within = np.zeros(nb, np.int64)  # bytes of earlier blocks of the same term
    cum = np.zeros(nb + 1, np.int64)
    np.cumsum(blkbytes, out=cum[1:])
    within = cum[:-1] - cum[bptr[term_of]]
    dstart = ddst_start + within
    scatter(out, ddata, dbytes, dstart)
    scatter(out, tdata, tbytes, dstart + dbytes)
    return out, toff[:-1] + base, tlen, nblk


def _encode_group(g: tuple[int, int], docs, tfs, lens, tptr):
    """:func:`_encode_terms` of terms ``g[0] .. g[1] - 1`` (offsets from the group's start)."""
    i, j = g
    sl = slice(int(tptr[i]), int(tptr[j]))
    return _encode_terms(docs[sl], tfs[sl], lens, tptr[i : j + 1] - tptr[i], 0)


def put_block_heads(out: np.ndarray, head: np.ndarray, nblk: np.ndarray, k: np.ndarray, cols: list) -> None:
    """Per-block metadata into each entry's head, column by column (``cols``: (values, bytes
    each) per column): block ``k`` of an entry of ``nblk`` blocks whose head is at ``head``
    puts a column's value at ``head + (bytes of the columns before) * nblk + k * bytes``
    (the blk-1 and spk-1 block heads)."""
    col_off = 0
    for arr, size in cols:
        b = arr.view(np.uint8).reshape(len(arr), size)
        dst = head + col_off * nblk + k * size
        out[dst[:, None] + np.arange(size)[None, :]] = b
        col_off += size


def scatter(out: np.ndarray, data: np.ndarray, sizes: np.ndarray, dst: np.ndarray) -> None:
    """Copy the consecutive pieces of ``data`` (``sizes`` bytes each) to offsets ``dst`` of ``out``."""
    if not len(data):
        return
    src = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=src[1:])
    owner = np.repeat(np.arange(len(sizes)), sizes)
    out[dst[owner] + (np.arange(len(data)) - src[owner])] = data


def _dict_block(terms: list[str], df, off, ln, nb) -> bytes:
    import zlib

    enc = [t.encode() for t in terms]
    tl = np.fromiter((len(e) for e in enc), np.uint32, len(enc))
    parts = [
        np.array([len(terms)], "<u4").tobytes(),
        tl.astype("<u4").tobytes(),
        b"".join(enc),
        np.asarray(df, "<u4").tobytes(),
        np.asarray(off, "<u8").tobytes(),
        np.asarray(ln, "<u8").tobytes(),
        np.asarray(nb, "<u4").tobytes(),
    ]
    return zlib.compress(b"".join(parts), 1)


class DictBlock:
    """A decoded dictionary block: its terms (sorted, as UTF-8 bytes, whose order is the
    strings' order) looked up by bisection, and per term (df, offset, length, blocks).
    Built in one pass of slices (a dict of every term cost ~2.5 ms per 1,024-term block,
    paid by each segment a query's term is new to)."""

    __slots__ = ("terms", "df", "off", "ln", "nb")

    def __init__(self, terms: list[bytes], df, off, ln, nb):
        self.terms, self.df, self.off, self.ln, self.nb = terms, df, off, ln, nb

    def _at(self, t: str) -> int:
        import bisect

        e = t.encode()
        i = bisect.bisect_left(self.terms, e)
        return i if i < len(self.terms) and self.terms[i] == e else -1

    def __contains__(self, t: str) -> bool:
        return self._at(t) >= 0

    def __getitem__(self, t: str) -> tuple[int, int, int, int]:
        i = self._at(t)
        if i < 0:
            raise KeyError(t)
        return (int(self.df[i]), int(self.off[i]), int(self.ln[i]), int(self.nb[i]))

    def __len__(self) -> int:
        return len(self.terms)


def _read_dict_block(data: bytes) -> DictBlock:
    import zlib

    raw = zlib.decompress(data)
    n = int(np.frombuffer(raw, "<u4", 1)[0])
    p = 4
    tl = np.frombuffer(raw, "<u4", n, p).astype(np.int64)
    p += 4 * n
    tb = int(tl.sum())
    blob = raw[p : p + tb]
    p += tb
    df = np.frombuffer(raw, "<u4", n, p)
    p += 4 * n
    off = np.frombuffer(raw, "<u8", n, p)
    p += 8 * n
    ln = np.frombuffer(raw, "<u8", n, p)
    p += 8 * n
    nb = np.frombuffer(raw, "<u4", n, p)
    ends = np.cumsum(tl).tolist()
    starts = [0, *ends[:-1]]
    return DictBlock([blob[s:e] for s, e in zip(starts, ends)], df, off, ln, nb)


def build_blocks(values, opts: dict, new: np.ndarray | None = None) -> tuple[bytes, dict, dict, dict]:
    """The block index of one FTS field of a segment (``values``: one per row: str,
    list[str] or None; a polars Series or a list).  Analysed in chunks (index/ftsbuild.py;
    memory: the postings as int arrays, not token lists).  Returns (file bytes, manifest
    entry fields, BM25 statistics of every row and of the rows ``new`` marks (default all),
    as :func:`stats_of_tokens` gives them)."""
    from puffer_cli.index.ftsbuild import inverted

    n = len(values)
    inv = inverted(values, opts)
    terms, tptr, docs, tfs, lens = inv.terms, inv.tptr, inv.docs, inv.tfs, inv.lens
    del inv
    df_all = np.diff(tptr)
    # statistics: of every row, of the new rows
    stats = {
        "n_rows": n,
        "n_docs": int(np.count_nonzero(lens)),
        "total_len": int(lens.sum()),
        "df": Counter(dict(zip(terms, df_all.tolist()))),
    }
    if new is None:
        stats_new = stats
    else:
        isnew = np.asarray(new, bool)
        # every term has a posting (df >= 1): reduceat sums each term's run
        cnt = np.add.reduceat(isnew[docs].astype(np.int64), tptr[:-1]) if len(docs) else np.zeros(len(terms), np.int64)
        stats_new = {
            "n_rows": int(isnew.sum()),
            "n_docs": int(np.count_nonzero(lens[isnew])),
            "total_len": int(lens[isnew].sum()),
            "df": Counter({t: int(c) for t, c in zip(terms, cnt.tolist()) if c}),
        }
    # lengths section
    mx = int(lens.max()) if n else 0
    ldt = "u1" if mx < 1 << 8 else "u2" if mx < 1 << 16 else "u4"
    lbytes = lens.astype("<" + ldt).tobytes()
    pieces = [lbytes]
    pos = len(lbytes)
    # postings, a group of terms at a time (bounded temporaries), groups encoded in two
    # threads (numpy's packing runs without the GIL), placed in term order
    t_off = np.zeros(len(terms), np.int64)
    t_len = np.zeros(len(terms), np.int64)
    t_nb = np.zeros(len(terms), np.int64)
    groups = []
    i = 0
    while i < len(terms):
        j = int(np.searchsorted(tptr, tptr[i] + ENCODE_POSTINGS, side="right"))
        j = max(i + 1, min(j - 1, len(terms)))
        groups.append((i, j))
        i = j

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2, thread_name_prefix="puffer-fts-encode") as pool:
        encoded = pool.map(_encode_group, groups, *([a] * len(groups) for a in (docs, tfs, lens, tptr)))
        for (i, j), (data, off, ln, nb) in zip(groups, encoded):
            t_off[i:j], t_len[i:j], t_nb[i:j] = off + pos, ln, nb
            pieces.append(data.tobytes())
            pos += len(data)
    del docs, tfs
    # dictionary blocks
    firsts, doffs = [], [pos]
    for a in range(0, len(terms), DICT_TERMS):
        b = min(a + DICT_TERMS, len(terms))
        blob = _dict_block(terms[a:b], df_all[a:b], t_off[a:b], t_len[a:b], t_nb[a:b])
        pieces.append(blob)
        pos += len(blob)
        firsts.append(terms[a])
        doffs.append(pos)
    entry = {
        "format": BLK,
        "block": BLOCK,
        "rows": n,
        "lengths": {"dtype": ldt, "off": 0, "end": len(lbytes)},
        "dict": {"first": firsts, "off": doffs},
        "terms": len(terms),
    }
    return b"".join(pieces), entry, stats, stats_new


class TermBlocks:
    """One term's postings in a segment: rows (ascending, int32) and tf (float32), decoded on
    first use, or with other terms in one batch (:func:`decode_terms`); ``serial``: a number
    no other TermBlocks of this process has, and ``scope``: (store url, namespace) or () (the
    key of its window bounds, fts_topk.SCORED, which caches.forget drops with the namespace)."""

    __slots__ = ("raw", "damage", "df", "serial", "scope", "_post")

    def __init__(self, data: bytes, nblocks: int, df: int, damage=None, scope: tuple = ()):
        """``damage(error, missing) -> exception``: what a decoding error raises (the segment
        names the file and the fix)."""
        self.raw: tuple[bytes, int, int] | None = (data, nblocks, df)
        self.damage = damage
        self.df = df
        self.serial = next(_SERIALS)
        self.scope = scope
        self._post: tuple[np.ndarray, np.ndarray] | None = None  # (rows, tf), set at once

    @property
    def rows(self) -> np.ndarray:
        return self._decoded()[0]

    @property
    def tf(self) -> np.ndarray:
        return self._decoded()[1]

    def _decoded(self) -> tuple[np.ndarray, np.ndarray]:
        if self._post is None:
            decode_terms([self])
        assert self._post is not None
        return self._post

    def nbytes(self) -> int:
        """Memory held: 8 bytes a posting decoded (its encoded bytes take less)."""
        return 8 * self.df + 200


_SERIALS = itertools.count()


def decode_terms(tbs) -> None:
    """Decode every :class:`TermBlocks` of ``tbs`` not decoded yet, in one batch
    (fts_topk.decode_many).  Threads may decode the same term twice, never half of it: a term's
    fields are set together, after its decoding."""
    from puffer_cli.index import fts_topk

    todo = [tb for tb in tbs if tb.raw is not None]
    raws = [tb.raw for tb in todo]
    if any(r is None for r in raws):  # decoded by another thread meanwhile
        todo, raws = [tb for tb, r in zip(todo, raws) if r is not None], [r for r in raws if r is not None]
    if not todo:
        return
    try:
        got = fts_topk.decode_many(raws)
    except fts_topk.Damaged as e:
        bad = todo[e.at]
        raise (bad.damage(e, False) if bad.damage is not None else e) from e
    for tb, post in zip(todo, got):
        tb._post = post
        tb.raw = tb.damage = None


#: decoded terms of every segment, by (store url, namespace, file key, term): warm queries
#: decode a term once per process (bounded by the postings' memory)
TERMS = caches.lru("index.fts_terms", 1 << 20, maxbytes=512 << 20, weigh=TermBlocks.nbytes)


def _guarded(fn):
    """A BlockIndex method whose reads and decoding report damage through ``self.damage``
    (the segment names the file and the fix), not as a decoder's own error."""
    import functools
    import zlib

    @functools.wraps(fn)
    def run(self, *args, **kw):
        try:
            return fn(self, *args, **kw)
        except FileNotFoundError as e:
            raise self.damage(e, True) from e
        except (zlib.error, ValueError, IndexError, EOFError, OSError) as e:
            raise self.damage(e, False) from e

    return run


def _no_report(e: BaseException, missing: bool) -> BaseException:
    return e


class BlockIndex:
    """Reader of a segment's ``fts-{tag}.blk``: the term dictionary and postings of the
    terms a query asks for by ranged reads (memoized), document lengths read whole."""

    MAX_TERMS = 4096  # decoded terms kept
    MAX_KNOWN = 1 << 16  # terms whose dictionary entry (or absence) is remembered

    def __init__(self, entry: dict, read_ranges, damage=_no_report, cache_key: tuple | None = None):
        """``read_ranges([(start, end)]) -> [bytes]``: one batch of ranged reads of the file;
        ``damage(error, missing) -> exception``: what to raise when the file is gone or does
        not decode; ``cache_key``: (store url, namespace, file key) naming the file in the
        process cache of decoded terms (:data:`TERMS`), else they are kept here."""
        from collections import OrderedDict

        self.cache_key = cache_key
        self.damage = damage
        self.entry = entry
        self.read = read_ranges
        self.rows = int(entry["rows"])
        self._dict: dict[int, DictBlock] = {}
        self._known: dict[str, tuple[int, int, int, int] | None] = {}
        self._terms: OrderedDict = OrderedDict()
        self._lens: np.ndarray | None = None
        self._lock = __import__("threading").RLock()

    def _dict_ids(self, terms) -> list[int]:
        import bisect

        first = self.entry["dict"]["first"]
        out = set()
        for t in terms:
            i = bisect.bisect_right(first, t) - 1
            if i >= 0:
                out.add(i)
        return sorted(out)

    @_guarded
    def prefetch(self, terms, lengths: bool = True) -> None:
        """Fetch (one batch of ranged reads) the dictionary blocks of ``terms`` and, with
        ``lengths``, the document lengths."""
        offs = self.entry["dict"]["off"]
        with self._lock:
            need = [i for i in self._dict_ids(terms) if i not in self._dict]
            want_len = lengths and self._lens is None
        ranges = [(offs[i], offs[i + 1]) for i in need]
        le = self.entry["lengths"]
        if want_len:
            ranges.append((int(le["off"]), int(le["end"])))
        if not ranges:
            return
        got = self.read(ranges)
        with self._lock:
            for i, blob in zip(need, got):
                self._dict[i] = _read_dict_block(blob)
            if want_len:
                # as stored (u1 / u2 / u4): 1-4 bytes a row to gather from, not float64's 8
                self._lens = np.frombuffer(got[-1], "<" + le["dtype"]).astype(le["dtype"], copy=False)

    def lengths(self) -> np.ndarray:
        """Every row's document length (tokens), in its stored unsigned dtype."""
        if self._lens is None:
            self.prefetch([], True)
        assert self._lens is not None
        return self._lens

    def entries(self, terms) -> dict[str, tuple[int, int, int, int]]:
        """(df, offset, length, blocks) of each of ``terms`` present in the segment (a term
        looked up once is remembered, present or not, up to MAX_KNOWN terms)."""
        terms = list(dict.fromkeys(terms))
        with self._lock:
            got = {t: self._known[t] for t in terms if t in self._known}
        new = [t for t in terms if t not in got]
        if new:
            self.prefetch(new, lengths=False)
            with self._lock:
                for t in new:
                    ids = self._dict_ids([t])
                    got[t] = self._dict[ids[0]][t] if ids and t in self._dict[ids[0]] else None
                if len(self._known) + len(new) > self.MAX_KNOWN:
                    self._known.clear()
                self._known.update((t, got[t]) for t in new)
        return {t: e for t in terms if (e := got[t]) is not None}

    def _cached(self, t: str) -> TermBlocks | None:
        if self.cache_key is not None:
            return TERMS.get((*self.cache_key, t))
        tb = self._terms.get(t)
        if tb is not None:
            self._terms.move_to_end(t)
        return tb

    def _keep(self, t: str, tb: TermBlocks) -> None:
        if self.cache_key is not None:
            TERMS.put((*self.cache_key, t), tb)
            return
        self._terms[t] = tb
        while len(self._terms) > self.MAX_TERMS:
            self._terms.popitem(last=False)

    @_guarded
    def postings(self, terms) -> dict[str, TermBlocks]:
        """The decoded postings of ``terms`` present in the segment (one batch of reads)."""
        ent = self.entries(terms)
        out: dict[str, TermBlocks] = {}
        with self._lock:
            for t in ent:
                tb = self._cached(t)
                if tb is not None:
                    out[t] = tb
        need = [t for t in ent if t not in out]
        if need:
            got = self.read([(ent[t][1], ent[t][1] + ent[t][2]) for t in need])
            with self._lock:
                for t, blob in zip(need, got):
                    if len(blob) != ent[t][2]:
                        raise ValueError(f"{len(blob)} bytes read for term {t!r}, its entry says {ent[t][2]}")
                    tb = TermBlocks(blob, ent[t][3], ent[t][0], self.damage, tuple(self.cache_key or ())[:2])
                    out[t] = tb
                    self._keep(t, tb)
        return out

    @_guarded
    def candidates(self, pos: np.ndarray, terms, posts: dict[str, TermBlocks] | None = None):
        """bm25.Postings of rows ``pos`` (ascending) restricted to ``terms`` (exact lengths);
        ``posts``: those terms' postings when the caller holds them (else looked up)."""
        if posts is None:
            posts = self.postings(sorted(set(terms)))
        keep, rows, tfs, sizes = [], [], [], []
        p32 = np.asarray(pos).astype(np.int32)  # the postings' dtype: no conversion of the list
        for t in sorted(posts):
            tb = posts[t]
            lst = tb.rows
            if not len(lst) or not len(pos):
                continue
            j = np.searchsorted(lst, p32)
            j[j >= len(lst)] = 0
            hit = np.flatnonzero(lst[j] == p32)
            if not len(hit):
                continue
            keep.append(t)
            rows.append(hit.astype(np.int32))
            tfs.append(tb.tf[j[hit]].astype(np.float64))
            sizes.append(len(hit))
        return _postings(pos, keep, rows, tfs, sizes, self.lengths()[pos].astype(np.float64))


def prune(
    posts: dict[str, TermBlocks],
    weights: dict[str, float],
    idf: dict[str, float],
    lens: np.ndarray,
    sel: np.ndarray | None,
    k: int,
    k1: float,
    b: float,
    avg: float,
) -> np.ndarray:
    """The rows (ascending, passing ``sel``) holding the exact top ``k`` of one BM25 clause
    ``sum_t weights[t] * bm25(t, d)`` and their near-ties: windows of rows scored in
    decreasing upper bound until no other can reach the k-th best (one segment's
    fts_topk.top_rows_many; a query's segments go through :func:`prune_many`)."""
    from puffer_cli.index import fts_topk

    decode_terms(posts.values())
    return fts_topk.top_rows_many([(posts, lens, sel)], weights, idf, k, k1, b, avg)[0]


class PrunePart(NamedTuple):
    """One segment's share of a pruned BM25 clause (:func:`prune_many`): its query terms'
    postings, document lengths and selected rows; the clause's weights, idf and BM25
    parameters (namespace-wide: the same in every part)."""

    posts: dict[str, TermBlocks]
    lens: np.ndarray
    sel: np.ndarray | None
    weights: dict[str, float]
    idf: dict[str, float]
    k1: float
    b: float
    avg: float


def prune_many(parts: list[PrunePart], k: int) -> list[np.ndarray]:
    """:func:`prune` of several segments at once (one pass over their windows): each part's
    rows holding the clause's exact top ``k`` over all of them, and their near-ties."""
    from puffer_cli.index import fts_topk

    if not parts:
        return []
    decode_terms([tb for p in parts for tb in p.posts.values()])  # one batch for every segment
    p0 = parts[0]
    idf: dict[str, float] = {}
    for p in parts:
        idf.update(p.idf)
    return fts_topk.top_rows_many([(p.posts, p.lens, p.sel) for p in parts], p0.weights, idf, k, p0.k1, p0.b, p0.avg)


def sum_stats(parts) -> dict:
    """The sum of :func:`stats_of_tokens`-like statistics of disjoint row sets."""
    df: Counter = Counter()
    n = d = tot = 0
    for p in parts:
        n += p["n_rows"]
        d += p["n_docs"]
        tot += p["total_len"]
        df.update(p["df"])
    return {"n_rows": n, "n_docs": d, "total_len": tot, "df": df}


def _postings(pos: np.ndarray, keep: list, rows: list, tfs: list, sizes: list, lens: np.ndarray):
    """The bm25.Postings of rows ``pos`` from each kept term's matching rows and tfs (both
    full-text readers, stored postings and blocks, collect the same parts)."""
    from puffer_cli.text.bm25 import Postings

    indptr = np.zeros(len(keep) + 1, np.int64)
    np.cumsum(sizes, out=indptr[1:])
    return Postings(
        len(pos),
        keep,
        {t: k for k, t in enumerate(keep)},
        indptr,
        np.concatenate(rows) if rows else np.zeros(0, np.int32),
        np.concatenate(tfs) if tfs else np.zeros(0, np.float64),
        lens,
        int(lens.sum()),
    )
