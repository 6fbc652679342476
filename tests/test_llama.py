"""Llama / Qwen2 / Qwen3 behind the model-family interface: logit and greedy-decode parity with
transformers, export round trips (sharded with an index), rotary frequencies, bad input.
(Real-size shapes: test_model.py; sharding: test_sharding.py, both over every family.)"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from helpers import LLAMA_TINY, jax_logits, random_batch, tiny_hf_llama, torch_logits
from ilf_jax.errors import IlfError
from ilf_jax.model import config_from_file
from ilf_jax.model.convert import export_hf
from ilf_jax.model.llama import inverse_frequencies
from ilf_jax.model.store import load_model

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL = sorted(p.stem for p in (REPO / "configs" / "models").glob("*.yaml") if not p.stem.startswith(("codegen", "tiny")))


class NoText:
    """A tokenizer stand-in for token-level sampling: no EOS the model can produce, no stop tables."""

    eos_token_id = -1

    def __len__(self) -> int:
        return 0

    def batch_decode(self, ids, **kw):
        return [""] * len(ids)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (torch model, our config, our params), each saved by transformers and converted."""
    cache = {}

    def get(name):
        if name not in cache:
            model = tiny_hf_llama(name, seed=len(cache) + 1)
            d = tmp_path_factory.mktemp(name)
            if name == "llama-gqa":  # one of them sharded, with an index
                model.save_pretrained(d, max_shard_size="60KB")
                assert (d / "model.safetensors.index.json").is_file()
            else:
                model.save_pretrained(d)
            config, params = load_model(d)
            cache[name] = (model, config, params)
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(LLAMA_TINY))
def test_logits_match_transformers(converted, name):
    model, config, params = converted(name)
    assert config.model_type == LLAMA_TINY[name][0]
    tokens, valid = random_batch(np.random.default_rng(0), 4, 16, config.vocab_size)
    ref = torch_logits(model, tokens, valid)
    ours = jax_logits(params, config, tokens, valid)
    assert np.abs(ref).max() > 1.0  # non-trivial logits, so the tolerance means something
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama-llama3-bias", "qwen2-gqa-tied", "qwen3-qknorm"])
def test_greedy_decode_matches_transformers_generate(converted, name):
    from ilf_jax.sample import Sampler, SamplingConfig

    model, config, params = converted(name)
    rng = np.random.default_rng(1)
    prompts = [list(map(int, rng.integers(1, config.vocab_size, size=n))) for n in (7, 3, 12)]
    rows = Sampler(params, config, NoText()).generate_tokens(
        prompts, SamplingConfig(temperature=0.0, max_new_tokens=32, stop_rule=False, batch_size=4, buckets=(16,))
    )
    model.generation_config.eos_token_id = None
    for prompt, row in zip(prompts, rows):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 do_sample=False, max_new_tokens=32, pad_token_id=0)
        assert row.tokens.tolist() == out[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2-gqa-tied", "qwen3-qknorm"])
def test_export_round_trip(converted, tmp_path, name):
    from transformers import AutoModelForCausalLM

    model, config, params = converted(name)
    out = export_hf(params, config, tmp_path / "exported", max_shard_bytes=40_000)
    assert (out / "model.safetensors.index.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(reloaded) is type(model)
    tokens, valid = random_batch(np.random.default_rng(2), 3, 10, config.vocab_size)
    np.testing.assert_allclose(torch_logits(reloaded, tokens, valid)[valid], jax_logits(params, config, tokens, valid)[valid], atol=1e-4)
    again_config, again = load_model(out)
    assert again_config == config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, again)


@pytest.mark.parametrize("name", REAL)
def test_rotary_frequencies_of_real_configs_match_transformers(name):
    """rope_theta and rope_scaling (linear, llama3) of each real config give transformers' frequencies."""
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = config_from_file(REPO / "configs" / "models" / f"{name}.yaml")
    hf_config = AutoConfig.for_model(**{k: v for k, v in config.to_hf_dict().items() if k not in ("architectures", "torch_dtype")})
    np.testing.assert_allclose(inverse_frequencies(config), LlamaRotaryEmbedding(hf_config).inv_freq.numpy(), rtol=1e-6)


def test_bad_inputs_give_one_line_errors(converted, tmp_path):
    model, config, params = converted("qwen2-gqa-tied")
    d = tmp_path / "m"
    model.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    for change, match in (
        ({"model_type": "mamba"}, r"config.json: model_type is 'mamba', supported: codegen, llama, qwen2, qwen3"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"config.json: rope_scaling.rope_type is 'yarn'"),
        ({"use_sliding_window": True}, r"config.json: use_sliding_window is true"),
        ({"num_key_value_heads": 1}, r"model.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight' has shape \[32, 64\], config.json implies \[16, 64\]"),
        ({"tie_word_embeddings": False}, r"checkpoint has no tensor 'lm_head.weight'"),
    ):
        (d / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(IlfError, match=match):
            load_model(d)
    (d / "config.json").write_text(json.dumps(cfg))
    from safetensors.numpy import load_file, save_file

    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(IlfError, match=r"m: checkpoint has no tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_model(d)
    # A tokenizer whose EOS is not the config's.
    from helpers import tiny_tokenizer
    from ilf_jax.model.store import load_tokenizer

    tiny_tokenizer(d)  # EOS id 0, as in config.json
    load_tokenizer(d)
    (d / "config.json").write_text(json.dumps({**cfg, "eos_token_id": 5}))
    with pytest.raises(IlfError, match=r"tokenizer_config.json: eos_token '<\|endoftext\|>' has id 0, but .*config.json has eos_token_id 5"):
        load_tokenizer(d)


def test_convert_export_cli_and_training_step(converted, tmp_path):
    """`ilf convert` / `ilf export` take a Llama-family directory; the fused training loss equals
    transformers' mean cross-entropy on the same tokens (tied head included)."""
    from ilf_jax.cli import main
    from ilf_jax.train.step import loss_sums

    model, config, params = converted("qwen2-gqa-tied")
    model.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "back")]) == 0
    back_config, back = load_model(tmp_path / "back")
    assert back_config == config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, back)
    tokens, valid = random_batch(np.random.default_rng(4), 2, 9, config.vocab_size, min_len=9)
    batch = {"tokens": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
             "weights": jnp.ones((2, 8)), "valid": jnp.ones((2, 8), bool)}
    total, count = loss_sums(params, batch, config)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(tokens, dtype=torch.long), labels=torch.tensor(tokens, dtype=torch.long)).loss.item()
    np.testing.assert_allclose(float(total / count), ref, rtol=1e-5)
