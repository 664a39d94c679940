"""S3 servers differ: a rewriting HTTP proxy in front of moto reproduces what real
servers answer (SeaweedFS's 412 without ``Condition``, AWS's 409
ConditionalRequestConflict, 503 SlowDown, a lost response, a server that hangs
on concurrent conditional creates), and the store's one call wrapper must turn
each into the right outcome. Plus the typed errors for a dead endpoint, a bad
endpoint URL, a missing bucket and missing credentials, and the probe verdict on
a real SeaweedFS."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import os
import re
import socket
import threading
import time
import types
import uuid

import puffer_cli
import pytest
from puffer_cli import limits
from puffer_cli.cli.main import main
from puffer_cli.errors import InvalidRequest, StoreError, UnsafeStore
from puffer_cli.store.s3 import S3Store
from puffer_cli.store.url import open_store


def _error(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    ).encode()


class Rewriter:
    """What the proxy does to requests/responses; counters say what it did."""

    def __init__(self):
        self.lock = threading.Lock()
        self.strip_condition = False  # drop <Condition> from 412 bodies (SeaweedFS)
        self.conflicts = 0  # answer the next N conditional PUTs with 409
        self.slowdowns = 0  # answer the next N PUTs with 503 SlowDown
        self.lose = 0  # forward the next N conditional PUTs, then drop the connection
        self.hang_concurrent = False  # two conditional PUTs of one key at once: both hang (SeaweedFS 4.48)
        self.release = threading.Event()
        self.inflight: dict[str, int] = {}
        self.answered: dict[str, int] = {}
        self.puts_forwarded = 0
        # read faults: kind -> how many more requests get it (-1: every one); hits[kind]: how many did
        self.faults: dict[str, int] = {}
        self.fault_keys = re.compile(r".")  # which object paths the whole-GET faults apply to
        self.hits: dict[str, int] = {}
        self.seen: list[tuple[str, str, str]] = []  # (method, path without the query, Range)
        self.foreign_etags = False  # GETs answer an ETag that is no MD5 of the body (some servers)

    def fault(self, kind: str) -> bool:
        with self.lock:
            n = self.faults.get(kind, 0)
            if n == 0:
                return False
            if n > 0:
                self.faults[kind] = n - 1
            self.hits[kind] = self.hits.get(kind, 0) + 1
            return True

    def count(self, what: str) -> None:
        with self.lock:
            self.answered[what] = self.answered.get(what, 0) + 1

    def take(self, attr: str) -> bool:
        with self.lock:
            n = getattr(self, attr)
            if n > 0:
                setattr(self, attr, n - 1)
                return True
            return False


def _make_handler(upstream: tuple[str, int], rw: Rewriter):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        head_length = 0

        def log_message(self, *a):  # quiet
            pass

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _reply(self, status: int, body: bytes, headers=(), length: int | None = -1) -> None:
            """``length``: the Content-Length to advertise (-1: the body's; None: none)."""
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            if length == -1:
                length = self.head_length if self.command == "HEAD" else len(body)
            if length is not None:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self, body: bytes):
            conn = http.client.HTTPConnection(*upstream, timeout=30)
            hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "proxy-connection")}
            conn.request(self.command, self.path, body=body or None, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            headers = [
                (k, v)
                for k, v in resp.getheaders()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            ]
            self.head_length = int(resp.getheader("Content-Length") or 0)  # a HEAD's is the object's
            return resp.status, headers, data

        def _handle(self):
            body = self._body()
            conditional = self.command == "PUT" and (self.headers.get("If-None-Match") or self.headers.get("If-Match"))
            if self.command == "PUT" and "partNumber=2&" in self.path + "&" and rw.fault("part2"):
                return self._reply(503, _error("SlowDown", "Please reduce your request rate."))
            if self.command == "DELETE" and "uploadId=" in self.path:
                rw.count("abort")
            if self.command == "PUT" and rw.take("slowdowns"):
                rw.count("503")
                return self._reply(503, _error("SlowDown", "Please reduce your request rate."))
            if conditional and rw.take("conflicts"):
                rw.count("409")
                return self._reply(
                    409,
                    _error(
                        "ConditionalRequestConflict",
                        "A conflicting conditional operation is currently in progress against this resource.",
                    ),
                )
            if conditional and rw.hang_concurrent:
                with rw.lock:
                    rw.inflight[self.path] = rw.inflight.get(self.path, 0) + 1
                time.sleep(0.5)  # a window in which a concurrent create of the same key arrives
                with rw.lock:
                    crowded = rw.inflight[self.path] > 1
                if crowded:
                    rw.count("hung")
                    rw.release.wait(60)
                    with rw.lock:
                        rw.inflight[self.path] -= 1
                    self.close_connection = True
                    return
                with rw.lock:
                    rw.inflight[self.path] -= 1
            path, rng = self.path.split("?")[0], self.headers.get("Range", "")
            with rw.lock:
                rw.seen.append((self.command, path, rng))
            status, headers, data = self._forward(body)
            if rw.foreign_etags and self.command == "GET":
                fake = hashlib.md5(path.encode()).hexdigest()
                headers = [(k, f'"{fake}"' if k.lower() == "etag" else v) for k, v in headers]
            read_ok = self.command in ("GET", "HEAD") and status in (200, 206)
            if read_ok and self._read_fault(status, headers, data, path, rng):
                return
            if self.command == "PUT":
                with rw.lock:
                    rw.puts_forwarded += 1
            if conditional and rw.take("lose"):
                rw.count("lost")
                self.close_connection = True  # the PUT landed upstream; the client never hears
                return
            if status == 412 and rw.strip_condition:
                rw.count("stripped")
                data = re.sub(rb"<Condition>.*?</Condition>", b"", data)
            self._reply(status, data, headers)

        def _read_fault(self, status, headers, data, path, rng) -> bool:
            """Answer a read with a fault of rw.faults (True: answered)."""
            if self.command == "HEAD":
                if rw.fault("head_no_length"):  # a proxy that dropped the header
                    self._reply(status, b"", headers, length=None)
                    return True
                return False
            if rng:
                if len(data) > 1 and rw.fault("short_range"):  # 206, Content-Range of the whole range, half the body
                    self._reply(status, data[: len(data) // 2], headers)
                    return True
                return False
            if not rw.fault_keys.search(path) or len(data) < 2:
                return False
            if rw.fault("truncated"):  # half the body, its length advertised, checksum headers stripped
                kept = [(k, v) for k, v in headers if not k.lower().startswith("x-amz-checksum")]
                self._reply(status, data[: len(data) // 2], kept)
                return True
            if rw.fault("cut"):  # the whole length advertised, half sent, the connection dropped
                self._reply(status, data[: len(data) // 2], headers, length=len(data))
                self.close_connection = True
                return True
            return False

        do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _handle

    return Handler


@pytest.fixture
def proxy(s3_server):
    """(endpoint URL of a rewriting proxy in front of moto, its Rewriter)."""
    host, port = s3_server.rsplit("/", 1)[-1].split(":")
    rw = Rewriter()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler((host, int(port)), rw))
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", rw
    rw.release.set()
    srv.shutdown()
    srv.server_close()


def fresh_store(endpoint: str) -> S3Store:
    """A new store instance (open_store caches instances; these tests need their own)."""
    return S3Store(f"s3://puffer-test/{uuid.uuid4().hex}", endpoint_url=endpoint)


def test_412_without_condition_is_exists(proxy):
    endpoint, rw = proxy
    rw.strip_condition = True
    st = fresh_store(endpoint)
    assert st.create("k", b"first")
    # what s3fs alone makes of it (the reason for the wrapper): not FileExistsError
    with pytest.raises(OSError) as e:
        st.fs.pipe_file(st._p("k"), b"x", mode="create")
    assert not isinstance(e.value, FileExistsError)
    assert not st.create("k", b"second")
    assert st.read("k") == b"first"
    _, ver = st.read_versioned("k")
    assert st.cas("k", b"v2", ver)
    assert not st.cas("k", b"v3", ver)  # stale etag: 412 without Condition too
    assert st.read("k") == b"v2"
    assert rw.answered["stripped"] >= 3


def test_409_conflict_is_retried_and_the_write_lands_once(proxy):
    endpoint, rw = proxy
    st = fresh_store(endpoint)
    rw.conflicts = 3
    assert st.create("c", b"one")
    assert rw.answered["409"] == 3 and st.read("c") == b"one"
    # a namespace write through the whole stack (the probe's creates see 409s too)
    db = puffer_cli.connect(f"s3://puffer-test/{uuid.uuid4().hex}", s3_endpoint=endpoint)
    rw.conflicts = 4
    ns = db.open_namespace("n")
    assert ns.write({"upsert_rows": [{"id": 1, "v": 1}]})["rows_upserted"] == 1
    rw.conflicts = 2
    ns.write({"upsert_rows": [{"id": 2, "v": 2}]})
    assert [s for s, _ in ns.wal_keys(0)] == [1, 2]
    assert sorted(ns.docs()[0]["id"].to_list()) == [1, 2]


def test_503_slowdown_is_retried(proxy):
    endpoint, rw = proxy
    st = fresh_store(endpoint)
    rw.slowdowns = 3
    st.write("w", b"data")
    assert rw.answered["503"] == 3 and st.read("w") == b"data"
    rw.slowdowns = 2
    assert st.create("w2", b"x") and not st.create("w2", b"y")


def test_lost_response_of_a_create_is_recognised_as_ours(proxy):
    """The first attempt lands but its response is lost; the retry is refused with
    412, and the wrapper sees the object holds our bytes: created, exactly once."""
    endpoint, rw = proxy
    st = fresh_store(endpoint)
    rw.lose = 1
    assert st.create("l", b"mine")
    assert rw.answered["lost"] == 1 and st.read("l") == b"mine"
    db = puffer_cli.connect(f"s3://puffer-test/{uuid.uuid4().hex}", s3_endpoint=endpoint, single_writer=True)
    ns = db.open_namespace("n")
    rw.lose = 1
    ns.write({"upsert_rows": [{"id": 1}]})
    ns.write({"upsert_rows": [{"id": 2}]})
    assert [s for s, _ in ns.wal_keys(0)] == [1, 2]  # no duplicate entry from the retry


@pytest.mark.slow  # waits out a hanging server (~6 s)
def test_probe_does_not_hang_on_a_server_that_hangs_concurrent_creates(proxy):
    """Like SeaweedFS 4.48 as measured: sequential conditional creates work, two at
    once both hang. The probe times its race out and calls the store unsafe; writes
    then need single-writer mode."""
    endpoint, rw = proxy
    rw.hang_concurrent = True
    st = fresh_store(endpoint)
    t0 = time.monotonic()
    with pytest.raises(UnsafeStore) as e:
        st.require_safe_writes(False)
    assert time.monotonic() - t0 < limits.S3_PROBE_TIMEOUT_S + 15
    assert "--single-writer" in e.value.hint and "concurrent" in e.value.message
    assert rw.answered["hung"] >= 1
    with pytest.raises(UnsafeStore):  # the verdict is kept: no second probe
        puffer_cli.DB(st).namespace("n").write({"upsert_rows": [{"id": 1}]})
    rw.release.set()
    rw.hang_concurrent = False
    db = puffer_cli.DB(st, single_writer=True)  # single-writer mode proceeds
    assert db.open_namespace("n").write({"upsert_rows": [{"id": 1}]})["rows_upserted"] == 1


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_dead_endpoint_is_one_store_error_within_the_deadline(capsys, monkeypatch):
    # credentials of its own: without them the missing credentials are the error, whether or not
    # this worker started the moto server (which sets them) before
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    endpoint = f"http://127.0.0.1:{_dead_port()}"
    t0 = time.monotonic()
    code = main(["wal-inspect", "n", "--store", f"s3://puffer-test/{uuid.uuid4().hex}", "--s3-endpoint", endpoint])
    assert time.monotonic() - t0 < limits.S3_RETRY_DEADLINE_S + 10
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("Error: cannot reach the S3 endpoint") and "\n" not in err
    assert endpoint in err and "--s3-endpoint" in err  # the hint


def test_bad_store_and_endpoint_urls():
    for url, endpoint in [
        ("s3:///prefix", None),
        ("s3://", None),
        ("s3://b/x", "not a url"),
        ("s3://b/x", "http://"),
        ("s3://b/x", "ftp://host"),
        ("s3://b/x", "http://h:99999"),
    ]:
        with pytest.raises(InvalidRequest):
            open_store(url, s3_endpoint=endpoint)


def test_missing_bucket_names_the_bucket(s3_server):
    st = S3Store("s3://no-such-bucket-puffer/p", endpoint_url=s3_server)
    for op in (lambda: st.read("k"), lambda: st.list("")):
        with pytest.raises(StoreError) as e:
            op()
        assert "no-such-bucket-puffer" in e.value.message and e.value.status == 503


def test_no_credentials_is_a_store_error(s3_server, tmp_path, monkeypatch):
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    st = fresh_store(s3_server)  # a new instance: a new botocore session resolves credentials now
    with pytest.raises(StoreError) as e:
        st.list("")
    assert "credentials" in e.value.message and "AWS_ACCESS_KEY_ID" in e.value.hint and s3_server in e.value.message


@pytest.mark.seaweedfs
def test_seaweedfs_conditional_writes_and_the_probe(seaweedfs_server):
    """SeaweedFS answers a refused create with 412 but no Condition (s3fs: OSError,
    not FileExistsError); the store still reads it as "exists". Whatever the probe
    decides, writers get what it promises: all writes land when it says safe,
    UnsafeStore (unless single-writer) when it says unsafe."""
    st = fresh_store(seaweedfs_server)
    assert st.create("k", b"1")
    with pytest.raises(OSError) as e:
        st.fs.pipe_file(st._p("k"), b"2", mode="create")
    assert not isinstance(e.value, FileExistsError)
    assert not st.create("k", b"2") and st.read("k") == b"1"

    safe = st.probe_conditional_writes()
    db = puffer_cli.DB(st)
    if safe:
        acked, lock = [], threading.Lock()

        def writer(w):
            for i in range(2):
                db.open_namespace("c").write({"upsert_rows": [{"id": w * 10 + i}]})
                with lock:
                    acked.append(w * 10 + i)

        ts = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        [t.start() for t in ts]
        [t.join(120) for t in ts]
        ns = db.open_namespace("c")
        assert [s for s, _ in ns.wal_keys(0)] == list(range(1, 9))
        assert sorted(ns.docs()[0]["id"].to_list()) == sorted(acked) and len(acked) == 8
    else:
        with pytest.raises(UnsafeStore):
            db.open_namespace("c").write({"upsert_rows": [{"id": 1}]})
        single = puffer_cli.DB(st, single_writer=True)
        assert single.open_namespace("c").write({"upsert_rows": [{"id": 1}]})["rows_upserted"] == 1


# ------------------------------------------------------------------ read faults (issue 23)
# A read the transport cut short must be retried and then reported as a store error (HTTP 503,
# CLI `Error: S3 ...`), never decoded into a wrong answer, an internal error, or "stored damage".

VEC = [0.1, 0.2, 0.3, 0.4]
ANN = {"rank_by": ["vector", "ANN", VEC], "top_k": 5}
QUERY_ARGS = ("query", "d", "--vector", str(VEC), "--top-k", "5", "--format", "json")


@pytest.fixture
def seeded(proxy, s3_server, monkeypatch):
    """An indexed namespace 'd' (300 rows, one unindexed WAL entry after the generation) written
    straight to moto; yields (url, proxy endpoint, Rewriter, the ANN answer). The retry deadline
    leaves a fault that clears room for its retry even when the first attempt is slow (a loaded CI
    machine once took 3.1 s over it); a test cuts it to 3 s (:func:`_fail_fast`) before a fault
    that never clears."""
    import numpy as np
    from puffer_cli.store import filecache

    endpoint, rw = proxy
    url = f"s3://puffer-test/{uuid.uuid4().hex}"
    filecache.configure("")
    ns = puffer_cli.connect(url, s3_endpoint=s3_server).namespace("d")
    rng = np.random.default_rng(1)
    rows = [{"id": i, "vector": rng.normal(size=4).round(3).tolist(), "t": f"w{i % 7}"} for i in range(300)]
    ns.write({"upsert_rows": rows, "distance_metric": "euclidean_squared"})
    ns.index()
    ns.write({"upsert_rows": [{"id": 1000, "vector": [1, 1, 1, 1]}]})
    want = _rows(ns.query(ANN).rows)
    monkeypatch.setattr(limits, "S3_RETRY_DEADLINE_S", 15.0)
    monkeypatch.setattr(limits, "S3_RETRY_MAX_S", 0.2)
    yield url, endpoint, rw, want
    filecache.configure("")


def _fail_fast() -> None:
    """From here on the fault never clears: retries end after 3 s (``seeded``'s monkeypatch
    restores the deadline afterwards)."""
    limits.S3_RETRY_DEADLINE_S = 3.0


def _rows(rows) -> list[tuple[int, float]]:
    return [(r["id"], round(float(r["$dist"]), 5)) for r in rows]


def _cold(url: str) -> None:
    """Forget everything this process cached of the store: the next read goes to S3."""
    from puffer_cli import caches
    from puffer_cli.index.segment import GENS
    from puffer_cli.store import filecache
    from puffer_cli.wal import namespace as wn

    filecache.configure("")
    GENS.clear()
    caches.forget(url, "d")
    wn.forget(types.SimpleNamespace(url=url), "d")  # type: ignore[arg-type]


def _via_http(url: str, endpoint: str, method: str, path: str, body=None):
    from puffer_cli.server.app import ServeConfig, create_app
    from starlette.testclient import TestClient

    _cold(url)
    app = create_app(ServeConfig(store=url, s3_endpoint=endpoint, commit_window_ms=0))
    with TestClient(app, raise_server_exceptions=False) as c:
        return c.request(method, path, json=body)


def _via_cli(url: str, endpoint: str, capsys, *args: str) -> tuple[int, str, str]:
    _cold(url)
    capsys.readouterr()  # what the server logged before
    code = main([*args, "--store", url, "--s3-endpoint", endpoint])
    out, err = capsys.readouterr()
    return code, out, err


def _store_error_over_http(r) -> str:
    assert r.status_code == 503, (r.status_code, r.text)
    body = r.json()
    assert body["status"] == "error" and body["error"].startswith("S3 "), body
    _not_damage(body["error"])
    return body["error"]


def _store_error_on_cli(code: int, err: str) -> None:
    assert code == 1 and err.startswith("Error: S3 "), err
    _not_damage(err)


def _not_damage(msg: str) -> None:
    low = msg.lower()
    for word in ("internal error", "wal-inspect", "--repair", "corrupt", "damage", "not valid json", "traceback"):
        assert word not in low, msg


def _cli_answer(out: str) -> list[tuple[int, float]]:
    import json as _json

    return _rows(_json.loads(out)["rows"])


def test_short_ranged_read_is_retried_then_a_store_error(seeded, capsys):
    url, endpoint, rw, want = seeded
    rw.faults["short_range"] = 1  # one 206 with half the range: retried, the right answer
    r = _via_http(url, endpoint, "POST", "/v2/namespaces/d/query", ANN)
    assert r.status_code == 200 and _rows(r.json()["rows"]) == want
    assert rw.hits["short_range"] == 1
    ranged = [s for s in rw.seen if s[2]]
    assert len(ranged) >= 2 and ranged[0] == ranged[1]  # the same range again
    _fail_fast()
    rw.faults["short_range"] = -1  # every ranged GET short: a store error, never an answer
    hits = rw.hits["short_range"]
    _store_error_over_http(_via_http(url, endpoint, "POST", "/v2/namespaces/d/query", ANN))
    assert rw.hits["short_range"] - hits >= 2
    code, out, err = _via_cli(url, endpoint, capsys, *QUERY_ARGS)
    _store_error_on_cli(code, err)
    assert out == ""
    rw.faults.clear()
    code, out, err = _via_cli(url, endpoint, capsys, *QUERY_ARGS)
    assert code == 0 and _cli_answer(out) == want, err


@pytest.mark.parametrize("key", ["meta.json", "manifest"])
@pytest.mark.parametrize("fault", ["truncated", "cut"])
def test_truncated_whole_read_is_retried_then_a_store_error(seeded, capsys, key, fault):
    """``truncated``: half the body with a matching Content-Length and no checksum headers (only
    the ETag can tell); ``cut``: the full length advertised, the connection dropped halfway."""
    url, endpoint, rw, want = seeded
    rw.fault_keys = re.compile(r"/meta\.json$" if key == "meta.json" else r"/manifest-[^/]*\.json$")
    rw.faults[fault] = 1
    r = _via_http(url, endpoint, "POST", "/v2/namespaces/d/query", ANN)
    assert r.status_code == 200 and _rows(r.json()["rows"]) == want, r.text
    assert rw.hits[fault] == 1
    _fail_fast()
    rw.faults[fault] = -1
    _store_error_over_http(_via_http(url, endpoint, "POST", "/v2/namespaces/d/query", ANN))
    assert rw.hits[fault] >= 3
    code, out, err = _via_cli(url, endpoint, capsys, *QUERY_ARGS)
    _store_error_on_cli(code, err)
    rw.faults.clear()
    code, out, err = _via_cli(url, endpoint, capsys, *QUERY_ARGS)
    assert code == 0 and _cli_answer(out) == want, err


def test_head_without_content_length_is_retried_then_a_store_error(seeded, capsys):
    url, endpoint, rw, _want = seeded
    rw.faults["head_no_length"] = 1
    r = _via_http(url, endpoint, "GET", "/v1/namespaces/d/metadata")
    assert r.status_code == 200 and r.json()["index"]["unindexed_bytes"] > 0, r.text
    assert rw.hits["head_no_length"] == 1
    _fail_fast()
    rw.faults["head_no_length"] = -1
    _store_error_over_http(_via_http(url, endpoint, "GET", "/v1/namespaces/d/metadata"))
    assert rw.hits["head_no_length"] >= 3
    # `index --repair` compares every file's size (HEAD): a store error, not a damaged segment
    code, _out, err = _via_cli(url, endpoint, capsys, "index", "d", "--repair")
    _store_error_on_cli(code, err)
    rw.faults.clear()
    code, out, err = _via_cli(url, endpoint, capsys, "index", "d", "--repair")
    assert code == 0 and "repaired" not in out + err, (out, err)


def test_etags_that_are_not_md5s_are_learnt_not_refused(proxy):
    """A server whose ETags are no MD5 of the bytes: the same bytes twice with the same mismatch
    (before any ETag matched) tell the store not to check them; reads work."""
    endpoint, rw = proxy
    st = fresh_store(endpoint)
    st.write("a", b"alpha")
    st.write("b", b"beta")
    rw.foreign_etags = True
    assert st.read("a") == b"alpha" and st.read("b") == b"beta" and st.read("a") == b"alpha"
    assert st._md5_etags is False
    assert len([s for s in rw.seen if s[0] == "GET"]) == 4  # one extra read, once
    st2 = fresh_store(endpoint)  # a store that saw matching ETags keeps checking them
    st2.write("a", b"alpha")
    rw.foreign_etags = False
    assert st2.read("a") == b"alpha" and st2._md5_etags is True


@pytest.mark.parametrize("refused", ["once", "always"])
def test_multipart_part_is_retried_alone_and_a_failed_upload_aborted(proxy, monkeypatch, refused):
    """A large object goes up in parts; a part the server refuses once is sent again on its own
    (the other parts once each); a part refused every time fails the write, the upload is
    aborted (no parts left billed) and no object appears."""
    from puffer_cli.store import s3 as store_s3

    endpoint, rw = proxy
    monkeypatch.setattr(store_s3, "MULTIPART_THRESHOLD", 6 << 20)
    monkeypatch.setattr(store_s3, "MULTIPART_PART_BYTES", 5 << 20)  # S3's smallest part
    monkeypatch.setattr(limits, "S3_RETRY_DEADLINE_S", 3.0)
    st = fresh_store(endpoint)
    data = os.urandom(11 << 20)  # 3 parts
    rw.faults["part2"] = 1 if refused == "once" else -1
    parts = lambda: [p for m, p, _ in rw.seen if m == "PUT" and p.endswith("/big")]  # noqa: E731
    if refused == "once":
        st.write("big", data)
        assert rw.hits["part2"] == 1 and len(parts()) == 3  # each part forwarded once: only part 2 was sent again
        assert st.read("big") == data
        assert "abort" not in rw.answered
    else:
        with pytest.raises(StoreError) as e:
            st.write("big", data)
        assert e.value.message.startswith("S3 write (part 2)") and rw.hits["part2"] >= 2
        assert rw.answered["abort"] == 1
        assert not st.exists("big")
        uploads = st._call("list", "", lambda: st.fs._call_s3("list_multipart_uploads", Bucket=st.bucket))
        assert [u for u in uploads.get("Uploads", []) if u["Key"].startswith(st.prefix)] == []
