"""`puffer index` as separate processes: concurrent runs, SIGKILL at several
points, the CLI's output and exit codes, warm and recall."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import puffer_cli
import pytest
from puffer_cli.cli import main as cli
from puffer_cli.index import builder
from puffer_cli.search import engine
from puffer_cli.store import layout

from .conftest import store_args
from .test_index import SCHEMA, current_files, exact, index_keys, make_rows, queries, same


@pytest.fixture(autouse=True)
def _no_persistent_cache():
    from puffer_cli.store import filecache as cache

    cache.configure("")
    yield
    cache.configure("")


def run_index(args, env_extra=None, **kw):
    env = {**os.environ, "PUFFER_CACHE_DIR": "", "PUFFER_INDEX_GC_GRACE": "0", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "puffer_cli.cli.main", "index", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def fresh(store_url):
    url, endpoint = store_url
    return puffer_cli.connect(url, s3_endpoint=endpoint)


@pytest.mark.parametrize("store_url", ["local", pytest.param("s3", marks=pytest.mark.slow)], indirect=True)
def test_two_concurrent_index_processes(store_url):
    db = fresh(store_url)
    rng = np.random.default_rng(10)
    ns = db.open_namespace("c")
    ns.write({"upsert_rows": make_rows(rng, 0, 120), "schema": SCHEMA})
    pause = {"PUFFER_INDEX_PAUSE_AT": "after_lease:1.5"}
    procs = [run_index(["c", *store_args(store_url)], pause) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], outs
    text = [o[0] for o in outs]
    assert sum("indexed 120 rows" in t for t in text) == 1, text
    assert sum("skipped, lease held by" in t for t in text) == 1, text
    meta, _ = ns.read_meta()
    assert meta["index"]["generation"] == 1 and meta["index"]["covers_through_seq"] == 1
    assert index_keys(ns) == current_files(ns)
    body = queries(rng)[3]  # (every query form is compared on every backend in test_index.py)
    assert same(engine.run_query(ns, body), exact(ns, body))


def await_killed(procs: dict) -> None:
    """Each crash point's ``puffer index`` died by its SIGKILL; then their leases expire."""
    for point, p in procs.items():
        p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL, point
    time.sleep(1.1)


@pytest.mark.slow  # SIGKILL (nox -s slow)
@pytest.mark.parametrize("store_url", ["local"], indirect=True)
def test_sigkill_then_next_run_completes(store_url):
    db = fresh(store_url)
    rng = np.random.default_rng(11)
    points = [
        "after_fold",
        "after_cut",
        "mid_segment",
        "mid_fts",
        "after_bm25",
        "after_manifest",
        "after_publish",
        "mid_gc",
    ]
    procs = {}
    for k, point in enumerate(points):
        ns = db.open_namespace(f"k{k}")
        ns.write({"upsert_rows": make_rows(rng, 0, 60), "schema": SCHEMA})
        builder.index_namespace(ns, gc_grace_s=0)
        ns.write({"upsert_rows": make_rows(rng, 60, 20), "deletes": [1, 2, 3], "patch_rows": [{"id": 4, "cat": 77}]})
        ns.write({"deletes": list(range(10, 30))})  # > 20% dead: forces a merge too
        # a killed run's orphan: GC has a file to delete (the replaced generation stays as the
        # WAL retention floor), so mid_gc is reached
        ns.store.write(layout.index_run_file(ns.name, 9, "orphan", "killed", "bin"), b"x")
        procs[point] = run_index(
            [f"k{k}", *store_args(store_url)],
            {"PUFFER_INDEX_CRASH_AT": point, "PUFFER_INDEX_LEASE_TTL": "1", "PUFFER_INDEX_SEGMENT_ROWS": "16"},
        )
    await_killed(procs)
    for k, point in enumerate(points):
        ns = db.open_namespace(f"k{k}")
        ns.write({"upsert_rows": make_rows(rng, 100, 5)})
        rep = builder.index_namespace(ns, gc_grace_s=0)
        assert rep.status == "indexed", (point, rep)
        docs, _ = ns.docs()
        meta, _ = ns.read_meta()
        assert meta["index"]["rows"] == docs.height == 60 + 20 - 3 - 20 + 5, point
        assert meta["index"]["covers_through_seq"] == ns.head().seq
        assert index_keys(ns) == current_files(ns), point  # no orphans left after GC
        got = engine.run_query(ns, {"rank_by": ["id", "asc"], "top_k": 1000, "consistency": {"level": "eventual"}})
        assert [r["id"] for r in got["rows"]] == sorted(docs["id"].to_list()), point  # none lost / duplicated
        for body in queries(rng)[1:4]:
            assert same(engine.run_query(ns, body), exact(ns, body)), (point, body)


def test_cli_index_warm_recall(tmp_path, capsys):
    store = str(tmp_path / "s")
    db = puffer_cli.connect(store)
    rng = np.random.default_rng(12)
    ns = db.open_namespace("cli")
    # a namespace named on the command line that does not exist is an error (a typo in a crontab)
    assert cli.main(["index", "cli", "--store", store]) == 1
    assert "namespace 'cli' not found" in capsys.readouterr().err
    ns.write({"upsert_rows": make_rows(rng, 0, 50), "schema": SCHEMA})
    db.open_namespace("other").write({"upsert_rows": [{"id": 1, "x": 1}]})
    assert cli.main(["index", "--all", "--store", store, "--gc-grace", "0"]) == 0
    # piped output: each line starts with an ISO-8601 UTC timestamp (cron logs)
    out = [line.split(" ", 1)[1] for line in capsys.readouterr().out.strip().splitlines()]
    assert len(out) == 2 and out[0].startswith("cli: indexed 50 rows") and out[1].startswith("other: indexed 1 row,")
    assert cli.main(["index", "cli", "--store", store, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)["namespaces"][0]
    assert rep["status"] == "up-to-date" and rep["generation"] == 1

    cache_dir = tmp_path / "cache"
    assert cli.main(["warm", "cli", "--store", store, "--cache-dir", str(cache_dir), "--json"]) == 0
    w = json.loads(capsys.readouterr().out)
    assert w["generation"] == 1 and w["files"] >= 5 and w["bytes"] > 0
    assert cli.main(["recall", "cli", "--store", store, "--num", "5", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["avg_recall"] == 1.0 and r["avg_ann_count"] == 10 and r["num"] == 5
    assert cli.main(["recall", "cli", "--store", store, "--num", "3", "--filter", '["cat","Eq",1]']) == 0
    assert "recall@10 1.0000" in capsys.readouterr().out
    assert cli.main(["recall", "cli", "--store", store, "--num", "3", "--probe", "1", "--fill", "0", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["probe"], r["fill"], r["avg_recall"]) == (1.0, 0.0, 1.0)
    assert cli.main(["recall", "cli", "--store", store, "--fill", "9"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: fill must be a number from 0 to 8") and "Traceback" not in err
    assert cli.main(["recall", "cli", "--store", store, "--num", "3", "--prune", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prune"] == 0.0
    assert cli.main(["recall", "cli", "--store", store, "--prune", "-1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: prune must be a number from 0 to 10") and "Traceback" not in err


def test_cli_index_busy_and_failure(tmp_path, capsys):
    store = str(tmp_path / "s")
    db = puffer_cli.connect(store)
    ns = db.open_namespace("b")
    ns.write({"upsert_rows": [{"id": 1, "x": 1}]})
    from puffer_cli.index.lease import Lease

    other = Lease(db.store, "b", ttl=30, holder="elsewhere:1:x")
    assert other.acquire() is None
    try:
        assert cli.main(["index", "b", "--store", store]) == 0
        assert "skipped, lease held by elsewhere:1:x until" in capsys.readouterr().out
    finally:
        other.release()
    assert cli.main(["index", "b", "--store", store]) == 0
    assert "indexed 1 row," in capsys.readouterr().out
    # a corrupt WAL segment makes the run fail: exit 1, one line naming it
    ns.write({"upsert_rows": [{"id": 2, "x": 2}]})
    p = db.store.local_path(layout.wal("b", 2))
    p.write_bytes(p.read_bytes()[:-3])
    assert cli.main(["index", "b", "--store", store]) == 1
    err = capsys.readouterr().err  # one namespace: its own error, on stderr
    assert err.startswith("Error: ") and "00000000000000000002" in err and "internal" not in err, err


def test_lease_expiry_takeover(mem_db):
    from puffer_cli.index.lease import Lease

    a = Lease(mem_db.store, "n", ttl=0.2, holder="a")
    assert a.acquire() is None
    a._stop.set()  # a "dies": no more renewals
    b = Lease(mem_db.store, "n", ttl=5, holder="b")
    held = b.acquire()
    assert held is not None and held.holder == "a"
    time.sleep(0.3)
    assert b.acquire() is None and b.took_over == "a"
    assert not a.renew() and a.lost  # the old holder notices and must not publish
    b.release()


@pytest.mark.slow  # SIGKILL (nox -s slow)
@pytest.mark.parametrize("store_url", ["local", "s3"], indirect=True)
def test_sigkill_under_shared_routing_then_next_run_completes(store_url):
    """Shared routing writes a book and a list-major stack (and on S3 a prefetch pack): a run
    killed after any of them (or after its manifest) leaves the published generation
    answering, and the next run publishes one whose stack covers its big segments, with no
    orphan after GC."""
    db = fresh(store_url)
    rng = np.random.default_rng(13)
    env = {"PUFFER_INDEX_LEASE_TTL": "1", "PUFFER_INDEX_SEGMENT_ROWS": "16", "PUFFER_IVF_ROUTING": "shared"}
    points = ["after_book", "after_segment", "after_stack", "after_manifest"]
    if db.store.is_remote:
        points.append("after_pack")
    procs = {}
    for k, point in enumerate(points):
        ns = db.open_namespace(f"s{k}")
        ns.write({"upsert_rows": make_rows(rng, 0, 60), "schema": SCHEMA})
        procs[point] = run_index([f"s{k}", *store_args(store_url)], {**env, "PUFFER_INDEX_CRASH_AT": point})
    await_killed(procs)
    for k, point in enumerate(points):
        ns = db.open_namespace(f"s{k}")
        p = run_index([f"s{k}", *store_args(store_url)], env)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, (point, out, err)
        meta, _ = ns.read_meta()
        man = builder.load_manifest(ns.store, meta["index"]["manifest"])
        assert man["ann_stacks"]["vector"]["segments"], point
        assert index_keys(ns) == current_files(ns), point  # no orphans left after GC
        for body in queries(rng)[1:4]:
            assert same(engine.run_query(ns, body), exact(ns, body)), (point, body)


@pytest.mark.slow  # SIGKILL (nox -s slow)
@pytest.mark.parametrize("store_url", ["local"], indirect=True)
def test_sigkill_after_the_filter_codes(store_url, monkeypatch):
    """Killed with a segment's filter codes (``lists4``, 64-dim vectors) written and the segment
    not finished: the next run completes, leaves no orphan, and filtered ANN answers as the
    exact engine does."""
    db = fresh(store_url)
    rng = np.random.default_rng(16)
    ns = db.open_namespace("fc")
    x = rng.normal(size=(400, 64)).round(3)
    cols = {"id": list(range(400)), "vector": x.tolist(), "u": rng.integers(0, 10, 400).tolist()}
    ns.write({"upsert_columns": cols, "distance_metric": "euclidean_squared"})
    env = {"PUFFER_INDEX_CRASH_AT": "mid_filter_codes", "PUFFER_INDEX_LEASE_TTL": "1", "PUFFER_IVF_ROUTING": "segment"}
    await_killed({"mid_filter_codes": run_index(["fc", *store_args(store_url)], env)})
    assert not ns.read_meta()[0].get("index")  # nothing published
    ns.write({"upsert_rows": [{"id": 400, "vector": x[0].tolist(), "u": 3}]})
    monkeypatch.setenv("PUFFER_IVF_ROUTING", "segment")
    rep = builder.index_namespace(ns, gc_grace_s=0)
    assert rep.status == "indexed", rep
    assert index_keys(ns) == current_files(ns)  # the killed run's files collected
    assert any(k.endswith(".lists4") for k in current_files(ns))
    body = {
        "rank_by": ["vector", "ANN", x[5].tolist()],
        "top_k": 5,
        "filters": ["u", "Lt", 4],
        "consistency": {"level": "eventual"},
    }
    assert same(engine.run_query(ns, body), exact(ns, body))
