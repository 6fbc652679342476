"""Per-device memory of a model on a mesh, computed from `jax.eval_shape` (nothing is allocated).

Parameters and optimizer state are split by the same rule table the real run uses; activations
are the residuals that `jax.vjp` keeps for the backward pass of one micro-batch on one replica;
the KV cache is the sampling engine's (decode slots x a bucketed ring), slots over ('data', 'fsdp')
and (kv) heads over 'tensor'. It runs on
any machine: the mesh is abstract, so a pod can be planned before it is rented.

With a `Lora`, the trained tree is the adapters: params are the frozen base (in its dtype) plus
the adapters, grads and optimizer state are the adapters', activations are the residuals of the
adapters' vjp, and `lora_merged` counts the merged copies of the adapted kernels (compute dtype)
that the forward keeps for the backward pass.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AbstractMesh, PartitionSpec

from ilf_jax.model.common import cache_bucket
from ilf_jax.model.family import ModelConfig, abstract_params, cache_axes, init_cache, param_specs
from ilf_jax.model.lora import Lora
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


def _trained(config: ModelConfig, lora: Lora | None) -> tuple[Any, Any]:
    """(abstract tree, logical specs) of what is trained: the params, or the LoRA adapters."""
    if lora is None:
        return abstract_params(config), param_specs(config)
    return lora.abstract(), lora.specs()


def _spec_tree(shapes: Any, names: Any, mesh: AbstractMesh, rules: Rules) -> Any:
    return jax.tree.map(lambda n, s: logical_spec(tuple(n), s.shape, mesh, rules), names, shapes,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def _tree_bytes(shapes: Any, specs: Any, mesh: AbstractMesh) -> int:
    sizes = jax.tree.map(lambda s, sp: shard_bytes(s.shape, s.dtype, sp, mesh), shapes, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    return sum(jax.tree.leaves(sizes))


def param_bytes(config: ModelConfig, mesh: AbstractMesh, rules: Rules = DEFAULT_RULES, lora: Lora | None = None) -> int:
    """Per-device bytes of the parameters (with `lora`: of the adapters alone)."""
    shapes, names = _trained(config, lora)
    return _tree_bytes(shapes, _spec_tree(shapes, names, mesh, rules), mesh)


def lora_merged_bytes(config: ModelConfig, lora: Lora, mesh: AbstractMesh, rules: Rules = DEFAULT_RULES) -> int:
    """Per-device bytes of the merged adapted kernels, in the compute dtype."""
    shapes = abstract_params(config)
    merged = {s.path for s in lora.sites}
    specs = dict(jax.tree_util.tree_leaves_with_path(param_specs(config), is_leaf=lambda x: isinstance(x, PartitionSpec)))
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        if tuple(str(k.key) for k in path) in merged:
            total += shard_bytes(leaf.shape, config.dtype, logical_spec(tuple(specs[path]), leaf.shape, mesh, rules), mesh)
    return total


def optimizer_bytes(config: ModelConfig, tx: optax.GradientTransformation, mesh: AbstractMesh, rules: Rules = DEFAULT_RULES,
                    lora: Lora | None = None) -> int:
    """Per-device bytes of the optimizer state (moments split like their parameters)."""
    trained, names = _trained(config, lora)
    shapes = jax.eval_shape(tx.init, trained)
    specs = optax.tree_map_params(
        tx,
        lambda _, spec: spec,
        shapes,
        _spec_tree(trained, names, mesh, rules),
        transform_non_params=lambda _: PartitionSpec(),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
    return _tree_bytes(shapes, specs, mesh)


def _residual_bytes(config: ModelConfig, rows: int, seq_len: int, lora: Lora | None = None) -> int:
    from ilf_jax.train.step import loss_sums

    spec = lambda dtype: jax.ShapeDtypeStruct((rows, seq_len), dtype)  # noqa: E731
    batch = {"tokens": spec(jnp.int32), "targets": spec(jnp.int32), "weights": spec(jnp.float32), "valid": spec(jnp.bool_)}
    if lora is None:
        vjp_fn = jax.eval_shape(lambda p, b: jax.vjp(lambda q: loss_sums(q, b, config)[0], p)[1], abstract_params(config), batch)
    else:  # the frozen base is an input, not a residual of the adapters' vjp
        merged_loss = lambda a, w, b: loss_sums(lora.merge(w, a, config.dtype), b, config)[0]  # noqa: E731
        vjp_fn = jax.eval_shape(lambda a, w, b: jax.vjp(lambda q: merged_loss(q, w, b), a)[1], lora.abstract(), abstract_params(config), batch)
    return sum(math.prod(r.shape) * jnp.dtype(r.dtype).itemsize for r in jax.tree.leaves(vjp_fn))


def activation_bytes(config: ModelConfig, rows: int, seq_len: int, lora: Lora | None = None) -> int:
    """Bytes of the residuals the backward pass keeps for `rows` sequences of `seq_len` on one replica.

    The vjp closure also holds the weights; they do not grow with the batch, so the per-row part
    is the difference between two and one rows. Counted whole on the replica (tensor parallelism
    splits some of it further); the loss is fused with the LM head, so no logits are kept.
    """
    per_row = _residual_bytes(config, 2, seq_len, lora) - _residual_bytes(config, 1, seq_len, lora)
    return rows * per_row


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
    lora: Lora | None = None,
) -> dict[str, int]:
    """Per-device bytes of params, grads, optimizer state, activations (one micro-batch per replica), and
    the sampling engine's KV cache (`sample_slots` slots, rows of `sample_positions` prompt + new tokens);
    with `lora` (base in `config.param_dtype`), params include the adapters and `lora_merged` is added."""
    mesh = abstract_mesh(mesh_shape)
    p = param_bytes(config, mesh, rules)
    grads = p * jnp.dtype(jnp.float32).itemsize // jnp.dtype(config.param_dtype).itemsize
    out = {
        "params": p,
        "grads": grads,
        "optimizer": optimizer_bytes(config, tx, mesh, rules, lora),
        "activations": activation_bytes(config, micro_batch, seq_len, lora),
        "kv_cache": engine_cache_bytes(config, sample_slots, sample_positions, mesh, rules),
    }
    if lora is not None:
        adapters = param_bytes(config, mesh, rules, lora)
        out.update(params=p + adapters, grads=adapters, lora_merged=lora_merged_bytes(config, lora, mesh, rules))
    return out
