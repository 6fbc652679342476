"""Packed sequences: the packed step equals the padded step, attention stays in its segment,
packing is a deterministic first-fit, and bad input fails before compiling."""

import jax
import numpy as np
import pytest

from ilf_jax.errors import IlfError
from ilf_jax.model.codegen import forward, init_params
from ilf_jax.model.config import CodeGenConfig
from ilf_jax.parallel import make_mesh
from ilf_jax.train import TrainConfig, init_state, learning_rate_schedule, make_optimizer, make_train_step, state_shardings
from ilf_jax.train import data as D
from tests.helpers import TINY_CONFIGS

CONFIG = CodeGenConfig(**TINY_CONFIGS["a"], bos_token_id=0, eos_token_id=0)
TCFG = TrainConfig(learning_rate=1e-2, weight_decay=0.1, max_grad_norm=0.0)
MAX_LEN = 64


def _encoded(n, seed=0):
    """Examples of mixed lengths (4..40 tokens), each with a prompt part and a target part."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(4, 41))
        out.append(D.Encoded(rng.integers(1, CONFIG.vocab_size, size=length).astype(np.int32), int(rng.integers(1, length))))
    return out


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0))


def _step(params, batch, mesh):
    tx = make_optimizer(TCFG, 10)
    sh = state_shardings(CONFIG, tx, mesh)
    step = make_train_step(CONFIG, tx, mesh, sh, learning_rate_schedule(TCFG, 10), return_grads=True, donate=False)
    return jax.device_get(step(init_state(params, tx, sh), batch)[1])


@pytest.mark.parametrize("weighting", ["token", "example"])
def test_packed_step_equals_padded_step(params, weighting):
    encoded = _encoded(12)
    idx = np.arange(12)
    one = make_mesh((1, 1, 1), jax.devices()[:1])
    padded = D.step_batch(encoded, idx, 12, 3, 16, MAX_LEN, weighting=weighting)
    ref = _step(params, padded, one)
    packed = D.step_batch(encoded, idx, 12, 0, 16, MAX_LEN, weighting=weighting, packing=True, micro_rows=2)
    assert packed["tokens"].shape[0] >= 2  # accumulation over packed micro-batches
    assert packed["tokens"].size < padded["tokens"].size  # fewer computed positions than padding
    expected = 12.0 if weighting == "example" else padded["weights"].sum()
    np.testing.assert_allclose(ref["tokens"], expected, rtol=1e-6)
    for shape in ((1, 1, 1), (2, 1, 4)):
        mesh = one if shape == (1, 1, 1) else make_mesh(shape)
        got = _step(params, packed, mesh)
        np.testing.assert_allclose(got["tokens"], ref["tokens"], rtol=1e-6)
        np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5, atol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=str(shape)), got["grads"], ref["grads"])
    # The two weightings really differ on examples of different lengths.
    if weighting == "example":
        token = _step(params, D.step_batch(encoded, idx, 12, 3, 16, MAX_LEN), one)
        diff = np.abs(token["grads"]["lm_head"]["kernel"] - ref["grads"]["lm_head"]["kernel"]).max()
        assert diff > 0.1 * np.abs(ref["grads"]["lm_head"]["kernel"]).max()


def test_packed_examples_do_not_see_each_other(params):
    encoded = _encoded(6, seed=3)
    packs = D.pack_step(encoded, np.arange(6), MAX_LEN)
    row = max(packs, key=len)
    assert len(row) >= 2
    batch = D.make_packed_batch(encoded, [row], 1, MAX_LEN)
    f = jax.jit(lambda p, b: forward(p, b["tokens"], CONFIG, segments=b["segments"], positions=b["positions"])[0])
    base = np.asarray(f(params, batch))
    seg = batch["segments"][0]
    changed = dict(batch, tokens=np.where(batch["segments"] == 1, (batch["tokens"] + 5) % CONFIG.vocab_size, batch["tokens"]))
    after = np.asarray(f(params, changed))
    others = (seg > 1)
    np.testing.assert_array_equal(after[0, others], base[0, others])
    assert np.abs(after[0, seg == 1] - base[0, seg == 1]).max() > 1e-3
    # Each packed example's logits are its logits when alone in a row.
    for s, i in enumerate(row, start=1):
        alone = np.asarray(forward(params, encoded[i].tokens[None, :-1], CONFIG)[0])[0]
        np.testing.assert_allclose(base[0, seg == s], alone, atol=1e-5, rtol=1e-5)


def test_packing_is_a_deterministic_first_fit():
    encoded = _encoded(40, seed=1)
    lengths = [e.length for e in encoded]
    runs = [[D.pack_step(encoded, s, MAX_LEN) for s in D.epoch_steps(lengths, 16, seed, 0, False)] for seed in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    for steps, idx in zip(runs[0], D.epoch_steps(lengths, 16, 0, 0, False)):
        flat = [i for p in steps for i in p]
        assert sorted(flat) == sorted(idx.tolist())
        assert all(sum(encoded[i].length - 1 for i in p) <= MAX_LEN for p in steps)
        # First fit: no example fits in an earlier row than the one it went to.
        for r, p in enumerate(steps):
            for i in p:
                for q in steps[:r]:
                    before = [j for j in q if list(idx).index(j) < list(idx).index(i)]
                    assert sum(encoded[j].length - 1 for j in before) + encoded[i].length - 1 > MAX_LEN
    assert D.first_fit([5, 4, 3, 2, 1], 6) == [[0, 4], [1, 3], [2]]
    with pytest.raises(IlfError, match="longer than max_length=6"):
        D.first_fit([3, 7], 6)


def test_packing_config_fields():
    cfg = TrainConfig.from_dict({"packing": True, "loss_weighting": "example"})
    assert cfg.packing and cfg.loss_weighting == "example"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(IlfError, match="loss_weighting"):
        TrainConfig.from_dict({"loss_weighting": "sequence"})
    with pytest.raises(IlfError, match="packing"):
        TrainConfig.from_dict({"packing": "yes"})
