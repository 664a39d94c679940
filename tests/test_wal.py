"""WAL codec: round trip (property-based) and corruption detection."""

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
    header, good, lost = wal.salvage(bytes(data))
    assert header["seq"] == 1
    assert [o.kind for o in good] == ["upsert"] and lost == [1]
