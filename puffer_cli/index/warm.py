"""``puffer warm``: fetch every file of a namespace's current index generation into the
local cache and open its segments, so the next queries read nothing from the store."""

from __future__ import annotations

import time

from puffer_cli.index.manifest import load_manifest
from puffer_cli.index.segment import open_generation
from puffer_cli.store.filecache import Cache, get_cache


def warm(ns, cache: Cache | None = None, progress=None) -> dict:
    """Fetch every file of the current generation into the cache; ``progress(stage, done, total)``
    is told the files fetched so far."""
    cache = cache or ns.cache or get_cache()
    t0 = time.perf_counter()
    meta, _ = ns.read_meta()
    ptr = (meta or {}).get("index")
    if not ptr:
        return {
            "namespace": ns.name,
            "generation": None,
            "files": 0,
            "bytes": 0,
            "fetched_files": 0,
            "fetched_bytes": 0,
            "seconds": time.perf_counter() - t0,
        }
    man = load_manifest(ns.store, ptr["manifest"])
    before = (cache.stats.files_fetched, cache.stats.bytes_fetched)
    total = 0
    keys = [k for k in man.get("files", []) if k != ptr["manifest"]]
    for n, key in enumerate(keys, 1):
        total += cache.file(ns.store, key).stat().st_size
        if progress:
            progress("files in cache", n, len(keys))
    n = len(keys)
    gen = open_generation(ns.store, ptr, cache)
    for seg in gen.segments:
        seg.warm()
    for f in man.get("ann_stacks", {}):  # a list-major stack: whole in the cache, so queries read it
        gen.stack(f, fetch=True)
    return {
        "namespace": ns.name,
        "generation": ptr["generation"],
        "files": n,
        "bytes": total,
        "fetched_files": cache.stats.files_fetched - before[0],
        "fetched_bytes": cache.stats.bytes_fetched - before[1],
        "seconds": time.perf_counter() - t0,
    }
