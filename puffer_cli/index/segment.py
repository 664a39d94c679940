"""The files of an index generation, opened lazily: a :class:`Generation` (its manifest,
global BM25 tables, id lookup) and its :class:`Segment` s (doc store, tombstones, f32
vectors, the IVF index, tantivy and stored postings), each fetched into the local
cache the first time a query needs it, or read by range (``paged``, ``ranged``).

``open_generation`` keeps opened generations per process (``GENS``, a registered cache:
``caches.forget`` drops one namespace's).  The query side (``reader.IndexedView``) reads through these.
"""

from __future__ import annotations

import functools
import logging
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
import polars as pl

from puffer_cli import caches
from puffer_cli import limits as L
from puffer_cli.errors import CorruptIndex, CorruptNamespace, PufferError
from puffer_cli.index import ann, dfblocks, fts, fts_hint, ivf, pack, paged, ranged, stack
from puffer_cli.index import docs as D
from puffer_cli.index import sparse as sparse_index
from puffer_cli.index.manifest import fts_sig_of, load_manifest
from puffer_cli.index.stack import Stack
from puffer_cli.schema import frames, types
from puffer_cli.schema import spec as S
from puffer_cli.store import Store
from puffer_cli.store.filecache import Cache, get_cache


# ---------------------------------------------------------------- damage reporting
class MissingIndexFile(FileNotFoundError):
    """A file of an open generation is gone. Still a FileNotFoundError (the reader re-reads
    meta.json once: the generation may have been collected under it); ``corrupt`` is what to
    report when it was not."""

    def __init__(self, corrupt: CorruptIndex):
        super().__init__(corrupt.message)
        self.corrupt = corrupt


log = logging.getLogger("puffer.index.segment")

_DECODE_ERRORS = (OSError, ValueError, EOFError, IndexError, zipfile.BadZipFile, pl.exceptions.PolarsError)


def repair_hint(ns: str) -> str:
    return (
        f"run `puffer index {ns} --repair` to rebuild the damaged segment from the WAL and the rest of the generation"
    )


#: row sets whose ids one segment keeps after reading them by range (a repeated query)
ID_MEMO = 64
MASK_MEMO = 32  # filter masks kept per segment (Segment.memo_mask)


def _files(seg: Segment, what: str, f: str | None) -> list[str]:
    m = seg.meta
    if what == "attrs":
        return paged.files(m["docs"]) if m.get("docs") else [m["attrs"]]
    if what == "tombstones":
        return [m["tombstones"]] if m.get("tombstones") else []
    if what == "ids":
        return paged.files(m["ids"]) if m.get("ids") else _files(seg, "attrs", None)
    if what == "vectors":
        v = m.get("vectors", {}).get(f)
        return paged.files(v) if v else []
    if what == "ann":
        a = m.get("ann", {}).get(f) or {}
        return [a[k] for k in ("key", "route") if a.get(k)] + [
            x for k in ("lists", "lists4") if a.get(k) for x in paged.files(a[k])
        ]
    if what == "sparse":
        sp = m.get("sparse", {}).get(f)
        return paged.files(sp) if sp else []
    t = m.get("fts", {}).get(f) or {}
    if t.get("format"):
        return paged.files(t)
    if what in ("tokens", "postings"):
        return [t[what]] if t.get(what) else []
    return list(t.get("files", []))


def reports_damage(what: str):
    """Method decorator: a file of the segment that is missing or cannot be decoded raises
    CorruptIndex naming the file, the segment and the fix (a missing one as MissingIndexFile)."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self: Segment, *args, **kw):
            try:
                return fn(self, *args, **kw)
            except CorruptNamespace as e:  # a decoder that names the file: add the segment and the fix
                raise self.damaged(what, args, e) from e
            except (PufferError, MissingIndexFile):
                raise
            except FileNotFoundError as e:
                raise MissingIndexFile(self.damaged(what, args, e, missing=True)) from e
            except _DECODE_ERRORS as e:
                raise self.damaged(what, args, e) from e

        return wrapper

    return deco


# ---------------------------------------------------------------- BM25 statistics
class DfTable(Mapping):
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


class DfCombo(Mapping):
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


def row_ranges(pos: np.ndarray, row_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of the sorted row positions ``pos`` (rows of ``row_bytes``), runs of
    consecutive rows as one range."""
    if not len(pos):
        return []
    brk = np.flatnonzero(np.diff(pos) != 1)
    starts = pos[np.concatenate([[0], brk + 1])]
    ends = pos[np.concatenate([brk, [len(pos) - 1]])] + 1
    return [(int(a) * row_bytes, int(b) * row_bytes) for a, b in zip(starts, ends)]


# ---------------------------------------------------------------- segments
AHEAD_MAX_BYTES = 8 << 20  # vectors kept per segment after a read-ahead (Segment.read_rows_ahead)


class Segment:
    """One segment of a generation: lazily opened files, alive mask."""

    def __init__(self, gen: Generation, meta: dict):
        self.gen, self.meta = gen, meta
        self.name = meta["name"]
        self.rows = int(meta["rows"])
        self._lock = threading.RLock()
        self._attrs: pl.DataFrame | None = None
        self._chunk: dict[tuple[str, int], pl.Series] = {}  # decoded column chunks (column store)
        self._col: dict[str, pl.Series] = {}  # whole decoded columns (column store)
        self._alive: np.ndarray | None = None
        self._vec: dict[str, np.ndarray] = {}
        self._norms: dict[str | tuple[str, str], np.ndarray] = {}  # f -> norms; ("zero", f) -> zero rows
        self._ann: dict = {}
        self._fts: dict = {}
        self._id_memo: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()  # filter key -> packed mask
        self._ids: pl.DataFrame | None = None
        self._live: int | None = None
        self._idv: np.ndarray | Literal[False] | None = None  # False: ids are not integers
        #: field (or "id") -> (sorted positions, their rows): the last rows read ahead by range
        #: (:meth:`read_rows_ahead`), so the re-rank that follows reads none of them again
        self._ahead: dict[str, tuple[np.ndarray, Any]] = {}

    @property
    def store(self) -> Store:
        return self.gen.store

    def damaged(self, what: str, args: tuple, e: BaseException, missing: bool = False) -> CorruptIndex:
        files = _files(self, what, args[0] if args and isinstance(args[0], str) else None)
        gone = str(e.args[0]) if missing and e.args else ""
        names = [k for k in files if k == gone] or files or [what]
        ns = self.gen.manifest_key.split("/index/", 1)[0]
        state = "is missing" if missing else f"is damaged ({type(e).__name__}: {str(e)[:200]})"
        return CorruptIndex(
            f"namespace {ns!r}: index file {' / '.join(names)} of segment {self.name} "
            f"(generation {self.gen.generation}) {state}",
            hint=repair_hint(ns),
        )

    def _blk_damage(self, f: str, e: BaseException, missing: bool) -> BaseException:
        """What a full-text block read that failed raises (fts.BlockIndex's ``damage``)."""
        err = self.damaged("fts", (f,), e, missing=missing)
        return MissingIndexFile(err) if missing else err

    @property
    def cache(self) -> Cache:
        return self.gen.cache

    @reports_damage("attrs")
    def attrs(self) -> pl.DataFrame:
        """Non-vector columns, aligned to the generation's schema (whole: every column of
        every row; queries on a column store read :meth:`columns` / :meth:`rows_at`)."""
        with self._lock:
            if self._attrs is None:
                sch = self._attr_schema()
                if self.docs is None:
                    a = D.read_attrs(self.cache.file(self.store, self.meta["attrs"]))
                else:
                    a = self.columns(list(sch))
                self._attrs = frames.align(a.select([c for c in a.columns if c in sch]), sch)
            return self._attrs

    # -- the column store (docs format cols-1): reads of just the columns and row groups a query needs
    @property
    def docs(self) -> dict | None:
        """The ``cols-1`` doc store entry, or None (``attrs.arrow`` of older generations)."""
        return self.meta.get("docs")

    def _attr_schema(self) -> dict:
        return {k: v for k, v in self.gen.schema.items() if not S.is_vector(v["type"])}

    def groups(self) -> int:
        assert self.docs is not None
        return D.groups_of(self.docs, self.rows)

    def docs_at_hand(self) -> bool:
        """Whether the doc store is local or cached whole (read without requests)."""
        return self.docs is None or paged.cached(self.cache, self.store, self.docs)

    @reports_damage("attrs")
    def _chunks(self, wants: list[tuple[str, int]]) -> dict[tuple[str, int], pl.Series]:
        """Decoded column chunks (column, group): memoized, else from the local file, else
        by coalesced ranged reads of just those chunks (one batch of requests)."""
        ent = self.docs
        assert ent is not None
        with self._lock:
            got = {w: self._chunk[w] for w in wants if w in self._chunk}
        need = [w for w in dict.fromkeys(wants) if w not in got and w[0] in ent["columns"]]
        if need:
            ranges = [D.chunk_range(ent, c, g) for c, g in need]
            if self.docs_at_hand():
                path = paged.whole(self.cache, self.store, ent)
                with open(path, "rb") as fh:
                    blobs = []
                    for a, b in ranges:
                        fh.seek(a)
                        blobs.append(fh.read(b - a))
            else:
                blobs = paged.read_ranges(self.cache, self.store, ent, ranges)
            what = ent["key"]
            fresh = {w: D.decode_chunk(b, what) for w, b in zip(need, blobs)}
            with self._lock:
                self._chunk.update(fresh)
            got.update(fresh)
        return got

    def columns(self, names: list[str], groups: np.ndarray | None = None) -> pl.DataFrame:
        """Columns ``names`` (aligned to the schema: absent ones null) of every row, or of the
        rows of the selected row groups (``groups``: bool per group) in row order."""
        sch = self._attr_schema()
        names = [c for c in dict.fromkeys(names) if c in sch]
        if self.docs is None or (self._attrs is not None):
            a = self.attrs().select(names)
            if groups is not None:
                a = a.filter(pl.Series(self.group_rows_mask(groups)))
            return a
        gs = list(range(self.groups())) if groups is None else [int(g) for g in np.flatnonzero(groups)]
        with self._lock:
            full = {c: self._col[c] for c in names if c in self._col}
        rest = [c for c in names if c not in full and c in self.docs["columns"]]
        got = self._chunks([(c, g) for c in rest for g in gs])
        cols = []
        for c in names:
            if c in full:
                s = full[c] if groups is None else full[c].filter(pl.Series(self.group_rows_mask(groups)))
            elif c in self.docs["columns"]:
                if not gs:
                    continue  # no rows: aligned below as an empty column
                parts = [got[(c, g)] for g in gs]
                s = pl.concat(parts) if len(parts) > 1 else parts[0]
                if groups is None:
                    with self._lock:
                        self._col[c] = s
                        for g in gs:
                            self._chunk.pop((c, g), None)
            else:
                continue
            cols.append(s.alias(c))
        height = self.rows if groups is None else int(np.count_nonzero(self.group_rows_mask(groups)))
        df = pl.DataFrame(cols) if cols else pl.DataFrame(height=height)
        return frames.align(df, {c: sch[c] for c in names}, names)

    def group_rows_mask(self, groups: np.ndarray) -> np.ndarray:
        g = int(self.docs["group_rows"]) if self.docs is not None else max(1, self.rows)
        return np.repeat(np.asarray(groups, bool), g)[: self.rows]

    def rows_at(self, pos: np.ndarray, names: list[str]) -> pl.DataFrame:
        """Columns ``names`` (aligned) at row positions ``pos``, in that order: from the
        opened columns, else the chunks of just the row groups holding ``pos``."""
        pos = np.asarray(pos, dtype=np.int64)
        sch = self._attr_schema()
        names = [c for c in dict.fromkeys(names) if c in sch]
        if self.docs is None or self._attrs is not None or not len(pos):
            return self.attrs().select(names)[pl.Series(pos)] if len(pos) else self.attrs().select(names).clear()
        with self._lock:
            have = all(c in self._col for c in names)
        if have:
            return self.columns(names)[pl.Series(pos)]
        gr = int(self.docs["group_rows"])
        gs = np.unique(pos // gr)
        sel = np.zeros(self.groups(), bool)
        sel[gs] = True
        sub = self.columns(names, sel)
        # position p sits at (index of its group among the selected) * gr + p % gr
        rank = np.searchsorted(gs, pos // gr)
        return sub[pl.Series(rank * gr + pos % gr)]

    @reports_damage("tombstones")
    def alive(self) -> np.ndarray:
        with self._lock:
            if self._alive is None:
                t = self.meta.get("tombstones")
                dead = D.read_tomb(self.cache.file(self.store, t).read_bytes()) if t else None
                self._alive = D.alive_mask(self.rows, dead)
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
                s = self.id_column()
                self._idv = s.to_numpy() if s.dtype.is_integer() and not s.null_count() else False
            return self._idv if self._idv is not False else None

    def id_column(self) -> pl.Series:
        """The id of every row."""
        return self.attrs().get_column("id") if self.docs is None else self.columns(["id"]).get_column("id")

    @reports_damage("ids")
    def id_rows(self, pos: np.ndarray) -> np.ndarray | pl.Series:
        """The ids at row positions ``pos``: from the doc store when it is open or cached,
        else (integer ids) by ranged reads of the fixed-width id file."""
        m = self.meta.get("ids")
        with self._lock:
            opened = self._attrs is not None or self._idv is not None or "id" in self._col
        if self.docs is not None and m is None and not opened:
            return self.rows_at(pos, ["id"]).get_column("id")
        at_hand = self.cache.has(self.store, self.meta["attrs"]) if self.docs is None else self.docs_at_hand()
        if (got := self._from_ahead("id", np.asarray(pos, dtype=np.int64))) is not None:
            return got
        if m is None or opened or not len(pos) or at_hand:
            idv = self.id_values()
            return idv[pos] if idv is not None else self.id_column().gather(pos)
        key = pos.tobytes()  # a repeated query's rows: memoized (bounded), so a hot repeat reads nothing
        with self._lock:
            hit = self._id_memo.get(key)
        if hit is not None:
            return hit
        raw = paged.read_rows(self.cache, self.store, m, pos, 8)
        out = raw.view("<u8" if m["dtype"] == "u64" else "<i8").reshape(-1)
        with self._lock:
            self._id_memo[key] = out
            while len(self._id_memo) > ID_MEMO:
                self._id_memo.popitem(last=False)
        return out

    def _from_ahead(self, what: str, pos: np.ndarray):
        with self._lock:
            got = self._ahead.get(what)
        if got is None or not len(pos):
            return None
        have, rows = got
        at = np.searchsorted(have, pos)
        if (at >= len(have)).any() or (have[np.minimum(at, len(have) - 1)] != pos).any():
            return None
        return rows[at] if isinstance(rows, np.ndarray) else rows.gather(pl.Series(at))

    def memo_mask(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The boolean row mask named ``key`` (a filter over this immutable segment's
        attributes), computed once: the last MASK_MEMO of them are kept bit-packed (an
        eighth of a byte per row), so a filter a query repeats (a tenant, a category) is
        not evaluated over every row again."""
        with self._lock:
            hit = self._masks.get(key)
            if hit is not None:
                self._masks.move_to_end(key)
        if hit is not None:
            return np.unpackbits(hit, count=self.rows).view(bool)
        out = compute()
        with self._lock:
            self._masks[key] = np.packbits(out)
            while len(self._masks) > MASK_MEMO:
                self._masks.popitem(last=False)
        return out

    def rows_ahead_fit(self, f: str, n: int) -> bool:
        """Whether ``n`` rows of field ``f`` fit the read-ahead memo (``AHEAD_MAX_BYTES``)."""
        v = self.meta.get("vectors", {}).get(f)
        return v is not None and n * 4 * int(v["dims"]) <= AHEAD_MAX_BYTES

    def read_rows_ahead(self, f: str, pos: np.ndarray, also: Sequence[Callable[[], Any]] = ()) -> None:
        """Read the f32 vectors of field ``f`` and the ids at ``pos`` in one batch (with the
        calls ``also``) and keep them (``_ahead``, the last such read per field), so a later
        :meth:`vector_rows` / :meth:`id_rows` within them reads nothing: a cold filtered
        query searched exactly reads its rows once, not again for the re-rank."""
        pos = np.unique(np.asarray(pos, dtype=np.int64))
        vec, ids, *_ = ranged.parallel(
            [lambda: self.vector_rows(f, pos), lambda: self.id_rows(pos), *also], self.store.is_remote
        )
        with self._lock:
            if vec is not None:
                self._ahead[f] = (pos, vec)
            self._ahead["id"] = (pos, ids)

    def rows_bounded(self, f: str, pos: np.ndarray, max_ranges: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(f32 vectors of field ``f``, integer ids) at the sorted row positions ``pos`` of a
        remote segment, in one batch of requests, each file read in at most ``max_ranges``
        byte ranges (``ranged.bounded``: the narrowest gaps between wanted rows are read
        through; a range crossing a file part costs one request more): an exact search over
        many scattered rows costs a bounded number of requests, not one per row.  The ids
        are None when they are not a fixed-width file read by range (the re-rank reads them)."""
        v = self.meta.get("vectors", {}).get(f)
        m = self.meta.get("ids")
        pos = np.asarray(pos, dtype=np.int64)
        if v is None or not len(pos) or self.vectors_at_hand(f):
            return self.vector_rows(f, pos), None
        dims = int(v["dims"])
        with self._lock:
            opened = self._attrs is not None or self._idv is not None or "id" in self._col
        fns: list[Callable[[], np.ndarray]] = [
            lambda: self._read_bounded(v, pos, 4 * dims, max_ranges).view("<f4").reshape(len(pos), dims)
        ]
        if m is not None and not opened and not (self.docs is not None and self.docs_at_hand()):
            dt = "<u8" if m["dtype"] == "u64" else "<i8"
            fns.append(lambda: self._read_bounded(m, pos, 8, max_ranges).view(dt).reshape(-1))
        got = ranged.parallel(fns, self.store.is_remote)
        return got[0], (got[1] if len(got) > 1 else None)

    def _read_bounded(self, entry: dict, pos: np.ndarray, row_bytes: int, max_ranges: int) -> np.ndarray:
        spans = ranged.bounded(row_ranges(pos, row_bytes), max_ranges)
        got = paged.read_ranges(self.cache, self.store, entry, spans, 0.0)
        buf = np.frombuffer(b"".join(got), dtype=np.uint8).reshape(-1, row_bytes)
        first = np.asarray([a // row_bytes for a, _b in spans], np.int64)  # first row of each span
        base = np.concatenate([[0], np.cumsum([(b - a) // row_bytes for a, b in spans])[:-1]]).astype(np.int64)
        j = np.searchsorted(first, pos, side="right") - 1
        return buf[base[j] + pos - first[j]]

    def keep_ahead(self, what: str, pos: np.ndarray, rows: np.ndarray) -> None:
        """Keep the rows (f32 vectors of field ``what``, or ``"id"``) at sorted positions
        ``pos`` so the re-rank that follows reads none of them again (see :meth:`read_rows_ahead`)."""
        with self._lock:
            self._ahead[what] = (np.asarray(pos, np.int64), rows)

    def rerank_rows(self, f: str, pos: np.ndarray, also: Sequence[Callable[[], Any]] = ()):
        """(f32 vectors, ids) of candidates ``pos``: on a remote store both in one round trip,
        with the calls ``also`` (the returned attributes' chunks, :meth:`prefetch_rows`)."""
        fns = [lambda: self.vector_rows(f, pos), lambda: self.id_rows(pos), *also]
        vec, ids, *_ = ranged.parallel(fns, self.store.is_remote)
        return vec, ids

    def rerank_requests(self, f: str, pos: np.ndarray) -> int:
        """About how many requests :meth:`rerank_rows` of the sorted positions ``pos`` makes:
        the coalesced ranges of their f32 rows and of their ids (0 for rows at hand)."""
        v = self.meta.get("vectors", {}).get(f)
        if v is None or not len(pos) or self.vectors_at_hand(f):
            return 0
        n = len(ranged.coalesce(row_ranges(pos, 4 * int(v["dims"]))))
        with self._lock:
            opened = self._attrs is not None or self._idv is not None or "id" in self._col
        if self.meta.get("ids") is not None and not opened and not (self.docs is not None and self.docs_at_hand()):
            n += len(ranged.coalesce(row_ranges(pos, 8)))
        return n

    def rows_cost(self, pos: np.ndarray, names: list[str]) -> tuple[list[tuple[str, int]], int]:
        """The column chunks (column, group) that :meth:`rows_at` of ``pos`` and ``names``
        would fetch from the store (none when the doc store is at hand or the columns are
        open), and their compressed bytes (from the manifest)."""
        ent = self.docs
        if ent is None or self._attrs is not None or not len(pos) or self.docs_at_hand():
            return [], 0
        gr = int(ent["group_rows"])
        gs = np.unique(np.asarray(pos, dtype=np.int64) // gr)
        with self._lock:
            want = [
                (c, int(g))
                for c in dict.fromkeys(names)
                if c in ent["columns"] and c not in self._col
                for g in gs
                if (c, int(g)) not in self._chunk
            ]
        return want, sum(b - a for a, b in (D.chunk_range(ent, c, g) for c, g in want))

    def prefetch_rows(self, chunks: list[tuple[str, int]]) -> None:
        """Fetch and decode column chunks (from :meth:`rows_cost`) now, so a later
        :meth:`rows_at` of those rows reads none: the cold planner puts this in the batch
        of the re-rank reads (one round trip for both)."""
        if chunks:
            self._chunks(chunks)

    def ids(self) -> pl.DataFrame:
        """(id, __pos) of live rows."""
        with self._lock:
            if self._ids is None:
                self._ids = self.id_column().to_frame().with_row_index("__pos").filter(pl.Series(self.alive()))
            return self._ids

    @reports_damage("vectors")
    def vectors(self, f: str) -> np.ndarray | None:
        v = self.meta.get("vectors", {}).get(f)
        if v is None:
            return None
        with self._lock:
            got = self._vec.get(f)
        if got is None:
            # fetched outside the lock: the re-rank reads this segment's ids at the same time
            # (one round trip), and id_rows takes the lock
            path = paged.whole(self.cache, self.store, v)
            with self._lock:
                got = self._vec.get(f)  # another thread may have opened it meanwhile
                if got is None:
                    got = self._vec[f] = D.open_vectors(path, self.rows, v["dims"])
        return got

    @reports_damage("vectors")
    def vector_rows(self, f: str, pos: np.ndarray) -> np.ndarray | None:
        """The f32 vectors of field ``f`` at row positions ``pos`` (in that order).

        From the memory-mapped file when it is local or cached; otherwise by ranged
        reads of just those rows (a cold query re-ranks a few dozen rows: it should
        not download every vector of the segment; ``warm`` fetches whole files)."""
        v = self.meta.get("vectors", {}).get(f)
        if v is None:
            return None
        pos = np.asarray(pos, dtype=np.int64)
        dims = int(v["dims"])
        if not len(pos) or self.vectors_at_hand(f):
            vecs = self.vectors(f)
            assert vecs is not None  # the segment has vectors of f (v is set)
            return vecs[pos]
        if (got := self._from_ahead(f, pos)) is not None:
            return got
        raw = paged.read_rows(self.cache, self.store, v, pos, 4 * dims)
        return raw.view("<f4").reshape(len(pos), dims)

    def vectors_at_hand(self, f: str) -> bool:
        """Whether field ``f``'s f32 vectors are opened, local, cached or small (read whole
        in one request): else a cold query reads just the rows it needs, by range."""
        v = self.meta.get("vectors", {}).get(f)
        if v is None:
            return True
        with self._lock:
            if f in self._vec:
                return True
        return paged.cached(self.cache, self.store, v) or ranged.vectors_read_whole(self.rows, int(v["dims"]))

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
        iv = self.ivf(f)
        if iv is not None and iv[0].unindexed is not None:
            return iv[0].unindexed  # recorded at build time: no need for the vectors file
        with self._lock:
            if ("zero", f) not in self._norms:
                n = self.norms(f)
                self._norms[("zero", f)] = np.flatnonzero(n == 0).astype(np.int64)
            return self._norms[("zero", f)]

    @reports_damage("ann")
    def ivf(self, f: str, filtered: bool = False) -> tuple[ivf.Route, ivf.Lists] | None:
        """The IVF index of field ``f`` (format 2), or None (format-1 HNSW, or no index).
        The route is fetched whole; the lists are memory-mapped when the file is local or
        cached (or small), else read by ranges per query.  ``filtered``: the segment's filter
        codes (``lists4``, int4: ``Route.filter_copy``) where it has them."""
        m = self.meta.get("ann", {}).get(f)
        if m is None or m.get("kind") != ivf.KIND:
            return None
        which = "lists4" if filtered and m.get("lists4") else "lists"
        with self._lock:
            slot = f if which == "lists" else (f, which)
            got = self._ann.get(slot)
            if got is not None and not got[1].local and paged.at_hand(self.cache, self.store, m[which]):
                got = None  # fetched meanwhile (background fetch, warm): memory-map it
            if got is None:
                if which == "lists":
                    route = ivf.Route(
                        self.cache.file(self.store, m["route"]).read_bytes(), int(m["dims"]), self.gen.metric
                    )
                else:
                    base = self.ivf(f)
                    assert base is not None
                    route = base[0].filter_copy()
                ent = m[which]
                if paged.at_hand(self.cache, self.store, ent) or ranged.lists_read_whole(route.rows, route.dims):
                    got = (route, ivf.Lists(route, local=paged.whole(self.cache, self.store, ent)))
                else:
                    # the ranges are planned (Route.runs, bounded_runs, filtered.plan): no further gaps
                    got = (
                        route,
                        ivf.Lists(route, fetch=lambda rs, e=ent: paged.read_ranges(self.cache, self.store, e, rs, 0.0)),
                    )
                self._ann[slot] = got
            return got

    @reports_damage("ann")
    def ann(self, f: str):
        """The format-1 usearch HNSW of field ``f`` (generations built before IVF)."""
        m = self.meta.get("ann", {}).get(f)
        if m is None or m.get("kind") == ivf.KIND:
            return None
        with self._lock:
            if f not in self._ann:
                self._ann[f] = ann.open_view(self.cache.file(self.store, m["key"]), m.get("expansion_search"))
            return self._ann[f]

    @reports_damage("fts")
    def blocks(self, f: str) -> fts.BlockIndex | None:
        """The block index (format blk-1) of FTS field ``f`` under the analyzer in force, or
        None (older generations: tantivy + tokens + postings; a changed analyzer)."""
        with self._lock:
            if ("blk", f) in self._fts:  # the answer, None included (the generation's schema is fixed)
                return self._fts[("blk", f)]
            m = self.meta.get("fts", {}).get(f)
            bi = None
            if m and m.get("format") == fts.BLK and m.get("sig") == fts_sig_of(self.gen.schema.get(f)):
                ns = self.gen.manifest_key.split("/index/", 1)[0]
                bi = fts.BlockIndex(
                    m, partial(self._blk_ranges, m), partial(self._blk_damage, f), (self.store.url, ns, m["key"])
                )
            self._fts[("blk", f)] = bi
            return bi

    def sparse(self, f: str) -> sparse_index.SparseIndex | None:
        """The sparse index (format spk-1) of ``{}f16`` field ``f``, or None (none built)."""
        m = self.meta.get("sparse", {}).get(f)
        if not m or m.get("format") != sparse_index.SPK:
            return None
        with self._lock:
            if ("spk", f) not in self._fts:
                self._fts[("spk", f)] = sparse_index.SparseIndex(
                    m, partial(self._blk_ranges, m), partial(self._sparse_damage, f)
                )
            return self._fts[("spk", f)]

    def _sparse_damage(self, f: str, e: BaseException, missing: bool) -> BaseException:
        """What a sparse index read that failed raises (sparse.SparseIndex's ``damage``)."""
        err = self.damaged("sparse", (f,), e, missing=missing)
        return MissingIndexFile(err) if missing else err

    @reports_damage("fts")
    def _blk_ranges(self, m: dict, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Bytes of ``ranges`` of a block index file: from the local or cached file, else by
        coalesced ranged reads (one batch of requests)."""
        if not self.store.is_remote or paged.cached(self.cache, self.store, m):
            path = paged.whole(self.cache, self.store, m)
            out = []
            with open(path, "rb") as fh:
                for a, b in ranges:
                    fh.seek(a)
                    out.append(fh.read(b - a))
            return out
        return _stashed_or_read(self.cache, self.store, m, ranges)

    @reports_damage("fts")
    def fts(self, f: str):
        m = self.meta.get("fts", {}).get(f)
        if m is None or m.get("format"):
            return None
        with self._lock:
            if f not in self._fts:
                d = self.cache.directory(self.store, m["files"], m["prefix"])
                self._fts[f] = fts.Reader(d, self.gen.schema[f]["full_text_search"], self.rows)
            return self._fts[f]

    @reports_damage("tokens")
    def tokens(self, f: str) -> pl.Series | None:
        """The stored analysed tokens of FTS field ``f`` (one joined string per row), if any."""
        m = self.meta.get("fts", {}).get(f)
        if not m or not m.get("tokens") or m.get("sig") != fts_sig_of(self.gen.schema.get(f)):
            return None
        with self._lock:
            if ("tok", f) not in self._fts:
                self._fts[("tok", f)] = pl.read_ipc(self.cache.file(self.store, m["tokens"]))["t"]
            return self._fts[("tok", f)]

    @reports_damage("postings")
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

    def frame(self, pos: np.ndarray, vector_fields: list[str], columns: list[str] | None = None) -> pl.DataFrame:
        """Rows at ``pos``: attributes (``columns`` of them, default all) + the given vector fields."""

        def attrs() -> pl.DataFrame:
            if columns is None and self.docs is None:
                idx = pl.Series(np.asarray(pos, dtype=np.int64))
                return self.attrs()[idx] if len(pos) else self.attrs().clear()
            return self.rows_at(pos, list(self._attr_schema()) if columns is None else columns)

        def vec(f: str) -> pl.Series:
            dims = types.vector_dims(self.gen.schema[f]["type"])
            assert dims is not None  # f is a vector field
            rows = self.vector_rows(f, pos) if len(pos) else None
            if rows is None:
                rows = np.full((len(pos), dims), np.nan, np.float32)
            return D.vector_series(f, rows, dims)

        # on an object store the attribute chunks and the vector rows in one round trip
        got = ranged.parallel([attrs] + [partial(vec, f) for f in vector_fields], self.store.is_remote)
        df = got[0]
        assert isinstance(df, pl.DataFrame)
        return df.with_columns(got[1:]) if len(got) > 1 else df

    def warm(self) -> None:
        if self.docs is not None:
            paged.whole(self.cache, self.store, self.docs)  # one fetch of the file, not a request per chunk
        self.attrs()
        self.alive()
        for f in self.meta.get("vectors", {}):
            self.vectors(f)
        for f, m in self.meta.get("ann", {}).items():
            if m.get("kind") == ivf.KIND:
                paged.whole(self.cache, self.store, m["lists"])
                if m.get("lists4"):
                    paged.whole(self.cache, self.store, m["lists4"])
                with self._lock:
                    self._ann.pop(f, None)  # reopen memory-mapped
                    self._ann.pop((f, "lists4"), None)
                self.ivf(f)
            else:
                self.ann(f)
        for f, m in self.meta.get("sparse", {}).items():
            paged.whole(self.cache, self.store, m)
            self.sparse(f)
        for f, m in self.meta.get("fts", {}).items():
            if m.get("format"):
                paged.whole(self.cache, self.store, m)
                self.blocks(f)
                continue
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
        self._terms: dict[str, DfTable | dfblocks.RangedDf] = {}
        self._books: dict[str, tuple[ivf.Book, np.ndarray] | None] = {}
        self._book_ends: dict[str, np.ndarray] = {}
        self._stacks: dict[str, tuple[stack.Stack, list[int]] | None] = {}
        self._lock = threading.Lock()

    def book(self, f: str) -> tuple[ivf.Book, np.ndarray] | None:
        """The shared routing of vector field ``f`` (format 3) and the members of each of its
        lists over every segment that follows it; None for older generations.  The book
        comes with the manifest (the pointer's prefetch), the counts from the segments'
        routes (prefetched too)."""
        ent = self.man.get("ann_books", {}).get(f)
        if not ent:
            return None
        with self._lock:
            if f in self._books:
                return self._books[f]
        book = ivf.Book.from_bytes(self.cache.file(self.store, ent["key"]).read_bytes())
        sizes = np.zeros(book.nlist, np.int64)
        for seg in self.segments:
            iv = seg.ivf(f)
            if iv is not None and iv[0].book == book.id:
                sizes += np.diff(iv[0].offsets)
        with self._lock:
            self._books[f] = (book, sizes)
        return self._books[f]

    def book_ends(self, f: str) -> np.ndarray:
        """Where each list of field ``f``'s book ends among the members of every list before
        it (list order: a stack's, or a segment's lists file), computed once."""
        with self._lock:
            ends = self._book_ends.get(f)
        if ends is None:
            got = self.book(f)
            ends = np.cumsum(got[1]) if got is not None else np.zeros(0, np.int64)
            with self._lock:
                self._book_ends[f] = ends
        return ends

    def stack(self, f: str, fetch: bool = False) -> tuple[stack.Stack, list[int]] | None:
        """The list-major lists of vector field ``f`` (index/stack.py) and the indexes of the
        segments it covers, in its order; None without one.  Memory-mapped when its lists
        file is local or cached, else read by ranges (a cold query), unless ``fetch``
        (``puffer warm``: fetched whole into the cache)."""
        ent = self.man.get("ann_stacks", {}).get(f)
        if not ent:
            return None
        with self._lock:
            known = f in self._stacks
            have = self._stacks.get(f)
        if known and (have is None or have[0].local):
            return have
        ahead = not self.store.is_remote or paged.at_hand(self.cache, self.store, ent["lists"])
        if have is not None and not (fetch or ahead):
            return have  # read by ranges until the file is cached (warm, or the cache's background fetch)
        at = {s.name: i for i, s in enumerate(self.segments)}
        covered = [at[n] for n in ent["segments"] if n in at]
        iv = self.segments[covered[0]].ivf(f) if covered and len(covered) == len(ent["segments"]) else None
        got = None if iv is None else (self._open_stack(f, ent, iv[0], fetch or ahead), covered)
        with self._lock:
            self._stacks[f] = got
        return got

    def _open_stack(self, f: str, ent: dict, route: ivf.Route, whole: bool) -> Stack:
        """The stack of ``ent``: its lists file memory-mapped (``whole``: fetched into the
        cache first when remote) or read by ranges; CorruptIndex / MissingIndexFile when a
        file is damaged or missing (a ranged read: when it is read)."""
        try:
            route_file = self.cache.file(self.store, ent["route"]).read_bytes()
            if whole:
                return stack.Stack(route_file, paged.whole(self.cache, self.store, ent["lists"]), route)
            lists = ent["lists"]
            pb = int(lists["part_bytes"]) if lists.get("parts") else None
            return stack.Stack(route_file, None, route, fetch=partial(self._stack_ranges, f, ent), part_bytes=pb)
        except (FileNotFoundError, *_DECODE_ERRORS) as e:
            raise self._stack_damage(f, ent, e) from e

    def _stack_ranges(self, f: str, ent: dict, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Byte ranges of a stack's lists file (one batch of requests); a short read or a
        missing part is damage, reported as such."""
        try:
            got = paged.read_ranges(self.cache, self.store, ent["lists"], ranges, extra=0.0)
            for (a, b), g in zip(ranges, got):
                if len(g) != b - a:
                    raise ValueError(f"bytes {a}..{b} of the lists file: {len(g)} read")
            return got
        except (FileNotFoundError, *_DECODE_ERRORS) as e:
            raise self._stack_damage(f, ent, e) from e

    def stack_damaged(self, f: str, e: BaseException) -> BaseException:
        """What a query reports on finding the stack of field ``f`` inconsistent (``e``): CorruptIndex
        naming its files, with the repair hint."""
        return self._stack_damage(f, self.man["ann_stacks"][f], e)

    def _stack_damage(self, f: str, ent: dict, e: BaseException) -> BaseException:
        ns = self.manifest_key.split("/index/", 1)[0]
        missing = isinstance(e, FileNotFoundError)
        state = "is missing" if missing else f"is damaged ({type(e).__name__}: {str(e)[:200]})"
        err = CorruptIndex(
            f"namespace {ns!r}: index file {ent['lists']['key']} / {ent['route']} (the list-major "
            f"stack of {f!r}, generation {self.generation}) {state}",
            hint=repair_hint(ns),
        )
        return MissingIndexFile(err) if missing else err

    @property
    def live_rows(self) -> int:
        return int(sum(s["live"] for s in self.man["segments"]))

    def field_stats(self, f: str):
        """Global BM25 statistics of the indexed documents (bm25.FieldStats); the document
        frequencies are read by block as terms are looked up (dfblocks.RangedDf), or whole
        (an Arrow table: generations before df blocks)."""
        from puffer_cli.text.bm25 import FieldStats

        b = self.man.get("bm25", {}).get(f)
        if b is None:
            return None
        with self._lock:
            if f not in self._terms:
                ent = b.get("df_blocks")
                if ent is not None:
                    self._terms[f] = dfblocks.RangedDf(ent, partial(self._df_ranges, ent))
                else:
                    self._terms[f] = DfTable(pl.read_ipc(self.cache.file(self.store, b["terms"])))
        return FieldStats(int(b["n_rows"]), int(b["total_len"]), self._terms[f])

    def prefetch_df(self, f: str, terms) -> None:
        """Read the document frequencies of ``terms`` (one batch of ranged reads)."""
        st = self.field_stats(f)
        if st is not None and isinstance(st.df, dfblocks.RangedDf):
            st.df.prefetch(terms)

    def _df_ranges(self, ent: dict, ranges: list[tuple[int, int]]) -> list[bytes]:
        if not self.store.is_remote or paged.cached(self.cache, self.store, ent):
            with open(paged.whole(self.cache, self.store, ent), "rb") as fh:
                out = []
                for a, b in ranges:
                    fh.seek(a)
                    out.append(fh.read(b - a))
                return out
        return _stashed_or_read(self.cache, self.store, ent, ranges)

    def lookup(self, ids: pl.Series) -> list[tuple[int, np.ndarray]]:
        """[(segment index, positions)] of live index rows with these ids."""

        def live(i: int) -> pl.DataFrame:
            L.check_deadline()
            return self.segments[i].ids()

        if self.store.is_remote and len(self.segments) > 1 and len(ids):
            ranged.parallel(
                [partial(live, i) for i in range(len(self.segments))]
            )  # one round trip, not one per segment
        return list(D.locate(ids, live, len(self.segments)))

    def files(self) -> list[str]:
        return list(self.man.get("files", []))


def _stashed_or_read(cache: Cache, store: Store, entry: dict, ranges: list[tuple[int, int]]) -> list[bytes]:
    """Ranges of a file: those the pointer's full-text hint read ahead (fts_hint), the others
    by ranged reads (one batch)."""
    got = fts_hint.take(store, entry["key"], ranges)
    miss = [r for r, g in zip(ranges, got) if g is None]
    if miss:
        more = iter(paged.read_ranges(cache, store, entry, miss))
        got = [g if g is not None else next(more) for g in got]
    return [g for g in got if g is not None]


#: opened generations, keyed (store url, namespace, manifest key, cache root)
GENS = caches.lru("index.generations", 32)


def generation_open(store: Store, ptr: dict, cache: Cache | None = None) -> bool:
    """True when generation ``ptr`` is open in this process already (no manifest read)."""
    cache = cache or get_cache()
    return (store.url, ptr["manifest"].split("/", 1)[0], ptr["manifest"], str(cache.root)) in GENS


def open_generation(store: Store, ptr: dict, cache: Cache | None = None) -> Generation:
    return open_generation_with(store, ptr, (), cache)[0]


def open_generation_with(
    store: Store,
    ptr: dict,
    also: Sequence[Callable[[], Any]],
    cache: Cache | None = None,
    vectors: bool = True,
) -> tuple[Generation, list]:
    """The generation ``ptr`` names, and the results of the calls ``also`` (the strong
    query's WAL listing), run in the same batch as the manifest read: one round trip when
    cold for the manifest, the keys the pointer names (IVF routes, tombstones, small lists:
    they land in the cache for the segments) and ``also``.  ``vectors`` false: the keys only
    a vector-ranked query reads (the pointer's ``prefetch_vector``) are skipped; a later
    vector query of the open generation fetches those it misses in this same batch."""
    cache = cache or get_cache()
    key = (store.url, ptr["manifest"].split("/", 1)[0], ptr["manifest"], str(cache.root))
    g = GENS.get(key)
    first: list[Callable[[], Any]] = []
    skip = set() if vectors else {k for k in ptr.get("prefetch_vector", []) if isinstance(k, str)}
    pre = [k for k in ptr.get("prefetch", []) if isinstance(k, str) and k not in skip]
    if g is None:
        first = [lambda: load_manifest(store, ptr["manifest"])]
    elif not store.is_remote or not ptr.get("prefetch_vector"):
        pre = []  # local, or an older pointer: everything came with the first open
    want = [k for k in pre if not cache.has(store, k)]
    packed = _packed(ptr, want) if vectors and store.is_remote else []
    skip = set(packed)
    rest: list[Callable[[], Any]] = [partial(prefetch, cache, store, k) for k in want if k not in skip]
    if packed:  # one request for the small files instead of one each (index/pack.py)
        rest.append(partial(prefetch_pack, cache, store, ptr["prefetch_pack"]["key"], packed))
    # ``also`` right after the manifest: with more prefetch keys than threads it still starts at once
    got = ranged.parallel(first + list(also) + rest, store.is_remote)
    if g is None:
        g = Generation(store, cache, got[0], ptr["manifest"])
        GENS.put(key, g)
    return g, got[len(first) : len(first) + len(also)]


def _packed(ptr: dict, want: list[str]) -> list[str]:
    """The keys of ``want`` the pointer's prefetch pack holds, when there are two or more
    (one is cheaper fetched alone)."""
    pk = ptr.get("prefetch_pack")
    if not isinstance(pk, dict) or not isinstance(pk.get("key"), str) or not isinstance(pk.get("unpacked", []), list):
        return []  # none, or not one this version wrote: the files one by one
    holds = {k for k in ptr.get("prefetch_vector", []) if isinstance(k, str)} - set(map(str, pk.get("unpacked", [])))
    got = [k for k in want if k in holds]
    return got if len(got) > 1 else []


def prefetch_pack(cache: Cache, store: Store, key: str, keys: list[str]) -> None:
    """Fetch the prefetch pack ``key`` and put ``keys`` from it in the cache; a pack missing
    or damaged is logged (its files are then fetched one by one where they are read: one
    round trip more, the same answer; ``index --repair`` writes it again)."""
    try:
        data = store.read(key)
        files = pack.unpack(data, keys)
    except FileNotFoundError:
        log.warning("prefetch pack %s is missing; reading its files one by one (puffer index --repair)", key)
        return
    except ValueError as e:
        log.warning("prefetch pack %s is damaged (%s); reading its files one by one (puffer index --repair)", key, e)
        return
    cache.put_fetched(store, files, len(data))


def prefetch(cache: Cache, store: Store, key: str) -> None:
    try:
        cache.file(store, key)
    except FileNotFoundError:
        pass  # collected: the manifest read fails the same way, and the caller retries
