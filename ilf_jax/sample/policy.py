"""Sampling policies on a [B, vocab] fp32 logits batch: greedy, temperature, top-k, top-p (combinable).

The order follows `transformers`' logits warpers: temperature, then top-k, then top-p. Every
row draws with its own key, so a row's token depends only on its key and its logits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Policy:
    """The static part of a sampling configuration (what the compiled step depends on)."""

    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def warp(logits: jax.Array, policy: Policy) -> jax.Array:
    """Logits after temperature / top-k / top-p; filtered entries are -inf."""
    logits = logits.astype(jnp.float32) / jnp.float32(policy.temperature)
    if policy.top_k and policy.top_k < logits.shape[-1]:
        logits = jnp.where(logits < kth_largest(logits, policy.top_k), _NEG_INF, logits)
    return _top_p(logits, policy.top_p)


def _top_p(logits: jax.Array, top_p: float) -> jax.Array:
    """Keep the smallest set of most likely entries whose mass reaches `top_p` (at least one): an entry
    is dropped when the mass of the entries strictly more likely than it already reaches top_p."""
    if top_p >= 1.0:
        return logits
    sorted_desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep = before < top_p
    keep = keep.at[..., 0].set(True)
    cutoff = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < cutoff, _NEG_INF, logits)


def kth_largest(x: jax.Array, k: int) -> jax.Array:
    """The k-th largest value of each row of fp32 `x` ([..., 1]), exactly as `lax.top_k(x, k)[0][..., -1:]`.

    Bisection over the floats' order-preserving uint32 keys: 32 counting passes over the row. Inside the
    decode loop XLA on CPU sorts the whole vocabulary for `top_k` (about 70 ms for 16 x 51200, against
    about 10 ms for this), and the threshold is all top-k needs.
    """
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    keys = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))  # negatives reversed, below positives
    lo = jnp.zeros(x.shape[:-1] + (1,), jnp.uint32)  # invariant: at least k keys >= lo
    hi = jnp.full(x.shape[:-1] + (1,), 0xFFFFFFFF, jnp.uint32)

    def halve(_: int, bounds: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = bounds
        gap = hi - lo
        mid = lo + (gap >> 1) + (gap & 1)
        ok = jnp.sum(keys >= mid, axis=-1, keepdims=True, dtype=jnp.int32) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    return jax.lax.bitcast_convert_type(jnp.where(lo >> 31 == 1, lo & jnp.uint32(0x7FFFFFFF), ~lo), jnp.float32)


def top_k_candidates(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The k vocabulary blocks of each row of fp32 x [B, V] with the largest maxima, in vocabulary order:
    (their values [B, C] (-inf past V), their ids [B, C], the row's k-th largest value [B, 1], complete [B]).

    Those blocks hold the row's k largest values, so the k-th largest among them is the row's (whatever lies
    outside is at most the k-th largest block maximum). `complete` is false only when another block's maximum
    ties that k-th largest value: then an entry outside the blocks survives the top-k filter too. Blocks are
    about V / 8k wide, so the threshold and the draw read 8x fewer entries than the vocabulary.
    """
    b, v = x.shape
    size = max(1, v // (8 * k))
    n = -(-v // size)
    blocks = jnp.pad(x, ((0, 0), (0, n * size - v)), constant_values=_NEG_INF).reshape(b, n, size)
    maxima = blocks.max(axis=-1)
    top, index = jax.lax.top_k(maxima, k)  # a sort of n = 8k maxima: cheap, unlike one of the vocabulary
    index = jnp.sort(index, axis=-1)
    values = jnp.take_along_axis(blocks, index[:, :, None], axis=1).reshape(b, k * size)
    ids = (index[:, :, None] * size + jnp.arange(size, dtype=index.dtype)).reshape(b, k * size)
    kth = kth_largest(values, k)
    t0 = top[:, -1:]
    complete = ~((kth == t0) & (jnp.sum(maxima >= t0, axis=-1, keepdims=True) > k))
    return values, ids, kth, complete[:, 0]


def _inverse_cdf(logits: jax.Array, u: jax.Array) -> jax.Array:
    """The index j of each row with cdf[j-1] <= u * total < cdf[j] over softmax(logits) (-inf: never drawn)."""
    probs = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    cdf = jnp.cumsum(probs, axis=-1)
    total = cdf[:, -1]
    x = jnp.minimum(u * total, jnp.nextafter(total, 0.0))  # strictly below the total mass
    index = jnp.sum((cdf <= x[:, None]).astype(jnp.int32), axis=-1)
    return jnp.minimum(index, logits.shape[-1] - 1)


def choose(logits: jax.Array, keys: jax.Array, policy: Policy) -> jax.Array:
    """One token id per row: argmax when greedy, else a draw from softmax(warp(logits)) with `keys` [B].

    The draw inverts the CDF with one uniform per row (`cdf[j-1] <= u * total < cdf[j]`), not a
    Gumbel-max over the vocabulary: that needs B random numbers instead of B x vocab, which on CPU
    is most of a small model's decode step. Tokens of probability 0 (filtered) are never drawn. With
    top-k, threshold, top-p and draw run over the `top_k_candidates` (in vocabulary order, so the same
    token is drawn as over the whole row), unless a tie makes them incomplete for some row.
    """
    if policy.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = logits.astype(jnp.float32) / jnp.float32(policy.temperature)
    u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
    k, v = policy.top_k, x.shape[-1]
    if not k or k >= v:
        return _inverse_cdf(_top_p(x, policy.top_p), u).astype(jnp.int32)
    values, ids, kth, complete = top_k_candidates(x, k)

    def over_candidates() -> jax.Array:
        index = _inverse_cdf(_top_p(jnp.where(values < kth, _NEG_INF, values), policy.top_p), u)
        return jnp.take_along_axis(ids, index[:, None], axis=1)[:, 0]

    def over_vocabulary() -> jax.Array:
        return _inverse_cdf(_top_p(jnp.where(x < kth, _NEG_INF, x), policy.top_p), u).astype(ids.dtype)

    return jax.lax.cond(jnp.all(complete), over_candidates, over_vocabulary).astype(jnp.int32)
