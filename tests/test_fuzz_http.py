"""HTTP fuzzing of `puffer serve` (issue 9): a fixed corpus of the measured failures, the
limits at and one past their boundary, and hypothesis-mutated write/query bodies.

For every request: no 5xx; every 4xx is ``{"status": "error", "error": "<non-empty str>"}``;
nothing is logged at ERROR or with a traceback; and a refused request (any query, too) leaves
the store byte for byte as it was.  Both a WAL-only namespace and an indexed one are targeted.

Where it runs:
* the bulk (corpus, limits, generated cases) in process, through starlette's TestClient;
* the requests that crashed or wedged the server (4,000-clause filters, a 100k-character
  regex, nesting 500-1,000 deep, 10,000 attributes) against ``serve`` in a child process
  (tests/serve_proc.py): a segfault or a 200 s computation there fails one test instead of
  taking pytest down, and the child is restarted for the next case;
* a handful through the official ``turbopuffer`` client over that real socket.

Malformed requests with one exact expected status (bad JSON, auth, routes, body size,
ordinary schema errors) live in tests/test_server_bad_input.py; library-level fuzzing in
tests/test_fuzz_input.py.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import math
import struct
import subprocess
import urllib.parse
import uuid

import httpx
import puffer_cli
import pytest
import turbopuffer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from puffer_cli import limits as L
from puffer_cli.index import builder
from puffer_cli.server.app import ServeConfig, create_app
from puffer_cli.store import url as _store
from starlette.testclient import TestClient

from ._bodies import paths as _paths
from .serve_proc import KEY, ServeProc, dir_state

AUTH = {"Authorization": f"Bearer {KEY}"}
BODY_LIMIT = L.MAX_STRING_BYTES + 2 * 1024 * 1024  # room for one string at its limit
SCHEMA = {
    "body": {"type": "string", "full_text_search": True},
    "ts": "datetime",
    "tag": {"type": "string", "regex": True},
}


def rows(n=12, start=1):
    return [
        {
            "id": i,
            "vector": [0.1 * (i % 10), 1 - 0.1 * (i % 10)],
            "tag": "ab"[i % 2],
            "n": i,
            "body": ["hello world", "quick brown fox", "lazy dog"][i % 3],
            "ts": f"2024-01-{1 + i % 28:02d}T00:00:00Z",
        }
        for i in range(start, start + n)
    ]


def make_namespaces(db, names_wal=("wal",), names_idx=("idx",)):
    for name in names_wal + names_idx:
        ns = db.open_namespace(name)
        ns.write({"upsert_rows": rows(), "schema": SCHEMA, "distance_metric": "cosine_distance"})
        if name in names_idx:
            assert builder.index_namespace(ns, gc_grace_s=0).status == "indexed"
            ns.write({"upsert_rows": rows(3, start=100)})  # an unindexed tail on top of the index


# ------------------------------------------------------------------ raw JSON
class Raw:
    """Literal JSON text inside a body (deeper than orjson/json can encode, NaN tokens, ...)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self):
        return f"Raw({self.text[:40]!r}{'...' if len(self.text) > 40 else ''} len={len(self.text)})"


class Dup:
    """A JSON object whose keys repeat."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __repr__(self):
        return f"Dup({self.pairs!r})"


class _Tok(str):
    """Literal JSON punctuation inside enc()'s work stack."""


def enc(v) -> str:
    """JSON text for v; NaN/Infinity become the (invalid) bare tokens, as some clients send."""
    out: list[str] = []
    stack = [v]
    while stack:  # iterative: bodies nest 1,000 deep
        x = stack.pop()
        if isinstance(x, _Tok):
            out.append(str.__str__(x))
        elif isinstance(x, Raw):
            out.append(x.text)
        elif isinstance(x, (dict, Dup)):
            items = x.pairs if isinstance(x, Dup) else list(x.items())
            parts: list = [_Tok("{")]
            for i, (k, val) in enumerate(items):
                if i:
                    parts.append(_Tok(","))
                parts += [_Tok(json.dumps(str(k)) + ":"), val]
            parts.append(_Tok("}"))
            stack.extend(reversed(parts))
        elif isinstance(x, (list, tuple)):
            parts = [_Tok("[")]
            for i, val in enumerate(x):
                if i:
                    parts.append(_Tok(","))
                parts.append(val)
            parts.append(_Tok("]"))
            stack.extend(reversed(parts))
        else:
            out.append(json.dumps(x))
    return "".join(out)


def nested(kind: str, depth: int) -> Raw:
    leaf = {"filter": '["n","Eq",1]', "rank": '["body","BM25","hello"]', "value": "1"}
    o, c = {
        "Not": ('["Not",', "]"),
        "And": ('["And",[', "]]"),
        "Or": ('["Or",[', "]]"),
        "Sum": ('["Sum",[', "]]"),
        "list": ("[", "]"),
        "obj": ('{"a":', "}"),
    }[kind]
    lf = leaf["rank" if kind == "Sum" else "value" if kind in ("list", "obj") else "filter"]
    return Raw(o * depth + lf + c * depth)


def wide(op: str, n: int) -> list:
    return [op, [["n", "Eq", i] for i in range(n)]]


def f32_b64(*xs) -> str:
    return base64.b64encode(struct.pack(f"<{len(xs)}f", *xs)).decode()


# ------------------------------------------------------------------ the in-process app and its checks
class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def bad(self) -> list[str]:
        return [
            f"{r.name} {r.levelname}: {r.getMessage()[:300]}" + (" [traceback]" if r.exc_info else "")
            for r in self.records
            if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()
        ]


class App:
    def __init__(self, client: TestClient, url: str, records: Records):
        self.c, self.url, self.records = client, url, records
        self.store = _store.open_store(url)
        self.cases = 0
        self.generated = 0

    def state(self) -> dict[str, bytes]:
        return {k: self.store.read(k) for k in self.store.list("")}

    def send(self, method, path, body=None, headers=None) -> httpx.Response:
        h = {**AUTH, "Content-Type": "application/json", **(headers or {})}
        if body is None:
            return self.c.request(method, path, headers=h)
        raw = body if isinstance(body, bytes) else enc(body).encode("utf-8", "surrogatepass")
        return self.c.request(method, path, content=raw, headers=h)

    def check(self, method, path, body=None, expect="4xx", headers=None, *, query=None) -> httpx.Response:
        """Send one request and assert the issue-9 guarantees. expect: "4xx", "ok", "any" (200 or
        4xx) or an exact status. Queries (path ends in /query) must never change the store."""
        self.cases += 1
        before = self.state()
        del self.records.records[:]
        r = self.send(method, path, body, headers)
        s = r.status_code
        what = f"{method} {path} {repr(body)[:200]}"
        assert s < 500, f"{what} -> {s}: {r.text[:500]}"
        if s >= 400:
            err = r.json()
            assert set(err) == {"status", "error"} and err["status"] == "error", (what, r.text[:300])
            assert isinstance(err["error"], str) and err["error"].strip(), (what, r.text[:300])
        else:
            assert s == 200, (what, s, r.text[:300])
            r.json()  # valid JSON (no bare NaN)
        if expect == "4xx":
            assert 400 <= s < 500, f"{what} was accepted ({s}): {r.text[:300]}"
        elif expect == "ok":
            assert s == 200, f"{what} -> {s}: {r.text[:300]}"
        elif isinstance(expect, int):
            assert s == expect, f"{what} -> {s} (expected {expect}): {r.text[:300]}"
        assert not self.records.bad(), f"{what} logged: {self.records.bad()}"
        if query is None:
            query = path.endswith(("/query", "/multi-query"))
        if s >= 400 or query:
            after = self.state()
            assert after.keys() == before.keys(), f"{what} ({s}) changed keys: {sorted(after.keys() ^ before.keys())}"
            assert after == before, f"{what} ({s}) changed bytes of {[k for k in after if after[k] != before[k]]}"
        return r


@pytest.fixture(scope="module")
def app():
    url = f"memory://{uuid.uuid4().hex}"
    make_namespaces(puffer_cli.connect(url), ("wal", "fw"), ("idx", "fi"))
    records = Records()
    root = logging.getLogger()
    root.addHandler(records)
    cfg = ServeConfig(store=url, api_key=KEY, max_body_bytes=BODY_LIMIT, commit_window_ms=0)
    try:
        with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
            yield App(c, url, records)
    finally:
        root.removeHandler(records)
        _store.open_store(url).clear()


def fresh() -> str:
    return "f-" + uuid.uuid4().hex[:12]


def W(ns):
    return f"/v2/namespaces/{ns}"


def Q(ns):
    return f"/v2/namespaces/{ns}/query"


NSS = ["wal", "idx"]
ids = lambda cases: [c[0] for c in cases]  # noqa: E731

# ------------------------------------------------------------------ fixed corpus (in process)
# (id, body, expect) -- query bodies, sent to the WAL-only and to the indexed namespace
QUERY_CORPUS = [
    # datetimes out of range in filters
    ("ts-lt-1e20", {"rank_by": ["id", "asc"], "filters": ["ts", "Lt", 1e20]}, "4xx"),
    ("ts-gt-2^62", {"rank_by": ["id", "asc"], "filters": ["ts", "Gt", 2**62]}, "4xx"),
    ("ts-eq-neg1e20", {"rank_by": ["id", "asc"], "filters": ["ts", "Eq", -1e20]}, "4xx"),
    ("ts-in-2^62", {"rank_by": ["id", "asc"], "filters": ["ts", "In", [1, 2**62]]}, "4xx"),
    ("ts-not-a-date", {"rank_by": ["id", "asc"], "filters": ["ts", "Gte", "yesterday"]}, "4xx"),
    ("ts-year-99999", {"rank_by": ["id", "asc"], "filters": ["ts", "Lt", "99999-01-01T00:00:00Z"]}, "4xx"),
    ("order-by-ts-filter-huge", {"rank_by": ["ts", "desc"], "filters": ["ts", "Lt", 2**63 - 1]}, "4xx"),
    # query vectors: NaN / inf / strings / bools / wrong dims
    ("vec-nan-token", {"rank_by": ["vector", "ANN", Raw("[NaN, 0.1]")]}, "4xx"),
    ("vec-inf-token", {"rank_by": ["vector", "ANN", Raw("[Infinity, 0.1]")]}, "4xx"),
    ("vec-1e400", {"rank_by": ["vector", "ANN", Raw("[1e400, 0.1]")]}, "4xx"),
    ("vec-f32-overflow", {"rank_by": ["vector", "ANN", [3.5e38, 0.1]]}, "4xx"),
    ("vec-nan-b64", {"rank_by": ["vector", "ANN", f32_b64(math.nan, 0.1)]}, "4xx"),
    ("vec-inf-b64", {"rank_by": ["vector", "ANN", f32_b64(math.inf, 0.1)]}, "4xx"),
    ("vec-bools", {"rank_by": ["vector", "ANN", [True, False]]}, "4xx"),
    ("vec-strings", {"rank_by": ["vector", "ANN", ["0.1", "0.2"]]}, "4xx"),
    ("vec-nulls", {"rank_by": ["vector", "ANN", [None, 0.2]]}, "4xx"),
    ("vec-nested", {"rank_by": ["vector", "ANN", [[0.1], [0.2]]]}, "4xx"),
    ("vec-empty", {"rank_by": ["vector", "ANN", []]}, "4xx"),
    ("vec-dims-3", {"rank_by": ["vector", "ANN", [0.1, 0.2, 0.3]]}, "4xx"),
    ("vec-dims-1", {"rank_by": ["vector", "ANN", [0.1]]}, "4xx"),
    ("vec-dims-3-knn-filter", {"rank_by": ["vector", "kNN", [0.1, 0.2, 0.3]], "filters": ["n", "Gt", 1]}, "4xx"),
    (
        "vec-dims-multi",
        {"queries": [{"rank_by": ["vector", "ANN", [0.1, 0.2]]}, {"rank_by": ["vector", "ANN", [0.1, 0.2, 0.3]]}]},
        "4xx",
    ),
    # integers beyond int64 / huge top_k
    ("top_k-2^63", {"rank_by": ["n", "asc"], "top_k": 2**63}, "4xx"),
    ("top_k-2^64", {"rank_by": ["n", "asc"], "top_k": 2**64}, "4xx"),
    ("top_k-10^30", {"rank_by": ["n", "asc"], "top_k": 10**30}, "4xx"),
    ("top_k-neg", {"rank_by": ["n", "asc"], "top_k": -(2**63) - 1}, "4xx"),
    ("top_k-float", {"rank_by": ["n", "asc"], "top_k": 1e300}, "4xx"),
    ("top_k-bool", {"rank_by": ["n", "asc"], "top_k": True}, "4xx"),
    ("top_k-ann-10^9", {"rank_by": ["vector", "ANN", [0.1, 0.2]], "top_k": 10**9}, "4xx"),
    ("limit-total-huge", {"rank_by": ["n", "asc"], "limit": {"total": 2**64}}, "4xx"),
    ("filter-int-2^64", {"rank_by": ["n", "asc"], "filters": ["n", "Eq", 2**64]}, "any"),
    ("filter-int-neg-2^70", {"rank_by": ["n", "asc"], "filters": ["n", "Gt", -(2**70)]}, "any"),
    ("filter-in-big-ints", {"rank_by": ["n", "asc"], "filters": ["n", "In", [2**64, -(2**64), 1]]}, "any"),
    ("id-filter-2^64", {"rank_by": ["id", "asc"], "filters": ["id", "Eq", 2**64]}, "any"),
    # long strings
    ("bm25-100k", {"rank_by": ["body", "BM25", "hello " * 20_000]}, "4xx"),
    ("bm25-huge-token", {"rank_by": ["body", "BM25", "x" * 100_000]}, "4xx"),
    ("attr-name-10k", {"rank_by": ["n", "asc"], "filters": ["x" * 10_000, "Eq", 1]}, "any"),
    ("include-10k-attrs", {"rank_by": ["n", "asc"], "include_attributes": [f"a{i}" for i in range(10_000)]}, "any"),
    ("eq-1MB-string", {"rank_by": ["n", "asc"], "filters": ["tag", "Eq", "y" * 1_000_000]}, "any"),
    ("in-20k", {"rank_by": ["n", "asc"], "filters": ["n", "In", list(range(20_000))]}, "4xx"),
    ("contains-any-20k", {"rank_by": ["n", "asc"], "filters": ["tag", "ContainsAny", ["z"] * 20_000]}, "4xx"),
    ("multi-17", {"queries": [{"rank_by": ["n", "asc"]}] * 17}, "4xx"),
    ("multi-1000", {"queries": [{"rank_by": ["n", "asc"]}] * 1000}, "4xx"),
    # unknown keys at several levels
    ("unknown-top", {"rank_by": ["n", "asc"], "rank": ["n", "asc"]}, "4xx"),
    ("unknown-consistency", {"rank_by": ["n", "asc"], "consistency": {"level": "strong", "x": 1}}, "4xx"),
    ("unknown-limit", {"rank_by": ["n", "asc"], "limit": {"total": 3, "per_page": 1}}, "4xx"),
    ("unknown-in-multi", {"queries": [{"rank_by": ["n", "asc"], "bogus": True}]}, "4xx"),
    ("unknown-operator", {"rank_by": ["n", "asc"], "filters": ["n", "Equals", 1]}, "4xx"),
    ("unknown-aggregate", {"aggregate_by": {"c": ["CountDistinct", "n"]}}, "4xx"),
    ("duplicate-keys", Dup([("rank_by", ["n", "asc"]), ("top_k", 2), ("top_k", "x")]), "any"),
    # filters that are merely odd
    ("filter-on-vector", {"rank_by": ["n", "asc"], "filters": ["vector", "Eq", [0.1, 0.2]]}, "4xx"),
    ("filter-missing-attr", {"rank_by": ["n", "asc"], "filters": ["nope", "Eq", 1]}, "any"),
    ("filter-empty-and", {"rank_by": ["n", "asc"], "filters": ["And", []]}, "any"),
    ("filter-empty-or", {"rank_by": ["n", "asc"], "filters": ["Or", []]}, "any"),
    ("regex-invalid", {"rank_by": ["n", "asc"], "filters": ["tag", "Regex", "(unclosed"]}, "4xx"),
    ("regex-backref", {"rank_by": ["n", "asc"], "filters": ["tag", "Regex", r"(a)\1"]}, "4xx"),
    ("glob-on-int", {"rank_by": ["n", "asc"], "filters": ["n", "Glob", "1*"]}, "4xx"),
    ("rank-sum-empty", {"rank_by": ["Sum", []]}, "4xx"),
    ("rank-product-nan", {"rank_by": ["Product", Raw("NaN"), ["body", "BM25", "fox"]]}, "4xx"),
    ("rank-product-inf", {"rank_by": ["Product", 1e308, ["Product", 1e308, ["body", "BM25", "fox"]]]}, "any"),
    ("group-by-vector", {"aggregate_by": {"c": ["Count"]}, "group_by": ["vector"]}, "4xx"),
    ("group-by-1000", {"aggregate_by": {"c": ["Count"]}, "group_by": [f"g{i}" for i in range(1000)]}, "any"),
    # nesting, moderate (the 500-1,000-deep cases run against the child process below)
    ("not-40", {"rank_by": ["n", "asc"], "filters": nested("Not", 40)}, "4xx"),
    ("and-40", {"rank_by": ["n", "asc"], "filters": nested("And", 40)}, "4xx"),
    ("sum-40", {"rank_by": nested("Sum", 40)}, "4xx"),
    ("value-list-40", {"rank_by": ["n", "asc"], "filters": ["tag", "Eq", nested("list", 40)]}, "4xx"),
    ("value-obj-40", {"rank_by": ["n", "asc"], "include_attributes": nested("obj", 40)}, "4xx"),
]


@pytest.mark.parametrize("ns", NSS)
@pytest.mark.parametrize("name,body,expect", QUERY_CORPUS, ids=ids(QUERY_CORPUS))
def test_query_corpus(app, ns, name, body, expect):
    app.check("POST", Q(ns), body, expect)


# write bodies, sent to the WAL-only and to the indexed namespace
WRITE_CORPUS = [
    # datetimes out of range
    ("ts-1e20", {"upsert_rows": [{"id": 1, "ts": 1e20}]}, "4xx"),
    ("ts-2^62", {"upsert_rows": [{"id": 1, "ts": 2**62}]}, "4xx"),
    ("ts-neg-1e20", {"upsert_rows": [{"id": 1, "ts": -1e20}]}, "4xx"),
    ("ts-year-0", {"upsert_rows": [{"id": 1, "ts": "0000-01-01T00:00:00Z"}]}, "4xx"),
    ("ts-col-2^62", {"upsert_columns": {"id": [1, 2], "ts": [0, 2**62]}}, "4xx"),
    ("ts-patch-1e20", {"patch_rows": [{"id": 1, "ts": 1e20}]}, "4xx"),
    ("ts-patch-by-filter", {"patch_by_filter": {"filters": ["n", "Gt", 0], "patch": {"ts": 2**62}}}, "4xx"),
    ("ts-delete-by-filter", {"delete_by_filter": ["ts", "Lt", 2**62]}, "4xx"),
    ("ts-condition", {"upsert_rows": [{"id": 1, "n": 1}], "upsert_condition": ["ts", "Lt", 1e20]}, "4xx"),
    # vectors: NaN / inf / strings / bools / wrong dims (both namespaces have 2-d vectors)
    ("vec-nan-token", Raw('{"upsert_rows": [{"id": 1, "vector": [NaN, 0.1]}]}'), "4xx"),
    ("vec-inf-token", Raw('{"upsert_rows": [{"id": 1, "vector": [-Infinity, 0.1]}]}'), "4xx"),
    ("vec-1e400", Raw('{"upsert_rows": [{"id": 1, "vector": [1e400, 0.1]}]}'), "4xx"),
    ("vec-f32-overflow", {"upsert_rows": [{"id": 1, "vector": [3.5e38, 0.1]}]}, "4xx"),
    ("vec-nan-b64", {"upsert_rows": [{"id": 1, "vector": f32_b64(math.nan, 0.1)}]}, "4xx"),
    ("vec-inf-b64-columns", {"upsert_columns": {"id": [1], "vector": [f32_b64(0.1, -math.inf)]}}, "4xx"),
    ("vec-nan-patch", Raw('{"patch_rows": [{"id": 1, "vector": [0.1, NaN]}]}'), "4xx"),
    ("vec-bools", {"upsert_rows": [{"id": 1, "vector": [True, False]}]}, "4xx"),
    ("vec-strings", {"upsert_rows": [{"id": 1, "vector": ["0.1", "0.2"]}]}, "4xx"),
    ("vec-mixed", {"upsert_rows": [{"id": 1, "vector": [0.1, "x"]}]}, "4xx"),
    ("vec-null-elem", {"upsert_rows": [{"id": 1, "vector": [None, 0.1]}]}, "4xx"),
    ("vec-nested", {"upsert_rows": [{"id": 1, "vector": [[0.1, 0.2]]}]}, "4xx"),
    ("vec-dims-3", {"upsert_rows": [{"id": 1, "vector": [0.1, 0.2, 0.3]}]}, "4xx"),
    ("vec-dims-0", {"upsert_rows": [{"id": 1, "vector": []}]}, "4xx"),
    ("vec-dims-columns", {"upsert_columns": {"id": [1, 2], "vector": [[0.1, 0.2], [0.1]]}}, "4xx"),
    ("vec-object", {"upsert_rows": [{"id": 1, "vector": {"x": 1}}]}, "4xx"),
    # integers beyond int64 / uint64
    ("int-2^63", {"upsert_rows": [{"id": 1, "n": 2**63}]}, "4xx"),
    ("int-neg", {"upsert_rows": [{"id": 1, "n": -(2**63) - 1}]}, "4xx"),
    ("int-new-attr-2^64", {"upsert_rows": [{"id": 1, "big": 2**64}]}, "4xx"),
    ("int-new-attr-2^100", {"upsert_columns": {"id": [1, 2], "big": [1, 2**100]}}, "4xx"),
    ("int-array-2^64", {"upsert_rows": [{"id": 1, "nums": [1, 2**64]}]}, "4xx"),
    ("id-2^64", {"upsert_rows": [{"id": 2**64}]}, "4xx"),
    ("id-neg-2^70", {"upsert_rows": [{"id": -(2**70)}]}, "4xx"),
    ("deletes-2^64", {"deletes": [2**64]}, "4xx"),
    ("patch-n-2^63", {"patch_rows": [{"id": 1, "n": 2**63}]}, "4xx"),
    ("float-1e400", Raw('{"upsert_rows": [{"id": 1, "score": 1e400}]}'), "4xx"),
    ("float-nan", Raw('{"upsert_rows": [{"id": 1, "score": NaN}]}'), "4xx"),
    # strings/names past their limits
    ("attr-name-10k", {"upsert_rows": [{"id": 1, "a" * 10_000: 1}]}, "4xx"),
    ("attr-name-empty", {"upsert_rows": [{"id": 1, "": 1}]}, "4xx"),
    ("id-string-10k", {"upsert_rows": [{"id": "s" * 10_000}]}, "4xx"),
    ("attrs-300-in-write", {"upsert_rows": [{"id": 1, **{f"w{i}": i for i in range(300)}}]}, "4xx"),
    ("attrs-300-columns", {"upsert_columns": {"id": [1], **{f"c{i}": [i] for i in range(300)}}}, "4xx"),
    ("patch-300-attrs", {"patch_rows": [{"id": 1, **{f"p{i}": i for i in range(300)}}]}, "4xx"),
    ("array-100k", {"upsert_rows": [{"id": 1, "arr": list(range(100_000))}]}, "4xx"),
    # ann options (the measured ones break every later `puffer index`)
    ("ann-conn-neg5", {"schema": {"vector": {"type": "[2]f32", "ann": {"connectivity": -5}}}}, "4xx"),
    ("ann-conn-10^9", {"schema": {"vector": {"type": "[2]f32", "ann": {"connectivity": 10**9}}}}, "4xx"),
    ("ann-exp-add-10^12", {"schema": {"vector": {"type": "[2]f32", "ann": {"expansion_add": 10**12}}}}, "4xx"),
    ("ann-exp-search-0", {"schema": {"vector": {"type": "[2]f32", "ann": {"expansion_search": 0}}}}, "4xx"),
    ("ann-conn-str", {"schema": {"vector": {"type": "[2]f32", "ann": {"connectivity": "16"}}}}, "4xx"),
    ("ann-conn-float", {"schema": {"vector": {"type": "[2]f32", "ann": {"connectivity": 16.5}}}}, "4xx"),
    ("ann-conn-bool", {"schema": {"vector": {"type": "[2]f32", "ann": {"connectivity": True}}}}, "4xx"),
    # unknown keys / wrong shapes
    ("unknown-top", {"upsert_rows": [{"id": 1}], "upsert_rowz": [{"id": 2}]}, "4xx"),
    ("unknown-patch-by-filter", {"patch_by_filter": {"filters": ["n", "Eq", 1], "patch": {"n": 2}, "x": 1}}, "4xx"),
    ("unknown-copy", {"copy_from_namespace": {"source_namespace": "wal", "bogus": 1}}, "4xx"),
    ("unknown-schema-spec", {"schema": {"tag": {"type": "string", "sortable": True}}}, "4xx"),
    ("duplicate-id-key", Dup([("upsert_rows", [Dup([("id", 1), ("id", "x")])])]), "any"),
    ("upsert-condition-garbage", {"upsert_rows": [{"id": 1}], "upsert_condition": {"n": 1}}, "4xx"),
    ("delete-condition-no-deletes", {"delete_condition": ["n", "Eq", 1]}, "any"),
    ("schema-vector-dims-0", {"schema": {"v0": "[0]f32"}}, "4xx"),
    ("schema-vector-dims-huge", {"schema": {"vbig": f"[{10**12}]f32"}}, "4xx"),
    ("schema-type-nested-array", {"schema": {"x": "[][]int"}}, "4xx"),
    # nesting, moderate (500-1,000 deep: child process below)
    ("value-list-40", {"upsert_rows": [{"id": 1, "deep": nested("list", 40)}]}, "4xx"),
    ("value-obj-40", {"upsert_rows": [{"id": 1, "deep": nested("obj", 40)}]}, "4xx"),
    ("dbf-not-40", {"delete_by_filter": nested("Not", 40)}, "4xx"),
    ("pbf-and-40", {"patch_by_filter": {"filters": nested("And", 40), "patch": {"n": 1}}}, "4xx"),
]

#: ids that are no id (null, a bool, a float, a list, an object), in every write form that names ids
#: (issue 23: one such row in the WAL made every reader of the store fail): refused, nothing committed
BAD_IDS = {"null": None, "true": True, "float": 2.5, "list": [1], "object": {"a": 1}, "nan": Raw("NaN")}


def _bad_id_cases():
    for name, bad in BAD_IDS.items():
        forms = {
            "upsert-rows": {"upsert_rows": [{"id": bad, "n": 1}]},
            "upsert-rows-2nd": {"upsert_rows": [{"id": 1, "n": 1}, {"id": bad, "n": 2}]},
            "upsert-columns": {"upsert_columns": {"id": [bad], "n": [1]}},
            "upsert-columns-2nd": {"upsert_columns": {"id": [1, bad], "n": [1, 2]}},
            "upsert-columns-scalar": {"upsert_columns": {"id": bad, "n": [1]}},
            "patch-rows": {"patch_rows": [{"id": bad, "n": 1}]},
            "patch-columns": {"patch_columns": {"id": [bad], "n": [1]}},
            "deletes": {"deletes": [bad]},
            "deletes-2nd": {"deletes": [1, bad]},
            "upsert-and-deletes": {"upsert_rows": [{"id": 3}], "deletes": [bad]},
            "condition": {"upsert_rows": [{"id": bad}], "upsert_condition": ["n", "Eq", 1]},
        }
        if isinstance(bad, list):
            del forms["upsert-columns-scalar"]  # {"id": [1]}: a valid column
        for form, body in forms.items():  # (enc writes a Raw NaN as the bare token)
            yield f"id-{name}-{form}", body, "4xx"
    for form, body in {
        "upsert-rows-missing": {"upsert_rows": [{"n": 1}]},
        "upsert-columns-missing": {"upsert_columns": {"n": [1]}},
        "upsert-columns-short": {"upsert_columns": {"id": [1], "n": [1, 2]}},
        "patch-rows-missing": {"patch_rows": [{"n": 1}]},
    }.items():
        yield f"id-{form}", body, "4xx"


WRITE_CORPUS += list(_bad_id_cases())


@pytest.mark.parametrize("ns", ["fw", "fi"])
@pytest.mark.parametrize("name,body,expect", WRITE_CORPUS, ids=ids(WRITE_CORPUS))
def test_write_corpus(app, ns, name, body, expect):
    app.check("POST", W(ns), body, expect)


@pytest.mark.parametrize(
    "body",
    [
        {"delete_by_filter": ["n", "Eq", 1]},
        {"delete_by_filter": ["nope", "Eq", 1]},
        {"patch_by_filter": {"filters": ["n", "Eq", 1], "patch": {"n": 2}}},
        {"patch_by_filter": {"filters": ["tag", "Glob", "a*"], "patch": {"tag": "b"}}},
    ],
    ids=["dbf", "dbf-missing-attr", "pbf", "pbf-glob"],
)
def test_filter_writes_on_missing_namespace(app, body):
    """Measured: ColumnNotFoundError 500. Now 404, or a no-op 200 that creates nothing."""
    name = fresh()
    r = app.check("POST", W(name), body, "any")
    if r.status_code == 200:
        assert r.json().get("rows_affected", 0) == 0, r.text
        assert app.store.list(name + "/") == [], "a no-op write on a missing namespace created it"
    else:
        assert r.status_code == 404, r.text
    assert app.send("GET", W(name) + "/metadata").status_code == 404


@pytest.mark.parametrize("ns", NSS)
def test_filter_writes_on_attribute_the_namespace_lacks(app, ns):
    for body in (
        {"delete_by_filter": ["nope", "Eq", 1]},
        {"patch_by_filter": {"filters": ["nope", "In", [1, 2]], "patch": {"n": 5}}},
        {"deletes": [1], "delete_condition": ["nope", "Eq", 1]},
    ):
        app.check("POST", W("fw" if ns == "wal" else "fi"), body, "any")


# wrong JSON types at every level of a query / write body
TYPE_SWAPS = [None, True, 0, -1, 2.5, "x", [], {}, [None], {"x": None}]

QUERY_BASES = [
    {
        "rank_by": ["vector", "ANN", [0.1, 0.2]],
        "top_k": 3,
        "filters": ["And", [["n", "Gt", 1], ["tag", "In", ["a"]]]],
        "include_attributes": ["tag", "n"],
        "consistency": {"level": "strong"},
    },
    {
        "rank_by": ["Sum", [["body", "BM25", "hello"], ["Product", 2, ["body", "BM25", "fox"]]]],
        "top_k": 4,
        "exclude_attributes": ["vector"],
    },
    {"aggregate_by": {"c": ["Count"], "s": ["Sum", "n"]}, "group_by": ["tag"], "filters": ["n", "Lt", 9]},
    {
        "queries": [{"rank_by": ["vector", "ANN", [0.1, 0.2]], "top_k": 2}, {"rank_by": ["body", "BM25", "fox"]}],
        "vector_encoding": "base64",
    },
]

WRITE_BASES = [
    {
        "upsert_rows": [
            {"id": 7, "vector": [0.5, 0.5], "tag": "b", "n": 3, "body": "quick fox", "ts": "2024-02-01T00:00:00Z"}
        ],
        "return_affected_ids": True,
    },
    {
        "upsert_columns": {"id": [8, 9], "vector": [[0.1, 0.9], [0.9, 0.1]], "tag": ["a", None]},
        "upsert_condition": ["n", "Lt", {"$ref_new": "n"}],
    },
    {"patch_rows": [{"id": 1, "n": 5}], "deletes": [2], "delete_condition": ["n", "Eq", 2]},
    {"patch_by_filter": {"filters": ["n", "Lt", -100], "patch": {"tag": "c"}}, "delete_by_filter": ["tag", "Eq", "zz"]},
    {"schema": {"extra": {"type": "string", "filterable": True}}, "distance_metric": "cosine_distance"},
]


def _get(v, path):
    for k in path:
        v = v[k]
    return v


def _set(body, path, new):
    if not path:
        return new
    body = copy.deepcopy(body)
    parent = _get(body, path[:-1])
    parent[path[-1]] = new
    return body


FAST_SWAPS = [None, 2.5, "x", {}]


def _swaps(base, swaps=TYPE_SWAPS):
    for path in _paths(base):
        old = _get(base, path)
        for new in swaps:
            if type(new) is not type(old):
                yield path, _set(base, path, new)


@pytest.mark.slow
@pytest.mark.parametrize("ns", NSS)
@pytest.mark.parametrize("bi", range(len(QUERY_BASES)))
def test_query_wrong_types_at_every_level(app, ns, bi):
    app.check("POST", Q(ns), QUERY_BASES[bi], "ok")
    for _path, body in _swaps(QUERY_BASES[bi]):
        app.check("POST", Q(ns), body, "any")


@pytest.mark.parametrize("ns", NSS)
def test_query_wrong_types_at_every_level_fast(app, ns):
    """The default-suite slice of the test above: every base valid, four wrong types at every level of two."""
    for base in QUERY_BASES:
        app.check("POST", Q(ns), base, "ok")
    for base in (QUERY_BASES[0], QUERY_BASES[3]):
        for _path, body in _swaps(base, FAST_SWAPS):
            app.check("POST", Q(ns), body, "any")


@pytest.mark.slow
@pytest.mark.parametrize("ns", ["fw", "fi"])
@pytest.mark.parametrize("bi", range(len(WRITE_BASES)))
def test_write_wrong_types_at_every_level(app, ns, bi):
    for _path, body in _swaps(WRITE_BASES[bi]):
        app.check("POST", W(ns), body, "any")


def test_write_wrong_types_at_every_level_fast(app):
    """The default-suite slice of the test above: four wrong types at every level of the first write base."""
    for ns in ("fw", "fi"):
        for _path, body in _swaps(WRITE_BASES[0], FAST_SWAPS):
            app.check("POST", W(ns), body, "any")


# bodies / headers
@pytest.mark.parametrize(
    "name,raw,headers,expect",
    [
        ("content-type-text", b'{"rank_by": ["n", "asc"]}', {"Content-Type": "text/plain"}, "any"),
        ("content-type-form", b"rank_by=n", {"Content-Type": "application/x-www-form-urlencoded"}, "4xx"),
        ("content-type-multipart", b"--x\r\n\r\n--x--", {"Content-Type": "multipart/form-data; boundary=x"}, "4xx"),
        ("json-then-garbage", b'{"rank_by": ["n", "asc"]} trailing', {}, 422),
        ("bom", b'\xef\xbb\xbf{"rank_by": ["n", "asc"]}', {}, "any"),
        ("lone-surrogate", b'{"rank_by": ["n", "asc"], "filters": ["tag", "Eq", "\\ud800"]}', {}, "any"),
        ("nul-in-key", b'{"rank_by": ["n", "asc"], "filters": ["ta\\u0000g", "Eq", "a"]}', {}, "any"),
        ("json-depth-2000", b'{"rank_by": ' + b"[" * 2000 + b"]" * 2000 + b"}", {}, "4xx"),
        ("gzip-garbage", b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, "4xx"),
        ("deflate-garbage", b"garbage", {"Content-Encoding": "deflate"}, "4xx"),
        ("encoding-unknown", b"{}", {"Content-Encoding": "zstd"}, "4xx"),
        ("empty", b"", {}, 422),
        ("whitespace", b"   \n\t ", {}, 422),
    ],
)
@pytest.mark.parametrize("ns", NSS)
def test_query_bodies_and_headers(app, ns, name, raw, headers, expect):
    app.check("POST", Q(ns), raw, expect, headers)


# ------------------------------------------------------------------ namespace names
# "." and ".." are left out: the client normalises them out of the URL
NAMES = [
    ".hidden",
    "..a",
    "...",
    "a..b",
    "_puffer-x",
    "_puffer",
    "-x",
    "_x",
    "x" * 128,
    "x" * 129,
    "名前",
    "a b",
    "a%00b",
    "a%2Fb",
    "%2E%2E",
    "a%0Ab",
    "CON",
    "a:b",
    "a*b",
    "a%5Cb",
    "%F0%9F%90%8D",
]


@pytest.mark.parametrize("name", NAMES)
def test_namespace_names_are_refused_or_fully_usable(app, name):
    """Issue 9 #6: a name is refused at creation (4xx, nothing written), or it is usable
    everywhere: written, queried, listed, deleted."""
    r = app.check("POST", W(name), {"upsert_rows": [{"id": 1, "n": 1}]}, "any")
    if r.status_code >= 400:
        assert app.send("GET", W(name) + "/metadata").status_code in (400, 404)
        return
    q = app.check("POST", Q(name), {"rank_by": ["id", "asc"]}, "ok")
    assert [row["id"] for row in q.json()["rows"]] == [1]
    real = urllib.parse.unquote(name)
    r = app.c.get("/v1/namespaces", params={"prefix": real, "page_size": 1000}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert real in {n["id"] for n in r.json()["namespaces"]}, f"namespace {real!r} was written but is not listed"
    assert real in _list_all(app.c, headers=AUTH), f"namespace {real!r} is missing from the full (paged) listing"
    assert app.send("DELETE", W(name)).status_code == 200
    assert app.send("GET", W(name) + "/metadata").status_code == 404


def _list_all(c, **kw) -> set[str]:
    names, cursor = set(), None
    for _ in range(1000):
        params = {"page_size": 100, **({"cursor": cursor} if cursor else {})}
        r = c.get("/v1/namespaces", params=params, **kw)
        assert r.status_code == 200, r.text
        names |= {n["id"] for n in r.json()["namespaces"]}
        cursor = r.json().get("next_cursor")
        if not cursor:
            return names
    raise AssertionError("listing did not end")


@pytest.mark.parametrize("name", [".hidden", "..a", "...", "_puffer-x"])
def test_namespace_names_on_a_local_store(child, name):
    """The same, on a local-directory store (through the child server): listed, or refused at creation."""
    if not child.alive():
        child.restart()
    r = child.http.post(W(name), json={"upsert_rows": [{"id": 1}]})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        return
    assert name in _list_all(child.http), f"namespace {name!r} was written but is not listed"
    assert child.http.delete(W(name)).status_code == 200


# ------------------------------------------------------------------ limits: at the limit accepted, one past refused
def _attrs(prefix, n):
    return {f"{prefix}{i}": i for i in range(n)}


def test_limit_attributes_per_write(app):
    # id + (MAX - 1) others = MAX names: accepted whether or not id counts
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": 1, **_attrs("a", L.MAX_ATTRIBUTES_PER_WRITE - 1)}]}, "ok")
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": 1, **_attrs("a", L.MAX_ATTRIBUTES_PER_WRITE + 1)}]}, "4xx")
    app.check(
        "POST",
        W(fresh()),
        {"upsert_columns": {"id": [1], **{f"c{i}": [i] for i in range(L.MAX_ATTRIBUTES_PER_WRITE + 1)}}},
        "4xx",
    )


def test_limit_attributes_per_namespace(app):
    name = fresh()
    half = (L.MAX_ATTRIBUTES_PER_NAMESPACE - 1) // 2
    rest = L.MAX_ATTRIBUTES_PER_NAMESPACE - 1 - half
    app.check("POST", W(name), {"upsert_rows": [{"id": 1, **_attrs("a", half)}]}, "ok")
    app.check("POST", W(name), {"upsert_rows": [{"id": 2, **_attrs("b", rest)}]}, "ok")  # id + MAX-1 = MAX
    app.check("POST", W(name), {"upsert_rows": [{"id": 3, "c0": 1, "c1": 2}]}, "4xx")  # MAX+1 without id
    app.check("POST", W(name), {"patch_rows": [{"id": 1, "c0": 1, "c1": 2}]}, "4xx")
    app.check("POST", W(name), {"schema": {"c0": "int", "c1": "int"}}, "4xx")
    app.check("POST", f"/v1/namespaces/{name}/schema", {"c0": "int", "c1": "int"}, "4xx")
    app.check("POST", W(name), {"upsert_rows": [{"id": 4, "a0": 5, "b0": 6}]}, "ok")  # known names still fine


def test_limit_attribute_name_bytes(app):
    n = L.MAX_ATTRIBUTE_NAME_BYTES
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": 1, "a" * n: 1}]}, "ok")
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": 1, "a" * (n + 1): 1}]}, "4xx")
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": 1, "é" * (n // 2) + "a": 1}]}, "4xx")  # bytes, not chars


def test_limit_id_bytes(app):
    n = L.MAX_ID_BYTES
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": "i" * n}]}, "ok")
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": "i" * (n + 1)}]}, "4xx")
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": 2**64 - 1}]}, "ok")  # the largest uint64


def test_limit_string_bytes(app):
    n = L.MAX_STRING_BYTES
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": 1, "s": "s" * n}]}, "ok")
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": 1, "s": "s" * (n + 1)}]}, "4xx")
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": 1, "s": ["s" * (n + 1)]}]}, "4xx")


def test_limit_array_items(app):
    n = L.MAX_ARRAY_ITEMS
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": 1, "arr": list(range(n))}]}, "ok")
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": 1, "arr": list(range(n + 1))}]}, "4xx")


def test_limit_vector_dims(app):
    n = L.MAX_VECTOR_DIMS
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": 1, "vector": [0.5] * n}]}, "ok")
    app.check("POST", W(fresh()), {"upsert_rows": [{"id": 1, "vector": [0.5] * (n + 1)}]}, "4xx")
    app.check("POST", W(fresh()), {"schema": {"vector": f"[{n + 1}]f32"}, "upsert_rows": [{"id": 1}]}, "4xx")


def test_limit_body_bytes(app):
    body = b'{"upsert_rows": [{"id": 1}]}'
    app.check("POST", W(fresh()), body + b" " * (BODY_LIMIT - len(body)), "ok")
    app.check("POST", W(fresh()), body + b" " * (BODY_LIMIT - len(body) + 1), 413)


@pytest.mark.parametrize("ns", NSS)
def test_limit_top_k_and_multi_queries(app, ns):
    app.check("POST", Q(ns), {"rank_by": ["n", "asc"], "top_k": L.MAX_TOP_K}, "ok")
    app.check("POST", Q(ns), {"rank_by": ["n", "asc"], "top_k": L.MAX_TOP_K + 1}, "4xx")
    app.check("POST", Q(ns), {"rank_by": ["vector", "ANN", [0.1, 0.2]], "top_k": L.MAX_TOP_K + 1}, "4xx")
    app.check("POST", Q(ns), {"rank_by": ["n", "asc"], "limit": {"total": L.MAX_TOP_K + 1}}, "4xx")
    m = L.MAX_MULTI_QUERIES
    app.check("POST", Q(ns), {"queries": [{"rank_by": ["n", "asc"], "top_k": 1}] * m}, "ok")
    app.check("POST", Q(ns), {"queries": [{"rank_by": ["n", "asc"], "top_k": 1}] * (m + 1)}, "4xx")


@pytest.mark.parametrize("ns", NSS)
def test_limit_filter_nodes(app, ns):
    n = L.MAX_FILTER_NODES  # leaves + And/Or/Not: one Or over n-1 leaves is n nodes
    app.check("POST", Q(ns), {"rank_by": ["id", "asc"], "filters": wide("Or", n - 1)}, "ok")
    app.check("POST", Q(ns), {"rank_by": ["id", "asc"], "filters": wide("Or", n)}, "4xx")
    app.check(
        "POST", Q(ns), {"rank_by": ["id", "asc"], "filters": ["And", [wide("Or", n // 2), wide("Or", n // 2)]]}, "4xx"
    )


@pytest.mark.parametrize("ns", NSS)
def test_limit_filter_depth(app, ns):
    d = L.MAX_FILTER_DEPTH
    # d-1 operators above a leaf is within the limit whether the leaf counts as a level or not; d+1 is past it
    for kind in ("Not", "And", "Or"):
        app.check("POST", Q(ns), {"rank_by": ["id", "asc"], "filters": nested(kind, d - 1)}, "ok")
        app.check("POST", Q(ns), {"rank_by": ["id", "asc"], "filters": nested(kind, d + 1)}, "4xx")
    app.check("POST", Q(ns), {"rank_by": nested("Sum", d - 1)}, "ok")
    app.check("POST", Q(ns), {"rank_by": nested("Sum", d + 1)}, "4xx")


@pytest.mark.parametrize("ns", NSS)
def test_limit_filter_list_items(app, ns):
    n = L.MAX_FILTER_LIST_ITEMS
    app.check("POST", Q(ns), {"rank_by": ["id", "asc"], "filters": ["n", "In", list(range(n))]}, "ok")
    app.check("POST", Q(ns), {"rank_by": ["id", "asc"], "filters": ["n", "In", list(range(n + 1))]}, "4xx")
    app.check("POST", Q(ns), {"rank_by": ["id", "asc"], "filters": ["n", "NotIn", list(range(n + 1))]}, "4xx")


@pytest.mark.parametrize("ns", NSS)
def test_limit_pattern_chars(app, ns):
    n = L.MAX_PATTERN_CHARS
    for op in ("Glob", "IGlob", "Regex"):
        app.check("POST", Q(ns), {"rank_by": ["id", "asc"], "filters": ["tag", op, "a" * n]}, "ok")
        app.check("POST", Q(ns), {"rank_by": ["id", "asc"], "filters": ["tag", op, "a" * (n + 1)]}, "4xx")


@pytest.mark.parametrize("ns", NSS)
def test_limit_query_text_chars(app, ns):
    n = L.MAX_QUERY_TEXT_CHARS
    app.check("POST", Q(ns), {"rank_by": ["body", "BM25", "a" * (n - 6) + " hello"]}, "ok")
    app.check("POST", Q(ns), {"rank_by": ["body", "BM25", "a" * (n - 5) + " hello"]}, "4xx")


def test_limit_ann_options(app):
    """At the bounds a write is accepted and the namespace still indexes; one past is refused."""
    (c0, c1), (a0, a1), (s0, s1) = L.ANN_CONNECTIVITY, L.ANN_EXPANSION_ADD, L.ANN_EXPANSION_SEARCH
    for ann in (
        {"connectivity": c0, "expansion_add": a0, "expansion_search": s0},
        {"connectivity": c1, "expansion_add": a1, "expansion_search": s1},
    ):
        name = fresh()
        app.check(
            "POST",
            W(name),
            {
                "schema": {"vector": {"type": "[2]f32", "ann": ann}},
                "upsert_rows": [{"id": i, "vector": [0.1 * i, 1.0]} for i in range(5)],
            },
            "ok",
        )
        ns = puffer_cli.connect(app.url).open_namespace(name)
        assert builder.index_namespace(ns, gc_grace_s=0).status == "indexed"
        r = app.check("POST", Q(name), {"rank_by": ["vector", "ANN", [0.2, 1.0]], "top_k": 2}, "ok")
        assert len(r.json()["rows"]) == 2
    for key, (lo, hi) in (
        ("connectivity", L.ANN_CONNECTIVITY),
        ("expansion_add", L.ANN_EXPANSION_ADD),
        ("expansion_search", L.ANN_EXPANSION_SEARCH),
    ):
        for bad in (lo - 1, hi + 1):
            app.check(
                "POST",
                W(fresh()),
                {
                    "schema": {"vector": {"type": "[2]f32", "ann": {key: bad}}},
                    "upsert_rows": [{"id": 1, "vector": [0.1, 1.0]}],
                },
                "4xx",
            )
            app.check("POST", "/v1/namespaces/fw/schema", {"vector": {"type": "[2]f32", "ann": {key: bad}}}, "4xx")


# ------------------------------------------------------------------ generated cases (hypothesis)
EXTREMES = [
    0,
    -1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
    1e308,
    -1e308,
    5e-324,
    3.5e38,
    math.nan,
    math.inf,
    -math.inf,
    1e20,
    2**62,
    "",
]

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(EXTREMES)
    | st.text(max_size=8)
    | st.sampled_from(
        [
            "vector",
            "body",
            "n",
            "tag",
            "ts",
            "id",
            "ANN",
            "kNN",
            "BM25",
            "Eq",
            "And",
            "Or",
            "Not",
            "In",
            "Regex",
            "Glob",
            "asc",
            "desc",
            "Sum",
            "Count",
            "eventual",
            "strong",
            "base64",
            "$ref_new",
            "2024-01-01T00:00:00Z",
        ]
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)

LONG = st.builds(
    lambda n, ch: ch * n,
    st.sampled_from([65, 129, L.MAX_PATTERN_CHARS + 1, L.MAX_QUERY_TEXT_CHARS + 1, 70_000]),
    st.sampled_from(["a", "é", "(", "*", " ", "\u0000", "\U0001f40d"]),
)

WRAPS = ["Not", "And", "Or", "Sum", "list", "obj"]


_WRAP_TEXT = {
    "Not": ('["Not",', "]"),
    "And": ('["And",[', "]]"),
    "Or": ('["Or",[', "]]"),
    "Sum": ('["Sum",[', "]]"),
    "list": ("[", "]"),
    "obj": ('{"a":', "}"),
}


def _wrap(kind, x, depth) -> Raw:
    """x nested `depth` levels deep, as flat JSON text (no Python recursion when copying or printing it)."""
    o, c = _WRAP_TEXT[kind]
    return Raw(o * depth + enc(x) + c * depth)


@st.composite
def mutate(draw, body):
    paths = list(_paths(body))
    path = draw(st.sampled_from(paths))
    op = draw(st.sampled_from(["drop", "replace", "swap", "extreme", "nest", "long", "dup", "dup-list"]))
    old = _get(body, path)
    if op == "drop":
        if not path:
            return {}
        body = copy.deepcopy(body)
        parent = _get(body, path[:-1])
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
        return body
    if op == "replace":
        return _set(body, path, draw(JSON))
    if op == "swap":
        return _set(body, path, draw(st.sampled_from([t for t in TYPE_SWAPS if type(t) is not type(old)])))
    if op == "extreme":
        return _set(body, path, draw(st.sampled_from(EXTREMES)))
    if op == "nest":
        depth = draw(st.sampled_from([1, 2, L.MAX_FILTER_DEPTH - 1, L.MAX_FILTER_DEPTH + 1, 100, 600]))
        return _set(body, path, _wrap(draw(st.sampled_from(WRAPS)), old, depth))
    if op == "long":
        return _set(body, path, draw(LONG))
    if op == "dup" and isinstance(old, dict) and old:
        k = draw(st.sampled_from(sorted(old, key=str)))
        return _set(body, path, Dup(list(old.items()) + [(k, draw(JSON))]))
    if op == "dup-list" and isinstance(old, list) and old:
        return _set(body, path, old + old * draw(st.sampled_from([1, 3, 20])))
    return _set(body, path, draw(JSON))


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(["query", "write"]))
    body = copy.deepcopy(draw(st.sampled_from(QUERY_BASES if kind == "query" else WRITE_BASES)))
    for _ in range(draw(st.integers(1, 3))):
        body = draw(mutate(body))
        if isinstance(body, Dup) or not isinstance(body, (dict, list)):
            break
    if kind == "query":
        return Q(draw(st.sampled_from(NSS))), body
    return W(draw(st.sampled_from(["fw", "fi"]))), body


GENERATED_FAST = 60
GENERATED_SLOW = 520  # issue 9: at least 500 generated HTTP cases in the slow suite
_hyp = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _run_case(app, case):
    path, body = case
    app.generated += 1
    app.check("POST", path, body, "any")


@settings(max_examples=GENERATED_FAST, **_hyp)
@given(case=cases())
def test_generated_http_cases_fast(app, case):
    _run_case(app, case)


@pytest.mark.slow
@settings(max_examples=GENERATED_SLOW, **_hyp)
@given(case=cases())
def test_generated_http_cases_slow(app, case):
    _run_case(app, case)


@pytest.mark.slow
def test_generated_case_count(app):
    """Runs after the slow generated test in file order: at least 500 generated HTTP requests were made."""
    assert app.generated >= GENERATED_SLOW, app.generated


# ------------------------------------------------------------------ the crashers, against a child process
HOSTILE_TIMEOUT = L.QUERY_BUDGET_S + 5  # refused or bounded: the default budget, plus slack


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-serve")
    store = str(root / "store")
    make_namespaces(puffer_cli.connect(store))
    s = ServeProc(store, root / "logs")
    yield s
    s.stop()


def _child_check(child, path, body, expect="4xx"):
    if not child.alive():
        child.restart()
    before = dir_state(child.store)
    child.new_stderr()
    raw = body if isinstance(body, bytes) else enc(body).encode()
    try:
        r = child.http.post(path, content=raw, headers={"Content-Type": "application/json"}, timeout=HOSTILE_TIMEOUT)
    except httpx.HTTPError as e:
        try:  # a crash shows up as a dropped connection first; give the exit status a moment
            code = child.proc.wait(3)
        except subprocess.TimeoutExpired:
            code = None
        child.restart()
        if code is not None:
            pytest.fail(f"the server died on {path} {len(raw)} bytes: exit code {code} (-11 = SIGSEGV); {e!r}")
        pytest.fail(f"no answer to {path} ({len(raw)} bytes) within {HOSTILE_TIMEOUT}s: {e!r}")
    alive = child.alive()
    err = child.new_stderr()
    if not alive:
        code = child.exit_code()
        child.restart()
        pytest.fail(f"the server died after {path}: exit code {code}")
    assert r.status_code < 500, f"{r.status_code}: {r.text[:500]}"
    if expect == "4xx":
        assert 400 <= r.status_code < 500, f"accepted ({r.status_code}): {r.text[:300]}"
    if r.status_code >= 400:
        e = r.json()
        assert set(e) == {"status", "error"} and e["status"] == "error" and isinstance(e["error"], str) and e["error"]
    assert "Traceback" not in err and " ERROR " not in err, err[-3000:]
    if r.status_code >= 400 or path.endswith("/query"):
        assert dir_state(child.store) == before, "a refused request changed the store"
    return r


REGEX_100K = "x?" * 50_000  # 100,000 characters
HOSTILE_QUERIES = [
    ("or-4000", {"rank_by": ["id", "asc"], "filters": wide("Or", 4000)}),
    ("and-4000", {"rank_by": ["id", "asc"], "filters": wide("And", 4000)}),
    ("or-2000", {"rank_by": ["id", "asc"], "filters": wide("Or", 2000)}),
    ("and-2000", {"rank_by": ["id", "asc"], "filters": wide("And", 2000)}),
    ("not-or-4000", {"rank_by": ["id", "asc"], "filters": ["Not", wide("Or", 4000)]}),
    ("ann-or-4000", {"rank_by": ["vector", "ANN", [0.1, 0.2]], "filters": wide("Or", 4000)}),
    ("agg-and-4000", {"aggregate_by": {"c": ["Count"]}, "filters": wide("And", 4000)}),
    ("regex-100k", {"rank_by": ["id", "asc"], "filters": ["tag", "Regex", REGEX_100K]}),
    ("regex-100k-plain", {"rank_by": ["id", "asc"], "filters": ["tag", "Regex", "a" * 100_000]}),
    ("glob-100k", {"rank_by": ["id", "asc"], "filters": ["tag", "Glob", "*a" * 50_000]}),
    ("not-500", {"rank_by": ["id", "asc"], "filters": nested("Not", 500)}),
    ("not-1000", {"rank_by": ["id", "asc"], "filters": nested("Not", 1000)}),
    ("and-500", {"rank_by": ["id", "asc"], "filters": nested("And", 500)}),
    ("and-1000", {"rank_by": ["id", "asc"], "filters": nested("And", 1000)}),
    ("or-1000", {"rank_by": ["id", "asc"], "filters": nested("Or", 1000)}),
    ("sum-500", {"rank_by": nested("Sum", 500)}),
    ("sum-1000", {"rank_by": nested("Sum", 1000)}),
    ("filter-value-1000", {"rank_by": ["id", "asc"], "filters": ["tag", "Eq", nested("list", 1000)]}),
]


@pytest.mark.slow
@pytest.mark.parametrize("ns", NSS)
def test_costly_legal_multi_query_is_answered_in_bounded_time(child, ns):
    """16 subqueries of 1,000 Eq clauses each: within every limit, so answered (Or-of-Eq compiles
    to one is_in) or stopped by the budget: never a crash, a 5xx or a hang."""
    body = {"queries": [{"rank_by": ["id", "asc"], "filters": wide("Or", 1000)}] * 16}
    _child_check(child, Q(ns), body, expect="any")


# in the default suite; the rest of both corpora run in the slow one
HOSTILE_FAST = {
    "or-4000",
    "and-4000",
    "regex-100k",
    "not-1000",
    "sum-500",
    "filter-value-1000",
    "attrs-10000",
    "value-list-1000",
    "dbf-or-4000",
}


def _params(cases):
    return [pytest.param(*c, id=c[0], marks=() if c[0] in HOSTILE_FAST else pytest.mark.slow) for c in cases]


@pytest.mark.parametrize("ns", NSS)
@pytest.mark.parametrize("name,body", _params(HOSTILE_QUERIES))
def test_hostile_query_corpus(child, ns, name, body):
    _child_check(child, Q(ns), body)


HOSTILE_WRITES = [
    ("attrs-10000", {"upsert_rows": [{"id": 1, **_attrs("h", 10_000)}]}),
    ("attrs-10000-columns", {"upsert_columns": {"id": [1], **{f"h{i}": [i] for i in range(10_000)}}}),
    ("value-list-500", {"upsert_rows": [{"id": 1, "deep": nested("list", 500)}]}),
    ("value-list-1000", {"upsert_rows": [{"id": 1, "deep": nested("list", 1000)}]}),
    ("value-obj-1000", {"upsert_rows": [{"id": 1, "deep": nested("obj", 1000)}]}),
    ("dbf-or-4000", {"delete_by_filter": wide("Or", 4000)}),
    ("pbf-and-4000", {"patch_by_filter": {"filters": wide("And", 4000), "patch": {"n": 1}}}),
    ("dbf-not-1000", {"delete_by_filter": nested("Not", 1000)}),
    ("dbf-regex-100k", {"delete_by_filter": ["tag", "Regex", REGEX_100K]}),
    ("condition-or-4000", {"upsert_rows": [{"id": 1, "n": 2}], "upsert_condition": wide("Or", 4000)}),
]


@pytest.mark.parametrize("ns", NSS)
@pytest.mark.parametrize("name,body", _params(HOSTILE_WRITES))
def test_hostile_write_corpus(child, ns, name, body):
    _child_check(child, W(ns), body)


@pytest.mark.parametrize(
    "body",
    [{"delete_by_filter": wide("Or", 4000)}, {"patch_by_filter": {"filters": nested("Not", 1000), "patch": {"n": 1}}}],
    ids=["dbf-or-4000", "pbf-not-1000"],
)
def test_hostile_filter_write_on_missing_namespace(child, body):
    r = _child_check(child, W(fresh()), body, expect="any")
    assert r.status_code in (200, 400, 404), r.text


# ------------------------------------------------------------------ a few through the official client, real socket
def _tp(child):
    return turbopuffer.Turbopuffer(base_url=child.url, api_key=KEY, max_retries=0, timeout=HOSTILE_TIMEOUT)


@pytest.fixture
def tp_child(child):
    """The child server, fresh if the last test left it dead or wedged (a timed-out request)."""
    if not child.alive() or getattr(child, "wedged", False):
        child.restart()
    child.wedged = False
    yield child
    if not child.alive():
        child.wedged = True


def _call(child, fn):
    try:
        return fn()
    except (turbopuffer.APITimeoutError, turbopuffer.APIConnectionError):
        child.wedged = True
        raise


def _refused(exc_info):
    _check_refusal(exc_info.value)


def _check_refusal(e):
    assert 400 <= e.status_code < 500, e
    assert isinstance(e.body, dict) and e.body.get("status") == "error" and e.body.get("error"), e.body


@pytest.mark.parametrize("ns", NSS)
def test_official_client_hostile_queries(tp_child, ns):
    child = tp_child
    t = _tp(child).namespace(ns)
    before = dir_state(child.store)
    with pytest.raises(turbopuffer.BadRequestError) as ei:
        _call(child, lambda: t.query(rank_by=("id", "asc"), top_k=5, filters=wide("Or", 4000)))
    _refused(ei)
    with pytest.raises(turbopuffer.BadRequestError) as ei:
        _call(child, lambda: t.query(rank_by=("id", "asc"), top_k=5, filters=("tag", "Regex", REGEX_100K)))
    _refused(ei)
    with pytest.raises(turbopuffer.APIStatusError) as ei:
        _call(child, lambda: t.query(rank_by=("n", "asc"), top_k=10**9))
    _refused(ei)
    with pytest.raises(turbopuffer.APIStatusError) as ei:
        _call(child, lambda: t.query(rank_by=("vector", "ANN", [0.1, 0.2, 0.3]), top_k=3))
    _refused(ei)
    assert t.query(rank_by=("id", "asc"), top_k=3).rows  # still answering
    assert child.alive() and dir_state(child.store) == before


@pytest.mark.parametrize("ns", NSS)
def test_official_client_hostile_writes(tp_child, ns):
    child = tp_child
    t = _tp(child).namespace(ns)
    before = dir_state(child.store)
    with pytest.raises(turbopuffer.APIStatusError) as ei:
        _call(child, lambda: t.write(upsert_rows=[{"id": 1, **_attrs("h", 10_000)}]))
    _refused(ei)
    with pytest.raises(turbopuffer.APIStatusError) as ei:
        _call(child, lambda: t.write(upsert_rows=[{"id": 1, "ts": 2**62}]))
    _refused(ei)
    with pytest.raises(turbopuffer.APIStatusError) as ei:
        _call(child, lambda: t.write(upsert_rows=[{"id": 1, "vector": [math.nan, 0.1]}]))
    _refused(ei)
    with pytest.raises(turbopuffer.APIStatusError) as ei:
        _call(
            child,
            lambda: t.write(
                upsert_rows=[{"id": 1, "vector": [0.1, 0.2]}],
                schema={"vector": {"type": "[2]f32", "ann": {"connectivity": 10**9}}},
            ),
        )
    _refused(ei)
    assert child.alive() and dir_state(child.store) == before


def test_official_client_filter_writes_on_missing_namespace(tp_child):
    child = tp_child
    t = _tp(child).namespace(fresh())
    before = dir_state(child.store)
    for kw in (
        {"delete_by_filter": ("n", "Eq", 1)},
        {"patch_by_filter": {"filters": ("n", "Eq", 1), "patch": {"n": 2}}},
    ):
        try:
            r = t.write(**kw)
        except turbopuffer.NotFoundError as e:
            _check_refusal(e)
        else:
            assert r.rows_affected == 0
    assert dir_state(child.store) == before
