"""The train state (step, params, opt_state) and its shardings on a mesh."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ilf_jax.model.family import ModelConfig, abstract_params
from ilf_jax.model.lora import Lora
from ilf_jax.parallel.distributed import put_global
from ilf_jax.parallel.sharding import param_shardings, replicated, tree_shardings


@flax.struct.dataclass
class TrainState:
    """Everything a step updates; the optimizer itself (pure functions) is kept outside."""

    step: jax.Array  # int32 scalar: optimizer steps done
    params: Any
    opt_state: Any


def trainable(config: ModelConfig, mesh: Mesh, lora: Lora | None = None) -> tuple[Any, Any]:
    """(abstract trainable tree, its NamedShardings): the model's params, or the LoRA adapters
    (placed by their logical names, like their base kernels)."""
    if lora is None:
        return abstract_params(config), param_shardings(config, mesh)
    return lora.abstract(), tree_shardings(lora.specs(), lora.abstract(), mesh)


def state_shardings(config: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, lora: Lora | None = None) -> TrainState:
    """NamedShardings for every leaf: params by the rule table, Adam moments like their params,
    scalars (step, counts) replicated. With `lora`, the trained params are the adapters."""
    shapes, pshard = trainable(config, mesh, lora)
    opt_shapes = jax.eval_shape(tx.init, shapes)
    rep = replicated(mesh)
    opt_shard = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        opt_shapes,
        pshard,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, jax.sharding.Sharding),
    )
    return TrainState(step=rep, params=pshard, opt_state=opt_shard)


def abstract_state(config: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, lora: Lora | None = None) -> TrainState:
    """ShapeDtypeStructs carrying shardings: the restore target for a checkpoint on `mesh`."""
    shapes = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)), trainable(config, mesh, lora)[0])
    shard = state_shardings(config, tx, mesh, lora)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shard)


def init_state(params: Any, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """A fresh state (step 0, zero moments) laid out in `shardings`; params are placed first."""
    params = put_global(params, shardings.params)
    make = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)), out_shardings=shardings)
    return make(params)
