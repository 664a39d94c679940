"""The WAL entry codec (format in docs/format.md, section "WAL entry").

One entry = one committed write batch::

    0   4  magic  b"PWAL"
    4   2  format version (u16 LE) = 1
    6   2  flags (u16 LE) = 0
    8   4  header length H (u32 LE)
    12  4  CRC32 of the header bytes (u32 LE)
    16  H  header: UTF-8 JSON object
    16+H   op blocks, back to back; each an Arrow IPC file (header.ops[i] gives
           offset (from the first block), length and CRC32)
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
VERSION = 1
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


def encode(seq: int, ops: list[Op], **header_fields: Any) -> bytes:
    """Serialise ``ops`` as entry ``seq``. Extra header fields (created_at, writer,
    schema, distance_metric, repaired, ...) are stored as given."""
    blocks, metas, off = [], [], 0
    for op in ops:
        if op.kind not in OP_KINDS:
            raise ValueError(f"unknown op kind {op.kind!r}")
        b = _ipc(op.table)
        metas.append({"kind": op.kind, "rows": op.table.height, "offset": off, "length": len(b), "crc": zlib.crc32(b)})
        blocks.append(b)
        off += len(b)
    header = {"seq": seq, **header_fields, "ops": metas}
    hb = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    prefix = PREFIX.pack(MAGIC, VERSION, 0, len(hb), zlib.crc32(hb))
    # one copy of the payload (not three): the body CRC is chained over the parts
    crc = zlib.crc32(hb, zlib.crc32(prefix))
    for b in blocks:
        crc = zlib.crc32(b, crc)
    return b"".join([prefix, hb, *blocks, TRAILER.pack(crc, END)])


def read_header(data: bytes) -> tuple[dict, int]:
    """(header, offset of the first op block). Raises WalFormatError."""
    if len(data) < PREFIX.size:
        raise WalFormatError("truncated", f"truncated: {len(data)} bytes, shorter than the {PREFIX.size}-byte prefix")
    magic, version, _flags, hlen, hcrc = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise WalFormatError("magic", f"bad magic {magic!r} (expected {MAGIC!r})")
    if version != VERSION:
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
    total = start + sum(m["length"] for m in header["ops"]) + TRAILER.size
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
        b = data[start + m["offset"] : start + m["offset"] + m["length"]]
        ops.append(Op(m["kind"], pl.read_ipc(io.BytesIO(b))))
    return Entry(header["seq"], ops, header)


def salvage(data: bytes) -> tuple[dict | None, list[Op], list[int]]:
    """Recover what is intact from a damaged entry: (header or None, intact ops,
    indexes of lost ops). Each op block carries its own CRC, so an op survives
    whenever its bytes do."""
    try:
        header, start = read_header(data)
    except WalFormatError:
        return None, [], []
    good, lost = [], []
    for i, m in enumerate(header.get("ops", [])):
        b = data[start + m["offset"] : start + m["offset"] + m["length"]]
        if len(b) == m["length"] and zlib.crc32(b) == m["crc"]:
            try:
                good.append(Op(m["kind"], pl.read_ipc(io.BytesIO(b))))
                continue
            except Exception:
                pass
        lost.append(i)
    return header, good, lost
