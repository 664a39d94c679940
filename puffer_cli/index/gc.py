"""GC of index files: everything under ``{ns}/index/`` that neither the current
generation nor a retained one nor a live branch pin references (orphans of killed runs
included), stale branch pins, and the
temporary files a killed writer left on a local store."""

from __future__ import annotations

from puffer_cli.index.hooks import crash
from puffer_cli.index.manifest import load_manifest, manifest_files
from puffer_cli.index.retention import kept_manifests
from puffer_cli.store import layout, now_ms
from puffer_cli.wal.namespace import Namespace

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
    for key in kept_manifests(meta):  # WAL retention's snapshot generations (index/retention.py)
        try:
            keep |= manifest_files(load_manifest(store, key))
        except FileNotFoundError:
            pass
    if ptr:
        keep |= manifest_files(load_manifest(store, ptr["manifest"]))
        for r in ptr.get("retained", []):
            if r["until"] > now:
                try:
                    keep |= manifest_files(load_manifest(store, r["manifest"]))
                except FileNotFoundError:
                    pass
    n = 0
    for key, pin, live in ns.pins():  # generations a branch references (docs/http.md "Branches")
        if not live:
            store.delete(key)
            continue
        if pin.get("manifest"):
            try:
                keep |= manifest_files(load_manifest(store, pin["manifest"]))
            except FileNotFoundError:
                pass
    for k in store.list(layout.index_root(ns.name)):
        if k in keep:
            continue
        crash("mid_gc")
        try:
            store.delete(k)
            n += 1
        except FileNotFoundError:
            pass
    return n + store.sweep_temp(layout.namespace_prefix(ns.name), temp_age_s)
