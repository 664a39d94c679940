"""Fuzzing: mutated query and write bodies either succeed or raise a PufferError
(which the CLI and the server turn into `Error: ...` / a 4xx); a rejected write
changes nothing (same head seq, same documents).  Bodies start from valid ones and
get random subtrees dropped, replaced by random JSON or extreme numbers, wrapped in
deep nesting, or replaced by long strings, so most of them get past the first checks.
This is the library-level half; the HTTP half (status codes, error shape, logs, the
fixed corpus of measured failures) is tests/test_fuzz_http.py."""

from __future__ import annotations

import copy
import uuid

import puffer_cli
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from puffer_cli import limits
from puffer_cli.errors import PufferError
from puffer_cli.index import builder
from puffer_cli.search import engine
from puffer_cli.store import url as _store

from ._bodies import paths as _paths

EXTREMES = [
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
    1e308,
    5e-324,
    3.5e38,
    1e20,
    2**62,
    float("nan"),
    float("inf"),
    -float("inf"),
]

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(EXTREMES)
    | st.text(max_size=6)
    | st.sampled_from(
        [
            "vector",
            "body",
            "n",
            "tag",
            "id",
            "ANN",
            "kNN",
            "BM25",
            "Eq",
            "And",
            "In",
            "asc",
            "desc",
            "Sum",
            "Count",
            "eventual",
            "strong",
            "base64",
        ]
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)

QUERIES = [
    {"rank_by": ["vector", "ANN", [0.1, 0.2]], "top_k": 3},
    {"rank_by": ["vector", "kNN", [0.3, 0.1]], "top_k": 2, "filters": ["tag", "Eq", "a"], "include_attributes": True},
    {"rank_by": ["body", "BM25", "hello world"], "top_k": 5, "filters": ["n", "Gt", 0]},
    {"rank_by": ["Sum", [["body", "BM25", "hello"], ["Product", 2, ["body", "BM25", "fox"]]]], "top_k": 4},
    {"rank_by": ["n", "desc"], "top_k": 2, "include_attributes": ["tag"]},
    {"aggregate_by": {"c": ["Count"], "s": ["Sum", "n"]}, "group_by": ["tag"], "filters": ["tag", "In", ["a", "b"]]},
    {
        "queries": [{"rank_by": ["vector", "ANN", [0.1, 0.2]]}, {"rank_by": ["body", "BM25", "fox"]}],
        "rerank_by": ["RRF"],
        "consistency": {"level": "eventual"},
    },
]

WRITES = [
    {"upsert_rows": [{"id": 7, "vector": [0.5, 0.5], "tag": "b", "n": 3, "body": "quick fox"}]},
    {"upsert_columns": {"id": [8, 9], "vector": [[0.1, 0.9], [0.9, 0.1]], "tag": ["a", None]}},
    {"patch_rows": [{"id": 1, "n": 5}], "deletes": [2]},
    {"delete_by_filter": ["tag", "Eq", "zzz"]},
    {"patch_by_filter": {"filters": ["n", "Lt", -100], "patch": {"tag": "c"}}},
    {"upsert_rows": [{"id": 1, "n": 9}], "upsert_condition": ["n", "Lt", ["$ref_new", "n"]]},
]


LONG = st.builds(
    lambda n, ch: ch * n,
    st.sampled_from([129, limits.MAX_PATTERN_CHARS + 1, limits.MAX_QUERY_TEXT_CHARS + 1, 100_000]),
    st.sampled_from(["a", "é", "(", "*", " ", "\U0001f40d"]),
)

WRAPS = {
    "Not": lambda v: ["Not", v],
    "And": lambda v: ["And", [v]],
    "Sum": lambda v: ["Sum", [v]],
    "list": lambda v: [v],
    "obj": lambda v: {"a": v},
}


@st.composite
def new_value(draw, old):
    """(value, last): deep or wide values end the mutation (they are not walked again)."""
    how = draw(st.sampled_from(["json", "json", "json", "extreme", "long", "nest", "wide"]))
    if how == "extreme":
        return draw(st.sampled_from(EXTREMES)), False
    if how == "long":
        return draw(LONG), False
    if how == "nest":  # up to 600 deep: past every depth limit; the library must not recurse on it
        wrap = WRAPS[draw(st.sampled_from(sorted(WRAPS)))]
        for _ in range(draw(st.sampled_from([2, limits.MAX_FILTER_DEPTH + 1, 100, 600]))):
            old = wrap(old)
        return old, True
    if how == "wide":
        return [draw(st.sampled_from(["And", "Or"])), [old] * draw(st.sampled_from([2, 33, 100]))], True
    return draw(JSON), False


@st.composite
def mutated(draw, bases):
    body = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(body))
        path = draw(st.sampled_from(paths))
        parent = body
        for k in path[:-1]:
            parent = parent[k]
        if path and draw(st.integers(0, 4)) == 0:  # drop the key / item
            del parent[path[-1]]
            continue
        new, last = draw(new_value(parent[path[-1]] if path else body))
        if not path:
            body = new
        else:
            parent[path[-1]] = new
        if last:
            break
    return body


@pytest.fixture(scope="module")
def namespaces():
    url = f"memory://{uuid.uuid4().hex}"
    db = puffer_cli.connect(url)
    rows = [
        {
            "id": i,
            "vector": [0.1 * i, 1 - 0.1 * i],
            "tag": "ab"[i % 2],
            "n": i,
            "body": ["hello world", "quick fox", "lazy dog"][i % 3],
        }
        for i in range(1, 7)
    ]
    out = []
    for name in ("wal", "indexed"):
        ns = db.open_namespace(name)
        ns.write({"upsert_rows": rows, "schema": {"body": {"type": "string", "full_text_search": True}}})
        if name == "indexed":
            builder.index_namespace(ns, gc_grace_s=0)
            ns.write({"upsert_rows": [{"id": 20, "vector": [0.2, 0.2], "tag": "a", "n": 1, "body": "fox"}]})
        out.append(ns)
    yield out
    _store.open_store(url).clear()


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@FUZZ
@given(body=mutated(QUERIES))
def test_fuzzed_queries_fail_cleanly(namespaces, body):
    for ns in namespaces:
        try:
            engine.run(ns, body)
        except PufferError:
            pass


@FUZZ
@given(body=mutated(WRITES))
def test_fuzzed_writes_fail_cleanly_and_change_nothing(namespaces, body):
    for ns in namespaces:
        before = ns.head().seq
        docs_before = ns.docs()[0].sort("id").to_dicts()
        try:
            ns.write(body)
        except PufferError:
            assert ns.head().seq == before
            assert ns.docs()[0].sort("id").to_dicts() == docs_before


@pytest.mark.slow
@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(body=mutated(QUERIES))
def test_fuzzed_queries_fail_cleanly_slow(namespaces, body):
    test_fuzzed_queries_fail_cleanly.hypothesis.inner_test(namespaces, body)


@pytest.mark.slow
@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(body=mutated(WRITES))
def test_fuzzed_writes_fail_cleanly_slow(namespaces, body):
    test_fuzzed_writes_fail_cleanly_and_change_nothing.hypothesis.inner_test(namespaces, body)
