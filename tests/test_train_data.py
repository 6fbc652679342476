"""Train config, truncation, loss masks on batches, deterministic epoch order, JSONL reading."""

import json

import numpy as np
import pytest

from ilf_jax.errors import IlfError
from ilf_jax.train import Example, TrainConfig, encode_examples, read_jsonl
from ilf_jax.train import data as D
from tests.helpers import tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from ilf_jax.model.store import load_tokenizer

    return load_tokenizer(tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def test_config_from_dict():
    cfg = TrainConfig.from_dict({"learning_rate": 1e-5, "batch_size": 64, "mesh": [2, 2, 2], "warmup_steps": 0.1})
    assert cfg.batch_size == 64 and cfg.mesh == (2, 2, 2) and cfg.warmup_for(100) == 10
    assert TrainConfig.from_dict({"mesh": "1,-1,1"}).mesh == (1, -1, 1)
    assert TrainConfig().max_length == 1024 and TrainConfig().max_target_length == 512
    with pytest.raises(IlfError, match="unknown key.*lerning_rate"):
        TrainConfig.from_dict({"lerning_rate": 1e-5})
    with pytest.raises(IlfError, match="batch_size"):
        TrainConfig.from_dict({"batch_size": "32"})
    with pytest.raises(IlfError, match="multiple"):
        TrainConfig.from_dict({"batch_size": 32, "micro_batch_size": 5})
    with pytest.raises(IlfError, match="schedule"):
        TrainConfig.from_dict({"schedule": "step"})


def test_pieces_join_without_sentencepiece_dummy_spaces(tmp_path):
    """With a SentencePiece-style tokenizer, prompt and target tokens join into exactly their text
    (each piece tokenized alone would gain a dummy space); the target starts where the prompt ends."""
    from ilf_jax.model.store import load_tokenizer
    from ilf_jax.model.tokens import decode_continuation
    from tests.helpers import sentencepiece_tokenizer

    sp = load_tokenizer(sentencepiece_tokenizer(tmp_path / "sp"))
    ex = Example("\n\nFEEDBACK:\nfix it\n", "    return x\n", truncatable="def f(x):\n    return x + 1\n", prefix="OLD CODE:\n")
    (e,) = encode_examples(sp, [ex], 512, 64)
    text = sp.decode(e.tokens.tolist()[:-1], skip_special_tokens=False)
    assert text == ex.prefix + ex.truncatable + ex.prompt + ex.target
    assert decode_continuation(sp, e.tokens.tolist()[e.n_prompt : -1]) == ex.target
    naive = sp(ex.target, add_special_tokens=False)["input_ids"]
    assert decode_continuation(sp, naive) == " " + ex.target  # what the pieces would gain otherwise


def test_truncation_cuts_old_code_first_then_prompt_left(tok):
    eos = tok.eos_token_id
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefix, old, rest, target = "OLD CODE:\n", "def f(x):\n    return x + 1\n" * 3, "\n\nFEEDBACK:\nfix it\n\nREFINEMENT:\n", "def f(x):\n    return x\n"
    p, c, q, y = ids(prefix), ids(old), ids(rest), ids(target)
    ex = Example(rest, target, truncatable=old, prefix=prefix)
    full = len(p) + len(c) + len(q) + len(y) + 1
    # Fits: nothing cut, EOS appended.
    (e,) = encode_examples(tok, [ex], full, len(y) + 1)
    assert e.tokens.tolist() == p + c + q + y + [eos] and e.n_prompt == len(p) + len(c) + len(q)
    # 5 tokens too long: the old code loses its last 5 tokens, prefix and feedback intact.
    (e,) = encode_examples(tok, [ex], full - 5, len(y) + 1)
    assert e.tokens.tolist() == p + c[:-5] + q + y + [eos]
    # Longer than old code: old code gone, then the prompt keeps its last tokens.
    budget = len(q) - 2 + len(y) + 1
    (e,) = encode_examples(tok, [ex], budget, len(y) + 1)
    assert e.tokens.tolist() == (p + q)[-(len(q) - 2):] + y + [eos]
    # Target over max_target_length: cut, and no EOS (it did not end there).
    (e,) = encode_examples(tok, [ex], 4096, 4)
    assert e.tokens.tolist()[-4:] == y[:4] and e.length == len(p) + len(c) + len(q) + 4


def test_batch_weights_cover_exactly_the_target(tok):
    exs = [Example("def add(a, b):\n", "    return a + b\n"), Example("for i in range(10):\n", "    print(i)\n")]
    enc = encode_examples(tok, exs, 64, 32)
    b = D.make_batch(enc, [0, 1], 3, 64)
    for r, ex in enumerate(exs):
        w = b["weights"][r].astype(bool)
        assert tok.decode(b["targets"][r][w]) == ex.target + "<|endoftext|>"
        assert (b["targets"][r, :-1][b["valid"][r, 1:]] == b["tokens"][r, 1:][b["valid"][r, 1:]]).all()  # next-token shift
    assert not b["weights"][2].any() and not b["valid"][2].any()  # filler row


def test_epoch_order_deterministic_and_complete():
    lengths = list(np.random.default_rng(0).integers(5, 200, size=53))
    for group in (False, True):
        e0 = D.epoch_steps(lengths, 8, seed=3, epoch=0, group_by_length=group)
        assert [list(s) for s in e0] == [list(s) for s in D.epoch_steps(lengths, 8, 3, 0, group)]
        assert len(e0) == D.steps_per_epoch(53, 8) and sorted(np.concatenate(e0).tolist()) == list(range(53))
        assert all(len(s) == 8 for s in e0[:-1]) and len(e0[-1]) == 5
        e1 = D.epoch_steps(lengths, 8, seed=3, epoch=1, group_by_length=group)
        assert [list(s) for s in e0] != [list(s) for s in e1]
    # Grouping by length pads less.
    pad = lambda steps: sum(max(lengths[i] for i in s) * len(s) for s in steps)  # noqa: E731
    assert pad(D.epoch_steps(lengths, 8, 3, 0, True)) < 0.8 * pad(D.epoch_steps(lengths, 8, 3, 0, False))


def test_read_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "b", "truncatable": "old"}) + "\n\n" + json.dumps({"prompt": "c", "completion": "d"}) + "\n")
    assert read_jsonl(path) == [Example("a", "b", truncatable="old"), Example("c", "d")]
    path.write_text(json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(IlfError, match=r"d.jsonl: line 1: field 'completion'"):
        read_jsonl(path)
