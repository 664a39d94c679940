"""puffer_cli.filters: property tests against a plain-Python reference evaluator,
plus a table of malformed filters."""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
import re
import uuid
from fractions import Fraction

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from puffer_cli.errors import InvalidFilter
from puffer_cli.filters import compile_filter, validate_filter
from puffer_cli.filters.matchers import glob_to_regex
from puffer_cli.filters.parse import OPERATORS, ref_new_attributes, referenced_attributes
from puffer_cli.text import analyzer as text

# ----------------------------------------------------------------------------- schema & data

FTS_T = text.normalize_fts_options({"stemming": True})
FTS_TP = text.normalize_fts_options({"tokenizer": "pre_tokenized_array"})

SCHEMA = {
    "id": {"type": "uint", "filterable": True},
    "s": {"type": "string", "filterable": True, "regex": True},
    "i": {"type": "int", "filterable": True},
    "u": {"type": "uint", "filterable": True},
    "f": {"type": "float", "filterable": True},
    "b": {"type": "bool", "filterable": True},
    "d": {"type": "datetime", "filterable": True},
    "uu": {"type": "uuid", "filterable": True},
    "ls": {"type": "[]string", "filterable": True, "regex": True},
    "li": {"type": "[]int", "filterable": True},
    "lu": {"type": "[]uint", "filterable": True},
    "lf": {"type": "[]float", "filterable": True},
    "lb": {"type": "[]bool", "filterable": True},
    "ld": {"type": "[]datetime", "filterable": True},
    "luu": {"type": "[]uuid", "filterable": True},
    "t": {"type": "string", "full_text_search": FTS_T, "filterable": False},
    "tp": {"type": "[]string", "full_text_search": FTS_TP, "filterable": False},
    "v": {"type": "[2]f32", "filterable": False},
    "ghost": {"type": "string", "filterable": True, "regex": True},  # in the schema, never a column
}
TYPES = {k: v["type"] for k, v in SCHEMA.items()}

DTYPES = {
    "string": pl.String,
    "uuid": pl.String,
    "int": pl.Int64,
    "uint": pl.UInt64,
    "float": pl.Float64,
    "bool": pl.Boolean,
    "datetime": pl.Int64,  # cast after
}

S_POOL = ["", "a", "ab", "abc", "B", "b*c", "foo bar", "Ab", "é", "a?c", "[x]", "bab"]
I_POOL = [-(2**63), -5, -1, 0, 1, 2, 3, 2**63 - 1]
U_POOL = [0, 1, 2, 3, 2**63, 2**64 - 1]
F_POOL = [-2.25, -0.0, 0.0, 1.0, 1.5, 3.0, 1e300, -1e300]
B_POOL = [True, False]
D_POOL = [-315619200000, 0, 1577836800000, 1577836800001, 1622548800000]  # ms since epoch
UU_POOL = [str(uuid.UUID(int=n)) for n in (0, 1, 2**127, 2**128 - 1)]
WORDS = ["the", "quick", "Quick", "fox", "foxes", "jumping", "jumps", "lazy", "dog", "running", "run", "a"]
PHRASES = ["New York", "new york", "Paris", "the", "LA"]

POOLS = {
    "string": S_POOL,
    "int": I_POOL,
    "uint": U_POOL,
    "float": F_POOL,
    "bool": B_POOL,
    "datetime": D_POOL,
    "uuid": UU_POOL,
}

# literals a filter may use, per element type (all type-correct)
LITERALS = {
    "string": S_POOL + ["b", "zzz", "A"],
    "uuid": UU_POOL + [u.upper() for u in UU_POOL] + ["{" + UU_POOL[1] + "}"],
    "int": I_POOL + [2**64, 2**63, -(2**63) - 1, 1.5, -0.5, 2.0, -5.0, 1e20, -1e20, math.inf, -math.inf, math.nan],
    "uint": U_POOL + [-1, 2**64, 1.5, 2.0, 0.5, -0.5, 1.9e19, math.inf, -math.inf, math.nan],
    "float": F_POOL + [0, 1, 3, -2, 2, 1.25, math.inf, -math.inf, math.nan],
    "bool": B_POOL,
    "datetime": D_POOL
    + [
        1,
        -1,
        "2020-01-01T00:00:00Z",
        "2020-01-01T00:00:00.0005Z",
        "2019-12-31T19:00:00-05:00",
        "2020-01-01",
        "1970-01-01T00:00:00.001+00:00",
        "2021-06-01T12:00:00.000Z",
    ],
}
GLOB_PIECES = ["a", "b", "B", "*", "?", "[ab]", "[!a]", "c", " ", "é", "[a-c]"]
REGEXES = ["a", "^a", "b$", "a.?b", "[0-9]", "(?i)ab", "o b", "^$", "x|ab", "B", "é", "^.{2}$"]


def _row_strategy(n: int):
    def col(t):
        if t.startswith("[]"):
            base = st.sampled_from(POOLS[t[2:]])
            return st.one_of(st.none(), st.lists(base, max_size=3))
        return st.one_of(st.none(), st.sampled_from(POOLS[t]))

    cols = {}
    for name, t in TYPES.items():
        if name in ("id", "ghost", "v"):
            continue
        if name == "t":
            cols[name] = st.one_of(st.none(), st.lists(st.sampled_from(WORDS), max_size=6).map(" ".join))
        elif name == "tp":
            cols[name] = st.one_of(st.none(), st.lists(st.sampled_from(PHRASES), max_size=3))
        else:
            cols[name] = col(t)
    cols["v"] = st.one_of(st.none(), st.just([1.0, 2.0]))
    return st.lists(st.fixed_dictionaries(cols), min_size=n, max_size=n)


def make_frame(rows: list[dict]) -> pl.DataFrame:
    data = {"id": pl.Series("id", list(range(len(rows))), dtype=pl.UInt64)}
    for name, t in TYPES.items():
        if name in ("id", "ghost"):
            continue
        vals = [r[name] for r in rows]
        if name == "v":
            data[name] = pl.Series(name, vals, dtype=pl.Array(pl.Float32, 2))
        elif t.startswith("[]"):
            et = t[2:]
            s = pl.Series(name, vals, dtype=pl.List(DTYPES[et]))
            if et == "datetime":
                s = s.cast(pl.List(pl.Datetime("ms", "UTC")))
            data[name] = s
        else:
            s = pl.Series(name, vals, dtype=DTYPES[t])
            if t == "datetime":
                s = s.cast(pl.Datetime("ms", "UTC"))
            data[name] = s
    return pl.DataFrame(data)


# ----------------------------------------------------------------------------- reference

NEG = {
    "NotEq": "Eq",
    "NotIn": "In",
    "NotGlob": "Glob",
    "NotIGlob": "IGlob",
    "NotContains": "Contains",
    "NotContainsAny": "ContainsAny",
}


def ref_dt_ms(v):
    if isinstance(v, int):
        return v
    d = dt.datetime.fromisoformat(v)  # 3.11 accepts "Z"
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    delta = d - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return Fraction(delta.days * 86400 + delta.seconds) * 1000 + Fraction(delta.microseconds, 1000)


def ref_lit(et, v):
    if et == "uuid":
        return str(uuid.UUID(v))
    if et == "datetime":
        return ref_dt_ms(v)
    return v


def ref_cmp(op, x, v):
    # Python compares int/float/Fraction exactly; NaN compares false.
    return {"Eq": x == v, "Lt": x < v, "Lte": x <= v, "Gt": x > v, "Gte": x >= v}[op]


def ref_glob(x, pat, ci):
    if ci:
        return fnmatch.fnmatchcase(x.lower(), pat.lower())
    return fnmatch.fnmatchcase(x, pat)


def ref_scalar(et, op, x, v):
    if op in ("Glob", "IGlob"):
        return ref_glob(x, v, op == "IGlob")
    if op == "Regex":
        return re.search(v, x) is not None
    if op == "In":
        return any(ref_cmp("Eq", x, ref_lit(et, m)) for m in v if m is not None)
    return ref_cmp(op, x, ref_lit(et, v))


def ref_tokens(op, doc, q, params):
    prefix = params.get("last_as_prefix", False)
    if not q:
        return False
    if op == "ContainsTokenSequence":
        return any(doc[i : i + len(q)] == q for i in range(len(doc) - len(q) + 1))
    ds = set(doc)
    if prefix:
        last_ok = any(d.startswith(q[-1]) for d in ds)
        rest = q[:-1]
    else:
        last_ok, rest = None, q
    if op == "ContainsAllTokens":
        return all(t in ds for t in rest) and (last_ok is not False)
    return any(t in ds for t in rest) or bool(last_ok)


def ref_leaf(row, attr, op, v, params):
    if op in NEG:
        return not ref_leaf(row, attr, NEG[op], v, params)
    if op == "In" and not isinstance(v, list) and TYPES.get(attr, "").startswith("["):
        v = [v]  # a scalar In on an array attribute is a one-element list (turbopuffer's rule)
    x = row.get(attr) if attr in TYPES else None
    if op == "Eq" and v is None:
        return x is None
    if x is None:
        return op in ("In", "ContainsAny") and None in v
    t = TYPES[attr]
    if op in ("ContainsAllTokens", "ContainsAnyToken", "ContainsTokenSequence"):
        opts = SCHEMA[attr]["full_text_search"]
        return ref_tokens(op, text.tokenize(x, opts), text.tokenize(v, opts), params)
    if t.startswith("["):
        et = t[2:]
        if op == "Eq" and isinstance(v, list):
            return len(x) == len(v) and all(ref_cmp("Eq", a, ref_lit(et, b)) for a, b in zip(x, v))
        eop = {
            "Contains": "Eq",
            "ContainsAny": "In",
            "AnyLt": "Lt",
            "AnyLte": "Lte",
            "AnyGt": "Gt",
            "AnyGte": "Gte",
        }.get(op, op)
        return any(ref_scalar(et, eop, e, v) for e in x)
    return ref_scalar(t, op, x, v)


def ref_eval(row, f):
    if f[0] == "And" and isinstance(f[1], list):
        return all(ref_eval(row, g) for g in f[1])
    if f[0] == "Or" and isinstance(f[1], list):
        return any(ref_eval(row, g) for g in f[1])
    if f[0] == "Not" and len(f) == 2:
        return not ref_eval(row, f[1])
    return ref_leaf(row, f[0], f[1], f[2], f[3] if len(f) == 4 else {})


def ref_row(raw: dict) -> dict:
    # datetimes in the reference are ms ints already; everything else as stored
    return raw


# ----------------------------------------------------------------------------- filter strategy


def lit(et):
    return st.sampled_from(LITERALS[et])


def in_list(et):
    return st.lists(st.one_of(lit(et), st.just(None)), max_size=4)


def glob_pat():
    return st.lists(st.sampled_from(GLOB_PIECES), max_size=4).map("".join)


@st.composite
def leaf(draw):
    attr = draw(st.sampled_from(sorted(TYPES) + ["nope"]))
    if attr == "nope":  # not in the schema: any literal, never type-checked
        op = draw(st.sampled_from(["Eq", "NotEq", "Lt", "Gte", "In", "NotIn", "Glob", "Contains", "ContainsAllTokens"]))
        if op in ("In", "NotIn"):
            return [attr, op, draw(st.lists(st.integers(-3, 3) | st.none(), max_size=3))]
        if op in ("Glob", "ContainsAllTokens"):
            return [attr, op, "x*"]
        return [
            attr,
            op,
            draw(st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=2))) if op in ("Eq", "NotEq") else 1,
        ]
    t = TYPES[attr]
    if attr == "v":
        return [attr, draw(st.sampled_from(["Eq", "NotEq"])), None]
    if attr in ("t", "tp"):
        op = draw(st.sampled_from(["ContainsAllTokens", "ContainsAnyToken", "ContainsTokenSequence"]))
        if attr == "t":
            words = draw(st.lists(st.sampled_from(WORDS + ["runs", "dogs", "cat"]), max_size=3))
            value = " ".join(words) if draw(st.booleans()) else words
        else:
            value = draw(st.one_of(st.sampled_from(PHRASES + ["york"]), st.lists(st.sampled_from(PHRASES), max_size=2)))
        if op != "ContainsTokenSequence" and draw(st.booleans()):
            return [attr, op, value, {"last_as_prefix": draw(st.booleans())}]
        return [attr, op, value]
    if t.startswith("[]"):
        et = t[2:]
        ops = ["Eq", "NotEq", "In", "NotIn", "Contains", "NotContains", "ContainsAny", "NotContainsAny"]
        if et != "bool":
            ops += ["AnyLt", "AnyLte", "AnyGt", "AnyGte"]
        if et == "string":
            ops += ["Glob", "NotGlob", "IGlob", "NotIGlob", "Regex"]
    else:
        et = t
        ops = ["Eq", "NotEq", "In", "NotIn"]
        if et != "bool":
            ops += ["Lt", "Lte", "Gt", "Gte"]
        if et == "string":
            ops += ["Glob", "NotGlob", "IGlob", "NotIGlob", "Regex"]
    op = draw(st.sampled_from(ops))
    if op in ("Eq", "NotEq"):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            value = None
        elif choice == 1 and t.startswith("[]"):
            value = draw(st.lists(lit(et), max_size=3))
        else:
            value = draw(lit(et))
    elif op in ("In", "NotIn", "ContainsAny", "NotContainsAny"):
        value = draw(in_list(et))
    elif op in ("Glob", "NotGlob", "IGlob", "NotIGlob"):
        value = draw(glob_pat())
    elif op == "Regex":
        value = draw(st.sampled_from(REGEXES))
    else:
        value = draw(lit(et))
    return [attr, op, value]


def filters(depth: int):
    if depth == 0:
        return leaf()
    sub = filters(depth - 1)
    return st.one_of(
        leaf(),
        st.tuples(st.sampled_from(["And", "Or"]), st.lists(sub, max_size=3)).map(list),
        sub.map(lambda f: ["Not", f]),
    )


frames = st.integers(0, 8).flatmap(_row_strategy)


# ----------------------------------------------------------------------------- properties


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=frames, f=filters(3), known_columns=st.booleans())
def test_compiled_filter_matches_reference(rows, f, known_columns):
    df = make_frame(rows)
    expr = compile_filter(f, SCHEMA, columns=df.columns if known_columns else None)
    got = df.filter(expr)["id"].to_list()
    want = [i for i, r in enumerate(rows) if ref_eval(dict(r, id=i), f)]
    assert got == want, f


@settings(max_examples=40, deadline=None)
@given(rows=frames, f=filters(2))
def test_not_is_exact_negation_and_never_null(rows, f):
    df = make_frame(rows)
    e = compile_filter(f, SCHEMA)
    out = df.select(e.alias("m"), (~compile_filter(["Not", f], SCHEMA)).alias("n"))
    assert out["m"].null_count() == 0
    assert out["m"].to_list() == out["n"].to_list()


@settings(max_examples=40, deadline=None)
@given(rows=frames, f=filters(2))
def test_lazy_frame_matches_eager(rows, f):
    df = make_frame(rows)
    e = compile_filter(f, SCHEMA)
    assert df.lazy().filter(e).collect()["id"].to_list() == df.filter(e)["id"].to_list()


REF_PAIRS = [
    ("i", "i"),
    ("i", "u"),
    ("u", "f"),
    ("f", "i"),
    ("s", "s"),
    ("s", "uu"),
    ("uu", "uu"),
    ("d", "d"),
    ("b", "b"),
    ("id", "u"),
]


@st.composite
def ref_case(draw):
    attr, ref = draw(st.sampled_from(REF_PAIRS))
    n = draw(st.integers(0, 8))
    ta, tr = TYPES[attr], TYPES[ref]
    old = draw(st.lists(st.one_of(st.none(), st.sampled_from(POOLS[ta])), min_size=n, max_size=n))
    new = draw(st.lists(st.one_of(st.none(), st.sampled_from(POOLS[tr])), min_size=n, max_size=n))
    ops = ["Eq", "NotEq"] if ta == "bool" else ["Eq", "NotEq", "Lt", "Lte", "Gt", "Gte"]
    return attr, ref, old, new, draw(st.sampled_from(ops))


def _series(name, t, vals):
    s = pl.Series(name, vals, dtype=DTYPES[t])
    return s.cast(pl.Datetime("ms", "UTC")) if t == "datetime" else s


@settings(max_examples=100, deadline=None)
@given(case=ref_case())
def test_ref_new(case):
    attr, ref, old, new, op = case
    n = len(old)
    if attr == "id":  # ids are unique and non-null
        old = list(range(n))
    df = pl.DataFrame([pl.Series("id", list(range(n)), dtype=pl.UInt64)])
    if attr != "id":
        df = df.with_columns(_series(attr, TYPES[attr], old))
    df = df.with_columns(_series("__new__" + ref, TYPES[ref], new))
    expr = compile_filter([attr, op, {"$ref_new": ref}], SCHEMA, ref_new_prefix="__new__")
    got = df.filter(expr)["id"].to_list()
    pos = "Eq" if op == "NotEq" else op
    want = []
    for k, (x, y) in enumerate(zip(old, new)):
        m = x is not None and y is not None and ref_cmp(pos, x, y)
        if m != (op == "NotEq"):
            want.append(k)
    assert got == want


@settings(max_examples=200, deadline=None)
@given(pat=glob_pat(), s=st.sampled_from(S_POOL + ["aXb", "a\nb", "abcabc", "c", "Bab"]))
def test_glob_matches_fnmatch(pat, s):
    df = pl.DataFrame({"s": [s]})
    got = df.select(pl.col("s").str.contains(glob_to_regex(pat)))["s"][0]
    assert got == fnmatch.fnmatchcase(s, pat)


# ----------------------------------------------------------------------------- examples


def _ids(df, f, **kw):
    return df.filter(compile_filter(f, SCHEMA, **kw))["id"].to_list()


@pytest.fixture
def small():
    rows = [
        {
            **dict.fromkeys(TYPES),
            "s": "apple",
            "i": 1,
            "d": 1577836800000,
            "ls": ["x", "y"],
            "t": "The quick foxes jumped",
            "uu": UU_POOL[1],
            "tp": ["New York", "Paris"],
        },
        {**dict.fromkeys(TYPES), "s": "Banana", "i": -5, "ls": [], "t": "lazy dog"},
        {**dict.fromkeys(TYPES)},
    ]
    return make_frame(rows)


def test_examples(small):
    assert _ids(small, ["s", "Eq", None]) == [2]
    assert _ids(small, ["s", "NotEq", "apple"]) == [1, 2]
    assert _ids(small, ["ghost", "Eq", None]) == [0, 1, 2]
    assert _ids(small, ["unknown_attr", "NotEq", 3]) == [0, 1, 2]
    assert _ids(small, ["i", "Lt", 1.5]) == [0, 1]
    assert _ids(small, ["i", "Eq", 1.5]) == []
    assert _ids(small, ["d", "Eq", "2020-01-01T00:00:00Z"]) == [0]
    assert _ids(small, ["d", "Eq", "2019-12-31T19:00:00-05:00"]) == [0]
    assert _ids(small, ["d", "Gte", 1577836800000]) == [0]
    assert _ids(small, ["uu", "Eq", UU_POOL[1].upper()]) == [0]
    assert _ids(small, ["ls", "Eq", "x"]) == [0]
    assert _ids(small, ["ls", "Eq", []]) == [1]
    assert _ids(small, ["ls", "In", ["y", None]]) == [0, 2]
    assert _ids(small, ["t", "ContainsAllTokens", "fox jumping"]) == [0]  # stemmed
    assert _ids(small, ["t", "ContainsTokenSequence", "quick fox"]) == [0]
    assert _ids(small, ["t", "ContainsTokenSequence", "fox quick"]) == []
    assert _ids(small, ["t", "ContainsAnyToken", "the a"]) == []  # only stopwords
    assert _ids(small, ["t", "ContainsAllTokens", "qu", {"last_as_prefix": True}]) == [0]
    assert _ids(small, ["tp", "ContainsAnyToken", ["new york"]]) == [0]
    assert _ids(small, ["tp", "ContainsAnyToken", "york"]) == []
    assert _ids(small, ["s", "IGlob", "BAN*"]) == [1]
    assert _ids(small, ["s", "Regex", "pp"]) == [0]
    assert _ids(small, ["And", [["i", "Gt", 0], ["Not", ["s", "Eq", "x"]]]]) == [0]
    assert _ids(small, None) == [0, 1, 2]


def test_missing_column_at_evaluation_time(small):
    e = compile_filter(["Or", [["s", "Eq", "apple"], ["i", "Lt", 0]]], SCHEMA)
    assert small.drop("s").filter(e)["id"].to_list() == [1]
    assert small.drop("i").lazy().filter(e).collect()["id"].to_list() == [0]
    e = compile_filter(["t", "ContainsAnyToken", "dog"], SCHEMA)
    assert small.drop("t").filter(e)["id"].to_list() == []


def test_parquet_scan(small, tmp_path):
    p = tmp_path / "x.parquet"
    small.write_parquet(p)
    e = compile_filter(["And", [["i", "Gte", -10], ["s", "Glob", "*an*"]]], SCHEMA)
    assert pl.scan_parquet(p).filter(e).collect()["id"].to_list() == [1]


def test_referenced_attributes():
    f = ["And", [["a", "Eq", 1], ["Not", ["b", "In", [1]]], ["Or", [["c", "Lt", {"$ref_new": "d"}]]]]]
    assert referenced_attributes(f) == {"a", "b", "c"}
    assert referenced_attributes(f, include_ref_new=True) == {"a", "b", "c", "d"}
    assert ref_new_attributes(f) == {"d"}
    assert referenced_attributes(None) == set()
    with pytest.raises(InvalidFilter):
        referenced_attributes(["And", "x"])


def test_operator_list_is_complete():
    assert set(OPERATORS) == {
        "Fuzzy",
        "Eq",
        "NotEq",
        "In",
        "NotIn",
        "Lt",
        "Lte",
        "Gt",
        "Gte",
        "Glob",
        "NotGlob",
        "IGlob",
        "NotIGlob",
        "Regex",
        "Contains",
        "NotContains",
        "ContainsAny",
        "NotContainsAny",
        "AnyLt",
        "AnyLte",
        "AnyGt",
        "AnyGte",
        "ContainsAllTokens",
        "ContainsAnyToken",
        "ContainsTokenSequence",
    }


# ----------------------------------------------------------------------------- malformed

BAD = [
    ("not a list", "expected a list"),
    ({"s": ["Eq", 1]}, "expected a list"),
    ([], "empty filter"),
    (["s", "Equals", "x"], '"Equals" (did you mean "Eq"?)'),
    (["s", "eq", "x"], 'unknown operator "eq" (did you mean "Eq"?)'),
    (["s", 5, "x"], "operator must be a string, got 5"),
    ([5, "Eq", "x"], "attribute name must be a non-empty string, got 5"),
    (["s", "Eq"], "Eq needs a value"),
    (["s", "Eq", "x", "y", "z"], "got 5 element(s)"),
    (["s", "Eq", "x", {"a": 1}], "Eq takes no options"),
    (["t", "ContainsAllTokens", "x", {"prefix": True}], '{"prefix":true}'),
    (["And", "x"], 'And needs a list of filters, got "x"'),
    (["Or", {"a": 1}], 'Or needs a list of filters, got {"a":1}'),
    (["And", [["s", "Eq", "x"]], 3], "And takes exactly one list"),
    (["Not"], "Not takes exactly one filter"),
    (["Not", ["s", "Eq", "x"], ["s", "Eq", "y"]], "Not takes exactly one filter"),
    (
        ["And", [["s", "Eq", "x"], ["i", "Lt", "abc"]]],
        'filter ["i","Lt","abc"]: Lt on attribute "i" (type int) needs a number, got "abc"',
    ),
    (["f", "Lt", "x"], 'filter ["f","Lt","x"]: Lt on attribute "f" (type float) needs a number, got "x"'),
    (["i", "Eq", True], "needs a number, got true"),
    (["b", "Eq", 1], "needs true or false, got 1"),
    (["b", "Lt", True], "booleans have no order"),
    (["s", "Eq", 3], 'attribute "s" (type string) needs a string, got 3'),
    (["uu", "Eq", "not-a-uuid"], 'needs a UUID string, got "not-a-uuid"'),
    (["d", "Lt", "yesterday"], '"yesterday" is not an RFC 3339 datetime'),
    (["d", "Lt", 1.5], "integer ms since the epoch, got 1.5"),
    (["s", "In", "abc"], 'In needs a list of values, got "abc"'),
    (["s", "NotIn", 3], "NotIn needs a list of values, got 3"),
    (["s", "In", [["a"]]], 'needs a list of scalar values, got ["a"]'),
    (["i", "Lt", [1, 2]], "needs a single value, got a list [1,2] (use In)"),
    (["i", "Lt", None], "Lt needs a value, got null"),
    (["s", "Regex", "(?<=a)b"], 'invalid regex "(?<=a)b"'),
    (["s", "Regex", "a("], 'invalid regex "a("'),
    (["s", "Regex", 5], "Regex needs a pattern string, got 5"),
    (["s", "Glob", "[ab"], 'invalid glob pattern "[ab"'),
    (["s", "IGlob", "a{b"], 'invalid glob pattern "a{b"'),
    (["i", "Glob", "1*"], 'Glob on attribute "i" (type int) needs a string attribute'),
    (["s", "Contains", "a"], 'Contains needs an array attribute; attribute "s" (type string) is a scalar'),
    (["i", "AnyLt", 3], "AnyLt needs an array attribute"),
    (["li", "Lt", 3], "use AnyLt"),
    (["ls", "Contains", ["a", "b"]], "(use ContainsAny)"),
    (["ls", "ContainsAny", "a"], 'ContainsAny needs a list of values, got "a"'),
    (["s", "ContainsAllTokens", "fox"], 'needs full-text search on attribute "s"'),
    (["i", "ContainsAnyToken", "fox"], 'needs full-text search on attribute "i"'),
    (["t", "ContainsTokenSequence", 5], "needs a string or a list of strings, got 5"),
    (["t", "ContainsTokenSequence", "x", {"last_as_prefix": True}], "ContainsTokenSequence takes no options"),
    (["t", "Eq", "fox"], 'attribute "t" is not filterable'),
    (["v", "Eq", [1.0, 2.0]], 'attribute "v" is a vector'),
    (["s", "Eq", {"$ref_new": "s"}], "$ref_new is only allowed in conditional writes"),
    (["s", "Eq", {"$ref": "s"}], 'unsupported value object {"$ref":"s"}'),
    (["s", "Lt", {"other": 1}], "unsupported value object"),
    (["i", "Lt", {"$ref_new": 5}], "unsupported value object"),
    (
        ["Or", [["s", "Eq", "x"], ["Not", ["s", "Between", [1, 2]]]]],
        'filter ["s","Between",[1,2]]: unknown operator "Between"',
    ),
    (["s", "And", [1]], "And must be the first element"),
]

BAD_REF = [
    (["s", "Lt", {"$ref_new": "i"}], 'cannot compare attribute "s" (type string) with $ref_new "i" (type int)'),
    (["s", "In", {"$ref_new": "s"}], "In does not take"),
    (["ls", "Lt", {"$ref_new": "ls"}], "only Eq/NotEq"),
    (["b", "Lt", {"$ref_new": "b"}], "booleans have no order"),
]


@pytest.mark.parametrize("f, needle", BAD, ids=[str(i) for i in range(len(BAD))])
def test_malformed_filters(f, needle):
    with pytest.raises(InvalidFilter) as e:
        compile_filter(f, SCHEMA)
    assert needle in str(e.value), str(e.value)
    assert str(e.value).startswith("filter ")
    with pytest.raises(InvalidFilter):
        validate_filter(f, SCHEMA)


@pytest.mark.parametrize("f, needle", BAD_REF)
def test_malformed_ref_new(f, needle):
    with pytest.raises(InvalidFilter) as e:
        compile_filter(f, SCHEMA, ref_new_prefix="__new__")
    assert needle in str(e.value), str(e.value)


JSONISH = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 3),
        st.floats(allow_nan=True),
        st.sampled_from(
            [
                "s",
                "i",
                "ls",
                "t",
                "And",
                "Or",
                "Not",
                "Eq",
                "In",
                "Lt",
                "Glob",
                "Regex",
                "[",
                "(",
                "Contains",
                "ContainsAllTokens",
                "$ref_new",
                "AnyLt",
                "d",
                "uu",
            ]
        ),
    ),
    lambda ch: st.one_of(
        st.lists(ch, max_size=4), st.dictionaries(st.sampled_from(["$ref_new", "a", "last_as_prefix"]), ch, max_size=2)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(f=JSONISH)
def test_garbage_raises_only_invalid_filter(f):
    try:
        e = compile_filter(f, SCHEMA)
    except InvalidFilter:
        return
    make_frame([]).filter(e)  # whatever compiles must also evaluate


# ----------------------------------------------------------------------------- token fast path

TOKEN_ALPHABET = st.sampled_from(
    list("aAbBéÉ _-'\t\n.,ΣσςİK0١") + ["fox", "Foxes", "the", "running", "naïve", "\u212a", "ǅ"]
)
TOKEN_OPTS = [
    text.normalize_fts_options(o)
    for o in (
        {},
        {"stemming": True},
        {"tokenizer": "word_v0", "ascii_folding": True},
        {"case_sensitive": True, "remove_stopwords": False},
        {"max_token_length": 3},
    )
]


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.lists(TOKEN_ALPHABET, max_size=8).map("".join)), max_size=12),
    query=st.lists(TOKEN_ALPHABET, min_size=1, max_size=3).map(" ".join),
    opts_i=st.integers(0, len(TOKEN_OPTS) - 1),
    op=st.sampled_from(["ContainsAllTokens", "ContainsAnyToken", "ContainsTokenSequence"]),
    prefix=st.booleans(),
    as_list=st.booleans(),
)
def test_token_fast_path_equals_slow_path(values, query, opts_i, op, prefix, as_list):
    import puffer_cli.filters.matchers as FT

    opts = TOKEN_OPTS[opts_i]
    t = "[]string" if as_list else "string"
    col = [None if v is None else v.split("_") for v in values] if as_list else values
    schema = {"id": {"type": "uint"}, "x": {"type": t, "full_text_search": opts}}
    df = pl.DataFrame(
        {
            "id": pl.Series(range(len(col)), dtype=pl.UInt64),
            "x": pl.Series(col, dtype=pl.List(pl.String) if as_list else pl.String),
        }
    )
    f = ["x", op, query] + ([{"last_as_prefix": True}] if prefix and op != "ContainsTokenSequence" else [])
    saved = FT.FAST_TOKEN_MIN_ROWS
    try:
        FT.FAST_TOKEN_MIN_ROWS = 0
        fast = df.filter(compile_filter(f, schema))["id"].to_list()
        FT.FAST_TOKEN_MIN_ROWS = 10**9
        slow = df.filter(compile_filter(f, schema))["id"].to_list()
    finally:
        FT.FAST_TOKEN_MIN_ROWS = saved
    q = text.tokenize(query, opts)
    ref = [
        i
        for i, v in enumerate(col)
        if v is not None and ref_tokens(op, text.tokenize(v, opts), q, {"last_as_prefix": prefix})
    ]
    assert fast == slow == ref


def test_fuzzy_filter(db):
    from puffer_cli.errors import InvalidFilter
    from puffer_cli.search import engine

    ns = db.open_namespace("fz")
    ns.write(
        {
            "upsert_rows": [
                {"id": 1, "name": "turbopuffer", "tags": ["kitten", "x"]},
                {"id": 2, "name": "turbopufer", "tags": ["sitting"]},
                {"id": 3, "name": "TurboPuffer", "tags": None},
                {"id": 4, "name": "tuna", "tags": ["kitchen"]},
                {"id": 5, "name": None},
            ],
            "schema": {"name": {"type": "string", "fuzzy": True}, "tags": {"type": "[]string", "fuzzy": True}},
        }
    )
    med = {"max_edit_distance": [{"distance": 1, "min_query_chars": 6}]}
    med2 = {"max_edit_distance": [{"distance": 1, "min_query_chars": 6}, {"distance": 2, "min_query_chars": 9}]}

    def ids(f):
        return [r["id"] for r in engine.run_query(ns, {"filters": f, "rank_by": ["id", "asc"], "top_k": 10})["rows"]]

    assert ids(["name", "Fuzzy", "turbopuffer", med]) == [1, 2]  # case-sensitive by default
    assert ids(["name", "Fuzzy", "turbopuffer", med2]) == [1, 2, 3]  # 11 chars reach distance 2
    assert ids(["name", "Fuzzy", "turbopuff", med2]) == [1, 2]  # 9 chars: distance 2 (turbopufer is 1 away)
    assert ids(["name", "Fuzzy", "turbopuffer", {**med, "case_sensitive": False}]) == [1, 2, 3]
    assert ids(["name", "Fuzzy", "turbo", med]) == []  # shorter than every threshold: no matches
    assert ids(["tags", "Fuzzy", "kittens", med]) == [1]  # any element; distance 1 at 7 chars
    assert ids(["Not", ["name", "Fuzzy", "turbopuffer", med]]) == [3, 4, 5]
    bad = [
        ["name", "Fuzzy", "turbopuffer"],
        ["name", "Fuzzy", "turbopuffer", {"max_edit_distance": []}],
        ["name", "Fuzzy", "turbopuffer", {"max_edit_distance": [{"distance": 2, "min_query_chars": 6}]}],
        ["name", "Fuzzy", 5, med],
        ["name", "Fuzzy", "turbopuffer", {**med, "case_sensitive": "no"}],
        ["id", "Fuzzy", "turbopuffer", med],
    ]
    for f in bad:
        with pytest.raises(InvalidFilter):
            ids(f)
    ns.write({"upsert_rows": [{"id": 9, "plain": "turbopuffer"}]})
    with pytest.raises(InvalidFilter, match="fuzzy"):
        ids(["plain", "Fuzzy", "turbopuffer", med])


def test_fuzzy_and_word_v4_through_an_index(db):
    """The indexed paths take these forms too (the filter runs on the index's candidates,
    word_v4 is the tantivy index's analyzer): same rows as the exact engine."""
    import numpy as np
    from puffer_cli.index import builder
    from puffer_cli.search import engine

    ns = db.open_namespace("fzix")
    rng = np.random.default_rng(0)
    names = ["turbopuffer", "turbopufer", "other", "tuna"] * 25
    ns.write(
        {
            "upsert_rows": [
                {"id": i, "v": rng.random(4).tolist(), "name": names[i], "t": "I can't stop" if i % 2 else "you can"}
                for i in range(100)
            ],
            "schema": {
                "v": {"type": "[4]f32", "ann": {"probe": 1.0}},
                "name": {"type": "string", "fuzzy": True},
                "t": {"type": "string", "full_text_search": {"tokenizer": "word_v4"}},
            },
        }
    )
    builder.index_namespace(ns, gc_grace_s=0, threads=1)
    ns.write({"upsert_rows": [{"id": 1000, "v": [0.5] * 4, "name": "turbopuffer", "t": "can't"}]})
    med = {"max_edit_distance": [{"distance": 1, "min_query_chars": 6}]}
    fz = ["name", "Fuzzy", "turbopuffer", med]
    near = {i for i in range(100) if names[i].startswith("turbopuf")} | {1000}
    odd = {i for i in range(100) if i % 2} | {1000}
    for q, want in [
        ({"rank_by": ["v", "ANN", [0.5] * 4], "filters": fz}, near),
        ({"rank_by": ["t", "BM25", "can't"]}, odd),
        ({"rank_by": ["t", "BM25", "can't"], "filters": fz}, near & odd),
    ]:
        assert {r["id"] for r in engine.run_query(ns, {**q, "top_k": 1000})["rows"]} == want
