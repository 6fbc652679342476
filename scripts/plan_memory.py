"""Per-device memory of training and sampling a model (any family) on a mesh, before renting the pod.

Computed from `jax.eval_shape` of the real init, optimizer, loss and cache (nothing is allocated):

    python scripts/plan_memory.py configs/models/codegen-6B-mono.yaml --mesh 1,8,1 --micro-batch 1 \
        --seq 1024 --remat --sample-slots 240 --positions 1536 [--device-gib 32] [--lora-rank 16 --param-dtype bfloat16]
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_config", help="model YAML or HF config.json")
    parser.add_argument("--mesh", default="1,8,1", help="data,fsdp,tensor sizes")
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per data-parallel replica per micro-step")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--remat", action="store_true", help="recompute blocks in the backward pass")
    parser.add_argument("--param-dtype", default=None)
    parser.add_argument("--dtype", default=None, help="compute dtype")
    parser.add_argument("--sample-slots", type=int, default=240, help="sampling engine's decode slots (sampling.batch_size)")
    parser.add_argument("--positions", type=int, default=1536, help="longest row: prompt + new tokens (the ring cache's largest bucket holds it)")
    parser.add_argument("--device-gib", type=float, default=None, help="device memory, to print headroom")
    parser.add_argument("--lora-rank", type=int, default=0, help="plan LoRA fine-tuning with adapters of this rank (0: full)")
    parser.add_argument("--lora-targets", default="q,k,v,out,mlp_in,mlp_out", help="adapted projections (roles)")
    args = parser.parse_args()

    from ilf_jax.model.family import config_from_file
    from ilf_jax.train.memory import plan
    from ilf_jax.parallel.mesh import parse_mesh
    from ilf_jax.train import TrainConfig, make_optimizer

    config = config_from_file(args.model_config)
    changes = {"remat": args.remat}
    if args.param_dtype:
        changes["param_dtype"] = args.param_dtype
    if args.dtype:
        changes["dtype"] = args.dtype
    config = config.replace(**changes)
    mesh = parse_mesh(args.mesh)
    if -1 in mesh:
        raise SystemExit("--mesh: give every size (the planner has no devices to infer one from)")
    tx = make_optimizer(TrainConfig(weight_decay=0.01), total_steps=1000)
    lora = None
    if args.lora_rank:
        from ilf_jax.model.store import lora_of

        lora = lora_of(config, args.lora_targets.split(","), args.lora_rank, 2.0 * args.lora_rank)
    rows = plan(config, mesh, tx, args.micro_batch, args.seq, args.sample_slots, args.positions, lora=lora)
    gib = 2**30
    print(f"{args.model_config}: mesh data,fsdp,tensor = {mesh}; param {config.param_dtype}, compute {config.dtype}, remat {config.remat}"
          + (f"; LoRA rank {args.lora_rank} on {args.lora_targets} (frozen base in {config.param_dtype})" if lora else ""))
    for name, value in rows.items():
        print(f"  {name:12s} {value / gib:9.2f} GiB per device")
    train = rows["params"] + rows["grads"] + rows["optimizer"] + rows["activations"] + rows.get("lora_merged", 0)
    sample = rows["params"] + rows["kv_cache"]
    print(f"  {'train total':12s} {train / gib:9.2f} GiB   (params + grads + optimizer + activations{' + lora_merged' if lora else ''})")
    print(f"  {'sample total':12s} {sample / gib:9.2f} GiB   (params + KV cache)")
    if args.device_gib:
        for name, total in (("train", train), ("sample", sample)):
            verdict = "fits" if total < 0.9 * args.device_gib * gib else "does NOT fit"
            print(f"  {name}: {verdict} in {args.device_gib:g} GiB (90% usable)")


if __name__ == "__main__":
    main()
