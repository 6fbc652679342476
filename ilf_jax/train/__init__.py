"""Fine-tuning: TrainConfig, data to batches, Optax train state, jitted sharded step, Orbax checkpoints."""

from ilf_jax.train.config import TrainConfig
from ilf_jax.train.data import Example, encode_examples, read_jsonl
from ilf_jax.train.loop import TrainResult, evaluate, train
from ilf_jax.train.optim import learning_rate_schedule, make_optimizer
from ilf_jax.train.state import TrainState, abstract_state, init_state, state_shardings
from ilf_jax.train.step import loss_sums, make_eval_step, make_train_step

__all__ = [
    "Example",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "abstract_state",
    "encode_examples",
    "evaluate",
    "init_state",
    "learning_rate_schedule",
    "loss_sums",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "read_jsonl",
    "state_shardings",
    "train",
]
