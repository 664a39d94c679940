"""Streaming an index file into a store (``paged.put_chunks``, ``Store.write_chunks``): the
same bytes and parts as writing it whole, never a half-written file, sizes checked."""

from __future__ import annotations

import types
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from puffer_cli.index import paged, segwrite
from puffer_cli.store.filecache import Cache
from puffer_cli.store.local import LocalStore


def _writer(store, tmp_path):
    rep = types.SimpleNamespace(files_written=0, bytes_written=0)
    return segwrite.Writer(store, Cache(str(tmp_path / f"cache-{uuid.uuid4().hex}")), rep)


def _chunked(data: bytes, cuts: list[int]):
    at = 0
    for c in sorted({min(c, len(data)) for c in cuts}):
        yield data[at:c]
        at = c
    yield data[at:]


def _read(store, entry: dict) -> bytes:
    return b"".join(store.read(k) for k in paged.files(entry))


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_a_local_file_written_in_chunks_is_the_whole(tmp_path_factory, data, cuts):
    tmp = tmp_path_factory.mktemp("local")
    store = LocalStore(tmp / "store")
    w = _writer(store, tmp)
    ent = paged.put_chunks(w, "a/f.bin", _chunked(data, cuts), len(data))
    assert ent == {"key": "a/f.bin"} and store.read("a/f.bin") == data
    assert w.sizes["a/f.bin"] == len(data) and w.rep.bytes_written == len(data)


def test_a_failed_or_short_stream_leaves_nothing_behind(tmp_path):
    store = LocalStore(tmp_path / "store")
    w = _writer(store, tmp_path)
    store.write("a/f.bin", b"old")

    def broken():
        yield b"x" * 100
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="producer"):
        paged.put_chunks(w, "a/f.bin", broken(), 200)
    assert store.read("a/f.bin") == b"old"  # untouched
    with pytest.raises(ValueError, match="expected"):
        paged.put_chunks(w, "a/g.bin", iter([b"abc"]), 4)
    leftovers = [p.name for p in (tmp_path / "store" / "a").iterdir()]
    assert not [n for n in leftovers if n.startswith(".tmp-")]


@pytest.mark.parametrize("size", [0, 999, 1000, 1001, 4096, 10_000])
def test_parts_on_s3_are_those_of_writing_it_whole(s3_server, tmp_path, size):
    """Remote: each part uploaded as it fills (a few at a time), named and sized as
    ``paged.put`` names and sizes them."""
    import puffer_cli

    store = puffer_cli.connect(f"s3://puffer-test/{uuid.uuid4().hex}", s3_endpoint=s3_server).store
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    w = _writer(store, tmp_path)
    streamed = paged.put_chunks(w, "s/f.bin", _chunked(data, [7, 333, 2500, 2501]), size, part_bytes=1000)
    whole = paged.put(w, "w/f.bin", data, part_bytes=1000)
    w.drain()
    same = {**streamed, "key": "w/f.bin", "parts": [p.replace("s/", "w/") for p in streamed.get("parts", [])]}
    assert same == {**whole, "parts": whole.get("parts", [])}
    assert _read(store, streamed) == data
    with pytest.raises(ValueError, match="expected"):
        paged.put_chunks(w, "s/g.bin", iter([data]), size + 1, part_bytes=1000)
