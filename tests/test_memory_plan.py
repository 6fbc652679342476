"""The memory planner's parameter and optimizer bytes equal what real sharded arrays hold."""

import jax
import pytest

from ilf_jax.model import CodeGenConfig, init_params
from ilf_jax.parallel import make_mesh
from ilf_jax.parallel.memory import abstract_mesh, activation_bytes, cache_bytes, optimizer_bytes, param_bytes
from ilf_jax.train import TrainConfig, init_state, make_optimizer, state_shardings

CONFIG = CodeGenConfig(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=8, rotary_dim=4, bos_token_id=0, eos_token_id=0)


def device_bytes(tree, device) -> int:
    return sum(s.data.nbytes for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards if s.device == device)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_param_and_optimizer_bytes_match_real_arrays(shape):
    mesh = make_mesh(shape)
    tx = make_optimizer(TrainConfig(weight_decay=0.01), total_steps=10)
    state = init_state(init_params(CONFIG, jax.random.key(0)), tx, state_shardings(CONFIG, tx, mesh))
    device = mesh.devices.flat[0]
    assert param_bytes(CONFIG, abstract_mesh(shape)) == device_bytes(state.params, device)
    assert optimizer_bytes(CONFIG, tx, abstract_mesh(shape)) == device_bytes(state.opt_state, device)


def test_activations_shrink_with_remat_and_grow_with_batch():
    full = activation_bytes(CONFIG, 2, 32)
    assert activation_bytes(CONFIG, 4, 32) == 2 * full
    assert activation_bytes(CONFIG.replace(remat=True), 2, 32) < full
    assert activation_bytes(CONFIG.replace(n_layer=4), 2, 32) > full  # each block keeps its residuals


def test_cache_is_split_over_batch_and_heads():
    whole = cache_bytes(CONFIG, 8, 16, abstract_mesh((1, 1, 1)))
    assert whole == 2 * CONFIG.n_layer * 8 * 16 * CONFIG.n_embd * 4
    assert cache_bytes(CONFIG, 8, 16, abstract_mesh((2, 2, 2))) == whole // 8


def test_lora_bytes_match_real_arrays_and_shrink_training_state():
    from ilf_jax.model.store import lora_of
    from ilf_jax.parallel.memory import plan

    lora = lora_of(CONFIG, ("q", "v", "mlp_in"), 4, 8.0)
    tx = make_optimizer(TrainConfig(weight_decay=0.01), total_steps=10)
    mesh = make_mesh((1, 2, 4))
    state = init_state(lora.init(jax.random.key(0)), tx, state_shardings(CONFIG, tx, mesh, lora))
    device = mesh.devices.flat[0]
    assert param_bytes(CONFIG, abstract_mesh((1, 2, 4)), lora=lora) == device_bytes(state.params, device)
    assert optimizer_bytes(CONFIG, tx, abstract_mesh((1, 2, 4)), lora=lora) == device_bytes(state.opt_state, device)
    full = plan(CONFIG, (1, 2, 4), tx, 1, 32, 8, 16)
    half = CONFIG.replace(param_dtype="bfloat16")
    small = plan(half, (1, 2, 4), tx, 1, 32, 8, 16, lora=lora)
    assert small["optimizer"] < full["optimizer"] / 10 and small["grads"] < full["grads"] / 10
    assert full["params"] / 2 < small["params"] < full["params"] / 2 * 1.2  # bf16 base + fp32 adapters
    assert 0 < small["lora_merged"] < full["params"]
