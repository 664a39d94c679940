"""CSV ingest parses vectors (JSON list or base64 f32) and --schema list columns; refuses what does not parse."""

import base64
import json

import numpy as np
import pytest
from puffer_cli import connect
from puffer_cli.cli.main import main

from tests.conftest import store_args


def test_csv_vector_and_lists_roundtrip(store_url, tmp_path, capsys):
    b64 = base64.b64encode(np.array([0.5, 0.25], dtype="<f4").tobytes()).decode()
    src = tmp_path / "in.csv"
    src.write_text(f'id,emb,tags\n1,"[1.0, 0.0]","[""a"", ""b""]"\n2,{b64},"[]"\n')
    st = store_args(store_url)
    schema = json.dumps({"tags": {"type": "[]string"}})
    assert main(["ingest", "v", str(src), "--vector", "emb", "--schema", schema, *st]) == 0
    url, endpoint = store_url
    docs, head = connect(url, s3_endpoint=endpoint).open_namespace("v").docs()
    assert "f32" in head.schema["vector"]["type"] and head.schema["tags"]["type"] == "[]string"
    rows = {r["id"]: r for r in docs.to_dicts()}
    assert list(rows[2]["vector"]) == [0.5, 0.25] and list(rows[1]["tags"]) == ["a", "b"]
    capsys.readouterr()
    # an export re-ingested as CSV keeps the vector
    out = tmp_path / "out.csv"
    assert main(["export", "v", "-o", str(out), *st]) == 0
    assert main(["ingest", "w", str(out), "--vector", "vector", "--schema", schema, *st]) == 0
    docs2, head2 = connect(url, s3_endpoint=endpoint).open_namespace("w").docs()
    assert head2.schema["vector"]["type"] == head.schema["vector"]["type"]


@pytest.mark.parametrize("cell", ["not-a-vector!", '"[1, 2"'])
def test_csv_bad_vector_refused(tmp_path, capsys, cell):
    src = tmp_path / "bad.csv"
    src.write_text(f"id,emb\n1,{cell}\n")
    rc = main(["ingest", "v", str(src), "--vector", "emb", "--store", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("Error: ") and err.count("\n") == 1 and "row 0" in err
