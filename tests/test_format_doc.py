"""Decode a committed WAL entry by following docs/format.md, not the project's decoder."""

import io
import json
import re
import struct
import zlib
from pathlib import Path

import polars as pl

DOC = Path(__file__).parent.parent / "docs" / "format.md"


def test_doc_describes_the_fields_we_rely_on():
    text = DOC.read_text()
    for needle in (
        "`PWAL`",
        "`PEND`",
        "header length `H`, u32",
        "CRC-32",
        "Arrow IPC file",
        "relative to the first block",
        "`blocks`",
        "`min_id`",
        "{seq:020d}.wal",
        "meta.json",
        "If-None-Match",
    ):
        assert needle in text, needle


def test_decode_committed_entry_per_spec(local_db):
    ns = local_db.open_namespace("spec")
    ns.write(
        {"upsert_rows": [{"id": 1, "vector": [0.5, 1.5], "t": "hello"}, {"id": 2, "vector": [1, 2]}], "deletes": [2]}
    )
    # layout per the doc: {ns}/wal/{seq:020d}.wal
    path = Path(local_db.store.url) / "spec" / "wal" / f"{1:020d}.wal"
    data = path.read_bytes()
    magic, version, flags, hlen, hcrc = struct.unpack_from("<4sHHII", data, 0)
    assert (magic, version, flags) == (b"PWAL", 2, 0)
    header_bytes = data[16 : 16 + hlen]
    assert zlib.crc32(header_bytes) == hcrc
    header = json.loads(header_bytes)
    assert header["seq"] == 1
    crc, end = struct.unpack_from("<I4s", data, len(data) - 8)
    assert end == b"PEND" and zlib.crc32(data[:-8]) == crc
    base = 16 + hlen
    kinds, tables = [], []
    for op in header["ops"]:
        parts = []
        for b in op["blocks"]:  # format 2: each op is split into checksummed row blocks
            block = data[base + b["offset"] : base + b["offset"] + b["length"]]
            assert zlib.crc32(block) == b["crc"]
            parts.append(pl.read_ipc(io.BytesIO(block)))
            assert parts[-1].height == b["rows"]
            assert parts[-1]["id"].min() == b["min_id"] and parts[-1]["id"].max() == b["max_id"]
        t = pl.concat(parts)
        assert t.height == op["rows"]
        kinds.append(op["kind"])
        tables.append(t)
    assert kinds == ["upsert", "delete"]
    assert tables[0]["id"].to_list() == [1, 2]
    assert tables[0]["vector"].to_list()[0] == [0.5, 1.5]
    assert tables[1]["id"].to_list() == [2]
    assert header["schema"]["vector"]["type"] == "[2]f32"
    meta = json.loads((Path(local_db.store.url) / "spec" / "meta.json").read_text())
    assert meta["last_seq"] == 1 and meta["format"] == 1
    assert re.match(r"\d+", str(meta["created_at"]))
