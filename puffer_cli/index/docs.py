"""The doc store of a segment: attributes as one Arrow IPC file, exact vectors as
raw float32 matrices, tombstones as a sorted array of row positions.

* ``attrs.arrow``: every non-vector column (``id`` first), uncompressed Arrow IPC
  so polars memory-maps it and runs filters on it directly.
* ``vec-{h}.f32``: one per vector field, ``rows x dims`` little-endian float32,
  row-major; a document without that vector has a row of NaN.  Exact search,
  re-ranking and ``include_attributes`` read it (memory-mapped from the cache).
* tombstones (``tomb-{segment}.npy``, written in the generation that deletes):
  ``numpy.save`` of a sorted ``uint32`` array of dead row positions.
"""

from __future__ import annotations

import hashlib
import io
import os
import re

import numpy as np
import polars as pl

from puffer_cli.index import npyfile
from puffer_cli.schema import spec as S

ATTRS = "attrs.arrow"


def field_tag(field: str) -> str:
    """A file-name-safe tag for an attribute name (names may contain any character)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in field)[:40]
    return f"{safe}-{hashlib.blake2b(field.encode(), digest_size=4).hexdigest()}"


def vector_fields(schema: dict) -> list[str]:
    return [k for k, v in schema.items() if S.is_vector(v["type"])]


def fts_fields(schema: dict) -> list[str]:
    return [k for k, v in schema.items() if v.get("full_text_search")]


def attrs_bytes(df: pl.DataFrame, schema: dict) -> bytes:
    cols = [c for c in df.columns if not (c in schema and S.is_vector(schema[c]["type"]))]
    buf = io.BytesIO()
    df.select(cols).write_ipc(buf, compression="uncompressed")
    return buf.getvalue()


def vector_matrix(df: pl.DataFrame, field: str, dims: int) -> np.ndarray:
    """(rows, dims) float32; NaN rows for missing vectors."""
    s = df.get_column(field)
    out = np.full((df.height, dims), np.nan, dtype=np.float32)
    if df.height == 0:
        return out
    valid = s.is_not_null().to_numpy()
    if valid.any():
        vals = s.filter(s.is_not_null())
        if isinstance(vals.dtype, pl.List):
            vals = vals.list.to_array(dims)
        out[valid] = np.asarray(vals.to_numpy(), dtype=np.float32).reshape(-1, dims)
    return out


def corrupt(what, problem) -> Exception:
    """A damaged index file (in the store or only in the local cache) as CorruptNamespace."""
    from puffer_cli.errors import CorruptNamespace

    m = re.search(r"(?:^|/)([^/]+)/index/\d{20}/", str(what).replace("\\", "/"))  # {ns}/index/{gen}/...
    ns = m.group(1) if m else "<namespace>"
    return CorruptNamespace(
        f"index file {what} is corrupt: {' '.join(str(problem).split())[:300]}",
        hint="if only the local copy is damaged, delete the cache directory (--cache-dir / PUFFER_CACHE_DIR); "
        f"otherwise run `puffer index {ns} --repair` (it rebuilds damaged segments from the WAL)",
    )


def read_attrs(path) -> pl.DataFrame:
    try:
        return pl.read_ipc(path)
    except (OSError, ValueError, pl.exceptions.PolarsError, pl.exceptions.PanicException) as e:
        raise corrupt(path, e) from None


def open_vectors(path, rows: int, dims: int) -> np.ndarray:
    if rows == 0:
        return np.zeros((0, dims), dtype=np.float32)
    want = rows * dims * 4
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise corrupt(path, e) from None
    if size != want:
        raise corrupt(path, f"{size:,} bytes, expected {want:,} ({rows:,} rows x {dims} float32)")
    # a plain ndarray view of the map: fancy indexing on np.memmap itself is ~10x slower
    return np.memmap(path, dtype="<f4", mode="r", shape=(rows, dims)).view(np.ndarray)


def tomb_bytes(positions: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.unique(np.asarray(positions, dtype=np.uint32)), allow_pickle=False)
    return buf.getvalue()


def locate(ids: pl.Series, live_ids, n: int):
    """Yield ``(segment index, positions)`` of the live rows holding ``ids``, segment by
    segment; ``live_ids(i)`` is segment i's ``(id, __pos)`` frame of live rows.  An id is
    found at most once (every id has at most one live row)."""
    want = ids.to_frame("id")
    for i in range(n):
        if want.height == 0:
            return
        idf = live_ids(i)
        if want["id"].dtype != idf["id"].dtype:
            want = want.with_columns(pl.col("id").cast(idf["id"].dtype))
        hit = idf.join(want, on="id", how="semi")
        if hit.height:
            yield i, hit["__pos"].to_numpy().astype(np.int64)
            want = want.join(hit.select("id"), on="id", how="anti")


def alive_mask(rows: int, dead: np.ndarray | None) -> np.ndarray:
    """Boolean mask of the live row positions of a segment of ``rows`` rows."""
    al = np.ones(rows, bool)
    if dead is not None and len(dead):
        al[np.asarray(dead, dtype=np.int64)] = False
    return al


def read_tomb(data: bytes) -> np.ndarray:
    try:
        out = npyfile.load_npy(data)
    except (OSError, ValueError, EOFError) as e:
        raise corrupt("tombstones", e) from None
    if not isinstance(out, np.ndarray) or out.ndim != 1 or out.dtype.kind not in "iu":
        raise corrupt("tombstones", "not a 1-d array of row positions")
    return out


def vector_series(name: str, mat: np.ndarray, dims: int) -> pl.Series:
    """An ``Array(Float32, dims)`` series from rows of a matrix (NaN rows -> null)."""
    mat = np.ascontiguousarray(mat, dtype=np.float32)
    s = (
        pl.Series(name, mat, dtype=pl.Array(pl.Float32, dims))
        if len(mat)
        else pl.Series(name, [], dtype=pl.Array(pl.Float32, dims))
    )
    if len(mat):
        missing = np.isnan(mat).all(axis=1)
        if missing.any():
            s = pl.select(pl.when(pl.Series(~missing)).then(s).otherwise(None).alias(name)).to_series()
    return s


# ---------------------------------------------------------------- column store (docs format "cols-1")
#: The doc store of segments written since issue 25: every non-vector column cut into row
#: groups of ``GROUP_ROWS`` rows, each column chunk a zstd Arrow IPC file of one column,
#: the chunks concatenated in one object (``docs.cols``); the manifest entry holds each
#: chunk's byte range and statistics (docs/format-index.md "Doc store").
DOCS = "docs.cols"
DOCS_FORMAT = "cols-1"
GROUP_ROWS = 16_384
STAT_TYPES = ("string", "int", "uint", "float", "datetime")  # min/max recorded (filterable orderings)
DICT_TYPES = ("string", "int", "uint", "bool")
DICT_MAX = 16  # a group's distinct values listed when at most this many (low cardinality)
STR_STAT_MAX = 64  # longer string min/max are not recorded (no pruning on that group)


def _chunk_bytes(s: pl.Series) -> bytes:
    buf = io.BytesIO()
    s.to_frame().write_ipc(buf, compression="zstd")
    return buf.getvalue()


def _scalar_type(schema: dict, c: str) -> str | None:
    t = schema.get(c, {}).get("type")
    return t if isinstance(t, str) else None


def _stat_values(part: pl.Series, t: str | None) -> tuple[object, object, list | None]:
    """(min, max, distinct values or None) of a group's non-null values, JSON-ready."""
    mn = mx = None
    vals = None
    if t in STAT_TYPES:
        x = part.drop_nulls()
        if t == "float":
            x = x.filter(~x.is_nan())
        elif t == "datetime":
            x = x.dt.epoch("ms")
        if len(x):
            mn, mx = x.min(), x.max()
            if t == "string" and (len(str(mn)) > STR_STAT_MAX or len(str(mx)) > STR_STAT_MAX):
                mn = mx = None
            if t == "float":
                mn, mx = float(mn), float(mx)  # type: ignore[arg-type]
    if t in DICT_TYPES:
        u = part.drop_nulls().unique()
        if len(u) <= DICT_MAX:
            vals = sorted(u.to_list())
    return mn, mx, vals


def docs_bytes(df: pl.DataFrame, schema: dict, group_rows: int = GROUP_ROWS) -> tuple[bytes, dict]:
    """The doc store of ``df``'s non-vector columns: (file bytes, manifest entry without ``key``)."""
    cols = [c for c in df.columns if not (c in schema and S.is_vector(schema[c]["type"]))]
    n = df.height
    out = bytearray()
    ent: dict = {"format": DOCS_FORMAT, "group_rows": group_rows, "columns": {}}
    for c in cols:
        s = df.get_column(c)
        t = _scalar_type(schema, c)
        col: dict = {"dtype": str(s.dtype), "off": [len(out)], "nulls": []}
        mins, maxs, dicts, nans = [], [], [], []
        for a in range(0, max(n, 1), group_rows):  # an empty segment: one empty group
            part = s.slice(a, group_rows)
            out += _chunk_bytes(part)
            col["off"].append(len(out))
            col["nulls"].append(int(part.null_count()))
            mn, mx, vals = _stat_values(part, t)
            mins.append(mn)
            maxs.append(mx)
            dicts.append(vals)
            if t == "float":
                nans.append(int(part.is_nan().sum() or 0))
        if t in STAT_TYPES:
            col["min"], col["max"] = mins, maxs
        if t in DICT_TYPES:
            col["values"] = dicts
        if t == "float":
            col["nans"] = nans
        ent["columns"][c] = col
    return bytes(out), ent


def groups_of(ent: dict, rows: int) -> int:
    g = int(ent["group_rows"])
    return max(1, (rows + g - 1) // g)


def chunk_range(ent: dict, col: str, g: int) -> tuple[int, int]:
    off = ent["columns"][col]["off"]
    return int(off[g]), int(off[g + 1])


def decode_chunk(data, what: str) -> pl.Series:
    try:
        return pl.read_ipc(io.BytesIO(bytes(data))).to_series(0)
    except (OSError, ValueError, IndexError, pl.exceptions.PolarsError, pl.exceptions.PanicException) as e:
        raise corrupt(what, e) from None


def read_docs_whole(path, ent: dict, rows: int, columns: list[str] | None = None) -> pl.DataFrame:
    """Every column (or ``columns``) of a ``cols-1`` doc store from its whole local file;
    of some columns, only their chunks are read."""
    names = list(ent["columns"]) if columns is None else [c for c in columns if c in ent["columns"]]
    cols = []
    with open(path, "rb") as fh:
        data = memoryview(fh.read()) if columns is None else None

        def chunk(c: str, g: int):
            a, b = chunk_range(ent, c, g)
            if data is not None:
                return data[a:b]
            fh.seek(a)
            return memoryview(fh.read(b - a))

        for c in names:
            parts = [decode_chunk(chunk(c, g), path) for g in range(groups_of(ent, rows))]
            cols.append(pl.concat(parts) if len(parts) > 1 else parts[0])
    return pl.DataFrame(cols)


# ---------------------------------------------------------------- row-group pruning
def group_mask(ent: dict, rows: int, bound) -> np.ndarray:
    """Which row groups of a ``cols-1`` doc store may hold a row matching the bound filter
    tree ``bound`` (``filters.bind``), from the groups' statistics.  Only scalar
    comparisons (Eq, In, Lt, Lte, Gt, Gte, their negations) and null tests prune; any other
    condition may match anywhere.  Never false for a group holding a match."""
    n = groups_of(ent, rows)
    if bound is None:
        return np.ones(n, bool)
    g_rows = int(ent["group_rows"])
    out = np.ones(n, bool)
    for g in range(n):
        size = max(0, min(g_rows, rows - g * g_rows))
        out[g] = _tv(bound, ent["columns"], g, size)[0]
    return out


def _tv(node, cols: dict, g: int, size: int) -> tuple[bool, bool]:
    """(may be true, may be false) of ``node`` over the rows of group ``g``."""
    from puffer_cli.filters import bind as B
    from puffer_cli.filters.tree import And, Not, Or

    if isinstance(node, And):
        parts = [_tv(c, cols, g, size) for c in node.children]
        return all(t for t, _f in parts), any(f for _t, f in parts)
    if isinstance(node, Or):
        parts = [_tv(c, cols, g, size) for c in node.children]
        return any(t for t, _f in parts), all(f for _t, f in parts)
    if isinstance(node, Not):
        t, f = _tv(node.child, cols, g, size)
        return f, t
    if isinstance(node, B.Const):
        return bool(node.value), not node.value
    if size == 0:
        return False, False
    if isinstance(node, B.IsNull):
        c = cols.get(node.attr)
        nulls = size if c is None else int(c["nulls"][g])
        return nulls > 0, nulls < size
    if isinstance(node, B.OnValue):
        c = cols.get(node.attr)
        if c is None:  # a column the segment does not have: null everywhere
            return False, True
        try:
            return _test_tv(node.test, c, g, size)
        except (TypeError, ValueError, KeyError, IndexError):
            return True, True
    return True, True


def _test_tv(test, c: dict, g: int, size: int) -> tuple[bool, bool]:
    from puffer_cli.filters import bind as B

    nulls = int(c["nulls"][g])
    nans = int(c["nans"][g]) if "nans" in c else 0
    if size - nulls <= 0:  # only nulls: no comparison is true
        return False, True
    full = nulls == 0 and nans == 0  # every row has a comparable value
    vals = c["values"][g] if "values" in c else None
    mn = c["min"][g] if "min" in c else None
    mx = c["max"][g] if "max" in c else None
    if isinstance(test, B.Never):
        return False, True
    if isinstance(test, B.NonNull):
        return True, not full
    if isinstance(test, B.Cmp):
        lit, op = test.lit, test.op
        if vals is not None:
            hit = [_cmp(v, op, lit) for v in vals]
            return any(hit), not (full and all(hit))
        # a NaN value compares greater than every number (polars' order, which filters follow):
        # Gt/Gte may match a group holding one whatever its min/max say
        big = nans > 0 and op in ("Gt", "Gte")
        if mn is None or mx is None:
            return True, True
        if op == "Eq":
            return mn <= lit <= mx, not (full and mn == mx == lit)
        if op == "Lt":
            return mn < lit, not (full and mx < lit)
        if op == "Lte":
            return mn <= lit, not (full and mx <= lit)
        if op == "Gt":
            return big or mx > lit, not (full and mn > lit)
        if op == "Gte":
            return big or mx >= lit, not (full and mn >= lit)
        return True, True
    if isinstance(test, B.Member):
        may_null = test.null and nulls > 0
        if vals is not None:
            members = set(test.values)
            hit = [v in members for v in vals]
            return may_null or any(hit), not (nulls == 0 and nans == 0 and all(hit))
        if mn is None or mx is None:
            return True, True
        return may_null or any(mn <= v <= mx for v in test.values), True
    return True, True


def estimate_fraction(ent: dict, rows: int, bound) -> float:
    """An estimate of the fraction of rows matching the bound filter ``bound`` from the
    row groups' statistics (distinct values taken as equally frequent, ranges and an integer's
    values as uniform between min and max; 1 where the statistics say nothing).  For planning only: the cold
    planner sizes a speculative read with it (an IVF probe that depends on the filter's
    selectivity), and the answer never depends on it."""
    n = groups_of(ent, rows)
    if bound is None or rows <= 0:
        return 1.0
    g_rows = int(ent["group_rows"])
    hit = 0.0
    for g in range(n):
        size = max(0, min(g_rows, rows - g * g_rows))
        if size:
            try:
                hit += size * min(1.0, max(0.0, _est(bound, ent["columns"], g, size)))
            except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError):
                hit += size
    return hit / rows


def _est(node, cols: dict, g: int, size: int) -> float:
    from puffer_cli.filters import bind as B
    from puffer_cli.filters.tree import And, Not, Or

    if isinstance(node, And):
        out = 1.0
        for c in node.children:
            out *= _est(c, cols, g, size)
        return out
    if isinstance(node, Or):
        miss = 1.0
        for c in node.children:
            miss *= 1.0 - _est(c, cols, g, size)
        return 1.0 - miss
    if isinstance(node, Not):
        return 1.0 - _est(node.child, cols, g, size)
    if isinstance(node, B.Const):
        return 1.0 if node.value else 0.0
    if isinstance(node, B.IsNull):
        c = cols.get(node.attr)
        return 1.0 if c is None else int(c["nulls"][g]) / size
    if not isinstance(node, B.OnValue):
        return 1.0
    c = cols.get(node.attr)
    if c is None:
        return 0.0
    test = node.test
    present = (size - int(c["nulls"][g]) - (int(c["nans"][g]) if "nans" in c else 0)) / size
    vals = c["values"][g] if "values" in c else None
    mn = c["min"][g] if "min" in c else None
    mx = c["max"][g] if "max" in c else None
    if isinstance(test, B.Never):
        return 0.0
    if isinstance(test, B.NonNull):
        return present
    if isinstance(test, (B.Cmp, B.Member)):
        if vals is not None:
            if not vals:
                return 0.0
            if isinstance(test, B.Cmp):
                hits = sum(_cmp(v, test.op, test.lit) for v in vals)
            else:
                hits = sum(v in set(test.values) for v in vals)
            return present * hits / len(vals)
        num = all(isinstance(x, (int, float)) for x in (mn, mx, getattr(test, "lit", None)))
        whole = num and all(isinstance(x, int) and not isinstance(x, bool) for x in (mn, mx, test.lit))  # type: ignore[union-attr]
        if isinstance(test, B.Cmp) and test.op == "Eq" and whole:  # integers uniform between min and max
            return present / (mx - mn + 1) if mn <= test.lit <= mx else 0.0  # type: ignore[operator]
        if isinstance(test, B.Cmp) and test.op in ("Lt", "Lte", "Gt", "Gte") and num and mx > mn:  # type: ignore[operator]
            below = min(1.0, max(0.0, (test.lit - mn) / (mx - mn)))  # type: ignore[operator]
            return present * (below if test.op in ("Lt", "Lte") else 1.0 - below)
    return 1.0


def _cmp(v, op: str, lit) -> bool:
    if op == "Eq":
        return v == lit
    if op == "Lt":
        return v < lit
    if op == "Lte":
        return v <= lit
    if op == "Gt":
        return v > lit
    if op == "Gte":
        return v >= lit
    return True


def segment_attrs(cache, store, seg: dict, columns: list[str] | None = None) -> pl.DataFrame:
    """Every non-vector column (or ``columns``) of segment ``seg`` (a manifest entry), whole:
    from ``attrs.arrow`` (generations before the column store) or the ``cols-1`` doc store."""
    from puffer_cli.index import paged

    ent = seg.get("docs")
    if ent is None:
        a = read_attrs(cache.file(store, seg["attrs"]))
        return a if columns is None else a.select([c for c in columns if c in a.columns])
    return read_docs_whole(paged.whole(cache, store, ent), ent, int(seg["rows"]), columns)
