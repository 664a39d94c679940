"""Index manifests and the signatures recorded in them, shared by the build path
(``builder``) and the read path (``reader``, ``topk``).

* :func:`load_manifest` / :func:`parse_manifest`: read and shape-check a generation's
  manifest (docs/format-index.md); manifests are immutable, so cached in-process by key;
* :func:`fts_sig` / :func:`ann_sig`: the analyzer / ANN options a segment's index files
  were built with (a reader uses a stored file only if its signature matches the schema
  in force); :func:`fts_sig_of` is ``None`` for a field without full-text search.
"""

from __future__ import annotations

import json

from puffer_cli import caches
from puffer_cli.errors import CorruptNamespace
from puffer_cli.index import ivf
from puffer_cli.store import Store

#: parsed manifests (immutable), keyed (store url, namespace, manifest key)
MANIFESTS = caches.lru("index.manifests", 256)


def load_manifest(store: Store, key: str) -> dict:
    """A manifest (immutable: cached in-process by key). Every reader of manifests goes
    through here: a missing one raises FileNotFoundError (a generation collected under a
    reader), an undecodable one :class:`CorruptNamespace` naming the key."""
    ck = (store.url, key.split("/", 1)[0], key)
    m = MANIFESTS.get(ck)
    if m is None:
        m = parse_manifest(store.read(key), key)
        MANIFESTS.put(ck, m)
    return m


def parse_manifest(data: bytes, key: str) -> dict:
    """Decode and shape-check one manifest (see docs/format-index.md)."""
    ns = key.split("/", 1)[0]
    hint = (
        f"index files are derived from the WAL, which keeps every write: move {ns}/meta.json aside "
        f"and run `puffer index {ns}` to build a fresh generation"
    )
    return CorruptNamespace.decode(data, f"index manifest {key}", _problem, hint)


def _problem(man) -> str | None:
    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(man, dict):
        return f"expected a JSON object, got {type(man).__name__}"
    for k in ("generation", "covers_through_seq"):
        if not count(man.get(k)):
            return f"{k} is {man.get(k)!r}, not a number"
    if not isinstance(man.get("schema"), dict):
        return "schema is not an object"
    if not isinstance(man.get("files", []), list) or not all(isinstance(f, str) for f in man.get("files", [])):
        return "files is not a list of keys"
    if not isinstance(man.get("bm25", {}), dict):
        return "bm25 is not an object"
    segs = man.get("segments")
    if not isinstance(segs, list):
        return "segments is not a list"
    for i, s in enumerate(segs):
        if not (
            isinstance(s, dict)
            and isinstance(s.get("name"), str)
            and (isinstance(s.get("attrs"), str) or isinstance(s.get("docs"), dict))
            and count(s.get("rows"))
            and count(s.get("live"))
            and all(isinstance(s.get(k, {}), dict) for k in ("vectors", "ann", "fts"))
        ):
            return f"segment {i} lacks name/attrs/rows/live or has malformed vectors/ann/fts"
    return None


def manifest_files(man: dict) -> set[str]:
    return set(man.get("files", []))


def fts_sig(spec: dict) -> str:
    return json.dumps({k: v for k, v in spec["full_text_search"].items() if k not in ("k1", "b")}, sort_keys=True)


def ann_sig(spec: dict, metric: str | None) -> str:
    """What a segment's vector index files depend on: the IVF build options and the metric
    (format-1 HNSW segments have another signature, so the next run rebuilds them)."""
    return json.dumps({**ivf.build_options(spec), "metric": metric or "cosine_distance"}, sort_keys=True)


def fts_sig_of(spec) -> str | None:
    """:func:`fts_sig` of a schema entry, ``None`` when it has no full-text search."""
    return fts_sig(spec) if spec and spec.get("full_text_search") else None
