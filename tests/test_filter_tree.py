"""puffer_cli.filters.tree / bind / lower: the typed filter tree.

Round trips (JSON -> tree -> JSON), hashing (a tree is a cache key; JSON types matter:
``1``, ``1.0`` and ``true`` differ), pickling, and that compiling the parsed tree selects
the same rows as compiling the JSON (and as the reference evaluator of test_filters)."""

from __future__ import annotations

import math
import pickle

from hypothesis import HealthCheck, given, settings
from puffer_cli import filters as F
from puffer_cli.filters.bind import Const, bind
from puffer_cli.filters.parse import parse
from puffer_cli.filters.tree import TRUE, And, Not, Predicate, to_json

from tests import test_filters as TF


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(f=TF.filters(3))
def test_round_trip_and_hash(f):
    t = parse(f)
    assert to_json(t) == f
    again = parse(to_json(t))
    assert again == t and hash(again) == hash(t)
    assert pickle.loads(pickle.dumps(t)) == t


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=TF.frames, f=TF.filters(2))
def test_tree_compiles_as_json(rows, f):
    df = TF.make_frame(rows)
    try:
        from_json = df.filter(F.compile_filter(f, TF.SCHEMA, columns=df.columns))["id"].to_list()
    except Exception as e:  # the same error either way
        try:
            F.compile_filter(parse(f), TF.SCHEMA, columns=df.columns)
        except Exception as e2:
            assert type(e2) is type(e) and str(e2) == str(e)
            return
        raise AssertionError(f"{f}: only the JSON form failed") from e
    from_tree = df.filter(F.compile_filter(parse(f), TF.SCHEMA))["id"].to_list()
    assert from_tree == from_json == [i for i, r in enumerate(rows) if TF.ref_eval(dict(r, id=i), f)]


def test_json_types_are_part_of_the_key():
    a, b, c = parse(["n", "Eq", 1]), parse(["n", "Eq", 1.0]), parse(["n", "Eq", True])
    assert len({a, b, c}) == 3
    assert parse(["n", "Eq", math.nan]) == parse(["n", "Eq", math.nan])
    assert parse(["And", []]) == TRUE


def test_shapes_and_cache():
    t = parse(["And", [["a", "Eq", 1], ["Not", ["b", "In", [1, 2]]]]])
    assert isinstance(t, And) and isinstance(t.children[1], Not) and isinstance(t.children[0], Predicate)
    assert bind(parse(["zz", "Eq", 1]), {}) == Const(False)  # unknown attribute: missing everywhere
    schema = {"a": {"type": "int"}, "b": {"type": "int"}}
    assert F.compile_filter(t, schema) is F.compile_filter(to_json(t), schema)  # one cache, keyed by the tree
