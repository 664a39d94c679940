"""Namespace lifecycle and backpressure (issue 26), through the official client over a real
socket: ``create_namespace``, schema ``drop``, ``read_only`` metadata, and 429 once a
namespace holds more unindexed WAL data than ``ServeConfig.backpressure_bytes``."""

from __future__ import annotations

import os
import time

import pytest
import turbopuffer
from puffer_cli import config
from puffer_cli.server.app import ServeConfig
from puffer_cli.server.http import ServeConfig as HttpServeConfig

from ._client import call
from .serve_proc import ThreadServer

KEY = "life-key"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = ThreadServer(
        ServeConfig(
            store=str(tmp_path_factory.mktemp("life")), api_key=KEY, commit_window_ms=3, backpressure_bytes=20_000
        )
    )
    yield s
    s.stop()


def client(srv) -> turbopuffer.Turbopuffer:
    return turbopuffer.Turbopuffer(base_url=srv.url, api_key=KEY, max_retries=0)


def test_create_namespace(srv):
    c = client(srv)
    ns = c.namespace("created")
    call(ns, "write", create_namespace=True, schema={"id": "string", "title": {"type": "string"}})
    md = ns.metadata()
    assert md.approx_row_count == 0 and set(ns.schema()) >= {"id", "title"}
    assert ns.query(rank_by=("id", "asc"), top_k=5).rows == []
    call(ns, "write", create_namespace=True, schema={"id": "string"})  # exists: nothing to do
    ns.write(upsert_rows=[{"id": "a", "title": "t"}])
    assert [r.id for r in ns.query(rank_by=("id", "asc"), top_k=5).rows] == ["a"]
    with pytest.raises(turbopuffer.BadRequestError) as e:  # an empty namespace needs the id type
        call(c.namespace("created2"), "write", create_namespace=True, schema={"title": "string"})
    assert "id" in e.value.body["error"]
    with pytest.raises(turbopuffer.NotFoundError):  # false: never created
        call(c.namespace("created3"), "write", create_namespace=False, upsert_rows=[{"id": 1}])
    with pytest.raises(turbopuffer.NotFoundError):
        c.namespace("created3").metadata()
    call(c.namespace("created4"), "write", create_namespace=True, upsert_rows=[{"id": 1}])  # with documents
    assert c.namespace("created4").metadata().approx_row_count == 1


def test_drop_attribute(srv):
    ns = client(srv).namespace("drops")
    ns.write(upsert_rows=[{"id": 1, "a": "x", "b": 1}, {"id": 2, "a": "y", "b": 2}])
    ns.write(schema={"a": {"drop": True}})
    assert "a" not in ns.schema()
    rows = ns.query(rank_by=("id", "asc"), top_k=5, include_attributes=True).rows
    assert [r.to_dict() for r in rows] == [{"id": 1, "b": 1}, {"id": 2, "b": 2}]
    ns.write(upsert_rows=[{"id": 3, "a": 7}])  # the name is free again, with any type
    rows = ns.query(rank_by=("id", "asc"), top_k=5, include_attributes=["a"]).rows
    assert [r.to_dict().get("a") for r in rows] == [None, None, 7]
    ns.write(schema={"missing": {"drop": True}})  # dropping what is not there: nothing to do
    with pytest.raises(turbopuffer.BadRequestError):
        ns.write(schema={"b": {"drop": True, "type": "int"}})
    with pytest.raises(turbopuffer.BadRequestError):
        ns.write(schema={"id": {"drop": True}})
    with pytest.raises(turbopuffer.BadRequestError):
        ns.write(schema={"b": {"drop": True}}, upsert_rows=[{"id": 4, "b": 1}])
    # through the schema endpoint too
    ns.update_schema(schema={"b": {"drop": True}})
    assert "b" not in ns.schema()


def test_read_only(srv):
    c = client(srv)
    ns = c.namespace("ro")
    ns.write(upsert_rows=[{"id": 1, "x": 1}])
    md = call(ns, "update_metadata", read_only=True)
    assert getattr(md, "read_only", None) is True or md.to_dict().get("read_only") is True
    with pytest.raises(turbopuffer.PermissionDeniedError) as e:
        ns.write(upsert_rows=[{"id": 2}])
    assert e.value.status_code == 403 and "read-only" in e.value.body["error"]
    with pytest.raises(turbopuffer.PermissionDeniedError):
        ns.update_schema(schema={"x": {"type": "int", "filterable": False}})
    with pytest.raises(turbopuffer.PermissionDeniedError):
        ns.write(deletes=[1])
    assert ns.query(rank_by=("id", "asc"), top_k=5).rows[0].id == 1  # queries still work
    md = call(ns, "update_metadata", read_only=False)
    assert "read_only" not in md.to_dict()  # omitted when false
    ns.write(upsert_rows=[{"id": 2}])
    assert ns.metadata().approx_row_count == 2


def test_backpressure(srv):
    ns = client(srv).namespace("bp")
    big = [{"id": i, "t": os.urandom(400).hex()} for i in range(60)]  # ~24+ KB of WAL (compressed): over 20 KB
    ns.write(upsert_rows=big)
    with pytest.raises(turbopuffer.RateLimitError) as e:
        ns.write(upsert_rows=[{"id": 100}])
    assert e.value.status_code == 429 and "unindexed" in e.value.body["error"]
    assert ns.write(upsert_rows=[{"id": 101}], disable_backpressure=True).rows_affected == 1
    # once indexed, writes are accepted again
    from puffer_cli.index import builder

    builder.index_namespace(srv.app.state.server.db.open_namespace("bp"))
    t0 = time.time()
    while True:
        try:
            ns.write(upsert_rows=[{"id": 102}])
            break
        except turbopuffer.RateLimitError:
            assert time.time() - t0 < 10
            time.sleep(0.1)


def test_backpressure_threshold_from_the_environment(monkeypatch):
    assert config.from_env({"PUFFER_BACKPRESSURE_BYTES": "1e6"}).backpressure_bytes == 1_000_000
    assert config.from_env({"PUFFER_BACKPRESSURE_BYTES": "x"}).backpressure_bytes is None
    monkeypatch.setenv("PUFFER_BACKPRESSURE_BYTES", "0")
    assert HttpServeConfig().backpressure_bytes == 0
    monkeypatch.delenv("PUFFER_BACKPRESSURE_BYTES")
    assert HttpServeConfig().backpressure_bytes == 2_000_000_000
