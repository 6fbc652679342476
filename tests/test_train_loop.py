"""End-to-end runs: overfitting (checked by transformers), HF export parity, evaluate, resume, CLI."""

import json

import numpy as np
import pytest

from ilf_jax.model.codegen import forward
from ilf_jax.model.config import CodeGenConfig
from ilf_jax.model.store import load_model, load_tokenizer
from ilf_jax.parallel import make_mesh
from ilf_jax.train import Example, TrainConfig, abstract_state, evaluate, make_optimizer, train
from ilf_jax.train.checkpoint import Checkpoints, tree_equal
from tests.helpers import TINY_CONFIGS, tiny_tokenizer

CONFIG = CodeGenConfig(**TINY_CONFIGS["a"], bos_token_id=0, eos_token_id=0)
NAMES = ["add", "sub", "mul", "first", "last", "square", "double", "negate", "count", "is_empty", "head", "tail", "inc", "dec", "half", "ident"]
BODIES = ["a + b", "a - b", "a * b", "a[0]", "a[-1]", "a * a", "2 * a", "-a", "len(a)", "not a", "a[:1]", "a[1:]", "a + 1", "a - 1", "a / 2", "a"]


def _examples(n=16):
    return [
        Example(f"def {NAMES[i]}(a, b):\n", f"    return {BODIES[i]}\n", truncatable=f"# old: {NAMES[i]}\n", prefix="OLD CODE:\n")
        for i in range(n)
    ]


def _hf_target_nll(hf_dir, tok, examples):
    """Per-example mean target NLL computed by transformers (its own label shift, -100 masking)."""
    import torch
    from transformers import CodeGenForCausalLM

    model = CodeGenForCausalLM.from_pretrained(hf_dir).eval()
    out = []
    for ex in examples:
        head = sum((tok(s, add_special_tokens=False)["input_ids"] for s in (ex.prefix, ex.truncatable, ex.prompt)), [])
        target = tok(ex.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([head + target])
        labels = torch.tensor([[-100] * len(head) + target])
        with torch.no_grad():
            out.append(float(model(input_ids=ids, labels=labels).loss))
    return np.array(out)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory, tok_dir):
    """A tiny model trained from random init on 8 examples until it has memorised them."""
    out = tmp_path_factory.mktemp("overfit")
    cfg = TrainConfig(learning_rate=3e-2, batch_size=8, micro_batch_size=2, epochs=60, warmup_steps=5, schedule="cosine",
                      weight_decay=0.0, mesh=(1, 1, 1), seed=0, log_every=10, length_multiple=16, max_length=128, max_target_length=64)
    examples = _examples(8)
    result = train(CONFIG, tok_dir, examples, cfg, out, progress=False)
    return result, examples


def test_overfit_loss_falls_and_transformers_agrees(overfit_run, tok_dir):
    result, examples = overfit_run
    recs = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert len(recs) == result.total_steps == 60 and recs[-1]["step"] == 60
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "epoch"} <= set(recs[0])
    assert recs[0]["loss"] > 4.0  # ~ln(256) at random init
    assert recs[-1]["loss"] < 0.05 * recs[0]["loss"]
    # An independent check of label shift and masking: transformers' own loss on the export.
    tok = load_tokenizer(tok_dir)
    hf_nll = _hf_target_nll(result.hf_dir, tok, examples)
    assert hf_nll.mean() < 0.3, hf_nll
    assert (result.hf_dir / "tokenizer.json").is_file() and (result.model_dir / "tokenizer.json").is_file()
    assert any((result.model_dir.parent / "tb").iterdir())


def test_export_matches_transformers_logits_and_evaluate(overfit_run, tok_dir):
    import torch
    from transformers import CodeGenForCausalLM

    result, examples = overfit_run
    config, params = load_model(result.model_dir)
    assert config.param_dtype == "float32"
    model = CodeGenForCausalLM.from_pretrained(result.hf_dir).eval()
    tokens = np.random.default_rng(0).integers(1, CONFIG.vocab_size, size=(2, 20)).astype(np.int32)
    ours = np.asarray(forward(params, tokens, config)[0])
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    # evaluate(): per-example mean target NLL, as transformers computes it.
    tok = load_tokenizer(tok_dir)
    unseen = _examples(16)[8:]
    mixed = examples[:3] + unseen[:3]
    nll = evaluate(params, config, tok, mixed, batch_size=4, length_multiple=16)
    np.testing.assert_allclose(nll, _hf_target_nll(result.hf_dir, tok, mixed), rtol=1e-4, atol=1e-4)
    assert max(nll[:3]) < min(nll[3:])  # memorised targets are far more likely than unseen ones


def test_kill_and_resume_is_exact_and_restores_on_another_mesh(tmp_path, tok_dir):
    cfg = TrainConfig(learning_rate=1e-3, batch_size=8, micro_batch_size=1, epochs=3, warmup_steps=1, weight_decay=0.1,
                      mesh=(8, 1, 1), save_every=2, keep=3, length_multiple=16, max_length=128, max_target_length=64, export_hf=False)
    examples = _examples(12)  # 2 steps per epoch, the second one short
    full = train(CONFIG, tok_dir, examples, cfg, tmp_path / "full", progress=False)
    part = train(CONFIG, tok_dir, examples, cfg, tmp_path / "part", progress=False, stop_after=3)
    assert part.model_dir is None and part.steps == 3
    assert Checkpoints(tmp_path / "part" / "checkpoints").all_steps() == [2, 3]
    resumed = train(CONFIG, tok_dir, examples, cfg, tmp_path / "part", progress=False)
    assert resumed.steps == full.steps == 6
    _, p_full = load_model(full.model_dir)
    _, p_res = load_model(resumed.model_dir)
    assert tree_equal(p_full, p_res)
    steps = [json.loads(line)["step"] for line in resumed.metrics_path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # no duplicated or lost log records
    # A finished run is not redone.
    again = train(CONFIG, tok_dir, examples, cfg, tmp_path / "part", progress=False)
    assert again.steps == 6
    # The (8,1,1) checkpoint restores onto (2,2,2) with the new layout and the same values.
    mesh = make_mesh((2, 2, 2))
    tx = make_optimizer(cfg, 6)
    ckpt = Checkpoints(tmp_path / "part" / "checkpoints")
    state, meta = ckpt.restore(abstract_state(CONFIG, tx, mesh))
    ckpt.close()
    assert meta["step"] == 6 and meta["epoch"] == 3 and int(state.step) == 6
    assert tree_equal(state.params, p_full)
    qkv = state.params["h_0"]["attn"]["qkv"]
    assert qkv.sharding.mesh.shape == mesh.shape and qkv.sharding.spec[2] == "tensor"


def test_cli_train_from_scratch(tmp_path, tok_dir):
    from ilf_jax.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "completion": e.target}) + "\n" for e in _examples(4)))
    model_cfg = tmp_path / "model.yaml"
    model_cfg.write_text("\n".join(f"{k}: {v}" for k, v in TINY_CONFIGS["a"].items()) + "\nbos_token_id: 0\neos_token_id: 0\n")
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text(f"model_config: {model_cfg}\ntokenizer: {tok_dir}\ndata: {data}\nout_dir: {tmp_path / 'out'}\n"
                         "batch_size: 4\nmicro_batch_size: 4\nepochs: 1\nmesh: [1, 1, 1]\nlength_multiple: 16\nmax_length: 64\nmax_target_length: 32\n")
    assert main(["train", str(yaml_path), "epochs=2", "learning_rate=1e-3", "--no-progress"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and recs[0]["lr"] == pytest.approx(1e-3)
    assert (tmp_path / "out" / "hf" / "model.safetensors").is_file()
    assert main(["train", str(yaml_path), "lerning_rate=1e-3"]) == 2
