"""The WAL tail of an indexed namespace: the entries after the generation's
``covers_through_seq``, folded onto the index rows they touch (those rows are hidden in
their segments, the tail holds their current versions).  Cached per process and
advanced incrementally to the head.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from puffer_cli import caches
from puffer_cli import limits as L
from puffer_cli.index import docs as D
from puffer_cli.schema import frames
from puffer_cli.schema import spec as S
from puffer_cli.wal import replay


@dataclass
class Tail:
    """WAL entries after covers_through_seq, folded onto the index rows they touch."""

    seq: int
    schema: dict
    metric: str | None
    docs: pl.DataFrame  # live current versions of touched ids
    hidden: dict[int, np.ndarray] = field(default_factory=dict)  # segment -> superseded positions
    superseded: pl.DataFrame | None = None  # index rows superseded (for BM25 stats)
    touched: pl.Series | None = None
    extra: dict = field(default_factory=dict)  # per-tail caches (analysed tokens)
    checked_at: float = field(default_factory=time.monotonic)  # when the WAL head was last listed for it


#: tails, keyed (store url, namespace, manifest key)
TAILS = caches.lru("index.tails", 64)


def tail_for(ns, gen, head) -> Tail:
    """The tail at ``head.seq`` (incremental from this process's cached tail) over
    ``gen`` (a :class:`reader.Generation`: its ``lookup`` finds the index rows an entry touches)."""
    key = (ns.store.url, ns.name, gen.manifest_key)
    t = TAILS.get(key)
    if t is not None and t.seq == head.seq:
        t.checked_at = time.monotonic()
        return t
    if t is None or t.seq > head.seq:
        t = Tail(gen.covers, gen.schema, gen.metric, replay.empty(gen.schema), {}, None, None)
    schema = t.schema
    metric = t.metric
    docs = t.docs
    hidden = dict(t.hidden)
    sup_parts = [t.superseded] if t.superseded is not None else []
    touched = t.touched
    seq = t.seq
    ops_batch: list = []

    def flush():
        nonlocal docs, touched, ops_batch
        if not ops_batch:
            return
        idt = S.dtype_of(schema["id"]["type"])
        cols = [op.table.get_column("id").cast(idt) for op in ops_batch if op.rows]
        if cols:
            ids = pl.concat(cols).unique()
            new = ids if touched is None else ids.to_frame().join(touched.to_frame(), on="id", how="anti")["id"]
            touched = new if touched is None else pl.concat([touched.cast(idt), new])
            base_parts = [frames.align(docs, schema)]
            for i, pos in gen.lookup(new):
                seg = gen.segments[i]
                hidden[i] = np.union1d(hidden.get(i, np.zeros(0, np.int64)), pos)
                rows = seg.frame(pos, D.vector_fields(gen.schema))
                rows = frames.align(rows.select([c for c in rows.columns if c in schema]), schema)
                base_parts.append(rows)
                sup_parts.append(rows)
            docs = pl.concat(base_parts, how="vertical") if len(base_parts) > 1 else base_parts[0]
        docs = replay.fold(docs, schema, ops_batch)
        ops_batch = []

    entries = ns.entries(t.seq, head.seq) if t.seq < head.seq else ()  # nothing after: no listing
    for f in replay.follow(entries, schema, metric):
        L.check_deadline()  # a long tail: stop here rather than replay it past the budget
        if f.schema_changed:
            flush()
        schema, metric = f.schema, f.metric
        ops_batch.extend(f.entry.ops)
        seq = f.entry.seq
    flush()
    sup = pl.concat([frames.align(p, schema) for p in sup_parts], how="vertical") if sup_parts else None
    t = Tail(seq, schema, metric, frames.align(docs, schema), hidden, sup, touched)
    TAILS.put(key, t)
    return t


def cached_tail(ns, manifest_key: str, max_age_s: float) -> Tail | None:
    """This process's tail over the generation of ``manifest_key`` if the WAL head was listed
    for it less than ``max_age_s`` ago (eventual consistency serves it without listing)."""
    t = TAILS.get((ns.store.url, ns.name, manifest_key))
    return t if t is not None and time.monotonic() - t.checked_at < max_age_s else None
