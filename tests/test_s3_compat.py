"""S3 servers differ: a rewriting HTTP proxy in front of moto reproduces what real
servers answer (SeaweedFS's 412 without ``Condition``, AWS's 409
ConditionalRequestConflict, 503 SlowDown, a lost response, a server that hangs
on concurrent conditional creates), and the store's one call wrapper must turn
each into the right outcome. Plus the typed errors for a dead endpoint, a bad
endpoint URL, a missing bucket and missing credentials, and the probe verdict on
a real SeaweedFS."""

from __future__ import annotations

import http.client
import http.server
import os
import re
import socket
import threading
import time
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

        def log_message(self, *a):  # quiet
            pass

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _reply(self, status: int, body: bytes, headers=()) -> None:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
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
            return (
                resp.status,
                [
                    (k, v)
                    for k, v in resp.getheaders()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection")
                ],
                data,
            )

        def _handle(self):
            body = self._body()
            conditional = self.command == "PUT" and (self.headers.get("If-None-Match") or self.headers.get("If-Match"))
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
            status, headers, data = self._forward(body)
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


def test_dead_endpoint_is_one_store_error_within_the_deadline(capsys):
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
