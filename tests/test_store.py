"""Store primitives on local, memory and a real S3 endpoint (moto)."""

import threading
from pathlib import Path

import puffer_cli
import pytest
from puffer_cli.errors import InvalidRequest, UnsafeStore
from puffer_cli.index import gc
from puffer_cli.store.local import LocalStore
from puffer_cli.store.url import open_store


def test_read_write_versioned(db):
    st = db.store
    assert st.read_versioned("a/b.json") is None
    st.write("a/b.json", b"one")
    data, v1 = st.read_versioned("a/b.json")
    assert data == b"one"
    st.write("a/b.json", b"two")
    assert st.read("a/b.json") == b"two"
    assert st.read_versioned("a/b.json")[1] != v1
    with pytest.raises(FileNotFoundError):
        st.read("a/missing")


def test_create_if_absent(db):
    st = db.store
    assert st.create("x/1", b"first")
    assert not st.create("x/1", b"second")
    assert st.read("x/1") == b"first"


def test_create_race_has_one_winner(db):
    st = db.store
    wins = []

    def go(i):
        if st.create("race/k", str(i).encode()):
            wins.append(i)

    ts = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert len(wins) == 1
    assert st.read("race/k") == str(wins[0]).encode()


def test_cas(db):
    st = db.store
    assert st.cas("m.json", b"v1", None)
    assert not st.cas("m.json", b"v1b", None)  # exists
    _, ver = st.read_versioned("m.json")
    assert st.cas("m.json", b"v2", ver)
    assert not st.cas("m.json", b"v3", ver)  # stale version
    assert st.read("m.json") == b"v2"
    assert not st.cas("other.json", b"x", "not-a-version")


def test_cas_race_has_one_winner(db):
    st = db.store
    # (S3 ETags are content hashes, so a rewrite with identical bytes keeps the
    # version: puffer's CAS payloads always differ from what they replace.)
    st.write("c.json", b"initial")
    _, ver = st.read_versioned("c.json")
    wins = []

    def go(i):
        if st.cas("c.json", str(i).encode(), ver):
            wins.append(i)

    ts = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert len(wins) == 1


def test_list_range_delete(db):
    st = db.store
    for i in range(5):
        st.write(f"ns/wal/{i:020d}.wal", b"x" * i)
    st.write("ns/meta.json", b"{}")
    keys = st.list("ns/wal/")
    assert keys == [f"ns/wal/{i:020d}.wal" for i in range(5)]
    assert st.list("ns/wal/", start_after=keys[2]) == keys[3:]
    st.write("ns/wal/blob", b"0123456789")
    assert st.read_range("ns/wal/blob", 2, 5) == b"234"
    assert st.size("ns/wal/blob") == 10
    st.delete("ns/wal/blob")
    assert not st.exists("ns/wal/blob")
    assert "ns" in st.list_dirs("")
    assert st.delete_prefix("ns/") == 6
    assert st.list("ns/") == []


def test_read_ranges_batch(db):
    """One batch of ranged reads over several objects: order kept, empty list, missing key."""
    st = db.store
    st.write("rr/a", bytes(range(100)))
    st.write("rr/b", b"abcdefghij" * 10)
    reqs = [("rr/a", 10, 20), ("rr/b", 0, 3), ("rr/a", 0, 1), ("rr/b", 95, 100)] + [
        ("rr/a", i, i + 2) for i in range(40)
    ]
    got = st.read_ranges(reqs)
    assert got == [st.read_range(k, a, b) for k, a, b in reqs]
    assert got[:4] == [bytes(range(10, 20)), b"abc", b"\x00", b"fghij"]
    assert st.read_ranges([]) == []
    with pytest.raises(FileNotFoundError):
        st.read_ranges([("rr/a", 0, 2), ("rr/missing", 0, 2), ("rr/b", 0, 2)])
    if st.url.startswith("s3://"):  # moto and SeaweedFS take the presigned GETs (none fell back)
        assert st._presign_ok and set(st._urls) >= {"rr/a", "rr/b"}


@pytest.fixture(params=["s3", "seaweedfs"])
def s3_store(request):
    endpoint = request.getfixturevalue("s3_server" if request.param == "s3" else "seaweedfs_server")
    return puffer_cli.connect(f"s3://puffer-test/presign-{request.param}", s3_endpoint=endpoint).store


def test_presigned_refused_falls_back_to_botocore(s3_store):
    """A server that refuses a presigned GET (403: here a real HTTP server on loopback that
    refuses every one) turns the lean path off for the store; the batch still returns the
    right bytes, through botocore."""
    import http.server
    import time

    class Refuses(http.server.BaseHTTPRequestHandler):  # as a server without query-string auth
        def do_GET(self):
            body = b"<Error><Code>AccessDenied</Code><Message>presigned URLs are off</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        st = s3_store
        st.write("pf/a", bytes(range(256)))
        assert st.read_ranges([("pf/a", 0, 4), ("pf/a", 8, 12)]) == [bytes(range(4)), bytes(range(8, 12))]
        assert st._presign_ok
        url = st._urls["pf/a"][0]
        refused = f"http://127.0.0.1:{srv.server_address[1]}/" + url.split("/", 3)[3]
        st._urls["pf/a"] = (refused, time.monotonic() + 60)  # a reused URL refused: signed again, works
        assert st.read_ranges([("pf/a", 1, 3), ("pf/a", 250, 256)]) == [bytes([1, 2]), bytes(range(250, 256))]
        assert st._presign_ok and st._urls["pf/a"][0] != refused
        real = st._presigned

        async def always_refused(key):
            await real(key)
            return refused

        st._presigned = always_refused  # the server refuses every presigned URL: botocore from now on
        assert st.read_ranges([("pf/a", 1, 3), ("pf/a", 250, 256)]) == [bytes([1, 2]), bytes(range(250, 256))]
        assert not st._presign_ok
        assert st.read_ranges([("pf/a", 5, 6), ("pf/a", 7, 9)]) == [b"\x05", b"\x07\x08"]
    finally:
        srv.shutdown()


def test_presigned_errors_map_like_botocore(s3_store):
    """A failed presigned GET becomes the ClientError ``_translate`` maps: 404 a missing key,
    5xx a retried failure, anything else a StoreError."""
    from puffer_cli.errors import StoreError
    from puffer_cli.store import s3 as store_s3

    st = s3_store
    err = store_s3._client_error(404, b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>")
    assert isinstance(st._translate(err, "read", "k"), FileNotFoundError)
    assert isinstance(
        st._translate(store_s3._client_error(503, b"<Code>SlowDown</Code>"), "read", "k"), store_s3._Transient
    )
    got = st._translate(store_s3._client_error(416, b"<Code>InvalidRange</Code><Message>no</Message>"), "read", "k")
    assert isinstance(got, StoreError) and "InvalidRange" in got.message


def test_read_ranges_threaded_default(mem_db, monkeypatch):
    """The base implementation's thread pool (a remote backend without its own batch) keeps order."""
    st = mem_db.store
    st.write("rr/a", bytes(range(200)))
    monkeypatch.setattr(type(st), "is_remote", True)
    reqs = [("rr/a", i, i + 3) for i in range(0, 190, 7)]
    assert st.read_ranges(reqs) == [bytes(range(i, i + 3)) for i in range(0, 190, 7)]


def test_probe_detects_safe_store(db):
    assert db.store.probe_conditional_writes()
    db.store.require_safe_writes(False)  # does not raise


def test_unsafe_store_refused_without_single_writer(tmp_path):
    class Ignores(LocalStore):
        conditional_writes_safe = False

        def create(self, key, data):  # a server that ignores If-None-Match
            self.write(key, data)
            return True

    st = Ignores(tmp_path)
    with pytest.raises(UnsafeStore) as e:
        st.require_safe_writes(False)
    assert "--single-writer" in e.value.hint
    st2 = Ignores(tmp_path)
    st2.require_safe_writes(True)  # opted in


def test_bad_store_urls():
    with pytest.raises(InvalidRequest):
        open_store("gs://bucket/x")
    with pytest.raises(InvalidRequest):
        open_store("s3://")


def test_connect_default_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PUFFER_STORE", raising=False)
    db = puffer_cli.connect()
    assert isinstance(db.store, LocalStore)
    assert db.store.url.endswith("puffer-data")


def test_index_gc_sweeps_temp_files_of_killed_writers(tmp_path):
    """A writer killed between its temp file and the rename leaves `.tmp-*` behind;
    `puffer index` GC deletes those older than the limit, never a fresh one."""
    import os
    import time

    from puffer_cli.index import builder

    db = puffer_cli.connect(str(tmp_path / "s"))
    ns = db.open_namespace("t")
    ns.write({"upsert_rows": [{"id": 1, "v": 1}]})
    wal_dir = tmp_path / "s" / "t" / "wal"
    old, fresh = wal_dir / ".tmp-old", wal_dir / ".tmp-fresh"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"in flight")
    past = time.time() - 2 * gc.TEMP_MAX_AGE_S
    os.utime(old, (past, past))
    rep = builder.index_namespace(ns, gc_grace_s=0)
    assert not old.exists() and fresh.exists() and rep.gc_deleted >= 1
    assert db.store.sweep_temp("t/", 0) == 1 and not fresh.exists()
    assert puffer_cli.connect("memory://sweep").store.sweep_temp("t/", 0) == 0


def test_local_store_path_problems_are_typed_errors(tmp_path, capsys):
    from puffer_cli.cli.main import main
    from puffer_cli.errors import StoreError

    f = tmp_path / "afile"
    f.write_text("not a store")
    for path in (f, f / "sub"):
        with pytest.raises(InvalidRequest) as e:
            LocalStore(path)
        assert "not a directory" in e.value.message and "--store" in e.value.hint
    code = main(["ingest", "n", str(Path(__file__).parent.parent / "fixtures" / "sample.parquet"), "--store", str(f)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("Error: store path") and "\n" not in err
    st = LocalStore(tmp_path / "s")
    st.write("x", b"a file where a directory is expected")
    with pytest.raises(StoreError):
        st.write("x/y", b"1")
    with pytest.raises(StoreError):
        st.create("x/y", b"1")
    with pytest.raises(FileNotFoundError):
        st.read("x/y")  # a key under a file is simply missing
