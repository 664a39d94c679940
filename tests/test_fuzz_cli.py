"""Bad CLI invocations: each is one ``Error: ...`` line on stderr, exit 1 (2 for a
usage error), never a traceback, and the store is left exactly as it was.

A fixed corpus of the cases issue 9 measured (bad input files, corrupt meta.json and
manifests, bad ``-o`` paths, bad ``--at-seq``, bad options, store errors) plus
hypothesis-generated invocations (mutated arguments and option values, files of
random bytes, truncated and bit-flipped fixtures). The CLI runs in-process through
``cli.main`` (the real error boundary; stdout/stderr captured separately) and, for a
few cases, as a real ``python -m puffer_cli.cli.main`` subprocess.

The default suite runs the corpus and a small generated sample; ``-m slow`` runs
more than 150 generated cases.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from puffer_cli.cli import main as cli
from puffer_cli.cli import options

ROOT = Path(__file__).parent.parent
FIXTURES = ROOT / "fixtures"
SAMPLE_PQ = FIXTURES / "sample.parquet"
SAMPLE_CSV = FIXTURES / "sample.csv"
SAMPLE_ND = FIXTURES / "sample.ndjson"


# ------------------------------------------------------------------ running the CLI
def invoke(args: list[str], env: dict | None = None) -> tuple[int, str, str]:
    """Run ``cli.main(args)`` in-process; (exit code, stdout, stderr). Anything that
    escapes main is a failure of the boundary (the test sees its traceback)."""
    out_b, err_b = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_b, encoding="utf-8", errors="replace", write_through=True)
    err = io.TextIOWrapper(err_b, encoding="utf-8", errors="replace", write_through=True)
    old = sys.stdout, sys.stderr
    saved = {k: os.environ.get(k) for k in (env or {})}
    try:
        for k, v in (env or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.stdout, sys.stderr = out, err
        code = cli.main([str(a) for a in args])
    finally:
        sys.stdout, sys.stderr = old
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out.flush()
    err.flush()
    return code, out_b.getvalue().decode("utf-8", "replace"), err_b.getvalue().decode("utf-8", "replace")


def invoke_subprocess(args: list[str], env: dict | None = None, timeout: float = 120) -> tuple[int, str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    p = subprocess.run(
        [sys.executable, "-m", "puffer_cli.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return p.returncode, p.stdout, p.stderr


def assert_one_error(
    code: int, out: str, err: str, *, expect_code: int | tuple = (1, 2), needle: str | None = None, typed: bool = True
) -> str:
    """The contract: exit 1/2, stderr is exactly one ``Error:`` line, no traceback anywhere.
    ``typed``: the line is not the last-resort ``internal error`` one."""
    codes = expect_code if isinstance(expect_code, tuple) else (expect_code,)
    lines = err.strip().splitlines()
    assert code in codes, (code, err, out[:500])
    assert "Traceback" not in out and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    if typed:
        assert not lines[0].startswith("Error: internal error"), lines[0]
    if needle is not None:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


IGNORED = (".lock",)


def snapshot(store: Path) -> dict[str, bytes]:
    """Every key and its bytes (lock files and the indexer lease are coordination, not data)."""
    if not store.exists():
        return {}
    out = {}
    for p in sorted(store.rglob("*")):
        if p.is_file() and not p.name.endswith(IGNORED) and "leases" not in p.parts:
            out[str(p.relative_to(store))] = p.read_bytes()
    return out


# ------------------------------------------------------------------ fixtures
def _bad_files(d: Path) -> None:
    pq = SAMPLE_PQ.read_bytes()
    nd = SAMPLE_ND.read_bytes()
    files = {
        "empty.parquet": b"",
        "trunc.parquet": pq[: len(pq) // 2],
        "tail.parquet": pq[len(pq) // 2 :],
        "footer-only.parquet": b"PAR1" + b"\0" * 64 + b"PAR1",
        "corrupt.parquet": b"PAR1" + b"\x00garbage" * 100 + b"PAR1",
        "random.parquet": bytes(range(256)) * 4,
        "empty.csv": b"",
        "blank.csv": b"\n\n\n",
        "broken.csv": b'id,title\n1,"unterminated\n2,x,y,z\n',
        "badutf.csv": b"id,title\n1,\xff\xfe\n",
        "noid.csv": b"a,b\n1,2\n",
        "badid.csv": b"id,title\nabc,x\n",
        "empty.ndjson": b"",
        "spaces.ndjson": b"   \n  \n",
        "broken.ndjson": b'{"id":1}\n{"id":2,\n',
        "badutf.ndjson": b'{"id":1,"t":"\xff"}\n',
        "array.ndjson": b"[1,2,3]\n",
        "scalar.ndjson": b"42\n",
        "trunc.ndjson": nd[: len(nd) // 2],
        "pq.csv": pq,
        "pq.ndjson": pq,
        "csv.parquet": SAMPLE_CSV.read_bytes(),
        "nul.csv": b"\0" * 100,
        "data.txt": b"id\n1\n",
    }
    # ids that are no id, in every input format (issue 23: one such row poisoned the store)
    files.update(
        {
            "id-null.ndjson": b'{"id":1}\n{"id":null}\n',
            "id-missing.ndjson": b'{"id":1}\n{"n":2}\n',
            "id-bool.ndjson": b'{"id":true}\n',
            "id-float.ndjson": b'{"id":2.5}\n',
            "id-list.ndjson": b'{"id":[1]}\n',
            "id-object.ndjson": b'{"id":{"a":1}}\n',
            "id-empty.csv": b"id,t\n1,a\n,b\n",
            "id-float.csv": b"id,t\n1.5,a\n",
        }
    )
    for name, data in files.items():
        (d / name).write_bytes(data)
    import numpy as np
    import polars as pl

    for name, col in {
        "id-null": [1, None],
        "id-null-str": ["a", None],
        "id-float": [1.5, 2.0],
        "id-bool": [True, False],
        "id-list": [[1], [2]],
        "id-struct": [{"a": 1}, {"a": 2}],
    }.items():
        pl.DataFrame({"id": col, "n": [1, 2]}).write_parquet(d / f"{name}.parquet")

    np.save(d / "strings.npy", np.array(["a", "b"]))
    np.save(d / "matrix.npy", np.ones((2, 16), dtype=np.float32))
    np.save(d / "trunc.npy", np.ones(16, dtype=np.float32))
    (d / "trunc.npy").write_bytes((d / "trunc.npy").read_bytes()[:100])
    (d / "adir.parquet").mkdir()


def _ingest(store: Path, name: str, path: Path) -> None:
    code, _, err = invoke(["ingest", name, path, "--store", store])
    assert code == 0, err


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A store with namespace ``ns`` (sample.parquet, indexed) and corrupt copies of it."""
    base = tmp_path_factory.mktemp("fuzzcli")
    good = base / "good"
    _ingest(good, "ns", SAMPLE_PQ)
    code, out, err = invoke(["index", "ns", "--store", good, "--cache-dir", base / "cache"])
    assert code == 0, out + err
    man = next((good / "ns" / "index").rglob("manifest-*.json"))
    attrs = next((good / "ns" / "index").rglob("docs.cols"))
    vec = next((good / "ns" / "index").rglob("vec-*.f32"))
    variants = {
        "badattrs": (str(attrs.relative_to(good)), b"garbage"),
        "badvec": (str(vec.relative_to(good)), vec.read_bytes()[:100]),
        "badmeta": ("ns/meta.json", b'{"created_at": 17'),
        "arraymeta": ("ns/meta.json", b"[1, 2]"),
        "nullmeta": ("ns/meta.json", b"null"),
        "binmeta": ("ns/meta.json", b"\xff\xfe\x00garbage"),
        "badptr": ("ns/meta.json", None),  # index pointer of the wrong shape
        "badman": (str(man.relative_to(good)), b"garbage{"),
        "shapeman": (str(man.relative_to(good)), b'{"x": 1}'),
        "segman": (str(man.relative_to(good)), None),  # a segment without its keys
    }
    for v, (key, data) in variants.items():
        shutil.copytree(good, base / v)
        p = base / v / key
        if v == "badptr":
            m = json.loads(p.read_bytes())
            m["index"]["manifest"] = 5
            data = json.dumps(m).encode()
        elif v == "segman":
            m = json.loads(p.read_bytes())
            m["segments"] = [{"name": "x"}]
            data = json.dumps(m).encode()
        p.write_bytes(data)
    files = base / "files"
    files.mkdir()
    _bad_files(files)
    (base / "out").mkdir()
    (base / "empty").mkdir()
    return base


def _fill(args: list[str], base: Path) -> list[str]:
    return [a.format(b=base, f=base / "files", fx=FIXTURES) for a in args]


# ------------------------------------------------------------------ the fixed corpus
# (args with {b} the base dir, {f} the bad files, {fx} fixtures/; store; exit code; needle)
INGEST_FILES = [
    ("empty.parquet", "empty"),
    ("trunc.parquet", "trunc.parquet"),
    ("tail.parquet", "parquet"),
    ("footer-only.parquet", "parquet"),
    ("corrupt.parquet", "corrupt.parquet"),
    ("random.parquet", "parquet"),
    ("empty.csv", "empty"),
    ("blank.csv", "blank.csv"),
    ("broken.csv", "broken.csv"),
    ("badutf.csv", "badutf.csv"),
    ("noid.csv", "no id column"),
    ("badid.csv", "badid.csv"),
    ("empty.ndjson", "empty"),
    ("spaces.ndjson", "spaces.ndjson"),
    ("broken.ndjson", "broken.ndjson"),
    ("badutf.ndjson", "badutf.ndjson"),
    ("array.ndjson", "array.ndjson"),
    ("scalar.ndjson", "scalar.ndjson"),
    ("trunc.ndjson", "trunc.ndjson"),
    ("pq.csv", "--format parquet"),
    ("pq.ndjson", "--format parquet"),
    ("csv.parquet", "--format csv"),
    ("nul.csv", "not a text file"),
    ("data.txt", "--format"),
    ("adir.parquet", "directory"),
    ("missing.parquet", "does not exist"),
]
CORPUS: list[tuple[list[str], str, int, str | None]] = []
for fname, needle in INGEST_FILES:
    CORPUS.append((["ingest", "ns", "{f}/" + fname], "good", 1, needle))
    if fname != "badid.csv":  # string ids are fine in a new namespace; "ns" has uint ids
        CORPUS.append((["ingest", "fresh", "{f}/" + fname], "good", 1, needle))
CORPUS += [
    # --format mismatches on good files
    (["ingest", "ns", "{fx}/sample.parquet", "--format", "csv"], "good", 1, "--format parquet"),
    (["ingest", "ns", "{fx}/sample.parquet", "--format", "ndjson"], "good", 1, "--format parquet"),
    (["ingest", "ns", "{fx}/sample.csv", "--format", "parquet"], "good", 1, "--format csv"),
    (["ingest", "ns", "{fx}/sample.ndjson", "--format", "parquet"], "good", 1, "--format ndjson"),
    (["ingest", "ns", "{fx}/sample.ndjson", "--format", "csv"], "good", 1, "sample.ndjson"),
    (["ingest", "ns", "{fx}/sample.csv", "--format", "ndjson"], "good", 1, "sample.csv"),
    (["ingest", "ns", "{fx}/sample.csv", "--format", "xml"], "good", 1, "format"),
    # a good file after a bad one: nothing is committed (every input is opened first)
    (["ingest", "ns", "{fx}/sample.csv", "{f}/trunc.parquet"], "good", 1, "trunc.parquet"),
    (["ingest", "ns", "{fx}/sample.csv", "--batch-rows", "0"], "good", 1, "batch-rows"),
    (["ingest", "ns", "{fx}/sample.csv", "--batch-rows", "many"], "good", 2, "batch-rows"),
    (["ingest", "ns", "{fx}/sample.csv", "--id", "nope"], "good", 1, "no id column"),
    (["ingest", "ns", "{fx}/sample.parquet", "--vector", "title"], "good", 1, None),
    (["ingest", "ns", "{fx}/sample.csv", "--schema", "{{bad"], "good", 1, "not valid JSON"),
    (["ingest", "ns", "{fx}/sample.csv", "--schema", "@{f}/adir.parquet"], "good", 1, "cannot read"),
    (["ingest", "ns", "{fx}/sample.csv", "--schema", '{{"title": "int"}}'], "good", 1, None),
    (["ingest", "ns", "{fx}/sample.csv", "--distance-metric", "dot"], "good", 1, "distance_metric"),
    (["ingest", "bad/name", "{fx}/sample.csv"], "good", 1, "namespace"),
    (["ingest", "ns"], "good", 2, "Missing argument"),
    # corrupt meta.json / manifests, every reader
    *[
        ([cmd, "ns", *extra], v, 1, "meta.json")
        for v in ("badmeta", "arraymeta", "nullmeta", "binmeta", "badptr")
        for cmd, extra in (
            ("query", []),
            ("export", []),
            ("warm", ["--cache-dir", "{b}/c-" + v]),
            ("recall", ["--cache-dir", "{b}/c-" + v]),
            ("index", ["--cache-dir", "{b}/c-" + v]),
        )
    ],
    (["ingest", "ns", "{fx}/sample.csv"], "badmeta", 1, "meta.json"),
    *[
        ([cmd, "ns", *extra], v, 1, "manifest")
        for v in ("badman", "shapeman", "segman")
        for cmd, extra in (
            ("query", ["--top-k", "3"]),
            ("warm", ["--cache-dir", "{b}/c-" + v]),
            ("recall", ["--cache-dir", "{b}/c-" + v]),
            ("index", ["--cache-dir", "{b}/c-" + v]),
        )
    ],
    # damaged index files
    (["query", "ns", "--top-k", "2"], "badattrs", 1, "docs.cols"),
    (["warm", "ns", "--cache-dir", "{b}/c-badattrs"], "badattrs", 1, "docs.cols"),
    (["query", "ns", "--vector", json.dumps([0.1] * 16), "--exact"], "badvec", 1, ".f32"),
    (["query", "ns", "--vector", json.dumps([0.1] * 16)], "badvec", 1, ".f32"),
    # export: -o, --at-seq, --format
    (["export", "ns", "-o", "{b}/out"], "good", 1, "directory"),
    (["export", "ns", "-o", "{b}/missing/dir/x.parquet"], "good", 1, "does not exist"),
    (["export", "ns", "-o", "{f}/empty.csv/x.csv"], "good", 1, "not a directory"),
    (["export", "ns", "-o", "/proc/puffer-x.ndjson"], "good", 1, "cannot write"),
    (["export", "ns", "--at-seq", "0"], "good", 1, "not committed"),
    (["export", "ns", "--at-seq", "-1"], "good", 1, "not committed"),
    (["export", "ns", "--at-seq", "99"], "good", 1, "not committed"),
    (["export", "ns", "--at-seq", "x"], "good", 2, "at-seq"),
    (["export", "ns", "--format", "xml"], "good", 1, "format"),
    (["export", "nope"], "good", 1, "not found"),
    (["export", ".."], "good", 1, "namespace"),
    # query
    (["query", "ns", "--filter", "["], "good", 1, "not valid JSON"),
    (["query", "ns", "--filter", '["price", "Eq", "x"]'], "good", 1, None),
    (["query", "ns", "--filter", "@{b}/missing.json"], "good", 1, "does not exist"),
    (["query", "ns", "--top-k", "0"], "good", 1, "top_k"),
    (["query", "ns", "--top-k", "many"], "good", 2, "top-k"),
    (["query", "ns", "--format", "xml"], "good", 1, "format"),
    (["query", "ns", "--consistency", "weak"], "good", 1, "consistency"),
    (["query", "ns", "--vector", "[1, 2]"], "good", 1, "dimensions"),
    (["query", "ns", "--vector", "@{f}/trunc.parquet.npy"], "good", 1, "does not exist"),
    (["query", "ns", "--vector", "@{f}/random.parquet"], "good", 1, "--vector"),
    (["query", "ns", "--vector", "@{f}/strings.npy"], "good", 1, "numbers"),
    (["query", "ns", "--vector", "@{f}/trunc.npy"], "good", 1, ".npy"),
    (["query", "ns", "--vector", "@{f}/matrix.npy"], "good", 1, "shape"),
    (
        [
            "query",
            "ns",
            "--rank-by",
            "[",
        ],
        "good",
        1,
        "rank-by",
    ),
    (["query", "ns", "--body", "[]"], "good", 1, "body"),
    (["query", "ns", "--bm25", "title"], "good", 2, None),
    (["query", "ns", "--bm25", "nofield", "x"], "good", 1, "nofield"),
    (["query", "ns", "--budget", "0"], "good", 1, "budget"),
    (["query", "ns", "--budget", "-1"], "good", 1, "budget"),
    (["query", "ns", "--budget", "nan"], "good", 1, "budget"),
    (["query", "nope"], "good", 1, "not found"),
    (["query"], "good", 2, "Missing argument"),
    # wal-inspect, warm, recall, index
    (["wal-inspect", "ns", "--show", "99"], "good", 1, "99"),
    (["wal-inspect", "ns", "--show", "-1"], "good", 1, "-1"),
    (["wal-inspect", "nope"], "good", 1, "no WAL"),
    (["warm", "nope", "--cache-dir", "{b}/c-w"], "good", 1, "not found"),
    (["recall", "ns", "--num", "0", "--cache-dir", "{b}/c-r"], "good", 1, "num"),
    (["recall", "ns", "--field", "nope", "--cache-dir", "{b}/c-r"], "good", 1, "nope"),
    (["recall", "ns", "--filter", "[", "--cache-dir", "{b}/c-r"], "good", 1, "filter"),
    (["index"], "good", 1, "namespace"),
    (["index", "ns", "--max-seconds", "-1"], "good", 1, "max-seconds"),
    (["index", "ns", "--max-seconds", "nan"], "good", 1, "max-seconds"),
    (["index", "--all"], "empty", 1, "no namespaces"),
    # serve: options refused before anything starts
    (["serve", "--listen", "127.0.0.1:notaport"], "good", 1, "port"),
    (["serve", "--listen", "127.0.0.1:99999"], "good", 1, "port"),
    (["serve", "--log-level", "loud"], "good", 1, "log-level"),
    (["serve", "--index-interval", "-1"], "good", 1, "index-interval"),
    (["serve", "--workers", "0"], "good", 2, "workers"),
    # the command line itself
    (["nosuch"], "good", 2, "No such command"),
    (["--bogus"], "good", 2, "No such option"),
    (["query", "ns", "--bogus"], "good", 2, "No such option"),
]


def _params(corpus):
    """Every third case in the default suite, all of them with -m slow."""
    return [
        pytest.param(*c, id=f"{i}-{'-'.join(a for a in c[0][:3])}"[:60], marks=() if i % 3 == 0 else pytest.mark.slow)
        for i, c in enumerate(corpus)
    ]


@pytest.mark.parametrize("args,store,code,needle", _params(CORPUS))
def test_corpus(env, args, store, code, needle):
    st_dir = env / store
    before = snapshot(st_dir)
    argv = _fill(args, env)
    if args[0] != "--bogus" and args[0] != "nosuch":
        argv += ["--store", str(st_dir)]
    got, out, err = invoke(argv)
    assert_one_error(got, out, err, expect_code=code, needle=needle and _fill([needle], env)[0])
    assert snapshot(st_dir) == before, "a refused invocation changed the store"


#: inputs whose ids are no id (null, missing, bool, float, list, object) in every format ingest reads
ID_FILES = [
    "id-null.ndjson",
    "id-missing.ndjson",
    "id-bool.ndjson",
    "id-float.ndjson",
    "id-list.ndjson",
    "id-object.ndjson",
    "id-empty.csv",
    "id-float.csv",
    "id-null.parquet",
    "id-null-str.parquet",
    "id-float.parquet",
    "id-bool.parquet",
    "id-list.parquet",
    "id-struct.parquet",
]


@pytest.mark.parametrize("fname", ID_FILES)
def test_ingest_refuses_ids_that_are_no_id(env, fname):
    """Into the existing namespace and a new one: one typed error naming the file and the id
    field, nothing committed; `namespaces` of the store still works."""
    st_dir = env / "good"
    before = snapshot(st_dir)
    for name in ("ns", "fresh"):
        got, out, err = invoke(["ingest", name, env / "files" / fname, "--store", st_dir])
        line = assert_one_error(got, out, err, expect_code=1, needle=fname)
        assert "'id'" in line and "nothing was committed" in line, line
    assert snapshot(st_dir) == before, "a refused ingest changed the store"
    code, out, err = invoke(["namespaces", "--store", st_dir, "--json"])
    assert code == 0 and [n["namespace"] for n in json.loads(out)["namespaces"]] == ["ns"], err


def test_corpus_is_large():
    assert len(CORPUS) >= 100


# ------------------------------------------------------------------ behaviour beyond the corpus
def test_partial_ingest_says_what_was_committed(tmp_path):
    """A file that breaks part-way: the error says how many rows were committed (one WAL entry
    per chunk; 0 included) and, when some were, that re-running is safe. How many chunks come
    before the error is not fixed: polars' streaming reader parses morsels in parallel, so the
    bad last row can surface before any chunk is handed over (about 1 run in 20) or after some."""
    lines = ["id,n"] + [f"{i},{i}" for i in range(1, 30_001)] + ["30001,notanint"]
    p = tmp_path / "partial.csv"
    p.write_text("\n".join(lines) + "\n")
    store = tmp_path / "store"
    code, out, err = invoke(["ingest", "p", p, "--batch-rows", "5000", "--store", store])
    assert code == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "partial.csv" in last
    if "; no rows were committed" in last:
        committed = 0
    else:
        assert "already committed" in last and "re-running after fixing the input is safe" in last
        committed = int(last.split(" rows before")[0].split("; ")[-1].replace(",", ""))
    assert 0 <= committed < 30_000 and committed % 5000 == 0
    code, out, err = invoke(["export", "p", "--store", store])
    if committed:
        assert code == 0 and len(out.splitlines()) == committed
    else:  # nothing committed: the namespace was never created
        assert code == 1 and "not found" in err.lower(), err


def test_error_before_any_chunk_says_nothing_was_committed(tmp_path):
    """The other end of the above, made certain: the bad value (past schema inference's 10,000
    rows, so `n` is an integer column) is in the first and only chunk."""
    p = tmp_path / "bad.csv"
    p.write_text("\n".join(["id,n"] + [f"{i},{i}" for i in range(1, 12_001)] + ["12001,notanint"]) + "\n")
    store = tmp_path / "store"
    code, _out, err = invoke(["ingest", "p", p, "--batch-rows", "50000", "--store", store])
    assert code == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "bad.csv" in last and "; no rows were committed" in last
    code, _out, err = invoke(["export", "p", "--store", store])
    assert code == 1 and "not found" in err.lower(), err


def test_last_resort_handler_is_one_line(tmp_path, monkeypatch):
    from puffer_cli.search import engine

    def boom(*a, **k):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(engine, "run", boom)
    store = tmp_path / "s"
    _ingest(store, "ns", SAMPLE_CSV)
    code, out, err = invoke(["query", "ns", "--store", store])
    line = assert_one_error(code, out, err, expect_code=1, typed=False)
    assert line == (
        "Error: internal error: ZeroDivisionError: division by zero second line "
        "(run with --debug for the traceback; please report)"
    )
    with pytest.raises(ZeroDivisionError):  # --debug anywhere on the line re-raises
        invoke(["query", "ns", "--store", store, "--debug"])
    with pytest.raises(ZeroDivisionError):
        invoke(["--debug", "query", "ns", "--store", store])
    with pytest.raises(ZeroDivisionError):
        invoke(["query", "ns", "--store", store], env={"PUFFER_DEBUG": "1"})
    code, out, err = invoke(["query", "ns", "--store", store], env={"PUFFER_DEBUG": "0"})
    assert code == 1 and "internal error" in err


def test_debug_subprocess_shows_traceback(tmp_path):
    bad = tmp_path / "ns"
    bad.mkdir(parents=True)
    (bad / "meta.json").write_text("{broken")
    code, out, err = invoke_subprocess(["--debug", "query", "ns", "--store", tmp_path])
    assert code == 1 and "Traceback" in err and "CorruptNamespace" in err


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,needle",
    [
        (["query", "ns", "--store", "{b}/badmeta"], "meta.json"),
        *[
            (a, n)
            for a, n in [
                (["ingest", "ns", "{f}/trunc.parquet"], "trunc.parquet"),
                (["ingest", "ns", "{f}/tail.parquet"], "tail.parquet"),  # a polars panic: its backtrace is not shown
                (["ingest", "ns", "{f}/badutf.csv"], "badutf.csv"),
                (["export", "ns", "-o", "{b}/out"], "directory"),
                (["nosuch"], "No such command"),
            ]
        ],
    ],
)
def test_subprocess_one_line(env, args, needle):
    argv = _fill(args, env)
    if "--store" not in argv and argv[0] != "nosuch":
        argv += ["--store", str(env / "good")]
    code, out, err = invoke_subprocess(argv)
    assert_one_error(code, out, err, needle=needle)


def head_id_dtype(db):
    docs, _ = db.open_namespace("n").docs()
    return docs.schema["id"]


def test_json_output_is_valid_json(tmp_path):
    """NaN / inf values come out as null, never as bare NaN (json, ndjson, export, wal-inspect)."""
    p = tmp_path / "nan.csv"
    p.write_text("id,price\n1,NaN\n2,inf\n3,1.5\n4,-inf\n")
    store = tmp_path / "s"
    code, _, err = invoke(["ingest", "n", p, "--store", store])  # writes refuse non-finite floats...
    assert code == 1 and "not a finite number" in err
    # ... so such values can only be in data written before that rule: commit one entry by hand
    import polars as pl
    from puffer_cli import connect
    from puffer_cli.store import layout
    from puffer_cli.wal import codec as wal

    p.write_text("id,price\n1,0.0\n")
    _ingest(store, "n", p)
    db = connect(str(store))
    head = db.open_namespace("n").head()
    frame = pl.DataFrame(
        {
            "id": pl.Series([1, 2, 3, 4], dtype=head_id_dtype(db)),
            "price": [float("nan"), float("inf"), 1.5, -float("inf")],
        }
    )
    assert db.store.create(
        layout.wal("n", head.seq + 1), wal.encode(head.seq + 1, [wal.Op("upsert", frame)], created_at=1, writer="test")
    )

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON output"))

    code, out, err = invoke(["query", "n", "--include-all", "--format", "json", "--store", store])
    assert code == 0, err
    assert [r["price"] for r in strict(out)["rows"]] == [None, None, 1.5, None]
    code, out, _ = invoke(["query", "n", "--include-all", "--format", "ndjson", "--store", store])
    assert [strict(x)["price"] for x in out.splitlines()] == [None, None, 1.5, None]
    code, out, _ = invoke(["export", "n", "--format", "ndjson", "--store", store])
    assert [strict(x)["price"] for x in out.splitlines()] == [None, None, 1.5, None]
    code, out, _ = invoke(["wal-inspect", "n", "--show", "1", "--json", "--store", store])
    strict(out)
    code, out, _ = invoke(["wal-inspect", "n", "--json", "--store", store])
    strict(out)
    assert (
        options.to_json({"a": float("nan"), "b": [float("inf"), 1.0], "c": {"d": -float("inf")}})
        == '{"a": null, "b": [null, 1.0], "c": {"d": null}}'
    )


def test_query_budget_reaches_the_engine(tmp_path, monkeypatch):
    """--budget opens limits.deadline around engine.run; BudgetExceeded is one line, exit 1."""
    import time

    from puffer_cli import limits
    from puffer_cli.search import engine

    seen = []

    def slow(*a, **k):
        seen.append(limits.remaining())
        time.sleep(0.05)
        limits.check_deadline()
        return {"rows": []}

    monkeypatch.setattr(engine, "run", slow)
    store = tmp_path / "s"
    _ingest(store, "ns", SAMPLE_CSV)
    code, out, err = invoke(["query", "ns", "--store", store, "--budget", "0.01"])
    assert_one_error(code, out, err, expect_code=1, needle="time budget")
    code, out, err = invoke(["query", "ns", "--store", store, "--format", "json"])  # default: no budget
    assert code == 0, err
    assert seen[0] is not None and seen[0] <= 0.01 and seen[1] is None


def test_query_budget_exceeded_is_one_line(tmp_path):
    """A budget that has run out before the query starts: BudgetExceeded, one line.
    (Needs the engine to check the budget: the query helper's change.)"""
    store = tmp_path / "s"
    _ingest(store, "ns", SAMPLE_PQ)
    code, out, err = invoke(["query", "ns", "--store", store, "--budget", "1e-9", "--top-k", "5"])
    assert_one_error(code, out, err, expect_code=1, needle="budget")


# ------------------------------------------------------------------ serve and the store (other helpers' errors)
def test_serve_glue(tmp_path, monkeypatch):
    """--query-budget reaches ServeConfig.query_budget_s (0: none); a PufferError from
    server.serve (port in use, bad host) is one line, exit 1."""
    from puffer_cli import limits
    from puffer_cli.errors import InvalidRequest
    from puffer_cli.server import app as server
    from puffer_cli.server import run as server_run

    got = []
    monkeypatch.setattr(server, "ServeConfig", lambda **kw: kw)
    monkeypatch.setattr(server_run, "serve", lambda cfg, listen, **kw: got.append(cfg))
    for args, want in ([], limits.QUERY_BUDGET_S), (["--query-budget", "3"], 3.0), (["--query-budget", "0"], None):
        code, out, err = invoke(["serve", *args, "--store", tmp_path / "s"])
        assert code == 0, err
        assert got[-1]["query_budget_s"] == want
    code, out, err = invoke(["serve", "--query-budget", "-1", "--store", tmp_path / "s"])
    assert_one_error(code, out, err, expect_code=2, needle="query-budget")

    def refuse(cfg, listen, **kw):
        raise InvalidRequest(f"cannot listen on {listen}: address already in use", hint="pick another --listen port")

    monkeypatch.setattr(server_run, "serve", refuse)
    code, out, err = invoke(["serve", "--listen", "127.0.0.1:9", "--store", tmp_path / "s"])
    assert_one_error(code, out, err, expect_code=1, needle="127.0.0.1:9")


def test_serve_port_in_use_is_one_line(tmp_path):
    """server.serve raises a PufferError for a port in use (the server helper's change)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        code, out, err = invoke_subprocess(
            ["serve", "--listen", f"127.0.0.1:{port}", "--store", tmp_path / "s"], timeout=60
        )
    finally:
        s.close()
    assert_one_error(code, out, err, expect_code=1, needle=str(port))


@pytest.mark.slow
def test_serve_unresolvable_host_is_one_line(tmp_path):
    code, out, err = invoke_subprocess(
        ["serve", "--listen", "no-such-host.invalid:8080", "--store", tmp_path / "s"], timeout=90
    )
    assert_one_error(code, out, err, expect_code=1, needle="no-such-host.invalid")


NO_CREDS = {
    "AWS_ACCESS_KEY_ID": None,
    "AWS_SECRET_ACCESS_KEY": None,
    "AWS_SESSION_TOKEN": None,
    "AWS_PROFILE": None,
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/puffer-creds",
    "AWS_CONFIG_FILE": "/nonexistent/puffer-config",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def test_store_file_as_store(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    code, out, err = invoke(["query", "ns", "--store", f])
    assert_one_error(code, out, err, expect_code=1)
    code, out, err = invoke(["ingest", "ns", SAMPLE_CSV, "--store", f])
    assert_one_error(code, out, err, expect_code=1)
    assert f.read_text() == "x"


@pytest.mark.parametrize(
    "args,extra_env,needle",
    [
        (["query", "ns", "--store", "s3:///prefix", "--s3-endpoint", "{s3}"], {}, "bucket"),
        (["query", "ns", "--store", "s3://puffer-test/p", "--s3-endpoint", "not a url"], {}, "not a url"),
        (["query", "ns", "--store", "s3://puffer-test/p", "--s3-endpoint", "{s3}"], NO_CREDS, "credentials"),
        (
            ["ingest", "ns", "{fx}/sample.csv", "--store", "s3://puffer-test/p", "--s3-endpoint", "{s3}"],
            NO_CREDS,
            "credentials",
        ),
        (
            ["query", "ns", "--store", "s3://no-such-bucket-puffer/p", "--s3-endpoint", "{s3}"],
            {},
            "no-such-bucket-puffer",
        ),
        (
            ["export", "ns", "--store", "s3://no-such-bucket-puffer/p", "--s3-endpoint", "{s3}"],
            {},
            "no-such-bucket-puffer",
        ),
    ],
)
def test_store_errors_are_typed(s3_server, args, extra_env, needle):
    """The store helper turns these into StoreError / InvalidRequest inside store.py; the
    CLI prints them as one line (not the last-resort 'internal error')."""
    argv = [a.format(s3=s3_server, fx=FIXTURES) for a in args]
    code, out, err = invoke(argv, env=extra_env)
    assert_one_error(code, out, err, expect_code=1, needle=needle)


@pytest.mark.slow
def test_unreachable_endpoint_is_one_line_within_deadline():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    code, out, err = invoke_subprocess(
        ["query", "ns", "--store", "s3://b/p", "--s3-endpoint", f"http://127.0.0.1:{port}"],
        env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"},
        timeout=120,
    )
    assert_one_error(code, out, err, expect_code=1, needle=f"127.0.0.1:{port}")


# ------------------------------------------------------------------ generated invocations
VALID = [
    ["query", "ns", "--top-k", "3"],
    ["query", "ns", "--vector", json.dumps([0.1] * 16), "--top-k", "2", "--include", "title"],
    ["query", "ns", "--bm25", "title", "quick fox", "--format", "ndjson"],
    ["query", "ns", "--rank-by", '["price", "desc"]', "--filter", '["lang", "Eq", "en"]'],
    ["export", "ns", "--format", "ndjson"],
    ["export", "ns", "--at-seq", "1", "-o", "{b}/out/x.csv"],
    ["wal-inspect", "ns", "--json"],
    ["wal-inspect", "ns", "--show", "1", "--json"],
    ["ingest", "fresh", "{fx}/sample.csv", "--batch-rows", "100"],
    ["ingest", "fresh", "{fx}/sample.ndjson", "--format", "ndjson"],
    ["recall", "ns", "--num", "2", "--top-k", "3", "--json", "--cache-dir", "{b}/c-gen"],
    ["warm", "ns", "--json", "--cache-dir", "{b}/c-gen"],
]
OPTION_NAMES = [
    "--top-k",
    "--vector",
    "--filter",
    "--rank-by",
    "--format",
    "--at-seq",
    "--id",
    "--batch-rows",
    "--schema",
    "--include",
    "--include-all",
    "--consistency",
    "--body",
    "--budget",
    "--num",
    "--show",
    "--bm25",
    "--exact",
    "--json",
    "--verify",
    "--distance-metric",
    "-o",
    "--bogus",
    "--",
    "-",
]
COMMAND_OPTIONS = {  # mostly insert options the command has, so the value reaches the command's checks
    "query": [
        "--top-k",
        "--vector",
        "--filter",
        "--rank-by",
        "--format",
        "--include",
        "--consistency",
        "--body",
        "--budget",
        "--vector-attr",
        "--wal-corrupt-policy",
    ],
    "export": ["--format", "--at-seq", "-o", "--wal-corrupt-policy"],
    "ingest": ["--id", "--vector", "--schema", "--distance-metric", "--format", "--batch-rows"],
    "wal-inspect": ["--show"],
    "recall": ["--num", "--top-k", "--filter", "--field"],
}
WEIRD_VALUES = [
    "",
    "0",
    "-1",
    "1e309",
    "nan",
    "-0",
    "99999999999999999999",
    "[",
    "]",
    "{}",
    "[]",
    "null",
    "@",
    "@/nonexistent",
    "@{f}/random.parquet",
    "@{f}/adir.parquet",
    "{f}/trunc.parquet",
    "\u00e9\u00e8",
    "\u0000",
    "a" * 300,
    '["id","Eq",1]',
    '{"rank_by":["id","asc"]}',
    "[1,2,3]",
    "true",
    "..",
    "ns",
    "-o",
    "--top-k",
    '["Not",["Not",["Not",["id","Eq",1]]]]',
    '["title","Regex","("]',
]
OUT_PATHS = ["{b}/out", "{b}/out/gen.ndjson", "{b}/missing/x.csv", "/proc/puffer-gen.csv", "-"]


@st.composite
def mutated(draw):
    args = list(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "insert_opt", "drop", "dup", "swap_ns"]))
        if kind == "replace" and len(args) > 2:
            i = draw(st.integers(2, len(args) - 1))
            if args[i - 1] == "-o":
                args[i] = draw(st.sampled_from(OUT_PATHS))
            elif not args[i].startswith("-"):
                args[i] = draw(
                    st.one_of(
                        st.sampled_from(WEIRD_VALUES),
                        st.text(max_size=20),
                        st.integers(-(2**70), 2**70).map(str),
                        st.floats(allow_nan=True).map(repr),
                    )
                )
        elif kind == "insert_opt":
            own = COMMAND_OPTIONS.get(args[0], OPTION_NAMES)
            opt = draw(st.sampled_from(own if draw(st.integers(0, 4)) else OPTION_NAMES))
            val = (
                draw(st.sampled_from(OUT_PATHS))
                if opt == "-o"
                else draw(st.one_of(st.sampled_from(WEIRD_VALUES), st.text(max_size=12)))
            )
            i = draw(st.integers(2, len(args)))
            args[i:i] = [opt, val]
        elif kind == "drop" and len(args) > 1:
            del args[draw(st.integers(1, len(args) - 1))]
        elif kind == "dup":
            i = draw(st.integers(0, len(args) - 1))
            args.insert(i, args[i])
        elif kind == "swap_ns" and len(args) > 1:
            args[1] = draw(st.sampled_from(["nope", "..", ".hidden", "a/b", "", "x" * 200, "ns", "fresh", "-"]))
    return args


def _check_generated(base: Path, args: list[str]) -> None:
    store = base / f"g-{uuid.uuid4().hex[:8]}"
    shutil.copytree(base / "good", store)
    try:
        argv = [
            a.replace("{b}", str(base)).replace("{f}", str(base / "files")).replace("{fx}", str(FIXTURES)) for a in args
        ]
        if any(a in ("serve", "index") for a in argv[:1]):
            return
        before = snapshot(store)
        cwd = os.getcwd()
        (store.parent / "cwd").mkdir(exist_ok=True)
        os.chdir(store.parent / "cwd")  # a mutated -o / --cache-dir value is a relative path: keep it in here
        try:
            code, out, err = invoke([*argv, "--store", str(store)])
        finally:
            os.chdir(cwd)
        assert "Traceback" not in out and "Traceback" not in err, err
        assert code in (0, 1, 2), (code, err)
        if code == 0:
            return
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("Error: "), (argv, lines)
        assert not lines[-1].startswith("Error: internal error"), (argv, lines[-1])
        if "already committed" not in lines[-1]:
            assert len(lines) == 1, (argv, lines)
            assert snapshot(store) == before, (argv, "a refused invocation changed the store")
    finally:
        shutil.rmtree(store, ignore_errors=True)


@st.composite
def bad_file(draw):
    """(suffix, bytes, --format or None): random bytes, or a fixture truncated / bit-flipped."""
    src = draw(st.sampled_from([SAMPLE_PQ, SAMPLE_CSV, SAMPLE_ND, None]))
    if src is None:
        data = draw(st.binary(max_size=2048))
        suffix = draw(st.sampled_from([".parquet", ".csv", ".ndjson"]))
    else:
        data = bytearray(src.read_bytes())
        suffix = src.suffix
        how = draw(st.sampled_from(["truncate", "flip", "both"]))
        if how in ("truncate", "both"):
            data = data[: draw(st.integers(0, len(data) - 1))]
        if how in ("flip", "both") and data:
            for _ in range(draw(st.integers(1, 16))):
                i = draw(st.integers(0, len(data) - 1))
                data[i] = draw(st.integers(0, 255))
        data = bytes(data)
    fmt = draw(st.sampled_from([None, None, "parquet", "csv", "ndjson"]))
    return suffix, data, fmt


def _check_file(base: Path, suffix: str, data: bytes, fmt: str | None) -> None:
    d = base / f"bf-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    try:
        f = d / f"input{suffix}"
        f.write_bytes(data)
        store = d / "store"
        shutil.copytree(base / "good", store)
        before = snapshot(store)
        argv = ["ingest", "ns", str(f), "--store", str(store)] + (["--format", fmt] if fmt else [])
        code, out, err = invoke(argv)
        assert "Traceback" not in out and "Traceback" not in err, err
        assert code in (0, 1), (code, err)
        if code == 1:
            lines = err.strip().splitlines()
            assert lines and lines[-1].startswith("Error: "), lines
            assert not lines[-1].startswith("Error: internal error"), lines[-1]
            if "already committed" not in lines[-1]:
                assert len(lines) == 1, lines
                assert snapshot(store) == before
    finally:
        shutil.rmtree(d, ignore_errors=True)


_HC = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=5, deadline=None, suppress_health_check=_HC, database=None)
@given(args=mutated())
def test_generated_invocations_fast(env, args):
    _check_generated(env, args)


@settings(max_examples=8, deadline=None, suppress_health_check=_HC, database=None)
@given(spec=bad_file())
def test_generated_files_fast(env, spec):
    _check_file(env, *spec)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=_HC, database=None)
@given(args=mutated())
def test_generated_invocations(env, args):
    _check_generated(env, args)


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=_HC, database=None)
@given(spec=bad_file())
def test_generated_files(env, spec):
    _check_file(env, *spec)


def test_glob_characters_in_input_names(tmp_path):
    """polars globs path strings; a file named with glob characters is still read as itself."""
    store = tmp_path / "s"
    for i, (src, name) in enumerate([(SAMPLE_ND, "a[1].ndjson"), (SAMPLE_CSV, "b*.csv"), (SAMPLE_PQ, "c?.parquet")]):
        p = tmp_path / name
        shutil.copyfile(src, p)
        code, out, err = invoke(["ingest", f"g{i}", p, "--store", store])
        assert code == 0, err
    (tmp_path / "d[x].ndjson").write_bytes(b'{"id": 1}\n{"id":')
    code, out, err = invoke(["ingest", "g9", tmp_path / "d[x].ndjson", "--store", store])
    assert_one_error(code, out, err, expect_code=1, needle="d[x].ndjson")


def test_refused_export_keeps_an_existing_file(env, tmp_path):
    target = tmp_path / "keep.csv"
    target.write_text("precious\n")
    code, out, err = invoke(["export", "ns", "-o", target, "--at-seq", "99", "--store", env / "good"])
    assert_one_error(code, out, err, expect_code=1, needle="not committed")
    assert target.read_text() == "precious\n" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]
    code, out, err = invoke(["export", "ns", "-o", target, "--store", env / "good"])
    assert code == 0, err
    assert target.read_text().startswith("id,") and sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [["query", "ns", "--top-k", "1000", "--format", "ndjson", "--include-all"], ["export", "ns", "--format", "ndjson"]],
)
def test_closed_stdout_pipe_is_quiet(env, args):
    """`puffer query ... | head -1`: no traceback, no error line, exit 0."""
    e = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen(
        [sys.executable, "-m", "puffer_cli.cli.main", *args, "--store", str(env / "good")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=e,
        stdin=subprocess.DEVNULL,
    )
    p.stdout.readline()
    p.stdout.close()  # the reader goes away after one line
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and err == "", err
