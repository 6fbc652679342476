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
    if policy.top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p (at least one token):
        # a token is dropped when the mass of the tokens strictly more likely than it already reaches top_p.
        sorted_desc = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        keep = before < policy.top_p
        keep = keep.at[..., 0].set(True)
        cutoff = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, _NEG_INF, logits)
    return logits


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


def choose(logits: jax.Array, keys: jax.Array, policy: Policy) -> jax.Array:
    """One token id per row: argmax when greedy, else a draw from softmax(warp(logits)) with `keys` [B].

    The draw inverts the CDF with one uniform per row (`cdf[j-1] <= u * total < cdf[j]`), not a
    Gumbel-max over the vocabulary: that needs B random numbers instead of B x vocab, which on CPU
    is most of a small model's decode step. Tokens of probability 0 (filtered) are never drawn.
    """
    if policy.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    warped = warp(logits, policy)
    probs = jnp.exp(warped - jnp.max(warped, axis=-1, keepdims=True))
    cdf = jnp.cumsum(probs, axis=-1)
    u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
    total = cdf[:, -1]
    x = jnp.minimum(u * total, jnp.nextafter(total, 0.0))  # strictly below the total mass
    index = jnp.sum((cdf <= x[:, None]).astype(jnp.int32), axis=-1)
    return jnp.minimum(index, logits.shape[-1] - 1).astype(jnp.int32)
