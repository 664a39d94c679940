"""puffer namespaces / show / delete, --version, hybrid (RRF), --aggregate/--group-by, piped output."""

import json
from pathlib import Path

import puffer_cli
import pytest
from puffer_cli import connect
from puffer_cli.cli.main import main
from puffer_cli.search.engine import rrf_fuse

from tests.conftest import store_args


def _fill(url, names=("alpha", "beta", "other"), endpoint=None):
    db = connect(url, s3_endpoint=endpoint)
    for i, n in enumerate(names):
        db.open_namespace(n).write(
            {
                "upsert_rows": [
                    {"id": j, "vector": [float(j), 1.0], "text": "quick fox" if j % 2 else "lazy dog", "lang": "en"}
                    for j in range(i + 2)
                ],
                "schema": {"text": {"type": "string", "full_text_search": True}},
            }
        )
    return db


def run(capsys, *args):
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_namespaces_show_delete(store_url, capsys):
    url, endpoint = store_url
    db = _fill(url, endpoint=endpoint)
    st = store_args(store_url)
    rc, out, _ = run(capsys, "namespaces", *st, "--json")
    assert rc == 0
    assert json.loads(out)["namespaces"] == [
        {"namespace": "alpha", "rows": 2, "seq": 1},
        {"namespace": "beta", "rows": 3, "seq": 1},
        {"namespace": "other", "rows": 4, "seq": 1},
    ]
    rc, out, _ = run(capsys, "namespaces", *st, "--prefix", "b")
    assert rc == 0 and out.splitlines() == ["namespace\trows\tseq", "beta\t3\t1"]  # piped: plain text
    rc, out, _ = run(capsys, "show", "beta", *st, "--json")
    info = json.loads(out)
    assert rc == 0 and info["rows"] == 3 and "text" in info["schema"]
    assert info["index"]["generation"] is None and info["index"]["unindexed_wal_entries"] == 1
    rc, out, _ = run(capsys, "show", "beta", *st)
    assert rc == 0 and "rows            3" in out
    rc, _, err = run(capsys, "delete", "beta", *st)
    assert rc == 1 and err.startswith("Error: refusing to delete") and err.count("\n") == 1
    rc, out, _ = run(capsys, "delete", "beta", *st, "--yes")
    assert rc == 0 and "deleted 'beta'" in out
    assert list(db.namespaces()) == ["alpha", "other"]
    assert db.store.list("beta/") == []
    if not db.store.is_remote and not url.startswith("memory://"):
        assert not (Path(url) / "beta").exists()  # no directory or lock file left behind
    rc, _, err = run(capsys, "show", "beta", *st)
    assert rc == 1 and "`puffer namespaces`" in err
    rc, out, _ = run(capsys, "index", "--all", *st, "--json")
    assert rc == 0 and [r["namespace"] for r in json.loads(out)["namespaces"]] == ["alpha", "other"]


def test_version(capsys):
    from puffer_cli import __version__

    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.strip() == f"puffer {__version__}"


def test_hybrid_rrf_and_aggregate(tmp_path, capsys):
    url = str(tmp_path / "s")
    _fill(url, ("h",))
    st = ["--store", url]
    rc, out, _ = run(capsys, "query", "h", *st, "--vector", "[1.0, 1.0]", "--bm25", "text", "fox")
    assert rc == 0
    rows = json.loads(out)["rows"]
    assert rows[0]["id"] == 1 and rows[0]["$dist"] == pytest.approx(2 / 61)
    rc, out, _ = run(
        capsys, "query", "h", *st, "--aggregate", '{"n": ["Count"]}', "--group-by", "text", "--format", "json"
    )
    assert rc == 0
    groups = json.loads(out)["aggregation_groups"]
    assert sorted((g["text"], g["n"]) for g in groups) == [("lazy dog", 1), ("quick fox", 1)]
    rc, _, err = run(capsys, "query", "h", *st, "--group-by", "text")
    assert rc == 1 and err.startswith("Error: --group-by needs --aggregate")


def test_rrf_fuse_k60():
    fused = rrf_fuse([[1, 2], [2, 3]], 60)
    assert [d for d, _ in fused] == [2, 1, 3]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)


def test_hybrid_fuses_deeper_than_the_result(tmp_path, capsys):
    """A document 7th by vector and 1st by BM25 wins a --top-k 5 hybrid query (each list is fused
    max(top_k, 100) deep), as the server's multi-query RRF ranks it."""
    url = str(tmp_path / "s")
    db = puffer_cli.connect(url)
    rows = [{"id": i, "vector": [1.0, float(i)], "text": "fox" if i == 6 else f"w{i}"} for i in range(10)]
    schema = {"text": {"type": "string", "full_text_search": True}}
    db.namespace("d").write({"upsert_rows": rows, "distance_metric": "euclidean_squared", "schema": schema})
    st = ["--store", url, "--top-k", "5", "--format", "json"]
    rc, out, _ = run(capsys, "query", "d", *st, "--vector", "[1.0, 0.0]", "--bm25", "text", "fox")
    assert rc == 0
    got = json.loads(out)["rows"]
    assert len(got) == 5 and got[0]["id"] == 6 and got[0]["$dist"] == pytest.approx(1 / 61 + 1 / 67)
    assert [r["id"] for r in got[1:]] == [0, 1, 2, 3]
