"""A namespace: the commit protocol (BRIEF section 3), the head, replay.

Writers: ``Namespace.write(body)`` plans the write against the newest
snapshot, encodes it as entry ``seq+1`` and commits by create-if-absent of
``wal/{seq+1}``.  A lost race re-reads the head, re-plans (so conditional and
filter writes re-validate against the new state) and retries.  ``meta.json``
is then advanced by CAS as a hint; it is never the only record of a write.

Readers: ``head()`` lists ``wal/`` after the newest seq this process knows;
``docs(seq)`` replays (incrementally, from an in-process cache) to any
committed seq.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from puffer_cli import caches
from puffer_cli.errors import CorruptWal, InvalidRequest, NamespaceNotFound, PufferError, WalCollected
from puffer_cli.schema import frames, types
from puffer_cli.schema import spec as S
from puffer_cli.store import Store, layout, now_ms
from puffer_cli.store.filecache import Cache
from puffer_cli.store.local import LocalStore
from puffer_cli.wal import codec as wal
from puffer_cli.wal import replay, writes

POLICIES = ("fail", "skip")
PIN_GRACE_S = 600.0  # a branch pin whose branch meta.json has not appeared after this long is stale
WRITER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
MAX_RETRIES = 10_000
#: ``(ns, wal_floor) -> (rows, schema)``: the state at the WAL floor (index/retention.py sets it:
#: the floor generation's live rows), for replays that start below the retained WAL
SNAPSHOT_ROWS: Callable[[Namespace, dict], tuple[pl.DataFrame, dict]] | None = None
log = logging.getLogger("puffer.namespace")


@dataclass
class Head:
    """Newest committed seq known, and the schema / metric in force there."""

    seq: int = 0
    schema: dict = field(default_factory=dict)
    metric: str | None = None
    created_at: int | None = None
    updated_at: int | None = None


@dataclass
class _Cache:
    head: Head = field(default_factory=Head)
    docs: pl.DataFrame | None = None
    docs_seq: int = 0
    docs_schema: dict = field(default_factory=dict)
    meta: tuple | None = None  # (change token, meta.json, version) of the last query_meta() read
    head_token: str | None = None  # Store.change_token of the head's WAL entry (None: unknown)
    base: tuple[str, int] | None = None  # a branch's (source, seq) from meta.json (docs/http.md "Branches")
    base_known: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)


#: this process's state of each namespace (head, replay cache), keyed (store url, namespace).
#: Bounded: 1024 namespaces is far above the server's working set (``hot_namespaces``, 64 by
#: default; the server drops a namespace's state itself when it leaves that set).  An evicted
#: entry only costs a re-read: a Namespace keeps its ``_Cache`` while it lives, and every one
#: re-checks the head against the store, as another process's cache would be.
_CACHES = caches.lru("namespace.state", 1024)

#: what replay under ``--wal-corrupt-policy skip`` left out in this process: (store url, namespace)
#: -> {seq: {"namespace", "seq", "key", "problem", "rows"}} (rows None: the header is lost too).
#: The one record of skips; the CLI prints it on stderr and in JSON output (``skipped``).
_SKIPPED: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
_SKIPPED_LOCK = threading.Lock()


def skipped() -> list[dict[str, Any]]:
    """Every WAL entry skipped under policy ``skip`` in this process, in (namespace, seq) order."""
    with _SKIPPED_LOCK:
        return [dict(v) for _k, by in sorted(_SKIPPED.items()) for _s, v in sorted(by.items())]


def clear_skipped() -> None:
    with _SKIPPED_LOCK:
        _SKIPPED.clear()


def entry_rows(data: bytes | None) -> int | None:
    """Rows an entry's header says it holds (None: no readable header)."""
    if data is None:
        return None
    try:
        header, _ = wal.read_header(data)
        return sum(int(m.get("rows", 0)) for m in header["ops"])
    except (wal.WalFormatError, KeyError, TypeError, ValueError, AttributeError):
        return None


def decode_entry(seq: int, data: bytes) -> wal.Entry:
    """The read path's one check of an entry: framing, checksums, the seq in its header vs
    its key.  ``wal-inspect --verify`` calls this same function, so whatever a reader rejects,
    verify reports: an entry no reader can apply (a null id an older build let through:
    ``replay.entry_problem`` without a schema) is damage of kind ``unappliable``; the schema
    checks need the schema in force, so :meth:`Namespace.entries` adds them."""
    entry = wal.decode(data, seq)
    problem = replay.entry_problem(entry.ops, None)
    if problem is not None:
        raise wal.WalFormatError("unappliable", f"it cannot be applied: {problem}")
    return entry


def _cache_for(store: Store, name: str) -> _Cache:
    return _CACHES.setdefault((store.url, name), _Cache)


def forget(store: Store, name: str) -> None:
    """Drop this process's state of namespace ``name`` only (the WAL was rewritten under it);
    :func:`puffer_cli.caches.forget` drops it with the namespace's entries in every other cache."""
    _CACHES.pop((store.url, name), None)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _meta_problem(meta) -> str | None:
    """What is wrong with a decoded meta.json (None: nothing the code would trip on)."""
    if not isinstance(meta, dict):
        return f"expected a JSON object, got {type(meta).__name__}"
    if "last_seq" in meta and not _int(meta["last_seq"]):
        return f"last_seq is {meta['last_seq']!r}, not a seq"
    if meta.get("schema") is not None and not isinstance(meta["schema"], dict):
        return "schema is not an object"
    if meta.get("distance_metric") is not None and not isinstance(meta["distance_metric"], str):
        return "distance_metric is not a string"
    idx = meta.get("index")
    if idx is None:
        return None
    if not isinstance(idx, dict):
        return "index is not an object"
    for k in ("generation", "covers_through_seq"):
        if not _int(idx.get(k)):
            return f"index.{k} is {idx.get(k)!r}, not a number"
    if not isinstance(idx.get("manifest"), str):
        return "index.manifest is not a key"
    ret = idx.get("retained", [])
    if not isinstance(ret, list) or not all(
        isinstance(r, dict)
        and isinstance(r.get("manifest"), str)
        and _int(r.get("until"))
        and _int(r.get("generation"))
        for r in ret
    ):
        return "index.retained is not a list of {generation, manifest, until}"
    return None


def release_pin(store: Store, source: str, dest: str, bid: str | None) -> None:
    """Delete the pin of creation ``bid`` of branch ``dest`` in ``source``, and the pin at the
    older one-key-per-branch key if it is that creation's (such keys are no longer written)."""
    keys = [layout.branch_pin(source, dest, bid)]
    try:
        if json.loads(store.read(layout.branch_pin(source, dest))).get("id") == bid:
            keys.append(layout.branch_pin(source, dest))
    except (FileNotFoundError, ValueError, AttributeError):
        pass
    for key in keys:
        try:
            store.delete(key)
        except FileNotFoundError:
            pass


class Namespace:
    def __init__(
        self,
        store: Store,
        name: str,
        *,
        single_writer: bool = False,
        wal_policy: str = "fail",
        cache: Cache | None = None,
    ):
        self.store = store
        #: the local cache of index files this namespace's readers use (None: the process-wide one)
        self.cache = cache
        self.name = layout.check_namespace(name)
        self.single_writer = single_writer
        if wal_policy not in POLICIES:
            raise InvalidRequest(f"unknown WAL corruption policy {wal_policy!r}", hint="use fail or skip")
        self.wal_policy = wal_policy
        self._c = _cache_for(store, name)

    # ------------------------------------------------------------ meta.json
    def read_meta(self) -> tuple[dict | None, str | None]:
        key = layout.meta(self.name)
        got = self.store.read_versioned(key)
        if got is None:
            return None, None
        return self.parse_meta(got[0], key, self.name), got[1]

    def query_meta(self, fresh: bool = False) -> dict | None:
        """meta.json for the query path (the index pointer; do not mutate it).  On a local
        store it is read again only when the file's stat changed (``Store.change_token``:
        one ``stat`` instead of open + read + decode); elsewhere, or with ``fresh``, it is
        read.  A stale pointer could only name an older generation, which a strong query
        completes with the WAL after it (the WAL, not meta.json, is the record of writes)."""
        key = layout.meta(self.name)
        tok = None if fresh else self.store.change_token(key)
        got = self._c.meta
        if tok is not None and got is not None and got[0] == tok:
            return got[1]
        meta, ver = self.read_meta()
        if tok is not None:
            self._c.meta = (tok, meta, ver)
        return meta

    @staticmethod
    def parse_meta(data: bytes, key: str, name: str) -> dict:
        """The one decoder of ``meta.json``: a dict whose fields have the shapes the code
        relies on, else :class:`~puffer_cli.errors.CorruptNamespace` naming the key."""
        from puffer_cli.errors import CorruptNamespace

        hint = (
            f"the WAL is the record of every write and meta.json only a hint plus the index pointer: "
            f"move {key} aside (the head is recovered from the WAL) and run `puffer index {name}` "
            f"to build a new index generation"
        )
        return CorruptNamespace.decode(data, key, _meta_problem, hint)

    def update_meta(self, fn: Callable[[dict | None], dict | None], attempts: int = 20) -> dict | None:
        """CAS loop on meta.json: ``fn(current) -> new`` (None: leave as is)."""
        for _ in range(attempts):
            cur, ver = self.read_meta()
            new = fn(json.loads(json.dumps(cur)) if cur else None)
            if new is None:
                return cur
            if self.store.cas(layout.meta(self.name), json.dumps(new, sort_keys=True).encode(), ver):
                return new
        return None

    def _advance_meta(self, head: Head) -> None:
        def fn(cur):
            if cur and cur.get("last_seq", 0) >= head.seq:
                return None
            cur = cur or {"format": 1, "namespace": self.name, "created_at": head.created_at or now_ms(), "index": None}
            cur.update(
                last_seq=head.seq,
                schema=head.schema,
                distance_metric=head.metric,
                updated_at=head.updated_at or now_ms(),
            )
            return cur

        self.update_meta(fn, attempts=5)

    # ------------------------------------------------------------ the head
    # ------------------------------------------------------------ branches (docs/http.md "Branches")
    def base(self) -> tuple[str, int] | None:
        """A branch's base: (source namespace, seq) read from meta.json (immutable while the
        branch lives, so cached), else None. Entries up to seq are the source's."""
        if not self._c.base_known:
            self._set_base(self.query_meta())
        return self._c.base

    def _set_base(self, meta: dict | None) -> None:
        b = (meta or {}).get("branch")
        self._c.base = (b["source"], int(b["seq"])) if isinstance(b, dict) else None
        self._c.base_known = True

    def source(self) -> Namespace | None:
        b = self.base()
        return Namespace(self.store, b[0], wal_policy=self.wal_policy) if b else None

    def wal_key(self, seq: int) -> str:
        """The key of entry ``seq``: a branch's entries up to its base seq are its source's."""
        b = self.base()
        if b and seq <= b[1]:
            src = self.source()
            assert src is not None
            return src.wal_key(seq)
        return layout.wal(self.name, seq)

    def pins(self) -> list[tuple[str, dict, bool]]:
        """Branch pins under this namespace: (pin key, pin, live). A pin is live while its
        branch's meta.json names it (same id), or, with no meta.json yet, for PIN_GRACE_S after
        its creation (a branch being created); otherwise it is stale (a crashed creation, a
        branch deleted outside puffer) and protects nothing."""
        out = []
        for k in self.store.list(layout.branch_pins_dir(self.name)):
            try:
                pin = json.loads(self.store.read(k))
                dest = Namespace(self.store, pin["branch"])
                dmeta, _ = dest.read_meta()
            except (FileNotFoundError, ValueError, KeyError, TypeError, PufferError):
                continue
            b = (dmeta or {}).get("branch")
            if isinstance(b, dict):
                live = b.get("id") == pin.get("id") and b.get("source") == self.name
            else:
                live = dmeta is None and now_ms() - int(pin.get("created_at", 0)) < PIN_GRACE_S * 1000
            out.append((k, pin, live))
        return out

    def wal_keys(self, after: int = 0) -> list[tuple[int, str]]:
        b = self.base()
        out: list[tuple[int, str]] = []
        if b:
            src = self.source()
            assert src is not None
            if after < b[1]:
                out = [(s, k) for s, k in src.wal_keys(after) if s <= b[1]]
            after = max(after, b[1])
        start = layout.wal(self.name, after) if after else None
        for k in self.store.list(layout.wal_dir(self.name), start_after=start):
            s = layout.wal_seq(k)
            if s is not None and s > after:
                out.append((s, k))
        return out

    def read_entry_header(self, seq: int) -> dict:
        key = self.wal_key(seq)
        data = self.store.read_range(key, 0, 4096)
        try:
            header, _ = wal.read_header(data)
        except wal.WalFormatError as e:
            if e.kind == "truncated_header":  # a header past 4 KB (format 2 lists every block): read just it
                hlen = wal.PREFIX.unpack_from(data)[3]
                data = self.store.read_range(key, 0, wal.PREFIX.size + hlen)
                try:
                    header, _ = wal.read_header(data)
                except wal.WalFormatError as e2:
                    return self._corrupt(seq, str(e2), data)
            else:
                return self._corrupt(seq, str(e), data)
        return header

    def _corrupt(self, seq: int, problem: str, data: bytes | None = None, kind: str | None = None) -> dict:
        if self.wal_policy == "skip":
            rec = {"namespace": self.name, "seq": seq, "key": self.wal_key(seq), "problem": problem}
            with _SKIPPED_LOCK:
                by = _SKIPPED.setdefault((self.store.url, self.name), {})
                rows = entry_rows(data)
                if seq not in by or rows is not None:
                    by[seq] = {**rec, "rows": rows}
            return {"seq": seq, "ops": [], "skipped": problem}
        msg = f"namespace {self.name!r}: WAL segment {self.wal_key(seq)} is corrupt: {problem}"
        err = CorruptWal(msg) if kind is None else wal.WalFormatError(kind, msg)
        err.hint = CorruptWal.hint_for(self.name)
        raise err

    def head(self, refresh: bool = True, meta: dict | None = None) -> Head:
        """The newest committed seq, with its schema and metric.  ``meta``: a meta.json the
        caller has just read (saves reading it again: one round trip on an object store)."""
        c = self._c
        with c.lock:
            h = c.head
            if h.seq and (not refresh or self._head_unchanged(h.seq)):
                return h
            # start from the newest seq we know (else meta.json's hint, else nothing) and list
            # from it inclusive: if that entry is gone, another process deleted the namespace
            # (and perhaps recreated it), so fall back to the next starting point
            for h in self._head_starts(meta):
                keys = self.wal_keys(max(0, h.seq - 1))
                if h.seq == 0 or (keys and keys[0][0] == h.seq):
                    keys = [kv for kv in keys if kv[0] > h.seq]
                    break
                if h is c.head:  # drop everything this process knew of the old namespace
                    self.reset_cache()
            if keys:
                h = Head(h.seq, dict(h.schema), h.metric, h.created_at, h.updated_at)
                for seq, _k in keys:
                    hdr = self.read_entry_header(seq)
                    if "schema" in hdr:
                        h.schema = hdr["schema"]
                    if hdr.get("distance_metric"):
                        h.metric = hdr["distance_metric"]
                    h.created_at = h.created_at or hdr.get("created_at")
                    h.updated_at = hdr.get("created_at", h.updated_at)
                    h.seq = seq
            if h.seq > c.head.seq or c.head.seq == 0:
                c.head = h
            if c.head.seq:
                c.head_token = self.store.change_token(self.wal_key(c.head.seq))
            return c.head

    def reset_cache(self) -> None:
        c = self._c
        c.head, c.docs, c.docs_seq, c.docs_schema, c.head_token = Head(), None, 0, {}, None
        c.base, c.base_known = None, False

    def _head_unchanged(self, seq: int) -> bool:
        """Is ``seq`` still the newest committed entry, known without a listing?  On a local or
        memory store, two ``stat``-cheap checks: ``wal/{seq}`` is the very object this process
        saw (its ``Store.change_token``: not deleted, nor replaced by a namespace deleted and
        written again to the same seq) and ``wal/{seq+1}`` does not exist (every commit creates
        the entry right after the head it listed, so nothing newer exists without it).  Object
        stores have no token: they list after ``seq``, the one round trip a HEAD would take."""
        st, c = self.store, self._c
        tok = st.change_token(self.wal_key(seq))
        if tok is None or tok != c.head_token:
            if tok and c.head_token is not None:  # replaced: drop what this process knew of the old namespace
                self.reset_cache()
            return False
        return not st.exists(self.wal_key(seq + 1))

    def _head_starts(self, meta: dict | None = None) -> Iterator[Head]:
        if self._c.head.seq:
            yield self._c.head
        if meta is None:
            meta, _ = self.read_meta()
        self._set_base(meta)  # fresh meta.json: another process may have made this name a branch
        if meta and meta.get("last_seq"):
            yield Head(
                meta["last_seq"],
                meta.get("schema") or {},
                meta.get("distance_metric"),
                meta.get("created_at"),
                meta.get("updated_at"),
            )
        yield Head()

    def exists(self) -> bool:
        return self.head().seq > 0

    def require(self) -> Head:
        h = self.head()
        if h.seq == 0:
            raise self._not_found()
        return h

    def _not_found(self) -> NamespaceNotFound:
        e = NamespaceNotFound(f"namespace {self.name!r} not found")
        e.cli_context = f" in {self.store.url}"  # the CLI says where; HTTP shows no server path
        return e

    # ------------------------------------------------------------ entries
    def entries(self, after: int, upto: int | None = None) -> Iterator[wal.Entry]:
        """Decoded entries after ``after`` up to ``upto`` (inclusive), in order.
        Missing or corrupt segments follow the namespace's policy."""
        expect = after + 1
        schema: dict | None = {} if after == 0 else None  # in force after each entry (None: not known here)
        for seq, key in self.wal_keys(after):
            if upto is not None and seq > upto:
                break
            if seq != expect:
                if expect == after + 1:
                    self._check_floor(after)
                for gap in range(expect, seq):
                    self._corrupt(gap, "missing (deleted?)")
            expect = seq + 1
            data = self.store.read(key)
            try:
                entry = decode_entry(seq, data)
            except wal.WalFormatError as e:
                self._corrupt(seq, str(e), data, e.kind)
                continue
            schema = entry.header.get("schema", schema)
            problem = replay.entry_problem(entry.ops, schema)
            if problem is not None:  # intact bytes that no reader can apply (an older build wrote them)
                self._corrupt(seq, f"it cannot be applied: {problem}", data, "unappliable")
                continue
            yield entry

    def wal_floor(self) -> dict | None:
        """meta.json's ``wal_floor`` (entries up to its seq may be collected; index/retention.py)."""
        meta, _ = self.read_meta()
        f = (meta or {}).get("wal_floor")
        return f if isinstance(f, dict) and int(f.get("seq", 0)) > 0 else None

    def _check_floor(self, after: int) -> dict | None:
        """Raise WalCollected when entries after ``after`` were collected by WAL retention."""
        f = self.wal_floor()
        if f is not None and after < int(f["seq"]):
            raise WalCollected(
                f"namespace {self.name!r}: seq {after} is older than the retained WAL (entries up to seq "
                f"{f['seq']} were collected after index generation {f.get('generation')} covered them; "
                f"the oldest readable seq is {f['seq']})"
            )
        return f

    def schema_after(self, e: wal.Entry, cur: dict) -> dict:
        return e.header.get("schema", cur)

    # ------------------------------------------------------------ replay
    def docs(self, seq: int | None = None, *, missing_ok: bool = False) -> tuple[pl.DataFrame, Head]:
        """Live documents at ``seq`` (default: head), aligned to the schema there.

        Raises NamespaceNotFound if the namespace does not exist, unless ``missing_ok`` (the
        write path, which plans a first write against the empty state: an empty frame at seq 0).
        Replay continues from this process's cached state when it can."""
        head = self.head()
        if head.seq == 0 and not missing_ok:
            raise self._not_found()
        target = head.seq if seq is None else seq
        if target > head.seq or target < 0:
            raise InvalidRequest(f"seq {target} is not committed (head is {head.seq})")
        c = self._c
        with c.lock:
            if c.docs is not None and c.docs_seq == target:  # nothing to replay: no listing
                return c.docs, Head(target, c.docs_schema, head.metric, head.created_at, head.updated_at)
            if c.docs is not None and c.docs_seq <= target:
                docs, start, schema = c.docs, c.docs_seq, c.docs_schema
            else:
                docs, start, schema = None, 0, {}
                floor = self.wal_floor() if target > 0 else None
                if floor is not None:  # entries up to the floor were collected: start from its generation
                    if target < int(floor["seq"]):
                        self._check_floor(target)
                    assert SNAPSHOT_ROWS is not None, "puffer_cli.index.retention not imported"
                    (docs, schema), start = SNAPSHOT_ROWS(self, floor), int(floor["seq"])
            docs, _last, after = replay.fold_entries(docs, replay.follow(self.entries(start, target), schema, None))
            schema = after if after is not None else schema
            if docs is None:
                docs = replay.empty(schema)
            if target == head.seq:
                c.docs, c.docs_seq, c.docs_schema = docs, target, schema
            return docs, Head(target, schema, head.metric, head.created_at, head.updated_at)

    # ------------------------------------------------------------ writes
    def write(self, body: Mapping[str, Any], *, copy_source=None) -> dict:
        """Commit one turbopuffer write body. Returns the turbopuffer response.

        Returns only once the WAL entry is durable in the store."""
        out = self.write_batch([body], copy_source=copy_source)[0]
        if isinstance(out, PufferError):
            raise out
        return out

    def write_batch(self, bodies: list[Mapping[str, Any]], *, copy_source=None) -> list[dict | PufferError]:
        """Group commit: plan each body in order against the state the previous
        ones leave, and commit all of them as ONE WAL entry.  A body that fails
        validation gets its error (and writes nothing); the others proceed.
        Op order across bodies is the order given."""
        self.store.require_safe_writes(self.single_writer)
        for _attempt in range(MAX_RETRIES):
            head = self.head()
            base: dict[str, pl.DataFrame] = {}
            ops: list[wal.Op] = []
            schema, metric = head.schema, head.metric
            results: list[dict | PufferError] = []
            for body in bodies:

                def docs_fn(seq=head.seq, prior=tuple(ops), sch=schema, base=base):
                    if "d" not in base:
                        base["d"] = self.docs(seq, missing_ok=True)[0]
                    return replay.fold(base["d"], sch, list(prior)) if prior else base["d"]

                snap = writes.Snapshot(head.seq, schema, metric, docs_fn)
                try:
                    p = writes.plan(body, snap, copy_source=copy_source)
                except PufferError as e:
                    results.append(e)
                    continue
                except Exception as e:  # noqa: BLE001 - a bug planning one body must not fail the batch
                    log.exception("namespace %s: planning a write body failed", self.name)
                    results.append(PufferError(f"internal error planning this write: {type(e).__name__}: {e}"))
                    continue
                ops.extend(p.ops)
                schema, metric = p.schema, p.metric
                results.append({"status": "OK", **p.result})
            if not ops and schema == head.schema and metric == head.metric:
                return results
            if self._commit(head, ops, schema, metric, schema != head.schema):
                return results
        raise CorruptWal(f"namespace {self.name!r}: gave up after {MAX_RETRIES} lost commit races")

    def write_frame(
        self,
        df: pl.DataFrame,
        *,
        schema: Mapping | None = None,
        distance_metric: str | None = None,
        kind: str = "upsert",
    ) -> int:
        """Fast path for ingest: one typed frame -> one WAL entry. Returns its seq."""
        self.store.require_safe_writes(self.single_writer)
        declared = S.normalize_schema(schema)
        while True:
            head = self.head()
            sch = S.merge(head.schema, declared, {}) if declared else dict(head.schema)
            typed, inferred = frames.conform_frame(df, sch)  # checks names, counts and values first
            sch = S.merge(sch, {}, inferred)
            types.check_schema_size(sch, head.schema, what="ingest")
            metric = head.metric
            if distance_metric:
                if distance_metric not in writes.METRICS:
                    raise InvalidRequest(
                        f"unknown distance_metric {distance_metric!r}", hint=f"use one of {', '.join(writes.METRICS)}"
                    )
                if metric and metric != distance_metric:
                    raise InvalidRequest(
                        f"namespace distance_metric is {metric}; cannot change it to {distance_metric}"
                    )
                metric = distance_metric
            if metric is None and any(S.is_vector(v["type"]) for v in sch.values()):
                metric = "cosine_distance"
            typed = typed.select([c for c in typed.columns if c in sch])
            if self._commit(head, [wal.Op(kind, typed)], sch, metric, sch != head.schema):
                return self._c.head.seq

    def _commit(self, head: Head, ops: list[wal.Op], schema: dict, metric: str | None, schema_changed: bool) -> bool:
        seq = head.seq + 1
        b = self.base()
        if b and seq <= b[1]:  # never write into the range a branch reads from its source
            raise CorruptWal(f"namespace {self.name!r}: head {head.seq} is below its branch base seq {b[1]}")
        nonce = uuid.uuid4().hex
        hdr: dict[str, Any] = {"created_at": now_ms(), "writer": WRITER_ID, "nonce": nonce}
        if schema_changed or head.seq == 0:
            hdr["schema"] = schema
        if metric != head.metric:
            hdr["distance_metric"] = metric
        problem = replay.entry_problem(ops, schema)
        if problem is not None:  # validation missed something: never write what readers cannot apply
            raise PufferError(f"namespace {self.name!r}: refusing to commit a write readers cannot apply: {problem}")
        data = wal.encode(seq, ops, **hdr)
        if not self.store.create(layout.wal(self.name, seq), data) and not self._is_ours(seq, nonce):
            return False  # lost the race: caller re-reads the head and re-plans
        new = Head(seq, schema, metric, head.created_at or hdr["created_at"], hdr["created_at"])
        c = self._c
        with c.lock:
            if c.head.seq < seq:
                c.head = new
                c.head_token = self.store.change_token(layout.wal(self.name, seq))
            # keep the replay cache warm: fold our own ops if it was at seq-1
            if c.docs is not None and c.docs_seq == head.seq:
                c.docs, c.docs_seq, c.docs_schema = replay.fold(c.docs, schema, ops), seq, schema
        try:
            self._advance_meta(new)
        except Exception:  # noqa: BLE001 - meta.json is a hint; the WAL entry is the commit
            log.warning("namespace %s: committed seq %d but could not advance meta.json", self.name, seq, exc_info=True)
        return True

    def _is_ours(self, seq: int, nonce: str) -> bool:
        """After a failed create: is the entry at ``seq`` our own (a retried request whose
        first attempt succeeded but whose response was lost)? Then the write is committed
        and must not be committed again at the next seq."""
        try:
            return self.read_entry_header(seq).get("nonce") == nonce
        except (PufferError, FileNotFoundError):
            return False

    # ------------------------------------------------------------ delete
    def delete_all(self) -> int:
        """Remove every object of the namespace. Returns the number of keys removed.

        On a local store the namespace's directories and lock files go too, so nothing
        of it is left on disk."""
        self.require()
        live = sorted(p["branch"] for _k, p, ok in self.pins() if ok)
        if live:
            raise InvalidRequest(
                f"namespace {self.name!r} has {len(live)} live branch(es) referencing its data: {', '.join(live[:10])}",
                hint="delete the branches first (puffer shares the source's files with its branches)",
            )
        src, b = self.source(), self.base()
        bid = (((self.read_meta()[0] or {}).get("branch") or {}).get("id")) if b is not None else None
        n = self.store.delete_prefix(layout.namespace_prefix(self.name))
        if src is not None and bid:  # release this branch's pin (after its own keys: a crash leaves it stale)
            release_pin(self.store, src.name, self.name, bid)
        if isinstance(self.store, LocalStore):
            import shutil

            shutil.rmtree(self.store.local_path(layout.namespace_prefix(self.name)), ignore_errors=True)
        caches.forget(self.store, self.name)  # its state, opened generations, tails, manifests
        self._c = _cache_for(self.store, self.name)
        return n
