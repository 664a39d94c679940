"""The JSON shape of request bodies: the one place a field's JSON type is checked.

turbopuffer deserialises a request body into typed structs (Rust serde), so a field of the
wrong JSON type (``upsert_rows`` given an object) is a **422** whose message is the
deserializer's: ``invalid type: map, expected a sequence``.  puffer does the same for every
field of a write, query, multi-query, schema update and metadata update: :func:`check_fields`
runs on the body before anything else reads it, against the field table of that body
(:data:`WRITE_FIELDS`, :data:`QUERY_FIELDS` ...), and raises :class:`UnprocessableBody`
``<field>: invalid type: <what it got>, expected <what the field takes>``.  What a field's value
*means* (an unknown operator, a bad metric name, a value out of range) stays a 400 where it is
interpreted.  ``null`` is the same as an absent field everywhere (as serde's ``Option``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from puffer_cli.errors import QueryTypeMismatch, UnprocessableBody, WriteTypeMismatch

#: JSON kinds, by serde's names for them
SEQ, MAP, STR, BOOL, INT, NUM = "sequence", "map", "string", "boolean", "integer", "number"

_EXPECTED = {SEQ: "a sequence", MAP: "a map", STR: "a string", BOOL: "a boolean", INT: "an integer", NUM: "a number"}


def unexpected(v: Any) -> str:
    """serde's ``Unexpected`` for a JSON value: ``map``, ``sequence``, ``string "x"``,
    ``integer `5```, ``floating point `1.5```, ``boolean `true```, ``null``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean `{'true' if v else 'false'}`"
    if isinstance(v, int):
        return f"integer `{v}`"
    if isinstance(v, float):
        return f"floating point `{v!r}`"
    if isinstance(v, str):
        s = v if len(v) <= 60 else v[:60] + "..."
        return f'string "{s}"'
    if isinstance(v, Mapping):
        return "map"
    if isinstance(v, (list, tuple)):
        return "sequence"
    return type(v).__name__


def _is(v: Any, kind: str) -> bool:
    if kind == SEQ:
        return isinstance(v, (list, tuple))
    if kind == MAP:
        return isinstance(v, Mapping)
    if kind == STR:
        return isinstance(v, str)
    if kind == BOOL:
        return isinstance(v, bool)
    if kind == INT:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == NUM:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    raise AssertionError(kind)


def mismatch(where: str, v: Any, kinds: tuple[str, ...], cls: type[UnprocessableBody] = UnprocessableBody):
    """The 422 for value ``v`` at ``where`` that is none of ``kinds``."""
    expected = " or ".join(_EXPECTED[k] for k in kinds)
    return cls(f"{where}: invalid type: {unexpected(v)}, expected {expected}")


def check(where: str, v: Any, *kinds: str, cls: type[UnprocessableBody] = UnprocessableBody) -> None:
    if v is not None and not any(_is(v, k) for k in kinds):
        raise mismatch(where, v, kinds, cls)


#: field -> the JSON kinds it takes, and (optionally) the kind of each element of a sequence
#: or each value of a map
Fields = Mapping[str, tuple[tuple[str, ...], tuple[str, ...] | None]]

WRITE_FIELDS: Fields = {
    "upsert_rows": ((SEQ,), (MAP,)),
    "patch_rows": ((SEQ,), (MAP,)),
    "upsert_columns": ((MAP,), (SEQ,)),
    "patch_columns": ((MAP,), (SEQ,)),
    "deletes": ((SEQ,), None),
    "delete_by_filter": ((SEQ,), None),
    "patch_by_filter": ((MAP,), None),
    "upsert_condition": ((SEQ,), None),
    "patch_condition": ((SEQ,), None),
    "delete_condition": ((SEQ,), None),
    "distance_metric": ((STR,), None),
    "schema": ((MAP,), (STR, MAP)),
    "return_affected_ids": ((BOOL,), None),
    "copy_from_namespace": ((STR, MAP), None),
    "branch_from_namespace": ((STR, MAP), None),
    "disable_backpressure": ((BOOL,), None),
    "create_namespace": ((BOOL,), None),
    "encryption": ((MAP,), None),
    "delete_by_filter_allow_partial": ((BOOL,), None),
    "patch_by_filter_allow_partial": ((BOOL,), None),
}

PATCH_BY_FILTER_FIELDS: Fields = {"filters": ((SEQ,), None), "patch": ((MAP,), None)}

QUERY_FIELDS: Fields = {
    "rank_by": ((SEQ,), None),
    "top_k": ((INT,), None),
    "limit": ((INT, MAP), None),
    "offset": ((INT,), None),
    "filters": ((SEQ,), None),
    "include_attributes": ((BOOL, SEQ), (STR,)),
    "exclude_attributes": ((SEQ,), (STR,)),
    "aggregate_by": ((MAP,), (SEQ,)),
    "group_by": ((SEQ,), None),
    "consistency": ((MAP,), None),
    "distance_metric": ((STR,), None),
    "vector_encoding": ((STR,), None),
    "compute_attributes": ((MAP,), (SEQ,)),
}

MULTI_FIELDS: Fields = {
    "queries": ((SEQ,), (MAP,)),
    "consistency": ((MAP,), None),
    "vector_encoding": ((STR,), None),
    "rerank_by": ((SEQ, MAP), None),
    "limit": ((INT, MAP), None),
    "offset": ((INT,), None),
}

METADATA_FIELDS: Fields = {"read_only": ((BOOL,), None), "pinning": ((BOOL, MAP), None)}


def check_fields(body: Any, fields: Fields, *, pre: str = "") -> None:
    """Every known field of ``body`` has one of its JSON kinds (unknown fields are left to the
    caller, which names them in a 400); ``pre`` prefixes the field names in messages
    (``queries[1].``)."""
    if not isinstance(body, Mapping):
        return  # the caller's own "must be a JSON object" applies
    cls = QueryTypeMismatch if fields is QUERY_FIELDS or fields is MULTI_FIELDS else WriteTypeMismatch
    for k, (kinds, elem) in fields.items():
        v = body.get(k)
        if v is None:
            continue
        check(pre + k, v, *kinds, cls=cls)
        if elem is None:
            continue
        if isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                if not any(_is(x, e) for e in elem):
                    raise mismatch(f"{pre}{k}[{i}]", x, elem, cls)
        elif isinstance(v, Mapping):
            for name, x in v.items():
                if not any(_is(x, e) for e in elem):
                    raise mismatch(f"{pre}{k}.{name}", x, elem, cls)
