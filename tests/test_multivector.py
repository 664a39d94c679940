"""Multi-vector (late interaction, issue 26): the ``[][N]f32`` type with ``ann.late_interaction``,
validated writes, exact MaxSim (``$dist`` = sum over query vectors of the nearest document
vector's distance) against a numpy reference, the MUVERA index equal to the exact answer at
full probe on local, memory and S3 (moto), the official client over a real socket, and hostile
input answered 4xx, never 5xx."""

from __future__ import annotations

import numpy as np
import pytest
import turbopuffer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from puffer_cli import limits as L
from puffer_cli.errors import PufferError
from puffer_cli.index import ivf
from puffer_cli.index import muvera as M
from puffer_cli.search import multivector as MV
from puffer_cli.server.app import ServeConfig

from .serve_proc import ThreadServer

SCHEMA = {"tok": {"type": "[][4]f32", "ann": {"distance_metric": "cosine_distance", "late_interaction": True}}}


def ref_dist(doc: np.ndarray, q: np.ndarray, metric: str) -> float:
    """numpy reference of $dist: sum over query vectors of min over document vectors."""
    doc = np.asarray(doc, np.float64)
    q = np.asarray(q, np.float64)
    if metric == "cosine_distance":
        dn = np.linalg.norm(doc, axis=1)[:, None]
        qn = np.linalg.norm(q, axis=1)[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(dn * qn > 0, 1.0 - (doc @ q.T) / (dn * qn), 1.0)
        d = np.clip(d, 0.0, 2.0)
    else:
        d = ((doc[:, None, :] - q[None, :, :]) ** 2).sum(axis=2)
    return float(d.min(axis=0).sum())


def ref_top(docs: dict[int, np.ndarray], q, metric: str, k: int) -> list[tuple[int, float]]:
    scored = sorted((ref_dist(v, q, metric), i) for i, v in docs.items() if v is not None)
    return [(i, d) for d, i in scored[:k]]


def clustered(n: int, dims: int, seed: int = 0) -> tuple[dict[int, np.ndarray], np.random.Generator, np.ndarray]:
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(40, dims))
    docs = {
        i: (cent[rng.integers(0, 40, size=rng.integers(1, 6))] + 0.3 * rng.normal(size=(1, dims))).astype(np.float32)
        for i in range(n)
    }
    return docs, rng, cent


def write_docs(ns, docs: dict[int, np.ndarray], schema=SCHEMA, batch: int = 1000, **extra) -> None:
    items = list(docs.items())
    for a in range(0, len(items), batch):
        rows = [{"id": i, "tok": None if v is None else v.tolist(), "g": i % 3} for i, v in items[a : a + batch]]
        ns.write({"upsert_rows": rows, "schema": schema, "distance_metric": "cosine_distance", **extra})


def top(ns, q, k=10, method="ANN", **kw) -> list[tuple[int, float]]:
    return [(r["id"], r["$dist"]) for r in ns.query(rank_by=["tok", method, np.asarray(q).tolist()], top_k=k, **kw)]


def same(got, want) -> None:
    assert [i for i, _ in got] == [i for i, _ in want], (got, want)
    assert np.allclose([d for _, d in got], [d for _, d in want], atol=1e-5)


# ------------------------------------------------------------------------- schema and writes
@pytest.mark.parametrize(
    "spec,message",
    [
        ({"type": "[][4]f32", "ann": True}, "late_interaction: true is required"),
        ({"type": "[4]f32", "ann": {"late_interaction": True}}, "only valid on multi-vector"),
        ({"type": "[][4]f32", "filterable": True}, "cannot be filterable"),
        ({"type": "[][0]f32"}, "0 dimensions"),
        ({"type": "[][99999]f32"}, "dimensions"),
        ({"type": "[][4]f16"}, "unknown type"),
        ({"type": "[][4]f32", "ann": {"late_interaction": "yes"}}, "true or false"),
        ({"type": "[][4]f32", "full_text_search": True}, "full_text_search needs type string"),
    ],
)
def test_schema_refusals(mem_db, spec, message):
    ns = mem_db.namespace("s")
    with pytest.raises(PufferError) as e:
        ns.write({"upsert_rows": [{"id": 1}], "schema": {"tok": spec}})
    assert message in str(e.value) and e.value.status < 500


def test_schema_is_stored_and_reported(mem_db):
    ns = mem_db.namespace("s")
    ns.write({"upsert_rows": [{"id": 1, "tok": [[1, 0, 0, 0]]}], "schema": SCHEMA})
    assert ns.schema()["tok"] == {"type": "[][4]f32", "filterable": False, "ann": SCHEMA["tok"]["ann"]}


@pytest.mark.parametrize(
    "value,message",
    [
        ([], "at least one vector"),
        ([[1, 2, 3]], "vector 0 has 3 dimensions"),
        ([[1, 2, 3, 4], [1, 2]], "vector 1 has 2 dimensions"),
        ([[float("nan"), 0, 0, 0]], "NaN"),
        ([[float("inf"), 0, 0, 0]], "NaN, infinity"),
        ([[1e39, 0, 0, 0]], "beyond float32"),
        ([["a", 0, 0, 0]], "must be an array of numbers"),
        ([[True, 0, 0, 0]], "must be an array of numbers"),
        ([1, 2, 3, 4], "must be an array of numbers"),
        ("AAAA", "expected a list of vectors"),
        ({"a": 1}, "expected a list of vectors"),
        ([[1, 0, 0, 0]] * (L.MAX_MULTI_VECTORS + 1), "holds at most 2048"),
        (["AAAA"], "not a multiple of 4"),
        (["AAAAAA=="], "vector 0 has 1 dimensions"),
    ],
)
def test_write_refusals(mem_db, value, message):
    ns = mem_db.namespace("w")
    ns.write({"upsert_rows": [{"id": 1, "tok": [[1, 0, 0, 0]]}], "schema": SCHEMA})
    for body in (
        {"upsert_rows": [{"id": 2, "tok": value}]},
        {"upsert_columns": {"id": [2], "tok": [value]}},
        {"patch_rows": [{"id": 1, "tok": value}]},
    ):
        with pytest.raises(PufferError) as e:
            ns.write(body)
        assert message in str(e.value) and 400 <= e.value.status < 500, (body, str(e.value))
    assert [r["id"] for r in ns.query(rank_by=["id", "asc"], top_k=10)] == [1]


def test_writes_patch_delete_export_round_trip(mem_db, tmp_path):
    import base64

    import polars as pl

    ns = mem_db.namespace("rt")
    b64 = base64.b64encode(np.array([0, 1, 0, 0], "<f4").tobytes()).decode()
    ns.write(
        {
            "upsert_rows": [{"id": 1, "tok": [[1, 0, 0, 0], [0, 0.5, 0, 0]]}, {"id": 2, "tok": [b64]}, {"id": 3}],
            "schema": SCHEMA,
        }
    )
    ns.write({"upsert_columns": {"id": [4], "tok": [[[0, 0, 1, 0]]]}})
    ns.write({"patch_rows": [{"id": 3, "tok": [[0, 0, 0, 2]]}], "deletes": [4]})
    got = {r["id"]: r.get("tok") for r in ns.query(rank_by=["id", "asc"], top_k=10, include_attributes=["tok"])}
    assert got == {1: [[1, 0, 0, 0], [0, 0.5, 0, 0]], 2: [[0, 1, 0, 0]], 3: [[0, 0, 0, 2]]}
    out = tmp_path / "x.parquet"
    ns.export(str(out))
    df = pl.read_parquet(out).sort("id")
    assert df.schema["tok"] == pl.List(pl.Array(pl.Float32, 4))
    back = mem_db.namespace("rt2")
    back.ingest(str(out), schema=SCHEMA)
    again = {r["id"]: r.get("tok") for r in back.query(rank_by=["id", "asc"], top_k=10, include_attributes=["tok"])}
    assert again == got


def test_untyped_multi_vector_value_needs_the_schema(mem_db):
    ns = mem_db.namespace("u")
    with pytest.raises(PufferError) as e:
        ns.write({"upsert_rows": [{"id": 1, "tok": [[1, 2], [3, 4]]}]})
    assert e.value.status < 500 and "[][N]f32" in (e.value.hint or "")


def test_filters_on_a_multi_vector_attribute_are_refused(mem_db):
    ns = mem_db.namespace("f")
    ns.write({"upsert_rows": [{"id": 1, "tok": [[1, 0, 0, 0]]}], "schema": SCHEMA})
    with pytest.raises(PufferError) as e:
        ns.query(rank_by=["id", "asc"], filters=["tok", "Eq", 1])
    assert e.value.status < 500


# ------------------------------------------------------------------------- exact MaxSim
vec4 = st.lists(st.floats(-4, 4, width=32, allow_subnormal=False), min_size=4, max_size=4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    docs=st.lists(st.one_of(st.none(), st.lists(vec4, min_size=1, max_size=5)), min_size=1, max_size=25),
    q=st.lists(vec4, min_size=1, max_size=4),
    metric=st.sampled_from(["cosine_distance", "euclidean_squared"]),
    k=st.integers(1, 8),
)
def test_exact_maxsim_matches_numpy(mem_db, docs, q, metric, k):
    import uuid

    ns = mem_db.namespace(f"h{uuid.uuid4().hex[:8]}")
    schema = {"tok": {"type": "[][4]f32", "ann": {"distance_metric": metric, "late_interaction": True}}}
    rows = [{"id": i, "tok": v} for i, v in enumerate(docs)]
    ns.write({"upsert_rows": rows, "schema": schema, "distance_metric": metric})
    want = ref_top({i: None if v is None else np.asarray(v, np.float32) for i, v in enumerate(docs)}, q, metric, k)
    for method in ("kNN", "ANN"):
        got = top(ns, q, k, method)
        # the exact engine breaks exact ties by id; the reference's float64 sums may differ in the last bits
        assert [i for i, _ in got] == [i for i, _ in want] or np.allclose(
            [d for _, d in got], [d for _, d in want], atol=1e-6
        )
        assert np.allclose([d for _, d in got], [d for _, d in want], atol=1e-6)


def test_one_query_vector_on_one_document_vector_is_the_dense_distance(mem_db):
    ns = mem_db.namespace("one")
    ns.write({"upsert_rows": [{"id": 1, "tok": [[1, 1, 0, 0]]}], "schema": SCHEMA})
    (row,) = ns.query(rank_by=["tok", "kNN", [1, 0, 0, 0]], top_k=1)
    assert row["$dist"] == pytest.approx(1 - 1 / np.sqrt(2))
    (row,) = ns.query(rank_by=["tok", "kNN", [[1, 0, 0, 0], [0, 1, 0, 0]]], top_k=1)
    assert row["$dist"] == pytest.approx(2 * (1 - 1 / np.sqrt(2)))


# ------------------------------------------------------------------------- the index
def test_fde_approximates_maxsim():
    """The dot product of FDEs ranks sets of vectors the way MaxSim does (roughly)."""
    docs, rng, cent = clustered(400, 16, seed=3)
    off = np.concatenate([[0], np.cumsum([len(v) for v in docs.values()])])
    tok = np.concatenate(list(docs.values()))
    p = M.Params(16)
    f = M.doc_fdes(tok, off, p, True)
    assert f.shape == (400, p.fde_dims) and np.isfinite(f).all()
    hits = 0
    for _ in range(10):
        q = cent[rng.integers(0, 40, size=3)] + 0.1 * rng.normal(size=(3, 16))
        best = {i for i, _ in ref_top(docs, q, "cosine_distance", 10)}
        cand = np.argsort(-(f @ M.query_fde(q.astype(np.float32), p, True)))[:100]
        hits += len(best & set(cand.tolist()))
    assert hits >= 70  # of 100


def test_indexed_equals_exact_at_full_probe(db):
    docs, rng, _ = clustered(2600, 8)  # more rows than multivector.EXACT_MAX_ROWS: the IVF is searched
    ns = db.namespace("mvix")
    schema = {"tok": {"type": "[][8]f32", "ann": {"late_interaction": True, "rerank": 1000}}}
    docs[7] = None  # a document without vectors never ranks
    write_docs(ns, docs, schema)
    qs = [
        np.concatenate([docs[int(i)][:2] for i in rng.integers(0, 2600, 2) if docs[int(i)] is not None])
        for _ in range(4)
    ]
    want = [top(ns, q) for q in qs]  # exact: the WAL
    for q, w in zip(qs, want):
        same(w, ref_top(docs, q, "cosine_distance", 10))
    ns.index()
    seg = db.open_namespace("mvix")
    assert seg is not None
    with ivf.override(probe=1.0):
        for q, w in zip(qs, want):
            same(top(ns, q), w)
            same(top(ns, q, method="kNN"), w)
            f = top(ns, q, filters=["g", "Eq", 1])
            same(f, ref_top({i: v for i, v in docs.items() if i % 3 == 1}, q, "cosine_distance", 10))
    # a WAL tail over the index: new rows, a patched row, a deleted row
    best = want[0][0][0]
    ns.write({"upsert_rows": [{"id": 5000, "tok": np.asarray(qs[0]).tolist()}], "deletes": [best]})
    docs[5000], docs[best] = np.asarray(qs[0], np.float32), None
    with ivf.override(probe=1.0):
        got = top(ns, qs[0])
        same(got, ref_top(docs, qs[0], "cosine_distance", 10))
        assert got[0][0] == 5000 and got[0][1] == pytest.approx(0.0, abs=1e-6)
    ns.index()
    with ivf.override(probe=1.0):
        same(top(ns, qs[0]), ref_top(docs, qs[0], "cosine_distance", 10))
        same(top(ns, qs[1], consistency="eventual"), ref_top(docs, qs[1], "cosine_distance", 10))


def test_default_probe_finds_most(local_db):
    docs, rng, cent = clustered(3000, 8, seed=5)
    ns = local_db.namespace("rec")
    write_docs(ns, docs, {"tok": {"type": "[][8]f32", "ann": {"late_interaction": True}}})
    ns.index()
    hit = 0
    for _ in range(10):
        q = (cent[rng.integers(0, 40, size=3)] + 0.1 * rng.normal(size=(3, 8))).astype(np.float32)
        hit += len({i for i, _ in top(ns, q)} & {i for i, _ in top(ns, q, method="kNN")})
    assert hit >= 70


def test_token_centroids_find_what_the_encoding_misses(local_db, monkeypatch):
    """The FDE IVF probed at one list finds little; the token-level candidates (PLAID
    centroid interaction over every token's centroid) find the exact top 10 anyway."""
    docs, rng, cent = clustered(3000, 8, seed=7)
    ns = local_db.namespace("plaid")
    ann = {"late_interaction": True, "probe": 1e-4, "probe_min_rows": 0, "fill": 0.0}
    write_docs(ns, docs, {"tok": {"type": "[][8]f32", "ann": ann}})
    ns.index()
    qs = [(cent[rng.integers(0, 40, size=3)] + 0.1 * rng.normal(size=(3, 8))).astype(np.float32) for _ in range(8)]
    exact = [top(ns, q, method="kNN") for q in qs]
    both = sum(len({i for i, _ in top(ns, q)} & {i for i, _ in w}) for q, w in zip(qs, exact))
    monkeypatch.setattr(MV._SegIndex, "plaid", lambda self: None)  # the encodings alone
    fde = sum(len({i for i, _ in top(ns, q)} & {i for i, _ in w}) for q, w in zip(qs, exact))
    assert both >= 76 and fde < both  # of 80


def test_centroid_candidates_respect_the_selection():
    off = np.array([0, 2, 2, 3, 5], np.int64)  # row 1 has no vectors
    cent = np.eye(3, dtype=np.float32)
    codes = np.array([0, 1, 2, 0, 2], np.uint16)
    q = np.array([[1, 0, 0]], np.float32)
    got = MV.centroid_candidates(off, cent, codes, q, "cosine_distance", None, 2)
    assert got.tolist() == [0, 3]
    sel = np.array([False, True, True, True])
    assert MV.centroid_candidates(off, cent, codes, q, "cosine_distance", sel, 1).tolist() == [3]
    assert MV.centroid_candidates(off, cent, codes, q, "euclidean_squared", sel, 5).tolist() == [2, 3]


def test_query_refusals(mem_db):
    ns = mem_db.namespace("qr")
    ns.write({"upsert_rows": [{"id": 1, "tok": [[1, 0, 0, 0]], "v": [1, 0]}], "schema": {**SCHEMA, "v": "[2]f32"}})
    for rb, message in (
        (["tok", "ANN", [[1, 0, 0]]], "3 dimensions"),
        (["tok", "ANN", [[1, 0, 0, 0], [1, 0]]], "different dimensions"),
        (["tok", "ANN", [[1, 0, 0, 0]] * (L.MAX_QUERY_VECTORS + 1)], "MAX_QUERY_VECTORS"),
        (["tok", "ANN", [[]]], "empty"),
        (["tok", "ANN", [[1, 0, 0, float("nan")]]], "finite"),
        (["tok", "ANN", [[[1, 0, 0, 0]]]], "numbers"),
        (["v", "ANN", [[1, 0], [0, 1]]], "several query vectors need a multi-vector"),
    ):
        with pytest.raises(PufferError) as e:
            ns.query(rank_by=rb, top_k=3)
        assert 400 <= e.value.status < 500 and message in str(e.value), (rb, str(e.value))


# ------------------------------------------------------------------------- official client
KEY = "mv-key"


@pytest.fixture(scope="module")
def tp(tmp_path_factory):
    s = ThreadServer(ServeConfig(store=str(tmp_path_factory.mktemp("mv")), api_key=KEY, commit_window_ms=3))
    yield turbopuffer.Turbopuffer(base_url=s.url, api_key=KEY, max_retries=0)
    s.stop()


def test_official_client(tp):
    ns = tp.namespace("mvc")
    ns.write(
        upsert_rows=[
            {"id": 1, "tok": [[1.0, 0.0], [0.0, 1.0]], "name": "a"},
            {"id": 2, "tok": [[0.7, 0.7]], "name": "b"},
            {"id": 3, "name": "c"},
        ],
        schema={"tok": {"type": "[][2]f32", "ann": {"distance_metric": "cosine_distance", "late_interaction": True}}},
        distance_metric="cosine_distance",
    )
    r = ns.query(rank_by=("tok", "ANN", [[1.0, 0.0], [0.0, 1.0]]), top_k=5, include_attributes=["tok", "name"])
    rows = r.rows or []
    assert [row.id for row in rows] == [1, 2]
    assert rows[0]["$dist"] == 0.0 and rows[0]["tok"] == [[1.0, 0.0], [0.0, 1.0]]
    assert rows[1]["tok"] == [[0.7, 0.7]]  # shortest f32 form
    r = ns.query(rank_by=("tok", "kNN", [[0.7, 0.7]]), top_k=1)
    assert [row.id for row in r.rows or []] == [2]
    sch = ns.schema()
    assert sch["tok"].type == "[][2]f32" and sch["tok"].ann is not None


@pytest.mark.parametrize(
    "body",
    [
        {"rank_by": ["tok", "ANN", [[1.0, 0.0]] * 300]},
        {"rank_by": ["tok", "ANN", [[1.0]]]},
        {"rank_by": ["tok", "ANN", [[[1.0, 0.0]]]]},
        {"rank_by": ["tok", "ANN", [["x", 1.0]]]},
        {"rank_by": ["tok", "ANN", [{"a": 1}]]},
        {"rank_by": ["tok", "ANN", [[]]]},
        {"rank_by": ["tok", "ANN", [[1e39, 0.0]]]},
        {"rank_by": ["tok", "ANN", ["AAAA"]]},
        {"rank_by": ["tok", "BM25", [[1.0, 0.0]]]},
        {"rank_by": ["tok", "asc"]},
        {"rank_by": ["name", "ANN", [[1.0, 0.0]]]},
        {"rank_by": ["id", "asc"], "filters": ["tok", "Eq", [[1.0, 0.0]]]},
    ],
)
def test_hostile_queries_are_4xx(tp, body):
    ns = tp.namespace("mvh")
    ns.write(
        upsert_rows=[{"id": 1, "tok": [[1.0, 0.0]], "name": "a"}],
        schema={"tok": {"type": "[][2]f32", "ann": {"late_interaction": True}}},
    )
    with pytest.raises(turbopuffer.APIStatusError) as e:
        ns.query(extra_body={"top_k": 3, **body})
    assert 400 <= e.value.status_code < 500, e.value.body


@pytest.mark.parametrize(
    "tok",
    [[], [[1.0]], [[1.0, 0.0, 0.0]], [["x", "y"]], [[None, 1.0]], "x", 5, {"a": [1.0, 0.0]}, [[[1.0, 0.0]]]],
)
def test_hostile_writes_are_4xx(tp, tok):
    ns = tp.namespace("mvhw")
    with pytest.raises(turbopuffer.APIStatusError) as e:
        ns.write(
            upsert_rows=[{"id": 1, "tok": tok}],
            schema={"tok": {"type": "[][2]f32", "ann": {"late_interaction": True}}},
        )
    assert 400 <= e.value.status_code < 500, e.value.body


def test_query_vectors_are_checked_against_limits():
    assert L.MAX_QUERY_VECTORS >= 32 and L.MAX_MULTI_VECTORS >= 1024
    assert MV.EXACT_MAX_ROWS < 2600  # test_indexed_equals_exact_at_full_probe searches the IVF
