"""Unattended indexing (issue 23): damaged index files are reported by name and rebuilt by
`puffer index --repair`; WAL retention collects covered entries; the cron line works."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from puffer_cli import connect
from puffer_cli.cli.main import main
from puffer_cli.errors import CorruptIndex, WalCollected
from puffer_cli.index.manifest import load_manifest
from puffer_cli.index.segment import GENS
from puffer_cli.store import layout

ROOT = Path(__file__).resolve().parent.parent
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


@pytest.fixture(autouse=True)
def _no_persistent_cache():
    from puffer_cli.store import filecache as cache

    cache.configure("")
    yield
    cache.configure("")


def _fill(url: str, n: int = 300, name: str = "d", endpoint: str | None = None):
    db = connect(url, s3_endpoint=endpoint)
    ns = db.namespace(name)
    rng = np.random.default_rng(1)
    words = "quick brown fox lazy dog river stone moon sun".split()
    for a in range(0, n, 100):
        ns.write(
            {
                "upsert_rows": [
                    {"id": i, "vector": rng.normal(size=4).round(3).tolist(), "text": " ".join(rng.choice(words, 4))}
                    for i in range(a, a + 100)
                ],
                "schema": {"text": {"type": "string", "full_text_search": True}},
                "distance_metric": "euclidean_squared",
            }
        )
    return db, ns


QUERIES = [
    {"rank_by": ["vector", "ANN", [0.1, 0.2, 0.3, 0.4]], "top_k": 5},
    {"rank_by": ["text", "BM25", "quick fox"], "top_k": 5},
    {"rank_by": ["id", "asc"], "top_k": 5, "filters": ["text", "ContainsAnyToken", "dog"]},
]


def _answers(ns):
    GENS.clear()
    return [[(r["id"], round(float(r.get("$dist", 0)), 4)) for r in ns.query(q).rows] for q in QUERIES]


def _segment_files(db, name):
    meta, _ = db.open_namespace(name).read_meta()
    man = load_manifest(db.store, meta["index"]["manifest"])
    return man["segments"][0]


def _damage_cases():
    """Every (file kind, damage) on a local store; on moto (S3) and SeaweedFS two in the default
    suite, the rest slow."""
    for kind in ("attrs", "fts", "route"):
        for damage in ("delete", "truncate"):
            yield pytest.param(kind, damage, "local", id=f"{damage}-{kind}-local")
            fast = (kind, damage) in (("attrs", "truncate"), ("route", "delete"))
            yield pytest.param(kind, damage, "s3", id=f"{damage}-{kind}-s3", marks=[] if fast else [pytest.mark.slow])
            weed = [pytest.mark.seaweedfs] + ([] if fast else [pytest.mark.slow])
            yield pytest.param(kind, damage, "seaweedfs", id=f"{damage}-{kind}-seaweedfs", marks=weed)


@pytest.mark.parametrize("kind,damage,backend", list(_damage_cases()))
def test_damaged_index_file_is_named_and_repaired(tmp_path, capsys, request, kind, damage, backend):
    if backend in ("s3", "seaweedfs"):
        endpoint = request.getfixturevalue("s3_server" if backend == "s3" else "seaweedfs_server")
        url, store_flags = f"s3://puffer-test/{uuid.uuid4().hex}", ["--s3-endpoint", endpoint]
    else:
        endpoint, url, store_flags = None, str(tmp_path / "s"), []
    db, ns = _fill(url, endpoint=endpoint)
    ns.index()
    want = _answers(ns)
    seg = _segment_files(db, "d")
    key = {
        "attrs": seg["docs"]["key"] if "docs" in seg else seg["attrs"],  # the doc store (cols-1, or attrs.arrow)
        "fts": seg["fts"]["text"]["key"],  # the full-text blocks (blk-1: the one stored form)
        "route": seg["ann"]["vector"]["route"],
    }[kind]
    if damage == "delete":
        db.store.delete(key)
    else:
        data = db.store.read(key)
        db.store.write(key, data[: len(data) // 2])
    from puffer_cli.store import filecache

    filecache.configure("")  # a fresh local cache: the copy the indexer cached is intact
    if _packed(db, key):  # the prefetch pack holds an intact copy (test_pack.py): answers stay right
        assert _answers(ns) == want
    else:
        errors = []
        for q in QUERIES:
            GENS.clear()
            try:
                ns.query(q)
            except CorruptIndex as e:
                errors.append(e)
        assert errors, "no query noticed the damage"
        for e in errors:
            assert seg["name"] in e.message and "--repair" in (e.hint or "")
            assert key in e.message
        # over the CLI: a clear error, not an internal one
        GENS.clear()
        args = ["--rank-by", '["text","BM25","quick fox"]'] if kind != "route" else ["--vector", "[0.1,0.2,0.3,0.4]"]
        rc = main(["query", "d", "--store", url, *store_flags, *args])
        err = capsys.readouterr().err
        if rc:
            assert "internal error" not in err and "--repair" in err, err
    rep = ns.index(repair=True)
    assert rep.status == "indexed" and rep.repaired == [seg["name"]], rep
    assert _answers(ns) == want


def _packed(db, key: str) -> bool:
    """Does namespace d's index pointer's prefetch pack (index/pack.py) hold ``key``?"""
    ptr = db.open_namespace("d").read_meta()[0]["index"]
    pk = ptr.get("prefetch_pack")
    return bool(pk) and key in ptr.get("prefetch_vector", []) and key not in pk.get("unpacked", [])


def test_missing_file_is_repaired_by_a_plain_run(tmp_path):
    url = str(tmp_path / "s")
    db, ns = _fill(url)
    ns.index()
    want = _answers(ns)
    seg = _segment_files(db, "d")
    (Path(url) / (seg["docs"]["key"] if "docs" in seg else seg["attrs"])).unlink()
    rep = ns.index()
    assert rep.status == "indexed" and rep.repaired == [seg["name"]]
    assert _answers(ns) == want


def test_wal_retention_collects_covered_entries(tmp_path, capsys):
    url = str(tmp_path / "s")
    db, ns = _fill(url)
    raw = ns._ns
    ns.index(wal_retention_s=0)  # candidate = generation 1
    assert len(db.store.list(layout.wal_dir("d"))) == 3
    ns.write({"upsert_rows": [{"id": 1000, "vector": [1, 2, 3, 4], "text": "new one"}]})
    ns.write({"deletes": [5]})
    before = ns.export(str(tmp_path / "a.parquet"))
    rep = ns.index(wal_retention_s=0)  # floor = generation 1 (seq 3): entries 1..3 collected
    assert rep.wal_deleted == 3
    left = [layout.wal_seq(k) for k in db.store.list(layout.wal_dir("d"))]
    assert left == [4, 5]
    # a fresh process (no cached replay) still sees every row, writes and exports work
    db2 = connect(url)
    ns2 = db2.namespace("d")
    from puffer_cli.wal import namespace as wn

    wn.forget(db2.store, "d")
    after = ns2.export(str(tmp_path / "b.parquet"))
    assert after["rows"] == before["rows"] == 300
    import polars as pl

    assert pl.read_parquet(tmp_path / "a.parquet").equals(pl.read_parquet(tmp_path / "b.parquet"))
    ns2.write({"patch_by_filter": {"filters": ["id", "Lt", 3], "patch": {"text": "patched"}}})
    assert ns2.query({"rank_by": ["id", "asc"], "top_k": 3, "include_attributes": ["text"]}).rows[0]["text"] == (
        "patched"
    )
    # --at-seq inside the retained WAL works; below it: a typed error with a hint
    assert ns2.export(str(tmp_path / "c.parquet"), at_seq=4)["rows"] == 301
    with pytest.raises(WalCollected) as ei:
        ns2.export(str(tmp_path / "c.parquet"), at_seq=2)
    assert "oldest readable seq is 3" in ei.value.message and "--wal-retention" in (ei.value.hint or "")
    rc = main(["export", "d", "--store", url, "--at-seq", "1", "-o", str(tmp_path / "x.parquet")])
    err = capsys.readouterr().err
    assert rc == 1 and "older than the retained WAL" in err and "internal" not in err
    del raw


def test_wal_retention_default_keeps_recent_entries(tmp_path):
    url = str(tmp_path / "s")
    db, ns = _fill(url)
    ns.index()
    ns.write({"deletes": [1]})
    rep = ns.index()
    assert rep.wal_deleted == 0 and len(db.store.list(layout.wal_dir("d"))) == 4


def test_wal_retention_spares_branch_reads(tmp_path):
    url = str(tmp_path / "s")
    db, ns = _fill(url)
    ns.index(wal_retention_s=0)
    from puffer_cli.jobs.branch import branch_namespace

    branch_namespace(db.store, "b", "d")
    ns.write({"deletes": [7]})
    ns.index(wal_retention_s=0)
    assert len(db.store.list(layout.wal_dir("d"))) == 4  # the branch reads seqs 1..3 of d
    GENS.clear()
    assert db.namespace("b").export(str(tmp_path / "b.parquet"))["rows"] == 300


def _cron(tmp_path, *args) -> subprocess.CompletedProcess:
    """Run the venv's puffer as cron does: an empty environment with cron's PATH."""
    exe = shutil.which("puffer") or str(Path(sys.executable).with_name("puffer"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh", "PYTHONPATH": str(ROOT)}
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_cron_line_runs_in_crons_environment(tmp_path):
    url = str(tmp_path / "s")
    _fill(url)
    _fill(url, 100, name="e")
    log = tmp_path / "puffer-index.log"
    line = (ROOT / "README.md").read_text()
    assert "flock -n" in line and ">> /var/log/puffer-index.log 2>&1" in line
    exe = shutil.which("puffer") or str(Path(sys.executable).with_name("puffer"))
    cmd = f"flock -n {tmp_path}/index.lock {exe} index --all --max-seconds 50 --quiet --store {url} >> {log} 2>&1"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh", "PYTHONPATH": str(ROOT)}
    for _ in range(2):
        p = subprocess.run(["/bin/sh", "-c", cmd], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (p.stdout, p.stderr, log.read_text())
    lines = log.read_text().splitlines()
    assert len(lines) == 2, lines  # the second run was up to date: --quiet prints nothing
    assert all(STAMP.match(x) for x in lines) and "d: indexed" in lines[0] + lines[1]
    p = _cron(tmp_path, "index", "no-such-ns", "--store", url)
    assert p.returncode == 1 and "Error: namespace 'no-such-ns' not found" in p.stderr
    p = _cron(tmp_path, "index", "d", "--store", url)
    assert p.returncode == 0 and STAMP.match(p.stdout) and "up to date" in p.stdout


def test_hints_name_the_namespace(tmp_path, capsys):
    """No literal NAMESPACE in a hint: the damaged index file's and wal-inspect's name the namespace."""
    from puffer_cli.index.docs import corrupt

    e = corrupt(f"{tmp_path}/cache/ab12/my-ns/index/00000000000000000003/seg-000001-x/docs.cols", ValueError("x"))
    assert "`puffer index my-ns --repair`" in e.hint and "NAMESPACE" not in e.hint
    url = str(tmp_path / "s")
    _fill(url, 100, name="my-ns")
    for args in (["--show", "99"],):
        assert main(["wal-inspect", "my-ns", *args, "--store", url]) == 1
        err = capsys.readouterr().err
        assert "`puffer wal-inspect my-ns`" in err and "NAMESPACE" not in err, err


def test_index_all_goes_on_past_a_damaged_namespace(tmp_path, capsys):
    """`index --all` (the cron job) with one damaged namespace indexes the others, names the
    damaged one on stderr, and exits 1 at the end."""
    url = str(tmp_path / "s")
    for name in ("a", "b", "c"):
        _fill(url, 100, name=name)
    db = connect(url)
    key = layout.wal("b", 1)
    data = db.store.read(key)
    db.store.write(key, data[: len(data) // 2])
    rc = main(["index", "--all", "--store", url])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "a: indexed" in out and "c: indexed" in out and "b:" not in out, out
    assert "b: FAILED" in err and "1 of 3 namespaces failed to index: b" in err and "internal" not in err, err
    assert STAMP.match(err.splitlines()[0]), err
    assert [db.open_namespace(n).read_meta()[0]["index"]["covers_through_seq"] for n in ("a", "c")] == [1, 1]
