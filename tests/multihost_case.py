"""The model, mesh and inputs shared by the two-process run and its one-process reference."""

import jax
import numpy as np

from helpers import random_batch
from ilf_jax.model import CodeGenConfig, init_params

CONFIG = CodeGenConfig(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, bos_token_id=0, eos_token_id=0)
MESH = (2, 2, 2)


def case_inputs():
    """Deterministic params (as numpy) and a left-padded batch of 8 rows."""
    params = jax.tree.map(lambda x: np.asarray(x) * 4.0, init_params(CONFIG, jax.random.key(7)))
    tokens, valid = random_batch(np.random.default_rng(7), 8, 10, CONFIG.vocab_size)
    return params, tokens, valid
