"""Key names in the bucket. The only module that knows them (see docs/format.md).

{ns}/meta.json                       namespace manifest (CAS)
{ns}/wal/{seq:020d}.wal              one committed write batch; immutable
{ns}/wal/quarantine/{seq}.{ts}.wal   bytes moved aside by `wal-inspect --repair`
{ns}/index/{gen:020d}/...            immutable files of one index generation
{ns}/leases/indexer.json             the indexer's expiring lease (CAS)
{ns}/branches/{dest}.json            a pin: branch {dest} references this namespace's WAL/index
"""

from __future__ import annotations

import re
from typing import TypeGuard

from puffer_cli.errors import InvalidRequest

#: turbopuffer's rule (docs "write": names must match [A-Za-z0-9-_.]{1,128}); leading dots
#: are valid and listed like any other name. puffer refuses only what would break its layout:
#: '.' and '..' (path components), and the prefix RESERVED_PREFIX (any case: a case-insensitive
#: filesystem would fold them together), which puffer uses for its own keys (PROBE_DIR).
NAME_RE = re.compile(r"^[A-Za-z0-9\-_.]{1,128}\Z")
RESERVED_PREFIX = "_puffer"
WAL_RE = re.compile(r"(?:^|/)(\d{20})\.wal$")


def is_namespace_name(name: object) -> TypeGuard[str]:
    """True for a name a namespace may have (what check_namespace accepts)."""
    return (
        isinstance(name, str)
        and bool(NAME_RE.match(name))
        and name not in (".", "..")
        and not name.lower().startswith(RESERVED_PREFIX)
    )


def check_namespace(name: object) -> str:
    """Return ``name`` if it is a valid namespace name, else raise InvalidRequest."""
    if not is_namespace_name(name):
        if isinstance(name, str) and name.lower().startswith(RESERVED_PREFIX) and NAME_RE.match(name):
            raise InvalidRequest(
                f"invalid namespace name {name!r}: names starting with {RESERVED_PREFIX!r} are reserved by puffer",
                hint="choose another name",
            )
        raise InvalidRequest(
            f"invalid namespace name {name!r}",
            hint="names match [A-Za-z0-9-_.]{1,128} and are not '.' or '..'",
        )
    return name


def meta(ns: str) -> str:
    return f"{ns}/meta.json"


def wal_dir(ns: str) -> str:
    return f"{ns}/wal/"


def wal(ns: str, seq: int) -> str:
    return f"{ns}/wal/{seq:020d}.wal"


def wal_seq(key: str) -> int | None:
    """The seq of a WAL key, or None if ``key`` is not a committed WAL entry."""
    if "/quarantine/" in key:
        return None
    m = WAL_RE.search(key)
    return int(m.group(1)) if m else None


def quarantine_dir(ns: str) -> str:
    return f"{ns}/wal/quarantine/"


def quarantine(ns: str, seq: int, stamp: str) -> str:
    return f"{ns}/wal/quarantine/{seq:020d}.{stamp}.wal"


def quarantine_note(ns: str, seq: int, stamp: str) -> str:
    return f"{ns}/wal/quarantine/{seq:020d}.{stamp}.json"


def index_root(ns: str) -> str:
    return f"{ns}/index/"


def index_file(ns: str, generation: int, name: str) -> str:
    return f"{ns}/index/{generation:020d}/{name}"


def lease(ns: str) -> str:
    return f"{ns}/leases/indexer.json"


def branch_pins_dir(ns: str) -> str:
    return f"{ns}/branches/"


def branch_pin(ns: str, dest: str, bid: str | None = None) -> str:
    """The pin of creation ``bid`` of branch ``dest`` in its source ``ns`` (written before the
    branch's meta.json; one key per creation, never rewritten). Without ``bid``: the key of
    pins written before per-creation keys (read and released, never written)."""
    return f"{ns}/branches/{dest}.{bid}.json" if bid else f"{ns}/branches/{dest}.json"


def operation(ns: str, token: str) -> str:
    """The record of an asynchronous operation on ``ns`` (``start_copy_from``)."""
    return f"{ns}/operations/{token}.json"


def namespace_prefix(ns: str) -> str:
    return f"{ns}/"


PROBE_DIR = RESERVED_PREFIX + "_probe/"  # store.py writes its conditional-write probe here


# ---------------------------------------------------------------- index (docs/format-index.md)
def index_manifest(ns: str, generation: int, run: str) -> str:
    """The manifest of one index generation (the object meta.json's ``index.manifest`` names).
    ``run`` (random, per build) keeps keys unique when a deleted namespace is recreated and
    numbers generations from 1 again, or two builders race for one number: caches keyed by
    object key are then never stale."""
    return index_file(ns, generation, f"manifest-{run}.json")


def index_run_file(ns: str, generation: int, stem: str, run: str, ext: str) -> str:
    """A per-generation file of build ``run`` (tombstones, BM25 term tables)."""
    return index_file(ns, generation, f"{stem}-{run}.{ext}")


def index_segment_file(ns: str, generation: int, segment: str, name: str) -> str:
    """A data file of segment ``segment``, created in ``generation`` (later generations
    may keep referencing it: segment files are immutable)."""
    return f"{ns}/index/{generation:020d}/{segment}/{name}"
