"""WAL codec: round trip (property-based) and corruption detection."""

from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from puffer_cli.wal import codec as wal

ids = st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=20)


@st.composite
def ops(draw):
    out = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(wal.OP_KINDS))
        i = draw(ids)
        cols = {"id": pl.Series("id", i, dtype=pl.UInt64)}
        if kind != "delete":
            cols["s"] = pl.Series(
                "s",
                draw(st.lists(st.one_of(st.none(), st.text(max_size=8)), min_size=len(i), max_size=len(i))),
                dtype=pl.String,
            )
            cols["f"] = pl.Series(
                "f", draw(st.lists(st.floats(allow_nan=False), min_size=len(i), max_size=len(i))), dtype=pl.Float64
            )
        out.append(wal.Op(kind, pl.DataFrame(cols)))
    return out


@settings(max_examples=60, deadline=None)
@given(seq=st.integers(1, 10**12), ops=ops(), created=st.integers(0, 2**50))
def test_roundtrip(seq, ops, created):
    data = wal.encode(seq, ops, created_at=created, writer="w")
    assert wal.check(data) is None
    e = wal.decode(data, seq)
    assert e.seq == seq and e.header["created_at"] == created
    assert [o.kind for o in e.ops] == [o.kind for o in ops]
    for a, b in zip(e.ops, ops):
        assert a.table.equals(b.table)


@settings(max_examples=60, deadline=None)
@given(ops=ops(), pos=st.floats(0, 0.9999), bit=st.integers(0, 7))
def test_any_flipped_bit_is_detected(ops, pos, bit):
    data = bytearray(wal.encode(7, ops, created_at=1))
    i = int(pos * len(data))
    data[i] ^= 1 << bit
    assert wal.check(bytes(data)) is not None
    with pytest.raises(wal.WalFormatError):
        wal.decode(bytes(data))


@settings(max_examples=40, deadline=None)
@given(ops=ops(), cut=st.floats(0, 0.9999))
def test_truncation_is_detected(ops, cut):
    data = wal.encode(3, ops, created_at=1)
    assert wal.check(data[: int(cut * len(data))]) is not None


def test_seq_mismatch():
    data = wal.encode(3, [], created_at=1)
    with pytest.raises(wal.WalFormatError, match="seq"):
        wal.decode(data, 4)


def test_salvage_keeps_intact_ops():
    a = wal.Op("upsert", pl.DataFrame({"id": [1, 2], "x": ["a", "b"]}))
    b = wal.Op("delete", pl.DataFrame({"id": [1]}))
    data = bytearray(wal.encode(1, [a, b], created_at=1))
    data[-12] ^= 0xFF  # inside the last block
    got = wal.salvage(bytes(data))
    assert got.header is not None and got.header["seq"] == 1
    assert [o.kind for o in got.ops] == ["upsert"] and [b.op for b in got.lost] == [1] and got.ops_lost == 1


def _big(n: int) -> pl.DataFrame:
    return pl.DataFrame({"id": pl.Series(range(n), dtype=pl.UInt64), "x": [f"v{i}" for i in range(n)]})


def test_v2_blocks_lose_one_block_not_the_op():
    n = 3 * wal.BLOCK_ROWS + 5
    df = _big(n)
    data = bytearray(wal.encode(4, [wal.Op("upsert", df)], created_at=1))
    header, start = wal.read_header(bytes(data))
    blocks = header["ops"][0]["blocks"]
    assert [b["rows"] for b in blocks] == [wal.BLOCK_ROWS] * 3 + [5]
    assert (blocks[1]["min_id"], blocks[1]["max_id"]) == (wal.BLOCK_ROWS, 2 * wal.BLOCK_ROWS - 1)
    assert wal.decode(bytes(data), 4).ops[0].table.equals(df)
    data[start + blocks[1]["offset"] + blocks[1]["length"] // 2] ^= 0x10
    with pytest.raises(wal.WalFormatError, match="checksum"):
        wal.decode(bytes(data), 4)
    got = wal.salvage(bytes(data))
    assert got.rows == n - wal.BLOCK_ROWS and got.ops_lost == 0
    (lost,) = got.lost
    assert (lost.block, lost.rows) == (1, wal.BLOCK_ROWS)
    assert lost.known_ids() == list(range(wal.BLOCK_ROWS, 2 * wal.BLOCK_ROWS))
    kept = set(got.ops[0].table["id"].to_list())
    assert kept == set(range(n)) - set(lost.known_ids())


def test_v1_entries_stay_readable():
    a = wal.Op("upsert", pl.DataFrame({"id": pl.Series([1, 2], dtype=pl.UInt64), "x": ["a", "b"]}))
    b = wal.Op("delete", pl.DataFrame({"id": pl.Series([1], dtype=pl.UInt64)}))
    data = wal.encode(9, [a, b], version=1, created_at=1, writer="w")
    assert data[4:6] == b"\x01\x00"
    e = wal.decode(data, 9)
    assert [o.kind for o in e.ops] == ["upsert", "delete"] and e.ops[0].table.equals(a.table)
    fixture = Path(__file__).parent / "data" / "wal_v1_entry.wal"
    e = wal.decode(fixture.read_bytes(), 2)
    assert [o.kind for o in e.ops] == ["upsert", "delete"]
    assert e.ops[0].table["id"].to_list() == [2] and e.ops[1].table["id"].to_list() == [1]
    bad = bytearray(fixture.read_bytes())
    bad[-12] ^= 0xFF
    got = wal.salvage(bytes(bad))
    assert [o.kind for o in got.ops] == ["upsert"] and got.lost[0].min_id is None


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["upsert", "delete", "patch"]),
            st.lists(st.tuples(st.integers(0, 6), st.one_of(st.none(), st.text(max_size=3))), max_size=8),
        ),
        max_size=6,
    )
)
def test_fold_keeps_each_ids_last_write(steps):
    """replay.fold (upserts deduplicated by id, last wins, deletes and patches in order)
    against a dict replaying the same operations one row at a time."""
    from puffer_cli.wal import replay

    schema = {"id": {"type": "uint"}, "s": {"type": "string"}}
    want: dict[int, str | None] = {}
    operations = []
    for kind, rows in steps:
        i = [r[0] for r in rows]
        table = pl.DataFrame({"id": pl.Series("id", i, dtype=pl.UInt64)})
        if kind != "delete":
            table = table.with_columns(pl.Series("s", [r[1] for r in rows], dtype=pl.String))
        operations.append(wal.Op(kind, table))
        for k, v in rows:
            if kind == "upsert":
                want[k] = v
            elif kind == "delete":
                want.pop(k, None)
            elif k in want:
                want[k] = v
    got = replay.fold(None, schema, operations)
    assert sorted(zip(got["id"].to_list(), got["s"].to_list())) == sorted(want.items())
