"""Inspect, verify and repair a namespace's WAL (`puffer wal-inspect`).

Repair never deletes data: a damaged segment's bytes are copied to
``wal/quarantine/`` first, then the segment is replaced by an entry holding
the ops whose own checksums still verify, with a ``repaired`` header field
(what was lost, where the bytes are).  A missing segment gets an empty entry
marked the same way.  Every reader then replays the same result.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from puffer_cli.errors import CorruptNamespace, InvalidRequest, NamespaceNotFound
from puffer_cli.store import layout, now_ms
from puffer_cli.wal import codec as wal
from puffer_cli.wal.namespace import WRITER_ID, Namespace, forget


def _row(seq: int, key: str | None, data: bytes | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "seq": seq,
        "key": key,
        "bytes": len(data) if data is not None else 0,
        "ops": {},
        "rows": 0,
        "created_at": None,
        "ok": False,
        "problem": None,
        "repaired": None,
    }
    if data is None:
        row["problem"] = "missing"
        return row
    row["problem"] = wal.check(data)
    row["ok"] = row["problem"] is None
    try:
        header, _ = wal.read_header(data)
    except wal.WalFormatError:
        return row
    ops = header.get("ops", []) if isinstance(header, dict) else []
    for m in ops if isinstance(ops, list) else []:
        if not isinstance(m, dict):  # a header that decodes but is not ours (checksum-valid garbage)
            continue
        kind = str(m.get("kind", "?"))
        row["ops"][kind] = row["ops"].get(kind, 0) + 1
        row["rows"] += m.get("rows", 0) if isinstance(m.get("rows"), int) else 0
    ts = header.get("created_at") if isinstance(header, dict) else None
    try:
        row["created_at"] = dt.datetime.fromtimestamp(ts / 1000, dt.UTC).isoformat() if ts else None
    except (TypeError, ValueError, OverflowError, OSError):
        row["created_at"] = None
    row["repaired"] = header.get("repaired") if isinstance(header, dict) else None
    return row


def inspect(ns: Namespace) -> list[dict[str, Any]]:
    """One row per seq from 1 to the newest, gaps included (as 'missing')."""
    keys = ns.wal_keys(0)
    if not keys:
        raise NamespaceNotFound(f"namespace {ns.name!r} has no WAL in {ns.store.url}")
    by_seq = dict(keys)
    rows = []
    for seq in range(1, max(by_seq) + 1):
        key = by_seq.get(seq)
        rows.append(_row(seq, key, ns.store.read(key) if key else None))
    return rows


def verify(ns: Namespace) -> list[dict[str, Any]]:
    """The rows of ``inspect`` that are corrupt or missing."""
    return [r for r in inspect(ns) if not r["ok"]]


def show(ns: Namespace, seq: int) -> dict[str, Any]:
    """An entry's header and ops (rows as JSON-able dicts)."""
    key = ns.wal_key(seq)  # a branch's entries up to its base seq are its source's
    try:
        data = ns.store.read(key)
    except FileNotFoundError:
        raise InvalidRequest(
            f"no WAL entry {seq} in namespace {ns.name!r}", hint="`puffer wal-inspect NAMESPACE` lists the entries"
        ) from None
    try:
        e = wal.decode(data, seq)
    except wal.WalFormatError as err:
        raise InvalidRequest(
            f"WAL entry {seq} is corrupt: {err}", hint="`puffer wal-inspect NAMESPACE --repair` salvages what is intact"
        ) from err
    ops = []
    for op in e.ops:
        ops.append(
            {"kind": op.kind, "rows": op.rows, "columns": op.table.columns, "data": json.loads(op.table.write_json())}
        )
    return {"seq": seq, "header": {k: v for k, v in e.header.items() if k != "ops"}, "ops": ops}


def repair(ns: Namespace) -> list[dict[str, Any]]:
    """Quarantine and replace every corrupt or missing segment. Returns what was done."""
    done = []
    try:
        meta, _ = ns.read_meta()
    except CorruptNamespace:
        meta = None  # only a schema hint for segments whose header is lost; the WAL is what is repaired
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    base = ns.base()
    for row in verify(ns):
        seq, key = row["seq"], layout.wal(ns.name, row["seq"])
        if base and seq <= base[1]:
            raise InvalidRequest(
                f"WAL entry {seq} of branch {ns.name!r} is its source's ({ns.wal_key(seq)})",
                hint=f"run `puffer wal-inspect {base[0]} --repair` on the source",
            )
        if row["problem"] == "missing":
            data = wal.encode(
                seq,
                [],
                created_at=now_ms(),
                writer=WRITER_ID,
                repaired={"problem": "missing", "ops_lost": None, "at": stamp},
            )
            ns.store.create(key, data)
            done.append(
                {
                    "seq": seq,
                    "problem": "missing",
                    "action": "wrote an empty marker entry",
                    "ops_salvaged": 0,
                    "ops_lost": None,
                    "quarantine": None,
                }
            )
            continue
        raw = ns.store.read(key)
        qkey = layout.quarantine(ns.name, seq, stamp)
        ns.store.write(qkey, raw)
        header, good, lost = wal.salvage(raw)
        fields: dict[str, Any] = {"created_at": now_ms(), "writer": WRITER_ID}
        if header is not None:
            for k in ("created_at", "writer", "schema", "distance_metric"):
                if k in header:
                    fields[k] = header[k]
        elif meta and meta.get("last_seq", 0) >= seq and meta.get("schema"):
            fields["schema"] = meta["schema"]  # the newest schema we know covers this entry
        info = {
            "problem": row["problem"],
            "quarantine": qkey,
            "at": stamp,
            "ops_salvaged": len(good),
            "ops_lost": len(lost) if header is not None else "all",
        }
        fields["repaired"] = info
        ns.store.write(key, wal.encode(seq, good, **fields))
        ns.store.write(layout.quarantine_note(ns.name, seq, stamp), json.dumps(info, indent=2).encode())
        done.append({"seq": seq, "action": "quarantined and replaced", **info})
    forget(ns.store, ns.name)
    return done
