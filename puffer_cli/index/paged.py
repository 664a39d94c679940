"""Large index files on object stores, stored as parts of at most PART_BYTES.

A query reads a few kilobytes of a segment's vectors, lists and ids by range.  Some
S3 servers serve a ranged GET by reading the whole object (moto does: a 400 MB vector
file costs ~100 ms per request there), so on a remote store a file over PART_BYTES is
written as parts ``{key}.{i:05d}`` and a ranged read touches only the parts it needs.
On a local store files stay whole (a ranged read is a seek).

A manifest entry is ``{"key": key}`` or ``{"key": key, "parts": [...], "part_bytes": P,
"size": n}``; ``key`` names the whole file, which exists only in the local cache
(assembled from the parts when a reader wants it whole: warm, memory-mapped queries).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from puffer_cli.index import ranged
from puffer_cli.store import Store
from puffer_cli.store.filecache import Cache

PART_BYTES = 8 << 20
PENDING_PARTS = 4  # parts of :func:`put_chunks` uploading at once at most (its memory: a few parts)


def put(w, key: str, data: bytes | memoryview, part_bytes: int | None = None) -> dict:
    """Write ``data`` under ``key`` (whole, or as parts on a remote store); the manifest entry.
    ``w``: the builder's writer (``put(key, data, cache=) -> key``, ``store``, ``cache``);
    ``part_bytes``: the parts' size (default PART_BYTES; the entry records it for readers).
    The parts are not cached: the whole file is (readers use it, and a cached part next to it
    would be a second copy on the local disk)."""
    if not w.store.is_remote:
        return {"key": w.put(key, data)}
    pb = part_bytes or PART_BYTES
    if len(data) <= pb:
        return {"key": w.put(key, bytes(data))}  # an S3 client takes bytes, not a view
    parts = [
        w.put(f"{key}.{i:05d}", bytes(data[a : a + pb]), cache=False) for i, a in enumerate(range(0, len(data), pb))
    ]
    w.cache.put(w.store, key, data)
    return {"key": key, "parts": parts, "part_bytes": pb, "size": len(data)}


def put_chunks(w, key: str, chunks: Iterable[bytes], size: int, part_bytes: int | None = None) -> dict:
    """:func:`put` of the ``size`` bytes ``chunks`` yield, never holding them all: on a remote
    store each part is uploaded once filled (at most PENDING_PARTS uploads in flight, so
    memory stays at a few parts), on a local one the file is written a chunk at a time.  The
    whole is not seeded into the cache (a query's ranged reads and the cache's background
    fetch bring what is used)."""
    if not w.store.is_remote:
        return {"key": w.put_chunks(key, chunks, size)}
    pb = part_bytes or PART_BYTES
    if size <= pb:
        data = b"".join(chunks)
        if len(data) != size:
            raise ValueError(f"{key}: {len(data)} bytes made, {size} expected")
        return {"key": w.put(key, data)}
    parts: list[str] = []
    buf = bytearray()
    made = 0

    def flush(upto: int) -> None:
        nonlocal buf
        while len(buf) >= upto and buf:
            part, buf = bytes(buf[:pb]), buf[pb:]
            parts.append(w.put(f"{key}.{len(parts):05d}", part, cache=False))
            if len(parts) % PENDING_PARTS == 0:
                w.drain()

    for chunk in chunks:
        made += len(chunk)
        buf += chunk
        flush(pb)
    flush(1)
    if made != size:
        raise ValueError(f"{key}: {made} bytes made, {size} expected")
    return {"key": key, "parts": parts, "part_bytes": pb, "size": size}


def files(entry: dict) -> list[str]:
    """The store keys of an entry."""
    return list(entry["parts"]) if entry.get("parts") else [entry["key"]]


def cached(cache: Cache, store: Store, entry: dict) -> bool:
    return cache.has(store, entry["key"])


def at_hand(cache: Cache, store: Store, entry: dict) -> bool:
    """Is the file local without a request: cached whole, or every part cached (the cache's
    background fetch after ranged reads fetches parts; :func:`whole` then joins them without
    the store)?  For the files a query scans (IVF lists, stacks): read by ranges from cached
    parts, a 30M query would copy ~290 MB a query out of them instead of mapping one file."""
    if cache.has(store, entry["key"]):
        return True
    return bool(entry.get("parts")) and all(cache.has(store, k) for k in entry["parts"])


def whole(cache: Cache, store: Store, entry: dict) -> Path:
    """A local path of the whole file (fetched, or assembled from its parts, into the cache)."""
    key = entry["key"]
    if not entry.get("parts") or cache.has(store, key):
        return cache.file(store, key)

    def part(k: str) -> Callable[[], bytes]:
        return lambda: cache.file(store, k).read_bytes()

    blobs = ranged.parallel([part(k) for k in entry["parts"]], store.is_remote)
    return cache.file(store, key, b"".join(blobs))


def read_ranges(
    cache: Cache, store: Store, entry: dict, ranges: Sequence[tuple[int, int]], extra: float = ranged.RANGE_EXTRA
) -> list[bytes]:
    """The bytes of each ``(start, end)`` of the file, in order: coalesced ranged reads of
    the parts they fall in (a part already in the cache is read locally; ``extra``: see
    ``ranged.read_many``)."""
    if not entry.get("parts"):
        got = ranged.read_ranges(store, entry["key"], ranges, extra)
        cache.note_ranged(store, entry["key"], sum(len(g) for g in got))
        return [bytes(g) for g in got]
    p = int(entry["part_bytes"])
    per_part: dict[int, list[tuple[int, int]]] = {}
    for a, b in ranges:
        for i in range(a // p, (b - 1) // p + 1 if b > a else a // p):
            per_part.setdefault(i, []).append((max(a, i * p) - i * p, min(b, (i + 1) * p) - i * p))

    pieces: dict[int, dict[tuple[int, int], memoryview]] = {}
    remote = []
    for i in sorted(per_part):
        k, want = entry["parts"][i], per_part[i]
        if cache.has(store, k):  # read just the ranges from the cached part, not all 8 MiB of it
            with open(cache.file(store, k), "rb") as fh:
                pieces[i] = {}
                for r in want:
                    fh.seek(r[0])
                    pieces[i][r] = memoryview(fh.read(r[1] - r[0]))
        else:
            remote.append(i)
    # every uncached part's ranges in one batch of requests
    fetched = ranged.read_many(store, [(entry["parts"][i], per_part[i]) for i in remote], extra)
    for i, got in zip(remote, fetched):
        cache.note_ranged(store, entry["parts"][i], sum(len(g) for g in got))
        pieces[i] = dict(zip(per_part[i], got))
    out = []
    for a, b in ranges:
        if b <= a:
            out.append(b"")
            continue
        buf = [pieces[i][(max(a, i * p) - i * p, min(b, (i + 1) * p) - i * p)] for i in range(a // p, (b - 1) // p + 1)]
        out.append(b"".join(buf))
    return out


def read_rows(cache: Cache, store: Store, entry: dict, pos, row_bytes: int):
    """Bytes of fixed-size rows ``pos`` (uint8 matrix, rows in ``pos`` order)."""
    import numpy as np

    pos = np.asarray(pos, dtype=np.int64)
    got = read_ranges(cache, store, entry, [(int(x) * row_bytes, (int(x) + 1) * row_bytes) for x in pos])
    return np.frombuffer(b"".join(got), dtype=np.uint8).reshape(len(pos), row_bytes)
