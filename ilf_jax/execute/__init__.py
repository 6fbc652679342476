"""Sandboxed parallel execution of untrusted programs against their unit tests (no JAX here)."""

from ilf_jax.execute.job import VERDICTS, Job, Result
from ilf_jax.execute.pool import Executor
from ilf_jax.execute.tasks import job_for_program, job_for_task

__all__ = ["VERDICTS", "Executor", "Job", "Result", "job_for_program", "job_for_task"]
