"""Property test: random namespaces built by random write sequences (through
``ns.write``), random filters and rank_by, against a slow pure-Python reference."""

from __future__ import annotations

import uuid

import numpy as np
import puffer_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from puffer_cli.search import engine
from puffer_cli.store import url as _store

IDS = st.integers(0, 15)
NS = st.one_of(st.none(), st.integers(-3, 3))
SS = st.one_of(st.none(), st.sampled_from(["a", "b", "c"]))
VEC = st.one_of(st.none(), st.lists(st.integers(-2, 2).map(float), min_size=2, max_size=2))


@st.composite
def row(draw, partial=False):
    r = {"id": draw(IDS)}
    for k, strat in (("n", NS), ("s", SS), ("vector", VEC)):
        if partial:
            if draw(st.booleans()):
                r[k] = draw(strat)
        else:
            v = draw(strat)
            if v is not None:
                r[k] = v
    return r


def dedup(rows):
    out = {}
    for r in rows:
        out[r["id"]] = r
    return list(out.values())


WRITE = st.one_of(
    st.lists(row(), min_size=1, max_size=6).map(lambda rs: {"upsert_rows": dedup(rs)}),
    st.lists(row(partial=True), min_size=1, max_size=4).map(lambda rs: {"patch_rows": dedup(rs)}),
    st.lists(IDS, min_size=1, max_size=4).map(lambda ids: {"deletes": sorted(set(ids))}),
)


def leaf():
    return st.one_of(
        st.tuples(st.just("n"), st.sampled_from(["Eq", "NotEq", "Lt", "Lte", "Gt", "Gte"]), st.integers(-3, 3)),
        st.tuples(st.just("s"), st.sampled_from(["Eq", "NotEq", "Lt", "Gt"]), st.sampled_from(["a", "b", "c"])),
        st.tuples(st.just("n"), st.sampled_from(["In", "NotIn"]), st.lists(st.integers(-3, 3), max_size=3)),
        st.tuples(st.sampled_from(["n", "s"]), st.sampled_from(["Eq", "NotEq"]), st.none()),
        st.tuples(st.just("id"), st.sampled_from(["Lt", "Gte"]), st.integers(0, 15)),
    ).map(list)


FILTER = st.recursive(
    leaf(),
    lambda kids: st.one_of(
        st.tuples(st.sampled_from(["And", "Or"]), st.lists(kids, max_size=3)).map(list),
        st.tuples(st.just("Not"), kids).map(list),
    ),
    max_leaves=5,
)

RANK = st.one_of(
    st.tuples(st.sampled_from(["n", "s", "id"]), st.sampled_from(["asc", "desc"])).map(list),
    st.lists(st.integers(-2, 2).map(float), min_size=2, max_size=2).map(lambda v: ["vector", "kNN", v]),
)


# --------------------------------------------------------------------------- reference
def apply(state: dict, body: dict) -> None:
    for r in body.get("upsert_rows", []):
        state[r["id"]] = {k: v for k, v in r.items() if v is not None}
    for r in body.get("patch_rows", []):
        if r["id"] in state:
            d = state[r["id"]]
            for k, v in r.items():
                if v is None:
                    d.pop(k, None)
                else:
                    d[k] = v
    for i in body.get("deletes", []):
        state.pop(i, None)


def ref_filter(doc: dict, f) -> bool:
    if f[0] in ("And", "Or") and isinstance(f[1], list):
        vals = [ref_filter(doc, x) for x in f[1]]
        return all(vals) if f[0] == "And" else any(vals)
    if f[0] == "Not":
        return not ref_filter(doc, f[1])
    attr, op, v = f
    x = doc.get(attr)
    if op in ("NotEq", "NotIn"):
        return not ref_filter(doc, [attr, op[3:], v])
    if op == "Eq":
        return x is None if v is None else (x is not None and x == v)
    if op == "In":
        return x is not None and x in v
    if x is None:
        return False
    return {"Lt": x < v, "Lte": x <= v, "Gt": x > v, "Gte": x >= v}[op]


def ref_query(state: dict, rank, f, k):
    docs = [d for d in state.values() if f is None or ref_filter(d, f)]
    if rank[1] in ("asc", "desc"):
        attr, desc = rank[0], rank[1] == "desc"
        have = [d for d in docs if attr in d]
        miss = sorted((d for d in docs if attr not in d), key=lambda d: d["id"])
        have.sort(key=lambda d: d["id"])
        have.sort(key=lambda d: d[attr], reverse=desc)  # stable: ties stay by id asc
        return [(d["id"], None) for d in (have + miss)[:k]]
    q = np.array(rank[2])
    scored = [(float(((np.array(d["vector"]) - q) ** 2).sum()), d["id"]) for d in docs if "vector" in d]
    scored.sort()
    return [(i, dist) for dist, i in scored[:k]]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    writes=st.lists(WRITE, min_size=1, max_size=6),
    queries=st.lists(st.tuples(RANK, st.one_of(st.none(), FILTER), st.integers(1, 20)), min_size=1, max_size=4),
)
def test_engine_matches_reference(writes, queries):
    url = f"memory://{uuid.uuid4().hex}"
    try:
        ns = puffer_cli.connect(url).open_namespace("h")
        ns.write(
            {
                "upsert_rows": [],
                "schema": {"id": "uint", "n": "int", "s": "string", "vector": "[2]f32"},
                "distance_metric": "euclidean_squared",
            }
        )
        state: dict = {}
        for w in writes:
            ns.write(w)
            apply(state, w)
        for rank, f, k in queries:
            body = {"rank_by": rank, "top_k": k}
            if f is not None:
                body["filters"] = f
            got = engine.run_query(ns, body)["rows"]
            want = ref_query(state, rank, f, k)
            assert [r["id"] for r in got] == [i for i, _ in want], (body, state)
            for r, (_, dist) in zip(got, want):
                if dist is not None:
                    assert abs(r["$dist"] - dist) < 1e-9
                else:
                    assert "$dist" not in r
    finally:
        _store.open_store(url).clear()
