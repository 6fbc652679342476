"""Builders shared by tests: tiny random HF models (CodeGen, Llama, Qwen2, Qwen3), logits of both
implementations, and a tiny byte-level BPE tokenizer."""

from __future__ import annotations

import pathlib

import numpy as np

TINY_CONFIGS = {
    # rotary_dim < head_dim in all; the second has n_inner set, the third 8 heads.
    "a": dict(vocab_size=256, n_positions=128, n_embd=32, n_layer=2, n_head=4, rotary_dim=4),
    "b": dict(vocab_size=300, n_positions=128, n_embd=64, n_layer=3, n_head=4, rotary_dim=8, n_inner=96),
    "c": dict(vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=8, rotary_dim=6),
}


# Tiny Llama-family configs: (model_type, fields). Among them: GQA (n_kv < n_heads), MQA, tied
# embeddings, linear and llama3 rope scaling, qkv biases (Qwen2), attention / MLP biases (Llama),
# q/k norms with head_dim != hidden / heads (Qwen3).
LLAMA_TINY = {
    "llama-gqa": ("llama", dict(vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2)),
    "llama-tied-linear": ("llama", dict(vocab_size=320, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                        tie_word_embeddings=True, rope_theta=500.0, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama-llama3-bias": ("llama", dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                                        attention_bias=True, mlp_bias=True, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "qwen2-gqa-tied": ("qwen2", dict(vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2-mha": ("qwen2", dict(vocab_size=300, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8)),
    "qwen2-mqa-linear": ("qwen2", dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                                       rope_scaling={"rope_type": "linear", "factor": 4.0})),
    "qwen3-qknorm": ("qwen3", dict(vocab_size=320, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   head_dim=16, tie_word_embeddings=True)),
}


def tiny_hf_llama(name: str, seed: int = 0, std: float = 0.2):
    """A random Llama-family causal LM of `LLAMA_TINY[name]` (fp32, eager attention, eval mode)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, kw = LLAMA_TINY[name]
    cfg = AutoConfig.for_model(model_type, max_position_embeddings=128, bos_token_id=0, eos_token_id=0, pad_token_id=0, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    return model


def torch_logits(model, tokens, valid):
    """The PyTorch model's logits [B, T, V] on a left-padded batch (positions from the mask)."""
    import torch

    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(valid.astype(np.int64)),
            position_ids=torch.tensor(positions),
        )
    return out.logits.numpy()


def jax_logits(params, config, tokens, valid):
    """Our logits [B, T, V] on the same batch."""
    import jax.numpy as jnp

    from ilf_jax.model import forward

    return np.asarray(forward(params, jnp.asarray(tokens), config, valid=jnp.asarray(valid))[0])


def hf_config(**kwargs):
    """A transformers CodeGenConfig with dropout off and EOS/BOS 0."""
    from transformers import CodeGenConfig

    kwargs = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, **kwargs}
    return CodeGenConfig(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, n_ctx=kwargs.get("n_positions", 128), **kwargs)


def tiny_hf_model(seed: int = 0, std: float = 0.2, **kwargs):
    """A random CodeGenForCausalLM (fp32, eval mode) with large enough weights for non-trivial logits."""
    import torch
    from transformers import CodeGenForCausalLM

    torch.manual_seed(seed)
    model = CodeGenForCausalLM(hf_config(**kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    return model


def save_hf(model, directory: pathlib.Path, safe: bool = True) -> pathlib.Path:
    """save_pretrained in safetensors or .bin form."""
    model.save_pretrained(directory, safe_serialization=safe)
    return directory


def random_batch(rng: np.random.Generator, batch: int, length: int, vocab: int, min_len: int = 2):
    """Left-padded token batch: (tokens [B, T] int32, valid [B, T] bool), rows of different lengths."""
    lengths = rng.integers(min_len, length + 1, size=batch)
    lengths[0] = length
    tokens = rng.integers(1, vocab, size=(batch, length)).astype(np.int32)
    valid = np.arange(length)[None, :] >= (length - lengths)[:, None]
    tokens = np.where(valid, tokens, 0).astype(np.int32)
    return tokens, valid


def tiny_tokenizer(directory: pathlib.Path, vocab_size: int = 256) -> pathlib.Path:
    """Train a small byte-level BPE (with `<|endoftext|>` at id 0) and save it for AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "def add(a, b):\n    return a + b\n",
        "def first(xs):\n    if not xs:\n        return None\n    return xs[0]\n",
        '"""\nWrite a function to sum a list.\n>>> Example: sum_list([1, 2]) = 3\n"""\n',
        "for i in range(10):\n    print(i * i)\n",
    ] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)
    return directory


def passes_own_asserts(code: str, task) -> bool:
    """Whether `code` passes the task's asserts, run in-process: only for the project's own generated tasks."""
    env: dict = {}
    try:
        exec(code + "\n" + "\n".join(task.test_list), env)
    except Exception:
        return False
    return True


def tiny_pipeline_model(directory: pathlib.Path) -> pathlib.Path:
    """The tiny random CodeGen + tokenizer that configs/pipeline/tiny.yaml runs are tested with."""
    save_hf(tiny_hf_model(**{**TINY_CONFIGS["a"], "n_positions": 256}), directory)
    tiny_tokenizer(directory)
    return directory
