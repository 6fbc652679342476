"""Masked causal-LM loss, the jitted sharded train step (lax.scan gradient accumulation) and eval.

A batch is a dict of [accum, rows, T] arrays (see `data.make_batch`): `tokens`, `targets`
(next tokens), `weights` (> 0 where the target is a target-side token), and either `valid`
(padded rows) or `segments` + `positions` (packed rows, `data.make_packed_batch`). The loss of a
step is the weighted mean NLL over the whole effective batch: each micro-batch adds its summed
weighted NLL, its summed weight and the gradient of the sum, and the step divides once, so
accumulating micro-batches equals one big batch exactly (up to summation order). With a
`nominal_batch` (the HF Trainer's fixed accumulation, `TrainConfig.remainder: carry`), the gradient is
instead scaled by (examples in the update) / nominal_batch: a short or carried update is weaker or
stronger, as the Trainer's loss / gradient_accumulation_steps makes it.

With a `Lora`, the trained pytree is the adapters: the step takes the frozen base params as a
third argument and the loss sees `lora.merge(base, adapters)`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ilf_jax.model.common import lm_head_logits
from ilf_jax.model.family import ModelConfig, forward, lm_head
from ilf_jax.model.lora import Lora
from ilf_jax.parallel.sharding import DEFAULT_RULES, Rules, batch_sharding, constrainer, replicated
from ilf_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def _inputs(batch: Batch, constrain) -> dict[str, Any]:
    """The forward's mask arguments of a padded or a packed batch."""
    kwargs = {} if constrain is None else {"constrain": constrain}
    if "segments" in batch:
        return {**kwargs, "segments": batch["segments"], "positions": batch["positions"]}
    return {**kwargs, "valid": batch["valid"]}


def token_nll(params: Any, batch: Batch, config: ModelConfig, constrain=None) -> jax.Array:
    """NLL of every target [B, T] (fp32), unweighted."""
    logits, _ = forward(params, batch["tokens"], config, **_inputs(batch, constrain))
    # logsumexp - logit[target]. The target logit is picked with a one-hot product rather than a
    # gather: with the vocabulary sharded over 'tensor' it reduces locally (no all-gather of the
    # logits), and its backward is elementwise instead of a scatter.
    onehot = jax.nn.one_hot(batch["targets"], logits.shape[-1], dtype=logits.dtype)
    picked = jnp.sum(logits * onehot, axis=-1)
    return jax.nn.logsumexp(logits, axis=-1) - picked


def loss_sums(params: Any, batch: Batch, config: ModelConfig, constrain=None) -> tuple[jax.Array, jax.Array]:
    """(summed NLL over weighted tokens, number of weighted tokens) of one [B, T] batch.

    The LM head and cross-entropy are fused (`_weighted_nll`): logits are never kept for the
    backward pass, and the vocabulary-wide softmax is computed once instead of twice.
    """
    hidden, _ = forward(params, batch["tokens"], config, hidden_only=True, **_inputs(batch, constrain))
    w = batch["weights"].astype(jnp.float32)
    kernel, bias = lm_head(params, config)
    return _weighted_nll(hidden, kernel, bias, batch["targets"], w, config, constrain), jnp.sum(w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _weighted_nll(hidden, kernel, bias, targets, weights, config, constrain):
    return _weighted_nll_fwd(hidden, kernel, bias, targets, weights, config, constrain)[0]


def _weighted_nll_fwd(hidden, kernel, bias, targets, weights, config, constrain):
    """sum(weights * NLL) and, in the same pass, its gradients (the loss is linear in them)."""
    logits = lm_head_logits(hidden, kernel, bias, config)
    if constrain is not None:
        logits = constrain(logits, ("act_batch", "act_length", "act_vocab"))
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    exp = jnp.exp(logits - top)
    total = jnp.sum(exp, axis=-1, keepdims=True)
    onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    picked = jnp.sum(logits * onehot, axis=-1)
    nll = jnp.log(total[..., 0]) + top[..., 0] - picked
    dlogits = (exp / total - onehot) * weights[..., None]  # d loss / d logits, fp32
    dtype = jnp.dtype(config.dtype)
    d = dlogits.astype(dtype)
    dhidden = (d @ kernel.astype(dtype).T).astype(hidden.dtype)
    dkernel = jnp.einsum("bte,btv->ev", hidden.astype(dtype), d).astype(kernel.dtype)
    dbias = None if bias is None else jnp.sum(dlogits, axis=(0, 1)).astype(bias.dtype)
    return jnp.sum(nll * weights), (dhidden, dkernel, dbias, targets, weights)


def _weighted_nll_bwd(config, constrain, res, g):
    dhidden, dkernel, dbias, targets, weights = res
    zero_targets = np.zeros(targets.shape, dtype=jax.dtypes.float0)
    return g * dhidden, g * dkernel, None if dbias is None else g * dbias, zero_targets, jnp.zeros_like(weights)


_weighted_nll.defvjp(_weighted_nll_fwd, _weighted_nll_bwd)


def batch_shardings(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict[str, NamedSharding]:
    """[accum, rows, T] arrays: rows over the batch axes ('data', 'fsdp'), the rest replicated."""
    spec = batch_sharding(mesh, 2, rules).spec
    sharding = NamedSharding(mesh, PartitionSpec(None, *spec))
    return {k: sharding for k in ("tokens", "targets", "weights", "valid", "segments", "positions")}


def accumulate_grads(params: Any, batch: Batch, config: ModelConfig, constrain=None, grad_shardings=None,
                     to_model: Callable[[Any], Any] = lambda p: p):
    """lax.scan over the leading micro-batch axis: (summed grads fp32, summed NLL, token count).
    `to_model` maps the trained pytree to the model's params (LoRA: merges the adapters)."""

    grad_fn = jax.value_and_grad(lambda p, mb: loss_sums(to_model(p), mb, config, constrain), has_aux=True)

    def micro(carry, mb):
        gsum, lsum, count = carry
        (l, c), g = grad_fn(params, mb)
        gsum = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), gsum, g)
        if grad_shardings is not None:
            gsum = jax.lax.with_sharding_constraint(gsum, grad_shardings)
        return (gsum, lsum + l, count + c), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    if grad_shardings is not None:
        zeros = jax.lax.with_sharding_constraint(zeros, grad_shardings)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (gsum, lsum, count), _ = jax.lax.scan(micro, init, batch)
    return gsum, lsum, count


def example_count(batch: Batch) -> jax.Array:
    """How many examples a batch's weights cover: runs of weighted positions, split at row and
    segment starts (each example's weighted targets are one contiguous run)."""
    on = batch["weights"] > 0
    pad = [(0, 0)] * (on.ndim - 1) + [(1, 0)]
    cont = jnp.pad(on[..., :-1], pad)
    if "segments" in batch:
        seg = batch["segments"]
        cont = cont & jnp.pad(seg[..., :-1] == seg[..., 1:], pad)
    return jnp.sum(on & ~cont).astype(jnp.float32)


def make_train_step(
    config: ModelConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    shardings: TrainState,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    *,
    return_grads: bool = False,
    donate: bool = True,
    lora: Lora | None = None,
    base_shardings: Any = None,
    rules: Rules = DEFAULT_RULES,
    nominal_batch: int | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings; `state` is donated.
    With `lora`: `step(state, batch, base_params)`, the state holding only the adapters.

    `nominal_batch`: scale the gradient by examples / nominal_batch (see the module docstring).

    Metrics: loss (mean target NLL), grad_norm (before clipping), lr (of this step), tokens
    (summed target weights: tokens, or examples with example weighting), and with
    `return_grads` the averaged gradients (for tests).
    """
    constrain = constrainer(mesh, rules)
    dtype = jnp.dtype(config.dtype)

    def step(state: TrainState, batch: Batch, base: Any = None):
        to_model = (lambda p: p) if lora is None else (lambda p: lora.merge(base, p, dtype))
        gsum, lsum, count = accumulate_grads(state.params, batch, config, constrain, shardings.params, to_model)
        denom = jnp.maximum(count, 1.0)
        scale = denom if nominal_batch is None else denom * nominal_batch / jnp.maximum(example_count(batch), 1.0)
        grads = jax.tree.map(lambda g: g / scale, gsum)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": lsum / denom,
            "grad_norm": optax.tree.norm(grads),
            "tokens": count,
            "lr": schedule(state.step) if schedule is not None else jnp.zeros(()),
        }
        if return_grads:
            metrics["grads"] = grads
        return TrainState(state.step + 1, params, opt_state), metrics

    rep = replicated(mesh)
    metric_shardings = {"loss": rep, "grad_norm": rep, "tokens": rep, "lr": rep}
    if return_grads:
        metric_shardings["grads"] = shardings.params
    # One sharding for every batch array (a pytree prefix): padded and packed batches alike.
    bshard = batch_shardings(mesh, rules)["tokens"]
    in_shardings = (shardings, bshard) if lora is None else (shardings, bshard, base_shardings)
    return jax.jit(
        step if lora is not None else (lambda state, batch: step(state, batch)),
        in_shardings=in_shardings,
        out_shardings=(shardings, metric_shardings),
        donate_argnums=(0,) if donate else (),
    )


def make_eval_step(config: ModelConfig, mesh: Mesh | None = None,
                   rules: Rules = DEFAULT_RULES) -> Callable[[Any, Batch], tuple[jax.Array, jax.Array]]:
    """`eval(params, batch[B, T]) -> (summed NLL per row, target tokens per row)`, jitted."""
    constrain = None if mesh is None else constrainer(mesh, rules)

    def run(params, batch):
        w = batch["weights"].astype(jnp.float32)
        nll = token_nll(params, batch, config, constrain)
        return jnp.sum(nll * w, axis=-1), jnp.sum(w, axis=-1)

    return jax.jit(run)
