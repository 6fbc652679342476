"""Shared by the benchmarks: the dense fp32 matmul peak of this machine, measured with JAX; the
benchmark model of either family as a random transformers model and our converted copy; FLOPs."""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from typing import Any

# Default vocabularies of the benchmark models: CodeGen's, and a Llama-2-sized one.
VOCAB = {"codegen": 51200, "llama": 32000}


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of the best of `reps` jitted n x n x n fp32 matmuls (the denominator of MFU)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--family, --layers, --width, --heads, --kv-heads, --vocab (the benchmark model's shape)."""
    p.add_argument("--family", choices=sorted(VOCAB), default="codegen", help="model family (llama: GQA, SwiGLU, RMSNorm)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads (llama family; CodeGen has as many as heads)")
    p.add_argument("--vocab", type=int, default=None, help="default: 51200 (codegen), 32000 (llama)")


def _hf_config(args: argparse.Namespace) -> Any:
    from transformers import CodeGenConfig, LlamaConfig

    common = dict(vocab_size=args.vocab or VOCAB[args.family], bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    build = {
        "codegen": lambda: CodeGenConfig(n_positions=2048, n_ctx=2048, n_embd=args.width, n_layer=args.layers, n_head=args.heads,
                                         rotary_dim=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common),
        "llama": lambda: LlamaConfig(max_position_embeddings=2048, hidden_size=args.width, intermediate_size=int(8 * args.width / 3) // 64 * 64,
                                     num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, **common),
    }
    return build[args.family]()


def bench_models(args: argparse.Namespace, **overrides: Any) -> tuple[Any, Any, Any]:
    """(transformers model in eval mode, our config, our params): the same random weights, seed 0."""
    import torch
    from transformers import AutoModelForCausalLM

    from ilf_jax.model.store import load_model

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(_hf_config(args)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        config, params = load_model(d, **overrides)
    return hf, config, params


def describe(config: Any) -> str:
    kv = f" ({config.n_kv_heads} kv)" if config.n_kv_heads != config.n_head else ""
    return f"{config.model_type}, {config.n_layer} layers, width {config.n_embd}, {config.n_head} heads{kv}, vocab {config.vocab_size}"


def matmul_flops_per_token(config: Any, context: int) -> tuple[float, float]:
    """(FLOPs of the blocks per token with `context` keys attended, FLOPs of the LM head per token):
    2 per multiply-add of every weight matrix, plus q @ k and probs @ v over the context."""
    import jax

    from ilf_jax.model.family import abstract_params

    e, v = config.n_embd, config.vocab_size
    weights = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(config)) if len(x.shape) >= 2)
    blocks = 2 * (weights - e * v * (1 if config.tie_word_embeddings else 2)) + config.n_layer * 4 * context * config.n_head * config.head_size
    return blocks, 2 * e * v


def random_codegen(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """`bench_models` of a CodeGen of the benchmark's shape, dtype and remat (the ILF workload's model)."""
    return bench_models(argparse.Namespace(**{**vars(args), "family": "codegen"}), dtype=args.dtype, remat=args.remat)
