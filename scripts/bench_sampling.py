"""Sampling throughput: our jitted prefill + while-loop decode vs `transformers` PyTorch `generate`.

Same random weights in both (a transformers model saved and converted), CPU, fp32.
Default workload (issue 3): CodeGen, 6 layers, width 512, 8 heads, rotary_dim 32, vocab 51200;
`--family llama`: the same depth and width with GQA 8/2 heads, SwiGLU (1344 wide), vocab 32000.
Batch 16, prompt 128 tokens, 128 new tokens sampled at T = 0.8 with no early stop (no EOS, no
stop rule).

Prints tokens/s of ours, of `transformers` batched generate, and of the paper's procedure (one
sample per `generate` call), the ratios, and our achieved FLOP/s as a fraction of a dense fp32
matmul peak measured here.

    python scripts/bench_sampling.py [--family codegen|llama] [--batch 16] [--prompt 128] [--new 128] [--paper-calls 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from bench_common import add_model_args, bench_models, describe, matmul_flops_per_token, matmul_peak


def _flops(config, batch: int, prompt: int, new: int) -> float:
    """Matmul FLOPs we execute: prefill (blocks at every prompt position, logits at the last) + decode,
    2 per multiply-add, decode attention over all cache slots it reads."""
    prefill_blocks, head = matmul_flops_per_token(config, prompt / 2)  # causal: prompt / 2 keys on average
    decode_blocks, _ = matmul_flops_per_token(config, prompt + new)  # our decode attends over the whole (masked) cache
    return batch * (prompt * prefill_blocks + head) + batch * (new - 1) * (decode_blocks + head)


class _NoText:
    """Stands in for a tokenizer: no EOS id the model can produce, no stop tables."""

    eos_token_id = -1

    def __len__(self) -> int:
        return 0

    def batch_decode(self, ids, **kw):
        return [""] * len(ids)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.8)
    add_model_args(p)
    p.add_argument("--paper-calls", type=int, default=2, help="single-sample generate calls timed for the paper baseline")
    p.add_argument("--reps", type=int, default=2, help="timed runs of each batched sampler, interleaved (best is reported)")
    args = p.parse_args()

    import numpy as np
    import torch

    from ilf_jax.sample import Sampler, SamplingConfig

    hf, config, params = bench_models(args)
    rng = np.random.default_rng(0)
    prompts = [list(map(int, rng.integers(1, config.vocab_size, size=args.prompt))) for _ in range(args.batch)]
    new_tokens = args.batch * args.new
    print(f"workload: {describe(config)}; batch {args.batch}, "
          f"prompt {args.prompt}, {args.new} new tokens, T={args.temperature}, no early stop; "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")

    # --- ours ---
    sampler = Sampler(params, config, _NoText())
    scfg = SamplingConfig(n=1, temperature=args.temperature, max_new_tokens=args.new, stop_rule=False, batch_size=args.batch, buckets=(args.prompt,))
    t = time.perf_counter()
    rows = sampler.generate_tokens(prompts, scfg)
    compile_s = time.perf_counter() - t
    assert all(len(r.tokens) == args.new for r in rows)
    ids = torch.tensor(prompts)
    gen = dict(do_sample=True, temperature=args.temperature, top_k=0, top_p=1.0, max_new_tokens=args.new, min_new_tokens=args.new, pad_token_id=0)
    # Timed runs alternate ours / transformers so that both see the same machine load; best of each.
    ours = theirs = float("inf")
    with torch.no_grad():
        hf.generate(ids[:2, :8], attention_mask=torch.ones_like(ids[:2, :8]), **{**gen, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
        for rep in range(args.reps):
            t = time.perf_counter()
            sampler.generate_tokens(prompts, SamplingConfig(**{**scfg.__dict__, "seed": rep + 1}))
            ours = min(ours, time.perf_counter() - t)
            t = time.perf_counter()
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), **gen)
            theirs = min(theirs, time.perf_counter() - t)
        assert out.shape == (args.batch, args.prompt + args.new)
        print(f"ours (jax, jitted while-loop): {new_tokens / ours:9.1f} tokens/s  ({ours:.2f} s; first call incl. compile {compile_s:.2f} s)")
        print(f"transformers batched generate: {new_tokens / theirs:9.1f} tokens/s  ({theirs:.2f} s)")
        # --- the paper's procedure: one sample per generate call ---
        t = time.perf_counter()
        for i in range(args.paper_calls):
            hf.generate(ids[i : i + 1], attention_mask=torch.ones_like(ids[i : i + 1]), **gen)
        paper = (time.perf_counter() - t) / args.paper_calls
        print(f"paper procedure (1 sample/call): {args.new / paper:7.1f} tokens/s  ({paper:.2f} s per sample, {args.paper_calls} calls)")

    peak = matmul_peak()
    flops = _flops(config, args.batch, args.prompt, args.new)
    achieved = flops / ours
    print(f"speed-up vs transformers batched: {theirs / ours:.2f}x; vs paper procedure: {(paper * args.batch) / ours:.2f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share these cores)")
    print(f"our FLOP/s: {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.1%} of the measured fp32 matmul peak ({peak / 1e9:.1f} GFLOP/s, jax 2048^3)")


if __name__ == "__main__":
    main()
