"""The live rows of the published generation, as the builder sees them: id lookups
that take rows out (tombstones) while the WAL tail is folded, and row reads for merges."""

from __future__ import annotations

import numpy as np
import polars as pl

from puffer_cli.index import docs as D
from puffer_cli.index import paged
from puffer_cli.schema import frames
from puffer_cli.store import Store
from puffer_cli.store.filecache import Cache


class BaseRows:
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

    def add(self, seg: dict) -> int:
        """Make a segment written during this run part of the base (its index)."""
        self.segs.append(seg)
        self._ids.append(None)
        self.dead.append(np.zeros(0, np.int64))
        self.new_dead.append([])
        return len(self.segs) - 1

    def attrs(self, i: int) -> pl.DataFrame:
        if i not in self._attrs:
            self._attrs[i] = D.segment_attrs(self.cache, self.store, self.segs[i])
        return self._attrs[i]

    def ids(self, i: int) -> pl.DataFrame:
        a = self._ids[i]
        if a is None:
            # the id column alone (a first run looks up every new id in the segments it cut:
            # their whole attributes kept here grew its memory by a segment's text each)
            whole = self._attrs.get(i)
            a = whole if whole is not None else self._id_column(i)
            a = a.select("id").with_row_index("__pos")
            dead = self.dead[i]
            if len(dead):
                a = a.filter(pl.Series(D.alive_mask(a.height, dead)))
            self._ids[i] = a
        return a

    def _id_column(self, i: int) -> pl.DataFrame:
        """Segment ``i``'s ids: its fixed-width ids file (integer ids), else the doc store's column."""
        seg = self.segs[i]
        ent = seg.get("ids")
        if ent is None:
            return D.segment_attrs(self.cache, self.store, seg, ["id"])
        dt = {"u64": ("<u8", pl.UInt64), "i64": ("<i8", pl.Int64)}[ent["dtype"]]
        raw = np.fromfile(paged.whole(self.cache, self.store, ent), dtype=dt[0])
        if len(raw) != int(seg["rows"]):
            raise D.corrupt(ent["key"], f"{len(raw)} ids for {seg['rows']} rows")
        return pl.Series("id", raw, dtype=dt[1]).to_frame()

    def rows(self, i: int, pos: np.ndarray, schema: dict) -> pl.DataFrame:
        """Full rows (attributes + vectors) at positions ``pos`` of segment ``i``, aligned to schema."""
        seg = self.segs[i]
        df = self.attrs(i)[pos.tolist()] if len(pos) else self.attrs(i).clear()
        cols = []
        for f, v in seg.get("vectors", {}).items():
            mat = D.open_vectors(paged.whole(self.cache, self.store, v), seg["rows"], v["dims"])
            cols.append(
                D.vector_series(
                    f, np.asarray(mat[pos]) if len(pos) else np.zeros((0, v["dims"]), np.float32), v["dims"]
                )
            )
        if cols:
            df = df.with_columns(cols)
        known = {c for c in df.columns if c in schema}
        return frames.align(df.select([c for c in df.columns if c in known]), schema)

    def live_positions(self, i: int) -> np.ndarray:
        return np.nonzero(D.alive_mask(self.segs[i]["rows"], self.all_dead(i)))[0]

    def all_dead(self, i: int) -> np.ndarray:
        parts = [self.dead[i], *self.new_dead[i]]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def take(self, ids: pl.Series, schema: dict) -> pl.DataFrame | None:
        """Remove ``ids`` from the live set (tombstone) and return their rows."""
        out = []
        for i, pos in list(D.locate(ids, self.ids, len(self.segs))):
            self.new_dead[i].append(pos)
            idf = self.ids(i)
            self._ids[i] = idf.filter(pl.Series(~np.isin(idf["__pos"].to_numpy(), pos)))
            out.append(self.rows(i, pos, schema))
        if not out:
            return None
        return pl.concat(out, how="vertical")
