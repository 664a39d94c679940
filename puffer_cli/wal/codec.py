"""The WAL entry codec (format in docs/format.md, section "WAL entry").

One entry = one committed write batch::

    0   4  magic  b"PWAL"
    4   2  format version (u16 LE) = 2 (1 still read)
    6   2  flags (u16 LE) = 0
    8   4  header length H (u32 LE)
    12  4  CRC32 of the header bytes (u32 LE)
    16  H  header: UTF-8 JSON object
    16+H   blocks, back to back; each an Arrow IPC file.  Format 2: op i is split
           into blocks of BLOCK_ROWS rows, header.ops[i].blocks[j] gives offset
           (from the first block), length, CRC32, rows, min_id, max_id; format 1:
           one block per op, header.ops[i] gives offset, length and CRC32
    end-8  CRC32 of every byte before it (u32 LE)
    end-4  b"PEND"

Ops are ``upsert`` (whole documents), ``patch`` (the columns present are set,
others untouched) and ``delete`` (an ``id`` column).  Filter-based and
conditional writes are resolved to these before commit, so replay needs no
filter evaluation and is deterministic.  Ops keep their order.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from puffer_cli.errors import CorruptWal

MAGIC = b"PWAL"
END = b"PEND"
VERSION = 2
VERSIONS = (1, 2)  # readable; new entries are written as VERSION
#: rows per checksummed block of an op (format 2): flipped bytes lose at most this many rows.
#: 4,096 rows of 100-d f32 vectors are ~1.6 MB; a block costs one Arrow IPC file framing (a
#: schema message and footer, ~0.5-1 KB with a few columns) plus ~110 header bytes, under 0.1%
#: at that size, while a 50,000-row ingest chunk is split 13 ways (docs/format.md has the measured cost).
BLOCK_ROWS = 4096
PREFIX = struct.Struct("<4sHHII")  # magic, version, flags, header_len, header_crc
TRAILER = struct.Struct("<I4s")
OP_KINDS = ("upsert", "patch", "delete")


@dataclass
class Op:
    kind: str
    table: pl.DataFrame

    @property
    def rows(self) -> int:
        return self.table.height


@dataclass
class Entry:
    seq: int
    ops: list[Op]
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def created_at(self) -> int:
        return self.header.get("created_at", 0)


class WalFormatError(CorruptWal):
    """Bytes that are not a valid entry; ``str`` says exactly what is wrong, ``kind``
    which check failed (one of ``KINDS``; callers branch on it, never on the text)."""

    KINDS = (
        "truncated",  # shorter than the prefix, or than the header says the entry is
        "magic",
        "version",
        "truncated_header",  # fewer header bytes than the prefix says (read more, retry)
        "header_checksum",
        "header_json",
        "trailing_bytes",
        "end_marker",
        "payload_checksum",
        "seq",  # an intact entry stored under another seq's key
        "unappliable",  # intact, but replay.entry_problem: a reader cannot apply it (an older build wrote it)
    )

    def __init__(self, kind: str, message: str):
        assert kind in self.KINDS, kind
        super().__init__(message)
        self.kind = kind


def _ipc(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_ipc(buf, compression="lz4")
    return buf.getvalue()


def _id_bound(s: pl.Series, fn: str) -> int | str | None:
    """min/max of an id column as JSON (int or str), None when it has none or is not an id type."""
    if not s.len() or s.null_count() == s.len():
        return None
    if not (s.dtype.is_integer() or s.dtype == pl.String):
        return None
    v = getattr(s, fn)()
    return v if isinstance(v, (int, str)) else None


def encode(seq: int, ops: list[Op], *, version: int = VERSION, **header_fields: Any) -> bytes:
    """Serialise ``ops`` as entry ``seq``. Extra header fields (created_at, writer,
    schema, distance_metric, repaired, ...) are stored as given.  ``version=1`` writes
    the old one-block-per-op layout (kept for tests of old entries)."""
    if version not in VERSIONS:
        raise ValueError(f"unknown WAL format version {version}")
    blocks: list[bytes] = []
    metas: list[dict[str, Any]] = []
    off = 0
    for op in ops:
        if op.kind not in OP_KINDS:
            raise ValueError(f"unknown op kind {op.kind!r}")
        if version == 1:
            b = _ipc(op.table)
            metas.append(
                {"kind": op.kind, "rows": op.table.height, "offset": off, "length": len(b), "crc": zlib.crc32(b)}
            )
            blocks.append(b)
            off += len(b)
            continue
        bmetas = []
        n = op.table.height
        for start in range(0, max(n, 1), BLOCK_ROWS):  # an empty op still has one (empty) block: its columns
            part = op.table.slice(start, BLOCK_ROWS)
            b = _ipc(part)
            bm: dict[str, Any] = {"offset": off, "length": len(b), "crc": zlib.crc32(b), "rows": part.height}
            if "id" in part.columns:
                bm["min_id"] = _id_bound(part["id"], "min")
                bm["max_id"] = _id_bound(part["id"], "max")
            bmetas.append(bm)
            blocks.append(b)
            off += len(b)
        metas.append({"kind": op.kind, "rows": n, "blocks": bmetas})
    header = {"seq": seq, **header_fields, "ops": metas}
    hb = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    prefix = PREFIX.pack(MAGIC, version, 0, len(hb), zlib.crc32(hb))
    # one copy of the payload (not three): the body CRC is chained over the parts
    crc = zlib.crc32(hb, zlib.crc32(prefix))
    for b in blocks:
        crc = zlib.crc32(b, crc)
    return b"".join([prefix, hb, *blocks, TRAILER.pack(crc, END)])


def blocks_of(op_meta: dict) -> list[dict]:
    """The block metas of one header op: v2 lists them under ``blocks``; a v1 op is one block."""
    b = op_meta.get("blocks")
    return b if isinstance(b, list) else [op_meta]


def payload_length(header: dict) -> int:
    return sum(int(b["length"]) for m in header["ops"] for b in blocks_of(m))


def read_header(data: bytes) -> tuple[dict, int]:
    """(header, offset of the first op block). Raises WalFormatError."""
    if len(data) < PREFIX.size:
        raise WalFormatError("truncated", f"truncated: {len(data)} bytes, shorter than the {PREFIX.size}-byte prefix")
    magic, version, _flags, hlen, hcrc = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise WalFormatError("magic", f"bad magic {magic!r} (expected {MAGIC!r})")
    if version not in VERSIONS:
        raise WalFormatError("version", f"unsupported format version {version}")
    hb = data[PREFIX.size : PREFIX.size + hlen]
    if len(hb) != hlen:
        raise WalFormatError("truncated_header", f"truncated header: {len(hb)} of {hlen} bytes")
    if zlib.crc32(hb) != hcrc:
        raise WalFormatError("header_checksum", "header checksum mismatch")
    try:
        header = json.loads(hb)
    except ValueError as e:  # pragma: no cover - CRC makes this unlikely
        raise WalFormatError("header_json", f"header is not JSON: {e}") from e
    return header, PREFIX.size + hlen


def check(data: bytes) -> str | None:
    """None if ``data`` is an intact entry, else what is wrong with it."""
    err = _problem(data)
    return None if err is None else str(err)


def _problem(data: bytes) -> WalFormatError | None:
    """None if ``data`` is an intact entry, else the error naming what is wrong."""
    try:
        header, start = read_header(data)
    except WalFormatError as e:
        return e
    try:
        total = start + payload_length(header) + TRAILER.size
    except (KeyError, TypeError, ValueError, AttributeError):
        return WalFormatError("header_json", "header does not describe the op blocks")
    if len(data) < total:
        return WalFormatError("truncated", f"truncated: {len(data)} of {total} bytes")
    if len(data) > total:
        return WalFormatError("trailing_bytes", f"{len(data) - total} unexpected trailing bytes")
    crc, end = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    if end != END:
        return WalFormatError("end_marker", "bad end marker")
    if zlib.crc32(memoryview(data)[: len(data) - TRAILER.size]) != crc:
        return WalFormatError("payload_checksum", "checksum mismatch")
    return None


def _block(data: bytes, start: int, b: dict) -> bytes:
    return data[start + b["offset"] : start + b["offset"] + b["length"]]


def _read_op(kind: str, tables: list[pl.DataFrame]) -> Op:
    return Op(kind, tables[0] if len(tables) == 1 else pl.concat(tables, how="vertical", rechunk=False))


def decode(data: bytes, seq: int | None = None) -> Entry:
    """Decode and verify an entry. Raises WalFormatError naming the problem."""
    problem = _problem(data)
    if problem is not None:
        raise problem
    header, start = read_header(data)
    if seq is not None and header.get("seq") != seq:
        raise WalFormatError("seq", f"header says seq {header.get('seq')}, key says {seq}")
    ops = []
    for m in header["ops"]:
        ops.append(_read_op(m["kind"], [pl.read_ipc(io.BytesIO(_block(data, start, b))) for b in blocks_of(m)]))
    return Entry(header["seq"], ops, header)


@dataclass
class LostBlock:
    """One block whose bytes failed their checksum: what the header says it held."""

    op: int  # index of its op in the entry
    kind: str
    block: int  # index of the block in its op
    rows: int
    min_id: int | str | None = None  # None: unknown (a format-1 entry, or no id column)
    max_id: int | str | None = None

    def known_ids(self) -> list[int] | None:
        """The block's ids when the header pins them down: integer ids filling [min, max]."""
        lo, hi = self.min_id, self.max_id
        if isinstance(lo, int) and isinstance(hi, int) and hi - lo + 1 == self.rows:
            return list(range(lo, hi + 1))
        return None


@dataclass
class Salvaged:
    """What :func:`salvage` recovered: ``header`` None when even the header is lost."""

    header: dict | None
    ops: list[Op]  # intact rows, op by op (an op whose every block is lost is left out)
    lost: list[LostBlock]
    ops_lost: int  # ops with no intact block

    @property
    def rows(self) -> int:
        return sum(o.rows for o in self.ops)

    @property
    def rows_lost(self) -> int:
        return sum(b.rows for b in self.lost)


def salvage(data: bytes) -> Salvaged:
    """Recover what is intact from a damaged entry. Each block carries its own CRC, so a
    block survives whenever its bytes do: a few flipped bytes lose one block of an op
    (``BLOCK_ROWS`` rows), not the op (format 1: an op is one block)."""
    try:
        header, start = read_header(data)
        metas = header["ops"]
        assert isinstance(metas, list)
    except (WalFormatError, KeyError, TypeError, AssertionError):
        return Salvaged(None, [], [], 0)
    good: list[Op] = []
    lost: list[LostBlock] = []
    ops_lost = 0
    for i, m in enumerate(metas):
        tables = []
        blocks = blocks_of(m)
        for j, b in enumerate(blocks):
            raw = _block(data, start, b)
            if len(raw) == b["length"] and zlib.crc32(raw) == b["crc"]:
                try:
                    tables.append(pl.read_ipc(io.BytesIO(raw)))
                    continue
                except Exception:  # noqa: BLE001 - a CRC-valid block that polars cannot read is lost too
                    pass
            lost.append(
                LostBlock(i, m["kind"], j, int(b.get("rows", m.get("rows", 0))), b.get("min_id"), b.get("max_id"))
            )
        if tables:
            good.append(_read_op(m["kind"], tables))
        else:
            ops_lost += 1
    return Salvaged(header, good, lost, ops_lost)
