"""Malformed writes and filters: each rejected whole, with a message that names
the problem, and the namespace is unchanged."""

import pytest
from puffer_cli.cli.main import main
from puffer_cli.errors import InvalidRequest

SEED = {
    "upsert_rows": [{"id": 1, "vector": [1.0, 2.0], "name": "a", "n": 1, "tags": ["x"]}],
    "distance_metric": "cosine_distance",
}

BAD = [
    # (body, substring the message must contain)
    ({"upsert_rows": [{"id": 2, "vector": [1.0, 2.0, 3.0]}]}, "dimensions"),
    ({"upsert_rows": [{"id": 2, "vector": "not base64!!"}]}, "base64"),
    ({"upsert_rows": [{"id": 2, "vector": [1.0, "x"]}]}, "vector"),
    ({"upsert_rows": [{"id": 2, "n": "seven"}]}, "field 'n'"),
    ({"upsert_rows": [{"id": 2, "n": 1.5}]}, "integer"),
    ({"upsert_rows": [{"id": 2, "name": 5}]}, "string"),
    ({"upsert_rows": [{"id": 2, "tags": "x"}]}, "array"),
    ({"upsert_rows": [{"id": 2, "tags": [1]}]}, "string"),
    ({"upsert_rows": [{"id": -1}]}, "unsigned"),
    ({"upsert_rows": [{"id": "abc"}]}, "unsigned"),
    ({"upsert_rows": [{"id": 2**64}]}, "unsigned"),
    ({"upsert_rows": [{"name": "no id"}]}, "id"),
    ({"upsert_rows": [{"id": None}]}, "id"),
    ({"upsert_rows": [{"id": 2}, {"id": 3, "n": "bad"}]}, "row 1"),
    ({"upsert_rows": [{"id": 2, "$dist": 1}]}, "attribute name"),
    ({"upsert_rows": [{"id": 2, "obj": {"a": 1}}]}, "unsupported"),
    ({"upsert_rows": "nope"}, "expected a sequence"),
    ({"upsert_rows": [5]}, "expected a map"),
    ({"upsert_columns": {"id": [2, 3], "n": [1]}}, "same length"),
    ({"upsert_columns": {"n": [1]}}, "id"),
    ({"upsert_columns": [1, 2]}, "expected a map"),
    ({"patch_rows": {"id": 1}}, "expected a sequence"),
    ({"deletes": 1}, "expected a sequence"),
    ({"deletes": ["x"]}, "unsigned"),
    ({"upsert_rowz": []}, "unknown write parameter"),
    ({"distance_metric": "manhattan"}, "distance_metric"),
    ({"distance_metric": "euclidean_squared"}, "cannot change"),
    ({"schema": {"n": "string"}}, "cannot change"),
    ({"schema": {"z": "decimal"}}, "unknown type"),
    ({"schema": {"z": {"type": "int", "full_text_search": True}}}, "full_text_search"),
    ({"schema": {"z": {"type": "string", "bogus": 1}}}, "unknown key"),
    ({"schema": {"id": "int"}}, "id type"),
    ({"schema": {"t": {"type": "string", "full_text_search": {"language": "klingon"}}}}, "klingon"),
    ({"delete_by_filter": ["n", "Bogus", 1]}, "Bogus"),
    ({"delete_by_filter": ["n", "Lt", "x"]}, "Lt"),
    ({"delete_by_filter": ["And", "notalist"]}, "And"),
    ({"delete_by_filter": ["name", "Regex", "("]}, "Regex"),
    ({"delete_by_filter": ["n", "In", 3]}, "In"),
    ({"delete_by_filter": "n = 1"}, "filter"),
    ({"delete_by_filter": ["name", "ContainsAllTokens", "a"]}, "full_text_search"),
    ({"patch_by_filter": {"filters": ["n", "Eq", 1]}}, "patch_by_filter"),
    ({"patch_by_filter": {"filters": ["n", "Eq", 1], "patch": {"n": "x"}}}, "field 'n'"),
    ({"upsert_rows": [{"id": 2, "n": 3}], "upsert_condition": ["n", "Lt", {"$ref_new": 5}]}, "ref_new"),
    ({"upsert_rows": [{"id": 2, "n": 3}], "upsert_condition": ["n", "Nope", 1]}, "Nope"),
    ("not an object", "object"),
]


@pytest.mark.parametrize("body,needle", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_write_rejected_and_nothing_changes(mem_db, body, needle):
    ns = mem_db.open_namespace("bad")
    ns.write(SEED)
    before = ns.head().seq
    docs_before = ns.docs()[0]
    with pytest.raises(InvalidRequest) as e:
        ns.write(body)
    said = f"{e.value.message} (hint: {e.value.hint})"
    assert needle.lower() in said.lower(), said
    assert ns.head().seq == before
    assert ns.docs()[0].equals(docs_before)


def test_at_least_30_cases():
    assert len(BAD) >= 30


@pytest.mark.parametrize(
    "args,needle",
    [
        (["ingest", "bad/name", "fixtures/sample.parquet"], "invalid namespace name"),
        (["ingest", "ns", "missing.parquet"], "does not exist"),
        (["ingest", "ns", "fixtures/sample.parquet", "--id", "nope"], "no id column"),
        (["ingest", "ns", "fixtures/sample.parquet", "--vector", "nope"], "no vector column"),
        (["ingest", "ns", "fixtures/sample.parquet", "--schema", "{bad json"], "not valid JSON"),
        (["ingest", "ns", "fixtures/sample.parquet", "--distance-metric", "dot"], "distance_metric"),
        (["ingest", "ns", "fixtures/sample.txt"], "format"),
        (["ingest", "ns", "fixtures/sample.parquet", "--batch-rows", "0"], "batch-rows"),
        (["export", "ns", "--format", "xml"], "format"),
        (["wal-inspect", "ns"], "no WAL"),
        (["ingest", "ns", "fixtures/sample.parquet", "--bogus"], "No such option"),
        (["export", "..", "-o", "x.parquet"], "invalid namespace"),
        (["ingest", "ns", "fixtures/sample.parquet", "--schema", "@tests"], "cannot read"),  # a directory
        (["ingest", "ns", "fixtures/sample.parquet", "--schema", "@fixtures/sample.parquet"], "UTF-8"),
        # bytes of the command line that are not UTF-8 arrive as lone surrogates
        (["query", "ns", "--bm25", "text", "quick \udcff"], "not valid UTF-8"),
        (["query", "ns", "--filter", '["tag", "Eq", "a\udcff"]', "--rank-by", '["n", "asc"]'], "not valid UTF-8"),
        (["query", "ns", "--where", "tag = 'a\udcff'", "--rank-by", '["n", "asc"]'], "not valid UTF-8"),
    ],
)
def test_cli_bad_input_is_one_error_line(tmp_path, capsys, monkeypatch, args, needle):
    import pathlib

    root = pathlib.Path(__file__).parent.parent
    monkeypatch.chdir(root)
    (tmp_path / "store").mkdir()
    code = main([*args, "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == (2 if needle == "No such option" else 1)  # 2: a usage error
    assert len(err) == 1 and err[0].startswith("Error: "), err
    assert needle.lower() in err[0].lower()
    assert "Traceback" not in err[0]
