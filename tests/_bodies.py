"""Helpers shared by the fuzz suites (test_fuzz_http, test_fuzz_input, test_write_limits)."""

from __future__ import annotations


def paths(v, path=()):
    """Every path (a tuple of keys / list indexes) into the JSON value ``v``, ``()`` first."""
    yield path
    if isinstance(v, dict):
        for k, x in v.items():
            yield from paths(x, path + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from paths(x, path + (i,))
