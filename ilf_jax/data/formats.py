"""The paper's text formats: task prompt, test block, refinement prompt, fine-tuning pair, completion cut.

They follow the reference code (nyu-mll/ILF-for-code-generation) byte for byte, so that prompts match
the annotation file's `prompt` field and a sampled completion is cut where the reference cut it.
"""

from __future__ import annotations

import re

from ilf_jax.data.task import Task

EOS = "<|endoftext|>"
_END_OF_FUNCTION = re.compile(r'\n[A-Za-z#"]')


def _first_call_name(assert_stmt: str) -> str:
    """The reference's entry-point guess: the text between `assert ` and the first `(`."""
    return assert_stmt.split("assert ")[-1].split("(")[0]


def task_prompt(task: Task) -> str:
    """Docstring (text + first test as `>>> Example:`), blank line, gold code up to the tested `def` line."""
    first = task.test_list[0]
    example = first.split("assert ")[-1].replace("==", "=")
    head = f'"""\n{task.text}\n\n>>> Example: {example}\n"""\n\n'
    m = re.search(rf"def {re.escape(_first_call_name(first))}\(.*\):", task.code)
    if m is None:  # the reference skipped these 55 tasks (e.g. `def f(x) :`); we match leniently instead
        m = re.search(rf"def\s+{re.escape(task.entry_point)}\s*\(.*\)\s*(?:->[^:\n]*)?:", task.code)
    if m is None:
        raise ValueError(f"task {task.task_id}: no `def {task.entry_point}(...):` line in the gold code")
    return f"{head}{task.code[: m.end()]}\n"


def _is_float(text: str) -> bool:
    """True when `text` parses as a Python float (the reference's test for wrapping in approx)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_block(task: Task) -> str:
    """The `def check(candidate):` block: one tab-indented assert a line, each with its own text as message."""
    tests = list(task.test_list)
    head = "def check(candidate):\n"
    if _is_float(tests[0].split("==")[-1]):
        head = "from pytest import approx\n\n" + head
        tests = ["==".join(t.split("==")[:-1] + [f"approx({t.split('==')[-1]})"]) for t in tests]
    lines = []
    for t in tests:
        t = t.replace(task.entry_point, "candidate")
        body = t[len("assert "):] if t.startswith("assert ") else t
        lines.append(f'\t{t}, "{body.replace(chr(34), chr(92) + chr(34))}"')
    return head + "\n".join(lines)


def fix_indentation(completion: str) -> str:
    """Give the first line of a function body back its 4-space indent when the model dropped it."""
    if completion.startswith("    "):
        return completion
    end = completion.find("\n")
    if end < 0:
        return "    " + completion.strip()
    return "    " + completion[:end].strip() + completion[end:]


def truncate_completion(text: str) -> str:
    """Cut generated text (after the prompt) at EOS and at the end of the function body (reference rule)."""
    if EOS in text:
        text = text[: text.find(EOS)]
    text = fix_indentation(text)
    m = _END_OF_FUNCTION.search(text)
    return text[: m.start() + 1] if m else text


def program(task: Task, completion: str) -> str:
    """The program that gets tested: task prompt + (cut) completion."""
    return task_prompt(task) + completion


def refinement_prompt(old_program: str, feedback: str) -> str:
    """pi_Refine's input: old program, feedback, and the header after which the refinement follows."""
    return f"OLD CODE:\n{old_program}\n\nFEEDBACK:\n{feedback}\n\nREFINEMENT:\n"


def finetuning_pair(task: Task, completion: str) -> tuple[str, str]:
    """(input, target) for fine-tuning pi_theta*: the task prompt and the refined completion (EOS added later)."""
    return task_prompt(task), completion
