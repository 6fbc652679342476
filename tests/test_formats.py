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
