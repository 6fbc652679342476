"""CodeGen-Mono as a Flax Linen module, with a functional API around it.

Parameters carry logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`) so that one rule
table shards them; the KV cache is an explicit pytree argument and return value. `.apply` is
called only here: the rest of the project uses `init_params`, `forward` and `init_cache`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ilf_jax.model.config import CodeGenConfig

Params = Any  # a nested dict of arrays
Cache = list[dict[str, jax.Array]]  # one {"k", "v"} entry per layer, each [batch, heads, slots, head_dim]
# Logical names of a cache entry's dims. Heads before slots: the decode step then reads the cache
# in the layout attention uses, with no per-step transpose of the whole cache.
CACHE_AXES = ("act_batch", "act_heads", None, None)
Constrain = Callable[[jax.Array, tuple[str | None, ...]], jax.Array]

_NEG = float(jnp.finfo(jnp.float32).min)


def no_constraint(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    return x


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
        scores = jnp.matmul(q.astype(jnp.float32), k.astype(jnp.float32).transpose(0, 1, 3, 2))
        scores = jnp.where(mask[:, None], scores * (1.0 / math.sqrt(cfg.head_dim)), _NEG)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        attn = jnp.matmul(probs, v.astype(dtype)).transpose(0, 2, 1, 3).reshape(b * t, -1)
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
        block = nn.remat(Block, static_argnums=()) if cfg.remat else Block
        new_cache = []
        for i in range(cfg.n_layer):
            layer_cache = None if cache is None else cache[i]
            x, c = block(cfg, self.constrain, name=f"h_{i}")(x, sin, cos, mask, layer_cache, cache_index)
            new_cache.append(c)
        if last_only:  # a prefill needs the next-token logits of the last position only
            x = x[:, -1:]
        x = _layer_norm(cfg, "ln_f")(x).astype(jnp.dtype(cfg.dtype))
        if hidden_only and not self.is_initializing():  # the caller applies lm_head itself (fused loss)
            return x, (None if cache is None else new_cache)
        logits = nn.Dense(
            cfg.vocab_size,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            kernel_init=nn.with_logical_partitioning(_init(), ("embed", "vocab")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            name="lm_head",
        )(x)
        logits = self.constrain(logits.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))
        return logits, (None if cache is None else new_cache)


def causal_mask(valid: jax.Array) -> jax.Array:
    """[B, T, T] attention mask from a [B, T] validity mask (left padding): causal and no pads."""
    t = valid.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    return causal[None] & valid[:, None, :].astype(bool)


def segment_mask(segments: jax.Array) -> jax.Array:
    """[B, T, T] mask of packed rows from segment ids [B, T] (0: padding): causal, within a segment."""
    t = segments.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    same = segments[:, :, None] == segments[:, None, :]
    return causal[None] & same & (segments[:, None, :] > 0)


def positions_from_mask(valid: jax.Array) -> jax.Array:
    """Position ids that start at 0 on each row's first real token (left padding gets 0)."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def _abstract_init(config: CodeGenConfig):
    tokens = jnp.zeros((1, 1), jnp.int32)
    return lambda rng: CodeGen(config).init(rng, tokens, tokens, jnp.ones((1, 1, 1), bool))["params"]


def param_specs(config: CodeGenConfig) -> Params:
    """The logical axis names of every parameter, as a pytree of `PartitionSpec`s of logical names."""
    boxed = jax.eval_shape(_abstract_init(config), jax.random.key(0))
    return nn.get_partition_spec(boxed)


def abstract_params(config: CodeGenConfig) -> Params:
    """Shapes and dtypes of every parameter (`jax.ShapeDtypeStruct`s), with nothing allocated."""
    return nn.meta.unbox(jax.eval_shape(_abstract_init(config), jax.random.key(0)))


def init_params(config: CodeGenConfig, rng: jax.Array) -> Params:
    """Random parameters (normal(0.02) weights, zero biases, unit norms), as a plain pytree."""
    return nn.meta.unbox(_abstract_init(config)(rng))


def forward(
    params: Params,
    tokens: jax.Array,
    config: CodeGenConfig,
    *,
    positions: jax.Array | None = None,
    mask: jax.Array | None = None,
    valid: jax.Array | None = None,
    segments: jax.Array | None = None,
    cache: Cache | None = None,
    cache_index: jax.Array | int = 0,
    constrain: Constrain = no_constraint,
    last_only: bool = False,
    hidden_only: bool = False,
) -> tuple[jax.Array, Cache | None]:
    """Logits [B, T, vocab] (fp32; [B, 1, vocab] with `last_only`) and the updated cache.

    With `hidden_only`, the final hidden states [B, T, E] (compute dtype) instead of logits, for
    callers that apply `params["lm_head"]` themselves (see `lm_head_logits`).

    Without a cache, `valid` ([B, T], left padding) gives the causal mask and positions. With a
    cache, the caller passes `positions` [B, T] and `mask` [B, T, slots]; the T new keys are
    written at `cache_index`. `segments` ([B, T] ids, 0 for padding) packs several sequences in a
    row: attention stays inside a segment; pass each segment's `positions` (restarting at 0).
    """
    if segments is not None and mask is None:
        if positions is None:
            raise ValueError("forward: pass positions together with segments")
        mask = segment_mask(segments)
    if mask is None:
        if valid is None:
            valid = jnp.ones(tokens.shape, bool)
        mask = causal_mask(valid)
        if positions is None:
            positions = positions_from_mask(valid)
    if positions is None:
        raise ValueError("forward: pass positions together with an explicit mask")
    return CodeGen(config, constrain).apply(
        {"params": params}, tokens, positions, mask, cache, cache_index, last_only, hidden_only
    )


def lm_head_logits(hidden: jax.Array, kernel: jax.Array, bias: jax.Array, config: CodeGenConfig) -> jax.Array:
    """fp32 logits from final hidden states, computed exactly as the module's lm_head does."""
    dtype = jnp.dtype(config.dtype)
    return (hidden.astype(dtype) @ kernel.astype(dtype) + bias.astype(dtype)).astype(jnp.float32)


def init_cache(config: CodeGenConfig, batch: int, slots: int, dtype: Any = None) -> Cache:
    """An empty KV cache with `slots` positions per row, in the compute dtype by default."""
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (batch, config.n_head, slots, config.head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(config.n_layer)]
