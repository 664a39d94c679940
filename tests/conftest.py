"""Shared fixtures: every store test runs on a local dir, memory:// and a real
S3 endpoint (moto's ThreadedMotoServer on 127.0.0.1, used through s3fs)."""
from __future__ import annotations

import os
import uuid

import pytest

import puffer_cli
from puffer_cli import store as _store


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP endpoint on loopback. Yields its URL."""
    from moto.server import ThreadedMotoServer

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


@pytest.fixture(params=["local", "memory", "s3"])
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
        endpoint = request.getfixturevalue("s3_server")
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
