"""The prefetch pack: the small files a cold vector query reads with the manifest, in one object.

A cold query on an object store fetches, with the manifest, every segment's IVF route, the
stacks' routes and the small lists files (the index pointer's ``prefetch_vector``): one request
each, ~33 of them at 30M rows (30 segments) against a 150-request budget for the whole query.
On a remote store `puffer index` also writes those files (each at most ``ITEM_MAX`` bytes) into
one zip (stored, not deflated: they are compressed already; each entry carries its CRC-32),
named by the pointer's ``prefetch_pack`` = ``{"key": ..., "unpacked": [keys of prefetch_vector
not in it]}``, and a cold reader fetches it in their place and puts its files in the cache.

The pack is an accelerator, never the only copy: each file stays an object of its own, so a pack
that is missing or damaged costs a reader one more round trip (it fetches the files one by one,
with a warning naming the pack), never an answer; ``index --repair`` writes it again.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Mapping, Sequence

ITEM_MAX = 1 << 20  # a file larger than this stays out of the pack (the book: one request of its own)


def plan(keys: Sequence[str], sizes: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """(packed, unpacked) of the pointer's ``prefetch_vector`` ``keys``: the files of at most
    ITEM_MAX bytes (``sizes``: the manifest's) go in the pack; ([], keys) when fewer than two
    would (one is cheaper fetched alone)."""
    small = [k for k in keys if k in sizes and sizes[k] <= ITEM_MAX]
    if len(small) < 2:
        return [], list(keys)
    return small, [k for k in keys if k not in set(small)]


def build(keys: Sequence[str], read: Callable[[str], bytes]) -> bytes:
    """The pack of ``keys`` (``read(key) -> bytes``; store keys: a zip name holds no NUL)."""
    if any("\x00" in k for k in keys):
        raise ValueError("a pack holds store keys (no NUL)")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for k in keys:
            z.writestr(zipfile.ZipInfo(k, date_time=(1980, 1, 1, 0, 0, 0)), read(k))
    return buf.getvalue()


def unpack(data: bytes, want: Sequence[str]) -> dict[str, bytes]:
    """The files ``want`` out of a pack; ValueError when it is damaged (a bad zip, a CRC that
    does not match) or lacks one of them."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = set(z.namelist())
            missing = [k for k in want if k not in names]
            if missing:
                raise ValueError(f"the pack lacks {missing[0]!r}")
            return {k: z.read(k) for k in want}
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - damaged bytes: zipfile raises BadZipFile, EOFError, NotImplementedError (a
        # flipped flag or method), RuntimeError ("encrypted"), struct.error ... (hypothesis found them)
        raise ValueError(f"{type(e).__name__}: {e}") from e
