"""The demo's byte-level BPE tokenizer: lossless, compact indentation, loadable with AutoTokenizer."""

import pytest
import transformers

from ilf_jax.demo import tasks
from ilf_jax.demo.tokenizer import EOS, EOS_ID, load_tokenizer, save_tokenizer, train_tokenizer


def document(task):
    """A pretraining document: the prompt and the corpus-idiom program (what the tokenizer is trained on)."""
    call, expected = task.test_list[0].removeprefix("assert ").split(" == ", 1)
    return f'"""\n{task.text}\n\n>>> Example: {call} = {expected}\n"""\n\n{tasks.corpus_reference(task.code)}'


@pytest.fixture(scope="module")
def docs():
    split = tasks.generate_tasks(5, n_refine=100, n_train=200, n_test=50)
    return [document(t) for s in split.values() for t in s]


@pytest.fixture(scope="module")
def tok(docs):
    return train_tokenizer(docs, vocab_size=512)


def test_special_token_and_sizes(tok):
    assert len(tok) == 512
    assert tok.convert_tokens_to_ids(EOS) == EOS_ID == tok.eos_token_id == tok.pad_token_id
    assert tok(EOS)["input_ids"] == [EOS_ID]


def test_round_trip_and_compact_indentation(tok, docs):
    for d in docs + [d + EOS for d in docs[:5]]:
        assert tok.decode(tok(d)["input_ids"]) == d
    assert len(tok("\n    return")["input_ids"]) <= 3
    assert max(len(tok(d)["input_ids"]) for d in docs) < 160


def test_training_is_deterministic(tok, docs):
    assert train_tokenizer(docs, vocab_size=512).get_vocab() == tok.get_vocab()


def test_save_and_load_with_auto_tokenizer(tok, docs, tmp_path):
    save_tokenizer(tok, tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).get_vocab() == loaded.get_vocab() == tok.get_vocab()
    assert loaded.eos_token == EOS and loaded.pad_token_id == EOS_ID
    assert [loaded(d)["input_ids"] for d in docs[:20]] == [tok(d)["input_ids"] for d in docs[:20]]


def test_prompt_tokens_are_a_prefix_of_prompt_plus_completion(tok):
    """The task prompt ends in a newline: no BPE merge may cross into the completion."""
    from ilf_jax.data.formats import task_prompt
    from ilf_jax.demo.corpus import body
    from ilf_jax.demo.tasks import generate_tasks

    for task in generate_tasks(0, n_refine=10, n_train=10, n_test=10)["test"]:
        prompt = tok(task_prompt(task))["input_ids"]
        assert tok(task_prompt(task) + body(task.code))["input_ids"][: len(prompt)] == prompt
