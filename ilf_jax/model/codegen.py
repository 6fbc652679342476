"""CodeGen-Mono as a Flax Linen module, with a functional API around it.

Parameters carry logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`) so that one rule
table shards them; the KV cache is an explicit pytree argument and return value. `.apply` is
called only in the model package: the rest of the project uses `init_params`, `forward` and `init_cache`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ilf_jax.model.common import ACT_EMBED, Cache, CausalLM, Constrain, LinenModel, Params, SelfAttention, causal_mask, dense, empty_cache, lm_head_logits, logical_param, no_constraint, positions_from_mask, segment_mask
from ilf_jax.model.config import CodeGenConfig

# Logical names of a cache entry's dims. Heads before slots: the decode step then reads the cache
# in the layout attention uses, with no per-step transpose of the whole cache.
CACHE_AXES = ("act_batch", "act_heads", None, None)
__all__ = ["CACHE_AXES", "Cache", "CodeGen", "Constrain", "Params", "causal_mask", "forward", "init_cache", "init_params", "lm_head", "lm_head_logits", "no_constraint", "positions_from_mask", "segment_mask"]


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


class Attention(SelfAttention):
    """Multi-head self-attention with partial rotary embeddings (config: `CodeGenConfig`)."""

    def project(self, x: jax.Array, sin: jax.Array, cos: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        cfg = self.config
        b, t, e = x.shape
        dtype = jnp.dtype(cfg.dtype)
        w = logical_param(self, "qkv", ("embed", None, "heads", "kv"), (e, 3, cfg.n_head, cfg.head_dim), cfg)
        # Plain 2-D matmuls and [B, H, T, D] attention layouts: XLA maps these straight onto GEMMs.
        qkv = (x.astype(dtype).reshape(b * t, e) @ w.astype(dtype).reshape(e, -1)).reshape(b, t, 3, cfg.n_head, cfg.head_dim)
        q, k = (apply_rotary(qkv[:, :, i], sin, cos, cfg.rotary_dim) for i in (0, 1))
        return q, k, qkv[:, :, 2]

    def output(self, attn: jax.Array) -> jax.Array:
        cfg = self.config
        w = logical_param(self, "out", ("heads", "kv", "embed"), (cfg.n_head, cfg.head_dim, cfg.n_embd), cfg)
        return attn @ w.astype(jnp.dtype(cfg.dtype)).reshape(-1, cfg.n_embd)


class MLP(nn.Module):
    """fc_in -> gelu_new -> fc_out."""

    config: CodeGenConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        h = dense(cfg, cfg.inner_dim, ("embed", "mlp"), "fc_in")(x)
        h = jax.nn.gelu(h, approximate=True)
        return dense(cfg, cfg.n_embd, ("mlp", "embed"), "fc_out")(h)


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
        return self.constrain(out, ACT_EMBED), new_cache


class CodeGen(CausalLM):
    """CodeGen causal LM (config: `CodeGenConfig`): embedding, `n_layer` parallel blocks, final
    layer norm, untied LM head with bias."""

    EMBED, BLOCK, PREFIX = "wte", Block, "h_"

    def rotary(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        return rotary_tables(positions, self.config.rotary_dim)

    def final_norm(self, x: jax.Array) -> jax.Array:
        return _layer_norm(self.config, "ln_f")(x)

    def head(self, x: jax.Array, embed: jax.Array) -> jax.Array:
        return dense(self.config, self.config.vocab_size, ("embed", "vocab"), "lm_head")(x)


_MODEL = LinenModel(CodeGen)
param_specs = _MODEL.param_specs
abstract_params = _MODEL.abstract_params
init_params = _MODEL.init_params
forward = _MODEL.forward


def lm_head(params: Params, config: CodeGenConfig) -> tuple[jax.Array, jax.Array]:
    """(kernel [E, V], bias [V]) of the untied LM head."""
    return params["lm_head"]["kernel"], params["lm_head"]["bias"]


def init_cache(config: CodeGenConfig, batch: int, slots: int, dtype: Any = None) -> Cache:
    """An empty KV cache with `slots` positions per row, in the compute dtype by default."""
    return empty_cache(config.n_layer, batch, config.n_head, slots, config.head_dim, jnp.dtype(dtype or config.dtype))
