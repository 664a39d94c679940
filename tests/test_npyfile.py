"""index/npyfile.py: .npy / .npz reads under one lock (numpy's header parser is not
thread-safe on CPython 3.11): the arrays come back whole and equal, from bytes or a path, from
many threads at once; a file that is not an array is a ValueError (the readers' damage path)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from puffer_cli.index import npyfile


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_npz_and_npy_round_trip_from_bytes_and_paths(tmp_path):
    a, b = np.arange(10, dtype=np.int64), np.ones((3, 4), np.float32)
    data = _npz(a=a, b=b)
    z = npyfile.load_npz(data)
    assert sorted(z.files) == ["a", "b"] and "a" in z
    assert np.array_equal(z["a"], a) and np.array_equal(z["b"], b)
    p = tmp_path / "x.npz"
    p.write_bytes(data)
    assert np.array_equal(npyfile.load_npz(p)["b"], b)
    buf = io.BytesIO()
    np.save(buf, a)
    assert np.array_equal(npyfile.load_npy(buf.getvalue()), a)


def test_many_threads_read_the_same_arrays():
    files = [_npz(**{f"k{j}": np.full(j + 1, i) for j in range(20)}) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(npyfile.load_npz, files * 25))
    for n, z in enumerate(got):
        i = n % 8
        assert all(np.array_equal(z[f"k{j}"], np.full(j + 1, i)) for j in range(20))


@pytest.mark.parametrize("data", [b"", b"not an array", _npz(a=np.arange(3))])
def test_not_an_npy_file_is_a_value_error(data):
    with pytest.raises((ValueError, OSError, EOFError)):
        npyfile.load_npy(data)
