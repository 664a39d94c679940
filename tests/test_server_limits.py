"""`puffer serve` limits: query budgets, slow clients, bytes in flight, disconnects, store
failures, bind errors. Nothing a request sends crashes the server, holds a worker past its
budget, or gets a 500.

Most tests drive the app in-process (starlette's TestClient); slow-client and disconnect tests
talk to a real uvicorn socket, started with the same protocol and options as ``puffer serve``.
Timeouts are set small so the module runs in a few seconds.
"""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import threading
import time
import uuid

import httpx
import numpy as np
import orjson
import pytest
from puffer_cli import limits
from puffer_cli.errors import InvalidRequest
from puffer_cli.search import engine, response
from puffer_cli.server import wire
from puffer_cli.server.app import ServeConfig, create_app
from puffer_cli.server.http import is_store_failure
from puffer_cli.server.proto import bind
from puffer_cli.wal.groupcommit import GroupCommitter
from starlette.testclient import TestClient

from .serve_proc import ThreadServer, sample

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}


def check_error(r, status: int, *, no_retry: bool | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"status", "error"} and body["status"] == "error" and body["error"], body
    if no_retry is True:
        assert r.headers.get("x-should-retry") == "false"
    elif no_retry is False:
        assert r.headers.get("x-should-retry") != "false"
    return body


def mem_cfg(**kw) -> ServeConfig:
    return ServeConfig(store=f"memory://{uuid.uuid4().hex}", api_key=KEY, commit_window_ms=0, **kw)


@pytest.fixture
def make_client():
    clients = []

    def make(**kw) -> TestClient:
        c = TestClient(create_app(mem_cfg(**kw)), raise_server_exceptions=False)
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def seed(c: TestClient, name: str = "ns") -> None:
    r = c.post(f"/v2/namespaces/{name}", headers=AUTH, json={"upsert_rows": [{"id": 1, "n": 1}]})
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------ query budget
def test_budget_reaches_the_worker_thread(make_client, monkeypatch):
    seen = {}

    def fake_query(ns, body):
        seen["remaining"] = limits.remaining()
        seen["thread"] = threading.current_thread().name
        return {"rows": []}

    monkeypatch.setattr(engine, "run_query", fake_query)
    c = make_client(query_budget_s=7.0)
    seed(c)
    r = c.post("/v2/namespaces/ns/query", headers=AUTH, json={"rank_by": ["id", "asc"], "top_k": 1})
    assert r.status_code == 200, r.text
    assert seen["thread"] != threading.current_thread().name
    assert seen["remaining"] is not None and 0 < seen["remaining"] <= 7.0


def test_query_that_checks_its_deadline_gets_408_no_retry(make_client, monkeypatch):
    def slow_query(ns, body):
        while True:  # what the library does between stages
            limits.check_deadline()
            time.sleep(0.01)

    monkeypatch.setattr(engine, "run_query", slow_query)
    monkeypatch.setattr(engine, "run_multi", slow_query)
    c = make_client(query_budget_s=0.2)
    seed(c)
    t0 = time.monotonic()
    r = c.post("/v2/namespaces/ns/query", headers=AUTH, json={"rank_by": ["id", "asc"]})
    body = check_error(r, 408, no_retry=True)
    assert "budget" in body["error"]
    r = c.post("/v2/namespaces/ns/query", headers=AUTH, json={"queries": [{"rank_by": ["id", "asc"]}]})
    check_error(r, 408, no_retry=True)
    assert time.monotonic() - t0 < 20
    assert sample(c.get("/metrics", headers=AUTH).text, "puffer_http_requests_total", route="query", status="408") == 2


def test_stuck_query_is_answered_at_its_budget_and_frees_its_slot(make_client, monkeypatch):
    release = threading.Event()
    real = engine.run_query

    def query(ns, body):
        if body.get("top_k") == 7:  # the "hostile" one: stuck inside one call, never checks
            release.wait(30)
            return {"rows": []}
        return real(ns, body)

    monkeypatch.setattr(engine, "run_query", query)
    c = make_client(query_budget_s=0.3, query_threads=1)
    seed(c)
    try:
        t0 = time.monotonic()
        check_error(
            c.post("/v2/namespaces/ns/query", headers=AUTH, json={"rank_by": ["id", "asc"], "top_k": 7}),
            408,
            no_retry=True,
        )
        assert time.monotonic() - t0 < 20 and not release.is_set()
        assert sample(c.get("/metrics", headers=AUTH).text, "puffer_abandoned_query_threads") == 1
        # the only query slot is free again although the stuck thread still runs
        r = c.post("/v2/namespaces/ns/query", headers=AUTH, json={"rank_by": ["id", "asc"], "top_k": 5})
        assert r.status_code == 200 and [row["id"] for row in r.json()["rows"]] == [1]
    finally:
        release.set()
    for _ in range(200):
        if sample(c.get("/metrics", headers=AUTH).text, "puffer_abandoned_query_threads") == 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("abandoned thread was not counted down")


def test_filter_writes_run_alone_under_the_budget():
    import asyncio

    calls = []

    class NS:
        def write_batch(self, bodies, copy_source=None):
            calls.append(([sorted(b) for b in bodies], limits.remaining()))
            return [{"status": "OK"} for _ in bodies]

    async def main():
        gc = GroupCommitter(lambda name: NS(), window_s=0.01, filter_budget_s=5.0)
        bodies = [
            {"upsert_rows": [1]},
            {"delete_by_filter": ["n", "Eq", 1]},
            {"deletes": [1]},
            {"patch_by_filter": {"filters": ["n", "Eq", 1], "patch": {}}},
            {"upsert_rows": [2]},
        ]
        await asyncio.gather(*(gc.submit("a", b) for b in bodies))

    asyncio.run(main())
    batches = [b for b, _ in calls]
    assert batches == [
        [["upsert_rows"]],
        [["delete_by_filter"]],
        [["deletes"]],
        [["patch_by_filter"]],
        [["upsert_rows"]],
    ]
    budgets = [rem for _, rem in calls]
    assert budgets[0] is None and budgets[2] is None and budgets[4] is None
    assert 0 < budgets[1] <= 5.0 and 0 < budgets[3] <= 5.0


# ------------------------------------------------------------------ error shape and retry hints
def test_error_shape_and_retry_headers(make_client):
    c = make_client(max_body_bytes=1024)
    seed(c)
    check_error(c.get("/nope", headers=AUTH), 404, no_retry=True)
    check_error(c.put("/v2/namespaces/ns", headers=AUTH), 405, no_retry=True)
    check_error(c.post("/v2/namespaces/ns/query", headers=AUTH, json={"top_k": -1}), 400, no_retry=True)
    check_error(c.post("/v2/namespaces/ns", headers=AUTH, content=b"[1]"), 422, no_retry=True)
    check_error(c.post("/v2/namespaces/ns", headers=AUTH, content=b"x" * 2000), 413, no_retry=True)
    check_error(c.get("/v2/namespaces/ns/metadata"), 401, no_retry=True)
    check_error(c.get("/v2/namespaces/missing/metadata", headers=AUTH), 404, no_retry=True)


def test_gzip_bomb_is_refused_cheaply(make_client):
    c = make_client(max_body_bytes=64 * 1024)
    bomb = gzip.compress(b" " * (16 * 1024 * 1024), compresslevel=1)  # 16 MiB of spaces in <100 KiB of gzip
    assert len(bomb) < 100 * 1024
    t0 = time.monotonic()
    r = c.post("/v2/namespaces/bomb", headers={**AUTH, "content-encoding": "gzip"}, content=bomb)
    check_error(r, 413, no_retry=True)
    assert time.monotonic() - t0 < 10
    check_error(c.get("/v2/namespaces/bomb/metadata", headers=AUTH), 404)


def test_gzip_inflation_counts_against_bytes_in_flight():
    grown = []
    out = wire.decode_body(gzip.compress(b"a" * 3_000_000), "gzip", limit=4_000_000, on_grow=grown.append)
    assert len(out) == 3_000_000 and sum(grown) == 3_000_000 and max(grown) <= wire.INFLATE_STEP


def test_responses_are_valid_json_without_nan():
    raw = response.dumps(
        {"a": float("nan"), "b": float("inf"), "v": np.array([np.nan, 1.0], dtype="<f4"), "d": np.float32("nan")}
    )

    def no_constants(x):
        raise AssertionError(f"bare {x} in JSON output")

    assert json.loads(raw, parse_constant=no_constants) == {"a": None, "b": None, "v": [None, 1.0], "d": None}


# ------------------------------------------------------------------ store failures
def test_store_failure_classification():
    import botocore.exceptions as bx

    assert is_store_failure(bx.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_store_failure(bx.NoCredentialsError())
    assert is_store_failure(ConnectionRefusedError(111, "refused"))
    assert is_store_failure(TimeoutError("read timed out"))
    for bug in (ValueError("x"), KeyError("k"), TypeError("t"), FileNotFoundError(2, "gone"), RecursionError()):
        assert not is_store_failure(bug)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_s3_endpoint_is_503(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # connection refused: fail fast (the store may retry itself)
    from puffer_cli import limits

    # the store gives up on an unreachable endpoint after this (4 s by default: 3 requests took 9 s)
    monkeypatch.setattr(limits, "S3_UNREACHABLE_DEADLINE_S", 0.5)
    # a budget above the store's own deadline: the store failure must come out as itself (503)
    cfg = ServeConfig(
        store=f"s3://puffer-dead/{uuid.uuid4().hex}",
        s3_endpoint=f"http://127.0.0.1:{free_port()}",
        api_key=KEY,
        commit_window_ms=0,
        query_budget_s=120,
    )
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        t0 = time.monotonic()
        for method, path, body in [
            ("POST", "/v2/namespaces/a/query", {"rank_by": ["id", "asc"]}),
            ("GET", "/v2/namespaces/a/metadata", None),
            ("POST", "/v2/namespaces/a", {"upsert_rows": [{"id": 1}]}),
        ]:
            r = c.request(method, path, headers=AUTH, json=body)
            check_error(r, 503)
        assert time.monotonic() - t0 < 300


# ------------------------------------------------------------------ serve: bind errors
def test_bind_errors_are_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InvalidRequest) as e:
            bind("127.0.0.1", port)
        assert "already in use" in e.value.message and "another --listen port" in e.value.hint
    with pytest.raises(InvalidRequest) as e:
        bind("no-such-host.invalid", 0)
    assert "cannot resolve" in e.value.message


@pytest.mark.slow  # a CLI subprocess (~3 s of imports); test_bind_errors_are_one_clear_error covers the logic
def test_serve_on_a_port_in_use_exits_1_with_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "puffer_cli.cli.main",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--store",
                str(tmp_path / "st"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "pick another --listen port" in lines[0], p.stderr


# ------------------------------------------------------------------ real socket: slow clients, bytes in flight
Live = ThreadServer  # uvicorn in a thread, as `puffer serve` runs it (tests/serve_proc.py)


@pytest.fixture(scope="module")
def live():
    s = Live(
        mem_cfg(
            header_timeout_s=0.3,
            body_chunk_timeout_s=0.3,
            body_timeout_s=0.8,
            max_body_bytes_in_flight=1000,
            max_body_bytes=4000,
        )
    )
    yield s
    s.stop()


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (15 s socket timeout)."""
    out = b""
    while True:
        try:
            b = s.recv(65536)
        except ConnectionResetError:
            break
        if not b:
            break
        out += b
    return out


def parse_response(raw: bytes) -> tuple[int, dict, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return status, headers, orjson.loads(body)


def head(method: str, path: str, length: int | None = None, extra: str = "") -> bytes:
    h = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\ncontent-type: application/json\r\n"
    if length is not None:
        h += f"Content-Length: {length}\r\n"
    return (h + extra + "\r\n").encode()


def test_stalled_header_is_closed_with_408(live):
    with live.sock() as s:
        t0 = time.monotonic()
        s.sendall(b"POST /v2/namespaces/slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        status, headers, body = parse_response(read_all(s))
    assert status == 408 and body["status"] == "error" and "headers" in body["error"]
    assert headers["connection"] == "close" and "x-should-retry" not in headers  # 408: a retry may succeed
    assert time.monotonic() - t0 < 10


def test_stalled_header_is_closed_with_h11_too():
    from puffer_cli.server.proto import GuardedH11Protocol

    srv = Live(mem_cfg(header_timeout_s=0.3), http=GuardedH11Protocol)
    try:
        with srv.sock() as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            status, _, body = parse_response(read_all(s))
        assert status == 408 and body["status"] == "error"
    finally:
        srv.stop()


def test_trickled_header_is_closed(live):
    with live.sock() as s:
        t0 = time.monotonic()
        s.sendall(b"GET /health HTTP/1.1\r\n")
        closed = False
        for _ in range(100):  # a byte every 0.1 s: each one used to reset uvicorn's only timer
            try:
                s.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.1)
            s.setblocking(False)
            try:
                data = s.recv(65536)
                if data:
                    assert parse_response(data)[0] == 408
                    closed = True
                    break
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
        assert closed and time.monotonic() - t0 < 10


def test_idle_connection_without_a_byte_is_closed_quietly(live):
    with live.sock() as s:
        assert read_all(s) == b""


def test_keep_alive_connection_serves_several_requests(live):
    with live.sock() as s:
        for _ in range(3):
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                data += s.recv(65536)
            assert data.startswith(b"HTTP/1.1 200")
            time.sleep(0.2)  # under the header timeout each, over it in total


def test_stalled_and_trickled_bodies_get_408(live):
    with live.sock() as s:  # stops sending after part of the body
        s.sendall(head("POST", "/v2/namespaces/stall", 100) + b'{"upsert_rows":')
        status, headers, body = parse_response(read_all(s))
        assert status == 408 and "body" in body["error"] and headers["connection"] == "close"
    with live.sock() as s:  # sends a byte every 0.1 s: under the chunk timeout, over the total
        s.sendall(head("POST", "/v2/namespaces/trickle", 100))
        for _ in range(80):
            try:
                s.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
            s.setblocking(False)
            try:
                if s.recv(1, socket.MSG_PEEK):
                    break
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
        raw = read_all(s)
        if raw:  # the response is normally read; a reset on a busy machine is also a close
            status, _, body = parse_response(raw)
            assert status == 408 and "body" in body["error"]
    for ns in ("stall", "trickle"):
        check_error(httpx.get(f"{live.url}/v2/namespaces/{ns}/metadata", headers=AUTH), 404)


@pytest.fixture
def roomy():
    """A server with the small in-flight budget but read timeouts that a busy machine cannot hit."""
    s = Live(mem_cfg(max_body_bytes_in_flight=1000, max_body_bytes=4000))
    yield s
    s.stop()


def test_bytes_in_flight_are_bounded(roomy):
    live = roomy
    with live.sock() as s:  # holds 800 of the 1000 in-flight bytes while it sends slowly
        s.sendall(head("POST", "/v2/namespaces/inflight", 800) + b"{")
        time.sleep(0.1)
        r = httpx.post(
            f"{live.url}/v2/namespaces/inflight",
            headers=AUTH,
            content=orjson.dumps({"upsert_rows": [{"id": 1, "s": "x" * 400}]}),
        )
        body = check_error(r, 429, no_retry=False)
        assert "in flight" in body["error"] and r.headers.get("retry-after")
    # alone, a body larger than the in-flight budget (but under the body limit) is admitted
    for _ in range(50):
        r = httpx.post(
            f"{live.url}/v2/namespaces/inflight",
            headers=AUTH,
            content=orjson.dumps({"upsert_rows": [{"id": 1, "s": "x" * 2000}]}),
        )
        if r.status_code != 429:
            break
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    assert sample(httpx.get(f"{live.url}/metrics", headers=AUTH).text, "puffer_request_body_bytes_in_flight") == 0


def test_client_disconnect_mid_body_is_not_an_error(live, caplog):

    def closed_writes() -> tuple[float, str]:
        m = httpx.get(f"{live.url}/metrics", headers=AUTH).text
        return sample(m, "puffer_http_requests_total", route="write", status="499"), m

    before, _ = closed_writes()
    caplog.set_level("INFO", logger="puffer.serve")
    with live.sock() as s:
        s.sendall(head("POST", "/v2/namespaces/gone", 300) + b'{"upsert_rows": [{"id": 1}')
        time.sleep(0.1)
    for _ in range(100):
        n, m = closed_writes()
        if n > before:
            break
        time.sleep(0.05)
    assert n == before + 1
    assert 'status="500"' not in m
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    check_error(httpx.get(f"{live.url}/v2/namespaces/gone/metadata", headers=AUTH), 404)


def test_malformed_http_and_huge_headers_get_the_error_shape(live):
    with live.sock() as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, _, body = parse_response(read_all(s))
    assert status == 400 and body["status"] == "error"
    with live.sock() as s:
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (limits.MAX_HEADER_BYTES + 10))
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = read_all(s)
    if raw:  # normally read; a reset because the client was still sending is also a refusal
        status, _, body = parse_response(raw)
        assert status == 431 and body["status"] == "error"


def test_normal_requests_still_work_over_the_guarded_protocol(live):
    tp_url = live.url
    r = httpx.post(f"{tp_url}/v2/namespaces/ok", headers=AUTH, json={"upsert_rows": [{"id": 1, "n": 2}]})
    assert r.status_code == 200, r.text
    r = httpx.post(f"{tp_url}/v2/namespaces/ok/query", headers=AUTH, json={"rank_by": ["id", "asc"], "top_k": 5})
    assert r.status_code == 200 and r.json()["rows"][0]["id"] == 1


def test_official_client_does_not_retry_a_query_over_budget(monkeypatch):
    import turbopuffer

    def slow_query(ns, body):
        while True:
            limits.check_deadline()
            time.sleep(0.01)

    monkeypatch.setattr(engine, "run_query", slow_query)
    srv = Live(mem_cfg(query_budget_s=0.2))
    try:
        httpx.post(f"{srv.url}/v2/namespaces/c", headers=AUTH, json={"upsert_rows": [{"id": 1}]}).raise_for_status()
        tp = turbopuffer.Turbopuffer(base_url=srv.url, api_key=KEY, max_retries=4)
        with pytest.raises(turbopuffer.APIStatusError) as e:
            tp.namespace("c").query(rank_by=["id", "asc"], top_k=1)
        assert e.value.status_code == 408
        m = httpx.get(f"{srv.url}/metrics", headers=AUTH).text
        assert sample(m, "puffer_http_requests_total", route="query", status="408") == 1  # sent once, not 1 + 4 retries
    finally:
        srv.stop()
