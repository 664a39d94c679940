"""Reading an index generation, and the indexed query fast path.

``open_generation(ns, pointer)`` opens the manifest's segments lazily (each file
is fetched into the local cache the first time a query needs it).
``IndexedView`` = a generation + (strong consistency) the WAL tail after
``covers_through_seq`` folded onto the index rows it touches.  For one query,
``IndexedView.candidates(q)`` returns a small frame of candidate documents
(index rows minus tombstones minus rows superseded by the tail, plus every live
tail row) and the namespace-global BM25 statistics; the exact engine then ranks
that frame, so results, distances and scores are the exact engine's:

* vector rank: per segment, exact search over the filtered rows when the filter
  is selective (or the rank is ``kNN``), else HNSW over-fetch + post-filter;
  the exact f32 vectors of the candidates go to the engine for exact distances;
* BM25 (and Sum/Max/Product of BM25): tantivy over-fetches candidates per
  segment; the engine re-scores them with exact BM25 on global statistics;
* order by attribute: polars top-k per segment on the doc store;
* anything else (aggregations, filter-only, per-attribute limits): every
  filtered row of the doc store (attributes only unless vectors are asked for).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from .. import limits as L
from .. import schema as S
from ..cache import Cache, get_cache
from ..scoring import f32_tolerance
from ..store import Store
from . import ann, fts, ivf, paged
from . import docs as D
from . import ranged as R
from .manifest import fts_sig_of, load_manifest
from .tail import TAILS as _TAILS  # noqa: F401  (tests and benchmarks clear it)
from .tail import Tail, forget_tails, tail_for

EXACT_MAX_ROWS = 20_000  # filtered rows at or below this: exact vector search
EXACT_MAX_FRACTION = 0.05  # ... or a filter keeping at most this fraction of a segment
HNSW_OVERFETCH = 2  # HNSW candidates kept per requested result (exact re-rank)
BM25_MIN_CANDIDATES = 100  # tantivy candidates per segment at least
BM25_OVERFETCH = 10  # ... and at least this many per requested result


# ---------------------------------------------------------------- BM25 statistics
class _DfTable(Mapping):
    """Doc frequencies from an index term table (lazy dict)."""

    def __init__(self, frame: pl.DataFrame):
        self._frame = frame
        self._d: dict | None = None
        self._lock = threading.Lock()

    def _dict(self) -> dict:
        if self._d is None:
            with self._lock:
                if self._d is None:
                    self._d = dict(zip(self._frame["term"].to_list(), self._frame["df"].to_list()))
        return self._d

    def get(self, k, default=0):
        return self._dict().get(k, default)

    def __getitem__(self, k):
        return self._dict()[k]

    def __iter__(self):
        return iter(self._dict())

    def __len__(self):
        return len(self._dict())


class _DfCombo(Mapping):
    """df = base + added - removed (lazy)."""

    def __init__(self, base: Mapping, add: Mapping | None, sub: Mapping | None):
        self.base, self.add, self.sub = base, add, sub

    def get(self, k, default=0):
        v = (
            self.base.get(k, 0)
            + (self.add.get(k, 0) if self.add is not None else 0)
            - (self.sub.get(k, 0) if self.sub is not None else 0)
        )
        return v if v > 0 else default

    def __getitem__(self, k):
        v = self.get(k, 0)
        if not v:
            raise KeyError(k)
        return v

    def __iter__(self):
        seen = set()
        for m in (self.base, self.add):
            if m is None:
                continue
            for k in m:
                if k not in seen and self.get(k, 0):
                    seen.add(k)
                    yield k

    def __len__(self):
        return sum(1 for _ in self)


# ---------------------------------------------------------------- segments
class Segment:
    """One segment of a generation: lazily opened files, alive mask."""

    def __init__(self, gen: Generation, meta: dict):
        self.gen, self.meta = gen, meta
        self.name = meta["name"]
        self.rows = int(meta["rows"])
        self._lock = threading.RLock()
        self._attrs: pl.DataFrame | None = None
        self._alive: np.ndarray | None = None
        self._vec: dict[str, np.ndarray] = {}
        self._norms: dict[str, np.ndarray] = {}
        self._ann: dict = {}
        self._fts: dict = {}
        self._ids: pl.DataFrame | None = None
        self._live: int | None = None
        self._idv = None

    @property
    def store(self) -> Store:
        return self.gen.store

    @property
    def cache(self) -> Cache:
        return self.gen.cache

    def attrs(self) -> pl.DataFrame:
        """Non-vector columns, aligned to the generation's schema."""
        with self._lock:
            if self._attrs is None:
                a = D.read_attrs(self.cache.file(self.store, self.meta["attrs"]))
                sch = {k: v for k, v in self.gen.schema.items() if not S.is_vector(v["type"])}
                self._attrs = S.align(a.select([c for c in a.columns if c in sch]), sch)
            return self._attrs

    def alive(self) -> np.ndarray:
        with self._lock:
            if self._alive is None:
                al = np.ones(self.rows, bool)
                if self.meta.get("tombstones"):
                    dead = D.read_tomb(self.cache.file(self.store, self.meta["tombstones"]).read_bytes())
                    al[dead.astype(np.int64)] = False
                self._alive = al
            return self._alive

    def live_count(self) -> int:
        with self._lock:
            if self._live is None:
                self._live = int(np.count_nonzero(self.alive()))
            return self._live

    def id_values(self) -> np.ndarray | None:
        """The id column as a numpy array when ids are integers (cheap gathers), else None."""
        with self._lock:
            if self._idv is None:
                s = self.attrs().get_column("id")
                self._idv = s.to_numpy() if s.dtype.is_integer() and not s.null_count() else False
            return self._idv if self._idv is not False else None

    def id_rows(self, pos: np.ndarray) -> np.ndarray | pl.Series:
        """The ids at row positions ``pos``: from the doc store when it is open or cached,
        else (integer ids) by ranged reads of the fixed-width id file."""
        m = self.meta.get("ids")
        with self._lock:
            opened = self._attrs is not None
        if m is None or opened or not len(pos) or self.cache.has(self.store, self.meta["attrs"]):
            idv = self.id_values()
            return idv[pos] if idv is not None else self.attrs().get_column("id").gather(pos)
        raw = paged.read_rows(self.cache, self.store, m, pos, 8)
        return raw.view("<u8" if m["dtype"] == "u64" else "<i8").reshape(-1)

    def rerank_rows(self, f: str, pos: np.ndarray):
        """(f32 vectors, ids) of candidates ``pos``: on a remote store both in one round trip."""
        fns = [lambda: self.vector_rows(f, pos), lambda: self.id_rows(pos)]
        vec, ids = R.parallel(fns, self.store.is_remote)
        return vec, ids

    def ids(self) -> pl.DataFrame:
        """(id, __pos) of live rows."""
        with self._lock:
            if self._ids is None:
                self._ids = self.attrs().select("id").with_row_index("__pos").filter(pl.Series(self.alive()))
            return self._ids

    def vectors(self, f: str) -> np.ndarray | None:
        v = self.meta.get("vectors", {}).get(f)
        if v is None:
            return None
        with self._lock:
            if f not in self._vec:
                self._vec[f] = D.open_vectors(paged.whole(self.cache, self.store, v), self.rows, v["dims"])
            return self._vec[f]

    def vector_rows(self, f: str, pos: np.ndarray) -> np.ndarray | None:
        """The f32 vectors of field ``f`` at row positions ``pos`` (in that order).

        From the memory-mapped file when it is local or cached; otherwise by ranged
        reads of just those rows (a cold query re-ranks a few dozen rows: it should
        not download every vector of the segment; ``warm`` fetches whole files)."""
        v = self.meta.get("vectors", {}).get(f)
        if v is None:
            return None
        pos = np.asarray(pos, dtype=np.int64)
        with self._lock:
            opened = f in self._vec
        dims = int(v["dims"])
        if (
            opened
            or not len(pos)
            or paged.cached(self.cache, self.store, v)
            or self.rows * dims * 4 <= R.WHOLE_FILE_MAX
        ):
            return self.vectors(f)[pos]
        raw = paged.read_rows(self.cache, self.store, v, pos, 4 * dims)
        return raw.view("<f4").reshape(len(pos), dims)

    def norms(self, f: str) -> np.ndarray:
        with self._lock:
            if f not in self._norms:
                self._norms[f] = np.linalg.norm(np.asarray(self.vectors(f)), axis=1)
            return self._norms[f]

    def unindexed_vectors(self, f: str) -> np.ndarray:
        """Positions of rows with a vector that the HNSW of ``f`` left out (zero vectors
        under cosine): they still rank (at distance 1), so queries add them as candidates."""
        m = self.meta.get("ann", {}).get(f)
        if m is None or int(m.get("vectors", self.rows)) >= self.rows:
            return np.zeros(0, np.int64)
        with self._lock:
            if ("zero", f) not in self._norms:
                n = self.norms(f)
                self._norms[("zero", f)] = np.flatnonzero(n == 0).astype(np.int64)
            return self._norms[("zero", f)]

    def ivf(self, f: str) -> tuple[ivf.Route, ivf.Lists] | None:
        """The IVF index of field ``f`` (format 2), or None (format-1 HNSW, or no index).
        The route is fetched whole; the lists are memory-mapped when the file is local or
        cached (or small), else read by ranges per query."""
        m = self.meta.get("ann", {}).get(f)
        if m is None or m.get("kind") != ivf.KIND:
            return None
        with self._lock:
            got = self._ann.get(f)
            if got is not None and not got[1].local and paged.cached(self.cache, self.store, m["lists"]):
                got = None  # fetched whole meanwhile (background fetch, warm): memory-map it
            if got is None:
                route = ivf.Route(self.cache.file(self.store, m["route"]).read_bytes(), int(m["dims"]), self.gen.metric)
                ent = m["lists"]
                size = route.rows * (route.dims + 4)
                if paged.cached(self.cache, self.store, ent) or size <= R.WHOLE_FILE_MAX:
                    got = (route, ivf.Lists(route, local=paged.whole(self.cache, self.store, ent)))
                else:
                    got = (
                        route,
                        ivf.Lists(route, fetch=lambda rs, e=ent: paged.read_ranges(self.cache, self.store, e, rs)),
                    )
                self._ann[f] = got
            return got

    def ann(self, f: str):
        """The format-1 usearch HNSW of field ``f`` (generations built before IVF)."""
        m = self.meta.get("ann", {}).get(f)
        if m is None or m.get("kind") == ivf.KIND:
            return None
        with self._lock:
            if f not in self._ann:
                self._ann[f] = ann.open_view(self.cache.file(self.store, m["key"]), m.get("expansion_search"))
            return self._ann[f]

    def fts(self, f: str):
        m = self.meta.get("fts", {}).get(f)
        if m is None:
            return None
        with self._lock:
            if f not in self._fts:
                d = self.cache.directory(self.store, m["files"], m["prefix"])
                self._fts[f] = fts.Reader(d, self.gen.schema[f]["full_text_search"], self.rows)
            return self._fts[f]

    def tokens(self, f: str) -> pl.Series | None:
        """The stored analysed tokens of FTS field ``f`` (one joined string per row), if any."""
        m = self.meta.get("fts", {}).get(f)
        if not m or not m.get("tokens") or m.get("sig") != fts_sig_of(self.gen.schema.get(f)):
            return None
        with self._lock:
            if ("tok", f) not in self._fts:
                self._fts[("tok", f)] = pl.read_ipc(self.cache.file(self.store, m["tokens"]))["t"]
            return self._fts[("tok", f)]

    def postings(self, f: str):
        """The stored inverted index of FTS field ``f`` (fts.SegmentPostings), if this
        segment has one for the field's current analyzer (generations before it: None)."""
        m = self.meta.get("fts", {}).get(f)
        if not m or not m.get("postings"):
            return None
        tok = self.tokens(f)  # same signature check; document lengths come from it
        if tok is None:
            return None
        with self._lock:
            if ("post", f) not in self._fts:
                self._fts[("post", f)] = fts.SegmentPostings(self.cache.file(self.store, m["postings"]), tok)
            return self._fts[("post", f)]

    def frame(self, pos: np.ndarray, vector_fields: list[str]) -> pl.DataFrame:
        """Rows at ``pos``: attributes + the given vector fields."""
        idx = pl.Series(np.asarray(pos, dtype=np.int64))
        df = self.attrs()[idx] if len(pos) else self.attrs().clear()
        cols = []
        for f in vector_fields:
            dims = S.vector_dims(self.gen.schema[f]["type"])
            rows = self.vector_rows(f, pos) if len(pos) else None
            if rows is None:
                rows = np.full((len(pos), dims), np.nan, np.float32)
            cols.append(D.vector_series(f, rows, dims))
        return df.with_columns(cols) if cols else df

    def warm(self) -> None:
        self.attrs()
        self.alive()
        for f in self.meta.get("vectors", {}):
            self.vectors(f)
        for f, m in self.meta.get("ann", {}).items():
            if m.get("kind") == ivf.KIND:
                paged.whole(self.cache, self.store, m["lists"])
                with self._lock:
                    self._ann.pop(f, None)  # reopen memory-mapped
                self.ivf(f)
            else:
                self.ann(f)
        for f in self.meta.get("fts", {}):
            if f in self.gen.schema and self.gen.schema[f].get("full_text_search"):
                self.fts(f)
                self.postings(f)


class Generation:
    def __init__(self, store: Store, cache: Cache, man: dict, manifest_key: str):
        self.store, self.cache, self.man = store, cache, man
        self.manifest_key = manifest_key
        self.generation = int(man["generation"])
        self.covers = int(man["covers_through_seq"])
        self.schema = man["schema"]
        self.metric = man.get("distance_metric")
        self.segments = [Segment(self, s) for s in man["segments"]]
        self._terms: dict[str, _DfTable] = {}
        self._lock = threading.Lock()

    @property
    def live_rows(self) -> int:
        return int(sum(s["live"] for s in self.man["segments"]))

    def field_stats(self, f: str):
        """Global BM25 statistics of the indexed documents (bm25.FieldStats)."""
        from ..bm25 import FieldStats

        b = self.man.get("bm25", {}).get(f)
        if b is None:
            return None
        with self._lock:
            if f not in self._terms:
                self._terms[f] = _DfTable(pl.read_ipc(self.cache.file(self.store, b["terms"])))
        return FieldStats(int(b["n_rows"]), int(b["total_len"]), self._terms[f])

    def lookup(self, ids: pl.Series) -> list[tuple[int, np.ndarray]]:
        """[(segment index, positions)] of live index rows with these ids."""
        out = []
        want = ids.to_frame("id")
        for i, seg in enumerate(self.segments):
            if want.height == 0:
                break
            L.check_deadline()
            idf = seg.ids()
            if want["id"].dtype != idf["id"].dtype:
                want = want.with_columns(pl.col("id").cast(idf["id"].dtype))
            hit = idf.join(want, on="id", how="semi")
            if hit.height:
                out.append((i, hit["__pos"].to_numpy().astype(np.int64)))
                want = want.join(hit.select("id"), on="id", how="anti")
        return out

    def files(self) -> list[str]:
        return list(self.man.get("files", []))


_GENS: dict[tuple[str, str, str], Generation] = {}
_GENS_LOCK = threading.Lock()


def open_generation(store: Store, ptr: dict, cache: Cache | None = None) -> Generation:
    cache = cache or get_cache()
    key = (store.url, ptr["manifest"], str(cache.root))
    with _GENS_LOCK:
        g = _GENS.get(key)
    if g is None:
        # one round trip when cold: the manifest and the keys the pointer names (IVF routes,
        # tombstones) at once; the routes and tombstones land in the cache for the segments
        pre = [k for k in ptr.get("prefetch", []) if isinstance(k, str)]
        fns = [lambda: load_manifest(store, ptr["manifest"])]
        fns += [lambda k=k: _prefetch(cache, store, k) for k in pre if not cache.has(store, k)]
        man = R.parallel(fns, store.is_remote)[0]
        g = Generation(store, cache, man, ptr["manifest"])
        with _GENS_LOCK:
            if len(_GENS) > 32:
                _GENS.clear()
            _GENS[key] = g
    return g


def _prefetch(cache: Cache, store: Store, key: str) -> None:
    try:
        cache.file(store, key)
    except FileNotFoundError:
        pass  # collected: the manifest read fails the same way, and the caller retries


def forget(store: Store, name: str) -> None:
    """Drop this process's opened generations and tails of namespace ``name`` (the
    server calls it when it evicts a namespace from its working set)."""
    prefix = f"{name}/"
    with _GENS_LOCK:
        for k in [k for k in _GENS if k[0] == store.url and k[1].startswith(prefix)]:
            del _GENS[k]
    forget_tails(store, name)


# ---------------------------------------------------------------- the view
def _postings_from_tokens(toks: list[list[str]], only: set | None = None):
    """bm25.Postings of already analysed rows (what bm25.postings_for would build),
    in plain Python: candidate frames are small (hundreds of rows).  ``only``: keep
    the postings of these terms only (the query's: all the engine looks up);
    document lengths stay exact."""
    from collections import Counter

    from ..bm25 import Postings

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


@dataclass
class Candidates:
    docs: pl.DataFrame
    schema: dict
    metric: str | None
    bm25_stats: object
    namespace_rows: int
    exhaustive: int = 0  # rows scored exactly (exact vector search, full scans, tail)
    ann_probed: int = 0
    tokens: dict = field(default_factory=dict)  # FTS field -> analysed tokens per row of docs
    query_terms: dict = field(default_factory=dict)  # FTS field -> terms the query looks up


class IndexedView:
    """A generation (+ tail) ready to answer queries."""

    def __init__(self, gen: Generation, tail: Tail | None):
        self.gen = gen
        self.tail = tail
        self.schema = tail.schema if tail else gen.schema
        self.metric = (tail.metric if tail else None) or gen.metric
        self.seq = tail.seq if tail else gen.covers

    @property
    def namespace_rows(self) -> int:
        n = self.gen.live_rows
        if self.tail is not None:
            n -= sum(len(v) for v in self.tail.hidden.values())
            n += self.tail.docs.height
        return n

    # -- masks ----------------------------------------------------------------
    def _visible(self, i: int) -> np.ndarray:
        seg = self.gen.segments[i]
        al = seg.alive()
        if self.tail is not None and i in self.tail.hidden:
            al = al.copy()
            al[self.tail.hidden[i]] = False
        return al

    def _filter_mask(self, i: int, filt) -> np.ndarray:
        L.check_deadline()  # called once per segment by every query path
        vis = self._visible(i)
        if filt is None:
            return vis
        from ..filters import compile_filter, filter_mask

        seg = self.gen.segments[i]
        a = seg.attrs()
        sch = {k: v for k, v in self.schema.items() if not S.is_vector(v["type"])}
        missing = [c for c in sch if c not in a.columns]
        if missing:
            a = S.align(a, sch)
        return vis & filter_mask(a, compile_filter(filt, self.schema))

    # -- statistics ---------------------------------------------------------------
    def bm25_stats(self, fields: list[str]):
        from ..bm25 import Bm25Stats, FieldStats, stats_from_frame

        out = {}
        for f in fields:
            L.check_deadline()
            spec = self.schema.get(f)
            if not spec or not spec.get("full_text_search"):
                continue
            opts = spec["full_text_search"]
            base = self.gen.field_stats(f)
            if base is None:  # field not indexed in this generation: no global stats here
                return None
            if self.tail is None or (self.tail.docs.height == 0 and self.tail.superseded is None):
                out[f] = base
                continue
            add = stats_from_frame(self.tail.docs, f, opts).fields[f]
            sub = (
                stats_from_frame(self.tail.superseded, f, opts).fields[f]
                if self.tail.superseded is not None and self.tail.superseded.height
                else None
            )
            out[f] = FieldStats(
                base.n_docs + add.n_docs - (sub.n_docs if sub else 0),
                base.total_tokens + add.total_tokens - (sub.total_tokens if sub else 0),
                _DfCombo(base.df, add.df, sub.df if sub else None),
            )
        return Bm25Stats(out)

    # -- candidates -------------------------------------------------------------------
    def candidates(self, q) -> Candidates:
        from .. import query as Q

        rb = q.rank_by
        k = q.limit + q.offset
        filt = q.filter
        need_vecs = self._included_vectors(q)
        exhaustive = 0
        probed = 0
        parts: list[pl.DataFrame] = []
        where: list[tuple[int, np.ndarray]] = []
        bm25_fields: list[str] = []
        simple = q.per_attributes is None and not q.aggregate_by and not q.group_by
        if simple and isinstance(rb, Q.VectorRank) and rb.attr in self.schema:
            vf = sorted(set(need_vecs) | {rb.attr})
            for i, seg in enumerate(self.gen.segments):
                L.check_deadline()
                pos, ex, pr = self.vector_candidates(i, rb, filt, k, q.distance_metric or self.metric)
                exhaustive += ex
                probed += pr
                if len(pos):
                    parts.append(seg.frame(pos, vf))
                    where.append((i, pos))
        elif simple and isinstance(rb, Q.TextRank) and self.pure_bm25(rb.expr):
            leaves = list(self.bm25_leaves(rb.expr))
            bm25_fields = sorted({lf.attr for lf in leaves})
            for i, seg in enumerate(self.gen.segments):
                L.check_deadline()
                pos = self.bm25_candidates(i, leaves, filt, k)
                if pos is None:  # segment cannot answer from tantivy: scan it
                    m = self._filter_mask(i, filt)
                    pos = np.nonzero(m)[0]
                    exhaustive += len(pos)
                if len(pos):
                    parts.append(seg.frame(pos, need_vecs))
                    where.append((i, pos))
        elif simple and isinstance(rb, Q.OrderBy):
            for i, seg in enumerate(self.gen.segments):
                L.check_deadline()
                pos = self._order_candidates(i, rb, filt, k)
                if len(pos):
                    parts.append(seg.frame(pos, need_vecs))
                    where.append((i, pos))
        else:
            if isinstance(rb, Q.TextRank):
                bm25_fields = sorted({lf.attr for lf in self.bm25_leaves(rb.expr)})
            vf = sorted(set(need_vecs) | ({rb.attr} if isinstance(rb, Q.VectorRank) else set()))
            for i, seg in enumerate(self.gen.segments):
                L.check_deadline()
                m = self._filter_mask(i, filt)
                pos = np.nonzero(m)[0]
                exhaustive += len(pos)
                if len(pos):
                    parts.append(seg.frame(pos, vf))
                    where.append((i, pos))
        cols = S.column_order(self.schema)
        frames = [S.align(p.select([c for c in p.columns if c in self.schema]), self.schema, cols) for p in parts]
        if self.tail is not None and self.tail.docs.height:
            frames.append(S.align(self.tail.docs, self.schema, cols))
            exhaustive += self.tail.docs.height
        docs = pl.concat(frames, how="vertical") if frames else S.align(pl.DataFrame(), self.schema, cols)
        stats = self.bm25_stats(bm25_fields) if bm25_fields else None
        toks = {f: t for f in bm25_fields if (t := self._tokens(f, where)) is not None}
        c = Candidates(docs, self.schema, self.metric, stats, self.namespace_rows, exhaustive, probed, toks)
        if isinstance(rb, Q.TextRank) and self.pure_bm25(rb.expr):
            from ..bm25 import query_tokens

            for lf in self.bm25_leaves(rb.expr):
                spec = self.schema.get(lf.attr) or {}
                if spec.get("full_text_search"):
                    c.query_terms.setdefault(lf.attr, set()).update(
                        query_tokens(
                            lf.query if isinstance(lf.query, str) else list(lf.query), spec["full_text_search"]
                        )
                    )
        else:
            c.tokens = {}  # other text expressions (prefix) need every term: let the engine analyse
        return c

    def _tokens(self, f: str, where) -> list[list[str]] | None:
        """Analysed tokens of field f for the candidate rows (segments' stored tokens +
        the tail's, analysed once per tail), or None if some segment has none."""
        from .fts import SEP

        spec = self.schema.get(f)
        if not spec or not spec.get("full_text_search"):
            return None
        out: list[list[str]] = []
        for i, pos in where:
            col = self.gen.segments[i].tokens(f)
            if col is None:
                return None
            vals = col.gather(pl.Series(pos)).to_list()
            out.extend([] if v is None or v == "" else v.split(SEP) for v in vals)
        if self.tail is not None and self.tail.docs.height:
            key = ("tok", f, fts_sig_of(spec))
            cached = self.tail.extra.get(key)
            if cached is None:
                from .. import text as T

                col = (
                    self.tail.docs.get_column(f)
                    if f in self.tail.docs.columns
                    else pl.Series([None] * self.tail.docs.height)
                )
                cached = self.tail.extra[key] = T.tokenize_many(col.to_list(), spec["full_text_search"])
            out.extend(cached)
        return out

    def _included_vectors(self, q) -> list[str]:
        vf = D.vector_fields(self.schema)
        if not vf:
            return []
        inc = q.include
        if q.exclude is not None:
            return [f for f in vf if f not in q.exclude]
        if inc is True:
            return vf
        if isinstance(inc, tuple):
            return [f for f in vf if f in inc]
        return []

    def vector_candidates(self, i: int, rb, filt, k: int, metric) -> tuple[np.ndarray, int, int]:
        seg = self.gen.segments[i]
        if rb.attr not in seg.meta.get("vectors", {}) or k <= 0:
            return np.zeros(0, np.int64), 0, 0
        sel = self._filter_mask(i, filt)
        if filt is None:  # visible rows: live minus superseded by the tail (all of which are live)
            n_sel = seg.live_count() - (len(self.tail.hidden.get(i, ())) if self.tail is not None else 0)
        else:
            n_sel = int(np.count_nonzero(sel))
        if n_sel == 0:
            return np.zeros(0, np.int64), 0, 0
        q = rb.array()
        iv = seg.ivf(rb.attr)
        index = seg.ann(rb.attr) if iv is None else None
        exact = (
            rb.method != "ANN"
            or (iv is None and index is None)
            or metric != self.gen.metric
            or n_sel <= max(k, EXACT_MAX_ROWS)
            or (filt is not None and n_sel <= EXACT_MAX_FRACTION * seg.rows)
        )
        if exact:
            pos = np.nonzero(sel)[0]
            return self._exact_top(seg, rb.attr, pos, q, k, metric), n_sel, 0
        frac = n_sel / max(1, seg.rows)
        if iv is not None:
            opts = ivf.options(self.schema.get(rb.attr))
            route, lists = iv
            restrict = filt is not None or n_sel < seg.live_count() or seg.live_count() < seg.rows
            # a filter keeping a fraction of the rows: scan that much more to find as many
            keep, scanned = ivf.search(
                route, lists, q, k * opts["rerank"], min(1.0, opts["probe"] / frac), sel if restrict else None
            )
            z = seg.unindexed_vectors(rb.attr)
            if len(z):
                keep = np.concatenate([keep, z[sel[z]]])
            return keep, 0, scanned
        return self._hnsw_candidates(seg, index, rb, sel, q, k, frac, metric, n_sel)

    def _hnsw_candidates(self, seg, index, rb, sel, q, k, frac, metric, n_sel) -> tuple[np.ndarray, int, int]:
        """HNSW over-fetch + post-filter (format-1 segments, until the next run rebuilds them)."""
        want = k * HNSW_OVERFETCH
        fetch = int(math.ceil(want / frac * 1.2)) + 8
        total = len(index)
        while True:
            L.check_deadline()
            keys, _d = ann.search(index, q, min(fetch, total))
            keep = keys[sel[keys]]
            if len(keep) >= want or fetch >= total:
                keep = keep[:want]
                z = seg.unindexed_vectors(rb.attr)
                if len(z):
                    keep = np.concatenate([keep, z[sel[z]]])
                return keep, 0, len(keys)
            if fetch * 4 > total:
                pos = np.nonzero(sel)[0]  # post-filter keeps too few: exact is cheaper now
                return self._exact_top(seg, rb.attr, pos, q, k, metric), n_sel, len(keys)
            fetch *= 4

    def _exact_top(self, seg: Segment, f: str, pos: np.ndarray, q: np.ndarray, k: int, metric) -> np.ndarray:
        mat = seg.vectors(f)
        x = np.asarray(mat[pos]) if len(pos) < seg.rows else np.asarray(mat)
        dims = x.shape[1] if x.ndim == 2 else 0
        if metric == "euclidean_squared":
            diff = x - q
            d = np.einsum("ij,ij->i", diff, diff)
        else:
            norms = seg.norms(f)
            nn = norms[pos] if len(pos) < seg.rows else norms
            den = nn * float(np.linalg.norm(q))
            with np.errstate(invalid="ignore", divide="ignore"):
                d = np.where(den > 0, 1.0 - (x @ q) / den, 1.0)  # a zero vector is at distance 1 (engine)
        d = np.where(np.isnan(d), np.inf, d)  # rows without this vector
        kk = min(k, len(d))
        if kk == 0:
            return np.zeros(0, np.int64)
        part = np.argpartition(d, kk - 1)[:kk] if kk < len(d) else np.arange(len(d))
        cut = d[part].max()
        if not np.isfinite(cut):
            return pos[part[np.isfinite(d[part])]]
        # keep everything within float32 error of the k-th (and its ties): the caller
        # re-scores these exactly in float64 and breaks ties by id
        tol = f32_tolerance(metric, dims, abs(float(cut)))
        return pos[np.flatnonzero(d <= cut + tol)]

    # -- BM25 -------------------------------------------------------------------------
    def bm25_leaves(self, e):
        from .. import query as Q

        if isinstance(e, Q.Bm25):
            yield e
        elif isinstance(e, (Q.TextSum, Q.TextMax)):
            for c in e.children:
                yield from self.bm25_leaves(c)
        elif isinstance(e, Q.TextProduct):
            yield from self.bm25_leaves(e.child)

    def pure_bm25(self, e) -> bool:
        from .. import query as Q

        if isinstance(e, Q.Bm25):
            return not e.last_as_prefix
        if isinstance(e, (Q.TextSum, Q.TextMax)):
            return all(self.pure_bm25(c) for c in e.children)
        if isinstance(e, Q.TextProduct):  # a weight <= 0 makes the lowest BM25 best: tantivy cannot propose
            return e.weight > 0 and self.pure_bm25(e.child)
        return False

    def bm25_candidates(self, i: int, leaves, filt, k: int) -> np.ndarray | None:
        from ..bm25 import query_tokens

        seg = self.gen.segments[i]
        sel = self._filter_mask(i, filt)
        if not sel.any():
            return np.zeros(0, np.int64)
        want = max(BM25_MIN_CANDIDATES, BM25_OVERFETCH * k)
        out = []
        for lf in leaves:
            spec = self.schema.get(lf.attr) or {}
            if not spec.get("full_text_search"):
                continue
            r = seg.fts(lf.attr)
            if r is None:
                return None
            toks = query_tokens(lf.query if isinstance(lf.query, str) else list(lf.query), spec["full_text_search"])
            limit = want
            while True:
                L.check_deadline()
                pos = r.search(toks, limit)
                keep = pos[sel[pos]]
                if len(keep) >= want or len(pos) < limit:
                    break
                limit *= 4
            out.append(keep)
        return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)

    # -- order by ----------------------------------------------------------------------
    def _order_candidates(self, i: int, rb, filt, k: int) -> np.ndarray:
        seg = self.gen.segments[i]
        m = self._filter_mask(i, filt)
        a = seg.attrs()
        keys = [a_ for a_, _d in rb.keys]
        if any(c not in a.columns for c in keys) or any(
            S.is_vector(self.schema.get(c, {}).get("type", "")) for c in keys
        ):
            return np.nonzero(m)[0]
        df = a.select(keys + (["id"] if "id" not in keys else [])).with_row_index("__pos").filter(pl.Series(m))
        desc = [d for _a, d in rb.keys]
        by = keys + (["id"] if "id" not in keys else [])
        dsc = desc + ([False] if "id" not in keys else [])
        try:
            p1 = df.sort(by, descending=dsc, nulls_last=True).head(k)["__pos"]
            p2 = df.sort(by, descending=dsc, nulls_last=False).head(k)["__pos"]
        except Exception:  # unsortable column (lists): give the engine every row
            return np.nonzero(m)[0]
        return np.unique(np.concatenate([p1.to_numpy(), p2.to_numpy()])).astype(np.int64)


def _open_or_none(store: Store, ptr: dict) -> Generation | None:
    try:
        return open_generation(store, ptr)
    except FileNotFoundError:
        return None


def view_for(ns, consistency: str, head=None) -> IndexedView | None:
    """The indexed view of ``ns`` for a query, or None if it has no index."""
    meta, _ = ns.read_meta()
    ptr = (meta or {}).get("index")
    if not ptr:
        return None
    strong = consistency != "eventual"
    fns = [lambda: _open_or_none(ns.store, ptr)]
    if strong and head is None:
        fns.append(ns.head)  # the WAL listing overlaps the manifest read (one round trip)
    got = R.parallel(fns, ns.store.is_remote)
    gen = got[0]
    if gen is None:
        return None
    if not strong:
        return IndexedView(gen, None)
    head = head or got[1]
    tail = tail_for(ns, gen, head)
    if any(fts_sig_of(tail.schema.get(f)) != fts_sig_of(gen.schema.get(f)) for f in {*tail.schema, *gen.schema}):
        return None  # the tail changed an analyzer: the index's tokens and statistics no longer apply
    return IndexedView(gen, tail)


def warm(ns, cache: Cache | None = None) -> dict:
    """Fetch every file of the current generation into the cache."""
    import time

    cache = cache or get_cache()
    t0 = time.perf_counter()
    meta, _ = ns.read_meta()
    ptr = (meta or {}).get("index")
    if not ptr:
        return {
            "namespace": ns.name,
            "generation": None,
            "files": 0,
            "bytes": 0,
            "fetched_files": 0,
            "fetched_bytes": 0,
            "seconds": time.perf_counter() - t0,
        }
    man = load_manifest(ns.store, ptr["manifest"])
    before = (cache.stats.files_fetched, cache.stats.bytes_fetched)
    total = 0
    n = 0
    for key in man.get("files", []):
        if key == ptr["manifest"]:
            continue
        p = cache.file(ns.store, key)
        total += p.stat().st_size
        n += 1
    gen = open_generation(ns.store, ptr, cache)
    for seg in gen.segments:
        seg.warm()
    return {
        "namespace": ns.name,
        "generation": ptr["generation"],
        "files": n,
        "bytes": total,
        "fetched_files": cache.stats.files_fetched - before[0],
        "fetched_bytes": cache.stats.bytes_fetched - before[1],
        "seconds": time.perf_counter() - t0,
    }


def indexed_source(ns, consistency: str, queries, multi: bool = False):
    """engine.Source for ``queries`` from the index (+ WAL tail when strong), or None
    when the namespace has no index (the engine then replays the WAL).  Plain vector
    and BM25 queries are answered here already (``Source.prepared``, see index/topk.py);
    the others get a candidate frame for the engine."""
    from .. import query as Q
    from ..scoring import Source
    from . import topk

    cache = get_cache()
    misses0 = cache.stats.misses + cache.stats.ranged_reads
    for attempt in range(2):
        try:
            view = view_for(ns, consistency)
            if view is None:
                return None
            parts, stats, exhaustive, toks, qterms = [], None, 0, [], {}
            prepared: list = []
            scored = 0
            for i, q in enumerate(queries):
                L.check_deadline()
                Q.check_query(q, view.schema, view.metric, where=f"queries[{i}]" if multi else "")
                fast = (
                    topk.vector_topk
                    if topk.vector_eligible(view, q)
                    else topk.text_topk
                    if topk.text_eligible(view, q)
                    else None
                )
                if fast is not None:
                    res, ex, n = fast(view, q)
                    prepared.append(res)
                    exhaustive += ex
                    scored += n
                    continue
                prepared.append(None)
                c = view.candidates(q)
                parts.append(c.docs)
                toks.append(c.tokens)
                for f, ts in c.query_terms.items():
                    qterms.setdefault(f, set()).update(ts)
                exhaustive += c.exhaustive
                if c.bm25_stats is not None:  # same view: per-field stats are identical, union the fields
                    if stats is None:
                        stats = c.bm25_stats
                    else:
                        stats.fields.update(c.bm25_stats.fields)
            break
        except FileNotFoundError:
            if attempt:
                raise
            _GENS.clear()  # a generation collected under us: re-read meta.json once
    if not parts:
        docs, tokens = S.align(pl.DataFrame(), view.schema), {}
    elif len(parts) == 1:
        docs, tokens = parts[0], toks[0]
    else:
        allf = set.intersection(*[set(t) for t in toks]) if all(toks) else set()
        both = pl.concat(parts, how="vertical").with_row_index("__r")
        first = both.unique(subset="id", keep="first", maintain_order=True)
        keep_rows = first["__r"].to_list()
        docs = first.drop("__r")
        tokens = {}
        for f in allf:
            flat = [t for tk in toks for t in tk[f]]
            tokens[f] = [flat[r] for r in keep_rows]
    _seed_postings(docs, {f: t for f, t in tokens.items() if f in qterms}, view.schema, qterms)
    fetched = cache.stats.misses + cache.stats.ranged_reads - misses0
    row_bytes = (
        int(docs.estimated_size() / docs.height)
        if docs.height
        else 8 + 4 * sum(S.vector_dims(v["type"]) or 0 for v in view.schema.values())
    )
    return Source(
        docs,
        view.schema,
        view.metric,
        view.seq,
        bm25_stats=stats,
        prepared=prepared if any(r is not None for r in prepared) else None,
        bytes_queried=int(docs.estimated_size()) + scored * row_bytes,
        approx_namespace_size=view.namespace_rows,
        exhaustive_search_count=exhaustive,
        cache_temperature="cold" if fetched else "hot",
        cache_hit_ratio=0.0 if fetched else 1.0,
        extra={
            "index_generation": view.gen.generation,
            "index_covers_through_seq": view.gen.covers,
            "files_fetched": fetched,
        },
    )


def _seed_postings(docs: pl.DataFrame, tokens: dict, schema: dict, qterms: dict) -> None:
    """Give the engine the postings of the candidate frame from stored tokens, so it
    does not analyse the candidates' text again (bm25.postings_for's cache key)."""
    from .. import bm25 as B
    from .. import text as T

    for f, toks in tokens.items():
        if len(toks) != docs.height:
            continue
        opts = T.normalize_fts_options(schema[f]["full_text_search"])
        B.frame_cached(
            docs, ("bm25", f, T.analyzer_name(opts)), lambda t=toks, o=qterms[f]: _postings_from_tokens(t, o)
        )
