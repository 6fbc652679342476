"""CodeGen-Mono as a Flax Linen module, with a functional API around it.

Parameters carry logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`) so that one rule
table shards them; the KV cache is an explicit pytree argument and return value. `.apply` is
called only in the model package: the rest of the project uses `init_params`, `forward` and `init_cache`.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ilf_jax.model.common import (
    Cache,
    Constrain,
    LinenModel,
    Params,
    attend,
    causal_mask,
    empty_cache,
    lm_head_logits,
    no_constraint,
    positions_from_mask,
    run_blocks,
    segment_mask,
)
from ilf_jax.model.config import CodeGenConfig

# Logical names of a cache entry's dims. Heads before slots: the decode step then reads the cache
# in the layout attention uses, with no per-step transpose of the whole cache.
CACHE_AXES = ("act_batch", "act_heads", None, None)
__all__ = ["CACHE_AXES", "Cache", "CodeGen", "Constrain", "Params", "causal_mask", "forward", "init_cache", "init_params", "lm_head_logits", "no_constraint", "positions_from_mask", "segment_mask"]


def _init(std: float = 0.02) -> Callable:
    return nn.initializers.normal(std)


def rotary_tables(positions: jax.Array, rotary_dim: int) -> tuple[jax.Array, jax.Array]:
    """sin/cos of GPT-J rotary angles for `positions` [B, T]: each [B, T, rotary_dim // 2], fp32."""
    inv_freq = 1.0 / (10000 ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.sin(angles), jnp.cos(angles)


def apply_rotary(x: jax.Array, sin: jax.Array, cos: jax.Array, rotary_dim: int) -> jax.Array:
    """Rotate interleaved pairs of the first `rotary_dim` features of x [B, T, H, D] (GPT-J style)."""
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    even, odd = rot[..., 0::2], rot[..., 1::2]
    sin, cos = sin[:, :, None, :].astype(x.dtype), cos[:, :, None, :].astype(x.dtype)
    rotated = jnp.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1).reshape(rot.shape)
    return jnp.concatenate([rotated, rest], axis=-1)


class Attention(nn.Module):
    """Multi-head self-attention with partial rotary embeddings and an optional KV cache."""

    config: CodeGenConfig

    @nn.compact
    def __call__(self, x, sin, cos, mask, cache, cache_index):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        qkv_w = self.param(
            "qkv",
            nn.with_logical_partitioning(_init(), ("embed", None, "heads", "kv")),
            (cfg.n_embd, 3, cfg.n_head, cfg.head_dim),
            pdtype,
        )
        out_w = self.param(
            "out",
            nn.with_logical_partitioning(_init(), ("heads", "kv", "embed")),
            (cfg.n_head, cfg.head_dim, cfg.n_embd),
            pdtype,
        )
        b, t, e = x.shape
        # Plain 2-D matmuls and [B, H, T, D] attention layouts: XLA maps these straight onto GEMMs.
        qkv = x.astype(dtype).reshape(b * t, e) @ qkv_w.astype(dtype).reshape(e, -1)
        qkv = qkv.reshape(b, t, 3, cfg.n_head, cfg.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = apply_rotary(q, sin, cos, cfg.rotary_dim)
        k = apply_rotary(k, sin, cos, cfg.rotary_dim)
        q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # [B, H, T, D]
        new_cache = None
        if cache is not None:
            start = (0, 0, cache_index, 0)
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
            new_cache = {"k": k, "v": v}
        # Scores and softmax in fp32, as the reference does, whatever the compute dtype.
        attn = attend(q, k, v, mask, dtype).reshape(b * t, -1)
        return (attn @ out_w.astype(dtype).reshape(-1, e)).reshape(b, t, e), new_cache


class MLP(nn.Module):
    """fc_in -> gelu_new -> fc_out."""

    config: CodeGenConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dense = lambda n, axes, name: nn.Dense(  # noqa: E731
            n,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            kernel_init=nn.with_logical_partitioning(_init(), axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
            name=name,
        )
        h = dense(cfg.inner_dim, ("embed", "mlp"), "fc_in")(x)
        h = jax.nn.gelu(h, approximate=True)
        return dense(cfg.n_embd, ("mlp", "embed"), "fc_out")(h)


def _layer_norm(cfg: CodeGenConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_epsilon,
        dtype=jnp.float32,
        param_dtype=jnp.dtype(cfg.param_dtype),
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        name=name,
    )


class Block(nn.Module):
    """ln_1 -> (attention || MLP) + residual, CodeGen's parallel block."""

    config: CodeGenConfig
    constrain: Constrain = no_constraint

    @nn.compact
    def __call__(self, x, sin, cos, mask, cache, cache_index):
        h = _layer_norm(self.config, "ln_1")(x).astype(jnp.dtype(self.config.dtype))
        attn, new_cache = Attention(self.config, name="attn")(h, sin, cos, mask, cache, cache_index)
        out = x + attn + MLP(self.config, name="mlp")(h)
        return self.constrain(out, ("act_batch", "act_length", "act_embed")), new_cache


class CodeGen(nn.Module):
    """CodeGen causal LM: embedding, `n_layer` blocks, final layer norm, untied LM head with bias."""

    config: CodeGenConfig
    constrain: Constrain = no_constraint

    @nn.compact
    def __call__(self, tokens, positions, mask, cache=None, cache_index=0, last_only=False, hidden_only=False):
        cfg = self.config
        embed = self.param(
            "wte",
            nn.with_logical_partitioning(_init(), ("vocab", "embed")),
            (cfg.vocab_size, cfg.n_embd),
            jnp.dtype(cfg.param_dtype),
        )
        x = jnp.take(embed, tokens, axis=0).astype(jnp.dtype(cfg.dtype))
        x = self.constrain(x, ("act_batch", "act_length", "act_embed"))
        sin, cos = rotary_tables(positions, cfg.rotary_dim)
        x, new_cache = run_blocks(Block, cfg, self.constrain, "h_", x, sin, cos, mask, cache, cache_index)
        if last_only:  # a prefill needs the next-token logits of the last position only
            x = x[:, -1:]
        x = _layer_norm(cfg, "ln_f")(x).astype(jnp.dtype(cfg.dtype))
        if hidden_only and not self.is_initializing():  # the caller applies lm_head itself (fused loss)
            return x, new_cache
        logits = nn.Dense(
            cfg.vocab_size,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            kernel_init=nn.with_logical_partitioning(_init(), ("embed", "vocab")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            name="lm_head",
        )(x)
        logits = self.constrain(logits.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))
        return logits, new_cache


_MODEL = LinenModel(CodeGen)
param_specs = _MODEL.param_specs
abstract_params = _MODEL.abstract_params
init_params = _MODEL.init_params
forward = _MODEL.forward


def init_cache(config: CodeGenConfig, batch: int, slots: int, dtype: Any = None) -> Cache:
    """An empty KV cache with `slots` positions per row, in the compute dtype by default."""
    return empty_cache(config.n_layer, batch, config.n_head, slots, config.head_dim, jnp.dtype(dtype or config.dtype))
