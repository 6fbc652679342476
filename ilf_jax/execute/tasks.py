"""Jobs built from MBPP tasks: a model program under the paper's test block, or a task's gold code."""

from __future__ import annotations

from ilf_jax.data.formats import check_target, test_block
from ilf_jax.data.task import Task
from ilf_jax.execute.job import Job


def job_for_program(task: Task, program: str, id: str, test_style: str = "valid") -> Job:  # noqa: A002
    """A full program (prompt + completion) tested the paper's way: test block + `check(entry_point)`."""
    return Job(id=id, program=program, test=test_block(task, test_style), entry_point=check_target(task, test_style))


def job_for_task(task: Task, id: str | None = None) -> Job:
    """The task's gold code under its raw MBPP asserts (setup code first)."""
    return Job(id=id or str(task.task_id), program=task.code, test_list=task.test_list,
               test_setup_code=task.test_setup_code)
