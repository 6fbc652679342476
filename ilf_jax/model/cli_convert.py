"""`ilf convert HF_DIR OUT_DIR`: an HF model directory (CodeGen, Llama, Qwen2, Qwen3) to our checkpoint (config, tokenizer, Orbax)."""

from __future__ import annotations

import argparse
import pathlib


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", help="HF model directory (config.json + safetensors or .bin weights): CodeGen, Llama, Qwen2 or Qwen3")
    parser.add_argument("out_dir", help="where to write the ilf_jax checkpoint")
    parser.add_argument("--param-dtype", choices=("float32", "bfloat16", "float16"), help="storage dtype (default: keep config's)")
    parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor mesh to place params on while converting")


def run(args: argparse.Namespace) -> int:
    from ilf_jax.model.family import describe
    from ilf_jax.model.store import load_model, save_model
    from ilf_jax.parallel.mesh import make_mesh, parse_mesh

    mesh = make_mesh(parse_mesh(args.mesh))
    overrides = {"param_dtype": args.param_dtype} if args.param_dtype else {}
    config, params = load_model(args.hf_dir, mesh=mesh, **overrides)
    save_model(args.out_dir, config, params, tokenizer_dir=pathlib.Path(args.hf_dir))
    print(f"converted {args.hf_dir} -> {args.out_dir} ({describe(config)})")
    return 0

