"""The ILF training workload of `bench_train.py --workload ilf`: padded vs packed vs PyTorch, LoRA vs full.

Every side trains one epoch over the same examples (ILF's real lengths) from the same random
weights; throughput counts useful tokens only (each example's prompt + target, no padding).
"""

from __future__ import annotations

import pathlib
import random
import time
from typing import Any

MAX_LEN, MAX_TARGET = 1024, 512


def ilf_examples(data: pathlib.Path) -> list[Any]:
    """pi_theta*-style (task prompt -> gold body) pairs of the MBPP train/refine tasks and
    pi_Refine-style pairs of every Surge annotation, in a fixed shuffled order."""
    from ilf_jax.data.annotations import load_annotations
    from ilf_jax.data.mbpp import load_mbpp
    from ilf_jax.pipeline.texts import finetune_example, gold_completion, refine_example

    tasks = load_mbpp(data / "mbpp" / "mbpp.jsonl")
    anns = load_annotations(data / "ilf" / "surge_annotations.jsonl", include_test=True).rows
    refine = [refine_example(tasks[a.task_id], a.original, a.feedback, a.refinement) for a in anns]
    gold = [finetune_example(t, gold_completion(t)) for tid, t in sorted(tasks.items()) if tid > 110]
    out = refine + gold
    random.Random(0).shuffle(out)
    return out


def _tokenizer(args: Any, examples: list[Any]) -> Any:
    if args.tokenizer:
        from ilf_jax.model.store import load_tokenizer

        return load_tokenizer(args.tokenizer)
    from ilf_jax.demo.tokenizer import train_tokenizer

    return train_tokenizer([e.input_text + e.target for e in examples], vocab_size=16384, model_max_length=10**6)


def run_ilf(args: Any) -> None:
    import os

    import jax
    import numpy as np
    import torch

    from ilf_jax.model.store import lora_of
    from ilf_jax.parallel import make_mesh
    from ilf_jax.parallel.sharding import param_shardings
    from ilf_jax.train import TrainConfig, encode_examples, init_state, make_optimizer, make_train_step, state_shardings
    from ilf_jax.train import data as D

    data = pathlib.Path(args.data) if args.data else pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
    pool = ilf_examples(data)
    t0 = time.perf_counter()
    tok = _tokenizer(args, pool)
    enc_all = encode_examples(tok, pool, MAX_LEN, MAX_TARGET)
    lengths_all = np.array([e.length for e in enc_all])
    encoded = enc_all[: args.examples]
    lengths = [e.length for e in encoded]
    useful = sum(n - 1 for n in lengths)
    n_refine = sum(1 for e in pool if e.prefix)
    print(f"ILF workload: {len(pool)} examples ({n_refine} refinement, {len(pool) - n_refine} MBPP gold), tokenized in {time.perf_counter() - t0:.0f} s "
          f"({'tokenizer ' + args.tokenizer if args.tokenizer else 'BPE 16k trained on the texts'}); lengths mean "
          f"{lengths_all.mean():.0f}, median {np.median(lengths_all):.0f}, max {lengths_all.max()} tokens")
    print(f"timed epoch: the first {len(encoded)} examples, {useful} useful tokens, steps of {args.batch} examples")

    if len(tok) > args.vocab:
        raise SystemExit(f"--vocab {args.vocab} is smaller than the tokenizer's {len(tok)} tokens")
    from bench_common import random_codegen

    hf, config, params0 = random_codegen(args)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])

    def ours(mode: str, lora_rank: int = 0) -> dict[str, float]:
        """One epoch of our step; every shape is compiled (and run once) before the timed pass."""
        tcfg = TrainConfig(learning_rate=1e-4, batch_size=args.batch, micro_batch_size=args.micro_batch, weight_decay=0.01,
                           mesh=(1, 1, 1), dtype=args.dtype, remat=args.remat, max_length=MAX_LEN)
        steps = D.epoch_steps(lengths, args.batch, 0, 0, group_by_length=(mode == "grouped"))
        packing = mode == "packed"
        batches = [D.step_batch(encoded, idx, args.batch, args.batch // args.micro_batch, tcfg.length_multiple, MAX_LEN,
                                packing=packing, micro_rows=args.pack_rows) for idx in steps]
        tx = make_optimizer(tcfg, 10 * len(batches))
        lora = lora_of(config, ("q", "k", "v", "out", "mlp_in", "mlp_out"), lora_rank, 2.0 * lora_rank) if lora_rank else None
        sh = state_shardings(config, tx, mesh, lora)
        base_sh = param_shardings(config, mesh)
        trained = params0 if lora is None else lora.init(jax.random.key(0))
        state = init_state(trained, tx, sh)
        extra = () if lora is None else (jax.device_put(params0, base_sh),)
        step = make_train_step(config, tx, mesh, sh, lora=lora, base_shardings=base_sh if lora else None)
        compiled, peak = {}, 0
        for b in batches:
            key = b["tokens"].shape
            if key not in compiled:
                compiled[key] = step.lower(state, b, *extra).compile()
                mem = compiled[key].memory_analysis()
                if mem is not None:
                    peak = max(peak, mem.argument_size_in_bytes + mem.temp_size_in_bytes)
                state, m = compiled[key](state, b, *extra)
        jax.block_until_ready(state)
        best = float("inf")
        for _ in range(args.rounds):
            t = time.perf_counter()
            for b in batches:
                state, m = compiled[b["tokens"].shape](state, b, *extra)
            jax.block_until_ready((state, m))
            best = min(best, time.perf_counter() - t)
        computed = sum(b["tokens"].size for b in batches)
        return {"seconds": best, "tps": useful / best, "pad": 1 - useful / computed, "shapes": len(compiled),
                "step_s": best / len(batches), "peak": peak, "loss": float(m["loss"])}

    def torch_epoch() -> dict[str, float]:
        """TRL-style: random order, micro-batches padded to their longest, labels -100 off the targets."""
        model = hf.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        steps = D.epoch_steps(lengths, args.batch, 0, 0, group_by_length=False)
        best, computed = float("inf"), 0
        for r in range(args.rounds):
            t = time.perf_counter()
            computed = 0
            for idx in steps:
                opt.zero_grad(set_to_none=True)
                for m in range(0, len(idx), args.micro_batch):
                    rows = [encoded[i] for i in idx[m : m + args.micro_batch]]
                    n = max(e.length for e in rows)
                    ids = torch.zeros((len(rows), n), dtype=torch.long)
                    att = torch.zeros((len(rows), n), dtype=torch.long)
                    labels = torch.full((len(rows), n), -100, dtype=torch.long)
                    for j, e in enumerate(rows):
                        ids[j, : e.length] = torch.from_numpy(e.tokens.astype(np.int64))
                        att[j, : e.length] = 1
                        labels[j, e.n_prompt : e.length] = ids[j, e.n_prompt : e.length]
                    computed += len(rows) * (n - 1)
                    loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
                    (loss * len(rows) / len(idx)).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            best = min(best, time.perf_counter() - t)
        return {"seconds": best, "tps": useful / best, "pad": 1 - useful / computed}

    results = {}
    for name in ("padded", "grouped", "packed"):
        results[name] = ours(name)
    if not args.skip_torch:
        results["torch"] = torch_epoch()
    full = results["packed"]
    lora = ours("packed", args.lora_rank)
    load = os.getloadavg()[0]
    print(f"model: {args.layers} layers, width {args.width}, vocab {args.vocab}, {args.dtype}{', remat' if args.remat else ''}; "
          f"1 CPU device; best of {args.rounds} epochs; load average {load:.1f}")
    labels = {"padded": "ours, padded (random order)", "grouped": "ours, padded (grouped by length)",
              "packed": f"ours, packed ({args.pack_rows} x {MAX_LEN} rows)", "torch": "PyTorch loop, padded (TRL-style)"}
    for name, r in results.items():
        extra = f", {r['shapes']} shapes" if "shapes" in r else f" (torch {torch.__version__}, {torch.get_num_threads()} threads)"
        print(f"  {labels[name]:36s} {r['seconds']:7.1f} s/epoch  {r['tps']:7.0f} useful tokens/s  pad {r['pad']:5.1%}{extra}")
    p = results["packed"]["tps"]
    print(f"packed / padded useful tokens/s: {p / results['padded']['tps']:.2f}x (target >= 2x); "
          f"vs grouped {p / results['grouped']['tps']:.2f}x" + (f"; vs PyTorch {p / results['torch']['tps']:.2f}x" if "torch" in results else ""))
    gib = 2**30
    print(f"LoRA rank {args.lora_rank} (all six projections) vs full fine-tuning, packed batches: step "
          f"{lora['step_s']:.2f} s vs {full['step_s']:.2f} s ({full['step_s'] / lora['step_s']:.2f}x), peak memory "
          f"{lora['peak'] / gib:.2f} GiB vs {full['peak'] / gib:.2f} GiB ({lora['peak'] / full['peak']:.2f}x)")
