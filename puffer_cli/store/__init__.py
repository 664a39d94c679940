"""The Store interface every backend implements, and the per-task I/O counters.

The backends are :mod:`puffer_cli.store.local` (local directory, memory, ``open_store``) and
:mod:`puffer_cli.store.s3` (S3 and S3-compatible servers). Every backend offers the same
primitives, each atomic as docs/format.md says:
``read``/``read_versioned`` (bytes + version token), ``write`` (whole object),
``create`` (create-if-absent, the WAL commit point), ``cas`` (compare-and-swap on
the version token), ``list`` (sorted keys under a prefix, optionally after a key),
``read_range``, ``delete``.  Keys are ``/``-separated and relative to the root.
"""

from __future__ import annotations

import builtins
import contextvars
import hashlib
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from puffer_cli import limits
from puffer_cli.errors import UnsafeStore
from puffer_cli.store import layout


@dataclass
class IOStats:
    """Object-store round trips and bytes, for ``performance`` in responses."""

    requests: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each remote request
    #: concurrent lanes joined into this scope (:func:`lanes`): each a list of the lanes' stats
    forks: list[list[IOStats]] = field(default_factory=list)

    @property
    def round_trips(self) -> int:
        """Sequential round trips to the object store: requests that overlap in time (one
        parallel batch) count once; a request started after every earlier one ended starts
        the next round trip.  0 on a local store (no remote requests).  Lanes run at once
        (the sub-queries of a multi-query) add their longest chain: the critical path, not
        the overlap of unrelated chains (which would count two 3-trip chains as 1)."""
        n, end = 0, float("-inf")
        for a, b in sorted(self.spans):
            if a > end:
                n += 1
            end = max(end, b)
        return n + sum(max((x.round_trips for x in fork), default=0) for fork in self.forks)


_scope: contextvars.ContextVar[IOStats | None] = contextvars.ContextVar("puffer_io", default=None)


def current_io() -> IOStats | None:
    """The IOStats of the enclosing ``io_scope`` (None outside one)."""
    return _scope.get()


class io_scope:
    """``with io_scope() as s:`` counts the store traffic of this thread/task in ``s``."""

    def __enter__(self) -> IOStats:
        self.stats = IOStats()
        self._token = _scope.set(self.stats)
        return self.stats

    def __exit__(self, *exc) -> None:
        _scope.reset(self._token)


def run_lanes(fns: Sequence, concurrent: bool, workers: int | None = None) -> builtins.list:
    """Run the calls ``fns`` (independent chains of reads, e.g. the sub-queries of a
    multi-query, or one segment's reads each in ``index.ranged.parallel``) each in its own
    lane: at once on threads when ``concurrent`` (at most ``workers`` at a time), so their
    k-th round trips overlap (the query waits for the longest chain, not the sum), else in
    turn.  The enclosing ``io_scope`` gets every lane's requests and bytes, and as round
    trips the longest lane's (``IOStats.forks``): a request a lane makes after its own
    earlier ones is a round trip of its own even when another lane's requests overlap it.
    Results in order."""
    parent = _scope.get()
    ctxs = []
    lanes = []
    for _ in fns:
        ctx = contextvars.copy_context()
        st = IOStats()
        ctx.run(_scope.set, st)
        ctxs.append(ctx)
        lanes.append(st)
    try:
        if concurrent and len(fns) > 1:
            with ThreadPoolExecutor(min(workers or len(fns), len(fns))) as ex:
                return builtins.list(ex.map(lambda cf: cf[0].run(cf[1]), zip(ctxs, fns)))
        return [c.run(f) for c, f in zip(ctxs, fns)]
    finally:
        if parent is not None:
            for st in lanes:
                parent.requests += st.requests
                parent.bytes_read += st.bytes_read
                parent.bytes_written += st.bytes_written
            parent.forks.append(lanes)


def count_io(read: int = 0, written: int = 0) -> None:
    s = _scope.get()
    if s is not None:
        s.requests += 1
        s.bytes_read += read
        s.bytes_written += written


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


class Store:
    """Common interface. Subclasses implement the primitives."""

    url: str
    _probe_guard = threading.Lock()  # one probe at a time (per process; probes are rare)
    probe_reason = ""
    #: True when the backend is known to honour create-if-absent / CAS atomically.
    conditional_writes_safe: bool = True
    is_remote = False

    # -- primitives -------------------------------------------------------------
    def read(self, key: str) -> bytes:
        """Whole object; ``FileNotFoundError`` if missing."""
        raise NotImplementedError

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, version token) or None if missing."""
        raise NotImplementedError

    def read_range(self, key: str, start: int, end: int) -> bytes:
        raise NotImplementedError

    def read_ranges(self, reqs: Sequence[tuple[str, int, int]]) -> builtins.list[bytes]:
        """The bytes of each ``(key, start, end)``, in order: one request each.  A remote
        backend has them in flight at once (one round trip for the batch); here they run in
        turn (local), or on ``limits.RANGE_CONCURRENCY`` threads when ``is_remote``."""
        if len(reqs) <= 1 or not self.is_remote:
            return [self.read_range(k, a, b) for k, a, b in reqs]
        ctx = contextvars.copy_context()
        with ThreadPoolExecutor(min(limits.RANGE_CONCURRENCY, len(reqs))) as ex:
            return builtins.list(ex.map(lambda r: ctx.copy().run(self.read_range, *r), reqs))

    def write(self, key: str, data: bytes) -> None:
        """Write a whole object; readers see the old or the new bytes, never a mix."""
        raise NotImplementedError

    def write_chunks(self, key: str, chunks: Iterable[bytes]) -> int:
        """:meth:`write` of the bytes ``chunks`` yield, in order (a backend that can, a local
        directory, never holds them all at once); the bytes written."""
        data = b"".join(chunks)
        self.write(key, data)
        return len(data)

    def create(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent. True if created, False if it existed."""
        raise NotImplementedError

    def cas(self, key: str, data: bytes, version: str | None) -> bool:
        """Replace ``key`` if its version is ``version`` (None: create if absent)."""
        raise NotImplementedError

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        """Sorted keys under ``prefix`` (recursive), optionally only those > start_after."""
        raise NotImplementedError

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        """Immediate 'sub-directories' under prefix (names without slashes)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def size(self, key: str) -> int:
        raise NotImplementedError

    def sweep_temp(self, prefix: str, older_than_s: float) -> int:
        """Delete temporary files a killed writer left under ``prefix`` (older than
        ``older_than_s``); returns how many. Only a local directory has any: object
        stores write whole objects."""
        return 0

    def change_token(self, key: str) -> str | None:
        """A cheap token that changes whenever ``key`` is rewritten (None: this backend has
        none; read the object).  Callers use it to skip re-reading an unchanged object."""
        return None

    # -- derived ----------------------------------------------------------------
    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except FileNotFoundError:
            return False

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for k in keys:
            try:
                self.delete(k)
            except FileNotFoundError:
                pass
        return len(keys)

    def _probe_create(self, key: str, data: bytes) -> bool:
        """``create`` as the probe's race runs it (S3: with a short deadline, so a server
        that hangs on concurrent conditional creates cannot hang the probe)."""
        return self.create(key, data)

    def probe_conditional_writes(self) -> bool:
        """Is create-if-absent atomic here? Sequentially, a second create of one key
        must be refused; concurrently, two creates of one key must resolve within
        ``limits.S3_PROBE_TIMEOUT_S``, exactly one winning. ``self.probe_reason`` says
        what failed."""
        self.probe_reason = ""
        base = f"{layout.PROBE_DIR}{uuid.uuid4().hex}"
        seq_key, race_key = f"{base}/seq", f"{base}/race"
        made: list[str] = []
        try:
            first = self.create(seq_key, b"1")  # (this also warms an S3 client up: the race below is timed)
            made.append(seq_key)
            second = self.create(seq_key, b"2")
            if not (first and not second):
                self.probe_reason = "it accepted a second create-if-absent (If-None-Match: *) of one key"
                return False
            results: list = [None, None]
            made.append(race_key)

            def go(i: int) -> None:
                try:
                    results[i] = self._probe_create(race_key, b"%d" % i)
                except Exception as e:  # noqa: BLE001 - a timeout here is the answer, not an error
                    results[i] = e

            ts = [threading.Thread(target=go, args=(i,), daemon=True, name="puffer-probe") for i in (0, 1)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(limits.S3_PROBE_TIMEOUT_S + 2)
            if sorted(map(repr, results)) != ["False", "True"]:
                got = ", ".join(
                    "no answer" if r is None else str(r) if isinstance(r, bool) else type(r).__name__ for r in results
                )
                self.probe_reason = (
                    f"two concurrent create-if-absent of one key did not resolve to one winner "
                    f"within {limits.S3_PROBE_TIMEOUT_S:g} s (got: {got})"
                )
                return False
            return True
        finally:
            for k in made:
                try:
                    self.delete(k)
                except Exception:  # noqa: BLE001 - best effort; the probe keys are tiny
                    pass

    def require_safe_writes(self, single_writer: bool) -> None:
        """Refuse concurrent-writer use on a store whose conditional writes are not
        atomic (probed once per store instance)."""
        if single_writer or self.conditional_writes_safe:
            return
        with self._probe_guard:
            if getattr(self, "_probe_ok", None) is None:
                self._probe_ok = self.probe_conditional_writes()
        if not self._probe_ok:
            raise UnsafeStore(f"store {self.url} is unsafe for concurrent writers: {self.probe_reason}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def now_ms() -> int:
    return int(time.time() * 1000)
