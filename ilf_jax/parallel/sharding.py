"""Logical-axis rules -> mesh shardings for parameters, activations, batches and caches.

One table maps the logical names the model uses to mesh axes; changing it re-shards everything.
A dimension that a mesh axis does not divide is replicated instead of failing, and
`assert_sharded` catches rules that silently stopped sharding large parameters.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ilf_jax.model.common import Constrain
from ilf_jax.model.family import ModelConfig, abstract_params, param_specs

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("act_batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # grouped-query k/v heads: split only where the tensor axis divides them
    ("mlp", "tensor"),
    ("kv", None),
    ("norm", None),
    ("length", None),
    ("act_length", None),
    ("act_embed", None),
    ("act_vocab", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
)


def _mesh_axes(name: str | None, rules: Rules) -> tuple[str, ...]:
    if name is None:
        return ()
    for logical, axes in rules:
        if logical == name:
            return () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    raise KeyError(f"logical axis {name!r} has no rule")


def logical_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> PartitionSpec:
    """PartitionSpec for an array of `shape` whose dims have logical `names`; each mesh axis used once."""
    used: set[str] = set()
    out = []
    for name, size in zip(names, shape):
        axes = tuple(a for a in _mesh_axes(name, rules) if a not in used and mesh.shape[a] > 1)
        if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        else:
            out.append(None)
    return PartitionSpec(*out)


def logical_sharding(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """NamedSharding of an array with logical dimension `names` on `mesh`."""
    return NamedSharding(mesh, logical_spec(names, shape, mesh, rules))


def param_shardings(config: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """A pytree of NamedShardings for every parameter, derived from `jax.eval_shape` of init."""
    specs, shapes = param_specs(config), abstract_params(config)
    return jax.tree.map(
        lambda spec, s: logical_sharding(tuple(spec), s.shape, mesh, rules),
        specs,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def tree_shardings(specs: Any, shapes: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """NamedShardings of a pytree of arrays from a matching pytree of logical `PartitionSpec`s."""
    return jax.tree.map(lambda spec, s: logical_sharding(tuple(spec), s.shape, mesh, rules), specs, shapes,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Sharding of a [batch, ...] input: batch over ('data', 'fsdp'), the rest replicated."""
    axes = tuple(a for a in _mesh_axes("batch", rules) if mesh.shape[a] > 1)
    first = None if not axes else (axes[0] if len(axes) == 1 else axes)
    return NamedSharding(mesh, PartitionSpec(first, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def constrainer(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Constrain:
    """An activation-sharding hook for the model: pins tensors with logical names to the mesh."""

    def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, logical_sharding(names, x.shape, mesh, rules))

    return constrain


def assert_sharded(params: Any, min_size: int = 2**12) -> None:
    """Raise if a parameter with at least `min_size` elements is held whole by a device.

    Only meaningful on a mesh whose rules shard something; it guards against rule tables that
    silently stop matching the model's parameter names.
    """
    whole = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if leaf.size >= min_size and len(leaf.sharding.device_set) > 1:
            shard = leaf.sharding.shard_shape(leaf.shape)
            if tuple(shard) == tuple(leaf.shape):
                whole.append(jax.tree_util.keystr(path))
    if whole:
        raise AssertionError(f"parameters replicated on every device: {', '.join(whole)}")
