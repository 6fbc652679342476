"""`remainder: carry` reproduces the transformers 4.12.5 Trainer's updates (count, examples, strength,
linear schedule), `loss_weighting` weighs examples or tokens, and the random batch order is seeded."""

import functools

import jax
import numpy as np
import pytest

from ilf_jax.errors import IlfError
from ilf_jax.model.codegen import init_params
from ilf_jax.model.config import CodeGenConfig
from ilf_jax.parallel import make_mesh
from ilf_jax.train import TrainConfig, init_state, learning_rate_schedule, loss_sums, make_optimizer, make_train_step, state_shardings
from ilf_jax.train import data as D
from tests.helpers import TINY_CONFIGS

CONFIG = CodeGenConfig(**TINY_CONFIGS["a"], bos_token_id=0, eos_token_id=0)
MAX_LEN = 64


def _hf_trainer_updates(orders, accum):
    """The example indices of each optimizer update, following Trainer.train's inner loop (4.12.5):
    `enumerate` restarts the step counter every epoch, an update runs when (step + 1) % accum == 0 or,
    when the epoch has no more micro-batches than accum, at its last one; model.zero_grad() runs only
    after an update, so micro-batches since the last update keep their gradients."""
    updates, pending = [], []
    for order in orders:
        steps_in_epoch = len(order)
        for step, example in enumerate(order):
            pending.append(int(example))
            if (step + 1) % accum == 0 or (steps_in_epoch <= accum and step + 1 == steps_in_epoch):
                updates.append(sorted(pending))
                pending = []
    return updates


@pytest.mark.parametrize("n, per_epoch", [(44, 1), (78, 2), (20, 1), (64, 2), (33, 1), (100, 3)])
def test_carry_updates_are_the_hf_trainers(n, per_epoch):
    lengths = list(range(10, 10 + n))
    epochs = 2
    assert D.steps_per_epoch(n, 32, "carry") == per_epoch
    orders = [np.concatenate(D.epoch_steps(lengths, 32, 42, e, False)) for e in range(epochs)]
    ours = [sorted(map(int, u)) for e in range(epochs) for u in D.epoch_updates(lengths, 32, 42, e, False, "carry")]
    assert ours == _hf_trainer_updates(orders, 32)
    assert len(ours) == epochs * per_epoch


def test_update_counts_for_the_papers_data_sizes():
    # pi_Refine on 44 examples, pi_theta* on 78, 2 epochs at batch 32 (the figures).
    assert [D.steps_per_epoch(n, 32, "carry") * 2 for n in (44, 78)] == [2, 4]
    assert [D.steps_per_epoch(n, 32, "short_step") * 2 for n in (44, 78)] == [4, 6]
    # With N = 44 the second update holds the first epoch's 12 leftovers and 32 of the second epoch.
    sizes = [len(u) for e in range(2) for u in D.epoch_updates(list(range(44)), 32, 0, e, False, "carry")]
    assert sizes == [32, 44]


@pytest.mark.parametrize("total", [2, 4])
def test_linear_schedule_without_warmup_is_the_trainers(total):
    cfg = TrainConfig(learning_rate=5e-6, warmup_steps=0, schedule="linear")
    schedule = learning_rate_schedule(cfg, total)
    # get_linear_schedule_with_warmup(num_warmup_steps=0): lr * (total - i) / total at update i.
    hand = [5e-6 * (total - i) / total for i in range(total)]
    np.testing.assert_allclose([float(schedule(i)) for i in range(total)], hand, rtol=1e-6)


def _encoded(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(6, 41))
        out.append(D.Encoded(rng.integers(1, CONFIG.vocab_size, size=length).astype(np.int32), int(rng.integers(1, length - 2))))
    return out


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0))


@functools.cache
def _step(nominal):
    """A jitted train step returning its gradients (one per nominal batch; shapes are cached by jit)."""
    cfg = TrainConfig(learning_rate=1e-2, max_grad_norm=0.0)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    tx = make_optimizer(cfg, 10)
    sh = state_shardings(CONFIG, tx, mesh)
    step = make_train_step(CONFIG, tx, mesh, sh, learning_rate_schedule(cfg, 10), return_grads=True, donate=False,
                           nominal_batch=nominal)
    return step, tx, sh


def _grads(params, batch, nominal=None):
    step, tx, sh = _step(nominal)
    return jax.device_get(step(init_state(params, tx, sh), batch)[1])


@functools.partial(jax.jit, static_argnums=2)
def _example_grad(params, batch, per_example):
    """The gradient of one example's mean target NLL (per_example) or of its summed target NLL."""
    return jax.grad(lambda p: (lambda s, c: s / c if per_example else s)(*loss_sums(p, batch, CONFIG)))(params)


def _hand_grads(params, encoded, indices, per_example, divisor):
    """sum over examples of the gradient of (its mean target NLL | its summed target NLL), / divisor."""
    total = None
    for i in indices:
        b = D.make_batch(encoded, [i], 1, MAX_LEN)
        g = _example_grad(params, b, per_example)
        total = g if total is None else jax.tree.map(lambda a, c: a + c, total, g)
    return jax.tree.map(lambda a: np.asarray(a) / divisor, total)


def _close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6), a, b)


def test_carried_and_short_updates_have_the_trainers_strength(params):
    # batch 4, accumulation 4 x 1: a carried update of 6 examples is sum(per-example mean grads) / 4
    # (6/4 of a full step), an epoch of 3 examples is sum / 4, as loss / gradient_accumulation_steps makes them.
    encoded = _encoded(6)
    for idx in (np.arange(6), np.arange(3)):
        batch = D.step_batch(encoded, idx, 4, 4, 16, MAX_LEN, weighting="example")
        assert batch["tokens"].shape[0] == max(4, len(idx))
        got = _grads(params, batch, nominal=4)
        _close(got["grads"], _hand_grads(params, encoded, idx, True, 4))
        # ours (no nominal batch): the same examples at full strength, their mean
        _close(_grads(params, batch)["grads"], _hand_grads(params, encoded, idx, True, len(idx)))


def test_example_and_token_weighting(params):
    encoded = _encoded(4, seed=1)
    idx = np.arange(4)
    example = _grads(params, D.step_batch(encoded, idx, 4, 2, 16, MAX_LEN, weighting="example"))
    _close(example["grads"], _hand_grads(params, encoded, idx, True, 4))  # every example weighs 1/4
    token = _grads(params, D.step_batch(encoded, idx, 4, 2, 16, MAX_LEN, weighting="token"))
    n_targets = sum(e.length - e.n_prompt for e in encoded)
    _close(token["grads"], _hand_grads(params, encoded, idx, False, n_targets))  # every token weighs the same
    # A carried token-weighted update: the token mean, scaled by examples / nominal batch.
    carried = _grads(params, D.step_batch(encoded, idx, 2, 2, 16, MAX_LEN, weighting="token"), nominal=2)
    _close(carried["grads"], _hand_grads(params, encoded, idx, False, n_targets * 2 / 4))


def test_example_count_splits_rows_and_packed_segments():
    from ilf_jax.train.step import example_count

    encoded = _encoded(7, seed=2)
    padded = D.step_batch(encoded, np.arange(7), 8, 4, 16, MAX_LEN)
    packed = D.step_batch(encoded, np.arange(7), 8, 0, 16, MAX_LEN, packing=True, micro_rows=2)
    assert float(example_count(padded)) == 7.0 and float(example_count(packed)) == 7.0


def test_random_order_is_seeded_and_unsorted():
    lengths = list(range(10, 54))  # 44 examples, length grows with the index
    runs = {seed: [list(s) for s in D.epoch_steps(lengths, 32, seed, 0, False)] for seed in range(20)}
    assert runs[3] == [list(s) for s in D.epoch_steps(lengths, 32, 3, 0, False)]
    assert len({tuple(r[1]) for r in runs.values()}) == 20
    # group_by_length puts the shortest examples in the short step every time; random order does not.
    grouped_short = [np.mean([lengths[i] for i in D.epoch_steps(lengths, 32, s, 0, True)[-1]]) for s in range(20)]
    random_short = [np.mean([lengths[i] for i in r[1]]) for r in runs.values()]
    assert max(grouped_short) < 25 < np.mean(random_short)


def test_remainder_is_checked():
    assert TrainConfig.from_dict({"remainder": "carry"}).remainder == "carry"
    with pytest.raises(IlfError, match="remainder"):
        TrainConfig.from_dict({"remainder": "drop"})


def test_carry_run_has_the_trainers_updates_and_resumes_exactly(tmp_path):
    """6 examples at batch 4 for 2 epochs: 2 updates (4, then 2 + 4 examples), lr halving, and a run
    stopped after its first update resumes into the carried update with the same result."""
    import json

    from ilf_jax.model.store import load_model
    from ilf_jax.train import Example, train
    from ilf_jax.train.checkpoint import tree_equal
    from tests.helpers import tiny_tokenizer

    tok = tiny_tokenizer(tmp_path / "tok")
    examples = [Example(f"def f{i}(a):\n", f"    return a + {i}\n" * (1 + i % 3)) for i in range(6)]
    cfg = TrainConfig(learning_rate=1e-2, batch_size=4, micro_batch_size=1, epochs=2, mesh=(1, 1, 1), remainder="carry",
                      group_by_length=False, loss_weighting="example", length_multiple=16, max_length=64,
                      max_target_length=32, export_hf=False, init="random", save_every=1)
    whole = train(CONFIG, tok, examples, cfg, tmp_path / "whole", progress=False)
    assert (whole.steps, whole.total_steps) == (2, 2)
    logged = [json.loads(line) for line in whole.metrics_path.read_text().splitlines()]
    assert [r["lr"] for r in logged] == pytest.approx([1e-2, 5e-3])
    assert train(CONFIG, tok, examples, cfg, tmp_path / "split", progress=False, stop_after=1).steps == 1
    resumed = train(CONFIG, tok, examples, cfg, tmp_path / "split", progress=False)
    assert tree_equal(load_model(whole.model_dir)[1], load_model(resumed.model_dir)[1])
