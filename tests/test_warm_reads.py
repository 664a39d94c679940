"""A warm reader's caches never hide another process's acknowledged write from a strong query.

The query path keeps per-process state (the head, the replayed documents, meta.json behind its
stat, per-frame sort orders, filter masks and vector matrices) so that a query on a small
namespace costs a fraction of a millisecond; the strong-read head check on a local store is two
``stat`` calls.  These tests warm every one of those caches, let a second process write (and
index), and require the very next strong query in this process to see it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import puffer_cli
import pytest
from puffer_cli.index.builder import index_namespace
from puffer_cli.search import engine

DIM = 8


def rows(lo: int, hi: int, cat: str = "a") -> list[dict]:
    rng = np.random.default_rng(lo)
    return [
        {"id": i, "vector": rng.standard_normal(DIM).tolist(), "cat": cat, "t": f"word{i} fox"} for i in range(lo, hi)
    ]


def other_process(store: str, code: str) -> None:
    """Run ``code`` (with ``ns``: namespace "w" of ``store``) in a fresh Python process."""
    head = "import json, sys, puffer_cli\nfrom puffer_cli.index.builder import index_namespace\n"
    prog = head + "ns = puffer_cli.connect(sys.argv[1]).open_namespace('w')\n" + textwrap.dedent(code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", prog, store], check=True, env=env, timeout=120)


QUERIES = {
    "order": {"rank_by": ["id", "desc"], "top_k": 3},
    "filter": {"rank_by": ["id", "asc"], "filters": ["cat", "Eq", "b"], "top_k": 50},
    "ann": {"rank_by": ["vector", "ANN", [1.0] * DIM], "top_k": 200},
    "bm25": {"rank_by": ["t", "BM25", "fox"], "top_k": 200},
    "count": {"aggregate_by": {"n": ["Count"]}, "filters": ["cat", "Eq", "b"]},
}


def answer(ns, name: str, level: str = "strong") -> list:
    out = engine.run_query(ns, {**QUERIES[name], "consistency": {"level": level}})
    return out["aggregations"]["n"] if name == "count" else sorted(r["id"] for r in out["rows"])


def warm(ns, names=tuple(QUERIES)) -> None:
    for _ in range(3):  # twice at least: the second run answers from the caches
        for name in names:
            answer(ns, name)


@pytest.mark.parametrize("indexed", [False, True], ids=["wal-only", "indexed"])
def test_next_strong_query_sees_another_process_write(tmp_path, indexed):
    store = str(tmp_path / "store")
    ns = puffer_cli.connect(store).open_namespace("w")
    schema = {"t": {"type": "string", "full_text_search": True}}
    ns.write({"upsert_rows": rows(0, 20), "schema": schema, "distance_metric": "cosine_distance"})
    if indexed:
        index_namespace(ns)
    warm(ns)
    assert answer(ns, "order") == [17, 18, 19] and answer(ns, "filter") == [] and answer(ns, "count") == 0

    other_process(store, f"ns.write({{'upsert_rows': {rows(20, 25, 'b')!r}}})")
    assert answer(ns, "order") == [22, 23, 24]
    assert answer(ns, "filter") == [20, 21, 22, 23, 24]
    assert answer(ns, "count") == 5
    assert answer(ns, "ann") == list(range(25)) and answer(ns, "bm25") == list(range(25))

    # another process indexes and deletes: the new index pointer (meta.json) and the delete both show
    other_process(store, "index_namespace(ns)\nns.write({'deletes': [24, 3]})")
    warm_after = answer(ns, "order")
    assert warm_after == [21, 22, 23]
    assert answer(ns, "filter") == [20, 21, 22, 23] and answer(ns, "count") == 4
    assert answer(ns, "ann") == [i for i in range(24) if i != 3]
    gen = engine.run_query(ns, QUERIES["ann"])["performance"]
    assert gen["approx_namespace_size"] == 23


def test_next_strong_query_sees_a_recreated_namespace(tmp_path):
    """Deleted and written again by another process (even back to the same seq): a strong
    query answers from the new namespace, not from this process's replay of the old one."""
    store = str(tmp_path / "store")
    ns = puffer_cli.connect(store).open_namespace("w")
    ns.write({"upsert_rows": rows(0, 5)})
    ns.write({"upsert_rows": rows(5, 10)})
    warm(ns, ("order", "filter", "ann", "count"))
    other_process(
        store,
        f"ns.delete_all()\nns.write({{'upsert_rows': {rows(100, 103)!r}}})\n"
        f"ns.write({{'upsert_rows': {rows(103, 104)!r}}})",
    )
    assert answer(ns, "order") == [101, 102, 103]


def test_cached_filter_masks_are_read_only_and_per_frame(tmp_path):
    from puffer_cli.search import scoring

    ns = puffer_cli.connect(str(tmp_path / "store")).open_namespace("w")
    ns.write({"upsert_rows": rows(0, 6, "b")})
    docs, head = ns.docs()
    m = scoring.filter_mask(docs, ["cat", "Eq", "b"], head.schema)
    assert m.all() and scoring.filter_mask(docs, ["cat", "Eq", "b"], head.schema) is m
    with pytest.raises(ValueError):
        m[0] = False
    ns.write({"upsert_rows": [{"id": 0, "vector": [0.0] * DIM, "cat": "a"}]})
    docs2, head2 = ns.docs()
    m2 = scoring.filter_mask(docs2, ["cat", "Eq", "b"], head2.schema)
    assert sorted(docs2.filter(m2)["id"].to_list()) == [1, 2, 3, 4, 5]
