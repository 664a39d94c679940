"""The CLI loads only what a command uses (issue 27, "Instant CLI"): `puffer query --help`
imports no engine (polars, numpy) and no pydantic; a query on a local store no S3 client,
no server, no SQL parser, no fsspec, no asyncio. Asserted on ``sys.modules`` of a fresh
process, not on timings (those are benchmarks/bench_cli_startup.py's). Also: the plain-value
coercion that replaces typer's pydantic one agrees with it, and the local store's reads agree
with fsspec's ``cat_file`` they replace."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from puffer_cli.cli.coerce import NOT_PLAIN, plain_value
from puffer_cli.cli.main import _click_exceptions, _command, main

UsageError = _click_exceptions()[2]
COMMANDS = sorted(_command().commands)

ROOT = Path(__file__).parent.parent

#: never needed to print help (the engine, its data libraries, typer's pydantic coercion)
NOT_FOR_HELP = ("polars", "numpy", "pyarrow", "pandas", "pydantic", "rich", "puffer_cli.db", "puffer_cli.search")
#: never needed by a query on a local store (S3 clients, the server, the jobs, SQL, async)
NOT_FOR_LOCAL_QUERY = (
    "pydantic",
    "fsspec",
    "s3fs",
    "aiobotocore",
    "botocore",
    "boto3",
    "asyncio",
    "sqlglot",
    "pyarrow",
    "pandas",
    "hypothesis",
    "prometheus_client",
    "uvicorn",
    "tantivy",
    "rich",
    "puffer_cli.store.s3",
    "puffer_cli.server",
    "puffer_cli.jobs",
    "puffer_cli.index.builder",
    "puffer_cli.filters.sql",
)

_RUN = (
    "import json, sys\n"
    "from puffer_cli.cli.main import main\n"
    "rc = main(json.loads(sys.argv[1]))\n"
    "sys.stdout.flush()\n"
    "json.dump({'rc': rc, 'modules': sorted(sys.modules)}, open(sys.argv[2], 'w'))\n"
)


def modules_after(argv: list[str], tmp_path: Path) -> set[str]:
    """The modules a fresh ``puffer *argv`` process has imported when it is done."""
    out = tmp_path / "modules.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PUFFER_CACHE_DIR="")
    env.pop("PUFFER_DEBUG", None)
    p = subprocess.run(
        [sys.executable, "-c", _RUN, json.dumps(argv), str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    got = json.loads(out.read_text())
    assert got["rc"] == 0, p.stderr
    return set(got["modules"])


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` (packages: any submodule counts) are among ``modules``."""
    return [n for n in names if any(m == n or m.startswith(n + ".") for m in modules)]


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> str:
    """fixtures/sample.parquet ingested and indexed into a local store (the README's first command)."""
    store = str(tmp_path_factory.mktemp("startup") / "store")
    schema = '{"title":{"type":"string","full_text_search":true}}'
    sample = str(ROOT / "fixtures" / "sample.parquet")
    assert main(["ingest", "demo", sample, "--vector", "vector", "--schema", schema, "--store", store]) == 0
    assert main(["index", "demo", "--store", store]) == 0
    return store


@pytest.mark.parametrize("argv", [["--help"], ["query", "--help"], ["ingest", "--help"], ["--version"]])
def test_help_loads_no_engine_and_no_pydantic(argv, tmp_path):
    assert loaded(modules_after(argv, tmp_path), NOT_FOR_HELP) == []


def test_a_local_query_loads_only_what_it_uses(local_store, tmp_path):
    argv = ["query", "demo", "--store", local_store, "--top-k", "3", "--include", "title", "--format", "json"]
    assert loaded(modules_after(argv, tmp_path), NOT_FOR_LOCAL_QUERY) == []


def test_a_local_vector_query_loads_only_what_it_uses(local_store, tmp_path):
    vec = json.dumps([0.1] * 16)  # fixtures/sample.parquet: 16 dimensions
    argv = ["query", "demo", "--store", local_store, "--vector", vec, "--top-k", "3", "--format", "json"]
    assert loaded(modules_after(argv, tmp_path), NOT_FOR_LOCAL_QUERY) == []


def test_what_a_query_uses_it_loads(local_store, tmp_path):
    """The check sees imports: --where loads the SQL parser, --bm25 tantivy (text analysis)."""
    argv = ["query", "demo", "--store", local_store, "--where", "lang = 'en'", "--bm25", "title", "fox"]
    mods = modules_after([*argv, "--format", "json"], tmp_path)
    assert loaded(mods, ("sqlglot", "tantivy", "puffer_cli.filters.sql")) == [
        "sqlglot",
        "tantivy",
        "puffer_cli.filters.sql",
    ]


# ---------------------------------------------------------------- coercion without pydantic
_adapters = pytest.importorskip("typer._adapters", reason="this typer coerces without pydantic adapters")
_models = pytest.importorskip("typer.models")


def typers(annotation, value, **info):
    """What typer's own (pydantic) coercion makes of ``value``: ("ok", v) or ("error",)."""
    try:
        adapter = _adapters.build_adapter(annotation, _models.OptionInfo(**info))
        return ("ok", adapter.validate_python(value))
    except Exception:  # noqa: BLE001 - a pydantic ValidationError or a ValueError
        return ("error",)


def agrees(annotation, value, **info) -> None:
    mine = plain_value(annotation, _models.OptionInfo(**info), value)
    if mine is NOT_PLAIN:
        return  # typer's own coercion decides
    want = typers(annotation, value, **info)
    assert want == ("ok", mine), (annotation, value, info)
    assert type(want[1]) is type(mine)


_numbers = st.one_of(
    st.from_regex(r"-?[0-9]{1,20}(\.[0-9]{1,20})?", fullmatch=True),
    st.text(alphabet="0123456789-+._ e٣١", max_size=12),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
)
_bounds = st.sampled_from([{}, {"min": 0}, {"min": 1}, {"min": 0.001}, {"max": 10}, {"min": -5, "max": 5}])


@settings(max_examples=400, deadline=None)
@given(value=_numbers, annotation=st.sampled_from([int, float]), bounds=_bounds)
def test_numbers_coerce_as_typer_does(value, annotation, bounds):
    agrees(annotation, value, **bounds)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.text(), st.lists(st.text(), max_size=3).map(tuple), st.lists(st.text(), max_size=3)))
def test_strings_coerce_as_typer_does(value):
    for annotation in (str, tuple[str, str], list[str]):
        agrees(annotation, value)


def test_bad_values_still_get_typers_messages(capsys, local_store):
    assert main(["query", "demo", "--store", local_store, "--top-k", "ten"]) == 2
    assert "Invalid value for '--top-k'" in capsys.readouterr().err
    assert main(["query", "demo", "--store", local_store, "--cache-max-gb", "-1"]) == 2
    assert "greater than or equal to 0" in capsys.readouterr().err
    assert main(["query", "demo", "--store", local_store, "--bm25", "title"]) == 2
    assert "requires 2 arguments" in capsys.readouterr().err


def _help(cmd, args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cmd.main(args=args, prog_name="puffer", standalone_mode=False, terminal_width=100, max_content_width=100)
    return out.getvalue()


@pytest.mark.parametrize("name", COMMANDS)
def test_a_command_built_alone_is_the_one_in_the_group(name):
    """`puffer NAME ...` builds the group with NAME only: its help (usage line, options,
    metavars) and its usage errors are those of NAME in the whole group."""
    alone, group = _command([name]), _command()
    assert list(alone.commands) == [name] and len(group.commands) > 1
    assert _help(alone, [name, "--help"]) == _help(group, [name, "--help"])
    for cmd in (alone, group):
        with pytest.raises(UsageError) as e:
            cmd.main(args=[name, "--no-such-option"], prog_name="puffer", standalone_mode=False)
        assert e.value.format_message() == "No such option: --no-such-option"
        assert e.value.ctx is not None and e.value.ctx.command_path == f"puffer {name}"


def test_query_help_shows_bm25_metavars(capsys):
    assert main(["query", "--help"]) == 0
    assert "--bm25 FIELD TEXT " in capsys.readouterr().out


# ---------------------------------------------------------------- local reads without fsspec
@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 64),
    start=st.one_of(st.none(), st.integers(-80, 80)),
    end=st.one_of(st.none(), st.integers(-80, 80)),
)
def test_local_reads_match_fsspec_cat_file(tmp_path_factory, size, start, end):
    fsspec = pytest.importorskip("fsspec")
    from puffer_cli.store.local import _cat

    p = tmp_path_factory.getbasetemp() / "cat.bin"
    p.write_bytes(bytes(range(size)))
    fs = fsspec.filesystem("file")
    assert outcome(_cat, p, start, end) == outcome(fs.cat_file, str(p), start=start, end=end)


def outcome(fn, *args, **kwargs):
    """``fn``'s bytes, or the type of what it raised (an end before the start: ValueError)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - compared, not swallowed
        return type(e)
