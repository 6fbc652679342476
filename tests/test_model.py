"""CodeGen in Flax: logit parity with transformers, HF round trip, real-size shapes (every family), bad input."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from helpers import TINY_CONFIGS, jax_logits, random_batch, save_hf, tiny_hf_model, torch_logits
from ilf_jax.errors import IlfError
from ilf_jax.model import CodeGenConfig, abstract_params, config_from_file
from ilf_jax.model.convert import export_hf, load_hf_params
from ilf_jax.model.family import weight_map
from ilf_jax.model.store import load_model, save_model

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_logits_match_transformers(tmp_path, name, safe):
    kw = TINY_CONFIGS[name]
    model = tiny_hf_model(seed=3, **kw)
    config, params = load_model(save_hf(model, tmp_path, safe=safe))
    tokens, valid = random_batch(np.random.default_rng(0), 4, 16, kw["vocab_size"])
    ref = torch_logits(model, tokens, valid)
    ours = jax_logits(params, config, tokens, valid)
    assert np.abs(ref).max() > 1.0  # non-trivial logits, so the tolerance means something
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=0)


def test_sharded_safetensors_with_index(tmp_path):
    model = tiny_hf_model(seed=4, **TINY_CONFIGS["b"])
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    config, params = load_model(tmp_path)
    tokens, valid = random_batch(np.random.default_rng(1), 2, 8, TINY_CONFIGS["b"]["vocab_size"])
    np.testing.assert_allclose(jax_logits(params, config, tokens, valid)[valid], torch_logits(model, tokens, valid)[valid], atol=1e-4)


def test_export_round_trip(tmp_path):
    from transformers import CodeGenForCausalLM

    kw = TINY_CONFIGS["c"]
    model = tiny_hf_model(seed=5, **kw)
    config, params = load_model(save_hf(model, tmp_path / "hf"))
    export_hf(params, config, tmp_path / "exported")
    reloaded = CodeGenForCausalLM.from_pretrained(tmp_path / "exported").eval()
    tokens, valid = random_batch(np.random.default_rng(2), 3, 10, kw["vocab_size"])
    np.testing.assert_allclose(torch_logits(reloaded, tokens, valid)[valid], jax_logits(params, config, tokens, valid)[valid], atol=1e-4)
    again = load_hf_params(tmp_path / "exported", config)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, again)


def test_native_checkpoint_round_trip(tmp_path):
    config = CodeGenConfig(**TINY_CONFIGS["a"], bos_token_id=0, eos_token_id=0)
    from ilf_jax.model import init_params

    params = init_params(config, jax.random.key(0))
    save_model(tmp_path / "ckpt", config, params)
    config2, params2 = load_model(tmp_path / "ckpt")
    assert config2 == config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)


REAL_CONFIGS = sorted(p.name for p in (REPO / "configs" / "models").glob("*.yaml") if p.stem != "tiny")


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_real_sizes_match_transformers_shapes(name):
    """Every real model config (CodeGen, Llama, Qwen2): our init's names, shapes and parameter
    count equal transformers' model built on the meta device from the same config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = config_from_file(REPO / "configs" / "models" / name)
    hf_dict = config.to_hf_dict()
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{k: v for k, v in hf_dict.items() if k not in ("architectures", "torch_dtype")}))
    assert type(hf).__name__ == hf_dict["architectures"][0]
    hf_shapes = {n: tuple(p.shape) for n, p in hf.named_parameters()}
    ours = abstract_params(config)
    entries = weight_map(config)
    assert {e.hf_name for e in entries} == set(hf_shapes)
    flat = {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(ours)}
    assert {e.path for e in entries} == set(flat)
    for e in entries:
        assert hf_shapes[e.hf_name] == e.hf_shape
        mapped = jax.eval_shape(e.to_jax, jax.ShapeDtypeStruct(e.hf_shape, jnp.float32))
        assert mapped.shape == flat[e.path].shape, e.hf_name
    assert sum(int(np.prod(s.shape)) for s in flat.values()) == sum(p.numel() for p in hf.parameters())


def test_bad_inputs_give_one_line_errors(tmp_path):
    from ilf_jax.cli import main

    with pytest.raises(IlfError, match="not found"):
        load_model(tmp_path / "missing")
    # Another architecture.
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(IlfError, match=r"config.json: model_type is 'gpt2'"):
        load_model(tmp_path / "gpt2")
    # Shapes that disagree with the config.
    kw = TINY_CONFIGS["a"]
    save_hf(tiny_hf_model(**kw), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["n_embd"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IlfError, match=r"model.safetensors: tensor 'transformer.wte.weight' has shape \[256, 32\], config.json implies \[256, 64\]"):
        load_model(tmp_path / "m")
    # A truncated safetensors file.
    save_hf(tiny_hf_model(**kw), tmp_path / "t")
    weights = tmp_path / "t" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(IlfError, match="model.safetensors: truncated safetensors file"):
        load_model(tmp_path / "t")
    # The CLI turns each into one line on stderr and a non-zero exit.
    for bad in ("missing", "gpt2", "m", "t"):
        assert main(["convert", str(tmp_path / bad), str(tmp_path / "out")]) == 2


def test_cli_convert_and_export(tmp_path, capsys):
    from ilf_jax.cli import main
    from transformers import CodeGenForCausalLM

    from helpers import tiny_tokenizer

    kw = TINY_CONFIGS["a"]
    model = tiny_hf_model(seed=6, **kw)
    save_hf(model, tmp_path / "hf", safe=False)
    tiny_tokenizer(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "back")]) == 0
    reloaded = CodeGenForCausalLM.from_pretrained(tmp_path / "back").eval()
    tokens, valid = random_batch(np.random.default_rng(3), 2, 8, kw["vocab_size"])
    np.testing.assert_allclose(torch_logits(reloaded, tokens, valid)[valid], torch_logits(model, tokens, valid)[valid], atol=1e-5)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "back").encode("def f():") == AutoTokenizer.from_pretrained(tmp_path / "hf").encode("def f():")
