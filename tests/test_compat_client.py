"""The compatibility table in docs/http.md ("Client compatibility") stays true: every parameter of
every namespace method of the installed turbopuffer client is listed (supported / partial /
refused), nothing listed is gone from the client, and every refused parameter is answered with a
4xx in the one error shape through the client over a real socket. On client 2.8 (nox -s
client28) the rows docs/http.md marks "not in client 2.8" are exactly those the client lacks, and
their probes send the same request bodies (extra_body, or the client's generic get/post)."""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest
import turbopuffer
from puffer_cli.server.app import ServeConfig
from turbopuffer.resources.namespaces import NamespacesResource

from ._client import MAJOR, VERSION, call, client_has
from .serve_proc import ThreadServer

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "http.md"
NOT_PARAMS = {"self", "namespace", "extra_headers", "extra_query", "extra_body", "timeout"}
NOT_METHODS = {"with_raw_response", "with_streaming_response"}
STATUSES = {"supported", "partial", "refused"}


def doc_table() -> dict[tuple[str, str], str]:
    text = DOC.read_text()
    section = text.split("## Client compatibility", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\| ([a-z_. ]+?) \| *([a-z_]*) *\| (\w+) \|", line)
        if m and m.group(1) != "method":
            assert m.group(3) in STATUSES, line
            key = (m.group(1), m.group(2))
            assert key not in rows, f"listed twice: {key}"
            rows[key] = m.group(3)
    return rows


def not_in_client_28() -> set[tuple[str, str]]:
    """The rows docs/http.md says client 2.8 does not have (its "Not in client 2.8" line)."""
    section = DOC.read_text().split("## Client compatibility", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"^Not in client 2\.8[^:]*:(.*?)\.$", section, re.M | re.S)
    assert m, "docs/http.md 'Client compatibility' has no 'Not in client 2.8 ...:' line"
    return {tuple(item.split(".", 1)) for item in re.findall(r"`([a-z_]+\.[a-z_]+)`", m[1])}


def client_params() -> set[tuple[str, str]]:
    out = set()
    for name, fn in inspect.getmembers(NamespacesResource, inspect.isfunction):
        if name.startswith("_") or name in NOT_METHODS:
            continue
        params = [p for p in inspect.signature(fn).parameters if p not in NOT_PARAMS]
        out |= {(name, p) for p in params} if params else {(name, "")}
    fn = turbopuffer.Turbopuffer.namespaces
    out |= {("client.namespaces", p) for p in inspect.signature(fn).parameters if p not in NOT_PARAMS}
    return out


def test_every_client_parameter_is_in_the_table():
    table = doc_table()
    have = client_params()
    missing = sorted(have - set(table))
    assert not missing, f"client parameters not in docs/http.md 'Client compatibility': {missing}"
    listed = {k for k in table if not k[0].startswith("client option")}
    newer = not_in_client_28()
    assert newer <= listed, sorted(newer - listed)
    stale = sorted(listed - have)
    if MAJOR < 3:  # client 2.8: what it lacks is what the doc says it lacks
        assert set(stale) == newer, f"turbopuffer {VERSION} lacks {stale}; docs/http.md says {sorted(newer)}"
    else:
        assert not stale, f"rows in docs/http.md for parameters the client no longer has: {stale}"


KEY = "compat-key"
CMEK = {"cmek": {"key_name": "k"}}
ROW = [{"id": 9, "vector": [1.0, 0.0]}]


def start_copy_from(c, name: str, **body):
    if client_has("start_copy_from"):
        return c.namespace(name).start_copy_from(**body)
    # client 2.8 has no start_copy_from: the request 3.x sends, through this client's generic post
    return c.post(f"/v2/namespaces/{name}/async", body=body, cast_to=object)


def poll_copy_from(c, name: str, token: str):
    if client_has("poll_copy_from"):
        return c.namespace(name).poll_copy_from(token=token)
    return c.get(f"/v1/namespaces/{name}/operations/{token}", cast_to=object)  # as start_copy_from


#: one call per refused row, through the client
REFUSED = {
    ("write", "encryption"): lambda c, ns: ns.write(upsert_rows=ROW, encryption=CMEK),
    ("write", "sharding"): lambda c, ns: ns.write(upsert_rows=ROW, sharding={"num_shards": 2}),
    ("query", "rerank_by"): lambda c, ns: call(ns, "query", rank_by=("id", "asc"), top_k=1, rerank_by=["RRF"]),
    ("copy_from", "source_api_key"): lambda c, ns: c.namespace("d1").copy_from(
        source_namespace="src", source_api_key="other"
    ),
    ("copy_from", "source_region"): lambda c, ns: c.namespace("d2").copy_from(
        source_namespace="src", source_region="gcp-us-central1"
    ),
    ("copy_from", "dest_encryption"): lambda c, ns: c.namespace("d3").copy_from(
        source_namespace="src", dest_encryption=CMEK
    ),
    ("start_copy_from", "source_api_key"): lambda c, ns: start_copy_from(
        c, "d4", source_namespace="src", source_api_key="other"
    ),
    ("start_copy_from", "source_region"): lambda c, ns: start_copy_from(
        c, "d4", source_namespace="src", source_region="r"
    ),
    ("start_copy_from", "dest_encryption"): lambda c, ns: start_copy_from(
        c, "d4", source_namespace="src", dest_encryption=CMEK
    ),
}


def test_every_refused_row_has_a_probe():
    refused = {k for k, v in doc_table().items() if v == "refused"}
    assert refused == set(REFUSED), (sorted(refused - set(REFUSED)), sorted(set(REFUSED) - refused))


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    cfg = ServeConfig(store=str(tmp_path_factory.mktemp("compat")), api_key=KEY, commit_window_ms=3)
    s = ThreadServer(cfg)
    s.cfg = cfg
    c = turbopuffer.Turbopuffer(base_url=s.url, api_key=KEY, max_retries=0)
    c.namespace("src").write(upsert_rows=[{"id": 1, "vector": [1.0, 0.0], "x": 0}], distance_metric="cosine_distance")
    yield s, c
    s.stop()


@pytest.mark.parametrize("key", sorted(REFUSED), ids=lambda k: f"{k[0]}.{k[1]}")
def test_refused_parameter_is_a_clear_4xx(srv, key):
    _, c = srv
    with pytest.raises(turbopuffer.APIStatusError) as e:
        REFUSED[key](c, c.namespace("src"))
    assert 400 <= e.value.status_code < 500 and e.value.status_code not in (404, 405), e.value
    body = e.value.body
    assert isinstance(body, dict) and body["status"] == "error" and body["error"]
    assert e.value.response.headers.get("x-should-retry") == "false"
    # nothing was written or copied
    assert c.namespace("src").metadata().approx_row_count == 1


def _get(x, k):
    return x[k] if isinstance(x, dict) else getattr(x, k)


def test_start_copy_from_and_poll(srv):
    """start_copy_from returns a token; the copy has run, and polling it (from any process: the
    record is in the bucket) says finished with the write's result, or the copy's error."""
    s, c = srv
    token = _get(start_copy_from(c, "async-dest", source_namespace="src"), "token")
    op = poll_copy_from(c, "async-dest", token)
    assert _get(op, "status") == "finished" and _get(op, "start_time") and _get(op, "finish_time")
    res = _get(op, "result")
    assert _get(_get(res, "success"), "rows_affected") == 1 and _get(_get(res, "success"), "status") == "OK"
    rows = c.namespace("async-dest").query(rank_by=("id", "asc"), top_k=5).rows
    assert [r.id for r in rows] == [1]
    # a second process sharing the bucket answers the poll
    s2 = ThreadServer(s.cfg)
    try:
        other = turbopuffer.Turbopuffer(base_url=s2.url, api_key=KEY, max_retries=0)
        assert _get(poll_copy_from(other, "async-dest", token), "status") == "finished"
    finally:
        s2.stop()
    # the copy fails: a finished operation with the error
    token = _get(start_copy_from(c, "async-dest2", source_namespace="nope"), "token")
    err = _get(_get(poll_copy_from(c, "async-dest2", token), "result"), "error")
    assert _get(err, "status_code") == 404 and "nope" in _get(_get(err, "detail"), "error")
    # an unknown token, a malformed start
    for bad in ("0" * 32, "not-a-token"):
        with pytest.raises(turbopuffer.NotFoundError):
            poll_copy_from(c, "async-dest", bad)
    with pytest.raises(turbopuffer.BadRequestError):
        c.post("/v2/namespaces/async-dest3/async", body={"source_namespace": 5}, cast_to=object)
