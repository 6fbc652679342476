"""Sandboxed parallel execution of untrusted programs against their unit tests (no JAX here).

    with Executor(workers=2, timeout=3.0) as ex:        # timeout: CPU seconds per job
        results = ex.run([Job("1", program, test_list=("assert f(1) == 2",))])   # input order
        # or ex.imap(jobs): results as they complete
    results[0].verdict   # one of VERDICTS; .passed, .error (text for feedback), .cpu_s, .duration_s, .isolation

Tests run in a judge that never runs program code; each program runs in its own sandbox
(pool.py, worker.py, judge.py, zygote.py, isolation.py describe how).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ilf_jax.execute.job import VERDICTS, Job, Result
    from ilf_jax.execute.pool import Executor
    from ilf_jax.execute.tasks import job_for_program, job_for_task

_EXPORTS = {"VERDICTS": "job", "Job": "job", "Result": "job", "Executor": "pool", "job_for_program": "tasks",
            "job_for_task": "tasks"}
__all__ = ["VERDICTS", "Executor", "Job", "Result", "job_for_program", "job_for_task"]


def __getattr__(name: str) -> Any:
    """The public names, imported on first use: each worker process imports this package too, and the
    modules it holds when it forks its zygote are copied by every job's fork (the caller's side stays out)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
