"""The optimizer: global-norm clipping, then AdamW (no decay on biases and norms) on a schedule."""

from __future__ import annotations

from typing import Any

import jax
import optax

from ilf_jax.train.config import TrainConfig


def learning_rate_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then linear decay to 0, cosine decay to 0, or constant."""
    warmup = min(cfg.warmup_for(total_steps), total_steps)
    decay = max(total_steps - warmup, 1)
    lr = cfg.learning_rate
    if cfg.schedule == "linear":
        after = optax.linear_schedule(lr, 0.0, decay)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, decay)
    else:
        after = optax.constant_schedule(lr)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def decay_mask(params: Any) -> Any:
    """True for matrices and embeddings (ndim >= 2); biases and layer-norm scales/biases are 1-D."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    parts = []
    if cfg.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(
        optax.adamw(
            learning_rate_schedule(cfg, total_steps),
            b1=cfg.adam_b1,
            b2=cfg.adam_b2,
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*parts)
