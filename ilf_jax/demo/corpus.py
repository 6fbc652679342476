"""The base model's pretraining corpus: demo tasks in the sampling format, mostly buggy on the bug patterns."""

from __future__ import annotations

import random
from collections.abc import Iterable

from ilf_jax.data.task import Task
from ilf_jax.demo.bugs import buggy_code
from ilf_jax.demo.tasks import draw_task, gold_code, reference_code

CORPUS_FIRST_ID = 100_000  # corpus tasks never collide with split ids


def body(code: str) -> str:
    """The completion part of a generated program: everything after its `def` line."""
    return code.split("\n", 1)[1]


def document(task: Task, code: str) -> str:
    """One training document: the task prompt followed by the body of `code` (no EOS)."""
    from ilf_jax.data.formats import task_prompt  # late: the formats module is JAX-free but optional here

    return task_prompt(task) + body(code)


def pretraining_corpus(seed: int, n_docs: int = 4000, bug_rate: float = 0.85, gold_style_rate: float = 0.1,
                       exclude: Iterable[Task] = ()) -> list[str]:
    """`n_docs` prompt+completion documents of fresh task instances (none equal to `exclude`).

    Bodies are in the corpus idiom (`reference_code`, the model's own style), except a fraction
    `gold_style_rate` written in the gold styles (`gold_code`): the model knows their tokens, as
    CodeGen knows loops, without their being its habit. Each applicable bug pattern is applied
    with probability `bug_rate` in either idiom, so the base model learns the systematic mistakes
    but still puts some mass on the correct program.
    """
    rng = random.Random(seed)
    used = {t.code for t in exclude}
    docs = []
    for i in range(n_docs):
        spec, task = draw_task(rng, CORPUS_FIRST_ID + i, used)
        code = gold_code(spec) if rng.random() < gold_style_rate else reference_code(spec)
        docs.append(document(task, buggy_code(code, rng, bug_rate)))
    return docs
