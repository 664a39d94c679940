"""turbopuffer's wire details (issue 26), each through the official client over a real socket:
422 with serde's message for a field of the wrong JSON type, ``In`` with a scalar on an array
attribute, BM25 on a ``pre_tokenized_array`` field, ``billable_logical_bytes_returned``."""

from __future__ import annotations

import pytest
import turbopuffer
from puffer_cli.server.app import ServeConfig

from ._client import call
from .serve_proc import ThreadServer

KEY = "wire-key"


@pytest.fixture(scope="module")
def tp(tmp_path_factory):
    s = ThreadServer(ServeConfig(store=str(tmp_path_factory.mktemp("wire")), api_key=KEY, commit_window_ms=3))
    yield turbopuffer.Turbopuffer(base_url=s.url, api_key=KEY, max_retries=0)
    s.stop()


@pytest.mark.parametrize(
    "body,message",
    [
        ({"upsert_rows": {"id": 1}}, "upsert_rows: invalid type: map, expected a sequence"),
        ({"upsert_rows": [[1]]}, "upsert_rows[0]: invalid type: sequence, expected a map"),
        ({"upsert_columns": [{"id": 1}]}, "upsert_columns: invalid type: sequence, expected a map"),
        ({"deletes": "1"}, 'deletes: invalid type: string "1", expected a sequence'),
        ({"distance_metric": 5, "deletes": [1]}, "distance_metric: invalid type: integer `5`, expected a string"),
        ({"return_affected_ids": "yes", "deletes": [1]}, 'return_affected_ids: invalid type: string "yes"'),
        ({"schema": {"a": 5}}, "schema.a: invalid type: integer `5`, expected a string or a map"),
        ({"patch_by_filter": {"filters": {}, "patch": {}}}, "patch_by_filter.filters: invalid type: map"),
    ],
)
def test_write_field_of_wrong_type_is_422(tp, body, message):
    ns = tp.namespace("wt")
    with pytest.raises(turbopuffer.UnprocessableEntityError) as e:
        ns.write(extra_body=body)
    assert e.value.status_code == 422 and message in e.value.body["error"], e.value.body


@pytest.mark.parametrize(
    "body,message",
    [
        ({"rank_by": {"id": "asc"}}, "rank_by: invalid type: map, expected a sequence"),
        ({"rank_by": ["id", "asc"], "top_k": "5"}, 'top_k: invalid type: string "5", expected an integer'),
        ({"rank_by": ["id", "asc"], "top_k": 2.5}, "top_k: invalid type: floating point `2.5`"),
        ({"rank_by": ["id", "asc"], "include_attributes": "x"}, 'include_attributes: invalid type: string "x"'),
        ({"rank_by": ["id", "asc"], "filters": "x = 1"}, "filters: invalid type: string"),
        ({"rank_by": ["id", "asc"], "consistency": "strong"}, "consistency: invalid type: string"),
    ],
)
def test_query_field_of_wrong_type_is_422(tp, body, message):
    ns = tp.namespace("wq")
    ns.write(upsert_rows=[{"id": 1}])
    with pytest.raises(turbopuffer.UnprocessableEntityError) as e:
        ns.query(extra_body=body)
    assert message in e.value.body["error"], e.value.body
    if "consistency" in body:
        return  # a sub-query has no consistency of its own
    with pytest.raises(turbopuffer.UnprocessableEntityError) as e:
        call(ns, "multi_query", queries=[body])
    assert "queries[0]." + message in e.value.body["error"], e.value.body


def test_a_wrong_value_of_the_right_type_stays_400(tp):
    ns = tp.namespace("wq")
    ns.write(upsert_rows=[{"id": 1}])
    with pytest.raises(turbopuffer.BadRequestError):
        ns.query(rank_by=("id", "asc"), top_k=0)
    with pytest.raises(turbopuffer.BadRequestError):
        ns.write(upsert_rows=[{"id": 2}], distance_metric="manhattan")  # type: ignore[arg-type]


def test_in_with_a_scalar_on_an_array_attribute(tp):
    ns = tp.namespace("inscalar")
    ns.write(upsert_rows=[{"id": 1, "users": ["bojan", "ann"]}, {"id": 2, "users": ["ann"]}, {"id": 3}])
    q = dict(rank_by=("id", "asc"), top_k=10)
    assert [r.id for r in ns.query(filters=("users", "In", "bojan"), **q).rows] == [1]
    assert [r.id for r in ns.query(filters=("users", "In", ["bojan"]), **q).rows] == [1]
    assert [r.id for r in ns.query(filters=("users", "NotIn", "bojan"), **q).rows] == [2, 3]
    with pytest.raises(turbopuffer.BadRequestError) as e:  # a scalar attribute still needs a list
        ns.query(filters=("id", "In", 1), **q)
    assert "needs a list" in e.value.body["error"]


def test_bm25_on_a_pre_tokenized_field_takes_tokens(tp):
    ns = tp.namespace("pretok")
    ns.write(
        upsert_rows=[{"id": 1, "content": ["the", "fox", "jumped"]}, {"id": 2, "content": ["the", "dog"]}],
        schema={"content": {"type": "[]string", "full_text_search": {"tokenizer": "pre_tokenized_array"}}},
    )
    rows = ns.query(rank_by=("content", "BM25", ["jumped"]), top_k=5).rows
    assert [r.id for r in rows] == [1]
    with pytest.raises(turbopuffer.BadRequestError) as e:
        ns.query(rank_by=("content", "BM25", "jumped"), top_k=5)
    assert 'invalid input "jumped" for rank_by field "content", expecting []string' in e.value.body["error"]


def _billed(res) -> int:
    return res.billing.billable_logical_bytes_returned


def test_billable_logical_bytes_returned(tp):
    ns = tp.namespace("bill")
    rows = [{"id": i, "vector": [0.1 * i, 1.0]} for i in range(1, 6)]
    rows[2]["s"] = "hello"
    ns.write(upsert_rows=rows, distance_metric="cosine_distance")
    everything = dict(rank_by=("vector", "ANN", [1.0, 0.0]), top_k=5, include_attributes=True)
    # the example: 5 x (8 id + 2 x 4 vector + 4 $dist) + 5 bytes of "hello"
    assert _billed(ns.query(**everything)) == 105
    # only what is returned counts: ids and $dist
    assert _billed(ns.query(rank_by=("vector", "ANN", [1.0, 0.0]), top_k=5)) == 5 * (8 + 4)
    # order by attribute: no $dist; UTF-8 bytes of strings (a 2-byte character)
    ns2 = tp.namespace("bill2")
    ns2.write(
        upsert_rows=[
            {"id": "ab", "t": "é", "n": 1, "f": 1.5, "b": True, "tags": ["x", "yz"], "ns": [1, 2, 3]},
            {"id": "c"},
        ]
    )
    res = ns2.query(rank_by=("id", "asc"), top_k=5, include_attributes=True)
    assert _billed(res) == (2 + 2 + 8 + 8 + 1 + 3 + 24) + 1
    # aggregations: 8 bytes per number
    assert _billed(ns2.query(aggregate_by={"c": ("Count",)})) == 8


def test_hosted_model_features_are_a_clear_400(tp):
    ns = tp.namespace("models")
    ns.write(
        upsert_rows=[{"id": 1, "vector": [1.0, 0.0], "t": "hi"}],
        schema={"t": {"type": "string", "full_text_search": True}},
    )
    with pytest.raises(turbopuffer.BadRequestError) as e:
        ns.query(rank_by=("vector", "ANN", ["Embed", "hello"]), top_k=1)  # type: ignore[arg-type]
    assert "hosted embedding model" in e.value.body["error"]
    with pytest.raises(turbopuffer.BadRequestError) as e:
        call(
            ns, "query", rank_by=("t", "BM25", "hi"), top_k=1, rerank_by={"attribute": "t", "model": "m", "query": "q"}
        )
    assert "hosted reranking model" in e.value.body["error"]
    with pytest.raises(turbopuffer.BadRequestError) as e:
        call(
            ns,
            "multi_query",
            queries=[{"rank_by": ("t", "BM25", "hi"), "top_k": 1}],
            rerank_by={"attribute": "t", "model": "m", "query": "q"},
        )
    assert "hosted reranking model" in e.value.body["error"]
    with pytest.raises(turbopuffer.BadRequestError) as e:
        ns.write(upsert_rows=[{"id": 2}], schema={"v2": {"type": "[2]f32", "embed": {"model": "m"}}})  # type: ignore[typeddict-unknown-key]
    assert "embedding is not supported" in e.value.body["error"]
