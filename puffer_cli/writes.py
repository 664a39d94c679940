"""turbopuffer write requests -> resolved WAL ops, validated against one snapshot.

``plan(request, snap)`` turns a write body into ``(ops, schema, metric, result)``.
Everything is validated before anything is written; filter-based and
conditional writes are resolved to concrete ids against the state at the
snapshot the commit will follow (the commit protocol re-plans on a lost race),
so they are atomic.

Order inside one request (as turbopuffer): delete_by_filter, patch_by_filter,
copy_from_namespace, upserts (rows then columns), patches (rows then columns),
deletes.

Before any of that, cheaply: the nesting depth of every data section
(``schema.check_depth``, iterative) and the attribute names the body uses
(``schema.check_write_names``: count per write and per namespace, name length), so a
body with 10,000 new attributes is refused before a frame is built.  The value
rules themselves live in :mod:`puffer_cli.schema`.

On a namespace that has no documents (it does not exist yet), ``delete_by_filter``,
``patch_by_filter`` and ``deletes`` match nothing: the filter is still validated,
and the write is a no-op that creates nothing (turbopuffer creates a namespace with
its first document).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from . import replay
from . import schema as S
from .errors import InvalidRequest, SchemaError
from .wal import Op

WRITE_KEYS = {
    "upsert_rows",
    "upsert_columns",
    "patch_rows",
    "patch_columns",
    "deletes",
    "delete_by_filter",
    "patch_by_filter",
    "upsert_condition",
    "patch_condition",
    "delete_condition",
    "distance_metric",
    "schema",
    "return_affected_ids",
    "copy_from_namespace",
    "disable_backpressure",
    "encryption",
    "delete_by_filter_allow_partial",
}
METRICS = ("cosine_distance", "euclidean_squared")
NEW = "__new__"
DATA_KEYS = (
    "upsert_rows",
    "upsert_columns",
    "patch_rows",
    "patch_columns",
    "deletes",
    "schema",
    "copy_from_namespace",
)  # filters are bounded by filters.compile_filter


def _names(req: Mapping[str, Any]):
    """(flat names, groups of names) every attribute a body names, without building anything."""
    flat: list = []
    groups: list = []
    for k in ("upsert_rows", "patch_rows"):
        rows = req.get(k)
        if isinstance(rows, list):
            groups.append(r.keys() for r in rows if isinstance(r, Mapping))
    for k in ("upsert_columns", "patch_columns", "schema"):
        if isinstance(req.get(k), Mapping):
            flat.extend(req[k].keys())
    pbf = req.get("patch_by_filter")
    if isinstance(pbf, Mapping) and isinstance(pbf.get("patch"), Mapping):
        flat.extend(pbf["patch"].keys())
    return flat, [g for gen in groups for g in gen]


@dataclass
class Snapshot:
    """What a writer knows at seq: schema, metric, and (lazily) the documents."""

    seq: int
    schema: dict
    metric: str | None
    docs: Callable[[], pl.DataFrame]


@dataclass
class Plan:
    ops: list[Op]
    schema: dict
    metric: str | None
    schema_changed: bool
    result: dict = field(default_factory=dict)


def _ids(df: pl.DataFrame) -> list:
    return df.get_column("id").to_list()


def plan(
    req: Mapping[str, Any], snap: Snapshot, *, copy_source: Callable[[str], tuple[dict, pl.DataFrame]] | None = None
) -> Plan:
    from . import filters as F  # noqa: PLC0415 (filters imports schema helpers)

    if not isinstance(req, Mapping):
        raise InvalidRequest("write body must be a JSON object")
    unknown = set(req) - WRITE_KEYS
    if unknown:
        raise InvalidRequest(
            f"unknown write parameter(s): {', '.join(sorted(unknown))}",
            hint=f"allowed: {', '.join(sorted(WRITE_KEYS))}",
        )
    for k in DATA_KEYS:
        if req.get(k) is not None:
            S.check_depth(req[k], k)
    pbf = req.get("patch_by_filter")
    if isinstance(pbf, Mapping) and pbf.get("patch") is not None:
        S.check_depth(pbf["patch"], "patch_by_filter.patch")
    flat, groups = _names(req)
    S.check_write_names(flat, snap.schema, groups=groups)
    schema = {k: dict(v) for k, v in snap.schema.items()}
    declared = S.normalize_schema(req.get("schema"))
    changed = False
    if declared:
        new = S.merge(schema, declared, {})
        changed = new != schema
        schema = new

    metric = snap.metric
    if req.get("distance_metric") is not None:
        m = req["distance_metric"]
        if m not in METRICS:
            raise InvalidRequest(f"unknown distance_metric {m!r}", hint=f"use one of {', '.join(METRICS)}")
        if metric is not None and m != metric:
            raise InvalidRequest(f"namespace distance_metric is {metric}; cannot change it to {m}")
        metric = m

    ops: list[Op] = []
    counts: dict[str, list[Any]] = {"upserted": [], "patched": [], "deleted": []}
    state_cache: dict[str, pl.DataFrame] = {}

    def current() -> pl.DataFrame:
        """Documents as of the snapshot plus the ops planned so far."""
        if "id" not in schema:  # no document was ever written: nothing to match
            return pl.DataFrame()
        if "base" not in state_cache:
            state_cache["base"] = snap.docs()
        return replay.fold(state_cache["base"], schema, ops)

    def add_schema(inferred: dict) -> None:
        nonlocal schema, changed
        if any(t is not None and k not in schema for k, t in inferred.items()):
            schema = S.merge(schema, {}, inferred)
            changed = True

    def typed(df: pl.DataFrame) -> pl.DataFrame:
        # columns inferred as all-null get their type now that the schema is known
        return df.select(
            [
                pl.col(c).cast(S.dtype_of(schema[c]["type"])) if c in schema else pl.col(c)
                for c in df.columns
                if c in schema
            ]
        )

    def condition(df: pl.DataFrame, cond, what: str, need_existing: bool) -> pl.DataFrame:
        if cond is None:
            return df
        cur = current()
        expr = F.compile_filter(cond, schema, ref_new_prefix=NEW)
        new = df.rename({c: NEW + c for c in df.columns if c != "id"})
        have = set(new.columns)
        missing = [
            pl.lit(None, dtype=S.dtype_of(schema[c]["type"])).alias(NEW + c)
            for c in schema
            if c != "id" and NEW + c not in have
        ]
        if missing:
            new = new.with_columns(missing)
        j = new.with_row_index("__row").join(cur.with_columns(pl.lit(True).alias("__exists")), on="id", how="left")
        ok = expr.fill_null(False) & pl.col("__exists").fill_null(False)
        if not need_existing:
            ok = ok | pl.col("__exists").is_null()
        keep = j.filter(ok).get_column("__row")
        return df.with_row_index("__row").filter(pl.col("__row").is_in(keep.implode())).drop("__row")

    # -- delete_by_filter
    if req.get("delete_by_filter") is not None:
        expr = F.compile_filter(req["delete_by_filter"], schema)
        cur = current()
        if cur.width:
            ids = cur.filter(expr).select("id")
            ops.append(Op("delete", ids))
            counts["deleted"] += _ids(ids)

    # -- patch_by_filter
    pbf = req.get("patch_by_filter")
    if pbf is not None:
        if (
            not isinstance(pbf, Mapping)
            or set(pbf) - {"filters", "patch"}
            or "filters" not in pbf
            or "patch" not in pbf
        ):
            raise InvalidRequest('patch_by_filter must be {"filters": [...], "patch": {attr: value}}')
        patch = pbf["patch"]
        if not isinstance(patch, Mapping) or "id" in patch:
            raise InvalidRequest("patch_by_filter.patch must be an object of attributes (not id)")
        expr = F.compile_filter(pbf["filters"], schema)
        # the patch values are validated once (one row), whatever the filter matches
        one, inf = S.frame_from_columns({k: [v] for k, v in patch.items()}, schema, partial=True)
        cur = current()
        hit = cur.filter(expr).get_column("id") if cur.width else pl.Series("id", [])
        if len(hit):
            add_schema(inf)
            df = one[[0] * len(hit)].with_columns(hit.alias("id")) if one.width else hit.to_frame()
            ops.append(Op("patch", typed(df)))
        counts["patched"] += hit.to_list()

    # -- copy_from_namespace
    if req.get("copy_from_namespace") is not None:
        if copy_source is None:
            raise InvalidRequest("copy_from_namespace is not available here")
        src_schema, src_docs = copy_source(req["copy_from_namespace"])
        for k, spec in src_schema.items():
            if k in schema and schema[k]["type"] != spec["type"]:
                raise SchemaError(
                    f"copy_from_namespace: attribute {k!r} is {spec['type']} there, {schema[k]['type']} here"
                )
        merged = {**src_schema, **schema}
        if merged != schema:
            schema, changed = merged, True
        ops.append(Op("upsert", src_docs))
        counts["upserted"] += _ids(src_docs)

    # -- upserts
    frames = []
    if req.get("upsert_rows") is not None:
        if not isinstance(req["upsert_rows"], list):
            raise InvalidRequest("upsert_rows must be an array of objects")
        frames.append(S.frame_from_rows(req["upsert_rows"], schema, what="upsert_rows"))
    if req.get("upsert_columns") is not None:
        if not isinstance(req["upsert_columns"], Mapping):
            raise InvalidRequest("upsert_columns must be an object of columns")
        frames.append(S.frame_from_columns(req["upsert_columns"], schema))
    for df, inf in frames:
        if df.height == 0:
            continue
        add_schema(inf)
        df = condition(typed(df), req.get("upsert_condition"), "upsert_condition", need_existing=False)
        ops.append(Op("upsert", df))
        counts["upserted"] += _ids(df)

    # -- patches
    pframes = []
    if req.get("patch_rows") is not None:
        rows = req["patch_rows"]
        if not isinstance(rows, list):
            raise InvalidRequest("patch_rows must be an array of objects")
        # rows with the same set of keys form one patch op (absent != null)
        start = 0
        for i in range(1, len(rows) + 1):
            if (
                i == len(rows)
                or not isinstance(rows[i], Mapping)
                or not isinstance(rows[start], Mapping)
                or set(rows[i]) != set(rows[start])
            ):
                pframes.append(S.frame_from_rows(rows[start:i], schema, what="patch_rows", first_row=start))
                start = i
    if req.get("patch_columns") is not None:
        if not isinstance(req["patch_columns"], Mapping):
            raise InvalidRequest("patch_columns must be an object of columns")
        pframes.append(S.frame_from_columns(req["patch_columns"], schema))
    for df, inf in pframes:
        if df.height == 0:
            continue
        add_schema(inf)
        df = condition(typed(df), req.get("patch_condition"), "patch_condition", need_existing=True)
        ops.append(Op("patch", df))
        counts["patched"] += _ids(df)

    # -- deletes
    if req.get("deletes") is not None:
        d = req["deletes"]
        if not isinstance(d, list):
            raise InvalidRequest("deletes must be an array of ids")
        idt = schema.get("id", {}).get("type")
        if idt is None:
            idt = S.infer_column("id", d) or "uint"
            if idt not in S.ID_TYPES:
                raise SchemaError(
                    f"deletes: ids are {idt}, not one of {', '.join(S.ID_TYPES)}", hint="ids are u64, UUIDs or strings"
                )
        df = pl.DataFrame([S.column_series("id", d, idt)])
        if "id" in schema:  # else no document exists: nothing to delete
            df = condition(df, req.get("delete_condition"), "delete_condition", need_existing=True)
            ops.append(Op("delete", df))
            counts["deleted"] += _ids(df)

    for c in ("upsert_condition", "patch_condition", "delete_condition"):
        if req.get(c) is not None:
            F.compile_filter(req[c], schema, ref_new_prefix=NEW)  # validate even when unused

    S.check_schema_size(schema, snap.schema)
    if "id" not in schema and any(op.table.height for op in ops):
        raise SchemaError("could not determine the id type", hint='declare it: schema {"id": "uint"}')
    vec_attrs = [k for k, v in schema.items() if S.is_vector(v["type"])]
    if vec_attrs and metric is None:
        metric = "cosine_distance"
    ops = [op for op in ops if op.table.height]
    rows_affected = sum(len(v) for v in counts.values())
    result: dict[str, Any] = {
        "rows_affected": rows_affected,
        "rows_upserted": len(counts["upserted"]),
        "rows_patched": len(counts["patched"]),
        "rows_deleted": len(counts["deleted"]),
    }
    if req.get("return_affected_ids"):
        result["upserted_ids"] = counts["upserted"]
        result["patched_ids"] = counts["patched"]
        result["deleted_ids"] = counts["deleted"]
    return Plan(ops, schema, metric, changed or schema != snap.schema, result)
