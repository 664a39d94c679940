"""Helpers shared by the fuzz suites (test_fuzz_http, test_fuzz_input, test_write_limits)."""

from __future__ import annotations


def paths(v, path=()):
    """Every path (a tuple of keys / list indexes) into the JSON value ``v``, ``()`` first,
    in pre-order; iterative, so a hostile value nested thousands deep is walked too."""
    stack = [(v, path)]
    while stack:
        x, p = stack.pop()
        yield p
        if isinstance(x, dict):
            stack.extend(reversed([(y, p + (k,)) for k, y in x.items()]))
        elif isinstance(x, list):
            stack.extend(reversed([(y, p + (i,)) for i, y in enumerate(x)]))
