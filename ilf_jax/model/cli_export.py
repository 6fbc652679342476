"""`ilf export CKPT_DIR HF_DIR`: our checkpoint to an HF directory that transformers loads."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ckpt_dir", help="an ilf_jax checkpoint directory (from `ilf convert` or training)")
    parser.add_argument("hf_dir", help="output HF directory (config.json, safetensors, tokenizer)")
    parser.add_argument("--max-shard-gb", type=float, default=4.0, help="safetensors shard size (an index is written when there are several)")


def run(args: argparse.Namespace) -> int:
    from ilf_jax.model.convert import export_hf
    from ilf_jax.model.store import load_model

    config, params = load_model(args.ckpt_dir)
    export_hf(params, config, args.hf_dir, tokenizer_dir=args.ckpt_dir, max_shard_bytes=int(args.max_shard_gb * 2**30))
    print(f"exported {args.ckpt_dir} -> {args.hf_dir}")
    return 0
