"""The indexer's expiring lease on ``{ns}/leases/indexer.json`` (compare-and-swap).

Record: ``{"holder": "host:pid:rand", "expires_at": ms, "acquired_at": ms}``.

* ``acquire`` succeeds when the object is absent, expired (``expires_at`` in the
  past), or already ours; the write is a CAS on the version just read, so of two
  racing runs exactly one wins.
* the holder renews it (CAS on its own version) from a background thread every
  ``ttl / 3``; a renewal that loses the CAS marks the lease ``lost`` and the run
  must not publish.
* ``release`` CASes an expired record (so the next run takes it at once).
A SIGKILLed run simply stops renewing: its lease expires after ``ttl``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from puffer_cli.store import Store, layout, now_ms

DEFAULT_TTL_S = 60.0


def default_ttl() -> float:
    """The lease's length when the caller gives none (the CLI reads --lease-ttl /
    $PUFFER_INDEX_LEASE_TTL, ``ns.index()`` config.from_env().index_lease_ttl_s)."""
    return DEFAULT_TTL_S


@dataclass
class Held:
    """Someone else's live lease."""

    holder: str
    expires_at: int

    def describe(self) -> str:
        left = max(0.0, (self.expires_at - now_ms()) / 1000)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires_at / 1000))
        return f"lease held by {self.holder} until {when} ({left:.0f}s left)"


class Lease:
    def __init__(self, store: Store, ns: str, ttl: float | None = None, holder: str | None = None):
        self.store = store
        self.ns = ns
        self.key = layout.lease(ns)
        self.ttl = default_ttl() if ttl is None else ttl
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.version: str | None = None
        self.lost = False
        self.took_over: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _record(self, expires_at: int, acquired_at: int) -> bytes:
        return json.dumps(
            {"holder": self.holder, "expires_at": expires_at, "acquired_at": acquired_at, "namespace": self.ns}
        ).encode()

    def acquire(self) -> Held | None:
        """Take the lease. None on success, else who holds it."""
        for _ in range(5):
            got = self.store.read_versioned(self.key)
            cur = None
            if got is not None:
                try:
                    cur = json.loads(got[0])
                except ValueError:
                    cur = None
            now = now_ms()
            if cur and cur.get("holder") != self.holder and int(cur.get("expires_at", 0)) > now:
                return Held(str(cur.get("holder")), int(cur["expires_at"]))
            if cur and cur.get("holder") != self.holder and int(cur.get("expires_at", 0)) > 0:
                self.took_over = str(cur.get("holder"))
            self._acquired_at = now
            data = self._record(now + int(self.ttl * 1000), now)
            if self.store.cas(self.key, data, got[1] if got else None):
                got2 = self.store.read_versioned(self.key)
                if got2 is None or json.loads(got2[0]).get("holder") != self.holder:
                    continue
                self.version = got2[1]
                self._start_renewal()
                return None
        got = self.store.read_versioned(self.key)
        cur = json.loads(got[0]) if got else {}
        return Held(str(cur.get("holder", "?")), int(cur.get("expires_at", now_ms())))

    def renew(self) -> bool:
        with self._lock:
            if self.lost or self.version is None:
                return False
            data = self._record(now_ms() + int(self.ttl * 1000), self._acquired_at)
            if self.store.cas(self.key, data, self.version):
                got = self.store.read_versioned(self.key)
                if got and json.loads(got[0]).get("holder") == self.holder:
                    self.version = got[1]
                    return True
            self.lost = True
            return False

    def check(self) -> bool:
        """True while we still hold the lease (renews it now)."""
        return self.renew()

    def _start_renewal(self) -> None:
        def loop():
            while not self._stop.wait(max(0.05, self.ttl / 3)):
                try:
                    if not self.renew():
                        return
                except Exception:  # a transient store error: try again next tick
                    continue

        self._thread = threading.Thread(target=loop, name=f"lease-{self.ns}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self.version is None or self.lost:
                return
            data = json.dumps(
                {"holder": self.holder, "expires_at": 0, "released_at": now_ms(), "namespace": self.ns}
            ).encode()
            try:
                self.store.cas(self.key, data, self.version)
            except Exception:
                pass
            self.version = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
