"""A small byte-level BPE tokenizer trained on the demo corpus, exposed through transformers' API."""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
EOS_ID = 0  # the only special token, added first
DEFAULT_VOCAB_SIZE = 1024


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE,
                    model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE (lossless, indentation merged into few tokens) on `texts`.

    Newlines are always tokens of their own, so a prompt ending in a newline (the paper's task
    prompt does) tokenizes as a prefix of prompt + completion: no merge crosses that boundary.

    Training is deterministic for the same texts in the same order, so a seeded corpus gives a
    seeded tokenizer.
    """
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    if core.token_to_id(EOS) != EOS_ID:
        raise AssertionError(f"{EOS} got id {core.token_to_id(EOS)}, expected {EOS_ID}")
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=EOS, clean_up_tokenization_spaces=False,
                                   model_max_length=model_max_length)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike) -> None:
    """Write the tokenizer so that `transformers.AutoTokenizer.from_pretrained(directory)` loads it."""
    tokenizer.save_pretrained(os.fspath(directory))


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a tokenizer written by `save_tokenizer`."""
    return AutoTokenizer.from_pretrained(os.fspath(directory))
