"""Per-device memory of a model on a mesh, computed from `jax.eval_shape` (nothing is allocated).

Parameters and optimizer state are split by the same rule table the real run uses; activations
are the residuals that `jax.vjp` keeps for the backward pass of one micro-batch on one replica;
the KV cache is the sampling engine's (decode slots x a bucketed ring), slots over ('data', 'fsdp')
and (kv) heads over 'tensor'. It runs on
any machine: the mesh is abstract, so a pod can be planned before it is rented.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AbstractMesh, PartitionSpec

from ilf_jax.model.family import ModelConfig, abstract_params, cache_axes, init_cache, param_specs
from ilf_jax.parallel.mesh import AXES
from ilf_jax.parallel.sharding import DEFAULT_RULES, Rules, logical_spec


def abstract_mesh(shape: Sequence[int]) -> AbstractMesh:
    """A device-free mesh with axes ('data', 'fsdp', 'tensor') of the given sizes."""
    return AbstractMesh(tuple(int(s) for s in shape), AXES)


def shard_bytes(shape: Sequence[int], dtype: Any, spec: PartitionSpec, mesh: AbstractMesh) -> int:
    """Bytes one device holds of an array of `shape` split by `spec` (uneven splits round up)."""
    dims = list(shape)
    for i, axes in enumerate(tuple(spec) + (None,) * (len(dims) - len(spec))):
        if axes is not None:
            axes = (axes,) if isinstance(axes, str) else axes
            dims[i] = -(-dims[i] // math.prod(mesh.shape[a] for a in axes))
    return math.prod(dims) * jnp.dtype(dtype).itemsize


def _param_spec_tree(config: ModelConfig, mesh: AbstractMesh, rules: Rules) -> Any:
    return jax.tree.map(
        lambda names, s: logical_spec(tuple(names), s.shape, mesh, rules),
        param_specs(config),
        abstract_params(config),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def param_bytes(config: ModelConfig, mesh: AbstractMesh, rules: Rules = DEFAULT_RULES) -> int:
    """Per-device bytes of the parameters."""
    specs, shapes = _param_spec_tree(config, mesh, rules), abstract_params(config)
    leaves = jax.tree.leaves(jax.tree.map(lambda s, sp: shard_bytes(s.shape, s.dtype, sp, mesh), shapes, specs, is_leaf=lambda x: isinstance(x, PartitionSpec)))
    return sum(leaves)


def optimizer_bytes(config: ModelConfig, tx: optax.GradientTransformation, mesh: AbstractMesh, rules: Rules = DEFAULT_RULES) -> int:
    """Per-device bytes of the optimizer state (moments split like their parameters)."""
    shapes = jax.eval_shape(tx.init, abstract_params(config))
    specs = optax.tree_map_params(
        tx,
        lambda _, spec: spec,
        shapes,
        _param_spec_tree(config, mesh, rules),
        transform_non_params=lambda _: PartitionSpec(),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
    sizes = jax.tree.map(lambda s, sp: shard_bytes(s.shape, s.dtype, sp, mesh), shapes, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    return sum(jax.tree.leaves(sizes))


def _residual_bytes(config: ModelConfig, rows: int, seq_len: int) -> int:
    from ilf_jax.train.step import loss_sums

    spec = lambda dtype: jax.ShapeDtypeStruct((rows, seq_len), dtype)  # noqa: E731
    batch = {"tokens": spec(jnp.int32), "targets": spec(jnp.int32), "weights": spec(jnp.float32), "valid": spec(jnp.bool_)}
    vjp_fn = jax.eval_shape(lambda p, b: jax.vjp(lambda q: loss_sums(q, b, config)[0], p)[1], abstract_params(config), batch)
    return sum(math.prod(r.shape) * jnp.dtype(r.dtype).itemsize for r in jax.tree.leaves(vjp_fn))


def activation_bytes(config: ModelConfig, rows: int, seq_len: int) -> int:
    """Bytes of the residuals the backward pass keeps for `rows` sequences of `seq_len` on one replica.

    The vjp closure also holds the weights; they do not grow with the batch, so the per-row part
    is the difference between two and one rows. Counted whole on the replica (tensor parallelism
    splits some of it further); the loss is fused with the LM head, so no logits are kept.
    """
    per_row = _residual_bytes(config, 2, seq_len) - _residual_bytes(config, 1, seq_len)
    return rows * per_row


def cache_bucket(length: int) -> int:
    """The sampling engine's cache length for rows needing `length` positions: the next 2^i or 3 * 2^(i-1), at least 32.

    Few lengths (few compilations), each at most 1.5x the one below it.
    """
    size = 32
    while size < length:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def cache_bytes(config: ModelConfig, batch: int, slots: int, mesh: AbstractMesh, rules: Rules = DEFAULT_RULES) -> int:
    """Per-device bytes of a KV cache for `batch` rows of `slots` positions."""
    cache = jax.eval_shape(lambda: init_cache(config, batch, slots))
    return sum(shard_bytes(c.shape, c.dtype, logical_spec(cache_axes(config), c.shape, mesh, rules), mesh) for c in jax.tree.leaves(cache))


def engine_cache_bytes(config: ModelConfig, slots: int, positions: int, mesh: AbstractMesh, rules: Rules = DEFAULT_RULES) -> int:
    """Per-device peak bytes of the sampling engine's cache for `slots` decode slots and rows of `positions`
    (prompt + new tokens): the ring at its largest bucket, one layer's K or V of the bucket below while
    the ring grows into it (it moves one array at a time), and one prompt's prefilled KV."""
    length = cache_bucket(positions)
    below = max(32, length * 2 // 3)
    ring = cache_bytes(config, slots, length, mesh, rules)
    moving = cache_bytes(config, slots, below, mesh, rules) // (2 * config.n_layer)
    return ring + moving + cache_bytes(config, 1, positions, mesh, rules)


def plan(
    config: ModelConfig,
    mesh_shape: Sequence[int],
    tx: optax.GradientTransformation,
    micro_batch: int,
    seq_len: int,
    sample_slots: int,
    sample_positions: int,
    rules: Rules = DEFAULT_RULES,
) -> dict[str, int]:
    """Per-device bytes of params, grads, optimizer state, activations (one micro-batch per replica), and
    the sampling engine's KV cache (`sample_slots` slots, rows of `sample_positions` prompt + new tokens)."""
    mesh = abstract_mesh(mesh_shape)
    p = param_bytes(config, mesh, rules)
    grads = p * jnp.dtype(jnp.float32).itemsize // jnp.dtype(config.param_dtype).itemsize
    return {
        "params": p,
        "grads": grads,
        "optimizer": optimizer_bytes(config, tx, mesh, rules),
        "activations": activation_bytes(config, micro_batch, seq_len),
        "kv_cache": engine_cache_bytes(config, sample_slots, sample_positions, mesh, rules),
    }
