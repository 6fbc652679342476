"""The MBPP end-of-function stop rule on token ids, from per-vocabulary tables.

The paper's evaluator cuts a completion at `<|endoftext|>` and at the first newline followed by
a non-indented line that starts with a letter, `#` or `"` (`ilf_jax.data.formats.truncate_completion`).
On device we only see token ids, so each vocabulary entry's decoded text is summarised once:

- `inside`: the token's own text contains `\\n` followed by a stop character;
- `starts`: its first character is a stop character;
- `ends_nl`: its last character is `\\n`;
- `empty`: it decodes to nothing (a row's "last character was a newline" state passes through).

A row stops on the token where `inside | (after_newline & starts)` holds; the newline and the
next character may come from different tokens. Decoding is concatenative for these ASCII
characters (byte-level BPE), so the device stop never falls before the reference cut; the host
then cuts the decoded text with `truncate_completion`, which makes the returned text exact.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

STOP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ#\"")
_INSIDE = re.compile(r'\n[A-Za-z#"]')


@dataclasses.dataclass(frozen=True)
class StopTables:
    """Per-token booleans (each [vocab]) that drive the on-device stop rule."""

    inside: np.ndarray
    starts: np.ndarray
    ends_nl: np.ndarray
    empty: np.ndarray

    @classmethod
    def from_texts(cls, texts: list[str], vocab_size: int) -> StopTables:
        """Tables from each id's decoded text; ids beyond `texts` (embedding padding) decode to ''."""
        texts = list(texts[:vocab_size]) + [""] * max(0, vocab_size - len(texts))
        return cls(
            inside=np.array([bool(_INSIDE.search(t)) for t in texts]),
            starts=np.array([bool(t) and t[0] in STOP_CHARS for t in texts]),
            ends_nl=np.array([t.endswith("\n") for t in texts]),
            empty=np.array([t == "" for t in texts]),
        )

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, vocab_size: int) -> StopTables:
        return cls.from_texts(token_texts(tokenizer, vocab_size), vocab_size)

    def device(self) -> dict[str, jax.Array]:
        return {f.name: jnp.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}


def token_texts(tokenizer: Any, vocab_size: int) -> list[str]:
    """The decoded text of every id below `vocab_size` ('' for ids the tokenizer does not know)."""
    n = min(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return list(texts) + [""] * (vocab_size - n)


def stop_update(tables: dict[str, jax.Array], token: jax.Array, after_nl: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(stop [B], new after_newline [B]) after appending `token` [B] to rows whose last char state is `after_nl`."""
    stop = tables["inside"][token] | (after_nl & tables["starts"][token])
    after = tables["ends_nl"][token] | (after_nl & tables["empty"][token])
    return stop, after


def host_stop_index(texts: list[str], tokens: list[int]) -> int | None:
    """Reference of the device rule on the host: index of the token on which a row stops, or None."""
    after = False
    for i, t in enumerate(tokens):
        text = texts[t] if t < len(texts) else ""
        if _INSIDE.search(text) or (after and text[:1] in STOP_CHARS and text):
            return i
        after = text.endswith("\n") or (after and text == "")
    return None
