"""Query limits (puffer_cli/limits.py, docs/http.md "Limits: queries"): every limit is
refused with an error naming it and the value, before any work; large legal filters
stay fast (an Or of Eq is one ``is_in``); nothing a query sends raises anything but a
PufferError (no RecursionError / OverflowError / polars crash); the time budget stops
a query with BudgetExceeded (408)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import polars as pl
import puffer_cli
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from puffer_cli import filters as F
from puffer_cli import limits
from puffer_cli.errors import BudgetExceeded, InvalidFilter, InvalidQuery, PufferError, UnprocessableBody
from puffer_cli.filters import lower as FC
from puffer_cli.filters import parse
from puffer_cli.index import builder
from puffer_cli.search import engine
from puffer_cli.store import url as _store

from tests import test_filters as TF

DIMS = 4
SCHEMA = {
    "t": {"type": "string", "full_text_search": True},
    "d": {"type": "datetime"},
    "ls": {"type": "[]string"},
    "s": {"type": "string", "regex": True},
    "v": {"type": f"[{DIMS}]f32", "ann": True},
}


@pytest.fixture(autouse=True)
def _no_persistent_cache():
    from puffer_cli.store import filecache as cache

    cache.configure("")
    yield
    cache.configure("")


def _rows(start: int, n: int) -> list[dict]:
    rng = np.random.default_rng(start)
    words = ["alpha", "beta", "gamma", "delta", "fox", "dog"]
    return [
        {
            "id": i,
            "n": i,
            "s": f"s{i % 50}",
            "t": " ".join(rng.choice(words, 4)),
            "d": 1_600_000_000_000 + i * 1000,
            "ls": [f"s{i % 7}", f"s{i % 11}"],
            "v": rng.normal(size=DIMS).round(3).tolist(),
        }
        for i in range(start, start + n)
    ]


@pytest.fixture(scope="module", params=["memory", "indexed"])
def ns(request):
    """A namespace of 400 documents: only a WAL, or an index plus a WAL tail of 50."""
    url = f"memory://{uuid.uuid4().hex}"
    db = puffer_cli.connect(url)
    ns = db.open_namespace("limits")
    ns.write({"upsert_rows": _rows(0, 350), "schema": SCHEMA, "distance_metric": "cosine_distance"})
    if request.param == "indexed":
        from puffer_cli.store import filecache as cache

        cache.configure("")
        builder.index_namespace(ns, gc_grace_s=0)
    ns.write({"upsert_rows": _rows(350, 50)})
    yield ns
    _store.open_store(url).clear()


def ids(ns, body) -> list:
    return [r["id"] for r in engine.run(ns, body)["rows"]]


def deep(kind: str, depth: int, leaf):
    f = leaf
    for _ in range(depth):
        f = [kind, f] if kind == "Not" else [kind, [f]]
    return f


def deep_rank(kind: str, depth: int):
    e = ["t", "BM25", "fox"]
    for _ in range(depth):
        e = ["Product", 2, e] if kind == "Product" else [kind, [e]]
    return e


def nested_list(depth: int):
    v: list = []
    x = v
    for _ in range(depth - 1):
        x.append([])
        x = x[0]
    return v


ROW = {"rank_by": ["id", "asc"], "top_k": 5}
VEC = [0.5] * DIMS

# (body, error class, substrings the message must contain)
REFUSED = [
    (
        {**ROW, "filters": ["Or", [["n", "Eq", i] for i in range(1025)]]},
        InvalidFilter,
        ["MAX_FILTER_NODES", "1,024", "1,026"],
    ),
    ({**ROW, "filters": ["Or", [["n", "Eq", i] for i in range(4000)]]}, InvalidFilter, ["MAX_FILTER_NODES"]),
    ({**ROW, "filters": ["And", [["n", "Eq", i] for i in range(4000)]]}, InvalidFilter, ["MAX_FILTER_NODES"]),
    ({**ROW, "filters": ["Or", [["Not", ["n", "Eq", i]] for i in range(600)]]}, InvalidFilter, ["MAX_FILTER_NODES"]),
    ({**ROW, "filters": deep("And", 33, ["n", "Eq", 1])}, InvalidFilter, ["MAX_FILTER_DEPTH", "32"]),
    ({**ROW, "filters": deep("Not", 10_000, ["n", "Eq", 1])}, InvalidFilter, ["MAX_FILTER_DEPTH"]),
    ({**ROW, "filters": deep("And", 10_000, ["n", "Eq", 1])}, InvalidFilter, ["MAX_FILTER_DEPTH"]),
    ({**ROW, "filters": deep("Or", 10_000, ["n", "Eq", 1])}, InvalidFilter, ["MAX_FILTER_DEPTH"]),
    ({**ROW, "filters": ["n", "In", list(range(10_001))]}, InvalidFilter, ["MAX_FILTER_LIST_ITEMS", "10,000"]),
    ({**ROW, "filters": ["ls", "ContainsAny", ["x"] * 10_001]}, InvalidFilter, ["MAX_FILTER_LIST_ITEMS"]),
    ({**ROW, "filters": ["n", "In", nested_list(10_000)]}, InvalidFilter, ["MAX_VALUE_DEPTH"]),
    ({**ROW, "filters": ["ls", "Eq", nested_list(33)]}, InvalidFilter, ["MAX_VALUE_DEPTH", "32"]),
    ({**ROW, "filters": ["s", "Regex", "a" * 100_000]}, InvalidFilter, ["MAX_PATTERN_CHARS", "100,000", "4,096"]),
    ({**ROW, "filters": ["s", "Glob", "a" * 4097]}, InvalidFilter, ["MAX_PATTERN_CHARS", "4,097"]),
    ({**ROW, "filters": ["s", "NotGlob", "*" * 4097]}, InvalidFilter, ["MAX_PATTERN_CHARS", "NotGlob"]),
    ({**ROW, "filters": ["s", "IGlob", "a" * 4097]}, InvalidFilter, ["MAX_PATTERN_CHARS", "IGlob"]),
    ({**ROW, "filters": ["ls", "NotIGlob", "a" * 4097]}, InvalidFilter, ["MAX_PATTERN_CHARS", "NotIGlob"]),
    ({**ROW, "filters": ["s", "Regex", "a{1000}{1000}"]}, InvalidFilter, ["invalid regex", "size limit"]),
    ({**ROW, "filters": ["s", "Regex", r"\w{500}"]}, InvalidFilter, ["size limit"]),
    ({**ROW, "filters": ["t", "ContainsAllTokens", "fox " * 5000]}, InvalidFilter, ["MAX_QUERY_TEXT_CHARS", "20,000"]),
    ({**ROW, "filters": ["t", "ContainsAnyToken", ["fox"] * 6000]}, InvalidFilter, ["MAX_QUERY_TEXT_CHARS"]),
    ({"rank_by": ["t", "BM25", "fox " * 5000]}, InvalidQuery, ["MAX_QUERY_TEXT_CHARS", "20,000"]),
    ({"rank_by": ["t", "BM25", ["fox"] * 6000]}, InvalidQuery, ["MAX_QUERY_TEXT_CHARS"]),
    ({"rank_by": deep_rank("Sum", 33)}, InvalidQuery, ["MAX_FILTER_DEPTH"]),
    ({"rank_by": deep_rank("Sum", 10_000)}, InvalidQuery, ["MAX_FILTER_DEPTH"]),
    ({"rank_by": deep_rank("Max", 10_000)}, InvalidQuery, ["MAX_FILTER_DEPTH"]),
    ({"rank_by": deep_rank("Product", 10_000)}, InvalidQuery, ["MAX_FILTER_DEPTH"]),
    ({"rank_by": ["Sum", [["t", "BM25", "fox"]] * 1025]}, InvalidQuery, ["MAX_FILTER_NODES"]),
    ({"rank_by": ["Sum", [deep("Not", 10_000, ["n", "Eq", 1])]]}, InvalidQuery, ["MAX_FILTER_DEPTH"]),
    ({"rank_by": ["id", "asc"], "top_k": 10_001}, InvalidQuery, ["top_k", "MAX_TOP_K", "10,000", "10001"]),
    ({"rank_by": ["id", "asc"], "limit": 10_001}, InvalidQuery, ["limit", "MAX_TOP_K"]),
    ({"rank_by": ["id", "asc"], "limit": {"total": 10**9}}, InvalidQuery, ["limit.total", "MAX_TOP_K"]),
    ({"rank_by": ["id", "asc"], "offset": 10**7}, InvalidQuery, ["offset", "MAX_OFFSET"]),
    ({"queries": [ROW] * 17}, InvalidQuery, ["MAX_MULTI_QUERIES", "16", "17"]),
    ({"rank_by": ["v", "ANN", [0.1] * 10_753]}, InvalidQuery, ["MAX_VECTOR_DIMS", "10,753", "10,752"]),
    ({"rank_by": ["v", "ANN", base64.b64encode(b"\0" * 4 * 20_000).decode()]}, InvalidQuery, ["MAX_VECTOR_DIMS"]),
    (
        {**ROW, "include_attributes": ["n"] * 257},
        InvalidQuery,
        ["include_attributes", "MAX_ATTRIBUTES_PER_NAMESPACE", "257"],
    ),
    ({**ROW, "exclude_attributes": ["n"] * 257}, InvalidQuery, ["MAX_ATTRIBUTES_PER_NAMESPACE"]),
    ({**ROW, "include_attributes": nested_list(10_000)}, InvalidQuery, ["include_attributes"]),
    (
        {"aggregate_by": {f"c{i}": ["Count"] for i in range(257)}},
        InvalidQuery,
        ["aggregate_by", "MAX_ATTRIBUTES_PER_NAMESPACE"],
    ),
    # datetimes out of range are bad input (400), never an OverflowError
    ({**ROW, "filters": ["d", "Eq", 1e20]}, InvalidFilter, ["RFC 3339"]),
    ({**ROW, "filters": ["d", "Lt", "99999-01-01"]}, InvalidFilter, ["not an RFC 3339 datetime"]),
    ({**ROW, "filters": ["d", "In", ["2020-01-01", -1e300]]}, InvalidFilter, ["RFC 3339"]),
]


@pytest.mark.parametrize("body,exc,needles", REFUSED, ids=[f"case{i}" for i in range(len(REFUSED))])
def test_limit_refused_naming_it(ns, body, exc, needles):
    t0 = time.monotonic()
    with pytest.raises(exc) as ei:
        engine.run(ns, body)
    assert time.monotonic() - t0 < 30  # refused up front, not after the work
    assert ei.value.status == (422 if isinstance(ei.value, UnprocessableBody) else 400)  # 422: a wrong JSON type
    for n in needles:
        assert n in ei.value.message, (n, ei.value.message)
    assert len(ei.value.message) < 600  # the error names the limit, it does not echo the body


def test_limits_at_the_edge_are_accepted(ns):
    """Exactly at each limit is fine."""
    assert ids(ns, {**ROW, "filters": deep("Not", 32, ["n", "Lt", 3])}) == [0, 1, 2]  # 32 Nots: even
    assert ids(ns, {**ROW, "filters": ["Or", [["n", "Eq", i] for i in range(1022)] + [["n", "Eq", -1]]]}) == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert ids(ns, {**ROW, "filters": ["n", "In", list(range(10_000))]}) == [0, 1, 2, 3, 4]
    assert ids(ns, {**ROW, "filters": ["s", "Regex", "^s1" + "x?" * 2046]}) == [1, 10, 11, 12, 13]
    assert ids(ns, {**ROW, "filters": ["s", "Glob", "s1" + "*" * 4094]}) == [1, 10, 11, 12, 13]
    assert len(ids(ns, {"rank_by": ["t", "BM25", ("fox " * 4096)[:16_384]], "top_k": 3})) == 3
    assert len(ids(ns, {"rank_by": ["id", "asc"], "top_k": 10_000})) == 400
    assert ids(ns, {"rank_by": ["id", "asc"], "top_k": 1, "offset": 1_000_000}) == []
    assert len(engine.run(ns, {"queries": [ROW] * 16})["results"]) == 16
    assert len(ids(ns, {"rank_by": deep_rank("Sum", 32), "top_k": 2})) == 2


def test_datetimes_out_of_range_are_refused(ns):
    """A datetime filter value outside what a write accepts (years 1..9999) is refused, not
    compared: `["ts","Lt",2**62]` is almost always a unit mistake (ns or us for ms), and as a
    delete_by_filter it would delete every row."""
    from puffer_cli.schema.types import DATETIME_MS

    for v in (
        2**62,
        -(2**62),
        2**64,
        DATETIME_MS[1] + 1,
        DATETIME_MS[0] - 1,
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00+01:00",
    ):
        for f in (["d", "Eq", v], ["d", "Lt", v], ["d", "In", [0, v]]):
            with pytest.raises(InvalidFilter, match="out of the datetime range"):
                engine.run(ns, {**ROW, "filters": f})
    n_all = len(ids(ns, {"rank_by": ["id", "asc"], "top_k": 1000}))
    assert len(ids(ns, {"rank_by": ["id", "asc"], "top_k": 1000, "filters": ["d", "Lte", DATETIME_MS[1]]})) == n_all
    assert len(ids(ns, {"rank_by": ["id", "asc"], "top_k": 1000, "filters": ["d", "Gte", DATETIME_MS[0]]})) == n_all


def test_large_legal_or_of_eq_is_fast_and_exact(ns):
    """1,000 clauses: one is_in, same answer as the In form (and as And of NotEq's complement)."""
    wanted = list(range(0, 2000, 3))[:1000]
    body = {"rank_by": ["id", "asc"], "top_k": 1000}
    with limits.deadline(30):  # generous: well under a second in practice
        got = ids(ns, {**body, "filters": ["Or", [["n", "Eq", i] for i in wanted]]})
        assert got == ids(ns, {**body, "filters": ["n", "In", wanted]}) == [i for i in wanted if i < 400]
        neg = ids(ns, {**body, "filters": ["And", [["n", "NotEq", i] for i in wanted]]})
        assert neg == [i for i in range(400) if i not in set(wanted)]
        # strings, arrays, mixed with other clauses
        got = ids(ns, {**body, "filters": ["Or", [["s", "Eq", f"s{i}"] for i in range(3, 1000)] + [["n", "Lt", 2]]]})
        assert got == sorted({0, 1} | {i for i in range(400) if i % 50 >= 3})
        got = ids(ns, {**body, "filters": ["Or", [["ls", "Eq", f"s{i}"] for i in (3, 4)] * 400]})
        assert got == [i for i in range(400) if i % 7 in (3, 4) or i % 11 in (3, 4)]


def test_4000_clause_filter_does_not_crash_the_process(tmp_path):
    """The measured crash: a 4,000-clause Or/And segfaulted the process in polars."""
    script = (
        "import puffer_cli\n"
        "from puffer_cli.search import engine\n"
        "from puffer_cli.errors import InvalidFilter\n"
        f"ns = puffer_cli.connect({str(tmp_path / 'store')!r}).open_namespace('x')\n"
        "ns.write({'upsert_rows': [{'id': i, 'n': i} for i in range(100)]})\n"
        "for k in ('Or', 'And'):\n"
        "    try:\n"
        "        engine.run(ns, {'rank_by': ['id', 'asc'], 'filters': [k, [['n', 'Eq', i] for i in range(4000)]]})\n"
        "    except InvalidFilter as e:\n"
        "        print('refused', k, 'MAX_FILTER_NODES' in e.message)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:2] == ["refused Or True", "refused And True"]


# ----------------------------------------------------------------------------- time budget
def test_budget_exceeded_is_408(ns):
    bodies = [
        ROW,
        {**ROW, "filters": ["n", "Lt", 100]},
        {"rank_by": ["v", "ANN", VEC], "top_k": 3},
        {"rank_by": ["t", "BM25", "fox"], "top_k": 3},
        {"aggregate_by": {"c": ["Count"]}},
        {"queries": [ROW, {"rank_by": ["v", "kNN", VEC]}]},
    ]
    for body in bodies:
        with limits.deadline(0.0), pytest.raises(BudgetExceeded) as ei:
            engine.run(ns, body)
        assert ei.value.status == 408 and "time budget" in ei.value.message
        with limits.deadline():  # the default budget: answers
            engine.run(ns, body)


class _Clock:
    """limits' clock, advancing one second per reading."""

    def __init__(self):
        self.t = 0.0
        self.reads = 0

    def monotonic(self):
        self.t += 1.0
        self.reads += 1
        return self.t


@pytest.mark.parametrize(
    "body",
    [
        {**ROW, "filters": ["s", "Glob", "s1*"]},
        {"rank_by": ["v", "ANN", VEC], "top_k": 3, "filters": ["n", "Gt", 10]},
        {"rank_by": ["t", "BM25", "fox dog"], "top_k": 3},
        {"queries": [ROW] * 4},
    ],
)
def test_budget_checked_during_the_query(ns, monkeypatch, body):
    """A budget running out mid-query stops it: the query checks the clock between
    stages, not only on entry."""
    engine.run(ns, body)  # warm the caches (tail, compiled filter) so both runs below do the same work
    clock = _Clock()
    monkeypatch.setattr(limits, "time", clock)
    with limits.deadline(1e9):
        engine.run(ns, body)
    checks = clock.reads - 1  # readings by check_deadline while the query ran
    assert checks >= 3
    clock.t = 0.0
    with limits.deadline(checks - 0.5), pytest.raises(BudgetExceeded):  # runs out at the last check
        engine.run(ns, body)


def test_filter_evaluated_in_slices_under_the_budget(monkeypatch):
    """One polars call cannot be interrupted: a large frame is filtered slice by slice."""
    df = pl.DataFrame({"s": [f"row {i}" for i in range(20_000)]})
    expr = F.compile_filter(["s", "Regex", "9$"], {"s": {"type": "string", "regex": True}}, columns=df.columns)
    monkeypatch.setattr(F, "FILTER_SLICE_BYTES", 1)
    monkeypatch.setattr(F, "FILTER_SLICE_MIN_ROWS", 1000)
    m = F.filter_mask(df, expr)
    assert m.sum() == 2000 and len(m) == 20_000
    clock = _Clock()
    monkeypatch.setattr(limits, "time", clock)
    with limits.deadline(5.5), pytest.raises(BudgetExceeded):
        F.filter_mask(df, expr)
    assert clock.reads == 7  # the deadline's start, then 6 slices checked (the 6th over budget)


# ----------------------------------------------------------------------------- Or-of-Eq fusion
def _literal(et):
    bad = {"string": 1, "uuid": 2, "int": "x", "uint": True, "float": "1", "bool": 0, "datetime": 1.5}
    return st.one_of(TF.lit(et), st.just(bad[et]), st.none(), st.just(2**1100) if et == "float" else st.nothing())


@st.composite
def eq_group(draw):
    """An Or of Eq / And of NotEq over a few attributes (what the compiler fuses), plus
    odd members: lists (array equality), nulls, wrong types, other operators."""
    kind = draw(st.sampled_from(["Or", "And"]))
    op = "Eq" if kind == "Or" else "NotEq"
    attrs = draw(
        st.lists(
            st.sampled_from(["s", "i", "u", "f", "b", "d", "uu", "ls", "li", "lf", "ld", "nope", "ghost", "v"]),
            min_size=1,
            max_size=3,
        )
    )
    subs = []
    for _ in range(draw(st.integers(0, 12))):
        a = draw(st.sampled_from(attrs))
        t = TF.TYPES.get(a, "int")
        et = t.removeprefix("[]") if not t.startswith("[2]") else "int"
        r = draw(st.integers(0, 9))
        if r == 0:
            subs.append([a, draw(st.sampled_from(["Lt", "In"])), [1] if r else 1])
        elif r == 1 and t.startswith("[]"):
            subs.append([a, op, draw(st.lists(TF.lit(et), max_size=2))])
        else:
            subs.append([a, op, draw(_literal(et))])
    return [kind, subs]


def _outcome(f, df, known):
    try:
        expr = F.compile_filter(f, TF.SCHEMA, columns=df.columns if known else None)
    except InvalidFilter as e:
        return ("error", e.message)
    return ("ok", df.filter(expr)["id"].to_list())


def _fuzz(n: int):
    return settings(
        max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
    )


def _check_fused(mp, rows, f, known):
    df = TF.make_frame(rows)
    fused = _outcome(f, df, known)
    with mp.context() as m:
        m.setattr(FC, "_FUSE_MIN", 10**9)  # the per-clause compilation
        m.setattr(FC, "_CHAIN_MAX", 10**9)
        plain = _outcome(f, df, known)
    assert fused == plain, f
    if fused[0] == "ok":
        assert fused[1] == [i for i, r in enumerate(rows) if TF.ref_eval(TF.ref_row(r), f)], f


@_fuzz(20)
@given(rows=TF.frames, f=eq_group(), known=st.booleans())
def test_fused_eq_equals_per_clause(monkeypatch_module, rows, f, known):
    _check_fused(monkeypatch_module, rows, f, known)


@pytest.mark.slow
@_fuzz(1000)
@given(rows=TF.frames, f=eq_group(), known=st.booleans())
def test_fused_eq_equals_per_clause_many(monkeypatch_module, rows, f, known):
    _check_fused(monkeypatch_module, rows, f, known)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.setattr(F, "_COMPILED_MAX", 0)  # no compiled-filter cache: each form is compiled afresh
    F._COMPILED.clear()
    yield mp
    mp.undo()


# ----------------------------------------------------------------------------- fuzz
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.sampled_from(["And", "Or", "Not", "Eq", "In", "Regex", "s", "i", "ls", "d", "t"]),
)
_JSON = st.recursive(
    _SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=3), c, max_size=2), max_leaves=12
)


@st.composite
def hostile_filter(draw):
    leaf = st.one_of(
        TF.leaf(),
        _JSON,
        st.tuples(st.sampled_from(sorted(TF.TYPES)), st.sampled_from(parse.OPERATORS), _JSON).map(list),
    )
    shape = draw(st.integers(0, 3))
    if shape == 0:  # deep
        depth = draw(st.sampled_from([0, 1, 2, 31, 32, 33, 500, 3000]))
        return deep(draw(st.sampled_from(["And", "Or", "Not"])), depth, draw(leaf))
    if shape == 1:  # wide
        n = draw(st.sampled_from([0, 1, 2, 5, 300, 1023, 1024, 3000]))
        one = draw(leaf)
        return [draw(st.sampled_from(["And", "Or"])), [one] * n]
    if shape == 2:  # long values
        attr = draw(st.sampled_from(["s", "ls", "t", "i"]))
        op = draw(st.sampled_from(["In", "Regex", "Glob", "ContainsAnyToken", "Eq"]))
        n = draw(st.sampled_from([0, 10, 4096, 4097, 10_000, 10_001, 20_000]))
        return [attr, op, "a" * n if op != "In" else ["a"] * n]
    return draw(
        st.recursive(
            leaf,
            lambda c: st.one_of(
                st.tuples(st.sampled_from(["And", "Or"]), st.lists(c, max_size=4)).map(list),
                c.map(lambda x: ["Not", x]),
            ),
            max_leaves=20,
        )
    )


def _check_hostile_filter(f, rows):
    df = TF.make_frame(rows)
    try:
        expr = F.compile_filter(f, TF.SCHEMA, columns=df.columns)
        F.filter_mask(df, expr)
    except PufferError as e:
        assert e.status == 400 and len(e.message) < 2000


def _check_hostile_bodies(f):
    ns = _fuzz_ns()
    for body in ({**ROW, "filters": f}, {"rank_by": ["Sum", [["t", "BM25", "fox"], f]]}):
        try:
            engine.run(ns, body)
        except PufferError as e:
            # 400; or 422 when a field has the wrong JSON type (turbopuffer's rule, docs/http.md)
            assert e.status == 400 or (e.status == 422 and "invalid type" in e.message), e


@_fuzz(15)
@given(f=hostile_filter(), rows=TF.frames)
def test_hostile_filters_raise_only_puffer_errors(f, rows):
    _check_hostile_filter(f, rows)


@_fuzz(10)
@given(f=hostile_filter())
def test_hostile_query_bodies_raise_only_puffer_errors(f):
    _check_hostile_bodies(f)


@pytest.mark.slow
@_fuzz(600)
@given(f=hostile_filter(), rows=TF.frames)
def test_hostile_filters_raise_only_puffer_errors_many(f, rows):
    _check_hostile_filter(f, rows)


@pytest.mark.slow
@_fuzz(300)
@given(f=hostile_filter())
def test_hostile_query_bodies_raise_only_puffer_errors_many(f):
    _check_hostile_bodies(f)


_FUZZ: dict = {}


def _fuzz_ns():
    if "ns" not in _FUZZ:
        db = puffer_cli.connect(f"memory://{uuid.uuid4().hex}")
        ns = db.open_namespace("fuzz")
        ns.write({"upsert_rows": _rows(0, 30), "schema": SCHEMA})
        _FUZZ["ns"] = ns
    return _FUZZ["ns"]


def test_unprintable_stored_datetimes_do_not_crash_rows():
    """A datetime beyond what RFC 3339 text can hold (polars panics printing it) comes
    out null, never a PanicException/500; representable ones are unchanged."""
    from puffer_cli.query import parse as Q

    dt = pl.Datetime("ms", "UTC")
    docs = pl.DataFrame(
        {
            "id": pl.Series([1, 2, 3], dtype=pl.UInt64),
            "d": pl.Series([2**62, 0, -(2**62)], dtype=pl.Int64).cast(dt),
            "ld": pl.Series([[2**62, 0], [], None], dtype=pl.List(pl.Int64)).cast(pl.List(dt)),
        }
    )
    schema = {"id": {"type": "uint"}, "d": {"type": "datetime"}, "ld": {"type": "[]datetime"}}
    q = Q.parse_query({"rank_by": ["id", "asc"], "include_attributes": True})
    rows = engine.shape_rows(q, engine.execute(q, docs, schema, None))
    assert rows == [
        {"id": 1, "ld": [None, "1970-01-01T00:00:00.000Z"]},
        {"id": 2, "d": "1970-01-01T00:00:00.000Z", "ld": []},
        {"id": 3},
    ]


def test_unsupported_turbopuffer_query_features_are_refused_by_name():
    from puffer_cli.errors import InvalidQuery
    from puffer_cli.query import parse as Q

    for body, name in [
        ({"rank_by": ["id", "asc"], "compute_attributes": {"h": ["t", "Highlight", "x"]}}, "compute_attributes.h"),
        ({"rank_by": ["id", "asc"], "compute_attributes": {"e": ["Embed", "x"]}}, "compute_attributes.e"),
        ({"rank_by": ["Decay", ["t", "BM25", "x"], {}]}, "midpoint"),
        ({"rank_by": ["Dist", ["n", "Attribute"], 1]}, r"rank_by\[1\]"),
    ]:
        with pytest.raises(InvalidQuery, match=name):
            Q.parse_query(body)
