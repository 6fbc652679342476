"""The paper's formats against the annotation file, byte for byte, and the reference's completion cut."""

from __future__ import annotations

import json

import pytest

from ilf_jax.data import formats
from ilf_jax.data.formats import (EOS, finetuning_pair, fix_indentation, program, refinement_prompt, task_prompt,
                                  truncate_completion)
from ilf_jax.data.mbpp import load_mbpp

CORRUPTED_TEXT = {260, 679}  # U+FFFD in the annotation file's copy of the MBPP text
HAND_EDITED_TESTS = {301, 326, 679}  # indentation / dropped messages edited by hand in the file


@pytest.fixture(scope="module")
def data(shared_data):
    tasks = load_mbpp(shared_data / "mbpp" / "mbpp.jsonl")
    rows = [json.loads(line) for line in (shared_data / "ilf" / "surge_annotations.jsonl").open()]
    return tasks, rows


def test_task_prompt_matches_annotation_file(data):
    tasks, rows = data
    wrong = [r["task_id"] for r in rows if task_prompt(tasks[r["task_id"]]) != r["prompt"]]
    assert sorted(wrong) == sorted(CORRUPTED_TEXT)


def test_task_prompt_shape_and_every_task(data):
    tasks, _ = data
    p = task_prompt(tasks[1])
    assert p.startswith('"""\nWrite a function to find the minimum cost path')
    assert ">>> Example: min_cost([[1, 2, 3], [4, 8, 2], [1, 5, 3]], 2, 2) = 8\n\"\"\"\n\nR = 3\nC = 3\n" in p
    assert p.endswith("def min_cost(cost, m, n):\n") and "\r" not in p
    assert task_prompt(tasks[14]).endswith("def find_Volume(l,b,h) :\n")  # the reference's regex skipped these
    assert all(task_prompt(t).endswith(":\n") for t in tasks.values())


def test_test_block_matches_annotation_file(data):
    tasks, rows = data
    wrong = [r["task_id"] for r in rows if formats.test_block(tasks[r["task_id"]]) != r["test"]]
    assert sorted(wrong) == sorted(HAND_EDITED_TESTS)
    assert sum(formats.test_block(tasks[r["task_id"]]).startswith("from pytest import approx\n\ndef check(candidate):\n")
               for r in rows) == 95


def test_truncate_completion():
    text = "    x = 1\n    return x\n\nprint(f(1))\ndef g():\n    pass" + EOS + "junk"
    assert truncate_completion(text) == "    x = 1\n    return x\n\n"
    assert truncate_completion("    return 1\n# comment\n") == "    return 1\n"
    assert truncate_completion('    return 1\n"""doc"""') == "    return 1\n"
    assert truncate_completion("    return 1\n    \n  # indented comment stays\n") == \
        "    return 1\n    \n  # indented comment stays\n"
    assert truncate_completion("    return 1\n_private = 2\n") == "    return 1\n_private = 2\n"  # as the reference
    assert truncate_completion("return 1" + EOS) == "    return 1"
    assert truncate_completion("  return 1\n  x") == "    return 1\n  x"


def test_fix_indentation():
    assert fix_indentation("    ok\n") == "    ok\n"
    assert fix_indentation("\tx = 1\n\treturn x") == "    x = 1\n\treturn x"
    assert fix_indentation("") == "    "


def test_refinement_prompt_and_pairs(data):
    tasks, _ = data
    old = program(tasks[2], "    return 0\n")
    assert refinement_prompt(old, "wrong value") == f"OLD CODE:\n{old}\n\nFEEDBACK:\nwrong value\n\nREFINEMENT:\n"
    assert finetuning_pair(tasks[2], "    return 1\n") == (task_prompt(tasks[2]), "    return 1\n")


REFERENCE_SKIPS = {14, 32, 36, 57, 77, 107, 112, 119, 134, 148, 155, 160, 181, 203, 204, 221, 304, 314, 318, 349,
                   350, 377, 383, 392, 435, 453, 479, 485, 509, 545, 549, 555, 556, 575, 595, 600, 626, 633, 655, 657,
                   664, 683, 699, 707, 741, 769, 770, 781, 803, 823, 838, 856, 877, 880, 887, 890, 903, 912, 927, 971}
# Tested gold programs that fail eval_mbpp.py's own test block: the tested function is named `check` and clashes
# with the test function (56 in MBPP_Test, 899, 967), `root` comes from the setup code it ignores (367).
REFERENCE_GOLD_FAILS = {56, 367, 899, 967}


def test_reference_def_matching_skips(data):
    tasks, rows = data
    skipped = {i for i, t in tasks.items() if formats.skipped_by_reference(t)}
    assert skipped == REFERENCE_SKIPS
    by_split = {s: sum(lo <= i <= hi for i in skipped) for s, (lo, hi) in
                {"test": (11, 110), "refine": (111, 310), "train": (311, 974)}.items()}
    assert by_split == {"test": 6, "refine": 11, "train": 43}  # MBPP_Test: 94 tasks in the reference
    assert not skipped & {r["task_id"] for r in rows}  # every annotated task has a reference prompt


def test_crlf_prompts_keep_the_reference_bytes(shared_data, data):
    lf, rows = data
    crlf = load_mbpp(shared_data / "mbpp" / "mbpp.jsonl", line_endings="crlf")
    assert sum("\r\n" in t.code for t in crlf.values()) == 972
    with_cr = {i for i, t in crlf.items() if "\r" in task_prompt(t) and i not in REFERENCE_SKIPS}
    assert len(with_cr) == 222 and sum(11 <= i <= 110 for i in with_cr) == 23
    assert all(task_prompt(crlf[i]).replace("\r\n", "\n") == task_prompt(lf[i]) for i in crlf)
    # the annotation file's prompts are LF: byte-equal to the reference's only where no CR precedes `def`
    same = {r["task_id"] for r in rows if task_prompt(crlf[r["task_id"]]) == r["prompt"]}
    assert len(same) == 127 and not same & with_cr
    with pytest.raises(ValueError, match="line_endings"):
        load_mbpp(shared_data / "mbpp" / "mbpp.jsonl", line_endings="cr")


def test_reference_test_block_is_eval_mbpp_format(data):
    tasks, _ = data
    assert formats.test_block(tasks[313], "reference") == (
        "def check(candidate):\n\tassert candidate([-1,-2,1,2]) == 1,2\n\tassert candidate([3,4,-5]) == 3,4\n"
        "\tassert candidate([-2,-3,1]) == 1\n\n")
    assert formats.test_block(tasks[847], "reference").endswith("\tassert candidate([4, 5, 6]) == [4, 5, 6]\n\n\n")
    assert formats.check_target(tasks[56], "reference") == "check"
    assert formats.test_block(tasks[124], "reference") == (
        "from pytest import approx\n\ndef check(candidate):\n\tassert candidate(0,1j)==approx(1.5707963267948966 )\n"
        "\tassert candidate(2,1j)==approx(0.4636476090008061)\n\tassert candidate(0,2j)==approx(1.5707963267948966)\n\n")
    with pytest.raises(ValueError, match="test style"):
        formats.test_block(tasks[2], "strict")


def test_valid_test_block_fixes_the_broken_tasks(data):
    tasks, _ = data
    assert formats.test_block(tasks[313]).split("\n")[1] == "\tassert candidate([-1,-2,1,2]) == 1,2"  # message kept
    assert formats.test_block(tasks[847]).endswith('\tassert candidate([4, 5, 6]) == [4, 5, 6], '
                                                   '"candidate([4, 5, 6]) == [4, 5, 6]"')
    assert "'No solution'" in formats.test_block(tasks[160])
    assert formats.test_block(tasks[56]).startswith(f"{formats.ENTRY_ALIAS} = check\n\ndef check(candidate):\n")
    assert formats.check_target(tasks[56]) == formats.ENTRY_ALIAS
    assert formats.test_block(tasks[367]).startswith("root = Node(1)")


def test_every_gold_program_passes_the_valid_test_block(data):
    from ilf_jax.execute import Executor, job_for_program

    tasks, _ = data
    with Executor(workers=2, timeout=10.0) as ex:
        valid = ex.run([job_for_program(t, t.code, str(i)) for i, t in tasks.items()])
        reference = ex.run([job_for_program(t, t.code, str(i), test_style="reference") for i, t in tasks.items()
                            if i not in REFERENCE_SKIPS])
    assert [(r.id, r.verdict, r.error[-200:]) for r in valid if not r.passed] == []
    assert {int(r.id) for r in reference if not r.passed} == REFERENCE_GOLD_FAILS
    with pytest.raises(ValueError, match="task 769: the reference skips"):
        formats.test_block(tasks[769], "reference")
