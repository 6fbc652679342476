"""Crash injection for the resume tests: `ILF_KILL_AT=STAGE:N` SIGKILLs the process at a known point.

`STAGE` is a stage name (or a prefix ending in `*`); `N` counts records appended by that stage,
or logged training steps for a training stage. Unset (the normal case), nothing happens.
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
import signal
import threading
import time

ENV = "ILF_KILL_AT"


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV, "")
    if ":" not in spec:
        return None
    stage, _, count = spec.rpartition(":")
    return stage, int(count)


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after_records(stage: str, count: int) -> None:
    """Kill the process when `stage` has `count` >= N records and the injection names it."""
    target = _target()
    if target and fnmatch.fnmatchcase(stage, target[0]) and count >= target[1]:
        _kill()


def watch_training(stage: str, metrics: pathlib.Path) -> None:
    """Kill the process once `metrics` holds N step lines, when the injection names `stage`."""
    target = _target()
    if not (target and fnmatch.fnmatchcase(stage, target[0])):
        return

    def poll() -> None:
        while True:
            try:
                if sum(1 for line in metrics.read_text().splitlines() if line.strip()) >= target[1]:
                    _kill()
            except OSError:
                pass
            time.sleep(0.02)

    threading.Thread(target=poll, daemon=True).start()
