"""Filter semantics per operator x attribute type x value form, kept equal to the table in
docs/http.md "Filters": the ``types`` column is recomputed from the compiler, every other cell
has cases below (``CASES``: filter -> matching ids or the error it raises), and the
cross-type rules (exact int/float comparison, datetime strings vs milliseconds, array
operators as "some element") are properties checked with hypothesis.

turbopuffer's documented rules these follow: turbopuffer.com/docs/schema (types; datetimes are
ISO 8601 with optional time and zone; full-text attributes are not filterable by default), the
official client's ``Filter`` union (value shapes) and ``AttributeSchemaConfig`` (``regex`` /
``glob`` / ``fuzzy`` enable those filters). The rest is puffer's choice, stated in the docs."""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path

import httpx
import polars as pl
import pytest
import turbopuffer
from hypothesis import given, settings
from hypothesis import strategies as st
from puffer_cli import filters as F
from puffer_cli.errors import InvalidFilter
from puffer_cli.filters.lower import polars_dtype
from puffer_cli.filters.parse import CONNECTIVES, OPERATORS
from puffer_cli.schema.spec import normalize_schema
from puffer_cli.server.app import ServeConfig

from .serve_proc import ThreadServer

DOC = Path(__file__).resolve().parents[1] / "docs" / "http.md"
SCALARS = ("string", "int", "uint", "float", "uuid", "datetime", "bool")
ORDERED = tuple(t for t in SCALARS if t != "bool")
GROUPS = {
    "S": SCALARS,
    "O": ORDERED,
    "[]S": tuple("[]" + t for t in SCALARS),
    "[]O": tuple("[]" + t for t in ORDERED),
}
U1, U2 = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"
LIT = {"string": "a", "int": 1, "uint": 1, "float": 1.5, "uuid": U1, "datetime": "2024-01-01", "bool": True}
FUZZY = {"max_edit_distance": [{"distance": 1, "min_query_chars": 6}]}


def doc_rows() -> dict[str, tuple[set[str], list[str]]]:
    """docs/http.md "Filters" table: operator -> (types, cells)."""
    section = DOC.read_text().split("\n## Filters\n", 1)[1].split("\n## ", 1)[0]
    out: dict[str, tuple[set[str], list[str]]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        types: set[str] = set()
        for tok in re.sub(r"\(.*?\)", "", cells[1]).split(","):
            if tok.strip():
                types.update(GROUPS.get(tok.strip(), (tok.strip(),)))
        for op in re.findall(r"`(\w+)`", cells[0]):
            assert op not in out, f"{op} has two rows"
            out[op] = (types, cells)
    return out


def test_every_operator_has_one_row():
    assert set(doc_rows()) == set(OPERATORS) | set(CONNECTIVES)


def _probe(op: str, t: str):
    et = t.removeprefix("[]")
    spec: dict = {"type": t}
    if et == "string":
        spec.update(regex=True, fuzzy=True, full_text_search=True, filterable=True)
    if op in ("In", "NotIn", "ContainsAny", "NotContainsAny"):
        v = [LIT[et]]
    elif op in ("Glob", "NotGlob", "IGlob", "NotIGlob", "Regex"):
        v = "a*"
    elif op in ("Fuzzy", "ContainsAllTokens", "ContainsAnyToken", "ContainsTokenSequence"):
        v = "apples"
    else:
        v = LIT[et]
    f = ["x", op, v, FUZZY] if op == "Fuzzy" else ["x", op, v]
    return f, {"x": spec}


@pytest.mark.parametrize("op", OPERATORS)
def test_types_column_is_what_the_compiler_accepts(op):
    accepted = set()
    for t in SCALARS + GROUPS["[]S"]:
        f, schema = _probe(op, t)
        try:
            F.validate_filter(f, schema)
            accepted.add(t)
        except InvalidFilter:
            pass
    assert accepted == doc_rows()[op][0]


# --------------------------------------------------------------------------- the cells

SCHEMA_DECLARED = {
    "s": {"type": "string", "regex": True},
    "i": {"type": "int"},
    "f": {"type": "float"},
    "b": {"type": "bool"},
    "d": {"type": "datetime"},
    "u": {"type": "uuid"},
    "ls": {"type": "[]string", "regex": True},
    "li": {"type": "[]int"},
    "lb": {"type": "[]bool"},
    "fz": {"type": "string", "fuzzy": True},
    "t": {"type": "string", "full_text_search": True},
    "plain": {"type": "string"},
    "noglob": {"type": "string", "glob": False},
}
SCHEMA = normalize_schema(SCHEMA_DECLARED)  # as a namespace stores it (full-text: filterable false)
ROWS = {  # ids 0, 1, 2: values, other values / empty arrays, missing
    "s": ["apple", "banana", None],
    "i": [1, 5, None],
    "f": [1.5, 2.0, None],
    "b": [True, False, None],
    "d": [0, 86_400_000, None],
    "u": [U1, U2, None],
    "ls": [["a", "b"], [], None],
    "li": [[1, 5], [], None],
    "lb": [[True], [], None],
    "fz": ["pineapple", "banana", None],
    "t": ["hello world", "quick fox", None],
}


def frame() -> pl.DataFrame:
    cols = [pl.Series("id", [0, 1, 2], dtype=pl.UInt64)]
    for name, vals in ROWS.items():
        t = SCHEMA[name]["type"]
        s = pl.Series(name, vals, dtype=pl.Int64 if t == "datetime" else polars_dtype(t))
        cols.append(s.cast(pl.Datetime("ms", "UTC")) if t == "datetime" else s)
    return pl.DataFrame(cols)


def ids(f, schema=SCHEMA, df=None) -> list[int]:
    df = frame() if df is None else df
    return df.filter(F.compile_filter(f, schema))["id"].to_list()


# (doc row, filter, matching ids | error substring)
CASES = [
    ("Eq", ["s", "Eq", "apple"], [0]),
    ("Eq", ["ls", "Eq", "a"], [0]),
    ("Eq", ["ls", "Eq", ["a", "b"]], [0]),
    ("Eq", ["ls", "Eq", ["b", "a"]], []),
    ("Eq", ["ls", "Eq", []], [1]),
    ("Eq", ["s", "Eq", None], [2]),
    ("Eq", ["ls", "Eq", None], [2]),
    ("Eq", ["s", "NotEq", None], [0, 1]),
    ("Eq", ["s", "NotEq", "apple"], [1, 2]),
    ("Eq", ["f", "Eq", 2], [1]),
    ("Eq", ["u", "Eq", U1.upper()], [0]),
    ("Eq", ["s", "Eq", ["apple"]], "needs a string"),
    ("Eq", ["i", "Eq", "1"], "needs a number"),
    ("In", ["ls", "In", ["b", "z"]], [0]),
    ("In", ["s", "In", ["apple", None]], [0, 2]),
    ("In", ["ls", "In", [None]], [2]),
    ("In", ["s", "NotIn", ["apple"]], [1, 2]),
    ("In", ["s", "In", []], []),
    ("In", ["s", "In", "apple"], "needs a list"),
    ("In", ["ls", "In", "b"], [0]),  # a scalar on an array attribute: a one-element list (turbopuffer)
    ("In", ["ls", "NotIn", "b"], [1, 2]),
    ("In", ["s", "In", [["apple"]]], "list of scalar"),
    ("Lt", ["i", "Lt", 5], [0]),
    ("Lt", ["i", "Gte", 1], [0, 1]),
    ("Lt", ["s", "Gt", "apple"], [1]),
    ("Lt", ["d", "Lt", "1970-01-02"], [0]),
    ("Lt", ["d", "Lte", 86_400_000], [0, 1]),
    ("Lt", ["u", "Gt", U1], [1]),
    ("Lt", ["ls", "Lt", "a"], "use AnyLt"),
    ("Lt", ["b", "Lt", True], "no order"),
    ("Lt", ["i", "Lt", None], "got null"),
    ("Lt", ["i", "Lt", [1]], "use In"),
    ("AnyLt", ["li", "AnyLt", 2], [0]),
    ("AnyLt", ["li", "AnyGte", 5], [0]),
    ("AnyLt", ["li", "AnyGt", 5], []),
    ("AnyLt", ["i", "AnyLt", 2], "needs an array attribute"),
    ("AnyLt", ["lb", "AnyLt", True], "no order"),
    ("Contains", ["ls", "Contains", "a"], [0]),
    ("Contains", ["ls", "NotContains", "a"], [1, 2]),
    ("Contains", ["lb", "Contains", False], []),
    ("Contains", ["s", "Contains", "a"], "use Eq"),
    ("Contains", ["ls", "Contains", ["a"]], "use ContainsAny"),
    ("ContainsAny", ["ls", "ContainsAny", ["z", "b"]], [0]),
    ("ContainsAny", ["ls", "ContainsAny", [None]], [2]),
    ("ContainsAny", ["ls", "NotContainsAny", ["a"]], [1, 2]),
    ("ContainsAny", ["s", "ContainsAny", ["a"]], "use In"),
    ("ContainsAny", ["ls", "ContainsAny", "a"], "needs a list"),
    ("Glob", ["s", "Glob", "app*"], [0]),
    ("Glob", ["ls", "Glob", "b"], [0]),
    ("Glob", ["s", "NotGlob", "app*"], [1, 2]),
    ("Glob", ["s", "IGlob", "APP*"], [0]),
    ("Glob", ["plain", "Glob", "*"], []),
    ("Glob", ["i", "Glob", "1"], "needs a string attribute"),
    ("Glob", ["noglob", "Glob", "*"], '"glob": false'),
    ("Glob", ["noglob", "NotIGlob", "*"], '"glob": false'),
    ("Regex", ["s", "Regex", "an+a"], [1]),
    ("Regex", ["ls", "Regex", "^b$"], [0]),
    ("Regex", ["plain", "Regex", "a"], 'needs "regex": true'),
    ("Regex", ["s", "Regex", "a("], "invalid regex"),
    ("Fuzzy", ["fz", "Fuzzy", "pineaple", FUZZY], [0]),
    ("Fuzzy", ["fz", "Fuzzy", "pinapl", FUZZY], []),
    ("Fuzzy", ["s", "Fuzzy", "pineaple", FUZZY], 'needs "fuzzy": true'),
    ("Fuzzy", ["fz", "Fuzzy", "pineaple", {"max_edit_distance": [{"distance": 9, "min_query_chars": 30}]}], "4"),
    ("ContainsAllTokens", ["t", "ContainsAllTokens", "world hello"], [0]),
    ("ContainsAllTokens", ["t", "ContainsAnyToken", "fox hello"], [0, 1]),
    ("ContainsAllTokens", ["t", "ContainsTokenSequence", "world hello"], []),
    ("ContainsAllTokens", ["t", "ContainsTokenSequence", "hello world"], [0]),
    ("ContainsAllTokens", ["s", "ContainsAnyToken", "apple"], "full-text search"),
    ("ContainsAllTokens", ["t", "Eq", "hello world"], "not filterable"),
    ("And", ["Not", ["s", "Eq", "apple"]], [1, 2]),
    ("And", ["Not", ["s", "NotEq", "apple"]], [0]),
    ("And", ["And", []], [0, 1, 2]),
    ("And", ["Or", []], []),
    ("And", ["And", 5], "needs a list of filters"),
    ("And", ["ghost", "NotEq", "x"], [0, 1, 2]),  # not in the schema: missing everywhere
    ("And", ["ghost", "Eq", None], [0, 1, 2]),
]


@pytest.mark.parametrize("row,f,want", CASES, ids=[f"{r}:{c[1]!r}" for r, c, _ in CASES])
def test_cell(row, f, want):
    assert row in doc_rows()
    if isinstance(want, str):
        with pytest.raises(InvalidFilter) as e:
            ids(f)
        assert e.value.status == 400
        assert want in e.value.message
    else:
        assert ids(f) == want


def test_every_row_has_cases():
    first_ops = {cells[0].split("`")[1] for _, cells in doc_rows().values()}
    assert {r for r, _, _ in CASES} == first_ops


# --------------------------------------------------------------------------- properties

INT_RANGE = {"int": (-(2**63), 2**63 - 1), "uint": (0, 2**64 - 1)}
PY_CMP = {
    "Eq": lambda a, b: a == b,
    "Lt": lambda a, b: a < b,
    "Lte": lambda a, b: a <= b,
    "Gt": lambda a, b: a > b,
    "Gte": lambda a, b: a >= b,
}


def _literal():
    return st.one_of(
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.sampled_from([0.5, -0.5, 2.0**63, 2.0**64, -(2.0**63), 1e300, math.inf, -math.inf]),
    )


@settings(max_examples=150, deadline=None)
@given(
    t=st.sampled_from(["int", "uint"]),
    data=st.data(),
    v=_literal(),
    op=st.sampled_from(list(PY_CMP)),
)
def test_integer_attributes_compare_exactly_with_any_number(t, data, v, op):
    lo, hi = INT_RANGE[t]
    xs = data.draw(st.lists(st.one_of(st.none(), st.integers(lo, hi), st.sampled_from([lo, hi, 0])), max_size=8))
    df = pl.DataFrame([pl.Series("id", range(len(xs)), dtype=pl.UInt64), pl.Series("x", xs, dtype=polars_dtype(t))])
    got = ids(["x", op, v], {"x": {"type": t}}, df)
    assert got == [i for i, x in enumerate(xs) if x is not None and PY_CMP[op](x, v)]  # Python: exact int/float
    neg = ids(["x", "NotEq", v], {"x": {"type": t}}, df)
    assert neg == [i for i, x in enumerate(xs) if x is None or x != v]


@settings(max_examples=100, deadline=None)
@given(
    ms=st.lists(st.one_of(st.none(), st.integers(-(10**13), 10**13)), max_size=6),
    at=st.integers(-(10**13), 10**13),
    hours=st.integers(-12, 12),
    form=st.sampled_from(["seconds", "minutes", "whole-hour offset"]),
    op=st.sampled_from(list(PY_CMP)),
)
def test_datetime_strings_and_milliseconds_agree(ms, at, hours, form, op):
    tz = dt.timezone(dt.timedelta(hours=hours))
    when = (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=at)).astimezone(tz)
    if form == "seconds":
        s, exact = when.replace(microsecond=0).isoformat(), at - when.microsecond // 1000
    elif form == "minutes":
        s = when.replace(second=0, microsecond=0).isoformat(timespec="minutes")
        exact = at - (when.second * 1000 + when.microsecond // 1000)
    else:
        s = when.replace(microsecond=0).isoformat()[:-3]  # "+05:00" -> "+05"
        exact = at - when.microsecond // 1000
    schema = {"x": {"type": "datetime"}}
    cols = [pl.Series("id", range(len(ms)), dtype=pl.UInt64), pl.Series("x", ms, dtype=pl.Int64)]
    df = pl.DataFrame(cols).with_columns(pl.col("x").cast(pl.Datetime("ms", "UTC")))
    assert ids(["x", op, s], schema, df) == ids(["x", op, exact], schema, df)
    assert ids(["x", op, exact], schema, df) == [i for i, x in enumerate(ms) if x is not None and PY_CMP[op](x, exact)]


ARRAY_OPS = {
    "Contains": lambda xs, v: v in xs,
    "Eq": lambda xs, v: v in xs,
    "AnyLt": lambda xs, v: any(x < v for x in xs),
    "AnyLte": lambda xs, v: any(x <= v for x in xs),
    "AnyGt": lambda xs, v: any(x > v for x in xs),
    "AnyGte": lambda xs, v: any(x >= v for x in xs),
}
LIST_OPS = {
    "In": lambda xs, vs: any(x in vs for x in xs),
    "ContainsAny": lambda xs, vs: any(x in vs for x in xs),
    "Eq": lambda xs, vs: xs == vs,
}
NEGATED = {"Contains": "NotContains", "Eq": "NotEq", "In": "NotIn", "ContainsAny": "NotContainsAny"}


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.one_of(st.none(), st.lists(st.integers(-3, 3), max_size=4)), max_size=6),
    v=st.integers(-4, 4),
    vs=st.lists(st.integers(-4, 4), max_size=3),
    op=st.sampled_from(list(ARRAY_OPS) + [f"list:{k}" for k in LIST_OPS]),
)
def test_array_operators_are_some_element(rows, v, vs, op):
    df = pl.DataFrame(
        [pl.Series("id", range(len(rows)), dtype=pl.UInt64), pl.Series("x", rows, dtype=pl.List(pl.Int64))]
    )
    schema = {"x": {"type": "[]int"}}
    name, value, ref = (op[5:], vs, LIST_OPS[op[5:]]) if op.startswith("list:") else (op, v, ARRAY_OPS[op])
    want = [i for i, xs in enumerate(rows) if xs is not None and ref(xs, value)]
    assert ids(["x", name, value], schema, df) == want
    if name in NEGATED:  # the Not* form is the exact complement: a missing array matches it
        assert ids(["x", NEGATED[name], value], schema, df) == [i for i in range(len(rows)) if i not in want]


# --------------------------------------------------------------------------- HTTP status


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = ThreadServer(ServeConfig(store=str(tmp_path_factory.mktemp("fsem")), commit_window_ms=3))
    yield s
    s.stop()


def test_filter_errors_are_400_and_unparseable_bodies_422(srv):
    tpuf = turbopuffer.Turbopuffer(base_url=srv.url, api_key="k", max_retries=0)
    ns = tpuf.namespace("fsem")
    ns.write(upsert_rows=[{"id": 1, "name": "apple", "tags": ["a"]}], schema={"name": {"type": "string"}})
    with pytest.raises(turbopuffer.BadRequestError, match='needs \\\\?"regex\\\\?": true'):
        ns.query(rank_by=("id", "asc"), top_k=5, filters=("name", "Regex", "a"))
    with pytest.raises(turbopuffer.BadRequestError, match="use ContainsAny"):
        ns.query(rank_by=("id", "asc"), top_k=5, filters=("tags", "Contains", ["a"]))
    assert [r.id for r in ns.query(rank_by=("id", "asc"), top_k=5, filters=("tags", "Contains", "a")).rows] == [1]
    r = httpx.post(f"{srv.url}/v2/namespaces/fsem/query", content=b"{not json")
    assert r.status_code == 422 and r.json()["status"] == "error"
