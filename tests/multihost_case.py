"""The model, mesh and inputs shared by the two-process run and its one-process reference."""

import json
import pathlib

import jax
import numpy as np

from helpers import random_batch
from ilf_jax.model import CodeGenConfig, init_params

CONFIG = CodeGenConfig(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, bos_token_id=0, eos_token_id=0)
MESH = (2, 2, 2)
CONVERT_MESH = (1, 2, 4)  # embed dims split across the two processes: each host reads part of them
PROMPTS = ["def add(a, b):\n", "def first(xs):\n    if", "for i in", '"""\nWrite a function', "def f(x):\n    return"]
TEXTS = ["return a + b\n", "return xs[0]\n", "print(i * i)\n", "return None\n"]


def case_inputs():
    """Deterministic params (as numpy) and a left-padded batch of 8 rows."""
    params = jax.tree.map(lambda x: np.asarray(x) * 4.0, init_params(CONFIG, jax.random.key(7)))
    tokens, valid = random_batch(np.random.default_rng(7), 8, 10, CONFIG.vocab_size)
    return params, tokens, valid


def sampling_config():
    from ilf_jax.sample import SamplingConfig

    # 5 prompts x 2 samples = 10 rows on 8 decode slots (2 per batch shard of the (2,2,2) mesh),
    # chunks of 3 steps, so that rows are admitted as others finish.
    return SamplingConfig(n=2, temperature=0.8, max_new_tokens=8, batch_size=8, seed=3, chunk_steps=3)


def postprocess(text: str) -> str:
    from ilf_jax.data.formats import truncate_completion

    return truncate_completion(text)


def completions(outs) -> list[dict]:
    return [{"prompt": c.prompt_index, "sample": c.sample, "text": c.text, "finish": c.finish_reason, "tokens": c.num_tokens} for c in outs]


def train_examples():
    from ilf_jax.train import Example

    # 12 examples in batches of 8: two steps per epoch, the second with filler rows.
    return [Example(PROMPTS[i % len(PROMPTS)], TEXTS[i % len(TEXTS)] * (1 + i % 3)) for i in range(12)]


def train_config():
    from ilf_jax.train import TrainConfig

    # dp = 4 rows per micro-batch, 2 micro-batches per step (gradient accumulation), 2 steps.
    return TrainConfig(learning_rate=1e-2, batch_size=8, micro_batch_size=1, epochs=1, max_length=48, max_target_length=24,
                       save_every=1, mesh=MESH, length_multiple=16, export_hf=True)


def run_train(params, tokenizer, out_dir: pathlib.Path):
    """Two steps, stopped after the first and resumed from its checkpoint (restore across processes)."""
    from ilf_jax.train import train

    first = train((CONFIG, params), tokenizer, train_examples(), train_config(), out_dir, progress=False, stop_after=1)
    assert first.steps == 1
    return train((CONFIG, params), tokenizer, train_examples(), train_config(), out_dir, progress=False)


def losses(out_dir: pathlib.Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
