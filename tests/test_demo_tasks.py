"""The generated demo task family, its bug patterns and the pretraining corpus."""

import ast
import difflib
import importlib
import random
import re
import sys
import types

import pytest

from helpers import passes_own_asserts as passes

from ilf_jax.data.annotations import levenshtein
from ilf_jax.demo import corpus, tasks
from ilf_jax.demo.annotator import _TOKEN, MIN_SIMILARITY
from ilf_jax.demo.bugs import BUGS, applicable_bugs, buggy_code


def expected_prompt(task):
    """The documented task prompt (ILF_REFERENCE.md, "Prompt formats"), written out locally."""
    call, expected = task.test_list[0].removeprefix("assert ").split(" == ", 1)
    return f'"""\n{task.text}\n\n>>> Example: {call} = {expected}\n"""\n\n{task.code.split(chr(10), 1)[0]}\n'



@pytest.fixture(scope="module")
def splits():
    return tasks.generate_tasks(0, n_refine=30, n_train=80, n_test=40)


@pytest.fixture
def formats(monkeypatch):
    """`ilf_jax.data.formats`, or while it is not written yet a stand-in with the documented format."""
    try:
        return importlib.import_module("ilf_jax.data.formats")
    except ImportError:
        stand_in = types.ModuleType("ilf_jax.data.formats")
        stand_in.task_prompt = expected_prompt
        monkeypatch.setitem(sys.modules, "ilf_jax.data.formats", stand_in)
        return stand_in


def test_split_ids_and_shapes(splits):
    ranges = tasks.split_ranges(30, 80, 40)
    assert list(splits) == ["refine", "train", "test"]
    for name, split in splits.items():
        assert [t.task_id for t in split] == list(ranges[name])
    assert ranges["test"].start == 11 and ranges["refine"].start == 51 and ranges["train"].stop == 161
    for t in (t for s in splits.values() for t in s):
        assert len(t.test_list) == 3 and all(a.startswith(f"assert {t.entry_point}(") for a in t.test_list)
        assert "\r" not in t.code and t.text.startswith("Write a ")
        assert tasks.corpus_reference(t.code).count("\n") == 2  # the corpus idiom is one `return` line


def test_references_pass_and_bugs_fail(splits):
    rng = random.Random(0)
    seen = set()
    for t in (t for s in splits.values() for t in s):
        idiom = tasks.corpus_reference(t.code)
        assert passes(t.code, t) and passes(idiom, t), t
        bugs = applicable_bugs(idiom)
        seen.update(b.name for b in bugs)
        if bugs:
            assert not passes(buggy_code(idiom), t), t
            partial = buggy_code(idiom, rng, 0.5)
            assert partial == idiom or not passes(partial, t), t
    assert seen == {b.name for b in BUGS}


def _code_tokens(body):
    """Non-space tokens of a body, as the annotator's diff splits it."""
    return [tok for tok in _TOKEN.findall(body) if not tok.isspace()]


def test_gold_is_written_in_another_idiom_than_the_corpus(splits):
    """Every gold passes its asserts but is far from the corpus idiom (the annotator's edit target): below
    the similarity at which the annotator would rather rewrite than patch, and at least 10 token edits
    away where each taught bug is at most 2; no comprehension, no corpus variable names x / s."""
    styles = set()
    for t in (t for s in splits.values() for t in s):
        idiom = tasks.corpus_reference(t.code)
        a, b = _code_tokens(corpus.body(idiom)), _code_tokens(corpus.body(t.code))
        assert passes(t.code, t), t
        assert difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() < MIN_SIMILARITY, t.code
        assert levenshtein(a, b) >= 10, t.code
        assert levenshtein(a, _code_tokens(corpus.body(buggy_code(idiom)))) <= 2 * len(applicable_bugs(idiom))
        nodes = list(ast.walk(ast.parse(t.code)))
        assert not any(isinstance(n, (ast.GeneratorExp, ast.ListComp)) for n in nodes), t.code
        assert not {n.id for n in nodes if isinstance(n, ast.Name)} & {"x", "s"}, t.code
        styles.add("functional" if "lambda" in t.code else "while" if "while" in t.code else "for")
    assert styles == {"functional", "while", "for"}


def test_corpus_reference_recovers_the_spec_and_refuses_other_code(splits):
    t = splits["train"][0]
    assert tasks.corpus_reference(t.code).split("\n", 1)[0] == t.code.split("\n", 1)[0]
    with pytest.raises(ValueError, match="not the gold program"):
        tasks.corpus_reference(tasks.corpus_reference(t.code))
    with pytest.raises(ValueError, match="not the gold program"):
        tasks.corpus_reference("def mystery(nums):\n    return 1\n")


def test_test_tasks_are_new_instances_of_train_templates(splits):
    seen = {t.code for t in splits["train"] + splits["refine"]}
    assert all(t.code not in seen for t in splits["test"])
    train_names = {t.entry_point for t in splits["train"]}  # one function name per template
    assert all(t.entry_point in train_names for t in splits["test"])
    assert len({t.code for s in splits.values() for t in s}) == 150


def test_generation_is_seeded(splits):
    assert tasks.generate_tasks(0, 30, 80, 40) == splits
    assert tasks.generate_tasks(1, 30, 80, 40) != splits


def test_corpus_documents_and_bug_rate(splits, formats):
    """Mostly one-line corpus-idiom bodies, about `gold_style_rate` in the gold styles; bugs taught in both."""
    held = [t for s in splits.values() for t in s]
    docs = corpus.pretraining_corpus(3, n_docs=600, bug_rate=0.85, gold_style_rate=0.2, exclude=held)
    assert docs == corpus.pretraining_corpus(3, n_docs=600, bug_rate=0.85, gold_style_rate=0.2, exclude=held)
    shape = re.compile(r'"""\n(Write a .+\.)\n\n>>> Example: (\w+)\(.+\) = .+\n"""\n\ndef (\w+)\(\w+\):\n((?:    .+\n)+)')
    held_texts = {t.text.replace(" python", "") for t in held}
    one_line = 0
    for doc in docs:
        m = shape.fullmatch(doc)
        assert m and m.group(2) == m.group(3), doc
        assert m.group(1).replace(" python", "") not in held_texts
        one_line += m.group(4).count("\n") == 1 and re.search(r" for [xs] in ", m.group(4)) is not None
    assert 0.7 < one_line / len(docs) < 0.9
    ranged = [d for d in docs if "from 1 to n" in d]
    buggy = sum("range(1, n)" in d or "< n:" in d for d in ranged) / len(ranged)
    assert 0.7 < buggy < 0.97 and len(ranged) > 40
    assert any("< n:" in d for d in ranged) and any("while i < n + 1:" in d for d in ranged)


def test_bugs_read_the_same_in_the_gold_idiom(splits):
    """A taught bug applies to the gold wherever it applies to the corpus idiom, and breaks it the same way."""
    for t in (t for s in splits.values() for t in s):
        idiom = tasks.corpus_reference(t.code)
        assert [b.name for b in applicable_bugs(t.code)] == [b.name for b in applicable_bugs(idiom)], t.code
        if applicable_bugs(idiom):
            assert not passes(buggy_code(t.code), t), t.code


def test_corpus_document_is_prompt_plus_body(splits, formats):
    t = splits["train"][0]
    assert corpus.document(t, t.code) == expected_prompt(t) + t.code.split("\n", 1)[1]
