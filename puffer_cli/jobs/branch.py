"""``branch_from_namespace``: a copy-on-write branch of a namespace (docs/http.md "Branches").

A branch is a meta.json that names its base: the source namespace, the source's head seq at
branch time and the source's index pointer then. Readers of the branch see the source's WAL
entries up to that seq (``Namespace.wal_keys`` / ``wal_key`` resolve them in the source's
prefix), the source's index generation (its manifest lists full keys, so the branch's index
pointer can name it) and the branch's own WAL after the base seq. Nothing is copied.

Order of creation, so a crash at any point is harmless:

1. the pin ``{source}/branches/{dest}.{id}.json``, a key of this creation's own (source GC
   keeps the files of its manifest; ``delete_all`` of the source is refused while it is live);
2. the branch's ``meta.json`` by create-if-absent (the commit point: the branch exists).

A crash between 1 and 2 leaves a pin with no branch: stale after ``PIN_GRACE_S``, dropped by
the source's next GC; a retry does not wait for that (its pin is a key of its own). Of
concurrent creators exactly one wins step 2; the others delete their own pins and are told
the namespace exists. No pin key is ever rewritten, so deleting one (GC of a stale pin, a
loser, ``delete_all`` of the branch) can never remove a pin another creation relies on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from puffer_cli.errors import InvalidRequest
from puffer_cli.store import Store, layout, now_ms
from puffer_cli.wal.namespace import Namespace, release_pin


def parse_source(value: Any) -> str:
    """The source namespace of a ``branch_from_namespace`` value: a name or
    ``{"source_namespace": name}`` (the client's two forms)."""
    if isinstance(value, Mapping):
        extra = set(value) - {"source_namespace"}
        if extra:
            raise InvalidRequest(f"branch_from_namespace: unknown field(s) {', '.join(sorted(extra))}")
        value = value.get("source_namespace")
    if not isinstance(value, str):
        raise InvalidRequest("branch_from_namespace must be a namespace name or {'source_namespace': name}")
    return layout.check_namespace(value)


def branch_namespace(store: Store, dest: str, source: str, *, single_writer: bool = False) -> dict:
    """Create namespace ``dest`` as a copy-on-write branch of ``source``. Returns the write
    response body (turbopuffer's: status, rows_affected = rows branched, approximately).

    Raises NamespaceNotFound (404) if ``source`` does not exist, InvalidRequest (400) if
    ``dest`` is ``source`` or already exists (a branch is always a new namespace)."""
    layout.check_namespace(dest)
    layout.check_namespace(source)
    if dest == source:
        raise InvalidRequest("branch_from_namespace: a namespace cannot be branched onto itself")
    src, dst = Namespace(store, source), Namespace(store, dest)
    store.require_safe_writes(single_writer)
    head = src.require()
    if store.exists(layout.meta(dest)) or dst.wal_keys(0):
        raise InvalidRequest(
            f"namespace {dest!r} already exists: a branch must be a new namespace",
            hint="delete it first, or choose another name",
        )
    meta, _ = src.read_meta()
    ptr = (meta or {}).get("index")
    if ptr and ptr["covers_through_seq"] > head.seq:  # meta.json newer than our listing: list again
        head = src.head()
    bid = uuid.uuid4().hex
    now = now_ms()
    base = {"source": source, "seq": head.seq, "id": bid, "manifest": ptr["manifest"] if ptr else None}
    pin = {"branch": dest, "created_at": now, **{k: v for k, v in base.items() if k != "source"}}
    pin_key = layout.branch_pin(source, dest, bid)
    store.write(pin_key, json.dumps(pin, sort_keys=True).encode())
    index = None
    if ptr:
        index = {k: ptr[k] for k in ("generation", "covers_through_seq", "manifest") if k in ptr}
        kept = ("segments", "rows", "prefetch", "prefetch_vector")
        index.update({k: ptr[k] for k in kept if k in ptr}, published_at=now, retained=[])
    new = {
        "format": 1,
        "namespace": dest,
        "created_at": now,
        "updated_at": now,
        "last_seq": head.seq,
        "schema": head.schema,
        "distance_metric": head.metric,
        "index": index,
        "branch": {**base, "created_at": now},
    }
    if not store.create(layout.meta(dest), json.dumps(new, sort_keys=True).encode()):
        release_pin(store, source, dest, bid)  # ours alone: nobody else writes this key
        raise InvalidRequest(f"namespace {dest!r} already exists: a branch must be a new namespace")
    dst.reset_cache()  # this process looked at dest before it was a branch
    rows = int(ptr.get("rows", 0)) if ptr else 0
    return {"status": "OK", "rows_affected": rows, "branched_from": source, "base_seq": head.seq}
