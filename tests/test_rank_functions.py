"""turbopuffer parity (issue 12): the rank functions Saturate / Decay / Dist, compute_attributes
(VectorDist, Highlight) and _debug/recall's rank_by / include_ground_truth: values against
hand-computed references, the same answer from the WAL (exact engine) and from the index,
hostile arguments as a 400 naming the field, and the official client over a real socket."""

from __future__ import annotations

import math

import numpy as np
import pytest
import turbopuffer
from hypothesis import given, settings
from hypothesis import strategies as st
from puffer_cli.errors import InvalidQuery, InvalidRequest
from puffer_cli.index import builder
from puffer_cli.jobs import recall as RC
from puffer_cli.query import model
from puffer_cli.query import parse as Q
from puffer_cli.search import engine
from puffer_cli.server.app import ServeConfig

from .serve_proc import ThreadServer

DAY = 86_400_000
TEXTS = [
    "The quick brown fox. It jumps over the lazy dog!\n\nA fox again here.",
    "Nothing to see. Fox only at the end, fox",
    "no match here at all",
    "fox fox fox fox fox fox fox fox",
    "a dog and a cat",
]
SCHEMA = {"text": {"type": "string", "full_text_search": True}, "ts": {"type": "datetime"}}


def rows(n: int = 5) -> list[dict]:
    out = []
    for i in range(n):
        r = {"id": i + 1, "vector": [math.cos(i), math.sin(i)], "text": TEXTS[i % len(TEXTS)], "pop": i * 7}
        if i % 4 != 2:
            r["ts"] = f"2026-01-{1 + i % 28:02d}T00:00:00Z"
        out.append(r)
    return out


def make(db, name="rf", n=5):
    ns = db.open_namespace(name)
    ns.write({"upsert_rows": rows(n), "schema": SCHEMA, "distance_metric": "cosine_distance"})
    return ns


def run(ns, rank_by, k=50, **kw):
    return engine.run_query(ns, {"rank_by": rank_by, "top_k": k, **kw})["rows"]


def scores(ns, rank_by) -> dict:
    return {r["id"]: r["$dist"] for r in run(ns, rank_by)}


# ----------------------------------------------------------------------- formulas, by hand
def test_saturate_decay_dist_match_hand_computed_values(mem_db):
    ns = make(mem_db)
    bm = scores(ns, ["text", "BM25", "fox"])  # the inner scores
    assert set(bm) == {1, 2, 4}
    m, e = 0.8, 1.7
    sat = scores(ns, ["Saturate", ["text", "BM25", "fox"], {"midpoint": m, "exponent": e}])
    assert sat == pytest.approx({i: x**e / (x**e + m**e) for i, x in bm.items()})
    dec = scores(ns, ["Decay", ["text", "BM25", "fox"], {"midpoint": m}])
    assert dec == pytest.approx({i: m / (x + m) for i, x in bm.items()})
    # Attribute: pop = 7 * (id - 1); id 1 has pop 0 -> Saturate 0 (x <= 0), still returned (present)
    pop = {i: 7.0 * (i - 1) for i in range(1, 6)}
    assert scores(ns, ["Saturate", ["Attribute", "pop"], {"midpoint": 14}]) == pytest.approx(
        {i: (p / (p + 14) if p > 0 else 0.0) for i, p in pop.items()}
    )
    assert scores(ns, ["Dist", ["Attribute", "pop"], 10]) == pytest.approx({i: abs(p - 10) for i, p in pop.items()})
    # a date origin on a datetime attribute: ms since the epoch; id 3 has no ts -> not returned
    ts = {i: (i - 1) * DAY for i in (1, 2, 4, 5)}
    near = scores(ns, ["Decay", ["Dist", ["Attribute", "ts"], "2026-01-03T00:00:00Z"], {"midpoint": DAY}])
    assert near == pytest.approx({i: DAY / (abs(t - 2 * DAY) + DAY) for i, t in ts.items()})
    # nested in Sum / Product: BM25 + 2 * closeness; Attribute matches where present, so all 5 are eligible
    body = [
        "Sum",
        [["text", "BM25", "fox"], ["Product", 2, ["Decay", ["Dist", ["Attribute", "pop"], 0], {"midpoint": 7}]]],
    ]
    want = {i: bm.get(i, 0.0) + 2 * 7 / (pop[i] + 7) for i in pop}
    got = scores(ns, body)
    assert got == pytest.approx(want)
    assert [r["id"] for r in run(ns, body)] == sorted(want, key=lambda i: (-want[i], i))


def test_functions_on_unmatched_inner_score_zero(mem_db):
    ns = make(mem_db)
    # Max of BM25 and Decay(Attribute ts): id 3 has no ts and no fox: absent; id 5 has ts only
    got = scores(ns, ["Max", [["text", "BM25", "cat"], ["Decay", ["Attribute", "ts"], {"midpoint": 1e15}]]])
    assert 3 not in got and set(got) == {1, 2, 4, 5}


@settings(max_examples=60, deadline=None)
@given(
    x=st.lists(st.floats(min_value=-1e300, max_value=1e300, allow_nan=False), min_size=1, max_size=20),
    m=st.floats(min_value=1e-300, max_value=1e300),
    e=st.floats(min_value=1e-6, max_value=1e6),
)
def test_rank_functions_stay_in_range_for_any_finite_input(x, m, e):
    from puffer_cli.search import rankfuncs

    a = np.array(x)
    s, d = rankfuncs.saturate(a, m, e), rankfuncs.decay(a, m, e)
    assert np.all((s >= 0) & (s <= 1)) and np.all((d >= 0) & (d <= 1))
    assert np.all(s[a <= 0] == 0) and np.all(d[a <= 0] == 1)
    assert np.all(np.isfinite(rankfuncs.apply(Q.Dist(None, 1.0), a, np.ones(len(a), bool))))


# ----------------------------------------------------------------------- hostile arguments
BAD_NUMBERS = [float("nan"), float("inf"), -float("inf"), 0, -1, 10**400, "1", True, None, [], {}]


@pytest.mark.parametrize("v", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("key", ["midpoint", "exponent"])
@pytest.mark.parametrize("fn", ["Saturate", "Decay"])
def test_bad_midpoint_or_exponent_is_invalid_query_naming_it(fn, key, v):
    params = {"midpoint": 1.0, key: v}
    if v is None and key == "exponent":
        return  # null exponent: the default (1)
    with pytest.raises(InvalidQuery, match=r"rank_by\[2\]"):
        Q.parse_query({"rank_by": [fn, ["t", "BM25", "x"], params]})


@pytest.mark.parametrize(
    "rank_by,match",
    [
        (["Saturate", ["t", "BM25", "x"]], "Saturate is"),
        (["Saturate", ["t", "BM25", "x"], {"midpoint": 1, "pivot": 2}], "unknown Saturate parameter"),
        (["Decay", ["t", "BM25", "x"], [1]], "Decay is"),
        (["Dist", ["Attribute", "n"]], "Dist is"),
        (["Dist", ["Attribute", "n"], float("nan")], r"rank_by\[2\]"),
        (["Dist", ["Attribute", "n"], 10**400], r"rank_by\[2\]"),
        (["Dist", ["Attribute", "n"], "yesterday"], "RFC 3339"),
        (["Dist", ["t", "BM25", "x"], "2026-01-01"], "datetime attribute"),
        (["Dist", ["nope"], 1], r"rank_by\[1\]"),
        (["Saturate", "x", {"midpoint": 1}], r"rank_by\[1\]"),
    ],
)
def test_malformed_rank_functions(rank_by, match):
    with pytest.raises(InvalidQuery, match=match):
        Q.parse_query({"rank_by": rank_by})


def test_rank_functions_nested_too_deep_are_refused():
    e: list = ["t", "BM25", "x"]
    for _ in range(40):
        e = ["Saturate", e, {"midpoint": 1}]
    with pytest.raises(InvalidQuery, match="MAX_FILTER_DEPTH"):
        Q.parse_query({"rank_by": e})


def test_schema_checks_of_rank_functions(mem_db):
    ns = make(mem_db)
    with pytest.raises(InvalidQuery, match="datetime attribute"):
        run(ns, ["Dist", ["Attribute", "pop"], "2026-01-01T00:00:00Z"])
    with pytest.raises(InvalidQuery, match="numeric"):
        run(ns, ["Saturate", ["Attribute", "text"], {"midpoint": 1}])


# ----------------------------------------------------------------------- WAL vs index parity
PARITY_RANKS = [
    ["Saturate", ["text", "BM25", "fox"], {"midpoint": 1.0, "exponent": 2}],
    [
        "Sum",
        [
            ["text", "BM25", "fox dog"],
            ["Decay", ["Dist", ["Attribute", "ts"], "2026-01-10T00:00:00Z"], {"midpoint": DAY}],
        ],
    ],
    ["Max", [["Product", 3, ["Saturate", ["Attribute", "pop"], {"midpoint": 50}]], ["text", "BM25", "cat"]]],
]
COMPUTE = {
    "d": ["vector", "VectorDist", [0.3, 0.7]],
    "h": ["Highlight", "text", {"fragment_by": "sentence", "include_offsets": "utf-16"}],
}


def test_index_path_gives_the_exact_engine_answer(mem_db):
    ns = make(mem_db, n=60)
    bodies = [{"rank_by": rb, "top_k": 12} for rb in PARITY_RANKS]
    bodies += [
        {"rank_by": ["text", "BM25", "fox"], "top_k": 5, "compute_attributes": COMPUTE},
        {"rank_by": ["vector", "ANN", [0.3, 0.7]], "top_k": 5, "compute_attributes": COMPUTE},
        {"rank_by": ["id", "asc"], "top_k": 5, "filters": ["pop", "Gt", 30], "compute_attributes": COMPUTE},
    ]
    before = [engine.run_query(ns, b)["rows"] for b in bodies]
    builder.index_namespace(ns)
    from puffer_cli.search.reader import view_for

    assert view_for(ns, "strong") is not None  # answered from the index from here on
    after = [engine.run_query(ns, b)["rows"] for b in bodies]
    assert after == before
    # an unindexed tail on top of the index: still the exact answer of the whole namespace
    ns.write(
        {
            "upsert_rows": [
                {"id": 1000, "vector": [0.3, 0.7], "text": "fox fox dog", "pop": 99, "ts": "2026-01-10T00:00:00Z"}
            ]
        }
    )
    tail = [engine.run_query(ns, b)["rows"] for b in bodies]
    other = mem_db.open_namespace("rf-wal-only")
    other.write({"upsert_rows": rows(60), "schema": SCHEMA, "distance_metric": "cosine_distance"})
    other.write(
        {
            "upsert_rows": [
                {"id": 1000, "vector": [0.3, 0.7], "text": "fox fox dog", "pop": 99, "ts": "2026-01-10T00:00:00Z"}
            ]
        }
    )
    assert tail == [engine.run_query(other, b)["rows"] for b in bodies]


# ----------------------------------------------------------------------- compute_attributes
def test_vector_dist_and_highlight_values(mem_db):
    ns = make(mem_db)
    out = run(
        ns,
        ["text", "BM25", "fox"],
        compute_attributes={
            "d": ["vector", "VectorDist", [1.0, 0.0]],
            "h": ["Highlight", "text", {"include_offsets": "utf-8"}],
            "p": ["Highlight", "text", {"fragment_by": "paragraph", "fragment_limit": 1}],
            "w": ["Highlight", "text", {"fragment_by": "word", "rank_fragments_by": ["text", "BM25", "dog"]}],
        },
    )
    by = {r["id"]: r for r in out}
    for i, r in by.items():
        v = np.array([math.cos(i - 1), math.sin(i - 1)])
        assert r["d"] == pytest.approx(1 - v[0] / np.linalg.norm(v))
    assert by[1]["h"] == [
        {"text": "The quick brown fox.", "highlights": [[16, 19]], "start": 0, "end": 20},
        {"text": "A fox again here.", "highlights": [[2, 5]], "start": 50, "end": 67},
    ]
    assert by[1]["p"] == [{"text": "The quick brown fox. It jumps over the lazy dog!", "highlights": [[16, 19]]}]
    assert by[1]["w"] == [{"text": "dog", "highlights": [[0, 3]]}]
    assert by[2]["w"] == [] and by[2]["h"][0]["text"] == "Fox only at the end, fox"
    assert by[2]["h"][0]["highlights"] == [[0, 3], [21, 24]]
    assert by[4]["p"][0]["highlights"][:2] == [[0, 3], [4, 7]]


def test_highlight_offset_units():
    from puffer_cli.search import attributes as C

    e = model.HighlightExpr("t", "none", 3, "utf-16")
    frag = C._fragments("é😀 fox", e, {"fox"}, True, {})  # noqa: SLF001
    assert frag == [{"text": "é😀 fox", "highlights": [[4, 7]], "start": 0, "end": 7}]
    e8 = model.HighlightExpr("t", "none", 3, "utf-8")
    assert C._fragments("é😀 fox", e8, {"fox"}, True, {})[0]["highlights"] == [[7, 10]]  # noqa: SLF001


@pytest.mark.parametrize(
    "compute,match",
    [
        ({"x": ["vector", "VectorDist", [1.0]]}, "dimensions"),
        ({"x": ["text", "VectorDist", [1.0, 0.0]]}, "vector attribute"),
        ({"x": ["vector", "VectorDist", [float("nan"), 0.0]]}, r"compute_attributes.x\[2\]"),
        ({"x": ["Highlight", "pop"]}, "full-text search"),
        ({"x": ["Highlight", "nope"]}, "not in the namespace"),
        ({"x": ["Highlight", "text", {"fragment_limit": 0}]}, "fragment_limit"),
        ({"x": ["Highlight", "text", {"fragment_limit": 10**30}]}, "fragment_limit"),
        ({"x": ["Highlight", "text", {"fragment_limit": 2.5}]}, "fragment_limit"),
        ({"x": ["Highlight", "text", {"fragment_by": "line"}]}, "fragment_by"),
        ({"x": ["Highlight", "text", {"include_offsets": "bytes"}]}, "include_offsets"),
        ({"x": ["Highlight", "text", {"colour": 1}]}, "unknown Highlight parameter"),
        ({"x": ["Highlight", "text", {"rank_fragments_by": ["pop", "BM25", "x"]}]}, "full-text search"),
        ({"x": ["text", "BM25", "x"]}, "compute_attributes.x"),
        ({"$x": ["vector", "VectorDist", [1.0, 0.0]]}, "invalid name"),
        ({"id": ["vector", "VectorDist", [1.0, 0.0]]}, "invalid name"),
        ({f"a{i}": ["Highlight", "text"] for i in range(65)}, "MAX_COMPUTE_ATTRIBUTES"),
        ([["Highlight", "text"]], "invalid type: sequence, expected a map"),
    ],
)
def test_bad_compute_attributes(mem_db, compute, match):
    ns = make(mem_db)
    with pytest.raises(InvalidQuery, match=match):
        run(ns, ["id", "asc"], compute_attributes=compute)


# ----------------------------------------------------------------------- recall
def test_recall_of_one_rank_by_with_ground_truth(mem_db):
    ns = mem_db.open_namespace("rec")
    ns.write(
        {
            "upsert_rows": [{"id": i, "vector": [float(i), 1.0]} for i in range(30)],
            "distance_metric": "euclidean_squared",
        }
    )
    out = RC.recall(ns, top_k=3, rank_by=["vector", "ANN", [4.2, 1.0]], include_ground_truth=True)
    assert out["num"] == 1 and out["avg_recall"] == 1.0
    (gt,) = out["ground_truth"]
    assert gt["query_vector"] == pytest.approx([4.2, 1.0])
    assert [r["id"] for r in gt["nearest_neighbors"]] == [4, 5, 3]
    assert [r["$dist"] for r in gt["nearest_neighbors"]] == pytest.approx([0.04, 0.64, 1.44], rel=1e-5)
    assert gt["nearest_neighbors"][0]["vector"] == [4.0, 1.0]
    assert "ground_truth" not in RC.recall(ns, num=2, top_k=3)
    assert len(RC.recall(ns, num=4, top_k=3, include_ground_truth=True)["ground_truth"]) == 4
    for kw, exc, match in [
        ({"rank_by": ["vector", "ANN", [1.0]]}, InvalidQuery, "dimensions"),
        ({"rank_by": ["vector", "asc"]}, InvalidQuery, "vector rankings"),
        ({"rank_by": ["vector", "ANN", [1.0, 1.0]], "num": 5}, InvalidRequest, "num must be null or 1"),
        ({"rank_by": ["vector", "ANN", [float("inf"), 1.0]]}, InvalidQuery, r"rank_by\[2\]"),
        ({"include_ground_truth": "yes"}, InvalidRequest, "include_ground_truth"),
    ]:
        with pytest.raises(exc, match=match):
            RC.recall(ns, top_k=3, **kw)


# ----------------------------------------------------------------------- the official client
KEY = "rf-key"


@pytest.fixture(scope="module")
def tp(tmp_path_factory):
    s = ThreadServer(ServeConfig(store=str(tmp_path_factory.mktemp("rf")), api_key=KEY, commit_window_ms=3))
    c = turbopuffer.Turbopuffer(base_url=s.url, api_key=KEY, max_retries=0)
    ns = c.namespace("rf")
    ns.write(upsert_rows=rows(), schema=SCHEMA, distance_metric="cosine_distance")
    yield c, ns
    s.stop()


def test_client_rank_functions(tp, mem_db):
    _c, ns = tp
    ref = make(mem_db)
    for rb in PARITY_RANKS:
        got = ns.query(rank_by=rb, top_k=10)
        want = run(ref, rb, k=10)
        assert [r.id for r in got.rows] == [r["id"] for r in want]
        assert [r["$dist"] for r in got.rows] == pytest.approx([r["$dist"] for r in want], rel=1e-6)
    with pytest.raises(turbopuffer.BadRequestError) as e:
        ns.query(rank_by=("Saturate", ("text", "BM25", "fox"), {"midpoint": -1}), top_k=3)
    assert "midpoint" in e.value.body["error"]


def test_client_compute_attributes(tp):
    _c, ns = tp
    res = ns.query(rank_by=("text", "BM25", "fox"), top_k=3, compute_attributes=COMPUTE)
    first = res.rows[0].model_dump()
    assert first["id"] == 4 and first["h"][0]["text"] == TEXTS[3]
    v = np.array([math.cos(3), math.sin(3)])
    q = np.array([0.3, 0.7])
    assert first["d"] == pytest.approx(1 - v @ q / np.linalg.norm(v) / np.linalg.norm(q), rel=1e-6)
    plan = ns.explain_query(rank_by=("text", "BM25", "fox"), top_k=3, compute_attributes=COMPUTE)
    assert plan.plan_text
    with pytest.raises(turbopuffer.BadRequestError) as e:
        ns.query(rank_by=("id", "asc"), top_k=1, compute_attributes={"x": ("Highlight", "pop")})
    assert "compute_attributes.x" in e.value.body["error"]


def test_client_recall_rank_by_and_ground_truth(tp):
    c, _ns = tp
    ns = c.namespace("rf-rec")
    ns.write(upsert_rows=[{"id": i, "vector": [float(i), 1.0]} for i in range(20)], distance_metric="euclidean_squared")
    r = ns.recall(top_k=2, rank_by=["vector", "ANN", [3.0, 1.0]], include_ground_truth=True)
    assert r.avg_recall == 1.0 and r.ground_truth is not None and len(r.ground_truth) == 1
    gt = r.ground_truth[0]
    assert gt.query_vector == [3.0, 1.0]
    assert [row.id for row in gt.nearest_neighbors] == [3, 2]
    assert gt.nearest_neighbors[1].model_dump()["vector"] == [2.0, 1.0]
    with pytest.raises(turbopuffer.BadRequestError) as e:
        ns.recall(num=3, top_k=2, rank_by=["vector", "ANN", [3.0, 1.0]])
    assert "num" in e.value.body["error"]
