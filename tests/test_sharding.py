"""Sharded forward on several meshes == single device (every family); large parameters really are split."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_batch
from ilf_jax.errors import IlfError
from ilf_jax.model import CodeGenConfig, LlamaConfig, forward, init_params
from ilf_jax.parallel import assert_sharded, make_mesh, param_shardings
from ilf_jax.parallel.forward import sharded_forward
from ilf_jax.parallel.mesh import resolve_shape

CONFIG = CodeGenConfig(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=8, rotary_dim=4, bos_token_id=0, eos_token_id=0)
# Grouped-query attention with 2 kv heads: split over tensor=2, replicated over tensor=4.
LLAMA = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                    num_key_value_heads=2, max_position_embeddings=64, qkv_bias=True, bos_token_id=0, eos_token_id=0)
CONFIGS = {"codegen": CONFIG, "llama": LLAMA}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request):
    config = CONFIGS[request.param]
    params = init_params(config, jax.random.key(0))
    params = jax.tree.map(lambda x: x * 5 if x.ndim > 1 else x, params)  # larger weights, larger logits
    tokens, valid = random_batch(np.random.default_rng(0), 8, 12, config.vocab_size)
    logits = np.asarray(forward(params, jnp.asarray(tokens), config, valid=jnp.asarray(valid))[0])
    return config, params, tokens, valid, logits


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_forward_matches_single_device(reference, shape):
    config, params, tokens, valid, expected = reference
    mesh = make_mesh(shape)
    sharded = jax.device_put(params, param_shardings(config, mesh))
    if shape != (8, 1, 1):  # pure data parallelism replicates parameters by design
        assert_sharded(sharded, min_size=2**12)
    logits = sharded_forward(config, mesh)(sharded, jnp.asarray(tokens), jnp.asarray(valid))
    assert len(logits.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(logits)[valid], expected[valid], atol=1e-5)


def test_rules_split_large_params_along_the_named_axes():
    mesh = make_mesh((1, 2, 4))
    sh = param_shardings(CONFIG, mesh)
    assert sh["h_0"]["attn"]["qkv"].spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)
    assert sh["h_0"]["mlp"]["fc_in"]["kernel"].spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert sh["wte"].spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert sh["ln_f"]["scale"].spec == jax.sharding.PartitionSpec(None)


def test_kv_heads_split_over_tensor_only_when_divisible():
    P = jax.sharding.PartitionSpec
    sh = param_shardings(LLAMA, make_mesh((1, 4, 2)))  # 2 kv heads over tensor=2: split
    assert sh["layers_0"]["attn"]["k"].spec == P("fsdp", "tensor", None)
    assert sh["layers_0"]["attn"]["k_bias"].spec == P("tensor", None)
    sh = param_shardings(LLAMA, make_mesh((1, 2, 4)))  # over tensor=4: replicated, queries still split
    assert sh["layers_0"]["attn"]["k"].spec == P("fsdp", None, None)
    assert sh["layers_0"]["attn"]["q"].spec == P("fsdp", "tensor", None)
    assert sh["layers_0"]["attn"]["o"].spec == P("tensor", None, "fsdp")
    assert sh["layers_0"]["mlp"]["gate"]["kernel"].spec == P("fsdp", "tensor")
    assert sh["lm_head"].spec == P("fsdp", "tensor")


def test_assert_sharded_catches_replicated_params():
    mesh = make_mesh((1, 2, 4))
    params = jax.device_put(init_params(CONFIG, jax.random.key(1)), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    with pytest.raises(AssertionError, match="wte"):
        assert_sharded(params, min_size=2**12)


def test_mesh_shape_resolution():
    assert resolve_shape((1, -1, 2), 8) == (1, 4, 2)
    with pytest.raises(IlfError):
        resolve_shape((3, -1, 1), 8)
    with pytest.raises(IlfError):
        resolve_shape((2, 2, 1), 8)
