"""Whether a write may be committed now: a ``read_only`` namespace refuses it (403), and
turbopuffer's backpressure refuses it (429) while the namespace holds more than
``ServeConfig.backpressure_bytes`` of unindexed WAL data, unless the body sets
``disable_backpressure`` (docs/http.md "Backpressure").

The unindexed bytes are the sizes of the WAL entries after the index's
``covers_through_seq``.  The sizes are kept per namespace in this process (entries are
immutable, so each is sized once): a check lists only the entries after the newest one it has
seen and sizes those (one LIST + one HEAD per new entry on an object store, a ``stat`` each on
a local one); when the index moves forward the covered entries are subtracted."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from puffer_cli.errors import RateLimited, ReadOnly
from puffer_cli.server.http import indexed_seq


@dataclass
class _Tail:
    covers: int = 0  # the index's covers_through_seq when last checked
    upto: int = 0  # the newest entry sized
    sizes: dict[int, int] = field(default_factory=dict)  # seq -> bytes, for seq in (covers, upto]
    total: int = 0


class Admission:
    def __init__(self, threshold: int):
        self.threshold = threshold
        self.lock = threading.Lock()
        self.tails: dict[str, _Tail] = {}

    def unindexed_bytes(self, ns, meta: Mapping | None) -> int:
        covers = indexed_seq(dict(meta) if meta else None)
        head = ns.head(refresh=False).seq
        with self.lock:
            t = self.tails.get(ns.name)
            if t is None or covers < t.covers or head < t.upto:  # new, or deleted and written again
                t = self.tails[ns.name] = _Tail(covers, covers)
            if covers > t.covers:
                for s in [s for s in t.sizes if s <= covers]:
                    t.total -= t.sizes.pop(s)
                t.covers, t.upto = covers, max(t.upto, covers)
            after = t.upto
        got = [(s, ns.store.size(k)) for s, k in ns.wal_keys(after)]
        with self.lock:
            if self.tails.get(ns.name) is t:
                for s, n in got:
                    if s > t.upto and s > t.covers:
                        t.sizes[s] = n
                        t.total += n
                        t.upto = s
            return t.total

    def check(self, ns, body: Mapping[str, Any] | None = None, *, backpressure: bool = True) -> None:
        """Raise ReadOnly / RateLimited if a write to ``ns`` must be refused now (a schema
        update only checks ``read_only``: ``backpressure=False``)."""
        meta = ns.query_meta()
        if meta and meta.get("read_only"):
            raise ReadOnly(
                f"namespace {ns.name!r} is read-only: document and schema writes are refused",
                hint="update its metadata with read_only: false to allow writes",
            )
        if not backpressure or not self.threshold or (body is not None and body.get("disable_backpressure") is True):
            return
        if not meta:
            return  # a new namespace, or one whose meta.json is not written yet: nothing indexed to wait for
        n = self.unindexed_bytes(ns, meta)
        if n > self.threshold:
            raise RateLimited(
                f"namespace {ns.name!r} has {n:,} bytes of unindexed data, over the backpressure limit of "
                f"{self.threshold:,}: writes are refused until indexing catches up",
                hint="retry later, or set disable_backpressure: true on the write (queries then read a longer tail)",
            )
