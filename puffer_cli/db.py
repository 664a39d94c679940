"""``connect(url)``: the library's entry point (like ``lancedb.connect``).

    >>> import puffer_cli
    >>> db = puffer_cli.connect("memory://demo")
    >>> ns = db.namespace("docs")
    >>> ns.write({"upsert_rows": [{"id": 1, "vector": [0.1, 0.2], "lang": "en"}]})["rows_upserted"]
    1
"""
from __future__ import annotations

import os

from . import layout
from .errors import InvalidRequest
from .namespace import Namespace
from .store import Store, open_store


class DB:
    """A store plus the options every namespace opened from it shares."""

    def __init__(self, store: Store, *, single_writer: bool = False, wal_policy: str = "fail"):
        self.store = store
        self.single_writer = single_writer
        self.wal_policy = wal_policy

    def namespace(self, name: str) -> Namespace:
        return Namespace(self.store, name, single_writer=self.single_writer, wal_policy=self.wal_policy)

    def namespaces(self, prefix: str | None = None, cursor: str | None = None,
                   page_size: int = 1000) -> tuple[list[str], str | None]:
        """Namespace names in order, after ``cursor``; (page, next cursor or None)."""
        if not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise InvalidRequest("page_size must be between 1 and 1000")
        names = [n for n in self.store.list_dirs("") if layout.NAME_RE.match(n) and not n.startswith("_puffer")]
        if prefix:
            names = [n for n in names if n.startswith(prefix)]
        if cursor:
            names = [n for n in names if n > cursor]
        page = names[:page_size]
        return page, (page[-1] if len(names) > page_size else None)


def connect(url: str | None = None, *, s3_endpoint: str | None = None, single_writer: bool | None = None,
            wal_policy: str = "fail") -> DB:
    """Open a store: a local path (default ./puffer-data), ``memory://``, or ``s3://bucket/prefix``."""
    if single_writer is None:
        single_writer = os.environ.get("PUFFER_SINGLE_WRITER", "") not in ("", "0", "false")
    return DB(open_store(url, s3_endpoint=s3_endpoint), single_writer=single_writer, wal_policy=wal_policy)
