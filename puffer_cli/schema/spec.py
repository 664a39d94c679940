"""Schemas: declared attribute specs (type, filterable, full-text search, ann options)
validated and normalised, and the merge of current + declared + inferred types.

A schema is ``{attr: spec}`` where spec is a dict ``{"type": T, "filterable":
bool, "full_text_search": dict | None}``; ``id`` is always present with type
``uint``, ``uuid`` or ``string``.  Types (turbopuffer's):

    string int uint float bool datetime uuid     -> String Int64 UInt64 Float64 Boolean Datetime(ms, UTC) String
    []T (T one of the above)                     -> List(T)
    [N]f32, [N]f16 (vectors)                     -> Array(Float32, N)
    [][N]f32 (multi-vectors, late interaction)   -> List(Array(Float32, N))

This module is also the public face of the two it builds on (their names are re-exported
here, so ``schema.frame_from_rows`` etc. keep working): :mod:`puffer_cli.schema.types` (names,
types, dtypes, inference, RFC 3339 and base64 decoding) and :mod:`puffer_cli.schema.frames`
(write payloads -> typed frames, the value rules).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from puffer_cli import limits as L
from puffer_cli.errors import SchemaError, show
from puffer_cli.schema.sparse import METRICS as SPARSE_METRICS
from puffer_cli.schema.types import (
    ID_TYPES,
    METRICS,
    SPARSE,
    check_attr_name,
    dtype_of,
    is_multi_vector,
    is_vector,
)

SPEC_KEYS = {"type", "filterable", "full_text_search", "regex", "glob", "fuzzy", "ann", "sparse_knn"}
REFUSED_SPEC_KEYS = {
    "embed": "automatic embedding is not supported",
}
FLAG_KEYS = ("regex", "glob", "fuzzy")  # filter switches: Regex needs regex, Fuzzy fuzzy; glob: false disables Glob
ANN_KEYS = (
    "distance_metric",
    "late_interaction",
    "dtype",
    "connectivity",
    "expansion_add",
    "expansion_search",
    "list_rows",
    "probe",
    "probe_min_rows",
    "rerank",
    "fill",
    "prune",
    "codes",
)
ANN_CODES = ("int8", "int4")  # the IVF list codes (index.ivf.CODES)
ANN_BOUNDS = {
    "connectivity": L.ANN_CONNECTIVITY,
    "expansion_add": L.ANN_EXPANSION_ADD,
    "expansion_search": L.ANN_EXPANSION_SEARCH,
}
ANN_DTYPES = ("f32", "f16", "i8")
# the IVF index's options (index.ivf.BOUNDS; schema sits below the index layer, so the
# bounds are repeated here and tests/test_ivf.py checks that they agree)
IVF_BOUNDS = {
    "list_rows": (16, 1 << 20),
    "probe": (1e-4, 1.0),
    "probe_min_rows": (0, 1 << 24),
    "rerank": (1, 1000),
    "fill": (0.0, 8.0),
    "prune": (0.0, 10.0),
}


def normalize_spec(name: str, spec: Any) -> dict:
    """Validate one attribute's declared spec (string shorthand or object)."""
    check_attr_name(name)
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise SchemaError(
            f"schema for attribute {name!r} must be a type string or an object, got {show(spec, python=True)}"
        )
    for k, why in REFUSED_SPEC_KEYS.items():
        if spec.get(k) is not None:
            raise SchemaError(f"schema for attribute {name!r}: {k}: {why}")
    unknown = set(spec) - SPEC_KEYS - set(REFUSED_SPEC_KEYS)
    if unknown:
        raise SchemaError(
            f"schema for attribute {name!r}: unknown key(s) {sorted(unknown)}", hint=f"allowed: {sorted(SPEC_KEYS)}"
        )
    t = spec.get("type")
    if not isinstance(t, str):
        raise SchemaError(f'schema for attribute {name!r} needs a "type"')
    dtype_of(t)
    if name == "id" and t not in ID_TYPES:
        raise SchemaError(f"id type must be one of {ID_TYPES}, got {t!r}")
    out: dict[str, Any] = {"type": t}
    fts = spec.get("full_text_search")
    if fts not in (None, False):
        if t not in ("string", "[]string"):
            raise SchemaError(f"attribute {name!r}: full_text_search needs type string, not {t}")
        from puffer_cli.text import analyzer as text

        out["full_text_search"] = text.normalize_fts_options(fts)
    filterable = spec.get(
        "filterable", not is_vector(t) and not is_multi_vector(t) and t != SPARSE and "full_text_search" not in out
    )
    if not isinstance(filterable, bool):
        raise SchemaError(f"attribute {name!r}: filterable must be true or false")
    if t == SPARSE and filterable:
        raise SchemaError(f"attribute {name!r}: sparse vectors ({SPARSE}) cannot be filterable")
    if filterable and is_multi_vector(t):
        raise SchemaError(f"attribute {name!r}: a {t} (multi-vector) attribute cannot be filterable")
    out["filterable"] = filterable
    for k in FLAG_KEYS:
        if spec.get(k) is not None:
            if not isinstance(spec[k], bool):
                raise SchemaError(f"attribute {name!r}: {k} must be true or false, got {show(spec[k], python=True)}")
            if t not in ("string", "[]string"):
                raise SchemaError(f"attribute {name!r}: {k} needs type string or []string, not {t}")
            out[k] = spec[k]
    if spec.get("ann") not in (None, False):
        if not is_vector(t) and not is_multi_vector(t):
            raise SchemaError(f"attribute {name!r}: ann options only apply to vector types")
        out["ann"] = check_ann(name, spec["ann"])
        if bool(out["ann"].get("late_interaction")) != is_multi_vector(t):
            raise SchemaError(
                f"attribute {name!r}: ann late_interaction: true is "
                + ("required on" if is_multi_vector(t) else "only valid on")
                + f" multi-vector [][N]f32 attributes ({name!r} is {t})"
            )
    if spec.get("sparse_knn") not in (None, False):
        out["sparse_knn"] = check_sparse_knn(name, t, spec["sparse_knn"])
    return out


def check_sparse_knn(name: str, t: str, opts: Any) -> dict:
    """``sparse_knn: {"distance_metric": "dot_product"}`` (turbopuffer's only sparse metric), on a
    ``{}f16`` attribute: the attribute gets a sparse index (docs/query.md, "Sparse vectors")."""
    if t != SPARSE:
        raise SchemaError(f"attribute {name!r}: sparse_knn needs type {SPARSE}, not {t}")
    if not isinstance(opts, Mapping) or set(opts) - {"distance_metric"}:
        raise SchemaError(f'attribute {name!r}: sparse_knn is {{"distance_metric": "dot_product"}}, got {show(opts)}')
    m = opts.get("distance_metric", "dot_product")
    if m not in SPARSE_METRICS:
        raise SchemaError(
            f"attribute {name!r}: sparse_knn distance_metric must be one of {', '.join(SPARSE_METRICS)}, "
            f"got {show(m, python=True)}"
        )
    return {"distance_metric": m}


def check_ann(name: str, ann: Any) -> dict:
    """Validate an attribute's ``ann`` options: turbopuffer's ``distance_metric`` (one of
    querymodel.METRICS; the namespace's metric, see writes) and ``late_interaction``
    (multi-vector MUVERA indexing: only on, and required for an index of, ``[][N]f32``;
    checked by the caller, which knows the type), dtype one of ANN_DTYPES, the HNSW parameters integers (not
    booleans) within limits.ANN_* (outside them a build fails or exhausts memory), and the
    IVF index's ``list_rows`` / ``probe_min_rows`` / ``rerank`` (integers), ``probe`` (a fraction in (0, 1])
    and ``fill`` / ``prune`` (numbers) within index.ivf.BOUNDS (docs/indexer.md, "Vector index")."""
    if ann is True:
        ann = {}
    if not isinstance(ann, Mapping) or not all(isinstance(k, str) for k in ann) or set(ann) - set(ANN_KEYS):
        raise SchemaError(f"attribute {name!r}: ann is true or an object of {', '.join(ANN_KEYS)}")
    m = ann.get("distance_metric")
    if m is not None and m not in METRICS:
        raise SchemaError(
            f"attribute {name!r}: ann distance_metric must be one of {', '.join(METRICS)}, got {show(m, python=True)}"
        )
    li = ann.get("late_interaction")
    if li is not None and not isinstance(li, bool):
        raise SchemaError(
            f"attribute {name!r}: ann late_interaction must be true or false, got {show(li, python=True)}"
        )
    for k, (lo, hi) in IVF_BOUNDS.items():
        v = ann.get(k)
        if v is None:
            continue
        if k == "probe":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 and v >= lo
            want = f"a fraction of the lists, from {lo:g} to 1"
        elif k in ("fill", "prune"):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi
            want = f"a number from {lo:g} to {hi:g}"
        else:
            ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
            want = f"an integer from {lo} to {hi}"
        if not ok:
            raise SchemaError(
                f"attribute {name!r}: ann {k} must be {want}, got {show(v, python=True)}",
                hint="see docs/indexer.md, Vector index",
            )
    c = ann.get("codes")
    if c is not None and c not in ANN_CODES:
        raise SchemaError(
            f"attribute {name!r}: ann codes must be int8 or int4, got {show(c, python=True)}",
            hint="see docs/indexer.md, Vector index",
        )
    dtype = ann.get("dtype")
    if dtype is not None and (not isinstance(dtype, str) or dtype not in ANN_DTYPES):
        raise SchemaError(f"attribute {name!r}: ann dtype must be f32, f16 or i8, got {show(dtype, python=True)}")
    for k, (lo, hi) in ANN_BOUNDS.items():
        v = ann.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise SchemaError(
                f"attribute {name!r}: ann {k} must be an integer from {lo} to {hi}, got {show(v, python=True)}",
                hint=f"limits.ANN_{k.upper()}; see docs/http.md, Limits: writes",
            )
    return dict(ann)


def normalize_schema(obj: Any) -> dict:
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise SchemaError(f"schema must be an object mapping attribute names to types, got {type(obj).__name__}")
    return {k: normalize_spec(k, v) for k, v in obj.items()}


# ------------------------------------------------------------------ merging
def merge(current: Mapping, declared: Mapping, inferred: Mapping) -> dict:
    """New schema = current + declared + inferred. Raises on any type clash.

    ``declared`` may change filterable / full_text_search of an existing
    attribute but never its type."""
    out = {k: dict(v) for k, v in current.items()}
    for k, spec in declared.items():
        if k in out and out[k]["type"] != spec["type"]:
            raise SchemaError(f"attribute {k!r} has type {out[k]['type']}; cannot change it to {spec['type']}")
        out[k] = {**out.get(k, {}), **spec}
    for k, t in inferred.items():
        if t is None:
            continue
        if k in out:
            continue  # values were already checked against the existing type
        out[k] = normalize_spec(k, t)
    return out
