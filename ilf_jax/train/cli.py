"""`ilf train CONFIG [key=value ...]`: fine-tune on a JSONL of prompt/completion records.

The YAML holds `model` (an HF or ilf_jax model directory) or `model_config` (a model YAML /
config.json, trained from random init when `init: random`) plus `tokenizer` (a directory;
default: the model directory's), `data` (JSONL with `prompt`, `completion` and optionally
`truncatable`, `prefix`), `out_dir`, and any `TrainConfig` field. Relative paths are taken from
the current directory. Re-running the same command resumes from out_dir's latest checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

RUN_KEYS = ("model", "model_config", "tokenizer", "data", "out_dir")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training YAML (see configs/train/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config values, e.g. learning_rate=1e-5")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_run_config(path: str | pathlib.Path, overrides: list[str]):
    """(run paths dict, TrainConfig) from the YAML file and overrides."""

    from ilf_jax.configfile import apply_overrides, from_mapping, load_yaml
    from ilf_jax.errors import IlfError
    from ilf_jax.train.config import TrainConfig

    raw = load_yaml(path)
    base = {k: None for k in RUN_KEYS}
    base.update(TrainConfig().to_dict())
    base.update(raw)
    merged = apply_overrides(base, overrides)
    run = {k: merged.pop(k) for k in RUN_KEYS}
    if run["data"] is None or run["out_dir"] is None:
        raise IlfError(f"{path}: 'data' and 'out_dir' are required")
    if (run["model"] is None) == (run["model_config"] is None):
        raise IlfError(f"{path}: give exactly one of 'model' (a model directory) or 'model_config' (a model config file)")
    if run["model_config"] is not None and run["tokenizer"] is None:
        raise IlfError(f"{path}: 'tokenizer' is required with 'model_config'")
    cfg = from_mapping(TrainConfig, merged, str(path))
    if run["model_config"] is not None and cfg.init != "random":
        cfg = dataclasses.replace(cfg, init="random")
    return run, cfg


def run(args: argparse.Namespace) -> int:
    from ilf_jax.train.data import read_jsonl
    from ilf_jax.train.loop import train

    paths, cfg = load_run_config(args.config, args.overrides)
    examples = read_jsonl(paths["data"])
    model = paths["model"] if paths["model"] is not None else paths["model_config"]
    result = train(model, paths["tokenizer"], examples, cfg, paths["out_dir"], progress=not args.no_progress)
    s = result.summary
    print(
        f"trained {result.steps} steps on {len(examples)} examples: loss {s.get('first_loss')} -> {s.get('final_loss')}; "
        f"model {result.model_dir}" + (f", HF export {result.hf_dir}" if result.hf_dir else "")
    )
    return 0
