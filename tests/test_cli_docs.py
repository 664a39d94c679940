"""Every command has --help text with an example, and is documented."""

from pathlib import Path

import pytest
import typer
from puffer_cli.cli import app, main

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
