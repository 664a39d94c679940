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
4. pick segments to merge (dead ratio > 20%, an index missing for a field, or
   more than 8 segments) and write ONE new segment = live rows of merged
   segments + pending: doc store, usearch per vector field, tantivy per FTS field;
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
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from .. import layout, replay
from .. import schema as S
from ..cache import Cache, get_cache
from ..errors import Conflict
from ..namespace import Namespace
from ..store import Store, now_ms
from . import ann, fts
from . import docs as D
from .lease import Lease
from .manifest import MANIFESTS as _MANIFESTS  # noqa: F401  (tests and benchmarks clear it)
from .manifest import ann_sig, fts_sig, load_manifest, manifest_files

FORMAT = 1
MAX_SEGMENTS = 8
MERGE_TO = 4
DEAD_RATIO = 0.2
BATCH_ROWS = 200_000
DEFAULT_GRACE_S = 600.0


def default_grace() -> float:
    try:
        return float(os.environ.get("PUFFER_INDEX_GC_GRACE", DEFAULT_GRACE_S))
    except ValueError:
        return DEFAULT_GRACE_S


def _crash(point: str) -> None:
    """Test hooks: ``PUFFER_INDEX_CRASH_AT=point`` SIGKILLs this process there;
    ``PUFFER_INDEX_PAUSE_AT=point:seconds`` sleeps there (to force overlaps)."""
    if os.environ.get("PUFFER_INDEX_CRASH_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get("PUFFER_INDEX_PAUSE_AT", "")
    if pause.startswith(point + ":"):
        time.sleep(float(pause.split(":", 1)[1]))


CRASH_POINTS = (
    "after_lease",
    "after_fold",
    "mid_segment",
    "after_segment",
    "after_manifest",
    "after_publish",
    "mid_gc",
)


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
    seconds: float = 0.0
    held_by: str | None = None
    held_until: int | None = None
    message: str = ""
    partial: bool = False  # stopped early (--max-seconds); run again

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.status == "busy":
            return f"{self.namespace}: skipped, {self.message}"
        if self.status == "failed":
            return f"{self.namespace}: FAILED: {self.message}"
        if self.status == "empty":
            return f"{self.namespace}: nothing to index (no writes)"
        if self.status == "up-to-date":
            gc = f", gc deleted {self.gc_deleted} files" if self.gc_deleted else ""
            return (
                f"{self.namespace}: up to date (generation {self.generation}, seq {self.covers_through_seq}, "
                f"{self.segments} segments, {self.live_rows:,} rows{gc}) in {self.seconds:.2f}s"
            )
        more = f" (partial: head is {self.head_seq}, run again)" if self.partial else ""
        return (
            f"{self.namespace}: indexed {self.rows_indexed:,} rows, tombstoned {self.rows_tombstoned:,}, "
            f"merged {self.segments_merged} segments ({self.rows_merged:,} rows) -> generation {self.generation} "
            f"covering seq {self.covers_through_seq}{more}; {self.segments} segments, {self.live_rows:,} rows, "
            f"{self.files_written} files {self.bytes_written / 1e6:,.1f} MB, gc deleted {self.gc_deleted} "
            f"in {self.seconds:.2f}s"
        )


# ---------------------------------------------------------------- base view
class _Base:
    """Live rows of the published generation, for id lookups during a build."""

    def __init__(self, store: Store, cache: Cache, man: dict | None):
        self.store, self.cache, self.man = store, cache, man
        self.segs = list(man["segments"]) if man else []
        self._ids: list[pl.DataFrame | None] = [None] * len(self.segs)
        self.dead: list[np.ndarray] = []
        for s in self.segs:
            if s.get("tombstones"):
                self.dead.append(D.read_tomb(store.read(s["tombstones"])).astype(np.int64))
            else:
                self.dead.append(np.zeros(0, np.int64))
        self.new_dead: list[list[np.ndarray]] = [[] for _ in self.segs]
        self._attrs: dict[int, pl.DataFrame] = {}

    def attrs(self, i: int) -> pl.DataFrame:
        if i not in self._attrs:
            self._attrs[i] = D.read_attrs(self.cache.file(self.store, self.segs[i]["attrs"]))
        return self._attrs[i]

    def ids(self, i: int) -> pl.DataFrame:
        if self._ids[i] is None:
            a = self.attrs(i).select("id").with_row_index("__pos")
            dead = self.dead[i]
            if len(dead):
                alive = np.ones(a.height, bool)
                alive[dead] = False
                a = a.filter(pl.Series(alive))
            self._ids[i] = a
        return self._ids[i]

    def rows(self, i: int, pos: np.ndarray, schema: dict) -> pl.DataFrame:
        """Full rows (attributes + vectors) at positions ``pos`` of segment ``i``, aligned to schema."""
        seg = self.segs[i]
        df = self.attrs(i)[pos.tolist()] if len(pos) else self.attrs(i).clear()
        cols = []
        for f, v in seg.get("vectors", {}).items():
            mat = D.open_vectors(self.cache.file(self.store, v["key"]), seg["rows"], v["dims"])
            cols.append(
                D.vector_series(
                    f, np.asarray(mat[pos]) if len(pos) else np.zeros((0, v["dims"]), np.float32), v["dims"]
                )
            )
        if cols:
            df = df.with_columns(cols)
        known = {c for c in df.columns if c in schema}
        return S.align(df.select([c for c in df.columns if c in known]), schema)

    def live_positions(self, i: int) -> np.ndarray:
        dead = self.all_dead(i)
        alive = np.ones(self.segs[i]["rows"], bool)
        alive[dead] = False
        return np.nonzero(alive)[0]

    def all_dead(self, i: int) -> np.ndarray:
        parts = [self.dead[i], *self.new_dead[i]]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def take(self, ids: pl.Series, schema: dict) -> pl.DataFrame | None:
        """Remove ``ids`` from the live set (tombstone) and return their rows."""
        out = []
        want = pl.DataFrame({"id": ids})
        for i in range(len(self.segs)):
            if want.height == 0:
                break
            idf = self.ids(i)
            if want["id"].dtype != idf["id"].dtype:
                want = want.with_columns(pl.col("id").cast(idf["id"].dtype))
            hit = idf.join(want, on="id", how="semi")
            if hit.height == 0:
                continue
            pos = hit["__pos"].to_numpy().astype(np.int64)
            self.new_dead[i].append(pos)
            self._ids[i] = idf.join(hit.select("id"), on="id", how="anti")
            out.append(self.rows(i, pos, schema))
            want = want.join(hit.select("id"), on="id", how="anti")
        if not out:
            return None
        return pl.concat(out, how="vertical")


# ---------------------------------------------------------------- the run
class _Writer:
    """Uploads new immutable files; on a remote store in parallel (``drain()`` waits
    for all of them: the manifest is written only after every file it names)."""

    def __init__(self, store: Store, cache: Cache, rep: IndexReport):
        self.store, self.cache, self.rep = store, cache, rep
        self.keys: list[str] = []
        self._pool = None
        self._futs: list = []
        if store.is_remote:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(8, thread_name_prefix="puffer-upload")

    def _write(self, key: str, data: bytes) -> None:
        self.store.write(key, data)
        self.cache.put(self.store, key, data)

    def put(self, key: str, data: bytes) -> str:
        if self._pool is not None:
            self._futs.append(self._pool.submit(self._write, key, data))
        else:
            self._write(key, data)
        self.keys.append(key)
        self.rep.files_written += 1
        self.rep.bytes_written += len(data)
        return key

    def drain(self) -> None:
        futs, self._futs = self._futs, []
        for f in futs:
            f.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def index_namespace(
    ns: Namespace,
    *,
    max_seconds: float | None = None,
    gc_grace_s: float | None = None,
    lease_ttl: float | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
    cache: Cache | None = None,
    threads: int = 0,
) -> IndexReport:
    """Index one namespace (one run). Never raises for 'busy'; raises on failure."""
    t0 = time.perf_counter()
    rep = IndexReport(ns.name)
    cache = cache or get_cache()
    grace = default_grace() if gc_grace_s is None else gc_grace_s
    lease = Lease(ns.store, ns.name, ttl=lease_ttl)
    held = lease.acquire()
    if held is not None:
        rep.status, rep.held_by, rep.held_until, rep.message = "busy", held.holder, held.expires_at, held.describe()
        rep.seconds = time.perf_counter() - t0
        return rep
    try:
        _crash("after_lease")
        _build(ns, lease, rep, cache, max_seconds, grace, progress, threads, t0)
        rep.gc_deleted = gc(ns, progress=progress)
    finally:
        lease.release()
    rep.seconds = time.perf_counter() - t0
    return rep


def _note(progress, stage, done=0, total=None):
    if progress:
        progress(stage, done, total)


def _build(
    ns: Namespace, lease: Lease, rep: IndexReport, cache: Cache, max_seconds, grace, progress, threads, t0
) -> None:
    store = ns.store
    meta, _ = ns.read_meta()
    ptr = (meta or {}).get("index")
    base_man = load_manifest(store, ptr["manifest"]) if ptr else None
    covers = int(ptr["covers_through_seq"]) if ptr else 0
    head = ns.head()
    rep.head_seq = head.seq
    if head.seq == 0:
        rep.status = "empty"
        return
    schema = dict(base_man["schema"]) if base_man else {}
    metric = base_man.get("distance_metric") if base_man else None
    base = _Base(store, cache, base_man)

    # -- 3. fold the WAL tail onto the touched rows ----------------------------
    pending: pl.DataFrame | None = None
    seen: pl.Series | None = None
    last = covers
    batch: list = []
    batch_rows = 0
    n_taken = 0
    stats_removed: dict[str, list] = {}

    def flush():
        nonlocal pending, seen, batch, batch_rows, n_taken
        if not batch:
            return
        idt = S.dtype_of(schema["id"]["type"])
        touched = (
            pl.concat([op.table.get_column("id").cast(idt) for op in batch if op.rows]).unique()
            if any(op.rows for op in batch)
            else pl.Series("id", [], dtype=idt)
        )
        new = touched if seen is None else touched.to_frame().join(seen.to_frame(), on="id", how="anti")["id"]
        seen = new if seen is None else pl.concat([seen.cast(idt), new])
        got = base.take(new, schema) if new.len() else None
        parts = [p for p in (pending, got) if p is not None]
        if got is not None:
            n_taken += got.height
            for f in D.fts_fields(schema):
                stats_removed.setdefault(f, []).append(got.get_column(f).to_list())
        cur = S.align(pl.concat([S.align(p, schema) for p in parts], how="vertical"), schema) if parts else None
        pending = replay.fold(cur, schema, batch)
        batch, batch_rows = [], 0

    stopped = False
    for e in ns.entries(covers, head.seq):
        new_schema = e.header.get("schema")
        if new_schema is not None and new_schema != schema:
            flush()
            schema = new_schema
        if e.header.get("distance_metric"):
            metric = e.header["distance_metric"]
        batch.extend(e.ops)
        batch_rows += sum(op.rows for op in e.ops)
        last = e.seq
        if batch_rows >= BATCH_ROWS:
            flush()
        _note(progress, "fold", last - covers, head.seq - covers)
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds * 0.5 and last < head.seq:
            stopped = True
            break
    flush()
    rep.partial = stopped
    if not schema:
        schema = head.schema
    metric = metric or head.metric
    _crash("after_fold")

    # -- 4. choose segments to merge --------------------------------------------
    vec_fields = D.vector_fields(schema)
    fts_fields = D.fts_fields(schema)
    keep_idx, merge_idx = [], []
    for i, s in enumerate(base.segs):
        dead = base.all_dead(i)
        live = s["rows"] - len(dead)
        if live <= 0:
            continue  # fully dead: dropped
        stale = any(
            f not in s.get("ann", {}) or s["ann"][f].get("sig") != ann_sig(schema[f], metric) for f in vec_fields
        ) or any(f not in s.get("fts", {}) or s["fts"][f].get("sig") != fts_sig(schema[f]) for f in fts_fields)
        if stale or len(dead) > DEAD_RATIO * s["rows"]:
            merge_idx.append(i)
        else:
            keep_idx.append(i)
    new_rows = pending.height if pending is not None else 0
    if len(keep_idx) + (1 if new_rows or merge_idx else 0) > MAX_SEGMENTS:
        by_size = sorted(keep_idx, key=lambda i: base.segs[i]["rows"])
        while len(keep_idx) + 1 > MAX_SEGMENTS // 2 + 1 and by_size:
            j = by_size.pop(0)
            keep_idx.remove(j)
            merge_idx.append(j)
    if last == covers and not merge_idx and len(keep_idx) == len(base.segs):
        rep.status = "up-to-date"
        rep.generation = ptr["generation"] if ptr else None
        rep.covers_through_seq = covers
        rep.segments = len(base.segs)
        rep.live_rows = sum(s["live"] for s in base.segs)
        return

    # -- generation number --------------------------------------------------------
    existing = [int(d) for d in store.list_dirs(layout.index_root(ns.name)) if d.isdigit()]
    gen = max([*existing, ptr["generation"] if ptr else 0]) + 1
    run = uuid.uuid4().hex[:8]
    w = _Writer(store, cache, rep)

    # -- the new segment ------------------------------------------------------------
    merged_parts = []
    for i in merge_idx:
        pos = base.live_positions(i)
        if len(pos):
            merged_parts.append(base.rows(i, pos, schema))
    rep.rows_merged = sum(p.height for p in merged_parts)
    rep.segments_merged = len(merge_idx)
    parts = merged_parts + ([S.align(pending, schema)] if pending is not None and pending.height else [])
    segments = []
    if parts:
        frame = pl.concat(parts, how="vertical") if len(parts) > 1 else parts[0]
        segments.append(_write_segment(w, ns.name, gen, frame, schema, metric, progress, threads))
    rep.rows_indexed = new_rows
    _crash("after_segment")

    # -- tombstones for the kept segments ------------------------------------------
    kept = []
    for i in keep_idx:
        s = dict(base.segs[i])
        if base.new_dead[i]:
            dead = base.all_dead(i)
            s["tombstones"] = w.put(
                layout.index_run_file(ns.name, gen, f"tomb-{s['name']}", run, "npy"), D.tomb_bytes(dead)
            )
            s["dead"] = int(len(dead))
            s["live"] = int(s["rows"] - len(dead))
        kept.append(s)
    rep.rows_tombstoned = n_taken
    all_segs = kept + segments

    # -- global BM25 statistics ----------------------------------------------------
    bm25 = {}
    for f in fts_fields:
        opts = schema[f]["full_text_search"]
        sig = fts_sig(schema[f])
        old = (base_man or {}).get("bm25", {}).get(f)
        if old is not None and old.get("sig") == sig:
            n_rows, n_docs, total = old["n_rows"], old["n_docs"], old["total_len"]
            df = _read_terms(store, cache, old["terms"])
            for vals in stats_removed.get(f, []):
                st = fts.term_stats(vals, opts)
                n_rows -= st["n_rows"]
                n_docs -= st["n_docs"]
                total -= st["total_len"]
                df.subtract(st["df"])
            # the new segment = merged rows (already counted) + pending (new versions)
            add_toks = [t for seg in segments for t in seg["_fts_tokens"][f][rep.rows_merged :]]
        else:  # recompute from every live row
            n_rows = n_docs = total = 0
            from collections import Counter

            df = Counter()
            add_toks = []
            for s in kept:
                alive = np.ones(s["rows"], bool)
                if s.get("tombstones"):
                    alive[D.read_tomb(store.read(s["tombstones"])).astype(np.int64)] = False
                tk = s.get("fts", {}).get(f, {}).get("tokens")
                if tk is not None and s["fts"][f].get("sig") == sig:
                    col = pl.read_ipc(cache.file(store, tk))["t"].filter(pl.Series(alive))
                    add_toks.extend([] if x is None or x == "" else x.split(fts.SEP) for x in col.to_list())
                    continue
                a = D.read_attrs(cache.file(store, s["attrs"])).filter(pl.Series(alive))
                add_toks.extend(
                    fts.term_tokens(a.get_column(f).to_list() if f in a.columns else [None] * a.height, opts)
                )
            for seg in segments:
                add_toks.extend(seg["_fts_tokens"][f])
        st = fts.stats_of_tokens(add_toks)
        n_rows += st["n_rows"]
        n_docs += st["n_docs"]
        total += st["total_len"]
        df.update(st["df"])
        df = +df  # drop zero / negative counts
        terms = pl.DataFrame(
            {"term": list(df.keys()), "df": list(df.values())}, schema={"term": pl.String, "df": pl.Int64}
        ).sort("term")
        import io

        buf = io.BytesIO()
        terms.write_ipc(buf, compression="uncompressed")
        key = w.put(layout.index_run_file(ns.name, gen, f"bm25-{D.field_tag(f)}", run, "arrow"), buf.getvalue())
        bm25[f] = {"sig": sig, "n_rows": n_rows, "n_docs": n_docs, "total_len": total, "terms": key}
    for seg in segments:
        seg.pop("_fts_tokens", None)

    # -- manifest --------------------------------------------------------------------
    man = {
        "format": FORMAT,
        "generation": gen,
        "base_generation": ptr["generation"] if ptr else None,
        "covers_through_seq": last,
        "created_at": now_ms(),
        "schema": schema,
        "distance_metric": metric,
        "segments": all_segs,
        "bm25": bm25,
    }
    mkey = layout.index_manifest(ns.name, gen, run)
    files = set()
    for s in all_segs:
        files.update(_segment_files(s))
    files.update(b["terms"] for b in bm25.values())
    files.add(mkey)
    man["files"] = sorted(files)
    w.drain()
    w.put(mkey, json.dumps(man, sort_keys=True).encode())
    w.drain()
    w.close()
    _crash("after_manifest")

    # -- 6. publish ---------------------------------------------------------------------
    if not lease.check():
        raise Conflict(f"namespace {ns.name!r}: lost the indexer lease before publishing generation {gen}")
    base_gen = ptr["generation"] if ptr else None
    now = now_ms()

    def publish(cur):
        cur = cur or {
            "format": 1,
            "namespace": ns.name,
            "created_at": head.created_at or now,
            "last_seq": last,
            "schema": schema,
            "distance_metric": metric,
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
                {"generation": old["generation"], "manifest": old["manifest"], "until": now + int(grace * 1000)}
            )
        cur["index"] = {
            "generation": gen,
            "covers_through_seq": last,
            "manifest": mkey,
            "published_at": now,
            "segments": len(all_segs),
            "rows": int(sum(s["live"] for s in all_segs)),
            "retained": retained,
        }
        return cur

    if ns.update_meta(publish) is None:
        raise Conflict(f"namespace {ns.name!r}: could not publish generation {gen} (meta.json CAS kept failing)")
    _crash("after_publish")
    rep.status = "indexed"
    rep.generation = gen
    rep.covers_through_seq = last
    rep.segments = len(all_segs)
    rep.live_rows = int(sum(s["live"] for s in all_segs))


def _read_terms(store: Store, cache: Cache, key: str):
    from collections import Counter

    t = pl.read_ipc(cache.file(store, key))
    return Counter(dict(zip(t["term"].to_list(), t["df"].to_list())))


def _segment_files(s: dict) -> list[str]:
    out = [s["attrs"]]
    out += [v["key"] for v in s.get("vectors", {}).values()]
    out += [v["key"] for v in s.get("ann", {}).values()]
    for v in s.get("fts", {}).values():
        out += v["files"]
        out += [v[k] for k in ("tokens", "postings") if v.get(k)]
    if s.get("tombstones"):
        out.append(s["tombstones"])
    return out


def _write_segment(
    w: _Writer, ns: str, gen: int, frame: pl.DataFrame, schema: dict, metric: str | None, progress, threads: int
) -> dict:
    name = f"seg-{gen:06d}-{uuid.uuid4().hex[:8]}"
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
    _note(progress, "doc store", 0, frame.height)
    seg["attrs"] = w.put(layout.index_segment_file(ns, gen, name, D.ATTRS), D.attrs_bytes(frame, schema))
    for f in D.vector_fields(schema):
        dims = S.vector_dims(schema[f]["type"])
        mat = D.vector_matrix(frame, f, dims)
        key = w.put(layout.index_segment_file(ns, gen, name, f"vec-{D.field_tag(f)}.f32"), mat.astype("<f4").tobytes())
        seg["vectors"][f] = {"key": key, "dims": dims}
        _crash("mid_segment")
        opts = ann.options(schema[f], metric)
        _note(progress, f"ann {f}", 0, frame.height)
        data, n = ann.build(mat, opts, threads=threads)
        key = w.put(layout.index_segment_file(ns, gen, name, f"ann-{D.field_tag(f)}.usearch"), data)
        seg["ann"][f] = {"key": key, "vectors": n, "sig": ann_sig(schema[f], metric), **opts}
    ftoks = {}
    for f in D.fts_fields(schema):
        opts = schema[f]["full_text_search"]
        _note(progress, f"fts {f}", 0, frame.height)
        files, toks = fts.build(frame.get_column(f).to_list(), opts)
        ftoks[f] = toks
        prefix = layout.index_segment_file(ns, gen, name, f"fts-{D.field_tag(f)}/")
        keys = [w.put(prefix + fname, data) for fname, data in files.items()]
        seg["fts"][f] = {"prefix": prefix, "files": keys, "sig": fts_sig(schema[f])}
        if fts.pretokenized(opts):
            seg["fts"][f]["tokens"] = w.put(
                layout.index_segment_file(ns, gen, name, f"tok-{D.field_tag(f)}.arrow"), fts.tokens_bytes(toks)
            )
            seg["fts"][f]["postings"] = w.put(
                layout.index_segment_file(ns, gen, name, f"post-{D.field_tag(f)}.arrow"), fts.postings_bytes(toks)
            )
    seg["_fts_tokens"] = ftoks
    return seg


# ---------------------------------------------------------------- GC
TEMP_MAX_AGE_S = 3600.0  # a writer's temporary file older than this was left by a killed process


def gc(ns: Namespace, progress=None, temp_age_s: float = TEMP_MAX_AGE_S) -> int:
    """Delete index files that neither the current generation nor a retained one
    (published less than the grace period ago) references, and temporary files a
    killed writer left in the namespace (local stores). Returns files deleted."""
    store = ns.store
    meta, _ = ns.read_meta()
    ptr = (meta or {}).get("index")
    keep: set[str] = set()
    now = now_ms()
    if ptr:
        keep |= manifest_files(load_manifest(store, ptr["manifest"]))
        for r in ptr.get("retained", []):
            if r["until"] > now:
                try:
                    keep |= manifest_files(load_manifest(store, r["manifest"]))
                except FileNotFoundError:
                    pass
    n = 0
    for k in store.list(layout.index_root(ns.name)):
        if k in keep:
            continue
        _crash("mid_gc")
        try:
            store.delete(k)
            n += 1
        except FileNotFoundError:
            pass
    return n + store.sweep_temp(layout.namespace_prefix(ns.name), temp_age_s)
