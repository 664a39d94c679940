"""Typed exceptions. Raised in the library, translated once at each boundary.

Each class carries the HTTP status the server answers with; the CLI prints
``Error: <message>`` (plus the hint) and exits 1.  Nothing else in the code base
decides how an error looks to a user.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Callable, Mapping
from typing import Any


class PufferError(Exception):
    """Base class. ``status`` is the HTTP status; ``hint`` a what-to-do line."""

    status = 500
    #: whether a client may usefully retry (the server sends ``x-should-retry``)
    retryable: bool | None = None
    default_hint: str | None = None
    #: said after the message by the CLI only (e.g. `` in /srv/data``, where the store is);
    #: never sent over HTTP, which does not show a server's paths
    cli_context: str = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message + self.cli_context  # a library user (a traceback) sees where, too


class InvalidRequest(PufferError):
    """Bad input: a write, filter, query or CLI argument that cannot be accepted."""

    status = 400


class InvalidFilter(InvalidRequest):
    """A filter expression is malformed or does not fit the schema."""


class InvalidQuery(InvalidRequest):
    """A query body is malformed."""


class SchemaError(InvalidRequest):
    """A value or declared type does not fit the namespace schema."""


class UnprocessableBody(InvalidRequest):
    """A request body that is not valid JSON / not the expected shape (HTTP 422)."""

    status = 422


class QueryTypeMismatch(InvalidQuery, UnprocessableBody):
    """A query field of the wrong JSON type (422, schema/shape.py)."""


class WriteTypeMismatch(SchemaError, UnprocessableBody):
    """A write field of the wrong JSON type (422, schema/shape.py)."""


class Unauthorized(PufferError):
    status = 401


class NotFound(PufferError):
    status = 404


class ReadOnly(PufferError):
    """A document or schema write to a namespace whose metadata says ``read_only``."""

    status = 403


class NamespaceNotFound(NotFound):
    default_hint = "check the namespace name and --store; `puffer namespaces` lists what is there"


class Conflict(PufferError):
    """The operation cannot proceed in the current state (e.g. store unsafe for concurrency)."""

    status = 409


class UnsafeStore(Conflict):
    default_hint = (
        "this store does not honour conditional writes; run a single writer and pass "
        "--single-writer (or PUFFER_SINGLE_WRITER=1)"
    )


class TooLarge(PufferError):
    status = 413


class RateLimited(PufferError):
    """Too much in flight (request bodies, concurrent writes); retry later."""

    status = 429


class BudgetExceeded(PufferError):
    """A request ran past its time budget (``limits.deadline``); it was stopped, not retried."""

    status = 408
    retryable = False
    default_hint = "narrow the query (a more selective filter, a smaller top_k) or raise the budget"


class StoreError(PufferError):
    """The object store failed or cannot be reached (network, credentials, missing
    bucket, permissions, ...). The message names the endpoint/bucket; the hint what to do."""

    status = 503


class CorruptWal(PufferError):
    """A WAL segment is missing, truncated or fails its checksum."""

    status = 500

    @staticmethod
    def hint_for(namespace: str) -> str:
        """What to do, naming the namespace (the default hint names a placeholder)."""
        return (
            f"run `puffer wal-inspect {namespace} --verify` to see the damage, then "
            "--repair to quarantine it, or replay with --wal-corrupt-policy skip"
        )

    default_hint = hint_for("<namespace>")


class RequestTimeout(PufferError):
    """The client did not send its request (headers or body) within the server's read timeouts."""

    status = 408


class MissingDependency(PufferError):
    """An optional package a call needs is not installed (the hint names the extra)."""

    status = 500


class CorruptNamespace(PufferError):
    """A namespace's stored state (``meta.json``, an index manifest) cannot be decoded.

    500: the damage is in the store, not in the request, and retrying will not help.
    The message names the key; the hint says how to recover."""

    status = 500
    retryable = False

    @classmethod
    def decode(cls, data: bytes, what: str, problem, hint: str) -> Any:
        """Decode stored JSON ``data`` (named ``what`` in errors) and shape-check it with
        ``problem(obj) -> str | None``; raise this error, with ``hint``, if either fails."""
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise cls(f"{what} is not valid JSON ({e})", hint=hint) from None
        msg = problem(obj)
        if msg:
            raise cls(f"{what} is corrupt: {msg}", hint=hint)
        return obj


# --------------------------------------------------------------------------- a value shown in an error message
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 60, 60, 6, 4


def show(
    v: Any,
    limit: int = 120,
    *,
    compact: bool = False,
    ascii: bool = False,
    default: Callable[[Any], Any] | None = None,
    python: bool = False,
) -> str:
    """A value shown in an error message: short, and never failing.

    Its JSON text (``compact``: no spaces after separators; ``ascii``: non-ASCII
    escaped; ``default``: renders what JSON cannot, else the whole value is
    ``repr``-ed), cut to ``limit`` characters ending in ``...``. With ``python=True``
    a Python repr abbreviated level by level instead (2 levels, 6 items, 4 keys,
    60-character strings), ``limit`` unused."""
    if python:
        try:
            return _REPR.repr(v)
        except Exception:  # noqa: BLE001 - a repr must never fail an error message
            return f"<{type(v).__name__}>"
    try:
        s = json.dumps(v, ensure_ascii=ascii, separators=(",", ":") if compact else None, default=default)
    except (TypeError, ValueError):
        s = repr(v)
    except RecursionError:  # a value nested too deep to print
        s = "[...]" if isinstance(v, (list, tuple)) else "{...}" if isinstance(v, Mapping) else "..."
    return s if len(s) <= limit else s[: limit - 3] + "..."


def with_hint(message: str, hint: str | None) -> str:
    """``message (hint: hint)``, the hint said once: not again when the message already
    carries one (an error that wraps another's text)."""
    if not hint or "(hint: " in message:
        return message
    return f"{message} (hint: {hint})"


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``1 WAL entry``, ``2 WAL entries``, ``1,000 rows``: a count and its noun, agreeing.
    ``many``: the plural when it is not ``noun`` + s (a ``y`` after a consonant becomes ``ies``)."""
    if n == 1:
        return f"1 {noun}"
    if many is None:
        many = noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" else noun + "s"
    return f"{n:,} {many}"


class WalCollected(InvalidRequest):
    """A seq older than the retained WAL: its entries were collected after an index generation
    covered them (WAL retention, docs/indexer.md)."""

    status = 400
    default_hint = (
        "the oldest readable seq is in the message; keep more history with a longer "
        "--wal-retention / PUFFER_WAL_RETENTION on the indexer"
    )


class CorruptIndex(PufferError):
    """A file of the published index generation is missing, truncated or cannot be decoded.

    500: the damage is in the store; the message names the file and its segment, the hint
    says how to rebuild it."""

    status = 500
    retryable = False
