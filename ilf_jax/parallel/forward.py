"""The model's forward pass as a jitted function with explicit shardings on a mesh."""

from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import Mesh

from ilf_jax.model.family import ModelConfig, forward
from ilf_jax.parallel.sharding import DEFAULT_RULES, Rules, batch_sharding, constrainer, logical_sharding, param_shardings


def sharded_forward(config: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Callable:
    """jit(params, tokens [B,T], valid [B,T]) -> logits [B,T,V], batch-sharded in and out."""
    constrain = constrainer(mesh, rules)

    def fn(params, tokens, valid):
        return forward(params, tokens, config, valid=valid, constrain=constrain)[0]

    def out_sharding(batch: int, length: int):
        return logical_sharding(("act_batch", "act_length", "act_vocab"), (batch, length, config.vocab_size), mesh, rules)

    compiled = {}

    def call(params, tokens, valid):
        key = tokens.shape
        if key not in compiled:
            compiled[key] = jax.jit(
                fn,
                in_shardings=(param_shardings(config, mesh, rules), batch_sharding(mesh, 2, rules), batch_sharding(mesh, 2, rules)),
                out_shardings=out_sharding(*tokens.shape),
            )
        return compiled[key](params, tokens, valid)

    return call
