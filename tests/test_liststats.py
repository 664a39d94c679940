"""Per-list statistics (index/liststats.py): a list holding a row that passes a filter is never
estimated at 0, whatever the values, nulls and NaNs (hypothesis); built only for rows in list
order; a filter they do not cover gets None; a cold filtered query reads ahead by them."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from puffer_cli.filters import bind_filter
from puffer_cli.filters.lower import lower
from puffer_cli.index import liststats

SCHEMA = {"u": {"type": "int"}, "f": {"type": "float"}, "s": {"type": "string"}}
TYPES = {k: v["type"] for k, v in SCHEMA.items()}


def stats_of(frame: pl.DataFrame, labels: np.ndarray, nlist: int) -> liststats.ListStats | None:
    arrays = liststats.build(frame, SCHEMA, labels, nlist)
    if not arrays:
        return None
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # through the route file's encoding (float32 bounds)
    return liststats.ListStats.from_npz(np.load(io.BytesIO(buf.getvalue())), nlist)


ints = st.one_of(st.none(), st.integers(-50, 50))
floats = st.one_of(st.none(), st.just(float("nan")), st.floats(-5, 5, allow_nan=False, width=32))
ops = st.sampled_from(["Eq", "Lt", "Lte", "Gt", "Gte"])
leaf = st.one_of(
    st.tuples(st.just("u"), ops, st.integers(-60, 60)).map(list),
    st.tuples(st.just("f"), ops, st.floats(-6, 6, allow_nan=False, width=32)).map(list),
    st.tuples(st.just("u"), st.just("In"), st.lists(st.integers(-60, 60), min_size=1, max_size=4)).map(list),
)
filters = st.recursive(
    leaf,
    lambda sub: st.tuples(st.sampled_from(["And", "Or"]), st.lists(sub, min_size=1, max_size=3)).map(list),
    max_leaves=5,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(ints, floats), min_size=1, max_size=120),
    st.integers(1, 12),
    st.integers(0, 2**31 - 1),
    filters,
)
def test_a_list_holding_a_match_is_never_estimated_at_zero(rows, nlist, seed, filt):
    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(0, nlist, len(rows)))
    frame = pl.DataFrame(
        {"u": [r[0] for r in rows], "f": [r[1] for r in rows], "s": ["x"] * len(rows)},
        schema={"u": pl.Int64, "f": pl.Float64, "s": pl.String},
    )
    got = stats_of(frame, labels, nlist)
    assert got is not None
    bound = bind_filter(filt, SCHEMA)
    est = got.estimate(bound, TYPES, np.bincount(labels, minlength=nlist))
    assert est is not None and est.shape == (nlist,)
    assert ((est >= 0) & (est <= 1)).all()
    passing = frame.select(lower(bound).fill_null(False)).to_series().to_numpy()
    holds = np.bincount(labels[passing], minlength=nlist) > 0
    assert (est[holds] > 0).all(), (filt, est, holds)


def test_uncovered_filters_get_none_and_rows_out_of_list_order_get_no_statistics():
    frame = pl.DataFrame({"u": [1, 2, 3, 4], "f": [0.5, 1.5, None, 2.0], "s": ["a", "b", "c", "d"]})
    st_ = stats_of(frame, np.array([0, 0, 1, 1]), 2)
    assert st_ is not None and set(st_.cols) == {"u", "f"}
    sizes = np.array([2, 2])
    for f in (["s", "Eq", "a"], ["Not", ["u", "Lt", 3]], ["u", "In", [1, None]]):
        assert st_.estimate(bind_filter(f, SCHEMA), TYPES, sizes) is None, f
    assert st_.estimate(bind_filter(["u", "Lt", 3], SCHEMA), TYPES, sizes)[1] == 0  # list 1 holds 3, 4
    assert stats_of(frame, np.array([1, 0, 0, 1]), 2) is None  # rows not in list order
    assert stats_of(frame.select("s"), np.array([0, 0, 1, 1]), 2) is None  # nothing numeric
    # rows without a list (zero vectors) come last and are left out
    assert stats_of(frame, np.array([0, 0, 1, -1]), 2) is not None


def test_an_estimate_follows_where_the_values_lie():
    """A list whose values all pass is estimated at 1, one whose values cannot at 0, and a
    list whose minimum passes at least one row's share."""
    frame = pl.DataFrame({"u": list(range(100)), "f": [0.0] * 100, "s": ["x"] * 100})
    labels = np.repeat(np.arange(4), 25)  # lists of 0-24, 25-49, 50-74, 75-99
    est = stats_of(frame, labels, 4).estimate(bind_filter(["u", "Lt", 26], SCHEMA), TYPES, np.full(4, 25))
    assert est[0] == 1.0 and est[2] == 0 and est[3] == 0
    assert est[1] >= 1 / 25


def test_statistics_of_the_wrong_shape_or_kind_are_ignored():
    """A damaged or foreign route: planning goes without its statistics, never an error."""
    good = {
        "stat_cols": np.asarray(["u"]),
        "stat_lo": np.zeros((1, 3), np.float32),
        "stat_hi": np.ones((1, 3), np.float32),
    }
    bad = [
        {**good, "stat_lo": np.zeros((1, 2), np.float32)},  # another list count
        {**good, "stat_hi": np.ones((2, 3), np.float32)},  # another column count
        {**good, "stat_lo": np.asarray([["a", "b", "c"]])},  # not numbers
        {**good, "stat_cols": np.asarray([["u"]])},  # not a list of names
        {"stat_cols": good["stat_cols"], "stat_lo": good["stat_lo"]},  # one missing
    ]
    for arrays in [good, *bad]:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        got = liststats.ListStats.from_npz(np.load(io.BytesIO(buf.getvalue())), 3)
        assert (got is not None) == (arrays is good)
