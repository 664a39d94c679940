"""Wire compatibility with the official turbopuffer client over a real socket: refusals
(CMEK ``encryption``) and gzip-compressed responses."""

from __future__ import annotations

import gzip
import time

import httpx
import pytest
import turbopuffer
from puffer_cli.server.app import GZIP_MIN_BYTES, ServeConfig

from ._client import call
from .serve_proc import ThreadServer

KEY = "compat-key"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = ThreadServer(ServeConfig(store=str(tmp_path_factory.mktemp("compat")), api_key=KEY, commit_window_ms=3))
    yield s
    s.stop()


def client(srv, **kw) -> turbopuffer.Turbopuffer:
    return turbopuffer.Turbopuffer(base_url=srv.url, api_key=KEY, max_retries=0, **kw)


def test_encryption_is_refused_with_400(srv):
    ns = client(srv).namespace("cmek")
    with pytest.raises(turbopuffer.BadRequestError) as e:
        ns.write(
            upsert_rows=[{"id": 1, "vector": [0.1, 0.2]}],
            distance_metric="cosine_distance",
            encryption={"cmek": {"key_name": "projects/p/locations/l/keyRings/r/cryptoKeys/k"}},
        )
    assert e.value.status_code == 400
    body = e.value.body
    assert isinstance(body, dict) and body["status"] == "error" and "encryption" in body["error"]
    # nothing was written
    with pytest.raises(turbopuffer.NotFoundError):
        ns.metadata()


def test_compressed_client_round_trip(srv):
    ns = client(srv, compression=True).namespace("gz")
    rows = [{"id": i, "vector": [i / 100, 1 - i / 100], "text": "word " * 20} for i in range(100)]
    ns.write(upsert_rows=rows, distance_metric="euclidean_squared")
    res = ns.query(rank_by=("vector", "ANN", [0.5, 0.5]), top_k=50, include_attributes=["text"])
    assert len(res.rows) == 50 and res.rows[0].text.startswith("word")


def test_response_is_gzip_on_the_wire(srv):
    ns = client(srv).namespace("gzwire")
    ns.write(upsert_rows=[{"id": i, "t": "x" * 40} for i in range(200)])
    url = f"{srv.url}/v2/namespaces/gzwire/query"
    body = {"rank_by": ["id", "asc"], "top_k": 200, "include_attributes": ["t"]}
    hdr = {"Authorization": f"Bearer {KEY}", "Accept-Encoding": "gzip"}
    with httpx.Client() as h:
        raw = h.build_request("POST", url, json=body, headers=hdr)
        r = h.send(raw, stream=True)
        data = b"".join(r.iter_raw())
        r.close()
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert len(gzip.decompress(data)) >= GZIP_MIN_BYTES
    # small responses and requests without the header stay plain
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {KEY}", "Accept-Encoding": "identity"})
    assert r.status_code == 200 and "content-encoding" not in r.headers
    r = httpx.post(url, json={**body, "top_k": 1}, headers=hdr)
    assert "content-encoding" not in r.headers


def test_explain_query_exhaustive(srv):
    ns = client(srv).namespace("explain")
    ns.write(upsert_rows=[{"id": i, "vector": [float(i), 1.0]} for i in range(30)], distance_metric="cosine_distance")
    plan = ns.explain_query(rank_by=("vector", "ANN", [3.0, 1.0]), top_k=5).plan_text
    assert plan and "path: exhaustive" in plan
    assert "rows in namespace (approx): 30" in plan and "rows scored exactly: 30" in plan
    assert "rows returned: 5" in plan
    with pytest.raises(turbopuffer.BadRequestError):
        ns.explain_query(rank_by=("nope", "ANN", [3.0, 1.0]), top_k=5)
    with pytest.raises(turbopuffer.NotFoundError):
        client(srv).namespace("explain-missing").explain_query(rank_by=("id", "asc"), top_k=1)


def test_explain_query_indexed(tmp_path):
    pytest.importorskip("puffer_cli.index.builder")
    s = ThreadServer(ServeConfig(store=str(tmp_path / "s"), api_key=KEY, index_interval=0.2))
    try:
        ns = client(s).namespace("idx")
        ns.write(upsert_rows=[{"id": i, "vector": [float(i), 1.0]} for i in range(40)])
        t0 = time.time()
        while ns.metadata().index.status != "up-to-date":
            assert time.time() - t0 < 20, "the in-process indexer did not catch up"
            time.sleep(0.1)
        plan = ns.explain_query(rank_by=("vector", "ANN", [3.0, 1.0]), top_k=3).plan_text
        assert "path: index" in plan and "(0 WAL entries unindexed)" in plan, plan
    finally:
        s.stop()


def test_update_metadata_pinning_and_read_only(srv):
    ns = client(srv).namespace("pin")
    ns.write(upsert_rows=[{"id": 1, "vector": [0.1, 0.2]}])
    with pytest.raises(turbopuffer.BadRequestError) as e:
        ns.update_metadata(pinning=True)
    assert "pinning" in e.value.body["error"]
    with pytest.raises(turbopuffer.BadRequestError):
        ns.update_metadata(pinning={"replicas": 2})
    # read_only is stored (tests/test_namespace_lifecycle.py); false states what is true here
    # turning them off states what is true: the metadata is answered
    assert call(ns, "update_metadata", pinning=False, read_only=False).approx_row_count == 1
    assert ns.update_metadata(pinning=None).approx_row_count == 1
    with pytest.raises(turbopuffer.NotFoundError):
        client(srv).namespace("pin-missing").update_metadata(pinning=False)


def test_recall_ground_truth_only_when_asked(srv):
    ns = client(srv).namespace("rec")
    ns.write(upsert_rows=[{"id": i, "vector": [float(i), 1.0]} for i in range(20)])
    r = ns.recall(num=3, top_k=2, include_ground_truth=False)
    assert r.avg_recall == 1.0 and r.ground_truth is None
    r = ns.recall(num=1, top_k=2, include_ground_truth=True)
    assert r.ground_truth is not None and len(r.ground_truth[0].nearest_neighbors) == 2
    with pytest.raises(turbopuffer.BadRequestError) as e:
        ns.recall(num=1, top_k=2, rank_by=["id", "asc"])
    assert "rank_by" in e.value.body["error"]
