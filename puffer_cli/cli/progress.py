"""Progress of the long CLI jobs (ingest, export, index, warm): one reporter, two views.

A library job reports ``progress(stage, done, total)`` where the stage names its unit
("fold: WAL entries", "ivf vector: rows assigned", "files fetched"). On a terminal the
reporter draws a rich bar on stderr; otherwise (cron, a pipe, CI logs) it prints plain
lines to stderr once the job has run ``delay`` seconds (default 2: a short job, or one that
fails at once, prints only its result or its one ``Error:`` line), then one when the stage
changes and at most one every ``every`` seconds (default 5) within a stage, so a log shows
the job moving without being flooded. Summaries go
through :meth:`Reporter.line`, always on a line of their own (above the bar on a TTY).
Off a terminal every line (progress and summary) starts with an ISO-8601 UTC timestamp
(``2026-12-07T10:00:00Z``): a cron log says when each run happened. ``quiet`` drops the
progress lines (a cron job's log keeps only what its summaries say).
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class Reporter:
    """``with Reporter("index", tty) as rep: job(progress=rep)``; ``rep.line(summary)``."""

    def __init__(
        self,
        job: str,
        tty: bool,
        *,
        every: float = 5.0,
        delay: float = 2.0,
        stream: TextIO | None = None,
        quiet: bool = False,
    ):
        self.job, self.tty, self.every, self.quiet = job, tty, every, quiet
        self._quiet_until = time.monotonic() + delay
        self.stream = stream if stream is not None else sys.stderr
        self.subject = ""  # e.g. the namespace being indexed, shown after the job name
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._stage: str | None = None
        self._last = 0.0
        self._drawn: tuple | None = None

    def __enter__(self) -> Reporter:
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:,}{task.fields[of]}"),
                TextColumn("{task.fields[extra]}"),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
            )
            self._bar.start()
            self._task = self._bar.add_task(self.job, total=None, of="", extra="")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _name(self, stage: str) -> str:
        return " ".join(p for p in (self.job, self.subject) if p) + (f": {stage}" if stage else "")

    def __call__(self, stage: str, done: int, total: int | None = None, extra: str = "") -> None:
        of = f"/{total:,}" if total else ""
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task, description=self._name(stage), completed=done, total=total or None, of=of, extra=extra
            )
            # besides rich's 10 Hz redraw, draw each new stage and each tenth of one: a fast
            # stage still shows its steps
            step = (self.subject, stage, done * 10 // total if total else -1)
            if step != self._drawn:
                self._drawn = step
                self._bar.refresh()
            return
        now = time.monotonic()
        if self.quiet or now < self._quiet_until:
            return
        key = f"{self.subject}\0{stage}"
        finished = total is not None and done >= total > 0
        if key != self._stage or now - self._last >= self.every or finished:
            self._stage, self._last = key, now
            tail = f" ({extra})" if extra else ""
            print(f"{stamp()} {self._name(stage)} {done:,}{of}{tail}", file=self.stream, flush=True)

    def line(self, text: str) -> None:
        """A summary line: above the bar on a terminal, a plain line on stdout otherwise
        (progress is stderr's; the summary is the job's output), timestamped."""
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(f"{stamp()} {text}", flush=True)


def stamp() -> str:
    """Now as an ISO-8601 UTC timestamp to the second: ``2026-12-07T10:00:00Z``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
