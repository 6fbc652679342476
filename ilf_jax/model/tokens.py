"""The text token ids add in context, for any tokenizer `AutoTokenizer` loads.

Byte-level BPE (CodeGen, Qwen2, Llama 3, DeepSeek-Coder) decodes concatenatively, but
SentencePiece-style decoders (Llama 2, CodeLlama: `▁` for spaces, `<0x0A>` byte fallback) drop
the leading space of a decoded sequence's first token, so `decode([▁def])` is "def" while the
same token after earlier text adds " def". Decoding after an anchor token and removing the
anchor's text gives the in-context text for every kind.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

_ANCHOR = "a"  # one plain token in every vocabulary, with no space of its own


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _anchor(tokenizer: Any) -> tuple[list[int], str]:
    ids = list(tokenizer.encode(_ANCHOR, add_special_tokens=False))
    return ids, _decode(tokenizer, ids)


def decode_continuation(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text `ids` add after earlier text (e.g. generated tokens after their prompt)."""
    anchor, prefix = _anchor(tokenizer)
    text = _decode(tokenizer, anchor + [int(i) for i in ids])
    return text[len(prefix):] if text.startswith(prefix) else _decode(tokenizer, ids)


def token_texts(tokenizer: Any, vocab_size: int) -> list[str]:
    """The in-context text of every id below `vocab_size` ('' for ids the tokenizer does not know)."""
    n = min(vocab_size, len(tokenizer))
    if n == 0:
        return [""] * vocab_size
    anchor, prefix = _anchor(tokenizer)
    texts = tokenizer.batch_decode([anchor + [i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    out = [t[len(prefix):] if t.startswith(prefix) else _decode(tokenizer, [i]) for i, t in enumerate(texts)]
    return out + [""] * (vocab_size - n)


def _adds_dummy_prefix(tokenizer: Any) -> bool:
    """Whether encoding a text on its own prepends a space (SentencePiece's `▁` dummy prefix)."""
    return decode_continuation(tokenizer, tokenizer.encode("x", add_special_tokens=False)) != "x"


def encode_continuations(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Ids of each text as it continues earlier text (a target after its prompt): the plain
    encoding, or, for a tokenizer that prepends a dummy space, the encoding after a newline
    (byte fallback, which no merge crosses) with the newline's ids removed."""
    if not texts:
        return []
    direct = [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    if not _adds_dummy_prefix(tokenizer):
        return direct
    nl = list(tokenizer.encode("\n", add_special_tokens=False))
    after = tokenizer(["\n" + t for t in texts], add_special_tokens=False)["input_ids"]
    return [list(a[len(nl):]) if list(a[: len(nl)]) == nl else d for a, d in zip(after, direct)]


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_fallback_values(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Per id below `len(texts)`: the byte of a byte-fallback token (`<0x0A>` -> 10, decoding to
    that byte rather than to its own spelling), else -1."""
    n = min(len(texts), len(tokenizer))
    out = [-1] * len(texts)
    for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(n))) if n else []):
        m = _BYTE_TOKEN.fullmatch(tok or "")
        if m and texts[i] != tok:
            out[i] = int(m.group(1), 16)
    return out
