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
        kth = jax.lax.top_k(logits, policy.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, _NEG_INF, logits)
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


def choose(logits: jax.Array, keys: jax.Array, policy: Policy) -> jax.Array:
    """One token id per row: argmax when greedy, else a draw from softmax(warp(logits)) with `keys` [B]."""
    if policy.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    warped = warp(logits, policy)
    return jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys, warped).astype(jnp.int32)
