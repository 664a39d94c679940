"""The `puffer` command line: glue over the library. Errors are translated once,
in :func:`main`, into one ``Error: ...`` line (plus a hint) on stderr: exit code 1,
2 for a usage error (unknown option, bad option value). Anything unexpected is one
``Error: internal error: ...`` line too; ``--debug`` (or PUFFER_DEBUG=1) shows the
traceback instead. The commands live in cli_data, cli_query and cli_index (each
registers on the one ``app`` of cli_common)."""

from __future__ import annotations

import copy
import errno
import os
import sys
from typing import Annotated, Any

import typer

from puffer_cli import config
from puffer_cli.cli import coerce
from puffer_cli.cli import data as cli_data  # noqa: F401 - importing registers the commands
from puffer_cli.cli import indexing as cli_index  # noqa: F401 - importing registers the commands
from puffer_cli.cli import querying as cli_query  # noqa: F401 - importing registers the commands
from puffer_cli.cli.options import State, app, one_line
from puffer_cli.errors import PufferError, with_hint

__all__ = ["main", "run"]


def _print_version(value: bool) -> None:
    if value:
        from puffer_cli import __version__

        typer.echo(f"puffer {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="PUFFER_DEBUG",
            help="On an unexpected error show the Python traceback (anywhere on the line; or PUFFER_DEBUG=1)",
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit")
    ] = False,
):
    """Vector, full-text and hybrid search on object storage (turbopuffer-compatible)."""
    State.debug = State.debug or debug


def _say(msg: str, hint: str | None = None) -> None:
    typer.echo("Error: " + one_line(with_hint(msg, hint and one_line(hint))), err=True)


def _debug_from(argv: list[str]) -> tuple[list[str], bool]:
    """Strip ``--debug`` wherever it stands (before a ``--``); PUFFER_DEBUG=1 also turns it on."""
    env = config.from_env().debug
    end = argv.index("--") if "--" in argv else len(argv)
    rest = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return rest, env or len(rest) != len(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Every failure is one ``Error: ... (hint: ...)`` line on stderr and exit
    code 1 (2 for usage errors); never a traceback unless --debug / PUFFER_DEBUG=1."""
    ClickException, NoArgsIsHelpError, UsageError = _click_exceptions()

    argv, State.debug = _debug_from(list(sys.argv[1:] if argv is None else argv))
    cmd = _command(argv)
    from puffer_cli.cli.options import warn_skipped

    if "puffer_cli.wal.namespace" in sys.modules:  # (an earlier main() in this process replayed a WAL)
        from puffer_cli.wal.namespace import clear_skipped

        clear_skipped()
    try:
        rv = cmd.main(args=argv, prog_name="puffer", standalone_mode=False)
        warn_skipped()
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        _say("aborted")
        return 1
    except NoArgsIsHelpError as e:
        e.show()
        return 0
    except UsageError as e:
        sub = e.ctx.command_path if e.ctx else "puffer"
        _say(e.format_message(), f"run `{sub} --help`")
        return 2
    except ClickException as e:
        _say(e.format_message())
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except PufferError as e:
        if State.debug:
            raise
        _say(e.message + e.cli_context, e.hint)
        return 1
    except SystemExit as e:  # something below called sys.exit (it has said why on stderr)
        if isinstance(e.__context__, OSError) and e.__context__.errno == errno.EPIPE:
            _silence_stdout()  # typer's answer to a closed stdout pipe (`puffer query ... | head`)
            return 0
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code and not State.debug:
            _say(f"stopped with exit status {code}", "run with --debug for the traceback")
            return 1
        return code
    except Exception as e:  # noqa: BLE001 - the last resort: one line, never a traceback
        if State.debug:
            raise
        _internal(e)
        return 1
    except BaseException as e:  # a polars PanicException is a BaseException
        if State.debug or isinstance(e, GeneratorExit):
            raise
        _internal(e)
        return 1


class _NoSuchError(Exception):
    """Stands in for an exception class this click has not (caught nowhere: never raised)."""


def _click_exceptions() -> tuple[Any, Any, Any]:
    """(ClickException, NoArgsIsHelpError, UsageError) as the running typer raises them.

    typer >= 0.26 vendors click as ``typer._click`` (its exceptions have no public name there);
    older typers raise those of the ``click`` package they depend on (also installed beside a
    new typer, by uvicorn: so look for typer's own copy first). NoArgsIsHelpError is new in
    click 8.2; an older click prints the help and exits 0 itself."""
    ex: Any  # typer's vendored click or the click package: the same names either way
    try:
        from typer._click import exceptions as ex
    except ImportError:
        from click import exceptions as ex
    return ex.ClickException, getattr(ex, "NoArgsIsHelpError", _NoSuchError), ex.UsageError


def _internal(e: BaseException) -> None:
    msg = one_line(str(e)) or "(no message)"
    if len(msg) > 500:
        msg = msg[:497] + "..."
    typer.echo(
        f"Error: internal error: {type(e).__name__}: {msg} (run with --debug for the traceback; please report)",
        err=True,
    )


#: built click commands: None -> the whole group; NAME -> the group with the command NAME only
_COMMANDS: dict[str | None, Any] = {}


def _command(argv: list[str] | None = None) -> Any:
    """The click group behind ``app``, built once. For ``puffer NAME ...`` (NAME a command)
    the group holds that command only: building one costs ~3 ms of CPU, all twelve ~16 ms,
    and what NAME prints or does is the same either way (tests/test_cli_startup.py)."""
    names = {
        c.name or typer.main.get_command_name(c.callback.__name__): c for c in app.registered_commands if c.callback
    }
    name = argv[0] if argv and argv[0] in names else None
    if name not in _COMMANDS:
        one = app
        if name is not None:
            one = copy.copy(app)
            one.registered_commands = [names[name]]
        cmd = typer.main.get_command(one)
        _metavars(cmd)
        coerce.install(cmd)  # option values without importing pydantic (~60 ms)
        _COMMANDS[name] = cmd
    return _COMMANDS[name]


#: metavars of common option names (else the name in capitals, or N for a number)
_METAVARS = {
    "store": "URL",
    "s3_endpoint": "URL",
    "body": "JSON|@FILE",
    "filters": "JSON|@FILE",
    "schema": "JSON|@FILE",
    "bm25": "FIELD TEXT",
}


def _metavars(cmd: Any) -> None:
    """Every option and argument of ``cmd`` (and its subcommands) shows a metavar in --help
    (``--top-k N``, ``--store URL``, ``NAMESPACE``), not the Python type (``<str>``)."""
    for sub in getattr(cmd, "commands", {}).values():
        _metavars(sub)
    for p in getattr(cmd, "params", []):
        if p.param_type_name == "argument":
            p.display_type_rich = lambda ctx=None: None  # the argument's name says it: not `NAMESPACE <str>`
        if p.name in _METAVARS:
            p.metavar = _METAVARS[p.name]
            continue
        if p.metavar is not None or getattr(p, "is_flag", False) or getattr(p, "count", False):
            continue
        desc = getattr(p, "type_descriptor", None)
        kind = getattr(desc, "annotation", None)
        if getattr(desc, "is_choice", False):
            continue  # typer shows the choices
        elif kind in (int, float):
            p.metavar = "N"
        else:
            mv = (p.name or "value").upper().replace("_", "-")
            p.metavar = " ".join([mv] * p.nargs) if p.nargs > 1 else mv


def _silence_stdout() -> None:
    """After a closed pipe (``puffer export ns | head``) keep Python from complaining at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def run() -> None:
    if sys.argv[1:] == ["--version"]:  # the one-shot answer, without building the command line
        from puffer_cli import __version__

        print(f"puffer {__version__}")
        sys.exit(0)
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
