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
from puffer_cli.server import ServeConfig, serve
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
