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

import os
import shutil
import tempfile
from collections import Counter

import numpy as np

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
        from puffer_cli.text.bm25 import Postings

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
        indptr = np.zeros(len(keep) + 1, np.int64)
        np.cumsum(sizes, out=indptr[1:])
        lens = self.doc_len[pos]
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
