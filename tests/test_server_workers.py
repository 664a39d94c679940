"""`puffer serve --workers 2` as a real process: both workers answer, and /metrics (from either)
counts the requests of both (prometheus_client's multiprocess mode, docs/http.md "Metrics")."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import tempfile

import httpx

from .serve_proc import sample, spawn_serve, wait_until

KEY = "workers-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUERIES = 40


def _metrics_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "puffer-metrics-*")))


def test_two_workers_share_metrics(tmp_path):
    store = str(tmp_path / "store")
    before_dirs = _metrics_dirs()
    env = dict(os.environ, PUFFER_API_KEY=KEY)
    proc, url = spawn_serve("--store", store, "--workers", "2", "--commit-window-ms", "0", env=env)
    try:
        ours = _metrics_dirs() - before_dirs
        assert len(ours) == 1 and re.search(rf"puffer-metrics-{proc.pid}-", ours.pop())
        r = httpx.post(f"{url}/v2/namespaces/w", headers=AUTH, json={"upsert_rows": [{"id": 1, "vector": [1.0, 0.0]}]})
        assert r.status_code == 200, r.text
        # a connection stays with the worker that accepted it: /health says which one, then the
        # query on the same connection is answered by it
        by_pid: dict[int, int] = {}
        for _ in range(QUERIES):
            with httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
                pid = c.get("/health").json()["pid"]
                q = c.post("/v2/namespaces/w/query", json={"rank_by": ["vector", "ANN", [1.0, 0.0]], "top_k": 1})
                assert q.status_code == 200, q.text
                by_pid[pid] = by_pid.get(pid, 0) + 1
        for _ in range(200):  # new connections until both workers have answered at least once
            if len(by_pid) == 2:
                break
            with httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
                by_pid.setdefault(c.get("/health").json()["pid"], 0)
        assert len(by_pid) == 2 and proc.pid not in by_pid, by_pid

        seen_from: set[int] = set()
        for _ in range(200):  # /metrics from each worker: the same sums
            with httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
                pid = c.get("/health").json()["pid"]
                if pid in seen_from and len(seen_from) < 2:
                    continue
                m = c.get("/metrics")
            assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
            t = m.text
            assert sample(t, "puffer_http_requests_total", route="query", status="200") == QUERIES
            assert sample(t, "puffer_http_requests_total", route="write", status="200") == 1
            assert sample(t, "puffer_http_request_duration_seconds_count", route="query") == QUERIES
            assert sample(t, "puffer_wal_commits_total") == 1
            assert sample(t, "puffer_serve_workers") == 2
            assert sample(t, "puffer_request_body_bytes_in_flight") == 0
            assert 'puffer_index_lag_entries{namespace="w"} 1.0' in t  # hot in a worker, not indexed
            assert "_created" not in t
            seen_from.add(pid)
            if len(seen_from) == 2:
                break
        assert len(seen_from) == 2
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0
    assert wait_until(lambda: not (_metrics_dirs() - before_dirs), 5)  # removed at exit


def test_a_killed_servers_metrics_dir_is_removed_by_the_next(tmp_path):
    stale = tempfile.mkdtemp(prefix="puffer-metrics-999999999-")  # no such pid
    with open(os.path.join(stale, "counter_1.db"), "wb") as f:
        f.write(b"\0" * 8)
    proc, _url = spawn_serve("--store", str(tmp_path / "s"), "--workers", "2", stderr=subprocess.DEVNULL)
    try:
        assert not os.path.exists(stale)
    finally:
        proc.terminate()
        proc.wait(30)
