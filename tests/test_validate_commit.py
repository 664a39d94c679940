"""Nothing reaches the WAL that a reader cannot apply (issue 23, part 1), readers report what an
older build wrote as damage, and the small traps of part 6 (store URLs, HTTP error text, grammar)."""

from __future__ import annotations

import json

import polars as pl
import pytest
from puffer_cli import connect
from puffer_cli.cli.main import main
from puffer_cli.errors import CorruptWal, PufferError, SchemaError, plural, with_hint
from puffer_cli.server.app import ServeConfig, create_app
from puffer_cli.store import layout
from puffer_cli.wal import codec as wal
from puffer_cli.wal import replay
from puffer_cli.wal.namespace import Namespace
from starlette.testclient import TestClient

NULL_ID_WRITES = [
    {"upsert_rows": [{"id": None}]},
    {"upsert_rows": [{"id": None, "a": 1}]},
    {"upsert_rows": [{"id": 1}, {"id": None}]},
    {"upsert_columns": {"id": [None]}},
    {"upsert_columns": {"id": [2, None], "a": [1, 2]}},
    {"patch_rows": [{"id": None, "a": 1}]},
    {"patch_columns": {"id": [None], "a": [1]}},
    {"deletes": [None]},
    {"deletes": [1, None]},
]


def run(capsys, *args):
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("body", NULL_ID_WRITES, ids=[f"w{i}" for i in range(len(NULL_ID_WRITES))])
@pytest.mark.parametrize("existing", [False, True])
def test_null_ids_refused_in_every_write_form(tmp_path, body, existing):
    db = connect(str(tmp_path / "s"))
    ns = db.open_namespace("x")
    if existing:
        ns.write({"upsert_rows": [{"id": 1, "a": 1}]})
    before = ns.head().seq
    with pytest.raises(SchemaError, match="id"):
        ns.write(body)
    assert ns.head().seq == before  # nothing committed
    assert list(db.namespaces()) == (["x"] if existing else [])


@pytest.mark.parametrize("ids,what", [([1.5], "float"), ([True], "bool"), ([-1], "int"), ([[1]], "id")])
def test_non_id_types_refused_on_a_new_namespace(tmp_path, ids, what):
    ns = connect(str(tmp_path / "s")).open_namespace("x")
    with pytest.raises(SchemaError, match=what):
        ns.write({"upsert_columns": {"id": ids}})
    assert ns.head().seq == 0


def _ndjson(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_ingest_null_id_commits_nothing_and_names_the_row(tmp_path, capsys):
    store = str(tmp_path / "s")
    f = _ndjson(tmp_path / "f.ndjson", [{"id": i if i != 7 else None, "a": i} for i in range(10)])
    rc, _, err = run(capsys, "ingest", "x", f, "--store", store, "--batch-rows", "3")
    assert rc == 1
    assert "row 7" in err and "id is missing" in err and "nothing was committed" in err
    assert "internal error" not in err
    rc, out, err = run(capsys, "namespaces", "--store", store, "--json")
    assert rc == 0 and json.loads(out) == {"namespaces": []}


def test_ingest_single_null_id_row_refused(tmp_path, capsys):
    store = str(tmp_path / "s")
    f = tmp_path / "f.ndjson"
    f.write_text('{"id":null}\n')
    rc, _, err = run(capsys, "ingest", "x", str(f), "--store", store)
    assert rc == 1 and "row 0" in err and "id is missing" in err
    connect(store).open_namespace("y").write({"upsert_rows": [{"id": 1}]})
    rc, out, _ = run(capsys, "namespaces", "--store", store, "--json")
    assert rc == 0 and [r["namespace"] for r in json.loads(out)["namespaces"]] == ["y"]


def test_ingest_csv_null_id_in_later_chunk(tmp_path, capsys):
    store = str(tmp_path / "s")
    f = tmp_path / "f.csv"
    f.write_text("id,a\n" + "".join(f"{i},{i}\n" for i in range(5)) + ",9\n")
    rc, _, err = run(capsys, "ingest", "x", str(f), "--store", store, "--batch-rows", "2")
    assert rc == 1 and "row 5" in err
    assert connect(store).open_namespace("x").head().seq == 0


def test_ingest_no_check_first_says_what_was_committed(tmp_path, capsys):
    store = str(tmp_path / "s")
    f = _ndjson(tmp_path / "f.ndjson", [{"id": i if i != 7 else None} for i in range(10)])
    rc, _, err = run(capsys, "ingest", "x", f, "--store", store, "--batch-rows", "3", "--no-check-first")
    assert rc == 1 and "already committed" in err and "seq 1..2" in err
    assert connect(store).open_namespace("x").docs()[0].height == 6


def test_ingest_summary_grammar(tmp_path, capsys):
    f = _ndjson(tmp_path / "f.ndjson", [{"id": 1}])
    rc, out, _ = run(capsys, "ingest", "x", f, "--store", str(tmp_path / "s"))
    assert rc == 0 and "ingested 1 row into 'x' as 1 WAL entry (seq 1..1)" in out


# ---------------------------------------------------------------- entries an older build wrote
def _old_build_entries(store_path: str) -> None:
    """``good`` (fine), ``noid`` (the zero-width op the null-id ingest wrote), ``nullid`` (a null id)."""
    db = connect(store_path)
    db.open_namespace("good").write({"upsert_rows": [{"id": 1, "a": 2}]})
    st = db.store
    st.create(layout.wal("noid", 1), wal.encode(1, [wal.Op("upsert", pl.DataFrame())], schema={}, created_at=1))
    nulls = pl.DataFrame({"id": [None, 1]}, schema={"id": pl.UInt64})
    st.create(
        layout.wal("nullid", 1), wal.encode(1, [wal.Op("upsert", nulls)], schema={"id": {"type": "uint"}}, created_at=1)
    )


def test_entry_problem_is_the_one_check():
    sch = {"id": {"type": "uint"}, "a": {"type": "int"}}
    ok = wal.Op("upsert", pl.DataFrame({"id": [1], "a": [2]}, schema={"id": pl.UInt64, "a": pl.Int64}))
    assert replay.entry_problem([ok], sch) is None
    assert replay.entry_problem([ok], None) is None
    assert "no id column" in (replay.entry_problem([wal.Op("upsert", pl.DataFrame())], {}) or "")
    nul = wal.Op("delete", pl.DataFrame({"id": [None]}, schema={"id": pl.UInt64}))
    assert "null id" in (replay.entry_problem([ok, nul], sch) or "")
    assert (replay.entry_problem([ok, nul], sch) or "").startswith("op 1 (delete")
    bad_type = wal.Op("upsert", pl.DataFrame({"id": [1], "a": ["x"]}, schema={"id": pl.UInt64, "a": pl.String}))
    assert "column 'a'" in (replay.entry_problem([bad_type], sch) or "")
    assert "schema has no id" in (replay.entry_problem([ok], {"a": {"type": "int"}}) or "")
    # polars "casts" a struct to UInt64 by casting its fields: still no id column, nor an int one
    struct_ids = wal.Op("upsert", pl.DataFrame({"id": [{"a": 1}]}))
    assert "ids are Struct" in (replay.entry_problem([struct_ids], sch) or "")
    struct_a = wal.Op("upsert", pl.DataFrame({"id": [1], "a": [{"b": 1}]}, schema_overrides={"id": pl.UInt64}))
    assert "column 'a'" in (replay.entry_problem([struct_a], sch) or "")


def test_commit_guard_refuses_unappliable_ops(tmp_path):
    ns = Namespace(connect(str(tmp_path / "s")).store, "x")
    head = ns.head()
    with pytest.raises(PufferError, match="readers cannot apply"):
        ns._commit(head, [wal.Op("upsert", pl.DataFrame())], {}, None, True)
    assert ns.head().seq == 0


def test_reader_reports_old_build_entry_as_damage(tmp_path, capsys):
    store = str(tmp_path / "s")
    _old_build_entries(store)
    ns = connect(store).open_namespace("nullid")
    with pytest.raises(wal.WalFormatError) as ei:
        ns.docs()
    e = ei.value
    assert isinstance(e, CorruptWal) and e.kind == "unappliable"
    assert "'nullid'" in e.message and "00000000000000000001.wal" in e.message and "null id" in e.message
    assert e.hint is not None and "puffer wal-inspect nullid --verify" in e.hint and "NAMESPACE" not in e.hint
    # the same error from the CLI: exit 1, no internal error
    rc, _, err = run(capsys, "query", "noid", "--store", store, "--top-k", "1")
    assert rc == 1 and "internal error" not in err and "wal-inspect noid --verify" in err
    # --wal-corrupt-policy skip replays around it
    docs, _ = connect(store, wal_policy="skip").open_namespace("nullid").docs(missing_ok=True)
    assert docs.height == 0


def test_namespaces_lists_damaged_namespaces_with_a_marker(tmp_path, capsys):
    store = str(tmp_path / "s")
    _old_build_entries(store)
    rc, out, err = run(capsys, "namespaces", "--store", store, "--json")
    assert rc == 0
    rows = {r["namespace"]: r for r in json.loads(out)["namespaces"]}
    assert rows["good"] == {"namespace": "good", "rows": 1, "seq": 1}
    for n in ("noid", "nullid"):
        assert rows[n]["rows"] is None and rows[n]["seq"] == 1
        assert "cannot be applied" in rows[n]["error"] and f"wal-inspect {n} --verify" in rows[n]["hint"]
    rc, out, err = run(capsys, "namespaces", "--store", store)
    lines = out.splitlines()
    assert rc == 0 and lines[0] == "namespace\trows\tseq\tdamage"
    assert "good\t1\t1\t" in lines
    assert any(ln.startswith("nullid\t?\t1\t") for ln in lines)
    assert "2 namespaces damaged" in err


def test_namespaces_survives_a_corrupt_segment(tmp_path, capsys):
    store = str(tmp_path / "s")
    db = connect(store)
    for n in ("a", "b"):
        db.open_namespace(n).write({"upsert_rows": [{"id": 1}]})
    p = tmp_path / "s" / "a" / "wal" / "00000000000000000001.wal"
    data = bytearray(p.read_bytes())
    data[-12] ^= 0xFF
    p.write_bytes(bytes(data))
    rc, out, _ = run(capsys, "namespaces", "--store", store, "--json")
    rows = {r["namespace"]: r for r in json.loads(out)["namespaces"]}
    assert rc == 0 and rows["b"]["rows"] == 1 and rows["a"]["rows"] is None and "corrupt" in rows["a"]["error"]


def test_show_shows_the_damage(tmp_path, capsys):
    store = str(tmp_path / "s")
    _old_build_entries(store)
    rc, out, _ = run(capsys, "show", "nullid", "--store", store)
    assert rc == 0 and "DAMAGED" in out and "null id" in out and "wal-inspect nullid --verify" in out
    rc, out, _ = run(capsys, "show", "noid", "--store", store, "--json")
    info = json.loads(out)
    assert rc == 0 and info["rows"] is None and "no id column" in info["error"]
    rc, out, _ = run(capsys, "show", "good", "--store", store)
    assert rc == 0 and "1 WAL entry unindexed" in out


def test_http_list_and_errors_with_damage_and_paths(tmp_path):
    store = str(tmp_path / "srv-data")
    _old_build_entries(store)
    app = create_app(ServeConfig(store=store, commit_window_ms=0))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/v1/namespaces")
        assert r.status_code == 200 and [n["id"] for n in r.json()["namespaces"]] == ["good", "noid", "nullid"]
        r = c.post("/v2/namespaces/nope/query", json={"rank_by": ["id", "asc"], "top_k": 1})
        assert r.status_code == 404
        msg = r.json()["error"]
        assert "nope" in msg and store not in msg and "srv-data" not in msg
        assert "--store" not in msg and "puffer namespaces" not in msg and "hint" not in msg
        r = c.post("/v2/namespaces/nullid/query", json={"rank_by": ["id", "asc"], "top_k": 1})
        assert r.status_code == 500 and "cannot be applied" in r.json()["error"]
        assert "wal-inspect" not in r.json()["error"] and store not in r.json()["error"]
        r = c.post("/v2/namespaces/fresh", json={"upsert_rows": [{"id": None}]})
        assert r.status_code == 400 and "id is missing" in r.json()["error"]
        r = c.patch("/v1/namespaces/good/metadata", content=b"")
        assert r.status_code == 422
        r = c.patch("/v1/namespaces/good/metadata", json={})
        assert r.status_code == 200


def test_cli_not_found_names_the_store(tmp_path, capsys):
    rc, _, err = run(capsys, "show", "nope", "--store", str(tmp_path / "s"))
    assert rc == 1 and f"not found in {tmp_path / 's'}" in err and err.count("(hint:") == 1


# ---------------------------------------------------------------- store URLs
@pytest.mark.parametrize(
    "url,want",
    [
        ("s3:/bucket", "did you mean s3://bucket"),
        ("S3:bucket/x", "did you mean s3://bucket/x"),
        ("memory:/x", "did you mean memory://x"),
        ("file:/tmp/x", "did you mean file://tmp/x"),
        ("gs://bucket", "unsupported store URL"),
        ("~nonexist-user-zz/x", "there is no user 'nonexist-user-zz'"),
    ],
)
def test_store_url_traps(tmp_path, monkeypatch, capsys, url, want):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, "namespaces", "--store", url)
    assert rc == 1 and want in err and "internal error" not in err
    assert list(tmp_path.iterdir()) == []  # no local folder made of the URL


def test_store_tilde_expands(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    rc, _, err = run(capsys, "namespaces", "--store", "~/st")
    assert rc == 0 and str(tmp_path / "st") in err


# ---------------------------------------------------------------- grammar helpers, serve --cache-dir
def test_plural_and_hint_once():
    assert plural(1, "WAL entry") == "1 WAL entry"
    assert plural(2, "WAL entry") == "2 WAL entries"
    assert plural(0, "row") == "0 rows"
    assert plural(1234, "key") == "1,234 keys"
    assert with_hint("x", "y") == "x (hint: y)"
    assert with_hint("x (hint: z)", "y") == "x (hint: z)"
    assert with_hint("x", None) == "x"


def test_limit_messages_show_values():
    from puffer_cli.query.parse import parse_query

    with pytest.raises(PufferError) as ei:
        parse_query({"rank_by": ["id", "asc"], "top_k": 10**9})
    assert "MAX_TOP_K = 10,000" in ei.value.message and "(limit: MAX_TOP_K)" not in ei.value.message


def test_serve_cache_dir_option(tmp_path, monkeypatch, capsys):
    import puffer_cli.server.run as run_mod

    seen = {}

    def fake(cfg, listen, workers=1, log_level="info"):
        import os

        seen["dir"] = os.environ.get("PUFFER_CACHE_DIR")

    monkeypatch.setattr(run_mod, "serve", fake)
    monkeypatch.delenv("PUFFER_CACHE_DIR", raising=False)
    d = str(tmp_path / "cache")
    rc, _, _ = run(capsys, "serve", "--cache-dir", d, "--store", str(tmp_path / "s"))
    assert rc == 0 and seen["dir"] == d
