"""Shared by the benchmarks: the dense fp32 matmul peak of this machine, measured with JAX."""

from __future__ import annotations

import time


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


def random_codegen(args) -> tuple:
    """(transformers CodeGenForCausalLM, our config, our params) of the same random weights, with
    the benchmark's shape (--vocab, --width, --layers, --heads; rotary_dim 32), dtype and remat."""
    import tempfile

    import torch
    from transformers import CodeGenConfig as HFConfig
    from transformers import CodeGenForCausalLM

    from ilf_jax.model.config import CodeGenConfig
    from ilf_jax.model.convert import load_hf_params

    cfg = dict(vocab_size=args.vocab, n_positions=2048, n_embd=args.width, n_layer=args.layers, n_head=args.heads, rotary_dim=32)
    torch.manual_seed(0)
    hf = CodeGenForCausalLM(HFConfig(**cfg, n_ctx=2048, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        config = CodeGenConfig.from_file(f"{tmp}/config.json").replace(dtype=args.dtype, remat=args.remat)
        params = load_hf_params(tmp, config)
    return hf, config, params
