"""The scripted annotator: specific feedback and minimal, verified refinements."""

import re

import pytest

from helpers import passes_own_asserts as passes

from ilf_jax.data.annotations import levenshtein
from ilf_jax.demo import tasks
from ilf_jax.demo.annotator import annotate
from ilf_jax.demo.bugs import applicable_bugs, buggy_code
from ilf_jax.demo.tasks import corpus_reference


def prompt(task):
    call, expected = task.test_list[0].removeprefix("assert ").split(" == ", 1)
    return f'"""\n{task.text}\n\n>>> Example: {call} = {expected}\n"""\n\n{task.code.split(chr(10), 1)[0]}\n'


def body(code):
    return code.split("\n", 1)[1]


def idiom(task):
    """The task's corpus-idiom program (what the base model writes and the annotator edits towards)."""
    return corpus_reference(task.code)



@pytest.fixture(scope="module")
def bugged():
    split = tasks.generate_tasks(0, n_refine=30, n_train=80, n_test=0)
    return [t for t in split["refine"] + split["train"] if applicable_bugs(idiom(t))][:24]


def test_refinements_of_bug_variants_are_minimal_and_pass(bugged):
    for t in bugged:
        program = prompt(t) + body(buggy_code(idiom(t)))
        a = annotate(t, program, "AssertionError")
        assert a is not None and not a.rewrote
        assert a.refinement == prompt(t) + a.completion and a.completion == body(idiom(t))
        assert a.completion != body(t.code)  # the minimal edit is not the independently written gold
        assert passes(a.refinement, t)
        assert levenshtein(a.refinement, program) <= 5 * len(applicable_bugs(idiom(t)))
        assert t.entry_point in a.feedback and "`" in a.feedback


def test_minimal_edit_keeps_harmless_differences():
    t = next(t for t in tasks.generate_tasks(2, 0, 120, 0)["train"] if "if x > " in idiom(t))
    mine = re.sub(r"if (x >= \d+)", r"if (\1)", body(buggy_code(idiom(t))))
    a = annotate(t, prompt(t) + mine)
    assert "if (x >= " in mine and not a.rewrote
    assert a.completion == mine.replace(">=", ">") and passes(a.refinement, t)
    assert "strictly greater" in a.feedback or "\"Greater than" in a.feedback or "equal to" in a.feedback


def test_feedback_wording_varies_and_is_deterministic(bugged):
    shapes = set()
    for t in bugged:
        program = prompt(t) + body(buggy_code(idiom(t)))
        fb = annotate(t, program).feedback
        assert annotate(t, program).feedback == fb
        shapes.add(re.sub(r"`[^`]*`|\d+|'[^']*'|\[[^\]]*\]", "", fb.split(". ", 1)[0]))
    assert len(shapes) >= 3
    t = bugged[0]
    program = prompt(t) + body(buggy_code(idiom(t)))
    assert len({annotate(t, program, seed=s).feedback for s in range(6)}) > 1


def test_passing_program_needs_no_annotation(bugged):
    t = bugged[0]
    assert annotate(t, prompt(t) + body(idiom(t))) is None
    assert annotate(t, prompt(t) + body(t.code)) is None  # the gold passes too


@pytest.mark.parametrize("completion", [
    "    return 0\n",
    "",
    "    while True:\n        pass\n",
    "    return sum(nums[\n",
])
def test_broken_programs_get_the_reference_and_say_so(bugged, completion):
    t = bugged[1]
    a = annotate(t, prompt(t) + completion, "some error")
    assert a.rewrote and a.completion == body(idiom(t)) and passes(a.refinement, t)
    assert " ".join(body(idiom(t)).split()) in a.feedback


def test_model_text_after_the_function_is_dropped(bugged):
    t = bugged[2]
    a = annotate(t, prompt(t) + body(buggy_code(idiom(t))) + "print('done')\n<|endoftext|>junk")
    assert a.completion == body(idiom(t)) and not a.rewrote
