"""Pieces every model family shares: masks and positions from left-padded batches, the
activation-sharding hook type, and masked (grouped-query) softmax attention in fp32."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Constrain = Callable[[jax.Array, tuple[str | None, ...]], jax.Array]

_NEG = float(jnp.finfo(jnp.float32).min)


def no_constraint(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    return x


def causal_mask(valid: jax.Array) -> jax.Array:
    """[B, T, T] attention mask from a [B, T] validity mask (left padding): causal and no pads."""
    t = valid.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    return causal[None] & valid[:, None, :].astype(bool)


def positions_from_mask(valid: jax.Array) -> jax.Array:
    """Position ids that start at 0 on each row's first real token (left padding gets 0)."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def resolve_inputs(
    tokens: jax.Array, positions: jax.Array | None, mask: jax.Array | None, valid: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """(positions, mask) of a forward call: from `valid` (left padding) unless both are given."""
    if mask is None:
        if valid is None:
            valid = jnp.ones(tokens.shape, bool)
        mask = causal_mask(valid)
        if positions is None:
            positions = positions_from_mask(valid)
    if positions is None:
        raise ValueError("forward: pass positions together with an explicit mask")
    return positions, mask


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Softmax attention of q [B, H, T, D] over k, v [B, KV, S, D] (H a multiple of KV: grouped
    queries), mask [B, T, S]; scores and softmax in fp32. Returns [B, T, H * D] in `dtype`."""
    b, h, t, d = q.shape
    kv = k.shape[1]
    q = q.reshape(b, kv, h // kv, t, d)  # each kv head serves h // kv consecutive query heads
    scores = jnp.matmul(q.astype(jnp.float32), k.astype(jnp.float32)[:, :, None].swapaxes(-1, -2))
    scores = jnp.where(mask[:, None, None], scores * (1.0 / math.sqrt(d)), _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.matmul(probs, v.astype(dtype)[:, :, None])  # [B, KV, G, T, D]
    return out.reshape(b, h, t, d).transpose(0, 2, 1, 3).reshape(b, t, h * d)


def lm_head_logits(hidden: jax.Array, kernel: jax.Array, bias: jax.Array | None, config) -> jax.Array:
    """fp32 logits from final hidden states and an LM head (kernel [E, V], optional bias), in the
    config's compute dtype, exactly as the models compute them."""
    dtype = jnp.dtype(config.dtype)
    logits = hidden.astype(dtype) @ kernel.astype(dtype)
    if bias is not None:
        logits = logits + bias.astype(dtype)
    return logits.astype(jnp.float32)
