"""Option values without pydantic: typer (>= 0.26) turns every option value, even an absent
one, into its Python type through a pydantic ``TypeAdapter``; importing pydantic and building
the adapters costs ~60 ms of every `puffer` run (more than the rest of ``query --help``).

:func:`install` gives each parameter of the command tree a coercion that answers the plain
cases itself -- nothing given, a ``str`` for a ``str``, ASCII digits for an ``int`` or ``float``
within its bounds, strings for a ``tuple[str, ...]`` or ``list[str]`` -- exactly as typer's own
would (tests/test_cli_startup.py compares them), and hands everything else (a bad number, a
bound crossed, a type it does not know) to typer's own coercion, built then: so error messages
and unusual inputs behave as typer's. A typer without this hook (``_runtime_param``) runs as
before, only slower."""

from __future__ import annotations

import contextlib
import re
from typing import Any, get_args, get_origin

__all__ = ["install", "plain_value"]

#: what :func:`plain_value` returns when the value is not a plain case
NOT_PLAIN: Any = object()

_INT = re.compile(r"-?[0-9]{1,15}")  # ASCII only: pydantic refuses other digits, int() does not
_FLOAT = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,15})?")


def _within(v: int | float, info: Any) -> bool:
    lo, hi = getattr(info, "min", None), getattr(info, "max", None)
    return (lo is None or v >= lo) and (hi is None or v <= hi)


def _number(kind: type[int] | type[float], value: Any, info: Any) -> Any:
    bounds = (getattr(info, "min", None), getattr(info, "max", None))
    if getattr(info, "clamp", False) or any(b is not None and type(b) not in (int, kind) for b in bounds):
        return NOT_PLAIN  # clamping, or bounds typer would refuse for this type: typer decides
    v: int | float
    if type(value) is kind:
        v = value
    elif type(value) is str and (_INT if kind is int else _FLOAT).fullmatch(value):
        v = kind(value)
    else:
        return NOT_PLAIN
    return v if _within(v, info) else NOT_PLAIN


def plain_value(annotation: Any, info: Any, value: Any) -> Any:
    """``value`` as typer would coerce it to ``annotation`` (``info`` its ParameterInfo), or
    :data:`NOT_PLAIN` when that takes typer's own coercion. ``None`` is never asked."""
    if getattr(info, "parser", None) is not None:
        return NOT_PLAIN
    if annotation is str:
        return value if type(value) is str else NOT_PLAIN
    if annotation is int or annotation is float:
        return _number(annotation, value, info)
    origin, args = get_origin(annotation), get_args(annotation)
    if type(value) not in (list, tuple) or not all(type(v) is str for v in value):
        return NOT_PLAIN
    if origin is tuple and args and all(a is str for a in args) and len(value) == len(args):
        return tuple(value)
    if origin is list and args == (str,):
        return list(value)
    return NOT_PLAIN


class _Coercion:
    """Duck-types typer's RuntimeParam (``coerce(value, param, ctx)``) for one parameter."""

    __slots__ = ("_full", "_param")

    def __init__(self, param: Any) -> None:
        self._param = param
        self._full: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        multi = param.multiple or param.nargs == -1
        if value is None:
            return () if multi else None  # as typer's RuntimeParam.coerce
        desc = param.type_descriptor
        simple = getattr(desc, "file_annotation", 1) is None and not getattr(desc, "is_choice", True)
        if simple and not (multi and type(value) is str):
            done = plain_value(desc.annotation, desc.parameter_info, value)
            if done is not NOT_PLAIN:
                return done
        if self._full is None:  # typer's own, built by typer (it caches it in _runtime_param)
            param._runtime_param = None
            try:
                self._full = param.get_runtime_param()
            finally:
                param._runtime_param = self
        return self._full.coerce(value, param=param, ctx=ctx)


def install(cmd: Any) -> None:
    """Give every parameter of ``cmd`` and its subcommands the fast coercion (when this typer
    has the hook: a parameter with ``_runtime_param`` and a ``type_descriptor``)."""
    for sub in getattr(cmd, "commands", {}).values():
        install(sub)
    params = list(getattr(cmd, "params", []))
    with contextlib.suppress(Exception):  # --help: made (and kept) by the command on first use
        params.append(cmd.get_help_option(cmd.context_class(cmd)))
    for p in params:
        if hasattr(p, "_runtime_param") and hasattr(p, "type_descriptor") and p._runtime_param is None:
            p._runtime_param = _Coercion(p)
