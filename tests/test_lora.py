"""LoRA: sites by logical names, exact zero-init, frozen base, adapter-only optimizer state and
checkpoints, resume, another mesh, merged HF export, PEFT round trip, sampling, bad input."""

import json

import jax
import numpy as np
import pytest

from ilf_jax.errors import IlfError
from ilf_jax.model.codegen import abstract_params, forward, init_params, param_specs
from ilf_jax.model.config import CodeGenConfig
from ilf_jax.model.lora import Lora, projection_sites
from ilf_jax.parallel import make_mesh
from ilf_jax.train import Example, TrainConfig, abstract_state, init_state, learning_rate_schedule, make_optimizer, make_train_step, state_shardings, train
from ilf_jax.train.checkpoint import Checkpoints, tree_equal
from ilf_jax.train.config import LoraConfig
from ilf_jax.train.state import trainable
from tests.helpers import TINY_CONFIGS, save_hf, tiny_hf_model, tiny_tokenizer

CONFIG = CodeGenConfig(**TINY_CONFIGS["a"], bos_token_id=0, eos_token_id=0)
ALL = ("q", "k", "v", "out", "mlp_in", "mlp_out")


def _lora(targets=ALL, rank=4, alpha=8.0, config=CONFIG):
    return Lora.for_model(param_specs(config), abstract_params(config), targets, rank, alpha)


def test_sites_from_logical_names_and_sharded_like_their_base():
    sites = projection_sites(param_specs(CONFIG), abstract_params(CONFIG))
    by = {(s.path, s.role): s for s in sites}
    h, d = CONFIG.n_head, CONFIG.head_dim
    assert len(sites) == 6 * CONFIG.n_layer
    assert [by[(("h_0", "attn", "qkv"), r)].slot for r in "qkv"] == [0, 1, 2]
    assert by[(("h_0", "attn", "qkv"), "k")].out_shape == (h, d)
    assert by[(("h_1", "attn", "out"), "out")].in_shape == (h, d)
    assert by[(("h_0", "mlp", "fc_in", "kernel"), "mlp_in")].out_shape == (CONFIG.inner_dim,)
    mesh = make_mesh((1, 2, 4))
    _, shard = trainable(CONFIG, mesh, _lora())
    q = shard["h_0"]["attn"]["qkv"]["q"]
    assert tuple(q["a"].spec) == ("fsdp", None) and tuple(q["b"].spec) == (None, "tensor", None)
    assert shard["h_0"]["mlp"]["fc_out"]["kernel"]["mlp_out"]["a"].spec[0] == "tensor"


def test_zero_b_gives_exactly_the_base_logits_and_merge_is_the_adapter_product():
    params = init_params(CONFIG, jax.random.key(0))
    lora = _lora()
    adapters = lora.init(jax.random.key(1))
    tokens = np.random.default_rng(0).integers(1, CONFIG.vocab_size, size=(2, 12)).astype(np.int32)
    base = np.asarray(forward(params, tokens, CONFIG)[0])
    merged = lora.merge(params, adapters)
    np.testing.assert_array_equal(np.asarray(forward(merged, tokens, CONFIG)[0]), base)
    # A non-zero b changes exactly the q slot of the fused kernel by scale * a @ b.
    ad = jax.tree.map(lambda x: x, adapters)
    ad["h_0"]["attn"]["qkv"]["q"]["b"] = jax.random.normal(jax.random.key(2), ad["h_0"]["attn"]["qkv"]["q"]["b"].shape)
    w = np.asarray(lora.merge(params, ad)["h_0"]["attn"]["qkv"]) - np.asarray(params["h_0"]["attn"]["qkv"])
    q = ad["h_0"]["attn"]["qkv"]["q"]
    np.testing.assert_allclose(w[:, 0], 2.0 * np.einsum("er,rhd->ehd", q["a"], q["b"]), atol=1e-6)
    np.testing.assert_array_equal(w[:, 1:], 0.0)


def test_bad_lora_config_fails_with_one_line():
    with pytest.raises(IlfError, match="larger than the q projection"):
        _lora(rank=64)
    with pytest.raises(IlfError, match="rank=0"):
        _lora(rank=0)
    no_mlp = {k: v for k, v in param_specs(CONFIG)["h_0"].items() if k != "mlp"}
    shapes = {k: v for k, v in abstract_params(CONFIG)["h_0"].items() if k != "mlp"}
    with pytest.raises(IlfError, match="target 'mlp_in' names no parameter of this model"):
        Lora.for_model(no_mlp, shapes, ("q", "mlp_in"), 2, 4.0)
    for bad, match in (({"targets": ["gate"]}, "targets"), ({"rank": -1}, "rank"), ({"dropout": 0.1}, "dropout"),
                       ({"ranks": 4}, "unknown lora key")):
        with pytest.raises(IlfError, match=match):
            TrainConfig.from_dict({"lora": bad})
    cfg = TrainConfig.from_dict({"lora": {"rank": 4, "targets": "q"}})
    assert cfg.lora == LoraConfig(rank=4, targets=("q",)) and TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_cli_overrides_make_a_lora_section(tmp_path):
    from ilf_jax.train.cli import load_run_config

    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("model: m\ndata: d.jsonl\nout_dir: out\npacking: true\n")
    _, cfg = load_run_config(yaml_path, ["lora.rank=2", "lora.targets=[q,v]", "lora.base_dtype=bfloat16"])
    assert cfg.packing and cfg.lora == LoraConfig(rank=2, targets=("q", "v"), base_dtype="bfloat16")
    _, plain = load_run_config(yaml_path, [])
    assert plain.lora is None


def test_lora_step_keeps_base_identical_and_optimizer_state_adapter_only():
    params = init_params(CONFIG, jax.random.key(0))
    lora = _lora(rank=2)
    tcfg = TrainConfig(learning_rate=1e-2)
    tx = make_optimizer(tcfg, 10)
    mesh = make_mesh((2, 2, 2))
    sh = state_shardings(CONFIG, tx, mesh, lora)
    from ilf_jax.parallel.sharding import param_shardings

    base_sh = param_shardings(CONFIG, mesh)
    base = jax.device_put(params, base_sh)
    before = jax.device_get(base)
    state = init_state(lora.init(jax.random.key(1)), tx, sh)
    step = make_train_step(CONFIG, tx, mesh, sh, learning_rate_schedule(tcfg, 10), lora=lora, base_shardings=base_sh, donate=False)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, CONFIG.vocab_size, size=(2, 8, 17)).astype(np.int32)
    batch = {"tokens": tokens[..., :-1], "targets": tokens[..., 1:], "weights": np.ones((2, 8, 16), np.float32),
             "valid": np.ones((2, 8, 16), bool)}
    for _ in range(3):
        state, m = step(state, batch, base)
    assert tree_equal(jax.device_get(base), before)
    ad_shapes = sorted(x.shape for x in jax.tree.leaves(state.params))
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
    assert sorted(x.shape for x in moments) == sorted(ad_shapes * 2)  # Adam mu and nu of the adapters, nothing else
    assert float(np.abs(np.asarray(state.params["h_0"]["attn"]["qkv"]["q"]["b"])).max()) > 0
    # The single-device step gives the same loss and adapters (adapters sharded consistently).
    one = make_mesh((1, 1, 1), jax.devices()[:1])
    sh1 = state_shardings(CONFIG, tx, one, lora)
    step1 = make_train_step(CONFIG, tx, one, sh1, lora=lora, base_shardings=param_shardings(CONFIG, one))
    s1 = init_state(lora.init(jax.random.key(1)), tx, sh1)
    for _ in range(3):
        s1, m1 = step1(s1, batch, params)
    np.testing.assert_allclose(m1["loss"], m["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), jax.device_get(s1.params), jax.device_get(state.params))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random HF CodeGen with a tokenizer: the frozen base."""
    d = tmp_path_factory.mktemp("base")
    save_hf(tiny_hf_model(seed=0, std=0.1, **TINY_CONFIGS["a"]), d)
    tiny_tokenizer(d)
    return d


def _examples(n=12):
    names = ["add", "sub", "mul", "first", "last", "square", "double", "negate", "count", "inc", "dec", "half"]
    return [Example(f"def {names[i]}(a, b):\n", f"    return a {'+-*/%'[i % 5]} {i}\n") for i in range(n)]


LCFG = dict(learning_rate=2e-2, batch_size=8, micro_batch_size=1, epochs=3, warmup_steps=1, weight_decay=0.0, save_every=2,
            keep=3, length_multiple=16, max_length=64, max_target_length=32, remat=True,
            lora={"rank": 2, "alpha": 4.0, "targets": list(ALL)})


def test_lora_training_resume_mesh_export_peft_and_sampling(tmp_path, base_dir):
    import torch
    from peft import PeftModel
    from transformers import CodeGenForCausalLM

    from ilf_jax.model.store import load_adapters, load_model, load_tokenizer
    from ilf_jax.sample import Sampler, SamplingConfig

    cfg = TrainConfig.from_dict({**LCFG, "mesh": [4, 1, 2]})  # 2 micro-batches of 4 rows per step, packed
    examples = _examples()
    full = train(base_dir, None, examples, cfg.replace(packing=True), tmp_path / "full", progress=False)
    part = train(base_dir, None, examples, cfg.replace(packing=True), tmp_path / "part", progress=False, stop_after=3)
    assert part.model_dir is None
    resumed = train(base_dir, None, examples, cfg.replace(packing=True), tmp_path / "part", progress=False)
    assert resumed.steps == full.steps == 6
    config, base, lora, ad_full = load_adapters(full.model_dir)
    _, _, _, ad_res = load_adapters(resumed.model_dir)
    assert tree_equal(ad_full, ad_res)
    _, hf_base = load_model(base_dir)
    assert tree_equal(base, hf_base)  # the base the adapters refer to is untouched
    assert json.loads((full.model_dir / "lora.json").read_text())["base"] == str(base_dir.absolute())
    assert not (full.model_dir / "params").exists()
    # Checkpoints: adapters + their optimizer state only; restore onto another mesh.
    tx = make_optimizer(cfg, 6)
    mesh = make_mesh((1, 2, 4))
    with Checkpoints(tmp_path / "part" / "checkpoints") as ck:
        state, meta = ck.restore(abstract_state(config, tx, mesh, lora))
    assert meta["lora"]["base"] == str(base_dir.absolute())
    assert tree_equal(state.params, ad_full)
    assert state.params["h_0"]["attn"]["qkv"]["v"]["b"].sharding.spec[1] == "tensor"
    size = lambda t: sum(x.size for x in jax.tree.leaves(t))  # noqa: E731
    assert size(state.opt_state) < 2 * size(ad_full) + 8 and size(ad_full) < size(base) / 4

    # Merged (our load) vs the transformers export of the merge vs PEFT's unmerged adapters on the base.
    tokens = np.random.default_rng(0).integers(1, CONFIG.vocab_size, size=(2, 20)).astype(np.int32)
    _, merged = load_model(full.model_dir)
    ours = np.asarray(forward(merged, tokens, config)[0])
    unmerged = np.asarray(forward(lora.merge(base, ad_full), tokens, config)[0])
    np.testing.assert_allclose(unmerged, ours, atol=1e-5, rtol=1e-5)
    plain = np.asarray(forward(base, tokens, config)[0])
    assert np.abs(ours - plain).max() > 1e-2  # training moved the model
    t = torch.tensor(tokens, dtype=torch.long)
    with torch.no_grad():
        hf_merged = CodeGenForCausalLM.from_pretrained(full.hf_dir).eval()(input_ids=t).logits.numpy()
        peft = PeftModel.from_pretrained(CodeGenForCausalLM.from_pretrained(base_dir), full.model_dir.parent / "peft").eval()
        peft_logits = peft(input_ids=t).logits.numpy()
    np.testing.assert_allclose(peft_logits, hf_merged, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ours, peft_logits, atol=1e-4, rtol=1e-4)

    # Sampling from the adapter directory gives the merged model's tokens.
    tok = load_tokenizer(full.model_dir)
    sc = SamplingConfig(n=1, temperature=0.0, max_new_tokens=8, stop_rule=False, buckets=(16,))
    prompts = ["def add(a, b):\n", "def half(a, b):\n"]
    _, hf_params = load_model(full.hf_dir)
    got = Sampler(merged, config, tok).sample(prompts, sc)
    want = Sampler(hf_params, config, tok).sample(prompts, sc)
    assert [c.text for c in got] == [c.text for c in want] and all(c.num_tokens == 8 for c in got)


def test_lora_and_packing_on_the_llama_family(tmp_path):
    """The same LoRA code on Qwen2 (GQA, qkv biases, tied head): roles found by logical names,
    packed training, and PEFT's unmerged adapters on transformers' model give our logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ilf_jax.model import family
    from ilf_jax.model.store import load_adapters, load_model
    from tests.helpers import tiny_hf_llama

    base = tmp_path / "qwen2"
    tiny_hf_llama("qwen2-gqa-tied", seed=3, std=0.1).save_pretrained(base)
    tiny_tokenizer(base)
    cfg = TrainConfig.from_dict({**LCFG, "mesh": [2, 1, 2], "packing": True, "remat": False, "epochs": 2, "save_every": 0})
    result = train(base, None, _examples(8), cfg, tmp_path / "out", progress=False)
    config, params, lora, _ = load_adapters(result.model_dir)
    assert {(s.path[-1], s.role) for s in lora.sites} == {("q", "q"), ("k", "k"), ("v", "v"), ("o", "out"),
                                                           ("kernel", "mlp_in"), ("kernel", "mlp_out")}
    assert len(lora.sites) == 7 * config.n_layer  # gate and up are both mlp_in
    tokens = np.random.default_rng(1).integers(1, 256, size=(2, 16)).astype(np.int32)
    _, merged = load_model(result.model_dir)
    ours = np.asarray(family.forward(merged, tokens, config)[0])
    assert np.abs(ours - np.asarray(family.forward(params, tokens, config)[0])).max() > 1e-2
    with torch.no_grad():
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "out" / "peft").eval()
        theirs = peft(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
