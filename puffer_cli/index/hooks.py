"""Test hooks of the index build: ``PUFFER_INDEX_CRASH_AT=point`` SIGKILLs the process
at that point, ``PUFFER_INDEX_PAUSE_AT=point:seconds`` sleeps there (to force overlaps).
The SIGKILL tests (tests/test_index_process.py) walk :data:`CRASH_POINTS`."""

from __future__ import annotations

import os
import signal
import time

from puffer_cli import config


def crash(point: str) -> None:
    """SIGKILL or pause here if the environment asks for ``point`` (see the module docstring)."""
    env = config.from_env()
    if env.index_crash_at == point:
        os.kill(os.getpid(), signal.SIGKILL)
    pause = env.index_pause_at
    if pause.startswith(point + ":"):
        time.sleep(float(pause.split(":", 1)[1]))


CRASH_POINTS = (
    "after_lease",
    "after_fold",
    "after_book",
    "after_cut",
    "mid_segment",
    "mid_filter_codes",
    "mid_fts",
    "after_segment",
    "after_stack",
    "after_bm25",
    "after_pack",
    "after_manifest",
    "after_publish",
    "mid_gc",
)
