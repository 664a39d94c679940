"""`puffer ingest` and `puffer export` through the CLI on every backend."""

import json
from pathlib import Path

import polars as pl
from puffer_cli.cli.main import main

from .conftest import store_args

FIX = Path(__file__).parent.parent / "fixtures"


def cli(capsys, store_url, *args):
    code = main([*args, *store_args(store_url)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ingest_parquet_then_export_roundtrip(db, store_url, capsys, tmp_path):
    code, out, err = cli(
        capsys,
        store_url,
        "ingest",
        "s",
        str(FIX / "sample.parquet"),
        "--vector",
        "vector",
        "--batch-rows",
        "700",
        "--json",
    )
    assert code == 0, err
    rep = json.loads(out)
    assert rep["rows"] == 2000 and rep["wal_entries"] == 3
    assert "Error" not in err  # a short job prints no progress lines (tests/test_progress.py)
    dest = tmp_path / "out.parquet"
    code, out, err = cli(capsys, store_url, "export", "s", "-o", str(dest))
    assert code == 0, err
    got = pl.read_parquet(dest)
    src = pl.read_parquet(FIX / "sample.parquet")
    assert got["id"].to_list() == sorted(src["id"].to_list())
    assert got.select(src.columns).equals(src.sort("id"))


def test_reingest_is_idempotent(mem_db, capsys):
    url = mem_db.store.url
    for _ in range(2):
        assert main(["ingest", "i", str(FIX / "sample.parquet"), "--vector", "vector", "--store", url]) == 0
    ns = mem_db.open_namespace("i")
    assert ns.docs()[0].height == 2000 and ns.head().seq == 2


def test_ingest_ndjson_csv_and_schema(mem_db, capsys, tmp_path):
    url = mem_db.store.url
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"title": {"type": "string", "full_text_search": True}}))
    assert main(["ingest", "n", str(FIX / "sample.ndjson"), "--schema", f"@{schema}", "--store", url]) == 0
    assert main(["ingest", "c", str(FIX / "sample.csv"), "--store", url]) == 0
    capsys.readouterr()
    ns = mem_db.open_namespace("n")
    assert ns.head().schema["title"]["full_text_search"]
    assert ns.docs()[0].height == 200
    c = mem_db.open_namespace("c").docs()[0]
    assert c.height == 200 and c.schema["price"] == pl.Float64


def test_export_formats_and_at_seq(mem_db, capsys, tmp_path):
    ns = mem_db.open_namespace("e")
    ns.write({"upsert_rows": [{"id": 2, "v": [1.0, 2.0], "t": "b"}, {"id": 1, "v": [3.0, 4.0], "t": "a"}]})
    ns.write({"deletes": [1]})
    url = mem_db.store.url
    assert main(["export", "e", "--store", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["id"] for x in lines] == [2]
    assert main(["export", "e", "--at-seq", "1", "--format", "ndjson", "--store", url]) == 0
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()] == [1, 2]
    assert main(["export", "e", "--at-seq", "1", "-o", str(tmp_path / "x.csv"), "--store", url]) == 0
    df = pl.read_csv(tmp_path / "x.csv")
    assert df["id"].to_list() == [1, 2] and df["v"][0] == "[3.0,4.0]"
    assert main(["export", "e", "--at-seq", "9", "--store", url]) == 1
    assert "not committed" in capsys.readouterr().err


def test_ingest_rejects_bad_chunk_whole(mem_db, capsys, tmp_path):
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"id": 1, "vector": [1, 2]}\n{"id": 2, "vector": [1, 2, 3]}\n')
    code = main(["ingest", "bad", str(bad), "--store", mem_db.store.url])
    err = capsys.readouterr().err
    assert code == 1 and "dimensions" in err and "row 1" in err
    assert not mem_db.open_namespace("bad").exists()
