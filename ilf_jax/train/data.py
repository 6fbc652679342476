"""Examples -> token sequences -> fixed-shape training batches, deterministically from a seed.

An `Example` is a (prompt, target) pair whose prompt may hold a part that is cut first when the
sequence is too long: the model input is `prefix + truncatable + prompt`, then `target + EOS`.
For pi_Refine that is `prefix="OLD CODE:\\n"`, `truncatable=<old program>`,
`prompt="\\n\\nFEEDBACK:\\n...\\n\\nREFINEMENT:\\n"`; for pi_theta it is just the task prompt.

Truncation (the reference script's rule, made consistent): the target plus EOS is capped at
`max_target_length` tokens (a cut target loses its EOS, since it did not end there); then, only
on the prompt side, the truncatable part loses tokens from its end (its start is kept, as the
reference keeps the start of the old code); if the prompt still does not fit, the remaining
prompt keeps its last tokens, the ones next to the target. The parts are tokenized separately,
as the reference does, and the loss covers only the target tokens.

Batches: each optimizer step takes `batch_size` examples of a per-epoch permutation drawn from
(seed, epoch); with `group_by_length`, examples are sorted by (noisy) length inside windows of
16 steps and the steps of the epoch are shuffled, so padding stays short. The padded length of a step
is its longest sequence rounded up to `length_multiple` (few distinct shapes, few compiles).
A step with fewer examples (the last of an epoch) is filled with rows that carry no loss; with
`remainder: carry` those leftovers instead join the next epoch's first update (`epoch_updates`),
which then has more micro-batches than `accum`.

Packing (`TrainConfig.packing`): the same examples of a step are first-fit, in the step's order,
into rows of `max_length`, with segment ids and per-example positions, so attention never
crosses examples and each example is computed as if it were alone in its row; the step's
weights are those of the padded step, so its loss and gradients are the same.
Weighting: "token" gives every target token of a step the same weight; "example" gives every
example the same weight (its mean target NLL), whatever its length.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np

from ilf_jax.errors import IlfError
from ilf_jax.jsonl import read_objects
from ilf_jax.model.tokens import encode_continuations

GROUP_WINDOW = 16  # steps per length-sorting window


@dataclasses.dataclass(frozen=True)
class Example:
    """A training pair: input text `prefix + truncatable + prompt`, loss on `target` (+ EOS)."""

    prompt: str
    target: str
    truncatable: str = ""  # cut first (from its end) when the sequence is too long
    prefix: str = ""  # kept before the truncatable part (e.g. "OLD CODE:\n")

    @property
    def input_text(self) -> str:
        return self.prefix + self.truncatable + self.prompt


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + target, and where the target starts."""

    tokens: np.ndarray  # int32 [L]
    n_prompt: int  # tokens[n_prompt:] are the target (incl. EOS when it fits)

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    out = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [list(x) for x in out]


def _piece_ids(tokenizer: Any, pieces: list[list[str]]) -> list[list[list[int]]]:
    """Ids of each example's consecutive text pieces: the first non-empty piece as the start of a
    text, the rest as continuations (no SentencePiece dummy space between pieces)."""
    plain = [_ids(tokenizer, list(col)) for col in zip(*pieces)]
    cont = [encode_continuations(tokenizer, list(col)) for col in zip(*pieces)]
    out = []
    for j, texts in enumerate(pieces):
        first = next((k for k, t in enumerate(texts) if t), len(texts))
        out.append([plain[k][j] if k <= first else cont[k][j] for k in range(len(texts))])
    return out


def eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise IlfError("tokenizer has no EOS token")
    return int(eos)


def encode_examples(tokenizer: Any, examples: Sequence[Example], max_length: int, max_target_length: int) -> list[Encoded]:
    """Tokenize and truncate (see the module docstring); every result has at least one target token."""
    eos = eos_id(tokenizer)
    out = []
    for p, c, q, y in _piece_ids(tokenizer, [[e.prefix, e.truncatable, e.prompt, e.target] for e in examples]):
        y = (y + [eos])[:max_target_length]
        budget = max_length - len(y)
        over = len(p) + len(c) + len(q) - budget
        if over > 0:
            cut = min(over, len(c))
            c = c[: len(c) - cut]
            over -= cut
        head = p + c + q
        if over > 0:
            head = head[over:]
        out.append(Encoded(np.asarray(head + y, np.int32), len(head)))
    return out


def fingerprint(encoded: Sequence[Encoded]) -> str:
    """A hash of the token data, stored in checkpoints so a resume refuses different data."""
    h = hashlib.sha256()
    for e in encoded:
        h.update(np.int64(e.n_prompt).tobytes())
        h.update(e.tokens.tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def steps_per_epoch(n_examples: int, batch_size: int, remainder: str = "short_step") -> int:
    """Optimizer updates per epoch: ceil(N / B) with short steps, floor(N / B) (at least 1) when carried."""
    if remainder == "carry":
        return max(1, n_examples // batch_size)
    return max(1, math.ceil(n_examples / batch_size))


def epoch_steps(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[np.ndarray]:
    """The example indices of every step of `epoch`: a pure function of (data lengths, seed, epoch)."""
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    lengths = np.asarray(lengths)
    window = batch_size * GROUP_WINDOW
    steps = []
    for start in range(0, n, window):
        chunk = order[start : start + window]
        # A noisy sort (+-15% on the length): similar lengths share a step, yet small data sets
        # do not get the very same step compositions every epoch.
        key = lengths[chunk] * rng.uniform(0.85, 1.15, size=len(chunk))
        chunk = chunk[np.argsort(-key, kind="stable")]
        steps.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    # Shuffle the steps, keeping the short one (if any) last so that every epoch's steps align.
    full = [s for s in steps if len(s) == batch_size]
    short = [s for s in steps if len(s) != batch_size]
    return [full[i] for i in rng.permutation(len(full))] + short


def epoch_updates(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool,
                  remainder: str = "short_step") -> list[np.ndarray]:
    """The example indices of every optimizer update of `epoch` (see `TrainConfig.remainder`): with
    "carry", the short last step of `epoch_steps` is not an update of its own; its examples join the
    next epoch's first update (their gradients were taken at the same weights, as no update ran between)."""
    steps = epoch_steps(lengths, batch_size, seed, epoch, group_by_length)
    if remainder != "carry":
        return steps
    if len(steps) > 1 and len(steps[-1]) < batch_size:
        steps = steps[:-1]
    if epoch > 0:
        before = epoch_steps(lengths, batch_size, seed, epoch - 1, group_by_length)
        if len(before) > 1 and len(before[-1]) < batch_size:
            steps = [np.concatenate([before[-1], steps[0]])] + steps[1:]
    return steps


def padded_length(longest: int, multiple: int, cap: int) -> int:
    """`longest` rounded up to `multiple`, never above the multiple-rounded `cap`."""
    up = lambda x: -(-x // multiple) * multiple  # noqa: E731
    return min(up(max(longest, 1)), up(cap))


def _row_weight(e: Encoded, n: int, weighting: str) -> tuple[int, float]:
    """(first weighted position, weight per target token) of an example fed as `n` tokens: 1 per
    token ("token"), or 1 / its target tokens ("example": each example's mean NLL counts once)."""
    start = max(e.n_prompt - 1, 0)
    return start, (1.0 if weighting == "token" else 1.0 / max(n - start, 1))


def make_batch(
    encoded: Sequence[Encoded], indices: Iterable[int], rows: int, length: int, weighting: str = "token"
) -> dict[str, np.ndarray]:
    """Right-padded arrays [rows, length]: tokens, targets (next token), weights (on target
    predictions), valid (real tokens). Sequences are fed without their last token."""
    tokens = np.zeros((rows, length), np.int32)
    targets = np.zeros((rows, length), np.int32)
    weights = np.zeros((rows, length), np.float32)
    valid = np.zeros((rows, length), bool)
    for r, i in enumerate(indices):
        e = encoded[i]
        n = min(e.length - 1, length)
        tokens[r, :n] = e.tokens[:n]
        targets[r, :n] = e.tokens[1 : n + 1]
        valid[r, :n] = True
        start, w = _row_weight(e, n, weighting)
        weights[r, start:n] = w
    return {"tokens": tokens, "targets": targets, "weights": weights, "valid": valid}


def first_fit(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of item positions: each item, in order, goes into the first bin with room for it."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i, n in enumerate(sizes):
        if n > capacity:
            raise IlfError(f"packing: example of {n} tokens is longer than max_length={capacity}")
        for b, room in enumerate(free):
            if n <= room:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(capacity - n)
    return bins


def make_packed_batch(
    encoded: Sequence[Encoded], packs: Sequence[Sequence[int]], rows: int, length: int, weighting: str = "token"
) -> dict[str, np.ndarray]:
    """Packed arrays [rows, length]: each row holds the examples of one pack back to back, with
    segment ids (1, 2, ... per example; 0 for padding) and positions restarting at each example."""
    tokens = np.zeros((rows, length), np.int32)
    targets = np.zeros((rows, length), np.int32)
    weights = np.zeros((rows, length), np.float32)
    segments = np.zeros((rows, length), np.int32)
    positions = np.zeros((rows, length), np.int32)
    for r, pack in enumerate(packs):
        at = 0
        for s, i in enumerate(pack, start=1):
            e = encoded[i]
            n = e.length - 1
            tokens[r, at : at + n] = e.tokens[:n]
            targets[r, at : at + n] = e.tokens[1:]
            segments[r, at : at + n] = s
            positions[r, at : at + n] = np.arange(n)
            start, w = _row_weight(e, n, weighting)
            weights[r, at + start : at + n] = w
            at += n
    return {"tokens": tokens, "targets": targets, "weights": weights, "segments": segments, "positions": positions}


def pack_step(encoded: Sequence[Encoded], indices: Sequence[int], max_length: int) -> list[list[int]]:
    """The step's examples (in their order) first-fit into rows of `max_length` fed tokens."""
    bins = first_fit([encoded[i].length - 1 for i in indices], max_length)
    return [[int(indices[j]) for j in b] for b in bins]


def step_batch(
    encoded: Sequence[Encoded], indices: np.ndarray, batch_size: int, accum: int, length_multiple: int, max_length: int,
    rows: range | None = None, *, weighting: str = "token", packing: bool = False, micro_rows: int = 0,
) -> dict[str, np.ndarray]:
    """One optimizer step's batch, shaped [accum, batch_size // accum, T]; with `rows`, only those
    rows of every micro-batch ([accum, len(rows), T]: one process's part of the global batch).

    With `packing`, the step's examples are packed into rows (`pack_step`) and the batch is
    [ceil(packed rows / micro_rows), micro_rows, max_length]: the number of micro-batches is what
    the step's rows need (the `accum` argument is unused)."""
    if packing:
        packs = pack_step(encoded, indices, max_length)
        t = padded_length(max_length, length_multiple, max_length)  # one row length: compiles vary only with accum
        accum, per = -(-len(packs) // micro_rows), micro_rows
        packs = packs + [[] for _ in range(accum * per - len(packs))]
        take = range(per) if rows is None else rows
        parts = [make_packed_batch(encoded, [packs[m * per + r] for r in take], len(take), t, weighting) for m in range(accum)]
        return {k: np.stack([p[k] for p in parts]) for k in parts[0]}
    longest = max(encoded[i].length - 1 for i in indices)
    t = padded_length(longest, length_multiple, max_length)
    per = batch_size // accum
    accum = max(accum, -(-len(indices) // per))  # a carried update holds more than batch_size examples
    if rows is None:
        flat = make_batch(encoded, indices, accum * per, t, weighting)
        return {k: v.reshape(accum, per, t) for k, v in flat.items()}
    idx = list(indices)
    parts = [make_batch(encoded, idx[m * per + rows.start : m * per + rows.stop], len(rows), t, weighting) for m in range(accum)]
    return {k: np.stack([p[k] for p in parts]) for k in parts[0]}


def read_jsonl(path: str | pathlib.Path) -> list[Example]:
    """Examples from a JSONL file of {"prompt", "completion"[, "truncatable", "prefix"]} records."""
    out = []
    for where, rec in read_objects(path):
        for key in ("prompt", "completion"):
            if not isinstance(rec.get(key), str):
                raise IlfError(f"{where}: field {key!r} missing or not a string")
        extra = {k: rec.get(k, "") for k in ("truncatable", "prefix")}
        for k, v in extra.items():
            if not isinstance(v, str):
                raise IlfError(f"{where}: field {k!r} is not a string")
        out.append(Example(rec["prompt"], rec["completion"], **extra))
    if not out:
        raise IlfError(f"{path}: no records")
    return out
