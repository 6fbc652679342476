"""The MBPP end-of-function stop rule on token ids, from per-vocabulary tables.

The paper's evaluator cuts a completion at `<|endoftext|>` and at the first newline followed by
a non-indented line that starts with a letter, `#` or `"` (`ilf_jax.data.formats.truncate_completion`).
On device we only see token ids, so each vocabulary entry's decoded text is summarised once:

- `inside`: the token's own text contains `\\n` followed by a stop character;
- `starts`: its first character is a stop character;
- `ends_nl`: its last character is `\\n`;
- `empty`: it decodes to nothing (a row's "last character was a newline" state passes through);
- `byte` / `high`: it is a SentencePiece byte-fallback token (`<0x0A>`) / of a non-ASCII byte.

A row stops on the token where `inside | (after_newline & starts)` holds; the newline and the
next character may come from different tokens. Each token's text is its text in context
(`ilf_jax.model.tokens`: SentencePiece's `▁def` adds " def"), so these ASCII characters decode
concatenatively for byte-level BPE and SentencePiece-style tokenizers alike and the device stop
never falls before the reference cut; the host then cuts the decoded text with
`truncate_completion`, which makes the returned text exact.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ilf_jax.model.tokens import byte_fallback_values, token_texts

STOP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ#\"")
_INSIDE = re.compile(r'\n[A-Za-z#"]')


@dataclasses.dataclass(frozen=True)
class StopTables:
    """Per-token booleans (each [vocab]) that drive the on-device stop rule."""

    inside: np.ndarray
    starts: np.ndarray
    ends_nl: np.ndarray
    empty: np.ndarray
    byte: np.ndarray  # a byte-fallback token (`<0x0A>`)
    high: np.ndarray  # ... of a non-ASCII byte (part of a multi-byte character, or invalid)

    @classmethod
    def from_texts(cls, texts: list[str], vocab_size: int, byte_values: list[int] | None = None) -> StopTables:
        """Tables from each id's in-context text and byte-fallback value (-1: not a byte token);
        ids beyond `texts` (embedding padding) decode to ''."""
        texts = list(texts[:vocab_size]) + [""] * max(0, vocab_size - len(texts))
        values = np.full(vocab_size, -1)
        if byte_values is not None:
            values[: min(vocab_size, len(byte_values))] = byte_values[:vocab_size]
        return cls(
            inside=np.array([bool(_INSIDE.search(t)) for t in texts]),
            starts=np.array([bool(t) and t[0] in STOP_CHARS for t in texts]),
            ends_nl=np.array([t.endswith("\n") for t in texts]),
            empty=np.array([t == "" for t in texts]),
            byte=values >= 0,
            high=values >= 0x80,
        )

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, vocab_size: int) -> StopTables:
        texts = token_texts(tokenizer, vocab_size)
        return cls.from_texts(texts, vocab_size, byte_fallback_values(tokenizer, texts))

    def device(self) -> dict[str, jax.Array]:
        return {f.name: jnp.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}


# The per-row state: 0 nothing pending, 1 the text so far ends with a newline, 2 inside a run of
# byte-fallback tokens that holds a non-ASCII byte (a newline in it may decode to U+FFFD, so it
# does not count). Byte tokens never trigger a stop: a later byte of the same run can still turn
# the run's text into replacement characters. Both only ever delay a stop, never advance it.
NOTHING, AFTER_NEWLINE, TAINTED = 0, 1, 2


def initial_state(batch: int) -> jax.Array:
    """The stop state of `batch` rows before their first generated token."""
    return jnp.zeros((batch,), jnp.int8)


def stop_update(tables: dict[str, jax.Array], token: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(stop [B], new state [B]) after appending `token` [B] to rows in stop `state` [B]."""
    byte = tables["byte"][token]
    after = state == AFTER_NEWLINE
    stop = ~byte & (tables["inside"][token] | (after & tables["starts"][token]))
    ends_nl = tables["ends_nl"][token].astype(jnp.int8)
    ascii_byte = jnp.where(state == TAINTED, jnp.int8(TAINTED), ends_nl)
    text = jnp.where(tables["empty"][token], state, ends_nl)
    new = jnp.where(tables["high"][token], jnp.int8(TAINTED), jnp.where(byte, ascii_byte, text))
    return stop, new.astype(jnp.int8)


def host_stop_index(texts: list[str], tokens: list[int], byte_values: list[int] | None = None) -> int | None:
    """Reference of the device rule on the host: index of the token on which a row stops, or None."""
    state = NOTHING
    for i, t in enumerate(tokens):
        text = texts[t] if t < len(texts) else ""
        value = byte_values[t] if byte_values is not None and t < len(byte_values) else -1
        if value < 0 and (_INSIDE.search(text) or (state == AFTER_NEWLINE and text[:1] in STOP_CHARS and text)):
            return i
        if value >= 0x80:
            state = TAINTED
        elif value >= 0:
            state = TAINTED if state == TAINTED else (AFTER_NEWLINE if text.endswith("\n") else NOTHING)
        elif text:
            state = AFTER_NEWLINE if text.endswith("\n") else NOTHING
    return None


__all__ = ["STOP_CHARS", "StopTables", "byte_fallback_values", "host_stop_index", "initial_state", "stop_update", "token_texts"]
