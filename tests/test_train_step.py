"""Loss masking, sharded step == single-device step, accumulation == big batch, remat parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilf_jax.model.codegen import forward, init_params
from ilf_jax.model.config import CodeGenConfig
from ilf_jax.parallel import make_mesh
from ilf_jax.train import TrainConfig, init_state, learning_rate_schedule, loss_sums, make_optimizer, make_train_step, state_shardings
from tests.helpers import TINY_CONFIGS

CONFIG = CodeGenConfig(**TINY_CONFIGS["a"], bos_token_id=0, eos_token_id=0)
TCFG = TrainConfig(learning_rate=1e-2, weight_decay=0.1, warmup_steps=2, max_grad_norm=0.5)


def _batch(rows, length, seed=0):
    """Right-padded rows, each with a prompt part (no loss) and a target part."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CONFIG.vocab_size, size=(rows, length + 1)).astype(np.int32)
    lengths = rng.integers(length // 2, length + 1, size=rows)
    n_prompt = rng.integers(1, length // 2, size=rows)
    pos = np.arange(length)[None]
    valid = pos < lengths[:, None]
    weights = (valid & (pos >= n_prompt[:, None] - 1)).astype(np.float32)
    return {"tokens": np.where(valid, tokens[:, :-1], 0), "targets": np.where(valid, tokens[:, 1:], 0), "weights": weights, "valid": valid}


def _stack(b, accum):
    return {k: v.reshape(accum, v.shape[0] // accum, *v.shape[1:]) for k, v in b.items()}


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0))


def _run(params, batch, mesh, config=CONFIG, steps=1):
    tx = make_optimizer(TCFG, 10)
    sh = state_shardings(config, tx, mesh)
    state = init_state(params, tx, sh)
    step = make_train_step(config, tx, mesh, sh, learning_rate_schedule(TCFG, 10), return_grads=True, donate=False)
    for _ in range(steps):
        state, metrics = step(state, batch)
    return jax.device_get((state, metrics))


def test_prompt_labels_do_not_change_loss_target_labels_do(params):
    b = _batch(4, 24)
    f = jax.jit(lambda p, b: loss_sums(p, b, CONFIG))
    base = np.asarray(f(params, b))
    masked = b["weights"] == 0
    changed = dict(b, targets=np.where(masked, (b["targets"] + 7) % CONFIG.vocab_size, b["targets"]))
    np.testing.assert_array_equal(np.asarray(f(params, changed)), base)
    r, t = np.argwhere(b["weights"] > 0)[3]
    one = b["targets"].copy()
    one[r, t] = (one[r, t] + 1) % CONFIG.vocab_size
    assert abs(float(f(params, dict(b, targets=one))[0]) - float(base[0])) > 1e-3
    # The loss is the weighted mean NLL of the targets under the model: check by hand.
    logits = jax.nn.log_softmax(forward(params, b["tokens"], CONFIG, valid=b["valid"])[0])
    nll = -np.take_along_axis(np.asarray(logits), b["targets"][..., None], -1)[..., 0]
    np.testing.assert_allclose(base[0], (nll * b["weights"]).sum(), rtol=1e-5)
    assert base[1] == b["weights"].sum()


def test_fused_lm_head_loss_gradients_equal_plain_autodiff(params):
    """The fused LM-head + cross-entropy VJP gives the gradients autodiff gives on the plain loss."""
    b = _batch(4, 24, seed=2)

    def plain(p):
        logp = jax.nn.log_softmax(forward(p, b["tokens"], CONFIG, valid=b["valid"])[0])
        nll = -jnp.take_along_axis(logp, jnp.asarray(b["targets"])[..., None], -1)[..., 0]
        return jnp.sum(nll * b["weights"])

    expected = jax.jit(jax.grad(plain))(params)
    fused = jax.jit(jax.grad(lambda p: 3.0 * loss_sums(p, b, CONFIG)[0]))(params)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, 3.0 * e, atol=1e-5, rtol=1e-4), fused, expected)
    assert float(np.abs(np.asarray(expected["lm_head"]["kernel"])).max()) > 1e-3


def test_sharded_step_matches_single_device(params):
    batch = _stack(_batch(8, 32, seed=1), 1)
    ref_state, ref = _run(params, batch, make_mesh((1, 1, 1), jax.devices()[:1]))
    assert np.isfinite(ref["loss"]) and ref["grad_norm"] > 0
    for shape in ((8, 1, 1), (2, 2, 2), (1, 2, 4)):
        state, m = _run(params, batch, make_mesh(shape))
        np.testing.assert_allclose(m["loss"], ref["loss"], rtol=1e-5, err_msg=str(shape))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=str(shape)), m["grads"], ref["grads"])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=str(shape)), state.params, ref_state.params)


def test_accumulation_equals_big_batch(params):
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    flat = _batch(32, 16, seed=2)
    big_state, big = _run(params, _stack(flat, 1), mesh)
    acc_state, acc = _run(params, _stack(flat, 4), mesh)
    np.testing.assert_allclose(acc["loss"], big["loss"], rtol=1e-5)
    np.testing.assert_allclose(acc["tokens"], big["tokens"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), acc["grads"], big["grads"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), acc_state.params, big_state.params)


def test_remat_matches_no_remat(params):
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    batch = _stack(_batch(4, 16, seed=3), 1)
    _, plain = _run(params, batch, mesh)
    _, remat = _run(params, batch, mesh, config=CONFIG.replace(remat=True))
    np.testing.assert_allclose(remat["loss"], plain["loss"], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6), remat["grads"], plain["grads"])


def test_bf16_compute_keeps_fp32_master_weights(params):
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    batch = _stack(_batch(4, 16, seed=4), 1)
    _, plain = _run(params, batch, mesh)
    state, half = _run(params, batch, mesh, config=CONFIG.replace(dtype="bfloat16"))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.opt_state) if x.ndim)
    np.testing.assert_allclose(half["loss"], plain["loss"], rtol=2e-2)


def test_sharding_rules_reach_training_as_they_reach_sampling(params):
    """A rule table given to training places params, optimizer state and batches (like `Sampler(rules=...)`):
    the step under rules that shard weights over 'tensor' instead of 'fsdp' computes the same update."""
    from ilf_jax.parallel.sharding import DEFAULT_RULES

    mesh = make_mesh((1, 2, 4))
    swap = {"fsdp": "tensor", "tensor": "fsdp"}
    swapped = tuple((name, swap.get(axes, axes) if isinstance(axes, str) else axes) for name, axes in DEFAULT_RULES)
    tx = make_optimizer(TCFG, 10)
    default, custom = state_shardings(CONFIG, tx, mesh), state_shardings(CONFIG, tx, mesh, rules=swapped)
    specs = lambda sh: [s.spec for s in jax.tree.leaves(sh.params)]  # noqa: E731
    assert specs(default) != specs(custom)  # the rules decided the placement
    batch = _stack(_batch(8, 32, seed=3), 1)
    outs = []
    for rules, sh in ((DEFAULT_RULES, default), (swapped, custom)):
        step = make_train_step(CONFIG, tx, mesh, sh, learning_rate_schedule(TCFG, 10), donate=False, rules=rules)
        state, m = step(init_state(params, tx, sh), batch)
        assert [s.sharding.spec for s in jax.tree.leaves(state.params)] == specs(sh)
        outs.append(jax.device_get((state.params, m["loss"])))
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), outs[0][0], outs[1][0])
