"""Pure text builders for the pipeline: completions of full programs, training examples, few-shot prompts."""

from __future__ import annotations

import random
import re
from typing import Sequence

from ilf_jax.data.formats import EOS, refinement_prompt, task_prompt
from ilf_jax.data.task import Task
from ilf_jax.train.data import Example

FEEDBACK_HEADER = "FEEDBACK:\n"


def body_of(program: str, task: Task) -> str:
    """The function body of a full program: the text after the task's prompt, or after its tested `def` line."""
    prompt = task_prompt(task)
    if program.startswith(prompt):
        return program[len(prompt):]
    last = None
    for last in re.finditer(rf"^def\s+{re.escape(task.entry_point)}\s*\(.*\n", program, flags=re.M):
        pass
    return program[last.end():] if last else program


def gold_completion(task: Task) -> str:
    """The MBPP gold solution's body (what follows the task prompt's code part)."""
    return body_of(task.code if task.code.endswith("\n") else task.code + "\n", task)


def program_of(task: Task, completion: str) -> str:
    """The tested program: task prompt + completion."""
    return task_prompt(task) + completion


def refine_sampling_prompt(task: Task, old_program: str, feedback: str) -> str:
    """pi_Refine's sampling input: the refinement prompt, then the task prompt, so that the body follows."""
    return refinement_prompt(old_program, feedback) + task_prompt(task)


def refine_example(task: Task, old_program: str, feedback: str, refinement: str) -> Example:
    """pi_Refine's training pair: old code (truncatable) + feedback -> task prompt + refined body."""
    prompt = refinement_prompt(old_program, feedback)
    head, old = "OLD CODE:\n", old_program
    return Example(prompt=prompt[len(head) + len(old):], target=program_of(task, body_of(refinement, task)),
                   truncatable=old, prefix=head)


def finetune_example(task: Task, completion: str) -> Example:
    """pi_theta*'s training pair: task prompt -> completion."""
    return Example(prompt=task_prompt(task), target=completion)


def fewshot_refine_prompt(shots: Sequence[tuple[str, str, str]], task: Task, old_program: str, feedback: str) -> str:
    """Few-shot refinement without fine-tuning: (old, feedback, refinement) shots, then the target prompt."""
    parts = [refinement_prompt(old, fb) + ref.rstrip("\n") + "\n" + EOS for old, fb, ref in shots]
    return "".join(parts) + refine_sampling_prompt(task, old_program, feedback)


def _feedback_block(old_program: str, error: str) -> str:
    return f"OLD CODE:\n{old_program}\n\nERROR:\n{error.strip() or '(no error text)'}\n\n{FEEDBACK_HEADER}"


def feedback_prompt(shots: Sequence[tuple[str, str, str]], old_program: str, error: str) -> str:
    """Few-shot prompt asking a model to write feedback: (old, error, feedback) shots, then the target."""
    parts = [_feedback_block(old, err) + fb.strip() + "\n\n" + EOS for old, err, fb in shots]
    return "".join(parts) + _feedback_block(old_program, error)


def cut_feedback(text: str) -> str:
    """Generated feedback up to EOS or the first blank line, stripped."""
    text = text.split(EOS, 1)[0]
    return text.split("\n\n", 1)[0].strip()


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) with no fixed point (identity for n < 2)."""
    if n < 2:
        return list(range(n))
    rng = random.Random(seed)
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return perm
