"""WAL retention: entries older than the retention window and covered by a published index
generation are deleted by the indexer's GC; the generation is the snapshot.

meta.json carries two pointers (both optional)::

    "wal_floor":     {"seq": F, "generation": g, "manifest": key, "at": ms}
    "wal_candidate": {"seq": C, "generation": h, "manifest": key, "at": ms}

Entries with seq <= F may be gone; the state at any seq >= F is the floor generation's rows
plus the entries (F, seq] (``snapshot_rows`` below, which ``Namespace.docs`` calls), so
``export --at-seq``, writes that read the current state and branches work without them.  A
seq < F raises ``WalCollected``.

Each indexer run (``collect``): with no candidate, the current generation becomes the
candidate (its files are kept like a retained generation's).  Once the candidate is older
than the retention window, every entry it covers was written before it, so more than the
window ago: it becomes the floor, the entries up to its seq are deleted, and the current
generation becomes the next candidate.  So a namespace under constant writes is collected
too, the WAL kept is one to two windows of writes, and at most two extra generations'
files are kept (usually sharing most segments with the current one).  Entries a live
branch pin reads (seq <= the pin's seq) are never deleted, nor is the newest entry (readers
find the committed head by listing from it).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from puffer_cli import config
from puffer_cli.index.base import BaseRows
from puffer_cli.index.manifest import load_manifest
from puffer_cli.store import layout, now_ms
from puffer_cli.store.filecache import get_cache
from puffer_cli.wal import namespace as wal_namespace
from puffer_cli.wal import replay
from puffer_cli.wal.namespace import Namespace

DEFAULT_RETENTION_S = 7 * 86400.0


def default_retention() -> float:
    """DEFAULT_RETENTION_S, or ``PUFFER_WAL_RETENTION`` (seconds, through config.from_env)."""
    r = config.from_env().wal_retention_s
    return DEFAULT_RETENTION_S if r is None else max(0.0, r)


def kept_manifests(meta: dict | None) -> list[str]:
    """Manifests GC keeps for retention (the floor and the candidate)."""
    return [p["manifest"] for k in ("wal_floor", "wal_candidate") if (p := (meta or {}).get(k)) and p.get("manifest")]


def collect(ns: Namespace, retention_s: float | None = None) -> int:
    """One retention step (see the module docstring); returns WAL entries deleted."""
    retention = default_retention() if retention_s is None else max(0.0, retention_s)
    now = now_ms()
    state: dict = {}

    def step(cur):
        if not cur or not cur.get("index"):
            return None
        ptr = cur["index"]
        here = {
            "seq": int(ptr["covers_through_seq"]),
            "generation": ptr["generation"],
            "manifest": ptr["manifest"],
            "at": now,
        }
        cand = cur.get("wal_candidate")
        if cand is None:
            cur["wal_candidate"] = here
            return cur
        if now - int(cand["at"]) < retention * 1000:
            return None
        floor = cur.get("wal_floor") or {"seq": 0}
        if cand["seq"] <= int(floor["seq"]):
            cur["wal_candidate"] = here if here["seq"] > int(floor["seq"]) else None
            return cur
        state["from"], state["to"] = int(floor["seq"]), int(cand["seq"])
        cur["wal_floor"] = cand
        cur["wal_candidate"] = here if here["seq"] > cand["seq"] else None
        return cur

    meta, _ = ns.read_meta()
    if meta is None or not meta.get("index"):
        return 0
    ns.update_meta(step)
    meta, _ = ns.read_meta()
    floor = int(((meta or {}).get("wal_floor") or {}).get("seq", 0))
    if not floor:
        return 0
    pinned = max([int(p.get("seq", 0)) for _k, p, live in ns.pins() if live] or [0])
    n = 0
    keys = [(s, k) for k in ns.store.list(layout.wal_dir(ns.name)) if (s := layout.wal_seq(k)) is not None]
    newest = max((s for s, _ in keys), default=0)
    for s, k in keys:
        if s > floor or s <= pinned or s == newest:  # the newest entry marks the head: readers list from it
            continue
        try:
            ns.store.delete(k)
            n += 1
        except FileNotFoundError:
            pass
    return n


def snapshot_rows(ns: Namespace, floor: dict) -> tuple[pl.DataFrame, dict]:
    """Every live row of the floor generation (the state at its seq) and the schema there."""
    man = load_manifest(ns.store, floor["manifest"])
    schema = dict(man["schema"])
    base = BaseRows(ns.store, get_cache(), man)
    parts = []
    for i in range(len(base.segs)):
        pos = base.live_positions(i)
        if len(pos):
            parts.append(base.rows(i, np.asarray(pos), schema))
    if not parts:
        return replay.empty(schema), schema
    df = pl.concat(parts, how="vertical") if len(parts) > 1 else parts[0]
    return df.sort("id"), schema


wal_namespace.SNAPSHOT_ROWS = snapshot_rows
