"""``puffer index``: build and publish an index generation, then garbage-collect.

One run on one namespace (docs/indexer.md has the whole story):

1. take the namespace lease (``lease.py``); a live lease held by someone else
   -> status ``busy``, nothing done;
2. read meta.json's ``index`` pointer (generation g0, ``covers_through_seq`` s0)
   and its manifest;
3. fold WAL entries s0+1..head in bounded batches: every id an entry touches is
   looked up once in the live rows of the index (its row there becomes a
   tombstone; its current version is the fold base), so ``pending`` holds
   exactly the new versions of touched documents;
4. pick segments to merge (dead ratio > 20%, an index missing for a field, small
   ones size-tiered with the new rows, or more than MAX_SEGMENTS segments) and write
   new segments = live rows of merged segments + pending: doc store, an IVF per vector
   field, a block index (blk-1) per FTS field;
5. write tombstone files for the surviving old segments, the global BM25 term
   tables, and the manifest of generation g = max(existing) + 1;
6. publish by CAS on meta.json only if its pointer is still g0 and we still hold
   the lease (never regresses); the previous generation is *retained* for the
   grace period so readers mid-query keep their files;
7. GC: delete every key under ``index/`` that neither the current manifest nor
   a retained one references (orphans of crashed runs included).

All data files are new immutable keys, so a run killed at any point leaves
only unreferenced files (collected by the next run) and an expiring lease.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from puffer_cli import config
from puffer_cli.errors import Conflict, plural
from puffer_cli.index import dfblocks, fts, fts_hint, ivf, muvera, pack, paged, retention, stack
from puffer_cli.index import docs as D
from puffer_cli.index.base import BaseRows
from puffer_cli.index.gc import gc
from puffer_cli.index.hooks import crash
from puffer_cli.index.lease import Lease
from puffer_cli.index.manifest import MANIFESTS as _MANIFESTS  # noqa: F401  (tests and benchmarks clear it)
from puffer_cli.index.manifest import ann_sig, fts_sig, load_manifest
from puffer_cli.index.segwrite import (
    Writer,
    note,
    prefetch_keys,
    segment_files,
    sparse_fields,
    vector_prefetch_keys,
    write_segment,
)
from puffer_cli.schema import frames, types
from puffer_cli.schema import spec as S
from puffer_cli.store import Store, layout, now_ms
from puffer_cli.store.filecache import Cache, get_cache
from puffer_cli.wal import replay
from puffer_cli.wal.namespace import Namespace

FORMAT = (
    3  # 3: shared IVF routing (ivf.Book, ``ann_books``); 2: an IVF-SQ8 per segment; 1: HNSW (rebuilt by the next run)
)
MAX_SEGMENTS = 16
#: a small segment joins the rows being written when at most this many times their size: fewer
#: segments for queries to visit against more rows rewritten (bench_incremental at 2M, 100 runs of
#: +0.1%: 1 -> 4 keeps 3-5 segments instead of 3-8, writes 764 MB instead of 373; warm p50 against a
#: fresh build x1.04-1.14 instead of x1.26-1.31)
TIER_FANIN = 4
SEGMENT_MAX_ROWS = 1_000_000  # rows per segment at most: bounds a run's memory and the per-segment IVF cost
DEAD_RATIO = 0.2
BATCH_ROWS = 200_000
DEFAULT_GRACE_S = 600.0


def default_grace() -> float:
    """DEFAULT_GRACE_S, or ``PUFFER_INDEX_GC_GRACE`` (through config.from_env)."""
    g = config.from_env().index_gc_grace_s
    return DEFAULT_GRACE_S if g is None else g


def _negated(st: dict) -> dict:
    """Statistics (fts.term_stats) with every count negated: adding them removes those rows."""
    return {
        "n_rows": -st["n_rows"],
        "n_docs": -st["n_docs"],
        "total_len": -st["total_len"],
        "df": Counter({t: -c for t, c in st["df"].items()}),
    }


def segment_rows() -> int:
    """SEGMENT_MAX_ROWS, or ``PUFFER_INDEX_SEGMENT_ROWS`` (through config.from_env; a tuning and
    test knob: the SIGKILL tests cut segments of a few rows, in the indexer's own process)."""
    n = config.from_env().index_segment_rows
    return SEGMENT_MAX_ROWS if n is None else n


@dataclass
class IndexReport:
    namespace: str
    status: str = "up-to-date"  # indexed | up-to-date | busy | empty | failed
    generation: int | None = None
    covers_through_seq: int = 0
    head_seq: int = 0
    rows_indexed: int = 0  # new/updated documents put in the new segment
    rows_tombstoned: int = 0  # index rows superseded (updated or deleted)
    rows_merged: int = 0  # live rows moved from merged segments
    segments: int = 0
    segments_merged: int = 0
    live_rows: int = 0
    files_written: int = 0
    bytes_written: int = 0
    gc_deleted: int = 0
    wal_deleted: int = 0  # WAL entries collected by retention (index/retention.py)
    repaired: list[str] = field(default_factory=list)  # damaged segments rebuilt (--repair)
    seconds: float = 0.0
    held_by: str | None = None
    held_until: int | None = None
    message: str = ""
    partial: bool = False  # stopped early (--max-seconds); run again

    def as_dict(self) -> dict:
        return asdict(self)

    def changed(self) -> bool:
        """Did this run change the store (what ``index --quiet`` reports)?"""
        return self.status in ("indexed", "failed") or bool(self.gc_deleted or self.wal_deleted or self.repaired)

    def summary(self) -> str:
        if self.status == "busy":
            return f"{self.namespace}: skipped, {self.message}"
        if self.status == "failed":
            return f"{self.namespace}: FAILED: {self.message}"
        if self.status == "empty":
            return f"{self.namespace}: nothing to index (no writes)"
        if self.status == "up-to-date":
            gc = f", gc deleted {plural(self.gc_deleted, 'file')}" if self.gc_deleted else ""
            gc += f", {plural(self.wal_deleted, 'WAL entry')} collected" if self.wal_deleted else ""
            return (
                f"{self.namespace}: up to date (generation {self.generation}, seq {self.covers_through_seq}, "
                f"{plural(self.segments, 'segment')}, {plural(self.live_rows, 'row')}{gc}) in {self.seconds:.2f}s"
            )
        more = f" (partial: head is {self.head_seq}, run again)" if self.partial else ""
        return (
            f"{self.namespace}: indexed {plural(self.rows_indexed, 'row')}, tombstoned {self.rows_tombstoned:,}, "
            f"merged {plural(self.segments_merged, 'segment')} ({plural(self.rows_merged, 'row')}) -> generation "
            f"{self.generation} covering seq {self.covers_through_seq}{more}; {plural(self.segments, 'segment')}, "
            f"{plural(self.live_rows, 'row')}, {plural(self.files_written, 'file')} "
            f"{self.bytes_written / 1e6:,.1f} MB, gc deleted {self.gc_deleted}"
            + (f", {plural(self.wal_deleted, 'WAL entry')} collected" if self.wal_deleted else "")
            + (f", repaired {', '.join(self.repaired)}" if self.repaired else "")
            + f" in {self.seconds:.2f}s"
        )


# ---------------------------------------------------------------- the run
def index_namespace(
    ns: Namespace,
    *,
    max_seconds: float | None = None,
    gc_grace_s: float | None = None,
    lease_ttl: float | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
    cache: Cache | None = None,
    threads: int = 0,
    repair: bool = False,
    wal_retention_s: float | None = None,
) -> IndexReport:
    """Index one namespace (one run). Never raises for 'busy'; raises on failure.
    ``repair``: check every file of the current generation and rebuild damaged segments
    (a missing file is found and repaired by every run). ``wal_retention_s``: see
    index/retention.py (default ``PUFFER_WAL_RETENTION`` or 7 days)."""
    t0 = time.perf_counter()
    rep = IndexReport(ns.name)
    cache = cache or ns.cache or get_cache()
    grace = default_grace() if gc_grace_s is None else gc_grace_s
    lease = Lease(ns.store, ns.name, ttl=lease_ttl)
    held = lease.acquire()
    if held is not None:
        rep.status, rep.held_by, rep.held_until, rep.message = "busy", held.holder, held.expires_at, held.describe()
        rep.seconds = time.perf_counter() - t0
        return rep
    try:
        crash("after_lease")
        _build(ns, lease, rep, cache, max_seconds, grace, progress, threads, t0, repair)
        rep.gc_deleted = gc(ns, progress=progress)
        if rep.status in ("indexed", "up-to-date"):
            rep.wal_deleted = retention.collect(ns, wal_retention_s)
    finally:
        lease.release()
    rep.seconds = time.perf_counter() - t0
    return rep


def _build(
    ns: Namespace, lease: Lease, rep: IndexReport, cache: Cache, max_seconds, grace, progress, threads, t0, repair
) -> None:
    """One run, as the module docstring's steps 2-6."""
    with ivf.routing_run():
        _steps(_Run(ns, lease, rep, cache, grace, progress), max_seconds, t0, repair)


def _steps(run: _Run, max_seconds, t0, repair) -> None:
    if not run.start():
        return
    run.check_damage(full=repair)
    run.fold(max_seconds, t0)
    groups = run.choose()
    if groups is None:
        return
    run.write_segments(groups)
    run.write_tombstones()
    run.write_stacks()
    run.write_bm25()
    run.write_manifest()
    run.publish()


class _Run:
    """The state of one index run; each method is one step of the module docstring."""

    def __init__(self, ns: Namespace, lease: Lease, rep: IndexReport, cache: Cache, grace: float, progress):
        self.ns, self.store, self.lease, self.rep, self.cache = ns, ns.store, lease, rep, cache
        self.grace, self.progress = grace, progress
        self.seg_rows = segment_rows()
        meta, _ = ns.read_meta()
        self.ptr = (meta or {}).get("index")
        self.base_man = load_manifest(self.store, self.ptr["manifest"]) if self.ptr else None
        self.covers = int(self.ptr["covers_through_seq"]) if self.ptr else 0
        self.base_gen = self.ptr["generation"] if self.ptr else None
        self.schema: dict = dict(self.base_man["schema"]) if self.base_man else {}
        self.metric = self.base_man.get("distance_metric") if self.base_man else None
        self.base = BaseRows(self.store, cache, self.base_man)
        self.pending: pl.DataFrame | None = None  # new versions of touched documents, not yet in a segment
        self.seen: pl.Series | None = None  # ids whose current version is in ``pending``
        self.cut: list[int] = []  # base indices of segments cut from ``pending`` during the fold
        self.stats_removed: dict[str, list] = {}  # FTS field -> values of index rows superseded
        self.n_taken = 0
        self.last = self.covers
        self._gen: int | None = None
        self._w: Writer | None = None
        self.segments: list[dict] = []  # written after the fold
        self.force: set[int] = set()  # damaged segments whose rows are readable: rewritten
        self.recompute_bm25 = False
        self.kept: list[dict] = []
        self.bm25: dict = {}
        self.books: dict[str, ivf.Book] = {}  # vector field -> the shared routing segments follow
        self.book_entries: dict[str, dict] = {}  # ... as the manifest's ``ann_books`` names it
        self.stack_entries: dict[str, dict] = {}  # the manifest's ``ann_stacks``: list-major lists (index/stack.py)
        self.lost_stacks: set[str] = set()  # fields whose base stack is damaged (check_damage)
        self.lost_pack = False  # the base's prefetch pack is missing or damaged (check_damage)
        self.pack_entry: dict | None = None  # the pointer's ``prefetch_pack`` (index/pack.py)
        self.books_decided = False
        self.lost_books: set[str] = set()

    # -- 2. the base and the head ---------------------------------------------------
    def start(self) -> bool:
        self.head = self.ns.head()
        self.rep.head_seq = self.head.seq
        if self.head.seq == 0:
            self.rep.status = "empty"
            return False
        return True

    @property
    def gen(self) -> int:
        """This run's generation number (chosen on first use: max(existing, current) + 1)."""
        if self._gen is None:
            existing = [int(d) for d in self.store.list_dirs(layout.index_root(self.ns.name)) if d.isdigit()]
            self._gen = max([*existing, self.base_gen or 0]) + 1
            self.run_id = uuid.uuid4().hex[:8]
        return self._gen

    @property
    def w(self) -> Writer:
        if self._w is None:
            self._w = Writer(self.store, self.cache, self.rep)
        return self._w

    # -- damaged files (--repair; a missing file is found by every run) -------------------
    def check_damage(self, full: bool) -> None:
        """Find segments of the base whose files are missing (one listing) or, with ``full``,
        have another size than the manifest recorded or do not decode; rebuild them: a segment
        whose rows (doc store, ids, vectors) are intact is rewritten from them, any other from
        the state at ``covers_through_seq`` (the WAL, or the WAL floor's generation) minus the
        rows the intact segments hold."""
        if self.base_man is None:
            return
        present = set(self.store.list(layout.index_root(self.ns.name)))
        # a missing shared routing file: decide_books trains a new one (every segment rebuilt)
        self.lost_books = {f for f, b in self.base_man.get("ann_books", {}).items() if b.get("key") not in present}
        self.rep.repaired += sorted(self.base_man["ann_books"][f]["key"] for f in self.lost_books)
        sizes = self.base_man.get("sizes", {})
        # a damaged list-major stack: write_stacks writes it again (from the segments)
        for f, e in self.base_man.get("ann_stacks", {}).items():
            keys = [*paged.files(e["lists"]), e["route"]]
            if any(k not in present or (full and k in sizes and self.store.size(k) != sizes[k]) for k in keys):
                self.lost_stacks.add(f)
                self.rep.repaired.append(e["route"])
        # a damaged prefetch pack: any new generation writes another (the up-to-date check below)
        pk = self.base_man.get("prefetch_pack")
        if pk and (pk["key"] not in present or (full and not self._pack_intact(pk))):
            self.lost_pack = True
            self.rep.repaired.append(pk["key"])
        damaged: dict[int, list[str]] = {}
        for i, s in enumerate(self.base.segs):
            bad = [k for k in segment_files(s) if k not in present]
            if full and not bad:
                bad = [k for k in segment_files(s) if k in sizes and self.store.size(k) != sizes[k]]
                if not bad:
                    bad = self._undecodable(i)
            if bad:
                damaged[i] = bad
        if not damaged:
            return

        def rows_files(s: dict) -> set[str]:
            vec = {k for v in s.get("vectors", {}).values() for k in paged.files(v)}
            docs = [s["attrs"]] if s.get("attrs") else paged.files(s["docs"])
            return {*docs, *(paged.files(s["ids"]) if s.get("ids") else []), *vec}

        lost = [i for i, bad in damaged.items() if set(bad) & rows_files(self.base.segs[i])]
        self.force = {i for i in damaged if i not in lost}
        self.recompute_bm25 = True
        self.rep.repaired = [self.base.segs[i]["name"] for i in sorted(damaged)]
        note(self.progress, "repair", 0, len(damaged))
        if lost:
            self._recover_from_wal(lost)

    def _undecodable(self, i: int) -> list[str]:
        """The files of segment ``i`` that fail to decode (old manifests record no sizes)."""
        s = self.base.segs[i]
        try:
            D.segment_attrs(self.cache, self.store, s)
        except Exception:  # noqa: BLE001 - any failure to decode is damage here
            return [s["attrs"]] if s.get("attrs") else paged.files(s["docs"])
        return []

    def _recover_from_wal(self, lost: list[int]) -> None:
        base = self.base
        state, _head = self.ns.docs(self.covers)
        intact = [i for i in range(len(base.segs)) if i not in lost]
        have = [base.ids(i).get_column("id") for i in intact]
        rows = state
        if have:
            ids = pl.concat(have).cast(state.get_column("id").dtype)
            rows = state.join(ids.to_frame(), on="id", how="anti")
        for i in lost:  # every row of a lost segment is dead; its files are never read again
            n = int(base.segs[i]["rows"])
            base.new_dead[i].append(np.arange(n, dtype=np.int64))
            base._ids[i] = pl.DataFrame({"id": pl.Series([], dtype=rows.get_column("id").dtype)}).with_row_index(
                "__pos"
            )
        self.pending = frames.align(rows, self.schema) if rows.height else None
        self.seen = rows.get_column("id") if rows.height else None

    # -- 3. fold the WAL tail onto the touched rows ----------------------------------
    def fold(self, max_seconds, t0) -> None:
        batch: list = []
        rows = 0
        stopped = False
        for f in replay.follow(self.ns.entries(self.covers, self.head.seq), self.schema, self.metric):
            e = f.entry
            if f.schema_changed:
                self._flush(batch)  # folds under the schema before this entry
                batch, rows = [], 0
            self.schema, self.metric = f.schema, f.metric
            batch.extend(e.ops)
            rows += sum(op.rows for op in e.ops)
            self.last = e.seq
            if rows >= BATCH_ROWS:
                self._flush(batch)
                batch, rows = [], 0
            note(self.progress, "fold", self.last - self.covers, self.head.seq - self.covers)
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds * 0.5 and self.last < self.head.seq:
                stopped = True
                break
        self._flush(batch)
        self.rep.partial = stopped
        if not self.schema:
            self.schema = self.head.schema
        self.metric = self.metric or self.head.metric
        crash("after_fold")

    def _flush(self, batch: list) -> None:
        """Fold ``batch`` onto ``pending``: each touched id's index row (if any) is taken
        out of the base once (a tombstone) and becomes the fold base."""
        if not batch:
            return
        schema = self.schema
        idt = S.dtype_of(schema["id"]["type"])
        with_rows = [op.table.get_column("id").cast(idt) for op in batch if op.rows]
        touched = pl.concat(with_rows).unique() if with_rows else pl.Series("id", [], dtype=idt)
        seen = self.seen
        new = touched if seen is None else touched.to_frame().join(seen.to_frame(), on="id", how="anti")["id"]
        self.seen = new if seen is None else pl.concat([seen.cast(idt), new])
        got = self.base.take(new, schema) if new.len() else None
        if got is not None:
            self.n_taken += got.height
            for f in D.fts_fields(schema):
                self.stats_removed.setdefault(f, []).append(got.get_column(f).to_list())
        parts = [p for p in (self.pending, got) if p is not None]
        cur = (
            frames.align(pl.concat([frames.align(p, schema) for p in parts], how="vertical"), schema) if parts else None
        )
        self.pending = replay.fold(cur, schema, batch)
        self._cut_full()

    def _cut_full(self) -> None:
        """Write full segments out of ``pending`` as soon as it holds SEGMENT_MAX_ROWS rows,
        so a run's memory is bounded however many rows it indexes.  A cut segment joins the
        base: a later entry touching one of its ids tombstones it there, like any index row."""
        while self.pending is not None and self.pending.height >= self.seg_rows:
            if not self.books_decided:
                # the rows this run will index, extrapolated from the WAL folded so far
                done = self.pending.height + sum(int(self.base.segs[i]["rows"]) for i in self.cut)
                frac = (self.head.seq - self.covers) / max(1, self.last - self.covers)
                self.decide_books(self.base_live() + int(done * max(1.0, frac)))
            chunk, self.pending = self.pending.slice(0, self.seg_rows), self.pending.slice(self.seg_rows)
            seg = write_segment(
                self.w, self.ns.name, self.gen, chunk, self.schema, self.metric, self.progress, books=self.books
            )
            self.w.drain()  # its files are read back as part of the base
            self.cut.append(self.base.add(seg))
            crash("after_cut")
            self.rep.rows_indexed += chunk.height
            ids = chunk.get_column("id")
            assert self.seen is not None
            self.seen = self.seen.to_frame().join(ids.to_frame(), on="id", how="anti")["id"]

    # -- 4. choose what to merge ---------------------------------------------------------
    def choose(self) -> list[list[int]] | None:
        """Groups of base segments to rewrite (the last group also takes ``pending``), or
        None when there is nothing to do.  Segments are rewritten when stale (an index
        missing or built with other options) or over DEAD_RATIO dead; a segment under
        self.seg_rows joins the new rows when it is at most TIER_FANIN times what is
        already being written (size-tiered: a row is rewritten about
        TIER_FANIN x log(self.seg_rows / batch) / log(TIER_FANIN + 1) times), or when
        there are more than MAX_SEGMENTS segments."""
        base, schema = self.base, self.schema
        vec_fields, fts_fields = D.vector_fields(schema), D.fts_fields(schema)
        if not self.books_decided:
            self.decide_books(self.base_live() + (self.pending.height if self.pending is not None else 0))
        keep: list[int] = []
        rebuild: list[int] = []
        for i, s in enumerate(base.segs):
            if i in self.cut:
                continue
            dead = base.all_dead(i)
            if s["rows"] - len(dead) <= 0:
                continue  # fully dead: dropped
            stale = any(
                f not in s.get("ann", {})
                or s["ann"][f].get("sig") != ann_sig(schema[f], self.metric)
                or self._other_book(s["ann"][f], f)
                for f in vec_fields
            ) or any(f not in s.get("fts", {}) or s["fts"][f].get("sig") != fts_sig(schema[f]) for f in fts_fields)
            stale = stale or any(f not in s.get("sparse", {}) for f in sparse_fields(schema))
            # a multi-vector field without its files, or without the token centroids (its recall): rebuilt
            stale = stale or any(
                f not in s.get("mv", {}) or not s["mv"][f].get("plaid") for f in muvera.multi_fields(schema)
            )
            stale = stale or i in self.force
            (rebuild if stale or len(dead) > DEAD_RATIO * s["rows"] else keep).append(i)
        acc = self.pending.height if self.pending is not None else 0
        small = [i for i in sorted(keep, key=lambda i: base.segs[i]["rows"]) if base.segs[i]["rows"] < self.seg_rows]
        joined: list[int] = []
        for i in small:
            live = base.segs[i]["rows"] - len(base.all_dead(i))
            too_many = len(keep) - len(joined) + len(self.cut) + 1 > MAX_SEGMENTS
            if acc and (live <= TIER_FANIN * acc or too_many) and acc + live <= self.seg_rows:
                joined.append(i)
                acc += live
        keep = [i for i in keep if i not in joined]
        self.keep = keep + self.cut
        # big segments are rewritten on their own (bounded memory), small ones with the new rows
        big = [i for i in rebuild if base.segs[i]["rows"] >= self.seg_rows // 2]
        groups = [[i] for i in big] + [[i for i in rebuild if i not in big] + joined]
        new_rows = self.pending.height if self.pending is not None else 0
        if (
            self.last == self.covers
            and not rebuild
            and not joined
            and len(keep) == len(base.segs)
            and not self._stacks_missing()
            and not self.lost_pack
        ):
            rep = self.rep
            rep.status = "up-to-date"
            rep.generation = self.base_gen
            rep.covers_through_seq = self.covers
            rep.segments = len(base.segs)
            rep.live_rows = sum(s["live"] for s in base.segs)
            return None
        self.rep.segments_merged = len(rebuild) + len(joined)
        self.rep.rows_indexed += new_rows
        return groups

    # -- the shared routing (format 3, ivf.Book) ------------------------------------------
    def base_live(self) -> int:
        """Live rows of the base segments (those cut by this run excluded)."""
        return int(
            sum(s["rows"] - len(self.base.all_dead(i)) for i, s in enumerate(self.base.segs) if i not in self.cut)
        )

    def _other_book(self, ann: dict, f: str) -> bool:
        """Does a segment's index of ``f`` follow another routing than this run's book?"""
        book = self.books.get(f)
        if book is None:
            return False
        return ann.get("book") != book.id and int(ann.get("vectors", 1)) > 0

    def decide_books(self, total: int) -> None:
        """Per vector field: keep the base's book while the namespace holds between
        1/GROWTH and GROWTH times the rows it was trained for; else train a new one on a
        uniform sample of every live row (the base's and the pending ones), and every
        segment that follows the old one is rebuilt by this run (``_other_book``)."""
        self.books_decided = True
        old_books = (self.base_man or {}).get("ann_books", {})
        if not ivf.decide_routing(total, bool(old_books)):
            return
        for f in D.vector_fields(self.schema):
            sig = ann_sig(self.schema[f], self.metric)
            old = old_books.get(f)
            if old is not None and old.get("sig") == sig and f not in self.lost_books:
                t = max(1, int(old["trained_rows"]))
                if t / ivf.GROWTH <= max(1, total) <= t * ivf.GROWTH:
                    try:
                        self.books[f] = ivf.Book.from_bytes(self.cache.file(self.store, old["key"]).read_bytes())
                        self.book_entries[f] = old
                        continue
                    except Exception as e:  # noqa: BLE001 - missing or undecodable: a new book rebuilds every segment
                        note(self.progress, f"ivf {f} routing unreadable ({e}); retraining", 0, None)
                        self.rep.repaired.append(old["key"])

            def prog(stage: str, done: int, tot: int, f: str = f) -> None:
                note(self.progress, f"ivf {f} routing: {stage}", done, tot)

            list_rows = ivf.build_options(self.schema[f])["list_rows"]
            book = ivf.train_book(self._sample(f, ivf.BOOK_SAMPLE_MAX), total, list_rows, self.metric, progress=prog)
            if book is None:
                continue
            gen = self.gen  # (sets run_id)
            key = layout.index_run_file(self.ns.name, gen, f"book-{D.field_tag(f)}", self.run_id, "npz")
            self.w.put(key, book.to_bytes())
            self.books[f] = book
            self.book_entries[f] = {
                "key": key,
                "id": book.id,
                "trained_rows": book.trained_rows,
                "lists_n": book.nlist,
                "sig": sig,
                "generation": gen,
            }
        crash("after_book")

    def _sample(self, f: str, n: int) -> np.ndarray:
        """Up to about ``n`` vectors of field ``f`` drawn uniformly from the live rows of the
        base segments (not cut by this run) and the pending rows."""
        dims = types.vector_dims(self.schema[f]["type"])
        assert dims is not None  # f is a vector field
        rng = np.random.default_rng(0)
        sources: list[tuple[int, int]] = []  # (segment index or -1 for pending, live rows)
        for i, s in enumerate(self.base.segs):
            if i not in self.cut and f in s.get("vectors", {}):
                sources.append((i, int(s["rows"] - len(self.base.all_dead(i)))))
        if self.pending is not None and self.pending.height:
            sources.append((-1, self.pending.height))
        total = sum(c for _i, c in sources)
        parts = [np.zeros((0, dims), np.float32)]
        for i, c in sources:
            take = c if total <= n else int(round(n * c / total))
            if take <= 0:
                continue
            if i < 0:
                assert self.pending is not None
                pick = np.sort(rng.choice(c, min(take, c), replace=False))
                parts.append(D.vector_matrix(self.pending[pl.Series(pick)], f, dims))
            else:
                v = self.base.segs[i]["vectors"][f]
                mat = D.open_vectors(paged.whole(self.cache, self.store, v), self.base.segs[i]["rows"], v["dims"])
                live = self.base.live_positions(i)
                pick = np.sort(rng.choice(live, min(take, len(live)), replace=False))
                parts.append(np.asarray(mat[pick], dtype=np.float32))
        return np.concatenate(parts)

    # -- the new segments -----------------------------------------------------------------
    def write_segments(self, groups: list[list[int]]) -> None:
        base = self.base
        for gi, group in enumerate(groups):
            parts = []
            for i in group:
                pos = base.live_positions(i)
                if len(pos):
                    parts.append(base.rows(i, pos, self.schema))
            n_old = sum(p.height for p in parts)
            self.rep.rows_merged += n_old
            last = gi == len(groups) - 1
            if last and self.pending is not None and self.pending.height:
                parts.append(frames.align(self.pending, self.schema))
            if not parts:
                continue
            frame = pl.concat(parts, how="vertical") if len(parts) > 1 else parts[0]
            for a in range(0, frame.height, self.seg_rows):
                chunk = frame.slice(a, self.seg_rows)
                new = np.arange(a, a + chunk.height) >= (n_old if last else frame.height)  # merged rows: not new
                seg = write_segment(
                    self.w, self.ns.name, self.gen, chunk, self.schema, self.metric, self.progress, new, self.books
                )
                self.segments.append(seg)
        crash("after_segment")

    def _stack_segments(self, segs: list[dict], f: str, book_id: str) -> list[dict]:
        """The segments of ``segs`` a stack of field ``f`` covers: those following the book with
        at least half a full segment's rows (the big ones, which runs rewrite on their own), when
        there are two or more; an incremental run's small segments are searched on their own."""
        least = max(1, self.seg_rows // 2)
        cov = [
            s
            for s in segs
            if s.get("ann", {}).get(f, {}).get("book") == book_id and int(s["ann"][f].get("vectors", 0)) >= least
        ]
        return cov if len(cov) >= 2 else []

    def _pack_intact(self, pk: dict) -> bool:
        """Does the base's prefetch pack hold every file it should, each matching its CRC?"""
        m = self.base_man or {}
        keys = vector_prefetch_keys(m.get("segments", []), m.get("ann_books"), m.get("ann_stacks"))
        holds = [k for k in keys if k not in set(pk.get("unpacked", []))]
        try:
            pack.unpack(self.store.read(pk["key"]), holds)
        except (ValueError, FileNotFoundError):
            return False
        return True

    def _stacks_missing(self) -> bool:
        """Does the base generation lack a stack it should have (damaged, or written before
        stacks were), so a run with nothing else to do writes one?"""
        if self.lost_stacks:
            return True
        have = (self.base_man or {}).get("ann_stacks", {})
        return any(
            f not in have and self._stack_segments(self.base.segs, f, b["id"]) for f, b in self.book_entries.items()
        )

    def write_stacks(self) -> None:
        """Per vector field under shared routing: the list-major lists (index/stack.py) of the
        big segments following its book (:meth:`_stack_segments`); kept from the base
        generation while they are the same segments."""
        old_stacks = (self.base_man or {}).get("ann_stacks", {})
        segs = self.kept + self.segments
        for f, book in self.book_entries.items():
            cov = self._stack_segments(segs, f, book["id"])
            if not cov:
                continue
            names = [s["name"] for s in cov]
            old = old_stacks.get(f)
            if (
                old is not None
                and old.get("segments") == names
                and old.get("book") == book["id"]
                and f not in self.lost_stacks
            ):
                self.stack_entries[f] = old
                continue
            self.w.drain()  # this run's segment files, readable
            dims = int(cov[0]["vectors"][f]["dims"])
            routes, paths = [], []
            for s in cov:
                m = s["ann"][f]
                routes.append(ivf.Route(self.cache.file(self.store, m["route"]).read_bytes(), dims, self.metric))
                paths.append(str(paged.whole(self.cache, self.store, m["lists"])))
            members = int(sum(r.rows for r in routes))
            route_file, size = stack.plan(routes)
            tag = D.field_tag(f)
            key = layout.index_run_file(self.ns.name, self.gen, f"stack-{tag}", self.run_id, "lists")
            rkey = layout.index_run_file(self.ns.name, self.gen, f"stack-{tag}", self.run_id, "npz")
            # streamed a step at a time (the segments' lists read by range, not mapped) into
            # the file or its parts as they fill: the run's memory is a few parts, not the
            # file's size (30M x 100 dims: 3.1 GB held in one buffer before)
            lists = paged.put_chunks(self.w, key, stack.files_chunks(routes, paths), size, stack.PART_BYTES)
            self.stack_entries[f] = {
                "lists": lists,
                "route": self.w.put(rkey, route_file),
                "segments": names,
                "book": book["id"],
                "members": members,
                "generation": self.gen,
            }
        crash("after_stack")

    # -- 5. tombstones, BM25 statistics, manifest ---------------------------------------------
    def write_tombstones(self) -> None:
        base, ns = self.base, self.ns.name
        for i in self.keep:
            s = dict(base.segs[i])
            if base.new_dead[i]:
                dead = base.all_dead(i)
                key = layout.index_run_file(ns, self.gen, f"tomb-{s['name']}", self.run_id, "npy")
                s["tombstones"] = self.w.put(key, D.tomb_bytes(dead))
                s["dead"] = int(len(dead))
                s["live"] = int(s["rows"] - len(dead))
            self.kept.append(s)
        self.rep.rows_tombstoned = self.n_taken

    def write_bm25(self) -> None:
        for f in D.fts_fields(self.schema):
            old = (self.base_man or {}).get("bm25", {}).get(f)
            if old is not None and old.get("sig") == fts_sig(self.schema[f]) and not self.recompute_bm25:
                n_rows, n_docs, total, df, add = self._bm25_incremental(f, old)
            else:
                n_rows, n_docs, total, df, add = self._bm25_recompute(f)
            st = fts.sum_stats(add)
            df.update(st["df"])
            df = +df  # drop zero / negative counts
            terms = sorted(df)
            data, first, off = dfblocks.encode(terms, [df[t] for t in terms])
            key = layout.index_run_file(self.ns.name, self.gen, f"bm25-{D.field_tag(f)}", self.run_id, "dfb")
            self.bm25[f] = {
                "sig": fts_sig(self.schema[f]),
                "n_rows": n_rows + st["n_rows"],
                "n_docs": n_docs + st["n_docs"],
                "total_len": total + st["total_len"],
                # the df table in blocks read by range (dfblocks; before it: "terms", Arrow, whole)
                "df_blocks": {**paged.put(self.w, key, data), "format": dfblocks.FORMAT, "first": first, "off": off},
            }
        crash("after_bm25")  # the df blocks written, no manifest names them yet

    def _bm25_incremental(self, f: str, old: dict):
        """The previous statistics minus the superseded rows; the new rows' tokens to add."""
        opts = self.schema[f]["full_text_search"]
        n_rows, n_docs, total = old["n_rows"], old["n_docs"], old["total_len"]
        df = _read_terms(self.store, self.cache, old)
        for vals in self.stats_removed.get(f, []):
            st = fts.term_stats(vals, opts)
            n_rows -= st["n_rows"]
            n_docs -= st["n_docs"]
            total -= st["total_len"]
            df.subtract(st["df"])
        cut = [self.base.segs[i] for i in self.cut]
        add = [seg["_fts_new"][f] for seg in cut + self.segments]
        return n_rows, n_docs, total, df, add

    def _bm25_recompute(self, f: str):
        """From every live row: segments written by this run from the statistics their build
        counted (less the rows that died since), older kept segments from their files."""
        opts = self.schema[f]["full_text_search"]
        sig = fts_sig(self.schema[f])
        add: list = []
        for s in self.kept:
            t = s.get("tombstones")
            alive = D.alive_mask(s["rows"], D.read_tomb(self.store.read(t)) if t else None)
            own = s.get("_fts_stats", {}).get(f) if s.get("fts", {}).get(f, {}).get("sig") == sig else None
            if own is not None:  # cut by this run: no second pass over its text (1M docs: 30 s, 1.5 GB)
                add.append(own)
                if not alive.all():
                    a = D.segment_attrs(self.cache, self.store, s).filter(~pl.Series(alive))
                    add.append(_negated(fts.term_stats(a.get_column(f).to_list(), opts)))
                continue
            tk = s.get("fts", {}).get(f, {}).get("tokens")
            if tk is not None and s["fts"][f].get("sig") == sig:
                col = pl.read_ipc(self.cache.file(self.store, tk))["t"].filter(pl.Series(alive))
                add.append(
                    fts.stats_of_tokens([[] if x is None or x == "" else x.split(fts.SEP) for x in col.to_list()])
                )
                continue
            a = D.segment_attrs(self.cache, self.store, s).filter(pl.Series(alive))
            add.append(fts.term_stats(a.get_column(f).to_list() if f in a.columns else [None] * a.height, opts))
        for seg in self.segments:
            add.append(seg["_fts_stats"][f])
        return 0, 0, 0, Counter(), add

    def write_manifest(self) -> None:
        all_segs = [{k: v for k, v in s.items() if not k.startswith("_")} for s in self.kept + self.segments]
        self.all_segs = all_segs
        man = {
            "format": FORMAT,
            "generation": self.gen,
            "base_generation": self.base_gen,
            "covers_through_seq": self.last,
            "created_at": now_ms(),
            "schema": self.schema,
            "distance_metric": self.metric,
            "segments": all_segs,
            "bm25": self.bm25,
            "ann_books": self.book_entries,  # the shared routing per vector field (ivf.Book)
            "ann_stacks": self.stack_entries,  # list-major lists per vector field (index/stack.py)
        }
        self.mkey = layout.index_manifest(self.ns.name, self.gen, self.run_id)
        files = set()
        for s in all_segs:
            files.update(segment_files(s))
        files.update(k for b in self.bm25.values() for k in bm25_files(b))
        files.update(b["key"] for b in self.book_entries.values())
        for e in self.stack_entries.values():
            files.update([*paged.files(e["lists"]), e["route"]])
        self.pack_entry = self._write_pack(all_segs)
        if self.pack_entry is not None:
            man["prefetch_pack"] = self.pack_entry
            files.add(self.pack_entry["key"])
        files.add(self.mkey)
        man["files"] = sorted(files)
        man["sizes"] = {k: n for k, n in {**self.base_sizes(), **self.w.sizes}.items() if k in files}
        self.w.drain()
        self.w.put(self.mkey, json.dumps(man, sort_keys=True).encode())
        self.w.drain()
        self.w.close()
        crash("after_manifest")

    def _write_pack(self, all_segs: list[dict]) -> dict | None:
        """On a remote store, the prefetch pack (index/pack.py) of the small files a cold vector
        query reads with the manifest; its pointer entry (None: fewer than two such files)."""
        if not self.store.is_remote:
            return None
        keys = vector_prefetch_keys(all_segs, self.book_entries, self.stack_entries)
        small, unpacked = pack.plan(keys, {**self.base_sizes(), **self.w.sizes})
        if not small:
            return None
        self.w.drain()  # the files it copies are written
        data = pack.build(small, lambda k: self.cache.file(self.store, k).read_bytes())
        key = layout.index_run_file(self.ns.name, self.gen, "prefetch", self.run_id, "zip")
        self.w.put(key, data, cache=False)
        crash("after_pack")
        return {"key": key, "unpacked": unpacked}

    def base_sizes(self) -> dict[str, int]:
        return dict((self.base_man or {}).get("sizes", {}))

    # -- 6. publish ----------------------------------------------------------------------------
    def publish(self) -> None:
        ns, gen, base_gen, last = self.ns, self.gen, self.base_gen, self.last
        if not self.lease.check():
            raise Conflict(f"namespace {ns.name!r}: lost the indexer lease before publishing generation {gen}")
        now = now_ms()
        live = int(sum(s["live"] for s in self.all_segs))
        routing = prefetch_keys(self.all_segs, self.book_entries, self.stack_entries)
        fts_dir = fts_hint.pointer_hint(self.all_segs, self.bm25)

        def swap(cur):
            cur = cur or {
                "format": 1,
                "namespace": ns.name,
                "created_at": self.head.created_at or now,
                "last_seq": last,
                "schema": self.schema,
                "distance_metric": self.metric,
            }
            old = cur.get("index") or {}
            if old.get("generation") != base_gen:
                raise Conflict(
                    f"namespace {ns.name!r}: index generation moved to {old.get('generation')} "
                    f"while building {gen} on {base_gen}; nothing published"
                )
            retained = [r for r in old.get("retained", []) if r["until"] > now]
            if old.get("generation") is not None:
                retained.append(
                    {
                        "generation": old["generation"],
                        "manifest": old["manifest"],
                        "until": now + int(self.grace * 1000),
                    }
                )
            cur["index"] = {
                "generation": gen,
                "covers_through_seq": last,
                "manifest": self.mkey,
                "published_at": now,
                "segments": len(self.all_segs),
                "rows": live,
                "prefetch": routing,  # routes, tombstones, small lists: a cold reader fetches them with the manifest
                # of those, what only a vector-ranked query reads (a Count or BM25 query skips them)
                "prefetch_vector": vector_prefetch_keys(self.all_segs, self.book_entries, self.stack_entries),
                # the small ones of those in one object (index/pack.py)
                **({"prefetch_pack": self.pack_entry} if self.pack_entry is not None else {}),
                "retained": retained,
            }
            if fts_dir is not None:  # where a BM25 query's dictionary reads are (fts_hint)
                cur["index"]["fts"] = fts_dir
            return cur

        if ns.update_meta(swap) is None:
            raise Conflict(f"namespace {ns.name!r}: could not publish generation {gen} (meta.json CAS kept failing)")
        crash("after_publish")
        rep = self.rep
        rep.status = "indexed"
        rep.generation = gen
        rep.covers_through_seq = last
        rep.segments = len(self.all_segs)
        rep.live_rows = live


def bm25_files(entry: dict) -> list[str]:
    """The keys of a manifest's ``bm25`` entry of a field (df blocks, or the older Arrow table)."""
    return paged.files(entry["df_blocks"]) if "df_blocks" in entry else [entry["terms"]]


def _read_terms(store: Store, cache: Cache, entry: dict) -> Counter:
    """The whole df table of a ``bm25`` entry (df blocks, or the older Arrow table)."""
    if "df_blocks" in entry:
        data = paged.whole(cache, store, entry["df_blocks"]).read_bytes()
        off = entry["df_blocks"]["off"]
        out: Counter = Counter()
        for a, b in zip(off[:-1], off[1:]):
            out.update(dfblocks.decode_block(data[a:b]))
        return out
    t = pl.read_ipc(cache.file(store, entry["terms"]))
    return Counter(dict(zip(t["term"].to_list(), t["df"].to_list())))
