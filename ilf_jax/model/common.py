"""Pieces every model family shares: masks and positions from left-padded batches, the
activation-sharding hook type, logically-partitioned parameters and dense layers, masked
(grouped-query) softmax attention in fp32 over the KV cache, the attention and causal-LM modules
every family subclasses, and the functional API (init, shapes, axes, forward) around a Linen module."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Any  # a nested dict of arrays
Cache = list[dict[str, jax.Array]]  # one {"k", "v"} entry per layer, each [batch, heads, slots, head_dim]

Constrain = Callable[[jax.Array, tuple[str | None, ...]], jax.Array]

_NEG = float(jnp.finfo(jnp.float32).min)
ACT_EMBED = ("act_batch", "act_length", "act_embed")  # logical names of [B, T, E] activations


def no_constraint(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    return x


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


def resolve_inputs(
    tokens: jax.Array,
    positions: jax.Array | None,
    mask: jax.Array | None,
    valid: jax.Array | None,
    segments: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(positions, mask) of a forward call: from `segments` (packed rows, with the caller's
    positions) or `valid` (left padding) unless both are given."""
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
    return positions, mask


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Softmax attention of q [B, H, T, D] over k, v [B, KV, S, D] (H a multiple of KV: grouped
    queries), mask [B, T, S]; scores and softmax in fp32. Returns [B, T, H * D] in `dtype`."""
    b, h, t, d = q.shape
    kv = k.shape[1]
    q = q.reshape(b, kv, h // kv, t, d)  # each kv head serves h // kv consecutive query heads
    # Contract over D of both operands (no swapaxes): XLA on CPU would copy a transposed K cache every decode step.
    scores = jnp.einsum("bkgtd,bksd->bkgts", q.astype(jnp.float32), k.astype(jnp.float32))
    scores = jnp.where(mask[:, None, None], scores * (1.0 / math.sqrt(d)), _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.matmul(probs, v.astype(dtype)[:, :, None])  # [B, KV, G, T, D]
    return out.reshape(b, h, t, d).transpose(0, 2, 1, 3).reshape(b, t, h * d)


def normal_init(std: float = 0.02) -> Callable:
    """The weights' initialiser: normal(std), as HF initialises both families."""
    return nn.initializers.normal(std)


def logical_param(module: nn.Module, name: str, axes: tuple[str | None, ...], shape: tuple[int, ...], config: Any, init: Callable | None = None) -> jax.Array:
    """A parameter of `module` (called from its compact method) with logical axis names, in the
    config's storage dtype, normal(0.02)-initialised unless `init` says otherwise."""
    init = normal_init() if init is None else init
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(config.param_dtype))


def dense(config: Any, features: int, axes: tuple[str, str], name: str, use_bias: bool = True) -> nn.Dense:
    """A Dense layer in the config's dtypes whose kernel has logical axes `axes` (the bias: the second)."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=nn.with_logical_partitioning(normal_init(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
        name=name,
    )


def cached_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, cache: dict[str, jax.Array] | None, cache_index: Any, dtype: jnp.dtype
) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """Attention of q [B, T, H, D] over k, v [B, T, KV, D] and, with a layer's cache, every key
    before them: the T new keys are written at `cache_index`. Returns ([B, T, H * D], new cache)."""
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # [B, heads, T, D]
    new_cache = None
    if cache is not None:
        start = (0, 0, cache_index, 0)
        k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
        v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
        new_cache = {"k": k, "v": v}
    # Scores and softmax in fp32, as the reference does, whatever the compute dtype.
    return attend(q, k, v, mask, dtype), new_cache


def lm_head_logits(hidden: jax.Array, kernel: jax.Array, bias: jax.Array | None, config, rows: bool = False) -> jax.Array:
    """fp32 logits from final hidden states and an LM head (kernel [E, V], or [V, E] with `rows`; optional
    bias), in the config's compute dtype, exactly as the models compute them."""
    dtype = jnp.dtype(config.dtype)
    if rows:
        logits = jnp.einsum("...e,ve->...v", hidden.astype(dtype), kernel.astype(dtype))
    else:
        logits = hidden.astype(dtype) @ kernel.astype(dtype)
    if bias is not None:
        logits = logits + bias.astype(dtype)
    return logits.astype(jnp.float32)


def run_blocks(block: type, config: Any, constrain: Constrain, prefix: str, x, sin, cos, mask, cache, cache_index):
    """Inside a compact module: `config.n_layer` blocks named `prefix{i}` (rematerialised with
    `config.remat`), each fed its layer of the cache. Returns (x, new cache or None)."""
    block = nn.remat(block, static_argnums=()) if config.remat else block
    new_cache = []
    for i in range(config.n_layer):
        layer_cache = None if cache is None else cache[i]
        x, c = block(config, constrain, name=f"{prefix}{i}")(x, sin, cos, mask, layer_cache, cache_index)
        new_cache.append(c)
    return x, (None if cache is None else new_cache)


class SelfAttention(nn.Module):
    """A family's self-attention over the KV cache: the subclass's `project(x, sin, cos)` gives
    q [B, T, H, D] and k, v [B, T, KV, D] (rotated), `output(attn)` maps [B * T, H * D] to [B * T, E]."""

    config: Any

    def project(self, x: jax.Array, sin: jax.Array, cos: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q, k, v of x [B, T, E], rotary embeddings applied to q and k."""
        raise NotImplementedError

    def output(self, attn: jax.Array) -> jax.Array:
        """The output projection of the attended values [B * T, H * D] -> [B * T, E]."""
        raise NotImplementedError

    @nn.compact
    def __call__(self, x, sin, cos, mask, cache, cache_index):
        b, t, e = x.shape
        q, k, v = self.project(x, sin, cos)
        attn, new_cache = cached_attention(q, k, v, mask, cache, cache_index, jnp.dtype(self.config.dtype))
        return self.output(attn.reshape(b * t, -1)).reshape(b, t, e), new_cache


class CausalLM(nn.Module):
    """A family's causal LM: embedding `EMBED`, `config.n_layer` blocks `BLOCK` named `PREFIX{i}`,
    `final_norm`, and `head(x, embedding)` (fp32 logits; the final hidden states with `hidden_only`).

    A family subclasses it, sets the three names and defines `rotary`, `final_norm` and `head`."""

    config: Any
    constrain: Constrain = no_constraint

    EMBED: ClassVar[str]
    BLOCK: ClassVar[type]
    PREFIX: ClassVar[str]

    def rotary(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """sin, cos of the rotary angles for `positions` [B, T]."""
        raise NotImplementedError

    def final_norm(self, x: jax.Array) -> jax.Array:
        """The norm after the last block."""
        raise NotImplementedError

    def head(self, x: jax.Array, embed: jax.Array) -> jax.Array:
        """Logits of the final hidden states x (any float dtype), given the embedding table."""
        raise NotImplementedError

    @nn.compact
    def __call__(self, tokens, positions, mask, cache=None, cache_index=0, last_only=False, hidden_only=False):
        cfg, constrain = self.config, self.constrain
        dtype = jnp.dtype(cfg.dtype)
        embed = logical_param(self, self.EMBED, ("vocab", "embed"), (cfg.vocab_size, cfg.n_embd), cfg)
        x = constrain(jnp.take(embed, tokens, axis=0).astype(dtype), ACT_EMBED)
        x, new_cache = run_blocks(self.BLOCK, cfg, constrain, self.PREFIX, x, *self.rotary(positions), mask, cache, cache_index)
        if last_only:  # a prefill needs the next-token logits of the last position only
            x = x[:, -1:]
        x = self.final_norm(x).astype(dtype)
        if hidden_only and not self.is_initializing():  # the caller applies the LM head itself (fused loss)
            return x, new_cache
        return constrain(self.head(x, embed).astype(jnp.float32), ("act_batch", "act_length", "act_vocab")), new_cache


def cache_bucket(length: int) -> int:
    """The sampling engine's cache length for rows needing `length` positions: the next 2^i or 3 * 2^(i-1), at least 32.

    Few lengths (few compilations), each at most 1.5x the one below it.
    """
    size = 32
    while size < length:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def empty_cache(layers: int, batch: int, heads: int, slots: int, head_dim: int, dtype: Any) -> Cache:
    """A zero KV cache: `layers` entries of {"k", "v"} [batch, heads, slots, head_dim]."""
    shape = (batch, heads, slots, head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(layers)]


@dataclasses.dataclass(frozen=True)
class LinenModel:
    """The functional API of a causal-LM Linen module built as `module(config, constrain)` and
    called as (tokens, positions, mask, cache, cache_index, last_only, hidden_only)."""

    module: type

    def _init_fn(self, config: Any) -> Callable[[jax.Array], Params]:
        tokens = jnp.zeros((1, 1), jnp.int32)
        return lambda rng: self.module(config).init(rng, tokens, tokens, jnp.ones((1, 1, 1), bool))["params"]

    def param_specs(self, config: Any) -> Params:
        """The logical axis names of every parameter, as a pytree of `PartitionSpec`s of logical names."""
        return nn.get_partition_spec(jax.eval_shape(self._init_fn(config), jax.random.key(0)))

    def abstract_params(self, config: Any) -> Params:
        """Shapes and dtypes of every parameter (`jax.ShapeDtypeStruct`s), with nothing allocated."""
        return nn.meta.unbox(jax.eval_shape(self._init_fn(config), jax.random.key(0)))

    def init_params(self, config: Any, rng: jax.Array) -> Params:
        """Random parameters (normal(0.02) weights, zero biases, unit norms), as a plain pytree."""
        return nn.meta.unbox(self._init_fn(config)(rng))

    def forward(
        self,
        params: Params,
        tokens: jax.Array,
        config: Any,
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
        callers that apply the LM head themselves (see `lm_head_logits`).

        Without a cache, `valid` ([B, T], left padding) gives the causal mask and positions. With a
        cache, the caller passes `positions` [B, T] and `mask` [B, T, slots]; the T new keys are
        written at `cache_index`. `segments` ([B, T] ids, 0 for padding) packs several sequences in a
        row: attention stays inside a segment; pass each segment's `positions` (restarting at 0).
        """
        positions, mask = resolve_inputs(tokens, positions, mask, valid, segments)
        return self.module(config, constrain).apply(
            {"params": params}, tokens, positions, mask, cache, cache_index, last_only, hidden_only
        )
