"""The Llama architecture (Llama 2/3, CodeLlama, DeepSeek-Coder; Qwen2 with qkv biases, Qwen3
with q/k norms) in Flax Linen, with the same functional API as `codegen`.

RMSNorm, SwiGLU MLP, grouped-query attention (the KV cache holds `n_kv_heads` heads), full
rotary embeddings (half-split pairs) with `rope_theta` and linear / llama3 `rope_scaling`, tied
or untied embeddings. Logical axes: `kv_heads` names the key/value heads so that the rule table
splits them over `tensor` only where their number allows.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ilf_jax.model.common import ACT_EMBED, Cache, CausalLM, Constrain, LinenModel, Params, SelfAttention, dense, empty_cache, logical_param, no_constraint
from ilf_jax.model.llama_config import LlamaConfig

CACHE_AXES = ("act_batch", "act_kv_heads", None, None)  # the cache holds n_kv_heads heads


def inverse_frequencies(cfg: LlamaConfig) -> np.ndarray:
    """Rotary inverse frequencies [head_dim // 2] (fp32), with the config's rope scaling."""
    d = cfg.head_size
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    s = cfg.rope_scaling
    if s is None:
        return inv.astype(np.float32)
    if s.rope_type == "linear":
        return (inv / s.factor).astype(np.float32)
    # llama3: long wavelengths divided by factor, short ones kept, the band between interpolated.
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rotary_tables(positions: jax.Array, cfg: LlamaConfig) -> tuple[jax.Array, jax.Array]:
    """sin/cos of the rotary angles for `positions` [B, T]: each [B, T, head_dim // 2], fp32."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inverse_frequencies(cfg))
    return jnp.sin(angles), jnp.cos(angles)


def apply_rotary(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotate x [B, T, H, D] by pairs (i, i + D/2), HF Llama's `rotate_half` convention."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    sin, cos = sin[:, :, None, :].astype(x.dtype), cos[:, :, None, :].astype(x.dtype)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) * scale over the last axis, in fp32 (returns fp32)."""
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return x * scale.astype(jnp.float32)


class RMSNorm(nn.Module):
    config: LlamaConfig
    size: int

    @nn.compact
    def __call__(self, x):
        scale = logical_param(self, "scale", ("norm",), (self.size,), self.config, nn.initializers.ones)
        return rms_norm(x, scale, self.config.rms_norm_eps)


class Attention(SelfAttention):
    """Grouped-query self-attention with rotary embeddings (config: `LlamaConfig`)."""

    def project(self, x: jax.Array, sin: jax.Array, cos: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        e, h, kv, d = cfg.hidden_size, cfg.n_head, cfg.n_kv_heads, cfg.head_size
        b, t, _ = x.shape
        x2 = x.astype(dtype).reshape(b * t, e)

        def project(name, heads, head_axis):
            w = logical_param(self, name, ("embed", head_axis, "kv"), (e, heads, d), cfg)
            y = (x2 @ w.astype(dtype).reshape(e, -1)).reshape(b, t, heads, d)
            if cfg.qkv_bias:
                y = y + logical_param(self, f"{name}_bias", (head_axis, "kv"), (heads, d), cfg, nn.initializers.zeros).astype(dtype)
            return y

        q, k, v = project("q", h, "heads"), project("k", kv, "kv_heads"), project("v", kv, "kv_heads")
        if cfg.qk_norm:
            q = RMSNorm(cfg, d, name="q_norm")(q).astype(dtype)
            k = RMSNorm(cfg, d, name="k_norm")(k).astype(dtype)
        return apply_rotary(q, sin, cos), apply_rotary(k, sin, cos), v

    def output(self, attn: jax.Array) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        e, h, d = cfg.hidden_size, cfg.n_head, cfg.head_size
        out = attn @ logical_param(self, "o", ("heads", "kv", "embed"), (h, d, e), cfg).astype(dtype).reshape(h * d, e)
        if cfg.o_bias:
            out = out + logical_param(self, "o_bias", ("norm",), (e,), cfg, nn.initializers.zeros).astype(dtype)
        return out


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        gate = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "gate", cfg.mlp_bias)(x)
        up = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "up", cfg.mlp_bias)(x)
        return dense(cfg, cfg.hidden_size, ("mlp", "embed"), "down", cfg.mlp_bias)(jax.nn.silu(gate) * up)


class Block(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(.)): the sequential pre-norm block."""

    config: LlamaConfig
    constrain: Constrain = no_constraint

    @nn.compact
    def __call__(self, x, sin, cos, mask, cache, cache_index):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        h = RMSNorm(cfg, cfg.hidden_size, name="input_norm")(x).astype(dtype)
        attn, new_cache = Attention(cfg, name="attn")(h, sin, cos, mask, cache, cache_index)
        x = x + attn
        h = RMSNorm(cfg, cfg.hidden_size, name="post_norm")(x).astype(dtype)
        x = x + MLP(cfg, name="mlp")(h)
        return self.constrain(x, ACT_EMBED), new_cache


class Llama(CausalLM):
    """Llama causal LM (config: `LlamaConfig`): embedding, `n_layer` blocks, final RMSNorm, LM head
    (the embedding's transpose when tied)."""

    EMBED, BLOCK, PREFIX = "embed", Block, "layers_"

    def rotary(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        return rotary_tables(positions, self.config)

    def final_norm(self, x: jax.Array) -> jax.Array:
        return RMSNorm(self.config, self.config.hidden_size, name="norm")(x)

    def head(self, x: jax.Array, embed: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.tie_word_embeddings:
            kernel = embed.T
        else:
            kernel = logical_param(self, "lm_head", ("embed", "vocab"), (cfg.hidden_size, cfg.vocab_size), cfg)
        return x @ kernel.astype(jnp.dtype(cfg.dtype))


_MODEL = LinenModel(Llama)
param_specs = _MODEL.param_specs
abstract_params = _MODEL.abstract_params
init_params = _MODEL.init_params
forward = _MODEL.forward


def lm_head(params: Params, config: LlamaConfig) -> tuple[jax.Array, None]:
    """(kernel [E, V], bias) of the LM head: the embedding's transpose when tied; no bias."""
    return (params["embed"].T if config.tie_word_embeddings else params["lm_head"]), None


def init_cache(config: LlamaConfig, batch: int, slots: int, dtype: Any = None) -> Cache:
    """An empty KV cache of `n_kv_heads` heads with `slots` positions per row."""
    return empty_cache(config.n_layer, batch, config.n_kv_heads, slots, config.head_size, jnp.dtype(dtype or config.dtype))
