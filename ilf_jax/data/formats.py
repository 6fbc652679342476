"""The paper's text formats: task prompt, test block, refinement prompt, fine-tuning pair, completion cut.

They follow the reference code (nyu-mll/ILF-for-code-generation) byte for byte, so that prompts match
the annotation file's `prompt` field and a sampled completion is cut where the reference cut it.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize

from ilf_jax.data.task import Task

EOS = "<|endoftext|>"
_END_OF_FUNCTION = re.compile(r'\n[A-Za-z#"]')
TEST_STYLES = ("valid", "reference")  # test_block styles: valid for every task | eval_mbpp.py's bytes
ENTRY_ALIAS = "ilf_entry_point"  # what `check` is called with when the tested function is itself named `check`


def _first_call_name(assert_stmt: str) -> str:
    """The reference's entry-point guess: the text between `assert ` and the first `(`."""
    return assert_stmt.split("assert ")[-1].split("(")[0]


def reference_def_line(task: Task) -> re.Match[str] | None:
    """The reference's `def {name}\\(.*\\):` search in the gold code (name: the first assert's call), or None."""
    return re.search(rf"def {re.escape(_first_call_name(task.test_list[0]))}\(.*\):", task.code)


def skipped_by_reference(task: Task) -> bool:
    """True for the 60 MBPP tasks the reference drops because its `def` regex fails (e.g. `def f(x) :`)."""
    return reference_def_line(task) is None


def reference_entry_point(task: Task) -> str:
    """eval_mbpp.py's entry point: the first assert's text between `assert ` and the first `(`."""
    first = task.test_list[0][len("assert "):]
    return first[: first.index("(")] if "(" in first else first


def task_prompt(task: Task) -> str:
    """Docstring (text + first test as `>>> Example:`), blank line, gold code up to the tested `def` line."""
    first = task.test_list[0]
    example = first.split("assert ")[-1].replace("==", "=")
    head = f'"""\n{task.text}\n\n>>> Example: {example}\n"""\n\n'
    m = reference_def_line(task)
    if m is None:  # the reference skipped these 60 tasks (e.g. `def f(x) :`); we match leniently instead
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


def _approx_wrapped(tests: list[str]) -> tuple[str, list[str]]:
    """The reference's float rule: when the first assert's last `==` operand parses as a float, wrap every
    assert's last `==` operand in pytest's `approx(...)` (and import it)."""
    if not _is_float(tests[0].split("==")[-1]):
        return "", tests
    return "from pytest import approx\n\n", ["==".join(t.split("==")[:-1] + [f"approx({t.split('==')[-1]})"])
                                              for t in tests]


def _rename(stmt: str, old: str, new: str) -> str:
    """`stmt` with every name token `old` (not inside strings or attributes) replaced by `new`."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(stmt).readline))
    except (tokenize.TokenError, SyntaxError):
        return re.sub(rf"(?<![\w.]){re.escape(old)}(?!\w)", new, stmt)
    lines = stmt.split("\n")
    for i in reversed(range(len(tokens))):
        tok = tokens[i]
        after_dot = i > 0 and tokens[i - 1].string == "."
        if tok.type == tokenize.NAME and tok.string == old and not after_dot:
            (row, col), (_, end) = tok.start, tok.end
            lines[row - 1] = lines[row - 1][:col] + new + lines[row - 1][end:]
    return "\n".join(lines)


def _with_message(stmt: str) -> str:
    """An assert with its own text as message; unchanged when it already has one (`== 1,2` is `== 1` with
    message 2 in Python, which is what the gold code satisfies) or is not a single assert."""
    try:
        tree = ast.parse(stmt)
    except SyntaxError:
        return stmt
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert) or tree.body[0].msg is not None:
        return stmt
    body = stmt[len("assert "):] if stmt.startswith("assert ") else stmt
    out = f'{stmt}, "{body.replace(chr(34), chr(92) + chr(34))}"'
    try:
        ast.parse(out)
    except SyntaxError:
        return f"{stmt}, {body!r}"
    return out


def _reference_test_block(task: Task) -> str:
    """eval_mbpp.py's `format_test`, byte for byte: no messages, no setup code, a plain text replace of the entry
    point, and a tested function named `check` clashing with the test (56, 899, 967 never pass)."""
    if skipped_by_reference(task):
        raise ValueError(f"task {task.task_id}: the reference skips this task (its `def` regex fails), so it has no "
                         "reference test block; use tasks.def_match=reference with test style reference")
    head, tests = _approx_wrapped(list(task.test_list))
    text = head + "def check(candidate):\n" + "".join(f"\t{t}\n" for t in tests) + "\n"
    entry = reference_entry_point(task)
    if entry != "check":
        return text.replace(entry, "candidate")
    return text.replace(f"assert {entry}", "assert candidate")


def test_block(task: Task, style: str = "valid") -> str:
    """The `def check(candidate):` block run after the program, then `check(check_target(task, style))`.

    `valid` (default): one tab-indented assert a line, each with its own text as message (the annotation file's
    format), valid for every MBPP task: the tested name is renamed as a token (not inside strings), trailing
    newlines are dropped, asserts that already carry a message keep it, `test_setup_code` runs first, and a
    tested function named `check` is kept under another name. `reference`: eval_mbpp.py's exact text.
    """
    if style == "reference":
        return _reference_test_block(task)
    if style != "valid":
        raise ValueError(f"test style {style!r} must be one of {', '.join(TEST_STYLES)}")
    head, tests = _approx_wrapped([t.rstrip("\r\n") for t in task.test_list])
    if task.test_setup_code.strip():
        head += task.test_setup_code.strip() + "\n\n"
    if task.entry_point == "check":
        head += f"{ENTRY_ALIAS} = check\n\n"
    lines = [f"\t{_with_message(_rename(t, task.entry_point, 'candidate'))}" for t in tests]
    return head + "def check(candidate):\n" + "\n".join(lines)


def check_target(task: Task, style: str = "valid") -> str:
    """The name passed to `check(...)` after `test_block(task, style)`."""
    if style == "reference":
        return reference_entry_point(task)
    return ENTRY_ALIAS if task.entry_point == "check" else task.entry_point


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
