"""`puffer serve` in a child process, for tests that must survive the server crashing.

A segfault (or an endless computation) in a request must fail a test, not take
pytest down with it, so hostile requests go to a server in its own process:
``ServeConfig(**cfg)`` is built *in the child*, its stderr goes to a file the test
scans for tracebacks, and :meth:`ServeProc.alive` says whether it survived.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}

CHILD = r"""
import json, sys
from puffer_cli.server.app import ServeConfig
from puffer_cli.server.run import serve
cfg = ServeConfig(**json.loads(sys.argv[1]))
serve(cfg, "127.0.0.1:0", log_level="warning")
"""


class ServeProc:
    """One ``serve`` child process on 127.0.0.1 (port 0) over ``store``."""

    def __init__(self, store: str, log_dir: Path, **cfg):
        self.store = store
        self.cfg = {"store": store, "api_key": KEY, "commit_window_ms": 0, **cfg}
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.start()

    def start(self) -> None:
        self.starts += 1
        self.stderr_path = self.log_dir / f"serve-{self.starts}.stderr"
        self._err = open(self.stderr_path, "w")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(self.cfg)],
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"serve did not start: {line!r}\n{self.stderr_path.read_text()[-3000:]}")
        self.url = m.group(1)
        self.http = httpx.Client(base_url=self.url, headers=AUTH, timeout=30)
        self._seen = 0

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            return httpx.get(self.url + "/health", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def new_stderr(self) -> str:
        """What the server wrote to stderr since the last call."""
        self._err.flush()
        text = self.stderr_path.read_text(errors="replace")
        out, self._seen = text[self._seen :], len(text)
        return out

    def restart(self) -> None:
        """Kill a wedged/dead server and start a fresh one over the same store."""
        self.stop(graceful=False)
        self.start()

    def stop(self, graceful: bool = True) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            else:
                self.proc.kill()
            self.proc.wait(20)
        self.http.close()
        self._err.close()


def dir_state(root: str) -> dict[str, bytes]:
    """Every file under a local store, with its bytes (the namespace state a refused request must not touch)."""
    out = {}
    base = Path(root)
    for p in sorted(base.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(base))] = p.read_bytes()
    return out


def wait_until(pred, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def spawn_serve(*args: str, env: dict | None = None, stderr=subprocess.DEVNULL) -> tuple[subprocess.Popen, str]:
    """``puffer serve --listen 127.0.0.1:0 --log-level warning ARGS`` as a child process (the
    real CLI); returns it and its base URL once it prints ``listening on``."""
    cmd = [sys.executable, "-m", "puffer_cli.cli.main", "serve", "--listen", "127.0.0.1:0", "--log-level", "warning"]
    p = subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    line = p.stdout.readline() if p.stdout else ""
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        p.kill()
        err = p.stderr.read() if p.stderr else ""
        raise RuntimeError(f"serve did not start: {line!r} {err}")
    return p, m.group(1)


class ThreadServer:
    """uvicorn on 127.0.0.1:0 in a background thread of this process, with the protocol and
    options ``puffer serve`` uses (``options`` override them, e.g. ``http=GuardedH11Protocol``)."""

    def __init__(self, cfg, **options):
        import threading

        import uvicorn
        from puffer_cli.server.app import create_app
        from puffer_cli.server.proto import uvicorn_kwargs

        self.app = create_app(cfg)
        kw = uvicorn_kwargs("warning")
        kw.update(timeout_graceful_shutdown=2, **options)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, **kw))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > 20 or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def sock(self):
        import socket

        return socket.create_connection(("127.0.0.1", self.port), timeout=15)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` in Prometheus text (``/metrics``) whose labels
    include ``labels``: ``sample(m, "puffer_http_requests_total", route="query", status="408")``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith((name + "{", name + " ")):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
