"""Every 4xx the server emits has the one error shape ``{"status":"error","error":...}`` and,
unless a retry may succeed (408 slow client, 409, 429), ``x-should-retry: false`` so the official
client sends it once, not 1 + max_retries times. (408/429/431 over raw sockets and under load:
tests/test_server_limits.py; 409 needs a store without conditional writes, which the local
directory store is not.)"""

from __future__ import annotations

import httpx
import pytest
import turbopuffer
from puffer_cli.server.app import ServeConfig

from .serve_proc import ThreadServer, sample

KEY = "err-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 4096


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    cfg = ServeConfig(store=str(tmp_path_factory.mktemp("errs")), api_key=KEY, commit_window_ms=3, max_body_bytes=LIMIT)
    s = ThreadServer(cfg)
    tpuf = turbopuffer.Turbopuffer(base_url=s.url, api_key=KEY, max_retries=0)
    tpuf.namespace("e").write(upsert_rows=[{"id": 1, "vector": [0.0, 1.0]}], distance_metric="cosine_distance")
    yield s
    s.stop()


W = "/v2/namespaces/e"
Q = "/v2/namespaces/e/query"
CASES = [
    # (method, path, body, headers, status, retry header)
    ("POST", W, b'{"upsert_rows": [{"id": 2, "vector": [1]}]}', AUTH, 400, "false"),  # wrong dims
    ("POST", W, b'{"upsert_rows": 5}', AUTH, 422, "false"),  # wrong JSON type: 422 (serde's message)
    ("POST", W, b'{"encryption": {"cmek": {"key_name": "k"}}, "deletes": [1]}', AUTH, 400, "false"),
    ("POST", Q, b'{"rank_by": ["nope", "ANN"]}', AUTH, 400, "false"),
    ("POST", Q, b'{"rank_by": ["id", "asc"], "filters": ["id", "Foo", 1]}', AUTH, 400, "false"),  # parses: 400
    ("POST", Q, b'{"rank_by": ["id", "asc"], "filters": ["id", "Eq", "x"]}', AUTH, 400, "false"),  # type: 400
    ("POST", Q, b'{"top_k": 1}', {"Authorization": "Bearer wrong"}, 401, "false"),
    ("POST", Q, b"{}", {}, 401, "false"),
    ("POST", "/v2/namespaces/missing/query", b'{"rank_by": ["id", "asc"], "top_k": 1}', AUTH, 404, "false"),
    ("GET", "/v9/nothing", b"", AUTH, 404, "false"),
    ("PUT", Q, b"{}", AUTH, 405, "false"),
    ("POST", W, b'{"deletes": [' + b"1," * LIMIT + b"1]}", AUTH, 413, "false"),
    ("POST", W, b"{not json", AUTH, 422, "false"),
    ("POST", W, b"[1, 2]", AUTH, 422, "false"),
    ("POST", W, b"", AUTH, 422, "false"),
]


@pytest.mark.parametrize("method,path,body,headers,status,retry", CASES)
def test_error_shape_and_retry_header(srv, method, path, body, headers, status, retry):
    r = httpx.request(method, srv.url + path, content=body, headers=headers)
    assert r.status_code == status, r.text
    j = r.json()
    assert set(j) == {"status", "error"} and j["status"] == "error" and isinstance(j["error"], str) and j["error"]
    assert r.headers.get("x-should-retry") == retry
    assert r.headers["content-type"].startswith("application/json")


def test_client_does_not_retry_unrecoverable_errors(srv):
    tpuf = turbopuffer.Turbopuffer(base_url=srv.url, api_key=KEY, max_retries=3)
    before = httpx.get(f"{srv.url}/metrics", headers=AUTH).text
    with pytest.raises(turbopuffer.BadRequestError):
        tpuf.namespace("e").query(rank_by=("nope", "ANN", [1.0, 0.0]), top_k=1)
    with pytest.raises(turbopuffer.NotFoundError):
        tpuf.namespace("missing").query(rank_by=("id", "asc"), top_k=1)
    after = httpx.get(f"{srv.url}/metrics", headers=AUTH).text

    def count(text: str, status: int) -> float:
        return sample(text, "puffer_http_requests_total", route="query", status=str(status))

    assert count(after, 400) - count(before, 400) == 1  # sent once, not 1 + 3 retries
    assert count(after, 404) - count(before, 404) == 1
