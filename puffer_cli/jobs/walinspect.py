"""Inspect, verify and repair a namespace's WAL (`puffer wal-inspect`).

``verify`` checks what a reader checks: every entry goes through the read path's
``decode_entry`` (framing, checksums, header seq vs key), the chain has no gap, and
``meta.json``'s hints (``last_seq``, the index's ``covers_through_seq``) name no seq
past the newest WAL object (a deleted newest segment).

Repair never deletes data and recovers every row that still exists anywhere:

1. the damaged entry's intact blocks (each block of 4,096 rows has its own CRC);
2. the published index generation, when it covers the damaged seq: its doc store
   holds the live rows at ``covers_through_seq`` (c).  The repaired WAL is replayed
   to c and compared with the generation on the ids the lost blocks may have held
   (their ``[min_id, max_id]`` from the header; every id when the header is lost,
   the entry is format 1 or the segment is missing or holds another seq's bytes);
   each difference becomes an op of the repaired entry (an upsert of the
   generation's row, or a delete of an id the generation does not hold), placed in
   the last damaged entry whose scope holds the id, so replay to c then equals the
   generation exactly (docs/format.md "Verification and repair" has the argument);
3. nothing: what is left is reported (rows, and the ids when the header pins them).

A damaged segment's bytes are copied to ``wal/quarantine/`` first, then the segment
is replaced by the repaired entry, with a ``repaired`` header field; every reader then
replays the same result.  A missing seq inside the chain (or a deleted newest seq the
generation covers) gets such an entry; a deleted newest seq nothing covers is reported
lost and meta.json's hint is set back to the newest entry.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from puffer_cli.errors import CorruptNamespace, InvalidRequest, NamespaceNotFound, PufferError
from puffer_cli.schema import frames
from puffer_cli.store import layout, now_ms
from puffer_cli.wal import codec as wal
from puffer_cli.wal import replay
from puffer_cli.wal.namespace import WRITER_ID, Head, Namespace, decode_entry, forget

MAX_IDS_SHOWN = 20  # lost ids printed in a report; the quarantine note lists all that are known


def _row(seq: int, key: str | None, data: bytes | None, missing: str = "missing") -> dict[str, Any]:
    row: dict[str, Any] = {
        "seq": seq,
        "key": key,
        "bytes": len(data) if data is not None else 0,
        "ops": {},
        "rows": 0,
        "created_at": None,
        "ok": False,
        "problem": None,
        "kind": None,
        "repaired": None,
    }
    if data is None:
        row["problem"], row["kind"] = missing, "missing"
        return row
    try:
        decode_entry(seq, data)
    except wal.WalFormatError as e:
        row["problem"], row["kind"] = str(e), e.kind
    except PufferError as e:  # an entry a reader cannot apply
        row["problem"], row["kind"] = str(e), getattr(e, "kind", "unreadable")
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


def _hint_seq(meta: dict | None) -> tuple[int, str]:
    """The highest seq meta.json vouches for (last_seq, the index's covers_through_seq), and which."""
    if not meta:
        return 0, ""
    best, why = int(meta.get("last_seq") or 0), "meta.json's last_seq"
    idx = meta.get("index")
    if isinstance(idx, dict) and int(idx.get("covers_through_seq") or 0) > best:
        best, why = int(idx["covers_through_seq"]), "the index's covers_through_seq"
    return best, why


def _meta(ns: Namespace) -> dict | None:
    try:
        return ns.read_meta()[0]
    except CorruptNamespace:
        return None


def inspect(ns: Namespace) -> list[dict[str, Any]]:
    """One row per seq from 1 to the newest, gaps included (as 'missing'), and seqs
    meta.json vouches for past the newest WAL object (a deleted newest segment)."""
    keys = ns.wal_keys(0)
    meta = _meta(ns)
    if not keys and not meta:
        raise NamespaceNotFound(f"namespace {ns.name!r} has no WAL in {ns.store.url}")
    by_seq = dict(keys)
    newest = max(by_seq, default=0)
    hint, why = _hint_seq(meta)
    rows = []
    for seq in range(1, max(newest, hint) + 1):
        key = by_seq.get(seq)
        if key is None and seq > newest:
            missing = f"missing: {why} is {hint}, the newest WAL entry is {newest} (deleted?)"
            rows.append(_row(seq, None, None, missing))
            continue
        try:
            data = ns.store.read(key) if key else None
        except FileNotFoundError:
            data = None
        rows.append(_row(seq, key, data))
    return rows


def verify(ns: Namespace) -> list[dict[str, Any]]:
    """The rows of ``inspect`` that a reader would reject, or that are missing."""
    return [r for r in inspect(ns) if not r["ok"]]


def show(ns: Namespace, seq: int) -> dict[str, Any]:
    """An entry's header and ops (rows as JSON-able dicts)."""
    key = ns.wal_key(seq)  # a branch's entries up to its base seq are its source's
    try:
        data = ns.store.read(key)
    except FileNotFoundError:
        raise InvalidRequest(
            f"no WAL entry {seq} in namespace {ns.name!r}", hint=f"`puffer wal-inspect {ns.name}` lists the entries"
        ) from None
    try:
        e = wal.decode(data, seq)
    except wal.WalFormatError as err:
        raise InvalidRequest(
            f"WAL entry {seq} is corrupt: {err}",
            hint=f"`puffer wal-inspect {ns.name} --repair` salvages what is intact",
        ) from err
    ops = []
    for op in e.ops:
        ops.append(
            {"kind": op.kind, "rows": op.rows, "columns": op.table.columns, "data": json.loads(op.table.write_json())}
        )
    return {"seq": seq, "header": {k: v for k, v in e.header.items() if k != "ops"}, "ops": ops}


# ---------------------------------------------------------------- repair
@dataclass
class _Fix:
    """The plan for one bad seq."""

    row: dict[str, Any]
    raw: bytes | None
    salvaged: wal.Salvaged
    fields: dict[str, Any]
    null_ids: int = 0
    scope: list[tuple[Any, Any]] | None = None  # id ranges the lost blocks held; None: every id
    ops: list[wal.Op] = field(default_factory=list)  # salvaged ops, then the index's fix ops
    from_index: int = 0
    deletes_from_index: int = 0

    @property
    def seq(self) -> int:
        return int(self.row["seq"])


def _salvage(row: dict[str, Any], raw: bytes | None) -> tuple[wal.Salvaged, int]:
    """Intact blocks of a bad segment (none when it is missing or holds another seq's entry);
    rows with a null id (an entry no reader can apply) are dropped and counted."""
    if raw is None or row["kind"] == "seq":
        return wal.Salvaged(None, [], [], 0), 0
    got = wal.salvage(raw)
    nulls = 0
    ops = []
    for op in got.ops:
        if "id" in op.table.columns and op.table["id"].null_count():
            nulls += op.table["id"].null_count()
            op = wal.Op(op.kind, op.table.filter(pl.col("id").is_not_null()))
        if op.rows or op.kind != "delete":
            ops.append(op)
    return wal.Salvaged(got.header, ops, got.lost, got.ops_lost), nulls


def _scope(fix: _Fix) -> list[tuple[Any, Any]] | None:
    s = fix.salvaged
    if s.header is None or fix.null_ids:
        return None
    out = []
    for b in s.lost:
        if b.min_id is None or b.max_id is None:
            return None
        out.append((b.min_id, b.max_id))
    return out


def _in_scope(ids: pl.Series, scope: list[tuple[Any, Any]] | None) -> pl.Series:
    if scope is None:
        return pl.Series([True] * ids.len(), dtype=pl.Boolean)
    m = pl.Series([False] * ids.len(), dtype=pl.Boolean)
    for lo, hi in scope:
        try:
            m = m | ((ids >= lo) & (ids <= hi)).fill_null(False)
        except Exception:  # noqa: BLE001 - a range of another id type: it cannot hold these ids
            continue
    return m


def _generation_rows(ns: Namespace, ptr: dict) -> tuple[pl.DataFrame, dict, int]:
    """(live rows of the generation ``ptr`` names, its schema, generation number)."""
    from puffer_cli.index.docs import vector_fields
    from puffer_cli.index.segment import open_generation

    gen = open_generation(ns.store, ptr)
    vf = vector_fields(gen.schema)
    parts = [seg.frame(np.flatnonzero(seg.alive()), vf) for seg in gen.segments]
    parts = [frames.align(p, gen.schema) for p in parts]
    df = pl.concat(parts, how="vertical") if parts else replay.empty(gen.schema)
    return df, gen.schema, gen.generation


def _replayed(ns: Namespace, fixes: dict[int, _Fix], upto: int) -> tuple[pl.DataFrame, dict[int, dict]]:
    """Live rows at ``upto`` replaying the WAL with each bad seq's salvaged ops, and the
    schema in force after each bad seq."""
    keys = dict(ns.wal_keys(0))
    schemas: dict[int, dict] = {}

    def entries():
        for seq in range(1, upto + 1):
            if seq in fixes:
                f = fixes[seq]
                yield wal.Entry(seq, list(f.ops), {"seq": seq, **f.fields})
            else:
                yield decode_entry(seq, ns.store.read(keys[seq]))

    def tracked():
        for fo in replay.follow(entries(), {}, None):
            if fo.entry.seq in fixes:
                schemas[fo.entry.seq] = fo.schema
            yield fo

    docs, _last, schema = replay.fold_entries(None, tracked())
    return (docs if docs is not None else replay.empty(schema or {})), schemas


def _from_index(ns: Namespace, fixes: dict[int, _Fix], ptr: dict) -> tuple[int | None, str | None]:
    """Add to each covered fix the ops that make replay to covers_through_seq equal the
    generation on the ids its lost blocks may have held. Returns (generation, problem)."""
    c = int(ptr["covers_through_seq"])
    covered = sorted(s for s, f in fixes.items() if s <= c and (f.scope is None or f.scope))
    if not covered:
        return None, None
    try:
        G, gschema, gen_no = _generation_rows(ns, ptr)
        R, schemas = _replayed(ns, fixes, c)
    except (PufferError, FileNotFoundError, OSError, KeyError, ValueError, pl.exceptions.PolarsError) as e:
        return None, f"the index generation covering seq {c} could not be read ({type(e).__name__}: {e})"
    R = frames.align(R, gschema) if R.width else replay.empty(gschema)

    # which fix owns each id: the last covered bad seq whose scope holds it
    def owner(ids: pl.Series) -> pl.Series:
        own = pl.Series([0] * ids.len(), dtype=pl.Int64)
        for s in covered:
            own = pl.Series(np.where(_in_scope(ids, fixes[s].scope).to_numpy(), s, own.to_numpy()))
        return own

    cols = [x for x in G.columns if x != "id"]
    j = G.join(R.with_columns(pl.lit(True).alias("__in_r")), on="id", how="left", suffix="__r")
    changed = [pl.col(x).ne_missing(pl.col(f"{x}__r")) for x in cols]
    differs = j.select((pl.col("__in_r").is_null() | pl.any_horizontal([pl.lit(False), *changed])).alias("d"))["d"]
    present = R["id"].is_in(G["id"].implode())
    up = G.filter(differs)
    up = up.with_columns(owner(up["id"]).alias("__own")).filter(pl.col("__own") > 0)
    gone = R.filter(~present).select("id")
    gone = gone.with_columns(owner(gone["id"]).alias("__own")).filter(pl.col("__own") > 0)
    for s in covered:
        f = fixes[s]
        sch = schemas.get(s, gschema)
        u = up.filter(pl.col("__own") == s).drop("__own")
        d = gone.filter(pl.col("__own") == s).drop("__own")
        if u.height:
            f.ops.append(wal.Op("upsert", u.select([x for x in u.columns if x in sch])))
            f.from_index = u.height
        if d.height:
            f.ops.append(wal.Op("delete", d))
            f.deletes_from_index = d.height
        if f.salvaged.header is None:
            f.fields.setdefault("schema", sch)
    return gen_no, None


def _lost_ids(fix: _Fix, covered: bool) -> tuple[int | None, list | None]:
    """(rows lost, their ids when known). Rows still live in a covering generation are not lost."""
    if covered:
        return 0, []
    s = fix.salvaged
    if s.header is None:
        return None, None
    ids: list | None = []
    for b in s.lost:
        k = b.known_ids()
        if k is None or ids is None:
            ids = None
        else:
            ids.extend(k)
    return s.rows_lost + fix.null_ids, ids


def repair(ns: Namespace, dry_run: bool = False) -> list[dict[str, Any]]:
    """Quarantine and replace every bad segment, recovering rows from intact blocks and
    from the covering index generation. Returns one report per seq (``dry_run``: the plan;
    nothing is written)."""
    meta = _meta(ns)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    base = ns.base()
    bad = verify(ns)
    newest = max((s for s, _k in ns.wal_keys(0)), default=0)
    fixes: dict[int, _Fix] = {}
    for row in bad:
        seq = row["seq"]
        if base and seq <= base[1]:
            raise InvalidRequest(
                f"WAL entry {seq} of branch {ns.name!r} is its source's ({ns.wal_key(seq)})",
                hint=f"run `puffer wal-inspect {base[0]} --repair` on the source",
            )
        raw = ns.store.read(row["key"]) if row["key"] else None
        sal, nulls = _salvage(row, raw)
        fields: dict[str, Any] = {"created_at": now_ms(), "writer": WRITER_ID}
        if sal.header is not None:
            for k in ("created_at", "writer", "schema", "distance_metric"):
                if k in sal.header:
                    fields[k] = sal.header[k]
        elif meta and meta.get("last_seq", 0) >= seq and meta.get("schema"):
            fields["schema"] = meta["schema"]  # the newest schema we know covers this entry
        fix = _Fix(row, raw, sal, fields, nulls, ops=list(sal.ops))
        fix.scope = _scope(fix)
        fixes[seq] = fix
    ptr = (meta or {}).get("index")
    gen_no, gen_problem = (None, None)
    if isinstance(ptr, dict) and fixes:
        gen_no, gen_problem = _from_index(ns, fixes, ptr)
    c = int(ptr["covers_through_seq"]) if isinstance(ptr, dict) and gen_no is not None else 0
    done = []
    meta_fix = None
    for seq, fix in sorted(fixes.items()):
        row, sal = fix.row, fix.salvaged
        covered = seq <= c
        rows_lost, ids_lost = _lost_ids(fix, covered)
        tail_lost = row["kind"] == "missing" and seq > newest and not covered
        info: dict[str, Any] = {
            "problem": row["problem"],
            "at": stamp,
            "ops_salvaged": len(sal.ops),
            "ops_lost": sal.ops_lost if sal.header is not None else "all",
            "rows_salvaged": sal.rows,
            "rows_from_index": fix.from_index,
            "deletes_from_index": fix.deletes_from_index,
            "rows_lost": rows_lost,
            "ids_lost": ids_lost,
            "lost_id_ranges": [[b.min_id, b.max_id] for b in sal.lost] if not covered and sal.header else None,
            "index_generation": gen_no if covered else None,
            "index_problem": gen_problem,
            "quarantine": layout.quarantine(ns.name, seq, stamp) if fix.raw is not None else None,
        }
        if tail_lost:
            action = "lost (nothing covers it): meta.json's hint is set back to the newest entry"
            meta_fix = True
        elif fix.raw is None:
            action = "wrote a marker entry" + (" with the rows the index holds" if fix.ops else "")
        else:
            action = "quarantined and replaced"
        report = {"seq": seq, "key": layout.wal(ns.name, seq), "action": action, **info}
        done.append(report)
        if dry_run or tail_lost:
            continue
        key = layout.wal(ns.name, seq)
        data = wal.encode(
            seq, fix.ops, **{**fix.fields, "repaired": {k: v for k, v in info.items() if k != "ids_lost"}}
        )
        if fix.raw is not None:
            ns.store.write(info["quarantine"], fix.raw)
            ns.store.write(key, data)
        elif not ns.store.create(key, data):
            report["action"] = "not written: a writer committed this seq after it went missing"
            continue
        note = {**info, "ids_lost": ids_lost}
        ns.store.write(layout.quarantine_note(ns.name, seq, stamp), json.dumps(note, indent=2, default=str).encode())
    if meta_fix and not dry_run:
        forget(ns.store, ns.name)
        _set_hint_back(ns)
    forget(ns.store, ns.name)
    return done


def _set_hint_back(ns: Namespace) -> None:
    """meta.json's last_seq (and the schema hint with it) back to the newest WAL entry."""
    keys = ns.wal_keys(0)
    h = Head()
    for seq, _k in keys:  # the schema and metric in force at the newest entry
        hdr = ns.read_entry_header(seq)
        h.schema = hdr.get("schema", h.schema)
        h.metric = hdr.get("distance_metric") or h.metric
        h.seq = seq

    def fn(cur):
        if cur is None or cur.get("last_seq", 0) <= h.seq:
            return None
        cur.update(last_seq=h.seq, schema=h.schema, distance_metric=h.metric)
        return cur

    ns.update_meta(fn)
