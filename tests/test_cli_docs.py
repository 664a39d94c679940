"""Every command has --help text with an example, and is documented."""

import importlib.util
from pathlib import Path

import pytest
import typer
from puffer_cli.cli.main import main
from puffer_cli.cli.options import app

ROOT = Path(__file__).parent.parent
COMMANDS = sorted(typer.main.get_command(app).commands)


def test_expected_commands_exist():
    assert {"ingest", "export", "wal-inspect"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_example(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Example: puffer " + name in out
    assert "--store" in out or name == "serve"


@pytest.mark.parametrize("name", COMMANDS)
def test_documented(name):
    docs = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    assert f"puffer {name}" in docs


def _tool(name: str):
    """A script of tools/ as a module (tools/ is not a package: its scripts are run by path)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current():
    """docs/cli.md is what tools/cli_reference.py writes from the --help texts now."""
    ref = _tool("cli_reference")
    doc = (ROOT / "docs" / "cli.md").read_text()
    rendered_by = ref.rendered_by(doc)
    if rendered_by != ref.typer_version():  # e.g. nox -s floors: another typer lays help out its own way
        pytest.skip(f"docs/cli.md was rendered by typer {rendered_by}; typer {ref.typer_version()} is installed")
    assert doc == ref.reference(), f"docs/cli.md is stale: run `{ref.COMMAND}`"
    assert all(f"\n## puffer {name}\n" in doc for name in COMMANDS)


def test_readme_links_the_references():
    readme = (ROOT / "README.md").read_text()
    commands = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
    assert "docs/cli.md" in commands and "docs/quickstart.md" in readme


def test_quickstart_transcript_still_runs():
    """docs/quickstart.md's commands run, in order, in a fresh directory, and print what the
    transcript shows (run times and cache counters masked); they are the README's first commands."""
    qs = _tool("quickstart")
    pairs = qs.parse((ROOT / "docs" / "quickstart.md").read_text())
    assert [c for c, _ in pairs] == qs.COMMANDS, f"docs/quickstart.md is stale: run `{qs.COMMAND}`"
    readme = (ROOT / "README.md").read_text()
    first = readme.split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert [c.strip() for c in first.split("&&")][1:] == qs.COMMANDS[:3]
    for (command, expected), (_, actual) in zip(pairs, qs.transcript(qs.COMMANDS)):
        want, got = qs.masked(expected.splitlines()), qs.masked(actual.splitlines())
        assert got == want, f"`{command}` now prints otherwise: run `{qs.COMMAND}` (and check the change)"
