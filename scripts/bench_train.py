"""Training throughput: our jitted train step vs a plain PyTorch loop on the same model.

Workload (issue 5): the sampling benchmark's CodeGen (6 layers, width 512, 8 heads, rotary_dim
32, vocab 51200), sequence length 512, batch 8, fp32, AdamW with global-norm clipping, loss on
every token. Both sides start from the same random weights and see the same batches.

Prints tokens/s of each, the ratio, and our model-FLOP utilisation: model FLOPs per step
(3 x forward matmul FLOPs, attention over the full T x T scores as computed) over step time,
divided by a dense fp32 matmul peak measured here with JAX.

    python scripts/bench_train.py [--steps 2] [--rounds 2] [--batch 8] [--seq 512] [--remat] [--dtype float32]

`--workload ilf` (issue 15) trains on ILF's real example lengths instead: task prompt + gold body
of MBPP tasks and refinement prompt + target of every annotation in surge_annotations.jsonl,
tokenized (a byte-level BPE trained on those texts, or `--tokenizer DIR`), truncated to 1024 /
512 tokens, an optimizer step of `--batch` examples. One epoch over the same examples with each
of: our padded step (random order, and grouped by length), our packed step (rows of 1024
tokens), and a plain PyTorch loop with padding to each micro-batch's longest (the TRL-style
baseline); it prints useful (non-pad) tokens/s of each, then LoRA vs full fine-tuning step
time and XLA's peak memory of the compiled step (arguments + temporaries) on the packed batches.

    python scripts/bench_train.py --workload ilf [--examples 96] [--batch 32] [--layers 4] [--width 256] [--heads 4]
"""

from __future__ import annotations

import argparse
import time

from bench_common import matmul_peak, random_codegen


def _step_flops(cfg: dict, batch: int, seq: int) -> float:
    d, layers, v = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"]
    inner = cfg.get("n_inner") or 4 * d
    per_token = 2 * layers * (4 * d * d + 2 * d * inner) + 2 * d * v + layers * 4 * seq * d
    return 3 * batch * seq * per_token


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2, help="timed steps on each side (after one warm-up step)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=51200)
    p.add_argument("--remat", action="store_true")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds (best kept)")
    p.add_argument("--workload", default="lm", choices=("lm", "ilf"), help="lm: random full rows; ilf: real ILF example lengths")
    p.add_argument("--examples", type=int, default=96, help="ilf: examples in the timed epoch")
    p.add_argument("--micro-batch", type=int, default=4, help="ilf: padded rows per micro-batch")
    p.add_argument("--pack-rows", type=int, default=2, help="ilf: packed 1024-token rows per micro-batch")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--tokenizer", default=None, help="ilf: a tokenizer directory (default: a BPE trained on the texts)")
    p.add_argument("--data", default=None, help="ilf: the shared data folder (default: ../shared/data)")
    args = p.parse_args()
    if args.workload == "ilf":
        from bench_train_ilf import run_ilf

        run_ilf(args)
        return

    import jax
    import numpy as np
    import torch

    from ilf_jax.parallel import make_mesh
    from ilf_jax.train import TrainConfig, init_state, learning_rate_schedule, make_optimizer, make_train_step, state_shardings

    cfg = dict(vocab_size=args.vocab, n_positions=2048, n_embd=args.width, n_layer=args.layers, n_head=args.heads, rotary_dim=32)
    b, t = args.batch, args.seq
    rng = np.random.default_rng(0)
    batches = [rng.integers(1, args.vocab, size=(b, t + 1)).astype(np.int64) for _ in range(args.steps + 1)]
    tcfg = TrainConfig(learning_rate=1e-4, batch_size=b, micro_batch_size=b, weight_decay=0.01, max_grad_norm=1.0,
                       remat=args.remat, dtype=args.dtype, mesh=(1, 1, 1))
    total = args.steps + 1

    hf, config, params = random_codegen(args)

    peak = matmul_peak()
    flops = _step_flops(cfg, b, t)
    tokens = b * t

    # Ours: the training step `train()` runs (one device: the CPU backend threads it).
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    tx = make_optimizer(tcfg, total)
    sh = state_shardings(config, tx, mesh)
    state = init_state(params, tx, sh)
    del params
    step = make_train_step(config, tx, mesh, sh, learning_rate_schedule(tcfg, total))

    def jbatch(x):
        return {"tokens": x[None, :, :-1].astype(np.int32), "targets": x[None, :, 1:].astype(np.int32),
                "weights": np.ones((1, b, t), np.float32), "valid": np.ones((1, b, t), bool)}

    t0 = time.perf_counter()
    state, m = step(state, jbatch(batches[0]))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0

    def ours_round():
        nonlocal state
        t0 = time.perf_counter()
        for x in batches[1:]:
            state, m = step(state, jbatch(x))
        jax.block_until_ready((state, m))
        return (time.perf_counter() - t0) / args.steps, float(m["loss"])

    # Baseline: a plain PyTorch loop with transformers' model and torch AdamW.
    hf.train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.01)

    def torch_step(x):
        ids = torch.from_numpy(x)
        logits = hf(input_ids=ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    def torch_round():
        t0 = time.perf_counter()
        for x in batches[1:]:
            loss = torch_step(x)
        return (time.perf_counter() - t0) / args.steps, loss

    if not args.skip_torch:
        torch_step(batches[0])
    # Interleave rounds and keep each side's best: the machine may be shared.
    ours, theirs = float("inf"), float("inf")
    for _ in range(args.rounds):
        s, ours_loss = ours_round()
        ours = min(ours, s)
        if not args.skip_torch:
            s, torch_loss = torch_round()
            theirs = min(theirs, s)

    print(f"workload: {args.layers} layers, width {args.width}, vocab {args.vocab}; batch {b} x seq {t}, {args.dtype}"
          f"{', remat' if args.remat else ''}; best of {args.rounds} rounds of {args.steps} steps")
    print(f"measured fp32 matmul peak (2048^3, JAX): {peak / 1e9:.1f} GFLOP/s; model FLOPs per step {flops / 1e12:.3f} TFLOP")
    print(f"ours:    {ours:.3f} s/step, {tokens / ours:.0f} tokens/s, {flops / ours / 1e9:.1f} GFLOP/s, "
          f"MFU {flops / ours / peak:.1%} of measured peak (first step incl. compile {compile_s:.1f} s), loss {ours_loss:.4f}")
    if args.skip_torch:
        return
    print(f"torch:   {theirs:.3f} s/step, {tokens / theirs:.0f} tokens/s, MFU {flops / theirs / peak:.1%} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads), loss {torch_loss:.4f}")
    print(f"ratio ours/torch tokens/s: {theirs / ours:.2f}x (target >= 1.5x); our MFU {flops / ours / peak:.1%} (target >= 40%)")


if __name__ == "__main__":
    main()
