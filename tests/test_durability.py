"""Nothing acknowledged is ever lost: `puffer serve` SIGKILLed again and again while
writers keep writing over HTTP; every write that got a 200 is in the namespace after.

(SIGKILL of `ingest` and `index` is in test_concurrency.py and test_index_process.py.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time

import httpx
import puffer_cli
import pytest
from puffer_cli.wal import namespace as N

from .serve_proc import spawn_serve

pytestmark = pytest.mark.slow


def _spawn(store: str, endpoint: str | None) -> tuple[subprocess.Popen, str]:
    return spawn_serve("--store", store, *(["--s3-endpoint", endpoint] if endpoint else []))


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_sigkill_serve_loses_nothing_acknowledged(backend, tmp_path, request):
    if backend == "local":
        store, endpoint = str(tmp_path / "store"), None
    else:
        endpoint = request.getfixturevalue("s3_server")
        store = f"s3://puffer-test/durability-{time.time_ns()}"
    acked: list[int] = []
    lock = threading.Lock()
    rng = random.Random(7)
    next_id = iter(range(1, 10**9))
    kills = 8
    for _round in range(kills):
        proc, url = _spawn(store, endpoint)
        stop = threading.Event()

        def writer(url=url, stop=stop):
            with httpx.Client(base_url=url, timeout=10) as c:
                while not stop.is_set():
                    with lock:
                        ids = [next(next_id) for _ in range(5)]
                    try:
                        r = c.post("/v2/namespaces/dur", json={"upsert_rows": [{"id": i, "v": i} for i in ids]})
                    except httpx.HTTPError:
                        return  # the server died mid-request: not acknowledged
                    if r.status_code == 200:
                        with lock:
                            acked.extend(ids)

        threads = [threading.Thread(target=writer) for _ in range(4)]
        before = len(acked)
        [t.start() for t in threads]
        t0 = time.time()
        while len(acked) == before and time.time() - t0 < 30:  # kill while writes are landing
            time.sleep(0.02)
        time.sleep(rng.uniform(0.2, 1.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        [t.join(30) for t in threads]
    assert len(acked) > 0
    db = puffer_cli.connect(store, s3_endpoint=endpoint)
    N.forget(db.store, "dur")
    docs, head = db.open_namespace("dur").docs()
    missing = set(acked) - set(docs["id"].to_list())
    print(f"{backend}: {len(acked)} acknowledged ids over {kills} SIGKILLs of serve, {len(missing)} lost")
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged ids lost over {kills} SIGKILLs"
    # the namespace is still writable at the next seq
    db.open_namespace("dur").write({"upsert_rows": [{"id": 0, "v": 0}]})
    assert db.open_namespace("dur").head().seq == head.seq + 1
