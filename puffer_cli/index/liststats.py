"""Per-list statistics of a segment's numeric attributes, for planning a filtered ANN query.

A segment's rows are stored in the list order of its first vector field's IVF (format 2), so
an IVF list is a run of rows.  Its route file also holds, for up to ``COLS_MAX`` numeric
scalar attributes (``int``, ``uint``, ``float``: the schema's order), each list's smallest and
largest value (``stat_lo`` / ``stat_hi``: columns x lists, float32 rounded outwards; a list
without a value has lo = +inf, hi = -inf; a NaN, which filters order above every number,
counts as +inf in ``hi`` only).  About 8 bytes per list and
column (2M rows, 2 segments, 10k lists each: 80 KB a segment per column).

A cold filtered ANN query reads ahead, with the filter's columns, the lists it will
probably probe; the row groups' statistics (``docs.estimate_fraction``) say how many rows pass
but not in which lists, which a filter correlated with the vectors defeats (the read-ahead
misses, and the query takes a round trip more).  :func:`estimate` gives each list's expected
fraction of passing rows from these statistics (values uniform between a list's lo and hi, an
integer's as equally frequent), and 0 for a list that cannot hold one.  Planning only: the
answer never depends on it, and a filter the statistics do not cover (another attribute, a
negation, a null test) gets None (the caller falls back to the row groups' estimate).
"""

from __future__ import annotations

import numpy as np

COLS_MAX = 8  # numeric attributes with per-list statistics, at most
NUMERIC = ("int", "uint", "float")


def build(frame, schema: dict, labels: np.ndarray, nlist: int) -> dict[str, np.ndarray]:
    """The route arrays of the per-list statistics of ``frame``'s numeric attributes, whose
    rows are in list order (``labels``: each row's list, non-decreasing); {} when the rows
    are not (a row without a list, or a second vector field's order) or nothing is numeric."""
    import polars as pl

    cols = [c for c in frame.columns if schema.get(c, {}).get("type") in NUMERIC][:COLS_MAX]
    lab = np.asarray(labels)
    k = int(np.count_nonzero(lab >= 0))  # rows without a list (a zero vector) come last
    if not cols or nlist == 0 or k == 0 or len(lab) != frame.height or (lab[:k] < 0).any():
        return {}
    lab = lab[:k]
    if (np.diff(lab) < 0).any():
        return {}
    starts = np.searchsorted(lab, np.arange(nlist))
    empty = np.searchsorted(lab, np.arange(nlist), side="right") == starts
    lo = np.full((len(cols), nlist), np.inf, np.float32)
    hi = np.full((len(cols), nlist), -np.inf, np.float32)
    for i, c in enumerate(cols):
        col = frame.get_column(c)
        v = col.cast(pl.Float64).to_numpy()[:k]  # nulls (and NaN): NaN
        nan = col.is_nan().fill_null(False).to_numpy()[:k] if col.dtype.is_float() else np.zeros(k, bool)
        at = starts[~empty]  # strictly increasing: each list's rows up to the next one's
        lo[i, ~empty] = _outwards(np.minimum.reduceat(np.where(np.isnan(v), np.inf, v), at), -np.inf)
        top = np.where(nan, np.inf, np.where(np.isnan(v), -np.inf, v))
        hi[i, ~empty] = _outwards(np.maximum.reduceat(top, at), np.inf)
    return {"stat_cols": np.asarray(cols, dtype=np.str_), "stat_lo": lo, "stat_hi": hi}


def _outwards(x: np.ndarray, towards: float) -> np.ndarray:
    """``x`` as float32, each rounded towards ``towards`` where float32 is not exact."""
    y = x.astype(np.float32)
    off = y.astype(np.float64) != x
    fin = np.isfinite(x)
    y[off & fin] = np.nextafter(y[off & fin], np.float32(towards))
    return y


class ListStats:
    """The per-list statistics of one route (see the module docstring)."""

    def __init__(self, cols: list[str], lo: np.ndarray, hi: np.ndarray):
        self.cols = {c: i for i, c in enumerate(cols)}
        self.lo, self.hi = lo.astype(np.float64), hi.astype(np.float64)

    @classmethod
    def from_npz(cls, z, nlist: int) -> ListStats | None:
        """The statistics of a route file of ``nlist`` lists, or None: none stored, or arrays
        of the wrong shape or kind (a damaged or foreign file: planning goes without them)."""
        if not {"stat_cols", "stat_lo", "stat_hi"} <= set(z.files):
            return None
        cols, lo, hi = z["stat_cols"], z["stat_lo"], z["stat_hi"]
        shape = (len(cols), nlist) if cols.ndim == 1 else None
        if shape is None or lo.shape != shape or hi.shape != shape or not (lo.dtype.kind == hi.dtype.kind == "f"):
            return None
        return cls([str(c) for c in cols], lo, hi)

    def estimate(self, bound, types: dict[str, str], sizes: np.ndarray) -> np.ndarray | None:
        """Each list's expected fraction of rows passing the bound filter ``bound`` (0 where
        none can), or None when the filter tests anything but the columns recorded here
        (``types``: attribute -> scalar type; ``sizes``: members per list)."""
        n = np.maximum(np.asarray(sizes, np.float64), 1.0)
        try:
            return np.clip(self._est(bound, types, n), 0.0, 1.0)
        except _Unknown:
            return None

    def _est(self, node, types: dict[str, str], sizes: np.ndarray) -> np.ndarray:
        from puffer_cli.filters import bind as B
        from puffer_cli.filters.tree import And, Or

        n = self.lo.shape[1]
        if isinstance(node, And):
            out = np.ones(n)
            for c in node.children:
                out = out * self._est(c, types, sizes)
            return out
        if isinstance(node, Or):
            miss = np.ones(n)
            for c in node.children:
                miss = miss * (1.0 - self._est(c, types, sizes))
            return 1.0 - miss
        if isinstance(node, B.Const):
            return np.full(n, 1.0 if node.value else 0.0)
        if not isinstance(node, B.OnValue) or node.attr not in self.cols:
            raise _Unknown
        i = self.cols[node.attr]
        return _test(node.test, self.lo[i], self.hi[i], types.get(node.attr) in ("int", "uint"), sizes)


class _Unknown(Exception):
    """A condition the statistics say nothing about."""


def _number(x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _Unknown
    return float(x)


def _test(test, lo: np.ndarray, hi: np.ndarray, integer: bool, n: np.ndarray) -> np.ndarray:
    """A list's expected fraction passing ``test`` from its ``[lo, hi]`` (uniform; an
    integer's values equally frequent) and its ``n`` rows; 0 where none can pass.  Where the
    extreme value itself passes (``Lt`` and its ``lo``), that row is one match for sure and the
    other ``n - 1`` pass at the uniform rate: the minimum of 100 uniform values below a 1%
    cut holds ~1.5 matches, which the rate alone puts at ~0.5."""
    from puffer_cli.filters import bind as B

    has = lo <= hi  # a list with a value
    with np.errstate(invalid="ignore", over="ignore"):
        width = (hi - lo + 1.0) if integer else (hi - lo)
    if isinstance(test, B.Never):
        return np.zeros(len(lo))
    if isinstance(test, B.NonNull):
        return has.astype(np.float64)
    if isinstance(test, B.Member):
        if test.null:  # a missing value passes: the statistics do not count them
            raise _Unknown
        return np.minimum(
            1.0, sum((_eq(_number(v), lo, hi, width, integer, n) for v in test.values), np.zeros(len(lo)))
        )
    if not isinstance(test, B.Cmp):
        raise _Unknown
    x = _number(test.lit)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if test.op == "Eq":
            return _eq(x, lo, hi, width, integer, n)
        if test.op in ("Lt", "Lte"):
            top = (np.floor(x) + (1.0 if test.op == "Lte" or x != np.floor(x) else 0.0)) if integer else x
            f = np.where(width > 0, (top - lo) / width, 1.0)
            ok = (lo < x) if test.op == "Lt" else (lo <= x)
        elif test.op in ("Gt", "Gte"):
            bot = (np.ceil(x) + (1.0 if test.op == "Gt" and x == np.ceil(x) else 0.0)) if integer else x
            f = np.where(width > 0, (hi + (1.0 if integer else 0.0) - bot) / width, 1.0)
            ok = (hi > x) if test.op == "Gt" else (hi >= x)
        else:
            raise _Unknown
    f = np.nan_to_num(f, nan=1.0)  # infinite bounds (a NaN's +inf, an infinite value): say nothing
    return np.where(has & ok, _one_more(np.clip(f, 0.0, 1.0), n), 0.0)


def _one_more(f: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The fraction of ``n`` rows passing when one (an extreme value) surely does and the
    others at rate ``f``."""
    return np.minimum(1.0, (1.0 + (n - 1.0) * f) / n)


def _eq(x: float, lo: np.ndarray, hi: np.ndarray, width: np.ndarray, integer: bool, n: np.ndarray) -> np.ndarray:
    """Expected fraction equal to ``x``: 1 / (values between lo and hi) for an integer
    (one row for sure when ``x`` is the list's lo or hi), 1 / 64 for a float."""
    inside = (lo <= x) & (x <= hi)
    if integer:
        f = 1.0 / np.maximum(width, 1.0)
        return np.where(inside, np.where((lo == x) | (hi == x), _one_more(f, n), f), 0.0)
    return np.where(inside, np.where(hi > lo, 1.0 / 64, 1.0), 0.0)
