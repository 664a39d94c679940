"""Writing one index segment: the doc store, the id column, the f32 vectors, one
IVF-SQ8 index per vector field and one block index (term dictionary + posting blocks) per FTS field
(docs/format-index.md), through :class:`Writer`, which uploads new immutable files (in
parallel on a remote store) and keeps them in the local cache."""

from __future__ import annotations

import uuid

import numpy as np
import polars as pl

from puffer_cli.index import docs as D
from puffer_cli.index import fts, ivf, liststats, muvera, paged, ranged, sparse
from puffer_cli.index.hooks import crash
from puffer_cli.index.manifest import ann_sig, fts_sig
from puffer_cli.schema import types
from puffer_cli.store import Store, layout
from puffer_cli.store.filecache import Cache


def note(progress, stage, done=0, total=None):
    if progress:
        progress(stage, done, total)


class Writer:
    """Uploads new immutable files; on a remote store in parallel (``drain()`` waits
    for all of them: the manifest is written only after every file it names)."""

    def __init__(self, store: Store, cache: Cache, rep):
        self.store, self.cache, self.rep = store, cache, rep
        self.keys: list[str] = []
        self.sizes: dict[str, int] = {}  # key -> bytes (the manifest records them: --repair checks them)
        self._pool = None
        self._futs: list = []
        if store.is_remote:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(8, thread_name_prefix="puffer-upload")

    def _write(self, key: str, data: bytes, cache: bool) -> None:
        self.store.write(key, data)
        if cache:
            self.cache.put(self.store, key, data)

    def put(self, key: str, data: bytes, cache: bool = True) -> str:
        """Upload ``data`` as ``key`` (and keep it in the local cache unless ``cache`` is false)."""
        if self._pool is not None:
            self._futs.append(self._pool.submit(self._write, key, data, cache))
        else:
            self._write(key, data, cache)
        self.keys.append(key)
        self.sizes[key] = len(data)
        self.rep.files_written += 1
        self.rep.bytes_written += len(data)
        return key

    def put_chunks(self, key: str, chunks, size: int) -> str:
        """Write the ``size`` bytes ``chunks`` yield as ``key`` without holding them all (the
        store's ``write_chunks``; a local store only: a remote one takes parts, ``paged``);
        not cached (the local store is its own copy)."""
        n = self.store.write_chunks(key, chunks)
        if n != size:
            raise ValueError(f"{key}: {n} bytes written, {size} expected")
        self.keys.append(key)
        self.sizes[key] = n
        self.rep.files_written += 1
        self.rep.bytes_written += n
        return key

    def drain(self) -> None:
        futs, self._futs = self._futs, []
        for f in futs:
            f.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def prefetch_keys(segs: list[dict], books: dict | None = None, stacks: dict | None = None) -> list[str]:
    """What a cold reader fetches with the manifest (the index pointer's ``prefetch``): every
    IVF route, every tombstone file, and the lists files a cold query reads whole
    (``ranged.lists_read_whole``) of segments whose f32 vectors are too big to be read whole
    (smaller ones are searched exactly, without their lists): so such a small segment needs
    no round trip of its own before the big segments' ranged reads."""
    keys = []
    for s in segs:
        for v in s.get("ann", {}).values():
            if v.get("route"):
                keys.append(v["route"])
            lists, dims = v.get("lists"), int(v.get("dims", 0))
            small = lists and not lists.get("parts") and ranged.lists_read_whole(v.get("vectors", 0), dims)
            if small and not ranged.vectors_read_whole(s["rows"], dims):
                keys.append(lists["key"])
        for v in s.get("mv", {}).values():  # multi-vector fields: the routing, offsets, token centroids
            keys += [v["route"], v["offsets"]] + ([v["plaid"]["key"]] if v.get("plaid") else [])
    keys += [b["key"] for b in (books or {}).values()]  # the shared routing (format 3)
    keys += [e["route"] for e in (stacks or {}).values()]  # list-major stacks' routes (index/stack.py)
    keys.sort()
    return keys + sorted(s["tombstones"] for s in segs if s.get("tombstones"))


def vector_prefetch_keys(segs: list[dict], books: dict | None = None, stacks: dict | None = None) -> list[str]:
    """The :func:`prefetch_keys` only a query ranked by a vector reads (routes, lists, books,
    stacks' routes, multi-vector routing): the pointer's ``prefetch_vector``, which other
    queries skip."""
    tombs = {s["tombstones"] for s in segs if s.get("tombstones")}
    return [k for k in prefetch_keys(segs, books, stacks) if k not in tombs]


def segment_files(s: dict) -> list[str]:
    out = [s["attrs"]] if s.get("attrs") else paged.files(s["docs"])
    out += paged.files(s["ids"]) if s.get("ids") else []
    for v in s.get("vectors", {}).values():
        out += paged.files(v)
    for v in s.get("ann", {}).values():
        out += [v[k] for k in ("key", "route") if v.get(k)] + [
            x for k in ("lists", "lists4") if v.get(k) for x in paged.files(v[k])
        ]
    for v in s.get("sparse", {}).values():
        out += paged.files(v)
    for v in s.get("mv", {}).values():
        out += muvera.files(v)
    for v in s.get("fts", {}).values():
        if v.get("format"):
            out += paged.files(v)
            continue
        out += v["files"]
        out += [v[k] for k in ("tokens", "postings") if v.get(k)]
    if s.get("tombstones"):
        out.append(s["tombstones"])
    return out


def write_segment(
    w: Writer,
    ns: str,
    gen: int,
    frame: pl.DataFrame,
    schema: dict,
    metric: str | None,
    progress,
    new: np.ndarray | None = None,
    books: dict | None = None,
) -> dict:
    """Write one segment of ``frame``'s rows (``new``: which rows are new documents, for the
    BM25 statistics; default all; ``books``: vector field -> the namespace's shared
    ``ivf.Book`` its lists follow, format 3; a field without one gets its own IVF).  The
    rows are written in the list order of the first vector field's IVF, so a list is a
    contiguous run of rows in every file."""
    name = f"seg-{gen:06d}-{uuid.uuid4().hex[:8]}"
    books = books or {}
    frame, fits, new = _in_list_order(frame, schema, metric, progress, new, books)
    seg: dict = {
        "name": name,
        "generation": gen,
        "rows": frame.height,
        "live": frame.height,
        "dead": 0,
        "tombstones": None,
        "vectors": {},
        "ann": {},
        "fts": {},
    }

    def key(file: str) -> str:
        return layout.index_segment_file(ns, gen, name, file)

    note(progress, "doc store", 0, frame.height)
    seg.update(write_docs(w, key, frame, schema))
    ids = frame.get_column("id")
    if ids.dtype in (pl.UInt64, pl.Int64) and not ids.null_count():
        kind = "u64" if ids.dtype == pl.UInt64 else "i64"  # fixed width: a cold query reads just its rows' ids
        data = ids.to_numpy().astype("<" + kind[0] + "8").tobytes()
        seg["ids"] = {**paged.put(w, key(f"ids.{kind}"), data), "dtype": kind}
    for f in D.vector_fields(schema):
        seg["vectors"][f], seg["ann"][f] = _write_vectors(
            w, key, frame, f, schema, metric, fits.get(f), progress, books.get(f)
        )
    for f in muvera.multi_fields(schema):  # multi-vector: token file + MUVERA FDE IVF (index/muvera.py)
        seg.setdefault("mv", {})[f] = muvera.write(w, key, frame, f, schema, metric)
    keep = np.asarray(new, bool) if new is not None else None
    seg["_fts_stats"], seg["_fts_new"] = {}, {}
    for f in D.fts_fields(schema):
        seg["fts"][f], seg["_fts_stats"][f], seg["_fts_new"][f] = _write_fts(w, key, frame, f, schema, progress, keep)
    for f in sparse_fields(schema):
        seg.setdefault("sparse", {})[f] = _write_sparse(w, key, frame, f, progress)
    return seg


def sparse_fields(schema: dict) -> list[str]:
    """The ``{}f16`` attributes with a sparse index (``sparse_knn``)."""
    return [k for k, v in schema.items() if v.get("type") == types.SPARSE and v.get("sparse_knn")]


def _write_sparse(w: Writer, key, frame, f: str, progress) -> dict:
    """The sparse index (``sparse-{tag}.blk``, format spk-1) of ``{}f16`` field ``f``: its manifest entry."""
    note(progress, f"sparse {f}", 0, frame.height)
    col = frame.get_column(f) if f in frame.columns else pl.Series([None] * frame.height, dtype=pl.String)
    data, entry = sparse.build(col)
    entry.update(paged.put(w, key(f"sparse-{D.field_tag(f)}.blk"), data))
    note(progress, f"sparse {f}", frame.height, frame.height)
    return entry


def write_docs(w: Writer, key, frame: pl.DataFrame, schema: dict) -> dict:
    """The doc store of a segment: its manifest fields (``docs``: the column store)."""
    data, ent = D.docs_bytes(frame, schema)
    return {"docs": {**paged.put(w, key(D.DOCS), data), **ent}}


def _in_list_order(frame: pl.DataFrame, schema: dict, metric: str | None, progress, new, books: dict):
    """``frame`` (and ``new``) permuted into the list order of the first vector field's IVF,
    and that field's fit (already permuted)."""
    vf = D.vector_fields(schema)
    if not vf:
        return frame, {}, new
    f0 = vf[0]
    note(progress, f"ivf {f0}", 0, frame.height)
    dims0 = types.vector_dims(schema[f0]["type"])
    assert dims0 is not None  # f0 is a vector field
    mat0 = D.vector_matrix(frame, f0, dims0)

    def prog(stage, done, total):
        note(progress, f"ivf {f0}: {stage}", done, total)

    if books.get(f0) is not None:
        fit0 = books[f0].fit(mat0, prog)
    else:
        fit0 = ivf.fit(mat0, ivf.build_options(schema[f0])["list_rows"], metric, progress=prog)
    perm = fit0.row_order()
    return frame[pl.Series(perm)], {f0: fit0.permuted(perm)}, (new[perm] if new is not None else None)


def _write_vectors(w: Writer, key, frame, f: str, schema: dict, metric, fit, progress, book=None) -> tuple[dict, dict]:
    """The f32 vectors and the IVF-SQ8 index of vector field ``f``: (vectors entry, ann
    entry); ``book``: the shared ``ivf.Book`` the lists follow (else the segment's own)."""
    dims = types.vector_dims(schema[f]["type"])
    assert dims is not None  # f is a vector field
    mat = D.vector_matrix(frame, f, dims)
    vectors = {**paged.put(w, key(f"vec-{D.field_tag(f)}.f32"), mat.astype("<f4").tobytes()), "dims": dims}
    crash("mid_segment")
    opts = ivf.build_options(schema[f])
    bits = 4 if opts.get("codes") == "int4" else 8
    # the int4 copy filtered probes read (ivf "Filter codes"): format 2, int8, wide vectors
    filter_codes = book is None and bits == 8 and ivf.FILTER_CODES and dims >= ivf.FILTER_CODES_MIN_DIMS
    note(progress, f"ivf {f}", 0, frame.height)
    if book is not None:
        route, lists, info = ivf.encode(fit or book.fit(mat), mat, book.id, bits=bits)
        info["book"] = book.id
    else:
        fit = fit or ivf.fit(mat, opts["list_rows"], metric)
        nlist = len(fit.book.centroids) if fit.book is not None else 0
        # the rows are in this field's list order if it is the first vector field: per-list statistics
        stats = liststats.build(frame, schema, fit.labels, nlist)
        route, lists, info = ivf.encode(fit, mat, bits=bits, extra=stats)
    tag = D.field_tag(f)
    ann = {
        **opts,
        **info,
        "route": w.put(key(f"ivf-{tag}.route.npz"), route),
        "lists": paged.put(w, key(f"ivf-{tag}.lists"), lists),
        "dims": dims,
        "sig": ann_sig(schema[f], metric),
    }
    if filter_codes:
        del lists
        ann["lists4"] = paged.put(w, key(f"ivf-{tag}.lists4"), ivf.lists_file(fit, mat, 4)[0])
        crash("mid_filter_codes")  # the filter codes written, the segment not finished
    note(progress, f"ivf {f}", frame.height, frame.height)
    return vectors, ann


def _write_fts(w: Writer, key, frame, f: str, schema: dict, progress, new) -> tuple[dict, dict, dict]:
    """The block index (``fts-{tag}.blk``, format blk-1) of FTS field ``f``: (manifest entry,
    BM25 statistics of every row, of the ``new`` rows)."""
    opts = schema[f]["full_text_search"]
    note(progress, f"fts {f}", 0, frame.height)
    col = frame.get_column(f) if f in frame.columns else pl.Series([None] * frame.height, dtype=pl.String)
    data, entry, st_all, st_new = fts.build_blocks(col, opts, new)
    entry.update(paged.put(w, key(f"fts-{D.field_tag(f)}.blk"), data))
    crash("mid_fts")  # the block index written, the segment not finished
    entry["sig"] = fts_sig(schema[f])
    note(progress, f"fts {f}", frame.height, frame.height)
    return entry, st_all, st_new
