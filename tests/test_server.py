"""`puffer serve` over a real socket, driven by the official turbopuffer client."""

from __future__ import annotations

import base64
import gzip
import os
import re
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
import puffer_cli
import pytest
import turbopuffer
from puffer_cli.search import response
from puffer_cli.server.app import ServeConfig

from .serve_proc import ThreadServer, spawn_serve

KEY = "test-key"


class LiveServer(ThreadServer):
    """The shared in-thread server, plus a turbopuffer client for it."""

    def client(self, **kw) -> turbopuffer.Turbopuffer:
        return turbopuffer.Turbopuffer(base_url=self.url, api_key=kw.pop("api_key", KEY), max_retries=0, **kw)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("serve") / "store")


@pytest.fixture(scope="module")
def live(store_dir):
    s = LiveServer(ServeConfig(store=store_dir, api_key=KEY, commit_window_ms=3))
    yield s
    s.stop()


@pytest.fixture
def tp(live):
    return live.client()


@pytest.fixture
def ns(tp):
    return tp.namespace("t-" + uuid.uuid4().hex[:10])


def b64(v):
    return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()


def wal_count(store_dir, name):
    return len(puffer_cli.connect(store_dir).open_namespace(name).wal_keys())


def docs(store_dir, name):
    df, _ = puffer_cli.connect(store_dir).open_namespace(name).docs()
    return {r["id"]: r for r in df.to_dicts()}


# ------------------------------------------------------------------ writes
def test_upsert_rows_and_columns_float_and_base64(live, ns, store_dir):
    r = ns.write(
        upsert_rows=[{"id": 1, "vector": [0.7, 0.1], "tag": "a"}, {"id": 2, "vector": [0.2, 0.3], "tag": "b"}],
        distance_metric="cosine_distance",
    )
    assert r.status == "OK" and r.rows_upserted == 2 and r.rows_affected == 2
    assert r.billing.billable_logical_bytes_written > 0 and r.message
    r = ns.write(
        upsert_columns={"id": [3, 4], "vector": [[1.0, 0.0], [0.0, 1.0]], "tag": ["c", "d"]}, return_affected_ids=True
    )
    assert r.upserted_ids == [3, 4]
    # base64 sent explicitly over raw HTTP (the client already sends base64 itself)
    raw = httpx.post(
        f"{live.url}/v2/namespaces/{ns.id}",
        headers={"Authorization": f"Bearer {KEY}"},
        json={
            "upsert_rows": [{"id": 5, "vector": b64([0.5, 0.25]), "tag": "e"}],
            "upsert_columns": {"id": [6], "vector": [b64([0.125, 2.0])], "tag": ["f"]},
        },
    )
    assert raw.status_code == 200, raw.text
    d = docs(store_dir, ns.id)
    assert sorted(d) == [1, 2, 3, 4, 5, 6]
    assert np.allclose(d[5]["vector"], [0.5, 0.25]) and np.allclose(d[6]["vector"], [0.125, 2.0])
    assert np.float32(d[1]["vector"][0]) == np.float32(0.7)


def test_patch_delete_and_filter_writes(ns, store_dir):
    ns.write(upsert_rows=[{"id": i, "n": i, "tag": "even" if i % 2 == 0 else "odd"} for i in range(10)])
    r = ns.write(patch_rows=[{"id": 1, "n": 100}], patch_columns={"id": [2, 3], "n": [200, 300]}, deletes=[9])
    assert (r.rows_patched, r.rows_deleted) == (3, 1)
    r = ns.write(delete_by_filter=["n", "Lt", 2])
    assert r.rows_deleted == 1  # id 0
    r = ns.write(patch_by_filter={"filters": ["tag", "Eq", "even"], "patch": {"n": -1}})
    assert r.rows_patched == 4  # 2, 4, 6, 8
    d = docs(store_dir, ns.id)
    assert sorted(d) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert d[1]["n"] == 100 and d[3]["n"] == 300 and d[2]["n"] == -1 and d[8]["n"] == -1


def test_conditional_writes(ns, store_dir):
    ns.write(upsert_rows=[{"id": 1, "v": 1}, {"id": 2, "v": 5}])
    r = ns.write(
        upsert_rows=[{"id": 1, "v": 2}, {"id": 2, "v": 2}, {"id": 3, "v": 2}],
        upsert_condition=["v", "Lt", {"$ref_new": "v"}],
        return_affected_ids=True,
    )
    assert sorted(r.upserted_ids) == [1, 3]  # 2 has v=5 > 2; 3 is new
    r = ns.write(patch_rows=[{"id": 1, "v": 9}, {"id": 2, "v": 9}], patch_condition=["v", "Eq", 5])
    assert r.rows_patched == 1
    r = ns.write(deletes=[1, 2, 3], delete_condition=["v", "Eq", 9])
    assert r.rows_deleted == 1
    d = docs(store_dir, ns.id)
    assert {k: v["v"] for k, v in d.items()} == {1: 2, 3: 2}


def test_copy_from_namespace(tp, ns, store_dir):
    ns.write(upsert_rows=[{"id": i, "x": f"s{i}"} for i in range(5)])
    dst = tp.namespace(ns.id + "-copy")
    r = dst.write(copy_from_namespace=ns.id)
    assert r.rows_upserted == 5
    dst2 = tp.namespace(ns.id + "-copy2")
    dst2.copy_from(source_namespace=ns.id)
    assert dst2.metadata().approx_row_count == 5
    with pytest.raises(turbopuffer.NotFoundError):
        tp.namespace(ns.id + "-copy3").write(copy_from_namespace="does-not-exist-" + ns.id)


def test_schema_read_and_update(ns):
    ns.write(
        upsert_rows=[{"id": 1, "title": "hello world", "n": 1}],
        schema={"title": {"type": "string", "full_text_search": True}},
    )
    s = ns.schema()
    assert s["id"].type == "uint" and s["n"].type == "int"
    assert s["title"].full_text_search and s["title"].type == "string"
    s = ns.update_schema(schema={"extra": "[]string", "n": {"type": "int", "filterable": False}})
    assert s["extra"].type == "[]string" and s["n"].filterable is False
    assert ns.schema()["extra"].type == "[]string"
    with pytest.raises(turbopuffer.BadRequestError):
        ns.update_schema(schema={"n": "string"})  # type change is refused


def test_metadata(ns):
    ns.write(upsert_rows=[{"id": i, "vector": [float(i), 1.0]} for i in range(7)], distance_metric="euclidean_squared")
    m = ns.metadata()
    assert m.approx_row_count == 7 and m.approx_logical_bytes > 0
    assert m.created_at <= m.updated_at
    assert m.schema_["vector"].type == "[2]f32"
    assert m.index.status in ("updating", "up-to-date")
    assert m.encryption.mode == "default"


def test_namespaces_listing_with_paging(tp):
    prefix = "list-" + uuid.uuid4().hex[:6] + "-"
    names = [f"{prefix}{i:02d}" for i in range(7)]
    for n in names:
        tp.namespace(n).write(upsert_rows=[{"id": 1}])
    page = tp.namespaces(prefix=prefix, page_size=3)
    assert [n.id for n in page.namespaces] == names[:3] and page.next_cursor
    got = [n.id for n in tp.namespaces(prefix=prefix, page_size=3)]  # auto-paging iterator
    assert got == names


def test_delete_all_and_404(tp, ns):
    ns.write(upsert_rows=[{"id": 1}])
    assert ns.exists()
    assert ns.delete_all().status == "OK"
    assert not ns.exists()
    for call in (ns.metadata, ns.schema, ns.delete_all, ns.hint_cache_warm):
        with pytest.raises(turbopuffer.NotFoundError) as e:
            call()
        assert e.value.status_code == 404
        assert e.value.body["status"] == "error" and "not found" in e.value.body["error"]


def test_auth(live, ns):
    ns.write(upsert_rows=[{"id": 1}])
    bad = live.client(api_key="wrong").namespace(ns.id)
    with pytest.raises(turbopuffer.AuthenticationError) as e:
        bad.metadata()
    assert e.value.status_code == 401 and e.value.body["status"] == "error"
    r = httpx.get(f"{live.url}/v1/namespaces")
    assert r.status_code == 401 and r.json()["status"] == "error"
    assert httpx.get(f"{live.url}/health").json()["status"] == "ok"  # health needs no key


def test_gzip_request_bodies_and_prefer_async(live, store_dir):
    tp = live.client(compression=True)
    name = "gz-" + uuid.uuid4().hex[:8]
    rows = [{"id": i, "text": "x" * 200, "vector": [0.1 * i, 0.5]} for i in range(50)]
    assert tp.namespace(name).write(upsert_rows=rows).rows_upserted == 50
    body = gzip.compress(orjson.dumps({"upsert_rows": [{"id": 99, "text": "y"}]}))
    r = httpx.post(
        f"{live.url}/v2/namespaces/{name}?stainless_overload=whatever&unknown=1",
        content=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Encoding": "gzip", "prefer": "respond-async"},
    )
    assert r.status_code == 200 and r.json()["rows_upserted"] == 1  # answered synchronously
    assert len(docs(store_dir, name)) == 51


def test_health_and_metrics(live, ns):
    ns.write(upsert_rows=[{"id": 1}])
    r = httpx.get(f"{live.url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    t = r.text
    assert re.search(r'puffer_http_requests_total\{method="POST",route="write",status="200"\} \d+', t)
    assert "puffer_http_request_duration_seconds_bucket" in t
    assert re.search(r"puffer_wal_commits_total [1-9]", t)
    assert f'puffer_index_lag_entries{{namespace="{ns.id}"}}' in t


# ------------------------------------------------------------------ group commit
def test_32_concurrent_writers_group_commit(live, store_dir):
    name = "gc-" + uuid.uuid4().hex[:8]
    tp = live.client()
    tp.namespace(name).write(upsert_rows=[{"id": 0, "w": -1, "k": -1}])
    per = 6

    def writer(w):
        acked = []
        for k in range(per):
            rid = 1 + w * per + k
            r = tp.namespace(name).write(upsert_rows=[{"id": rid, "w": w, "k": k}])
            assert r.rows_upserted == 1
            acked.append(rid)
        return acked

    with ThreadPoolExecutor(32) as ex:
        acked = [i for part in ex.map(writer, range(32)) for i in part]
    assert len(acked) == 32 * per
    d = docs(store_dir, name)
    assert set(acked) <= set(d)
    for rid in acked:
        assert d[rid]["w"] * per + d[rid]["k"] + 1 == rid
    entries = wal_count(store_dir, name)
    requests = 32 * per + 1
    assert entries < requests / 2, f"{entries} WAL entries for {requests} requests"


def test_group_commit_keeps_conditional_writes_atomic(live, store_dir):
    """32 concurrent 'increment if v == expected' writes: exactly one wins per value."""
    name = "gcc-" + uuid.uuid4().hex[:8]
    tp = live.client()
    tp.namespace(name).write(upsert_rows=[{"id": 1, "v": 0}])

    def bump(_):
        r = tp.namespace(name).write(patch_rows=[{"id": 1, "v": 1}], patch_condition=["v", "Eq", 0])
        return r.rows_patched

    with ThreadPoolExecutor(32) as ex:
        wins = sum(ex.map(bump, range(32)))
    assert wins == 1
    assert docs(store_dir, name)[1]["v"] == 1


# ------------------------------------------------------------------ two processes
def _spawn(store_dir):
    return spawn_serve("--store", store_dir, env=dict(os.environ, PUFFER_API_KEY=KEY), stderr=subprocess.PIPE)


def test_two_serve_processes_share_one_store(tmp_path):
    store_dir = str(tmp_path / "shared")
    procs = []
    try:
        with ThreadPoolExecutor(2) as ex:
            procs = list(ex.map(lambda _: _spawn(store_dir), range(2)))
        (pa, ua), (pb, ub) = procs
        a = turbopuffer.Turbopuffer(base_url=ua, api_key=KEY, max_retries=0).namespace("shared")
        b = turbopuffer.Turbopuffer(base_url=ub, api_key=KEY, max_retries=0).namespace("shared")
        a.write(upsert_rows=[{"id": 1, "vector": [1.0, 0.0], "tag": "first"}])
        assert _strong_ids(b) == [1]
        b.write(upsert_rows=[{"id": 2, "vector": [0.0, 1.0], "tag": "second"}])
        assert _strong_ids(a) == [1, 2]
        a.write(deletes=[1])
        assert _strong_ids(b) == [2]
        # SIGTERM: clean shutdown, exit code 0
        for p, _ in procs:
            p.terminate()
        for p, _ in procs:
            assert p.wait(20) == 0
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()


def _strong_ids(ns) -> list:
    r = ns.query(rank_by=["id", "asc"], top_k=100, consistency={"level": "strong"})
    return [row.id for row in r.rows]


# ------------------------------------------------------------------ wire details and memory bound
def test_wire_f32_and_gzip_helpers():
    from puffer_cli.errors import TooLarge, UnprocessableBody
    from puffer_cli.server import wire

    out = response.dumps(
        wire.shape_query_response(
            {
                "rows": [
                    {"id": 1, "$dist": 0.699999988079071, "vector": [0.699999988079071, 0.1], "f": 0.699999988079071}
                ]
            },
            ["vector"],
        )
    )
    assert out == b'{"rows":[{"id":1,"$dist":0.7,"vector":[0.7,0.1],"f":0.699999988079071}]}'
    assert wire.decode_body(gzip.compress(b'{"a":1}'), "gzip") == b'{"a":1}'
    with pytest.raises(TooLarge):
        wire.decode_body(gzip.compress(b"x" * 10_000), "gzip", limit=1000)
    with pytest.raises(UnprocessableBody):
        wire.parse_object(b"[1]")


def test_hot_namespace_lru(tmp_path):
    from puffer_cli.server.app import Server
    from puffer_cli.wal import namespace as nsmod

    srv = Server(ServeConfig(store=str(tmp_path / "s"), hot_namespaces=2))
    for n in ("a", "b", "c"):
        srv.ns(n).write({"upsert_rows": [{"id": 1}]})
        srv.ns(n).docs()
    assert list(srv.hot) == ["b", "c"]
    keys = {k[1] for k in nsmod._CACHES if k[0] == srv.db.store.url}
    assert "a" not in keys and {"b", "c"} <= keys


def test_in_process_index_loop(tmp_path):
    pytest.importorskip("puffer_cli.index.builder")
    s = LiveServer(ServeConfig(store=str(tmp_path / "s"), api_key=KEY, index_interval=0.2))
    try:
        ns = s.client().namespace("idx")
        ns.write(upsert_rows=[{"id": i, "vector": [float(i), 1.0]} for i in range(20)])
        t0 = time.time()
        while ns.metadata().index.status != "up-to-date":
            assert time.time() - t0 < 20, "the in-process indexer did not catch up"
            time.sleep(0.1)
        assert ns.metadata().approx_row_count == 20
        r = ns.query(rank_by=["vector", "ANN", [3.0, 1.0]], top_k=3)
        assert len(r.rows) == 3
    finally:
        s.stop()
