"""Progress of the long CLI jobs: a bar that advances on a terminal, plain lines otherwise,
summaries on a line of their own."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys

import numpy as np
import polars as pl
import puffer_cli
from puffer_cli.cli.progress import Reporter


def test_plain_lines_per_stage_and_throttled(capsys):
    err = io.StringIO()
    with Reporter("index", False, every=3600, delay=0, stream=err) as rep:
        rep.subject = "docs"
        rep("fold: WAL entries", 0, 3)
        rep("fold: WAL entries", 1, 3)  # same stage, within `every`: no line
        rep("fold: WAL entries", 3, 3)  # finished: a line
        rep("ivf vector: rows assigned", 10, 100)  # a new stage: a line
        rep.line("docs: indexed")
    lines = [_unstamped(x) for x in err.getvalue().splitlines()]
    assert lines == [
        "index docs: fold: WAL entries 0/3",
        "index docs: fold: WAL entries 3/3",
        "index docs: ivf vector: rows assigned 10/100",
    ]
    out = capsys.readouterr().out
    assert _unstamped(out) == "docs: indexed\n"  # the summary is stdout's, not mixed into progress


def test_plain_extra_text():
    err = io.StringIO()
    with Reporter("ingest", False, delay=0, stream=err) as rep:
        rep("rows", 500, None, "1,000 rows/s")
    assert _unstamped(err.getvalue()) == "ingest: rows 500 (1,000 rows/s)\n"


def _unstamped(line: str) -> str:
    """Off a terminal every line starts with an ISO-8601 UTC timestamp (a cron log's)."""
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", line), line
    return line[21:]


def test_quiet_prints_no_progress():
    err = io.StringIO()
    with Reporter("index", False, delay=0, stream=err, quiet=True) as rep:
        rep("fold", 1, 3)
    assert err.getvalue() == ""


def test_plain_quiet_for_a_short_job():
    """Nothing before ``delay``: a job that ends (or fails) at once prints only its result."""
    err = io.StringIO()
    with Reporter("export", False, stream=err) as rep:
        rep("rows read", 10, 10)
    assert err.getvalue() == ""


def _run_on_pty(args: list[str], env: dict) -> str:
    """Run a command with stdout and stderr on a pseudo-terminal; all it wrote."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:
        r, _, _ = select.select([leader], [], [], 120)
        if not r:
            proc.kill()
            break
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_index_bar_advances_on_a_terminal(tmp_path):
    """`puffer index` on a TTY redraws its bar with growing counts of rows assigned, and
    prints the summary on a line of its own."""
    store = str(tmp_path / "data")
    rng = np.random.default_rng(0)
    n = 60_000
    df = pl.DataFrame({"id": np.arange(n, dtype=np.uint64), "vector": rng.standard_normal((n, 32), np.float32)})
    src = tmp_path / "v.parquet"
    df.write_parquet(src)
    puffer_cli.connect(store).namespace("v").ingest([str(src)], vector_col="vector")
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    out = _run_on_pty([sys.executable, "-m", "puffer_cli.cli.main", "index", "v", "--store", store], env)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    seen = re.findall(r"ivf vector: (clusters trained|rows assigned)[^\d]*([\d,]+)/([\d,]+)", plain)
    moving = [(stage, done) for stage, done, total in seen if int(done.replace(",", "")) < int(total.replace(",", ""))]
    assert len(set(seen)) >= 2 and moving, plain[-2000:]  # redrawn with new counts, some before the stage ended
    # the summary starts a line of its own (after a newline or the bar's erase-line) and ends one
    assert re.search(r"(\x1b\[2K|\n)v: indexed 60,000 rows[^\r\n\x1b]*\r?\n", out), out[-2000:]
