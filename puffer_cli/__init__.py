"""puffer: vector, full-text and hybrid search whose only state is a bucket.

The public API: :func:`connect` / :func:`connect_async`, :class:`DB` / :class:`AsyncDB`,
:class:`PufferError` (and its subclasses in :mod:`puffer_cli.errors`). The names load on first
use, so ``puffer --version`` and ``--help`` do not import the engine (polars, numpy).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from puffer_cli.db import DB, AsyncDB, connect, connect_async
    from puffer_cli.errors import PufferError

__version__ = "0.1.0"
__all__ = ["connect", "connect_async", "DB", "AsyncDB", "PufferError", "__version__"]
_HOMES = {
    "connect": "puffer_cli.db",
    "connect_async": "puffer_cli.db",
    "DB": "puffer_cli.db",
    "AsyncDB": "puffer_cli.db",
    "PufferError": "puffer_cli.errors",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'puffer_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
