"""A query's scan split over threads gives what one thread gives; ``smallest`` picks what
``argpartition`` picks."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from puffer_cli import cores
from puffer_cli.index import ivf, stack

from .test_stack import DIMS, _segments, _stack

scores = arrays(
    np.float64,
    st.integers(0, 3000),
    elements=st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, 1.0, -1.0]),
)


@settings(max_examples=200, deadline=None)
@given(d=scores, k=st.integers(-2, 3100), step=st.sampled_from([1, 3, 32]))
def test_smallest_is_the_k_smallest(d, k, step):
    old = cores.SAMPLE_STEP, cores.SAMPLE_MIN
    cores.SAMPLE_STEP, cores.SAMPLE_MIN = step, 1  # the sampled threshold on small inputs too
    try:
        got = cores.smallest(d, k)
    finally:
        cores.SAMPLE_STEP, cores.SAMPLE_MIN = old
    want = min(max(k, 0), len(d))
    assert len(got) == want == len(np.unique(got))
    if want:  # the same values as a full sort's first k (which rows tie at the k-th may differ)
        assert np.array_equal(np.sort(d[got]), np.sort(d)[:want])


@given(w=st.lists(st.integers(0, 1000), max_size=50), parts=st.integers(1, 6))
def test_cuts_are_contiguous_shares_of_about_equal_weight(w, parts):
    c = cores.cuts(np.asarray(w, np.int64), parts)
    assert len(c) == parts + 1 and c[0] == 0 and c[-1] == len(w)
    assert np.all(np.diff(c) >= 0)
    total = sum(w)
    for i in range(parts):  # a share holds at most its fair part and one item more
        assert sum(w[c[i] : c[i + 1]]) <= total / parts + max(w, default=0)


def test_run_keeps_order_and_runs_calls_at_once(monkeypatch):
    """Two calls that each wait for the other finish: they ran on two threads at once."""
    monkeypatch.setattr(cores, "WORKERS", 2)
    met = [threading.Event(), threading.Event()]

    def job(i):
        def f():
            met[i].set()
            assert met[1 - i].wait(10), "the other call never ran beside this one"
            return i * i

        return f

    assert cores.run([job(0), job(1)]) == [0, 1]
    assert cores.run([lambda i=i: i * i for i in range(7)]) == [i * i for i in range(7)]


@pytest.mark.parametrize("metric", ["cosine_distance", "euclidean_squared"])
@pytest.mark.parametrize("bits", [8, 4])
def test_a_split_scan_scores_as_one_thread(tmp_path, monkeypatch, metric, bits):
    """The stack's runs and the book's centroids scored in shares on several threads: the same
    scores, the same order, as on the caller's thread alone."""
    book, parts, _x = _segments(tmp_path, metric, bits=bits)
    st_ = _stack(tmp_path, parts)
    sizes = np.sum([np.diff(r.offsets) for r, _l in parts], axis=0)
    rng = np.random.default_rng(5)
    qs = rng.normal(size=(5, DIMS)).astype(np.float32)

    def answers():
        out = []
        for q in qs:
            book._last = None
            lists, cum = book.ranked(q, sizes, 900)
            chosen = np.sort(ivf.prefix((lists, cum), 900))
            d = book.distances(ivf._prepare(q[None, :], book.codebook.cosine)[0]).copy()
            out.append((lists, d, st_.search(q, chosen, 50)))
        return out

    monkeypatch.setattr(cores, "WORKERS", 1)
    book._packed = None
    one = answers()
    monkeypatch.setattr(cores, "WORKERS", 3)
    monkeypatch.setattr(cores, "SPLIT_MIN", 32)  # these few hundred members and lists split three ways
    monkeypatch.setattr(stack, "LONG_RUN", 8)  # long runs and gathered members in every share
    book._packed = None
    assert cores.shares(1000) == 3
    many = answers()
    assert len(book._packed) == 3  # the book's 158 lists in three packed shares
    for (l1, d1, (g1, s1, n1)), (l2, d2, (g2, s2, n2)) in zip(one, many):
        assert np.array_equal(d1, d2) and np.array_equal(np.sort(l1), np.sort(l2))
        assert n1 == n2 and np.allclose(np.sort(s1), np.sort(s2))
        # the same rows, but for which of those tied at the last score are kept (int4 codes tie often)
        assert set(g1[s1 < s1.max()].tolist()) == set(g2[s2 < s2.max()].tolist())


def test_a_share_that_splits_again_runs_on_its_own_thread():
    """Shares run on the pool calling ``run`` themselves: done inline, not waiting on the pool."""

    def inner(i):
        return lambda: sum(cores.run([lambda j=j: i * 10 + j for j in range(3)]))

    assert cores.run([inner(i) for i in range(6)]) == [sum(i * 10 + j for j in range(3)) for i in range(6)]


def test_an_error_is_raised_once_no_call_runs(monkeypatch):
    monkeypatch.setattr(cores, "WORKERS", 2)
    done = []

    def job(i):
        def f():
            if i == 3:
                raise ValueError("three")
            done.append(i)
            return i

        return f

    assert cores.run([job(i) for i in range(3)]) == [0, 1, 2]
    done.clear()
    with pytest.raises(ValueError, match="three"):
        cores.run([job(i) for i in range(8)])
    seen = sorted(done)
    threading.Event().wait(0.2)
    assert sorted(done) == seen and 3 not in seen  # nothing still running once the error is raised


def test_a_busy_pool_does_not_hold_the_caller(monkeypatch):
    """The pool's thread busy with another query's share: this call's own work is done by its
    caller, who does not wait for the pool."""
    monkeypatch.setattr(cores, "WORKERS", 2)
    release = threading.Event()
    started = threading.Event()

    def busy():
        started.set()
        release.wait(10)

    other = cores._executor().submit(busy)  # another query holding the pool's only thread
    try:
        assert started.wait(10)
        assert cores.run([lambda i=i: i + 1 for i in range(4)]) == [1, 2, 3, 4]
    finally:
        release.set()
        other.result(10)
